"""RESULTS.md from the runs of ``reproduce.py``: tables, Welch tests, figures and a
discussion generated from the runs' own output files (``write_report``)."""

from __future__ import annotations

import json
import math
import os

import numpy as np
from reproduce_setup import (
    COMPARE_TEXT,
    CONTROLS,
    MODEL,
    PAPER_KINDS,
    PAPER_LM1B,
    PAPER_SOURCE,
    SCHEDULE,
    SEEDS,
    VARIANTS,
    run_dir,
)

from minisynth import SynthesizerLM, viz
from minisynth.checkpoint import load_checkpoint
from minisynth.optim import lr_schedule


# ------------------------------------------------------------------------ report
def variant_of(result):
    return result.get("variant", result["attention"])  # runs made before variants existed


def summarise(results):
    """variant -> dict of means and standard deviations over seeds (and the per-seed BPC)."""
    table = {}
    for name in VARIANTS:
        rs = [r for r in results if variant_of(r) == name]
        if not rs:
            continue
        val = np.array([r["val_bpc"] for r in rs])
        test = np.array([r["test_bpc"] for r in rs])
        table[name] = {
            "n": len(rs),
            "params": rs[0]["params"],
            "attention_params": rs[0]["attention_params_per_layer"],
            "val": val,
            "test": test,
            "val_mean": val.mean(),
            "val_std": val.std(ddof=1) if len(rs) > 1 else float("nan"),
            "test_mean": test.mean(),
            "test_std": test.std(ddof=1) if len(rs) > 1 else float("nan"),
            "tokens_per_s": float(np.mean([r["tokens_per_s"] for r in rs])),
            "wall_time_s": float(np.mean([r["wall_time_s"] for r in rs])),
        }
    return table


def welch(table, a, b, split):
    """(gap = mean of b - mean of a, two-sided Welch t-test p-value) on one split's BPC."""
    from scipy import stats

    x, y = table[a][split], table[b][split]
    gap = float(y.mean() - x.mean())
    if len(x) < 2 or len(y) < 2:
        return gap, float("nan")
    return gap, float(stats.ttest_ind(y, x, equal_var=False).pvalue)


def fmt_p(p):
    return "n/a" if math.isnan(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def fmt(mean, std):
    return f"{mean:.3f}" if math.isnan(std) else f"{mean:.3f} ± {std:.3f}"


def bpc_chart(table, path):
    from matplotlib.figure import Figure

    kinds = sorted(table, key=lambda k: table[k]["val_mean"])
    fig = Figure(figsize=(8, 4), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(kinds))
    for offset, split, colour in ((-0.2, "val", "tab:blue"), (0.2, "test", "tab:orange")):
        ax.bar(
            x + offset,
            [table[k][f"{split}_mean"] for k in kinds],
            width=0.4,
            yerr=[np.nan_to_num(table[k][f"{split}_std"]) for k in kinds],
            capsize=3,
            label=f"{split} BPC",
            color=colour,
        )
    lo = min(table[k]["val_mean"] for k in kinds)
    hi = max(table[k]["test_mean"] for k in kinds)
    ax.set_ylim(lo - 0.15, hi + 0.1)
    ax.set_xticks(x, kinds, rotation=25, ha="right")
    ax.set_ylabel("bits per character (lower is better)")
    ax.set_title("BPC per attention kind (mean ± sd over seeds)")
    ax.legend()
    fig.savefig(path)
    return path


def agreement(table):
    """Pairs of kinds the paper orders (LM1B): (a, b, miniature agrees, val and test gaps
    and Welch p-values)."""
    kinds = [k for k in PAPER_LM1B if k in table]
    rows = []
    for i, a in enumerate(kinds):
        for b in kinds[i + 1 :]:
            paper_a_better = PAPER_LM1B[a] < PAPER_LM1B[b]
            ours_a_better = table[a]["val_mean"] < table[b]["val_mean"]
            rows.append((a, b, paper_a_better == ours_a_better,
                         *welch(table, a, b, "val"), *welch(table, a, b, "test")))  # fmt: skip
    return rows


def comparison_lines(table, pairs):
    """A table of gaps and Welch p-values for (a, b, question) pairs present in the table."""
    lines = [
        "| first | than | val gap | p (val) | test gap | p (test) | question |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for a, b, question in pairs:
        if a in table and b in table:
            gv, pv = welch(table, a, b, "val")
            gt, pt = welch(table, a, b, "test")
            lines.append(
                f"| {a} | {b} | {gv:+.3f} | {fmt_p(pv)} | {gt:+.3f} | {fmt_p(pt)} | {question} |"
            )
    return lines


# (better candidate, compared with, the question) for the controls
CONTROL_PAIRS = [
    ("random_fixed", "uniform", "is the near-uniform fixed R an alignment at all?"),
    ("random_fixed_sharp", "uniform", "does a sharp fixed random alignment beat none?"),
    ("random_fixed_sharp", "random_fixed", "sharp against near-uniform fixed R"),
    ("dense+vanilla", "dense+vanilla_shared_q", "Dense's own first layer against the query's"),
    ("dense+vanilla_shared_q", "vanilla", "mixing with few extra parameters"),
    ("random_lr10", "random", "Random with 10x the learning rate for R"),
    ("dense", "random_lr10", "Dense against Random with the larger R learning rate"),
]


def late_improvement(out, kinds, seed):
    """kind -> val BPC drop over the last validation interval of its seed run, if logged."""
    drops = {}
    for kind in kinds:
        path = run_dir(out, kind, seed) / "metrics.jsonl"
        if not path.exists():
            continue
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        vals = [(r["step"], r["val_bpc"]) for r in records if r.get("val_bpc") is not None]
        if len(vals) >= 2:
            (s0, v0), (s1, v1) = vals[-2], vals[-1]
            drops[kind] = (s0, s1, v0 - v1)
    return drops


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
        "| attention | entropy (nats) | mean distance | mass on previous byte | mass on itself |",
        "|---|---:|---:|---:|---:|",
    ]
    for model in stats["models"]:
        lines.append(
            f"| {model['attention']} | {head_mean(model, 'entropy_nats'):.2f} | "
            f"{head_mean(model, 'distance'):.1f} | {head_mean(model, 'previous'):.2f} | "
            f"{head_mean(model, 'diagonal'):.2f} |"
        )
    return lines


def random_logit_budget(out, steps, name="random"):
    """(sum of the learning rates of R, mean visible logit range of R at initialisation and
    after training) for the seed-0 run of a Random variant.

    Adam moves each parameter by about the learning rate per step at most, and each
    entry of a Random synthesizer's R is a parameter of its own: the sum of the
    learning rates bounds how far any logit can travel from its initial value.
    """
    path = run_dir(out, name, SEEDS[0]) / "checkpoint.npz"
    saved = out / "figures" / f"{name}_logit_budget.json"  # committed; checkpoints are not
    if not path.exists():
        return tuple(json.loads(saved.read_text())) if saved.exists() else None
    total_lr = VARIANTS[name].synthetic_lr_scale * sum(
        lr_schedule(
            step,
            max_lr=SCHEDULE["lr"],
            warmup_steps=SCHEDULE["warmup_steps"],
            total_steps=steps,
            min_lr=SCHEDULE["min_lr"],
        )
        for step in range(steps)
    )
    trained, _ = load_checkpoint(path)
    initial = SynthesizerLM(trained.config, seed=SEEDS[0])  # as train() initialised it
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


def ordering_finding(rows, clear, table):
    """How many of the paper's pairs the miniature orders alike, and how clearly."""
    n_kinds = len({k for r in rows for k in r[:2]})
    return (
        f"**Pairwise ordering.** The miniature agrees with the paper on {sum(r[2] for r in rows)} "
        f"of {len(rows)} ordered pairs; {len(clear)} of the gaps have a Welch p-value below "
        f"0.05 on both validation and test BPC, and the paper's order holds for "
        f"{sum(r[2] for r in clear)} of those. These {len(rows)} comparisons are not "
        f"independent tests: they are the pairs of one ordering of {n_kinds} kinds and share "
        "each kind's runs, so one unlucky seed moves several of them at once. With "
        f"{min(t['n'] for t in table.values())} seeds per kind a Welch test has little power, "
        f"and a Bonferroni correction for {len(rows)} comparisons would ask for p < "
        f"{0.05 / len(rows):.4f}; read the p-values as a ranking of how clear each gap is, "
        "not as a verdict."
    )


def findings(table, rows, out, tokens, steps):
    """The discussion's claims, each computed from the table (no canned verdicts)."""
    clear = [r for r in rows if r[4] < 0.05 and r[6] < 0.05]
    lines = [ordering_finding(rows, clear, table), ""] if rows else []
    for mix in ("dense+vanilla", "random+vanilla"):  # mixtures against their components
        parts = mix.split("+")
        if mix not in table or not all(p in table for p in parts):
            continue
        diffs = [
            f"`{p}` {table[mix]['val_mean'] - table[p]['val_mean']:+.3f} BPC (Welch p "
            f"{fmt_p(welch(table, p, mix, 'val')[1])} val, "
            f"{fmt_p(welch(table, p, mix, 'test')[1])} test)"
            for p in parts
        ]
        best_alone = all(table[mix]["val_mean"] < table[p]["val_mean"] for p in parts)
        lines.append(
            f"**Mixture `{mix}`** {'beats both' if best_alone else 'does not beat both'} "
            "of its components on validation BPC. Its BPC minus theirs (negative = the "
            "mixture is better): " + ", ".join(diffs) + "."
        )
        lines.append("")
    lines += size_finding(table)
    synthetic = [
        k for k in ("dense", "random", "factorized_dense", "factorized_random") if k in table
    ]
    if "vanilla" in table and synthetic:  # synthetic-only kinds against dot-product attention
        best = min(synthetic, key=lambda k: table[k]["val_mean"])
        gap = table[best]["val_mean"] - table["vanilla"]["val_mean"]
        lines.append(
            f"**Synthetic alone vs dot product.** The best synthetic-only kind is `{best}`, "
            f"{gap:+.3f} BPC ({gap / table['vanilla']['val_mean']:+.1%}) against `vanilla` "
            f"(Welch p {fmt_p(welch(table, 'vanilla', best, 'val')[1])} val, "
            f"{fmt_p(welch(table, 'vanilla', best, 'test')[1])} test). Per kind: "
            + ", ".join(
                f"`{k}` {table[k]['val_mean'] - table['vanilla']['val_mean']:+.3f}"
                for k in synthetic
            )
            + " (positive = worse than vanilla)."
        )
        lines.append("")
    lines += alignment_finding(table, out)
    lines += random_budget_finding(table, out, steps)
    drops = late_improvement(out, table, SEEDS[0])
    if drops:  # are the runs converged?
        s0, s1, _ = next(iter(drops.values()))
        lo, hi = min(d[2] for d in drops.values()), max(d[2] for d in drops.values())
        lines.append(
            f"**Budget.** Between steps {s0} and {s1} (seed {SEEDS[0]}), validation BPC "
            f"still fell by {lo:.3f} to {hi:.3f} for every variant: the models are far from "
            "converged, so this compares early training, and the ordering may change "
            "with a longer budget."
            if lo > 0
            else f"**Budget.** Between steps {s0} and {s1} (seed {SEEDS[0]}) the change in "
            f"validation BPC ranged from {-hi:+.3f} to {-lo:+.3f}."
        )
        lines.append("")
    disagree = [(r[0], r[1]) for r in clear if not r[2]]
    lines.append(
        "**Where the miniature disagrees.** "
        + (
            f"Of the clear gaps, {len(disagree)} "
            + ("reverses" if len(disagree) == 1 else "reverse")
            + " the paper's order: the paper has "
            + "; ".join(f"`{a}` better than `{b}`" for a, b in disagree)
            + ", the miniature the opposite."
            if disagree
            else "No paper-ordered pair with a clear gap is reversed."
        )
        + f" The models are tiny ({MODEL['n_layers']} layers, d_model {MODEL['d_model']}, "
        f"context {MODEL['max_len']} bytes) and trained on {tokens / 1e6:.1f}M characters of "
        "one 1 MB Wikipedia prefix, while the paper trains large word-piece models on LM1B; "
        "bytes and word pieces need different alignments, and BPC and perplexity gaps are "
        "not on one scale."
    )
    return lines


def size_finding(table):
    """Mixing or size? dense+vanilla with its own first layer and with the query's."""
    names = ["vanilla", "dense+vanilla_shared_q", "dense+vanilla"]
    if not all(n in table for n in names):
        return []
    base = table["vanilla"]["params"]
    parts = [
        f"`{n}` {table[n]['params']:,} parameters ({table[n]['params'] / base - 1:+.1%}), "
        f"{table[n]['val_mean'] - table['vanilla']['val_mean']:+.3f} val BPC against vanilla "
        f"(p {fmt_p(welch(table, 'vanilla', n, 'val')[1])}), "
        f"{table[n]['test_mean'] - table['vanilla']['test_mean']:+.3f} test "
        f"(p {fmt_p(welch(table, 'vanilla', n, 'test')[1])})"
        for n in names[1:]
    ]
    gv, pv = welch(table, "dense+vanilla_shared_q", "dense+vanilla", "val")
    gt, pt = welch(table, "dense+vanilla_shared_q", "dense+vanilla", "test")
    return [
        "**Mixing or size?** Against `vanilla` "
        f"({base:,} parameters): " + "; ".join(parts) + ". Our `dense+vanilla` minus the "
        f"authors' (Dense's first layer = the query projection): {gv:+.3f} val BPC "
        f"(p {fmt_p(pv)}), {gt:+.3f} test (p {fmt_p(pt)}).",
        "",
    ]


def alignment_finding(table, out):
    """Is random_fixed an alignment at all? The uniform and sharp controls."""
    names = ["uniform", "random_fixed", "random_fixed_sharp"]
    if not all(n in table for n in names):
        return []
    line = (
        "**Fixed random alignments.** Validation (test) BPC: "
        + ", ".join(
            f"`{n}` {table[n]['val_mean']:.3f} ({table[n]['test_mean']:.3f})" for n in names
        )
        + ". Today's `random_fixed` minus uniform attention: "
        f"{welch(table, 'uniform', 'random_fixed', 'val')[0]:+.3f} val BPC "
        f"(p {fmt_p(welch(table, 'uniform', 'random_fixed', 'val')[1])}); the sharp fixed R "
        f"minus uniform: {welch(table, 'uniform', 'random_fixed_sharp', 'val')[0]:+.3f} "
        f"(p {fmt_p(welch(table, 'uniform', 'random_fixed_sharp', 'val')[1])})."
    )
    stats = load_map_stats(out / "figures" / "controls")
    if stats is not None:
        entropies = {  # the run directories' names, without the seed
            m["name"].rsplit("-seed", 1)[0]: head_mean(m, "entropy_nats") for m in stats["models"]
        }
        T = stats["input"]["bytes"]
        line += (
            f" On the comparison text ({T} bytes; uniform causal attention has entropy "
            f"{uniform_causal_entropy(T):.2f} nats), the seed-0 maps' mean entropy is "
            + ", ".join(f"{e:.2f} for `{n}`" for n, e in entropies.items())
            + "."
        )
    return [line, ""]


def random_budget_finding(table, out, steps):
    """Random's learning budget, with and without the larger learning rate for R."""
    lines = []
    for name in ("random", "random_lr10"):
        budget = random_logit_budget(out, steps, name)
        if budget is None or name not in table:
            continue
        total_lr, spread_init, spread = budget
        lines.append(
            f"`{name}`: the learning rates of R sum to {total_lr:.2f} over the schedule; the "
            f"mean range (max - min) of a row's visible logits went from {spread_init:.2f} at "
            f"initialisation to {spread:.2f} (seed {SEEDS[0]})"
        )
    if not lines:
        return []
    text = (
        "**Random's learning budget.** Adam moves each parameter by at most about its "
        "learning rate per step, and every entry of R is its own parameter. "
        + "; ".join(lines)
        + "."
    )
    if all(n in table for n in ("random", "random_lr10", "dense")):
        gv, pv = welch(table, "random", "random_lr10", "val")
        gd, pd = welch(table, "dense", "random_lr10", "val")
        text += (
            f" With 10x the learning rate for R, validation BPC changes by {gv:+.3f} "
            f"(p {fmt_p(pv)}), and `random_lr10` minus `dense` is {gd:+.3f} BPC (p "
            f"{fmt_p(pd)}; negative = Random is better): within this budget, how far R can "
            "travel decides much of the gap between Random and Dense."
        )
    return [text, ""]


def compute_line(results):
    """What the runs' timings ran on, from their recorded ``compute`` (commits listed)."""
    settings = {
        json.dumps({k: v for k, v in (r.get("compute") or {}).items() if k != "minisynth_commit"},
                   sort_keys=True)
        for r in results
    }  # fmt: skip
    commits = sorted({(r.get("compute") or {}).get("minisynth_commit") or "unknown"
                      for r in results})  # fmt: skip
    if len(settings) != 1 or results[0].get("compute") is None:
        return "Run timings: the runs were made under different settings (see each result.json)."
    c = results[0]["compute"]
    env = ", ".join(
        f"{k}={c[k]}" for k in ("OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS") if c.get(k)
    )
    return (
        f"Run timings (the runs' own wall time): minisynth commit(s) {', '.join(commits)}, "
        f"{c['backend']} backend, {c['cpus_usable']} of {c['cpus_total']} CPUs usable"
        + (f", {env}" if env else "")
        + ". Tokens/s and wall time depend on these; BPC only up to floating-point rounding."
    )


def timings_line(timings):
    if timings is None:
        return []
    c = timings["compute"]
    return [
        f"Today's timings (`python benchmarks/reproduce.py --timings`: median of "
        f"{timings['steps']} training steps per variant after warmup): minisynth commit "
        f"{c.get('minisynth_commit') or 'unknown'}, {c['backend']} backend, "
        f"{c['cpus_usable']} of {c['cpus_total']} CPUs usable"
        + "".join(
            f", {k}={c[k]}" for k in ("OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS") if c.get(k)
        )  # fmt: skip
        + ".",
        "",
    ]


def mixture_lines(results):
    """softmax(alpha) per layer and head of every mixture run."""
    runs = sorted((r for r in results if "mixture_weights" in r),
                  key=lambda r: (list(VARIANTS).index(variant_of(r)), r["seed"]))  # fmt: skip
    if not runs:
        return []
    H = len(runs[0]["mixture_weights"][0])
    lines = [
        "Learned mixture weights softmax(alpha) per layer and head (components in the order "
        "of the name; they start equal):",
        "",
        "| variant | seed | layer | " + " | ".join(f"head {h}" for h in range(H)) + " |",
        "|---|---:|---:|" + "---|" * H,
    ]
    for r in runs:
        parts = r["attention"].split("+")
        for layer, heads in enumerate(r["mixture_weights"]):
            cells = [" · ".join(f"{p} {w:.2f}" for p, w in zip(parts, head, strict=True))
                     for head in heads]  # fmt: skip
            lines.append(f"| {variant_of(r)} | {r['seed']} | {layer} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def write_report(out, results, report, command):
    table = summarise(results)
    if not table:
        raise SystemExit("no finished runs: nothing to report")
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    bpc_chart(table, fig_dir / "bpc.png")
    paper = [k for k in table if k in PAPER_KINDS]
    seed0 = [run_dir(out, k, SEEDS[0]) for k in paper if run_dir(out, k, SEEDS[0]).exists()]
    viz.curves_for_runs([str(d) for d in seed0], str(fig_dir / "curves.png"))
    draw_maps(seed0, fig_dir)
    controls = ["uniform", "random_fixed", "random_fixed_sharp"]
    draw_maps([run_dir(out, k, SEEDS[0]) for k in controls if k in table], fig_dir / "controls")
    path = fig_dir / "timings.json"
    timings = json.loads(path.read_text()) if path.exists() else None
    today = (timings or {}).get("tokens_per_s", {})

    order = sorted(table, key=lambda k: table[k]["val_mean"])
    lines = [
        "# Miniature reproduction: Synthesizer variants on character-level enwik8",
        "",
        "Generated by `benchmarks/reproduce.py` from the runs' own output files "
        f"(`{out}/runs/*/result.json`, `metrics.jsonl`); nothing here is typed in by hand.",
        "",
        f"Command: `{command}`",
        "",
        f"Data: {results[0]['data']}. Model: {json.dumps(MODEL)}, byte vocabulary (256), "
        f"tied embeddings. Schedule: {json.dumps({**SCHEDULE, 'steps': results[0]['steps']})} "
        f"(warmup + cosine, AdamW), {results[0]['tokens']:,} training tokens per run. "
        f"Seeds: {sorted({r['seed'] for r in results})}.",
        "",
        compute_line(results),
        "",
        *timings_line(timings),
        "| variant | params (model) | attention params / layer | val BPC | test BPC "
        "| train tokens/s (runs) | wall time / run | train tokens/s (today) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for k in order:
        t = table[k]
        lines.append(
            f"| {k} | {t['params']:,} | {t['attention_params']:,} | "
            f"{fmt(t['val_mean'], t['val_std'])} | {fmt(t['test_mean'], t['test_std'])} | "
            f"{t['tokens_per_s']:,.0f} | {t['wall_time_s'] / 60:.1f} min | "
            + (f"{today[k]:,.0f} |" if k in today else "n/a |")
        )
    lines += [
        "",
        "BPC: mean ± sample standard deviation over seeds (n = "
        + ", ".join(f"{k}: {t['n']}" for k, t in table.items())
        + "). Run tokens/s include periodic validation and were measured when each run was "
        "made; today's come from the timing pass above.",
        "",
        "The controls (same model, data, budget and seeds):",
        "",
        "| variant | attention | options | question |",
        "|---|---|---|---|",
        *(
            f"| {v.name} | {v.attention} | "
            + (", ".join(f"{a}={b}" for a, b in v.options) or "-")
            + (f", R learning rate x{v.synthetic_lr_scale:g}" if v.synthetic_lr_scale != 1 else "")
            + f" | {v.question} |"
            for v in CONTROLS
            if v.name in table
        ),
        "",
        "![BPC per variant](figures/bpc.png)",
        "",
        "Training curves (seed 0): ![curves](figures/curves.png)",
        "",
        "Attention maps of the last layer of each seed-0 model on the same text "
        f"(`{COMPARE_TEXT}`): ![maps](figures/compare.png)",
        "",
        *attention_stats_lines(load_map_stats(fig_dir)),
        "",
        "The fixed-random controls on the same text: ![controls](figures/controls/compare.png)",
        "",
        *mixture_lines(results),
        "## Discussion",
        "",
        "Ordering here (best first, by mean validation BPC): "
        + " < ".join(f"{k} ({table[k]['val_mean']:.3f})" for k in order)
        + ".",
        "",
        PAPER_SOURCE
        + " Its ordering: "
        + " < ".join(f"{k} ({v})" for k, v in PAPER_LM1B.items())
        + ".",
        "",
        "Pairwise agreement with the paper's ordering (gap = BPC of the second minus the "
        "first, positive = the first is better here; p = two-sided Welch t-test over the "
        "seeds, `scipy.stats.ttest_ind(equal_var=False)`):",
        "",
        "| paper says better | than | miniature agrees | val gap | p (val) | test gap | p (test) |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    rows = agreement(table)
    for a, b, agrees, gv, pv, gt, pt in rows:
        lines.append(
            f"| {a} | {b} | {'yes' if agrees else 'no'} | {gv:+.3f} | {fmt_p(pv)} | "
            f"{gt:+.3f} | {fmt_p(pt)} |"
        )
    lines += [
        "",
        "The controls' comparisons (gap = BPC of the second minus the first):",
        "",
        *comparison_lines(table, CONTROL_PAIRS),
        "",
        *findings(table, rows, out, results[0]["tokens"], results[0]["steps"]),
        "",
    ]
    text = "\n".join(lines)
    rel = os.path.relpath(fig_dir, report.parent)
    report.write_text(text.replace("](figures/", f"]({rel}/"))


def draw_maps(run_dirs, fig_dir):
    """compare.png and stats.json of the runs' maps; from a clean clone (no checkpoints),
    keep the committed figure rather than redraw it for fewer models."""
    maps = [str(d / "checkpoint.npz") for d in run_dirs if (d / "checkpoint.npz").exists()]
    complete = len(maps) == len(run_dirs)
    if len(maps) >= 2 and (complete or not (fig_dir / "stats.json").exists()):
        fig_dir.mkdir(parents=True, exist_ok=True)
        viz.compare_checkpoints(maps, viz.encode_text(COMPARE_TEXT), fig_dir, log=lambda *a: None)
