"""A miniature reproduction of the Synthesizer paper's comparison on character-level enwik8.

Trains every attention kind with the same model size, data, token budget and
schedule over several seeds, then writes ``RESULTS.md`` (tables, figures and a
discussion generated from the runs' own output files).

    python benchmarks/reproduce.py                  # the whole sweep, then the report
    python benchmarks/reproduce.py --report-only    # rebuild RESULTS.md from finished runs
    python benchmarks/reproduce.py --data enwik8    # full enwik8 (after `minisynth data fetch`)

The sweep is resumable: a finished run leaves ``result.json`` and is skipped; an
interrupted run continues from its checkpoint (``minisynth train --resume``
semantics, so its trajectory is the uninterrupted one). Run directories live in
``--out`` (default ``results/``); checkpoints are not committed, the metrics,
per-run results and figures are.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from minisynth import ModelConfig, SynthesizerLM, attention, viz
from minisynth.checkpoint import load_checkpoint
from minisynth.data import load_data
from minisynth.optim import lr_schedule
from minisynth.train import TrainConfig, evaluate, train


@dataclass(frozen=True)
class Variant:
    """One configuration of the sweep: an attention kind with its options."""

    name: str  # the label in the report; the run directory's name
    attention: str
    options: tuple = ()  # attention options as (name, value) pairs
    synthetic_lr_scale: float = 1.0  # TrainConfig.synthetic_lr_scale
    question: str = ""  # for controls: what the comparison asks


PAPER_KINDS = [
    "vanilla",
    "dense",
    "random",
    "random_fixed",
    "factorized_dense",
    "factorized_random",
    "random+vanilla",
    "dense+vanilla",
]
CONTROLS = [
    Variant("uniform", "random_fixed", (("init_std", 0.0),),
            question="the floor: every visible position weighted equally (random_fixed, R = 0)"),
    Variant("random_fixed_sharp", "random_fixed", (("init_std", 1.0),),
            question="a sharp fixed random alignment (R ~ N(0, 1)) next to the near-uniform one"),
    Variant("dense+vanilla_shared_q", "dense+vanilla", (("dense_from_query", True),),
            question="the authors' dense+vanilla: Dense's first layer is the query projection"),
    Variant("random_lr10", "random", synthetic_lr_scale=10.0,
            question="Random with a 10x learning rate for R"),
]  # fmt: skip
VARIANTS = {v.name: v for v in [Variant(k, k) for k in PAPER_KINDS] + CONTROLS}
KINDS = list(VARIANTS)
SEEDS = [0, 1, 2]
# The sweep's model and schedule: the default `minisynth train` model, with the
# token budget cut so that 24 runs fit in about 90 minutes on 2 cores.
BACKEND = "numba"  # the code every run trains on: the fast path, as `minisynth train`
MODEL = dict(d_model=128, n_heads=4, n_layers=2, max_len=128)
SCHEDULE = dict(
    batch_size=32,
    steps=1000,
    lr=3e-3,
    min_lr=3e-4,
    warmup_steps=100,
    weight_decay=0.1,
    grad_clip=1.0,
    eval_interval=250,
    log_interval=25,
    sample_length=0,
)
# LM1B perplexities (lower is better) as quoted when this script was first written, from
# the paper's LM1B table (then cited as Table 3). NOT checked against the paper's text:
# this machine has no internet access, and the stored copies of the paper it can search
# (arXiv via ar5iv, the ICLR 2021 submission) hold only its abstract. A second-hand summary
# of the ICML 2021 version gives Dense 42.40 rather than 40.88 (the other three it lists
# agree). PAPER_SOURCE says so in the report.
PAPER_LM1B = {
    "dense+vanilla": 37.27,
    "vanilla": 38.21,
    "random+vanilla": 40.05,
    "random": 40.60,
    "dense": 40.88,
}
PAPER_SOURCE = (
    "The paper's language-modelling results are perplexities on LM1B (Tay et al., "
    "*Synthesizer: Rethinking Self-Attention for Transformer Models*, arXiv:2005.00743; "
    "the 2020 v1 and the ICML 2021 version differ in places). **These numbers are not "
    "verified**: they were quoted when this study began, and on the machine that wrote this "
    "report only the paper's abstract could be read (no internet; the stored copies of "
    "arXiv v1, the ICLR 2021 submission and the ICML 2021 version cut off before the "
    "tables), so the table number and version cannot be cited. A second-hand summary of "
    "the ICML 2021 version gives Dense 42.40 instead of 40.88 (agreeing on vanilla "
    "38.21, random 40.60, random+vanilla 40.05), and the same summary has fixed random "
    "attention lowest in translation (23.89 BLEU on WMT EnDe against about 27 for the "
    "others), also unverified. Check them against the paper before quoting them."
)
COMPARE_TEXT = "<title>The Synthesizer</title> attention without token-token interaction"


def run_dir(out, kind, seed):
    return out / "runs" / f"{kind.replace('+', '_plus_')}-seed{seed}"


def compute_description():
    """What the timings ran on: CPUs this process may use and the BLAS/Numba thread settings."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None  # not a git checkout
    return {
        "minisynth_commit": commit,
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpus_total": os.cpu_count(),
        "backend": BACKEND,
        **{k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")},
    }


def is_complete(result):
    """A finished run's result, with everything the report reads (mixtures: their weights)."""
    return "+" not in result["attention"] or "mixture_weights" in result


def run_one(out, name, seed, data_spec, steps):
    """Train (or resume, or skip) one run; returns its result dict."""
    variant = VARIANTS[name]
    rdir = run_dir(out, name, seed)
    result_path = rdir / "result.json"
    if result_path.exists() and is_complete(json.loads(result_path.read_text())):
        return json.loads(result_path.read_text())
    options = dict(variant.options)
    mc = ModelConfig(attention=variant.attention, attention_options=options, **MODEL)
    tc = TrainConfig(
        data=data_spec,
        seed=seed,
        synthetic_lr_scale=variant.synthetic_lr_scale,
        **{**SCHEDULE, "steps": steps},
    )
    resume = (rdir / "checkpoint.npz").exists()
    elapsed_path = rdir / "elapsed.json"
    before = (
        json.loads(elapsed_path.read_text())["wall_time_s"]
        if resume and elapsed_path.exists()
        else 0.0
    )
    print(f"== {name} seed {seed}{' (resuming)' if resume else ''}", flush=True)
    t0 = time.perf_counter()
    try:
        res = train(
            mc,
            tc,
            rdir,
            resume=resume,
            force=not resume,
            progress=sys.stderr.isatty(),
            log=print,
            backend=BACKEND,
        )
    finally:  # wall time survives interruptions
        rdir.mkdir(parents=True, exist_ok=True)
        elapsed_path.write_text(json.dumps({"wall_time_s": before + time.perf_counter() - t0}))
    if res["interrupted"]:
        raise KeyboardInterrupt
    wall = json.loads(elapsed_path.read_text())["wall_time_s"]
    model, _ = load_checkpoint(res["checkpoint"], backend=BACKEND)
    splits, description = load_data(data_spec)
    result = {
        "variant": name,
        "attention": variant.attention,
        "attention_options": options,
        "synthetic_lr_scale": variant.synthetic_lr_scale,
        "seed": seed,
        "data": description,
        "params": model.num_params(),
        "attention_params_per_layer": attention.count_params(
            variant.attention, MODEL["d_model"], MODEL["n_heads"], MODEL["max_len"], **options
        ),
        "val_bpc": evaluate(model, splits["val"]),
        "test_bpc": evaluate(model, splits["test"]),
        "steps": steps,
        "tokens": steps * SCHEDULE["batch_size"] * MODEL["max_len"],
        "wall_time_s": wall,
        "compute": compute_description(),
        "model_config": asdict(mc),
        "train_config": asdict(tc),
    }
    if "+" in variant.attention:
        result["mixture_weights"] = viz.mixture_weights(model).tolist()  # (layers, H, N)
    result["tokens_per_s"] = result["tokens"] / wall
    result_path.write_text(json.dumps(result, indent=1))
    print(
        f"   val BPC {result['val_bpc']:.4f}  test BPC {result['test_bpc']:.4f}  {wall:.0f} s",
        flush=True,
    )
    return result


def timing_pass(out, steps=12, warmup=3):
    """Tokens/s of a training step of every variant with today's code -> figures/timings.json.

    Each variant: a fresh model, ``warmup`` steps (compilation, caches), then the median
    of ``steps`` timed steps (forward, backward, clipping, AdamW on the fast path).
    """
    import statistics

    from minisynth import fast
    from minisynth.data import get_batch
    from minisynth.optim import AdamW, clip_grad_norm, synthetic_logits_lr_scale

    splits, _ = load_data("bundled")
    rng = np.random.default_rng(0)
    timings = {}
    for name, variant in VARIANTS.items():
        mc = ModelConfig(attention=variant.attention, attention_options=dict(variant.options),
                         **MODEL)  # fmt: skip
        model = SynthesizerLM(mc, seed=0, backend=BACKEND)
        opt = AdamW(model.params, lr=SCHEDULE["lr"], weight_decay=SCHEDULE["weight_decay"],
                    backend=BACKEND,
                    lr_scale=synthetic_logits_lr_scale(variant.synthetic_lr_scale))  # fmt: skip
        times = []
        for step in range(warmup + steps):
            x, y = get_batch(splits["train"], SCHEDULE["batch_size"], MODEL["max_len"], rng)
            t0 = time.perf_counter()
            _, grads = fast.loss_and_grads(model, x, y)
            clip_grad_norm(grads, SCHEDULE["grad_clip"])
            opt.step(grads)
            if step >= warmup:
                times.append(time.perf_counter() - t0)
        timings[name] = SCHEDULE["batch_size"] * MODEL["max_len"] / statistics.median(times)
        print(f"   {name}: {timings[name]:,.0f} tokens/s", flush=True)
    record = {"compute": compute_description(), "steps": steps, "tokens_per_s": timings}
    path = out / "figures" / "timings.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    return record


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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="bundled")
    parser.add_argument("--out", default="results")
    parser.add_argument("--kinds", nargs="+", default=KINDS, choices=KINDS)
    parser.add_argument("--seeds", nargs="+", type=int, default=SEEDS)
    parser.add_argument("--steps", type=int, default=SCHEDULE["steps"])
    parser.add_argument("--report", default="RESULTS.md", help="where to write the report")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument(
        "--timings",
        action="store_true",
        help="re-measure every variant's training tokens/s with today's code (a short "
        "pass, written to figures/timings.json), then write the report",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a seconds-long sweep of tiny models, to test this script",
    )
    args = parser.parse_args(argv)
    if args.smoke:  # module-level settings, so every function sees the tiny sweep
        MODEL.update(d_model=16, n_heads=2, n_layers=1, max_len=16)
        SCHEDULE.update(batch_size=4, warmup_steps=2, eval_interval=3, log_interval=1)
        args.steps = min(args.steps, 6)
    out = Path(args.out)
    command = "python benchmarks/reproduce.py" + "".join(
        f" {a}"
        for a in (argv if argv is not None else sys.argv[1:])
        if a not in ("--report-only", "--timings")
    )
    if args.timings:
        timing_pass(out)
    results = []
    for seed in args.seeds:  # seed-major: a partial sweep covers every kind early
        for kind in args.kinds:
            if args.report_only or args.timings:
                path = run_dir(out, kind, seed) / "result.json"
                if path.exists():
                    results.append(json.loads(path.read_text()))
                continue
            try:
                results.append(run_one(out, kind, seed, args.data, args.steps))
            except KeyboardInterrupt:
                print("interrupted: rerun the same command to resume", file=sys.stderr)
                return 130
    write_report(out, results, Path(args.report), command)
    print(f"wrote {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
