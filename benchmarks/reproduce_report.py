"""RESULTS.md from the runs of ``reproduce.py``: the protocol, the tuning search, the
tuned kinds at fresh seeds with Holm-corrected Welch tests and a pooled check, parameters
as they act, BPC against wall time, figures, and a discussion generated from the runs'
own output files (``write_report``). The statistics live in ``reproduce_stats``."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import reproduce_setup as setup
from reproduce_setup import (
    CLOSE_RANGE,
    COMPARE_TEXT,
    CONTROLS,
    MODEL,
    PAPER_KINDS,
    PAPER_LM1B,
    PAPER_SOURCE,
    RERUN,
    SCHEDULE,
    SEEDS,
    SELECTION_SEED,
    TRAINED_R_KINDS,
    VARIANTS,
    WIDE_VANILLA,
    model_config,
    run_dir,
)
from reproduce_stats import ALPHA, compare, holm, pooled

from minisynth import SynthesizerLM, viz
from minisynth.checkpoint import load_checkpoint
from minisynth.optim import default_decay_filter, lr_schedule
from minisynth.run_folder import metrics_lines

PRIMARY = "test"  # the primary metric, declared before any result: test BPC


# ------------------------------------------------------------------- formatting
def fmt_p(p):
    return "n/a" if math.isnan(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def fmt_gap(gap):
    return "n/a" if math.isnan(gap) else f"{gap:.3f}"


def fmt(values):
    values = np.asarray(values, float)
    if len(values) < 2:
        return f"{values.mean():.3f}"
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"


def setting(variant):
    """'lr 6e-3, R x30' for a Variant."""
    text = f"lr {variant.lr or SCHEDULE['lr']:g}"
    if variant.attention in TRAINED_R_KINDS:
        text += f", R x{variant.synthetic_lr_scale:g}"
    return text + "".join(f", {a}={b}" for a, b in variant.model)


def bpc(results, split):
    return np.array([r[f"{split}_bpc"] for r in results])


# ---------------------------------------------------------------- comparisons
# (first, second, question) pairs of the tuned kinds at the fresh seeds, beyond the paper's
# own ordered pairs (which agreement() adds)
TUNED_PAIRS = [
    ("vanilla", WIDE_VANILLA, "does width alone help vanilla?"),
    ("dense+vanilla", WIDE_VANILLA, "mixing or size: dense+vanilla against a vanilla as large"),
    ("random+vanilla", WIDE_VANILLA, "mixing or size: random+vanilla against a vanilla as large"),
    ("dense", "factorized_dense", "does factorizing Dense cost?"),
    ("random", "factorized_random", "does factorizing Random cost?"),
    ("random", "random_fixed", "learned R against a frozen one"),
]
# the controls, at the untuned setting (lr 3e-3, R x1) and the seeds SEEDS
CONTROL_PAIRS = [
    ("random_fixed", "uniform", "is the near-uniform fixed R an alignment at all?"),
    ("random_fixed_sharp", "uniform", "does a sharp fixed random alignment beat none?"),
    ("random_fixed_sharp", "random_fixed", "sharp against near-uniform fixed R"),
    ("dense+vanilla", "dense+vanilla_shared_q", "Dense's own first layer against the query's"),
    ("dense+vanilla_shared_q", "vanilla", "mixing with few extra parameters"),
]


def paper_pairs(final):
    """The pairs the paper orders (LM1B), (better in the paper, worse, question)."""
    kinds = [k for k in PAPER_LM1B if k in final]
    pairs = []
    for i, a in enumerate(kinds):
        for b in kinds[i + 1 :]:
            first, second = (a, b) if PAPER_LM1B[a] < PAPER_LM1B[b] else (b, a)
            pairs.append((first, second, "the paper: the first is better"))
    return pairs


def kinds_needing_more_seeds(final):
    """The kinds of every compared pair of tuned kinds whose gap is close to what their
    runs can detect (CLOSE_RANGE times the detectable gap at alpha 0.05)."""
    low, high = CLOSE_RANGE
    close = set()
    for a, b, _ in paper_pairs(final) + TUNED_PAIRS:
        if a in final and b in final:
            c = compare(a, bpc(final[a], PRIMARY), b, bpc(final[b], PRIMARY), 1)
            if low * c.detectable <= abs(c.gap) <= high * c.detectable:
                close |= {a, b}
    return close


def family(study):
    """Every comparison the report shows, on the primary metric, Holm-corrected as one
    family: (group, Comparison, Holm p, question), and the secondary (validation) gaps."""
    rows = []
    for group, runs, pairs in (
        ("paper", study.final, paper_pairs(study.final)),
        ("tuned", study.final, TUNED_PAIRS),
        ("controls", study.untuned, CONTROL_PAIRS),
    ):
        rows += [(group, runs, a, b, q) for a, b, q in pairs if a in runs and b in runs]
    m = len(rows)
    comparisons = [compare(a, bpc(runs[a], PRIMARY), b, bpc(runs[b], PRIMARY), m)
                   for _, runs, a, b, _ in rows]  # fmt: skip
    secondary = [compare(a, bpc(runs[a], "val"), b, bpc(runs[b], "val"), m)
                 for _, runs, a, b, _ in rows]  # fmt: skip
    adjusted = holm([c.p for c in comparisons]) if rows else []
    return [
        (row[0], c, float(h), row[4], v)
        for row, c, h, v in zip(rows, comparisons, adjusted, secondary, strict=True)
    ]


def comparison_table(entries):
    lines = [
        f"| first | second | {PRIMARY} gap | 95% CI | p | Holm p | detectable (alpha 0.05 "
        "/ Holm's strictest) | survives | val gap | question |",
        "|---|---|---:|---|---:|---:|---|---|---:|---|",
    ]
    for _, c, h, question, v in entries:
        lines.append(
            f"| {c.a} | {c.b} | {c.gap:+.3f} | [{c.low:+.3f}, {c.high:+.3f}] | {fmt_p(c.p)} | "
            f"{fmt_p(h)} | {fmt_gap(c.detectable)} / {fmt_gap(c.detectable_corrected)} | "
            f"{'yes' if h < ALPHA else 'no'} | {v.gap:+.3f} | {question} |"
        )
    return lines


# ------------------------------------------------------------------- parameters
def decay_split(config):
    """(decayed, not decayed) parameter counts, and the names' last parts not decayed."""
    model = SynthesizerLM(config, seed=0)
    decayed = sum(a.size for n, a in model.params.items() if default_decay_filter(n, a))
    spared = sorted({n.rsplit(".", 1)[-1] for n, a in model.params.items()
                     if not default_decay_filter(n, a) and a.ndim >= 2})  # fmt: skip
    return decayed, model.num_params() - decayed, spared


def parameter_lines(study):
    lines = [
        "| kind | raw | reachable | reachable vs vanilla | weight-decayed | not decayed "
        "| matrices not decayed |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    base = study.final["vanilla"][0]["reachable_params"] if "vanilla" in study.final else None
    for kind, variant in study.chosen.items():
        if kind not in study.final:
            continue
        r = study.final[kind][0]
        decayed, spared_count, spared = decay_split(model_config(variant))
        rel = f"{r['reachable_params'] / base - 1:+.1%}" if base else "n/a"
        lines.append(
            f"| {kind} | {r['params']:,} | {r['reachable_params']:,} | {rel} | {decayed:,} | "
            f"{spared_count:,} | {', '.join(spared) or '-'} |"
        )
    return lines


# --------------------------------------------------------------------- wall time
def training_clock(run_folder):
    """[(training seconds, val BPC)] at each evaluation of a run, from its metrics.jsonl:
    the seconds are the sum of each logging interval's tokens over its tokens/s
    (evaluation excluded, as the runs measured it)."""
    clock, last_step, points = 0.0, 0, []
    tokens_per_step = SCHEDULE["batch_size"] * MODEL["max_len"]
    for line in metrics_lines(run_folder / "metrics.jsonl"):
        record = json.loads(line)
        clock += (record["step"] - last_step) * tokens_per_step / record["tokens_per_s"]
        last_step = record["step"]
        if record.get("val_bpc") is not None:
            points.append((clock, record["val_bpc"]))
    return points


def median_clock(out, variant, seeds):
    """Median over seeds of (seconds, val BPC) at each evaluation: a run slowed by other
    work on the machine moves the median little."""
    curves = [training_clock(run_dir(out, variant.name, s)) for s in seeds]
    return np.median(np.array(curves), axis=0)  # (evaluations, 2)


def wall_time_view(out, study, fig_path):
    """The figure of val BPC against training seconds, and the table at equal time."""
    from matplotlib.figure import Figure

    curves = {k: median_clock(out, study.chosen[k], study.seeds) for k in study.final}
    budget = min(c[-1, 0] for c in curves.values())  # the fastest kind's whole run
    fig = Figure(figsize=(7, 4.5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    for kind, c in curves.items():
        ax.plot(c[:, 0], c[:, 1], marker="o", label=kind)
    ax.axvline(budget, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("training seconds (one process per core; evaluation excluded)")
    ax.set_ylabel("validation BPC (median over seeds)")
    ax.set_ylim(top=min(4.0, max(c[:, 1].max() for c in curves.values())))
    ax.set_title("BPC against wall-clock time, tuned kinds")
    ax.legend(fontsize=8)
    fig.savefig(fig_path)
    lines = [
        f"| kind | training seconds ({SCHEDULE['steps']:,} steps) | val BPC at {budget:.1f} s "
        f"| val BPC at {SCHEDULE['steps']:,} steps |",
        "|---|---:|---:|---:|",
    ]
    at_budget = {}
    for kind, c in sorted(curves.items(), key=lambda kc: kc[1][-1, 0]):
        at_budget[kind] = float(np.interp(budget, c[:, 0], c[:, 1]))
        lines.append(f"| {kind} | {c[-1, 0]:.1f} | {at_budget[kind]:.3f} | {c[-1, 1]:.3f} |")
    return lines, budget, at_budget


# ---------------------------------------------------------------------- figures
def bpc_chart(final, path):
    """Per-seed test BPC of each tuned kind, with the mean."""
    from matplotlib.figure import Figure

    kinds = sorted(final, key=lambda k: bpc(final[k], PRIMARY).mean())
    fig = Figure(figsize=(8, 4), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    for i, k in enumerate(kinds):
        for offset, split, colour in ((-0.15, "val", "tab:blue"), (0.15, "test", "tab:orange")):
            values = bpc(final[k], split)
            ax.scatter(np.full(len(values), i + offset), values, s=12, color=colour,
                       label=f"{split} BPC (one seed)" if i == 0 else None)  # fmt: skip
            ax.hlines(values.mean(), i + offset - 0.12, i + offset + 0.12, color=colour)
    ax.set_xticks(np.arange(len(kinds)), kinds, rotation=25, ha="right")
    ax.set_ylabel("bits per character (lower is better)")
    ax.set_title("Tuned kinds at the fresh seeds (dots: seeds; bars: means)")
    ax.legend()
    fig.savefig(path)


def mapped_run(out, study, kind):
    """The run folder whose maps stand for a tuned kind: its first fresh seed with a
    checkpoint (runs reused from an earlier machine have none), else its first seed."""
    folders = [run_dir(out, study.chosen[kind].name, r["seed"]) for r in study.final[kind]]
    return next((f for f in folders if (f / "checkpoint.npz").exists()), folders[0])


def draw_maps(run_dirs, fig_dir):
    """compare.png and stats.json of the runs' maps; from a clean clone (no checkpoints),
    keep the committed figure rather than redraw it for fewer models."""
    maps = [str(d / "checkpoint.npz") for d in run_dirs if (d / "checkpoint.npz").exists()]
    complete = len(maps) == len(run_dirs)
    if len(maps) >= 2 and (complete or not (fig_dir / "stats.json").exists()):
        fig_dir.mkdir(parents=True, exist_ok=True)
        viz.compare_checkpoints(maps, viz.encode_text(COMPARE_TEXT), fig_dir, log=lambda *a: None)


def load_map_stats(fig_dir):
    """viz's stats.json for the compared maps, or None if they were never drawn."""
    path = fig_dir / "stats.json"
    return json.loads(path.read_text()) if path.exists() else None


def head_mean(model, key):
    """Mean of one statistic over a model's heads (stats.json), skipping nulls."""
    vals = [h[key] for h in model["heads"] if h[key] is not None]
    return float(np.mean(vals)) if vals else float("nan")


def uniform_causal_entropy(T):
    """Mean row entropy (nats) of uniform causal attention over T positions."""
    return float(np.mean(np.log(np.arange(1, T + 1))))  # causal row i sees i + 1 keys


def attention_stats_lines(stats):
    """A table of the compared maps' statistics, with the uniform reference."""
    if stats is None:
        return []
    T = stats["input"]["bytes"]
    uniform_distance = float(np.mean(np.arange(T) / 2))  # mean |i - j| over j <= i
    lines = [
        f"Statistics of these maps (means over the heads of layer {stats['models'][0]['layer']}, "
        f"from `figures/stats.json`; a uniform causal map over these {T} bytes has entropy "
        f"{uniform_causal_entropy(T):.2f} nats and mean distance {uniform_distance:.1f}):",
        "",
        "| run | entropy (nats) | mean distance | mass on previous byte | mass on itself |",
        "|---|---:|---:|---:|---:|",
    ]
    for model in stats["models"]:
        lines.append(
            f"| {model['name']} | {head_mean(model, 'entropy_nats'):.2f} | "
            f"{head_mean(model, 'distance'):.1f} | {head_mean(model, 'previous'):.2f} | "
            f"{head_mean(model, 'diagonal'):.2f} |"
        )
    return lines


def mixture_lines(final):
    """softmax(alpha) per layer and head of the tuned mixtures, mean ± sd over seeds."""
    lines = []
    for kind, runs in final.items():
        if "+" not in kind:
            continue
        w = np.array([r["mixture_weights"] for r in runs])  # (seeds, layers, H, N)
        parts = kind.split("+")
        if not lines:
            lines = [
                "Learned mixture weights softmax(alpha), mean ± sd over the fresh seeds "
                "(components in the order of the name; they start equal):",
                "",
                "| kind | layer | " + " | ".join(f"head {h}" for h in range(w.shape[2])) + " |",
                "|---|---:|" + "---|" * w.shape[2],
            ]
        for layer in range(w.shape[1]):
            cells = [
                " · ".join(
                    f"{p} {w[:, layer, h, i].mean():.2f} ± {w[:, layer, h, i].std(ddof=1):.2f}"
                    for i, p in enumerate(parts)
                )
                for h in range(w.shape[2])
            ]
            lines.append(f"| {kind} | {layer} | " + " | ".join(cells) + " |")
    return [*lines, ""] if lines else []


# ----------------------------------------------------------------------- search
def search_lines(study):
    """The search: per kind, every point's seed-0 validation BPC, the chosen one in bold."""
    lines = [
        "| kind | points | untuned (lr 3e-3, R x1) | chosen | seed-0 val BPC (chosen) "
        "| every point: setting -> seed-0 val BPC |",
        "|---|---:|---:|---|---:|---|",
    ]
    for kind in PAPER_KINDS:
        points = study.points.get(kind, [])
        done = [(lr, s, n) for lr, s, n in points if n in study.selection]
        if not done:
            continue
        chosen = study.chosen.get(kind)
        untuned = study.selection.get(kind)
        cells = []
        for lr, s, n in sorted(done):
            text = f"{lr:g}" + (f" x{s:g}" if kind in TRAINED_R_KINDS else "")
            text += f": {study.selection[n]['val_bpc']:.3f}"
            cells.append(f"**{text}**" if chosen and n == chosen.name else text)
        lines.append(
            f"| {kind} | {len(done)} of {len(points)} | "
            + (f"{untuned['val_bpc']:.3f}" if untuned else "n/a")
            + f" | {setting(chosen) if chosen else 'search not finished'} | "
            + (f"{study.selection[chosen.name]['val_bpc']:.3f}" if chosen else "n/a")
            + " | "
            + "; ".join(cells)
            + " |"
        )
    return lines


def random_logit_budget(out, variant, seed):
    """(sum over the schedule of R's learning rate, mean visible logit range of R at
    initialisation, after training) of one Random run; saved beside the figures, since
    checkpoints are not committed.

    Adam moves each parameter by about its learning rate per step at most, and every
    entry of R is a parameter of its own: the sum bounds how far a logit can travel.
    """
    path = run_dir(out, variant.name, seed) / "checkpoint.npz"
    saved = out / "figures" / f"{variant.name}_seed{seed}_logit_budget.json"
    if not path.exists():
        return tuple(json.loads(saved.read_text())) if saved.exists() else None
    lr = variant.lr or SCHEDULE["lr"]
    total_lr = variant.synthetic_lr_scale * sum(
        lr_schedule(step, max_lr=lr, warmup_steps=SCHEDULE["warmup_steps"],
                    total_steps=SCHEDULE["steps"], min_lr=SCHEDULE["min_lr"])
        for step in range(SCHEDULE["steps"])
    )  # fmt: skip
    trained, _ = load_checkpoint(path)
    initial = SynthesizerLM(trained.config, seed=seed)  # as train() initialised it
    budget = (total_lr, visible_logit_range(initial), visible_logit_range(trained))
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(budget))
    return budget


def visible_logit_range(model):
    """Mean over layers, heads and causal rows i >= 1 of max - min of R[h, i, :i+1]."""
    ranges = []
    for name, R in model.params.items():
        if name.endswith(".R"):  # (H, L, L)
            for i in range(1, R.shape[1]):  # causal row i sees keys 0..i
                visible = R[:, i, : i + 1]  # (H, i + 1)
                ranges.extend(visible.max(axis=1) - visible.min(axis=1))
    return float(np.mean(ranges))


# ------------------------------------------------------------------- discussion
def survivors(entries, group=None):
    return [e for e in entries if e[2] < ALPHA and (group is None or e[0] == group)]


def verdict(entry):
    """'`a` better than `b` by 0.012 BPC (95% CI ..., Holm p 0.003)' for one comparison;
    the interval is that of the better one's advantage."""
    _, c, h, _, _ = entry
    better, worse = (c.a, c.b) if c.gap > 0 else (c.b, c.a)
    low, high = (c.low, c.high) if c.gap > 0 else (-c.high, -c.low)
    return (
        f"`{better}` better than `{worse}` by {abs(c.gap):.3f} {PRIMARY} BPC (95% CI "
        f"[{low:+.3f}, {high:+.3f}], p {fmt_p(c.p)}, Holm p {fmt_p(h)})"
    )


def find(entries, a, b):
    return next((e for e in entries if {e[1].a, e[1].b} == {a, b}), None)


def paper_finding(entries):
    paper = [e for e in entries if e[0] == "paper"]
    if not paper:
        return []
    kept = survivors(paper)
    agree = [e for e in kept if e[1].gap > 0]  # first = the paper's better one
    reversed_ = [e for e in kept if e[1].gap <= 0]
    lines = [
        f"**Agreement with the paper.** Of the {len(paper)} pairs the paper orders, "
        f"{len(kept)} survive Holm's correction. The paper's order holds for {len(agree)}"
        + (": " + "; ".join(verdict(e) for e in agree) if agree else "")
        + f". It is reversed for {len(reversed_)}"
        + (": " + "; ".join(verdict(e) for e in reversed_) if reversed_ else "")
        + f". The other {len(paper) - len(kept)} pairs are undecided here: their gaps are "
        "smaller than the runs can resolve (see the detectable gap beside each), so they "
        "count neither for nor against the paper."
    ]
    return [*lines, ""]


def mixing_finding(entries, final):
    lines = []
    for mix in ("dense+vanilla", "random+vanilla"):
        e = find(entries, mix, WIDE_VANILLA)
        if e is None:
            continue
        c, h = e[1], e[2]
        size = (f"`{mix}` has {final[mix][0]['reachable_params']:,} reachable parameters, "
                f"`{WIDE_VANILLA}` {final[WIDE_VANILLA][0]['params']:,}")  # fmt: skip
        if h < ALPHA:
            lines.append(f"{size}: {verdict(e)}.")
        else:
            lines.append(
                f"{size}: gap {c.gap:+.3f} test BPC (positive = the mixture is better; 95% CI "
                f"[{c.low:+.3f}, {c.high:+.3f}], Holm p {fmt_p(h)}): not resolved."
            )
    e = find(entries, "vanilla", WIDE_VANILLA)
    if e is not None:
        lines.append(
            f"Width alone: `{WIDE_VANILLA}` minus `vanilla` {-e[1].gap:+.3f} test BPC "
            f"(Holm p {fmt_p(e[2])})."
        )
    return ["**Mixing or size?** " + " ".join(lines), ""] if lines else []


def tuning_finding(study):
    moved = []
    for kind, variant in study.chosen.items():
        untuned = study.selection.get(kind)
        if untuned is None or kind == WIDE_VANILLA:
            continue
        gain = untuned["val_bpc"] - study.selection[variant.name]["val_bpc"]
        moved.append((gain, kind, variant))
    if not moved:
        return []
    moved.sort(reverse=True)
    return [
        "**What tuning changed.** Seed-0 validation BPC gained by the chosen setting over "
        "the untuned one (lr 3e-3, R x1): "
        + ", ".join(f"`{k}` {g:.3f} ({setting(v)})" for g, k, v in moved)
        + ". A kind's own R learning rate is the largest lever for the Random kinds: "
        "Adam moves every entry of R by about its learning rate per step, and each entry is a "
        "logit of its own, so at the base rate R barely leaves its initialisation in "
        f"{SCHEDULE['steps']:,} steps.",
        "",
    ]


def budget_finding(out, study):
    lines = []
    cases = [("the untuned", VARIANTS["random"], SEEDS[0]),
             ("the tuned", study.chosen.get("random"), study.seeds[0])]  # fmt: skip
    for name, variant, seed in cases:
        budget = random_logit_budget(out, variant, seed) if variant else None
        if budget is not None:
            total, before, after = budget
            lines.append(
                f"{name} `random` ({setting(variant)}, seed {seed}): R's learning rates sum "
                f"to {total:.2f}; a row's visible logits spread (max - min) from {before:.2f} "
                f"at initialisation to {after:.2f}"
            )
    if not lines:
        return []
    return ["**Random's learning budget.** " + "; ".join(lines)[0].upper() + "; ".join(lines)[1:]
            + ".", ""]  # fmt: skip


def memorisation_finding(out, study):
    """Train loss (in bits) against validation BPC at the end of the tuned runs."""
    gaps = []
    for runs in study.final.values():  # finished runs only
        for r in runs:
            path = run_dir(out, r["variant"], r["seed"]) / "metrics.jsonl"
            records = [json.loads(line) for line in metrics_lines(path)]
            train_bits = np.mean([x["loss"] for x in records[-4:]]) / math.log(2)
            gaps.append(records[-1]["val_bpc"] - train_bits)
    if not gaps:
        return []
    passes = SCHEDULE["steps"] * SCHEDULE["batch_size"] * MODEL["max_len"] / 943_718
    return [
        f"**How far the budget reaches.** {SCHEDULE['steps']:,} steps of "
        f"{SCHEDULE['batch_size']} x {MODEL['max_len']} bytes are {passes:.1f} passes over "
        "the 944 KB training split; at the end the training loss (mean of the last 4 "
        f"logged steps, in bits) sits {min(gaps):.2f} to {max(gaps):.2f} BPC below "
        "validation BPC across the tuned runs. Longer runs on this prefix would mostly "
        "measure memorisation; these numbers compare early training on a small corpus.",
        "",
    ]


def pooled_lines(final):
    """One-way ANOVA over the tuned kinds and the Tukey HSD pairs that differ."""
    groups = {k: bpc(v, PRIMARY) for k, v in final.items() if len(v) > 1}
    if len(groups) < 3:
        return [], None
    result = pooled(groups)
    names = result.names
    differ = [
        (names[i], names[j], result.tukey_low[i, j], result.tukey_high[i, j], result.tukey_p[i, j])
        for i in range(len(names)) for j in range(i + 1, len(names))
        if result.tukey_p[i, j] < ALPHA
    ]  # fmt: skip
    table = [
        "| first | second | first minus second | 95% interval | Tukey p |",
        "|---|---|---:|---|---:|",
        *(
            f"| {a} | {b} | {(lo + hi) / 2:+.3f} | [{lo:+.3f}, {hi:+.3f}] | {fmt_p(p)} |"
            for a, b, lo, hi, p in differ
        ),  # fmt: skip
        "",
    ]
    lines = [
        f"**Pooled check.** One-way ANOVA of {PRIMARY} BPC over the {len(names)} tuned "
        f"kinds: F = {result.f:.1f}, p {fmt_p(result.p)}. Tukey's HSD (pooled variance, "
        f"`scipy.stats.tukey_hsd`) separates {len(differ)} of "
        f"{len(names) * (len(names) - 1) // 2} pairs at family-wise 0.05"
        + (":" if differ else "."),
        "",
        *(table if differ else []),
    ]
    return lines, result


def protocol_lines(study):
    n_points = sum(len(p) for p in study.points.values())
    return [
        "## Protocol (fixed before the results below)",
        "",
        "- **Search.** Every paper kind at the base learning rates "
        f"{', '.join(f'{x:g}' for x in setup.LR_GRID)}; the kinds whose R, R1 or R2 is "
        f"trained ({', '.join(TRAINED_R_KINDS)}) crossed with R learning-rate multipliers "
        f"{', '.join(f'x{x:g}' for x in setup.R_SCALE_GRID)}. When a "
        "kind's best point had an unsearched neighbour on the ladders (learning rates "
        "doubling, multipliers x1, x3, x10, ...; diagonals included), the neighbours were "
        "searched too, until the best point was a minimum of its whole neighbourhood: "
        f"{n_points} points in all. The schedule's floor (min_lr "
        f"{SCHEDULE['min_lr']:g}), warmup, weight decay and clipping are the same for every "
        "point.",
        f"- **Selection.** One run per point on seed {SELECTION_SEED}, chosen by validation "
        "BPC. The selection runs are not reused: every comparison below uses fresh seeds "
        f"{study.seeds} at the chosen settings (where a chosen setting is the untuned one, "
        "the earlier sweep's seeds 1 and 2 are the same runs and count). **More seeds "
        f"where they matter:** when, after those seeds, a compared pair's {PRIMARY}-BPC gap "
        f"lies between {CLOSE_RANGE[0]:g} and {CLOSE_RANGE[1]:g} times the gap they detect "
        f"with 80% power, both kinds get {setup.EXTRA_SEEDS} more fresh seeds (the "
        "seeds column of the table says how many each kind has).",
        f"- **Primary metric: {PRIMARY} BPC.** Validation BPC chose the settings; it is shown "
        "as a secondary column, not tested again.",
        "- **Tests.** Each comparison: a two-sided Welch t-test over seeds with its 95% "
        "confidence interval, and the smallest true gap the test would detect with 80% power "
        "(noncentral t, pooled sd of the pair) at alpha 0.05 and at Holm's strictest level "
        "(alpha / number of comparisons). **One family:** Holm's step-down correction over "
        "every comparison this report shows (the paper's pairs, the tuned kinds' own "
        "questions, the controls); a gap *survives* when its Holm p is below 0.05. "
        "Agreement with the paper counts only pairs that survive. **Pooled check:** one-way "
        "ANOVA with Tukey's HSD over the tuned kinds.",
        f"- **Mixing or size.** `{WIDE_VANILLA}`: vanilla at its chosen learning rate, widened "
        "to the d_model whose parameter count is nearest dense+vanilla's reachable count.",
        "",
    ]


def rerun_finding(out):
    """The rerun of vanilla's seed 1 at today's commit against the earlier commit's run."""
    paths = [run_dir(out, name, 1) / "result.json" for name in ("vanilla", RERUN)]
    if not all(p.exists() for p in paths):
        return []
    old, new = (json.loads(p.read_text()) for p in paths)
    commits = [(r.get("compute") or {}).get("minisynth_commit") or "unknown" for r in (old, new)]
    diff = max(abs(old["val_bpc"] - new["val_bpc"]), abs(old["test_bpc"] - new["test_bpc"]))
    return [
        "**Reruns.** `vanilla` seed 1, trained at commit "
        f"{commits[0]} and again at {commits[1]} with the same settings: val BPC "
        f"{old['val_bpc']:.7f} and {new['val_bpc']:.7f}, test {old['test_bpc']:.7f} and "
        f"{new['test_bpc']:.7f}: "
        + (
            "bit for bit the same. "
            if diff == 0
            else f"they differ by {diff:.1e} BPC, not "
            "bit for bit: floating-point sums in the fast kernels follow the code's order of "
            "operations, which commits change. "
        )
        + "Runs reused from an earlier commit (vanilla's and random_fixed's seeds 1 and 2, "
        "the controls) are comparable at that precision, far below the seed-to-seed spread.",
        "",
    ]


def seed_correlation(final):
    """Pearson r of the val and test deviations from each kind's mean, over all runs."""
    dv = np.concatenate([bpc(r, "val") - bpc(r, "val").mean() for r in final.values()])
    dt = np.concatenate([bpc(r, "test") - bpc(r, "test").mean() for r in final.values()])
    return float(np.corrcoef(dv, dt)[0, 1])


def compute_line(results):
    commits = sorted({(r.get("compute") or {}).get("minisynth_commit") or "unknown"
                      for r in results})  # fmt: skip
    c = results[0].get("compute") or {}
    env = ", ".join(f"{k}={c[k]}" for k in ("OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")
                    if c.get(k))  # fmt: skip
    return (
        f"Runs made at minisynth commit(s) {', '.join(commits)}, {c.get('backend')} backend, "
        f"one process per core ({c.get('cpus_usable')} of {c.get('cpus_total')} CPUs usable"
        + (f", {env}" if env else "")
        + "). Wall times depend on these; BPC only up to "
        "floating-point rounding."
    )


def training_tokens_per_s(out, result):
    """Training tokens over training seconds (evaluation excluded), from the metrics."""
    seconds = training_clock(run_dir(out, result["variant"], result["seed"]))[-1][0]
    return result["tokens"] / seconds


def cost_line(study, out):
    """The study's runs and CPU-hours: in all, reused from the earlier sweep, and new (by
    role) against the budget."""
    groups = [list(study.selection.values()), *study.final.values(), *study.untuned.values()]
    rerun = run_dir(out, RERUN, 1) / "result.json"
    if rerun.exists():
        groups.append([json.loads(rerun.read_text())])
    runs = {(r["variant"], r["seed"]): r for group in groups for r in group}
    reused = {key for key, r in runs.items()
              if r["compute"].get("minisynth_commit") in setup.EARLIER_SWEEP_COMMITS}  # fmt: skip
    selection = {(r["variant"], r["seed"]) for r in study.selection.values()}
    fresh = {(r["variant"], r["seed"]) for group in study.final.values() for r in group
             if r["seed"] in study.seeds}  # fmt: skip
    extra = {(r["variant"], r["seed"]) for group in study.final.values() for r in group} - fresh
    roles = [("the search's selection runs", selection), ("the fresh seeds", fresh),
             ("the extra seeds of close pairs", extra)]  # fmt: skip
    roles.append(("controls, untuned kinds and the rerun",
                  set(runs) - reused - selection - fresh - extra))  # fmt: skip

    def hours(keys):
        return sum(runs[key]["wall_time_s"] for key in keys) / 3600

    new = set(runs) - reused
    parts = ", ".join(f"{name} {len(keys - reused)} ({hours(keys - reused):.1f} h)"
                      for name, keys in roles if keys - reused)  # fmt: skip
    over, budget = hours(new) - setup.BUDGET_HOURS, f"{setup.BUDGET_HOURS:g} CPU-hours"
    verdict = (f"{over:.1f} h over the budget of {budget} for new runs" if over > 0
               else f"within the budget of {budget} for new runs")  # fmt: skip
    return (
        f"The study: {len(runs)} runs, {hours(runs):.1f} CPU-hours of wall time in all; "
        f"{len(reused)} runs ({hours(reused):.1f} h) of the earlier sweep reused where their "
        f"settings match, {len(new)} new ({hours(new):.1f} h: {parts}), {verdict}."
    )


def results_table(out, study):
    lines = [
        "| kind | setting | seeds | val BPC | test BPC | raw params | reachable params "
        "| train tokens/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for kind in sorted(study.final, key=lambda k: bpc(study.final[k], PRIMARY).mean()):
        runs = study.final[kind]
        lines.append(
            f"| {kind} | {setting(study.chosen[kind])} | {len(runs)} | {fmt(bpc(runs, 'val'))} | "
            f"{fmt(bpc(runs, 'test'))} | {runs[0]['params']:,} | {runs[0]['reachable_params']:,} "
            f"| {np.mean([training_tokens_per_s(out, r) for r in runs]):,.0f} |"
        )
    return lines


def controls_lines(study):
    lines = [
        "| variant | attention | options | seeds | val BPC | test BPC | question |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for v in [VARIANTS[k] for k in PAPER_KINDS] + CONTROLS:
        runs = study.untuned.get(v.name)
        if not runs:
            continue
        options = ", ".join(f"{a}={b}" for a, b in v.options) or "-"
        if v.synthetic_lr_scale != 1:
            options += f", R learning rate x{v.synthetic_lr_scale:g}"
        lines.append(
            f"| {v.name} | {v.attention} | {options} | {len(runs)} | {fmt(bpc(runs, 'val'))} | "
            f"{fmt(bpc(runs, 'test'))} | {v.question or 'the kind at lr 3e-3, R x1'} |"
        )
    return lines


def write_report(out, study, report, command):
    everything = [r for runs in (*study.final.values(), *study.untuned.values()) for r in runs]
    if not everything and not study.selection:
        raise SystemExit("no finished runs: nothing to report")
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    entries = family(study)
    lines = [
        "# Miniature reproduction: Synthesizer variants on character-level enwik8",
        "",
        "Generated by `benchmarks/reproduce.py` from the runs' own output files "
        f"(`{out}/runs/*/result.json`, `metrics.jsonl`); nothing here is typed in by hand.",
        "",
        f"Command: `{command}`",
        "",
        f"Data: {(everything or list(study.selection.values()))[0]['data']}. Model: "
        f"{json.dumps(MODEL)}, byte vocabulary (256), tied embeddings. Schedule: "
        f"{json.dumps(SCHEDULE)} (warmup + cosine, AdamW), "
        f"{SCHEDULE['steps'] * SCHEDULE['batch_size'] * MODEL['max_len']:,} training tokens "
        "per run.",
        "",
        compute_line(everything or list(study.selection.values())),
        cost_line(study, out),
        "",
        *protocol_lines(study),
        "## The search",
        "",
        *search_lines(study),
        "",
    ]
    if study.final:
        bpc_chart(study.final, fig_dir / "bpc.png")
        lines += [
            "## The tuned kinds at fresh seeds",
            "",
            *results_table(out, study),
            "",
            "BPC: mean ± sample standard deviation over the seeds. Train tokens/s: the runs' "
            "own, one process per core, evaluation excluded.",
            "",
            "![BPC per tuned kind](figures/bpc.png)",
            "",
        ]
    lines += [
        "## Comparisons",
        "",
        f"Gap = {PRIMARY} BPC of the second minus the first (positive: the first is better). "
        "p: two-sided Welch t-test over seeds; Holm p: corrected over all "
        f"{len(entries)} comparisons of this table; detectable: the smallest true gap found "
        "with 80% power, at alpha 0.05 and at Holm's strictest level. Rows 'paper' are the "
        "pairs the paper orders (first = better in the paper); 'controls' compare the "
        f"untuned runs (lr 3e-3, R x1, seeds {SEEDS}).",
        "",
        *comparison_table(entries),
        "",
    ]
    if study.final:
        r = seed_correlation(study.final)
        lines += [
            f"Across the tuned runs, a seed's validation and test deviations from its kind's "
            f"mean correlate at r = {r:.2f}: the two splits are close to one measurement, so "
            "a gap significant on both is not two confirmations.",
            "",
        ]
        pooled_text, _ = pooled_lines(study.final)
        lines += pooled_text
        lines += [
            "## Parameters as they act",
            "",
            "Raw: every entry of the model. Reachable: entries that receive a gradient "
            "under the causal mask at T = max_len (half of each R lies above the diagonal "
            "and never does; nor do R[h, 0, 0] and R1[h, 0], the logits of row 0's one-entry "
            "softmax). Weight decay (AdamW's default filter) reaches matrices only, never "
            "the embeddings, the mixture weights alpha or the synthetic logits R, R1, R2.",
            "",
            *parameter_lines(study),
            "",
        ]
        clock_lines, budget, at_budget = wall_time_view(out, study, fig_dir / "wall_time.png")
        order = sorted(at_budget, key=at_budget.get)
        lines += [
            "## Compute as well as tokens",
            "",
            "The same runs on a clock: training seconds (the sum of each logging interval's "
            "tokens over its measured tokens/s, so evaluation is excluded), median over seeds. "
            f"At {budget:.1f} s, when the fastest kind finished its {SCHEDULE['steps']:,} steps, "
            "validation "
            "BPC is interpolated linearly between evaluations. A run stopped early is not a "
            "run scheduled for the shorter time (its learning rate had not decayed), so this "
            "view favours the fast kinds less than a time-matched schedule would.",
            "",
            *clock_lines,
            "",
            "Order at equal time: " + " < ".join(f"{k} ({at_budget[k]:.3f})" for k in order) + ".",
            "",
            "![BPC against wall time](figures/wall_time.png)",
            "",
        ]
        first = [run_dir(out, study.chosen[k].name, study.seeds[0]) for k in study.final]
        first = [d for d in first if d.exists()]
        viz.curves_for_runs([str(d) for d in first], str(fig_dir / "curves.png"))
        draw_maps([mapped_run(out, study, k) for k in study.final], fig_dir)
        lines += [
            "## Curves and maps",
            "",
            f"Training curves (seed {study.seeds[0]}): ![curves](figures/curves.png)",
            "",
            "Attention maps of the last layer of each tuned kind (its first fresh seed whose "
            f"checkpoint is on this machine; the table names it) on the same text "
            f"(`{COMPARE_TEXT}`): ![maps](figures/compare.png)",
            "",
            *attention_stats_lines(load_map_stats(fig_dir)),
            "",
            *mixture_lines(study.final),
        ]
    if study.untuned:
        controls = ["uniform", "random_fixed", "random_fixed_sharp"]
        draw_maps([run_dir(out, k, SEEDS[0]) for k in controls if k in study.untuned],
                  fig_dir / "controls")  # fmt: skip
        lines += [
            "## Controls (untuned setting)",
            "",
            f"The controls and the kinds as first run, at lr 3e-3 and R x1, seeds {SEEDS}; "
            "their comparisons are in the table above ('controls').",
            "",
            *controls_lines(study),
            "",
            "The fixed-random controls on the comparison text: "
            "![controls](figures/controls/compare.png)",
            "",
        ]
    lines += [
        "## Discussion",
        "",
        *(pooled_order_line(study.final) if study.final else []),
        *paper_finding(entries),
        *mixing_finding(entries, study.final),
        *other_findings(entries),
        *tuning_finding(study),
        *budget_finding(out, study),
        *memorisation_finding(out, study),
        *rerun_finding(out),
        "**The paper's numbers.** "
        + PAPER_SOURCE
        + " Its LM1B ordering as quoted: "
        + " < ".join(f"{k} ({v})" for k, v in PAPER_LM1B.items())
        + ". They are read here as a secondary source; this report's verdicts are about "
        "its own runs.",
        "",
    ]
    text = "\n".join(lines)
    rel = os.path.relpath(fig_dir, report.parent)
    report.write_text(text.replace("](figures/", f"]({rel}/"))


def pooled_order_line(final):
    order = sorted(final, key=lambda k: bpc(final[k], PRIMARY).mean())
    return [
        f"**Ordering** by mean {PRIMARY} BPC (best first): "
        + " < ".join(f"{k} ({bpc(final[k], PRIMARY).mean():.3f})" for k in order)
        + ". Only the gaps that survive Holm's correction below are verdicts; the rest of "
        "this order is within the runs' noise.",
        "",
    ]


def other_findings(entries):
    """The tuned kinds' own questions and the controls, as verdicts or as unresolved."""
    lines = []
    for group, title in (("tuned", "Factorized, frozen, wider"), ("controls", "Controls")):
        mixing = group == "tuned"  # the wide vanilla's pairs are mixing_finding's
        rows = [e for e in entries
                if e[0] == group and not (mixing and WIDE_VANILLA in (e[1].a, e[1].b))]  # fmt: skip
        if not rows:
            continue
        kept = survivors(rows)
        open_rows = [e for e in rows if e[2] >= ALPHA]
        text = f"**{title}.** " + ("; ".join(verdict(e) for e in kept) + ". " if kept else "")
        if open_rows:
            text += (
                "Not resolved (Holm p >= 0.05): "
                + "; ".join(
                    f"`{e[1].a}` vs `{e[1].b}` {e[1].gap:+.3f} (Holm p {fmt_p(e[2])})"
                    for e in open_rows
                )
                + "."
            )
        lines += [text, ""]
    return lines
