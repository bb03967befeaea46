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
from dataclasses import asdict
from pathlib import Path

import numpy as np

from minisynth import ModelConfig, SynthesizerLM, attention, viz
from minisynth.checkpoint import load_checkpoint
from minisynth.data import load_data
from minisynth.fast import get_backend, set_backend
from minisynth.optim import lr_schedule
from minisynth.train import TrainConfig, evaluate, train

KINDS = [
    "vanilla",
    "dense",
    "random",
    "random_fixed",
    "factorized_dense",
    "factorized_random",
    "random+vanilla",
    "dense+vanilla",
]
SEEDS = [0, 1, 2]
# The sweep's model and schedule: the default `minisynth train` model, with the
# token budget cut so that 24 runs fit in about 90 minutes on 2 cores.
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
# Paper, Table 3 (LM1B perplexity, lower is better) and its finding on fixed random attention.
PAPER_LM1B = {
    "dense+vanilla": 37.27,
    "vanilla": 38.21,
    "random+vanilla": 40.05,
    "random": 40.60,
    "dense": 40.88,
}
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
        "backend": get_backend(),
        **{k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")},
    }


def run_one(out, kind, seed, data_spec, steps):
    """Train (or resume, or skip) one run; returns its result dict."""
    rdir = run_dir(out, kind, seed)
    result_path = rdir / "result.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    mc = ModelConfig(attention=kind, **MODEL)
    tc = TrainConfig(data=data_spec, seed=seed, **{**SCHEDULE, "steps": steps})
    resume = (rdir / "checkpoint.npz").exists()
    elapsed_path = rdir / "elapsed.json"
    before = json.loads(elapsed_path.read_text())["wall_time_s"] if elapsed_path.exists() else 0.0
    print(f"== {kind} seed {seed}{' (resuming)' if resume else ''}", flush=True)
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
            backend=get_backend(),
        )
    finally:  # wall time survives interruptions
        rdir.mkdir(parents=True, exist_ok=True)
        elapsed_path.write_text(json.dumps({"wall_time_s": before + time.perf_counter() - t0}))
    if res["interrupted"]:
        raise KeyboardInterrupt
    wall = json.loads(elapsed_path.read_text())["wall_time_s"]
    model, _ = load_checkpoint(res["checkpoint"])
    splits, description = load_data(data_spec)
    result = {
        "attention": kind,
        "seed": seed,
        "data": description,
        "params": model.num_params(),
        "attention_params_per_layer": attention.count_params(
            kind, MODEL["d_model"], MODEL["n_heads"], MODEL["max_len"]
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
    result["tokens_per_s"] = result["tokens"] / wall
    result_path.write_text(json.dumps(result, indent=1))
    print(
        f"   val BPC {result['val_bpc']:.4f}  test BPC {result['test_bpc']:.4f}  {wall:.0f} s",
        flush=True,
    )
    return result


# ------------------------------------------------------------------------ report
def summarise(results):
    """kind -> dict of means and standard deviations over seeds."""
    table = {}
    for kind in KINDS:
        rs = [r for r in results if r["attention"] == kind]
        if not rs:
            continue
        val = np.array([r["val_bpc"] for r in rs])
        test = np.array([r["test_bpc"] for r in rs])
        table[kind] = {
            "n": len(rs),
            "params": rs[0]["params"],
            "attention_params": rs[0]["attention_params_per_layer"],
            "val_mean": val.mean(),
            "val_std": val.std(ddof=1) if len(rs) > 1 else float("nan"),
            "test_mean": test.mean(),
            "test_std": test.std(ddof=1) if len(rs) > 1 else float("nan"),
            "tokens_per_s": float(np.mean([r["tokens_per_s"] for r in rs])),
            "wall_time_s": float(np.mean([r["wall_time_s"] for r in rs])),
        }
    return table


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
    """Pairs of kinds the paper orders (LM1B) and whether the miniature agrees."""
    kinds = [k for k in PAPER_LM1B if k in table]
    rows = []
    for i, a in enumerate(kinds):
        for b in kinds[i + 1 :]:
            paper_a_better = PAPER_LM1B[a] < PAPER_LM1B[b]
            ours_a_better = table[a]["val_mean"] < table[b]["val_mean"]
            gap = table[b]["val_mean"] - table[a]["val_mean"]
            noise = np.nanmax([table[a]["val_std"], table[b]["val_std"], 0.0])
            rows.append((a, b, paper_a_better == ours_a_better, gap, abs(gap) <= 2 * noise))
    return rows


def beyond_noise(table, a, b):
    """Is the gap between kinds a and b larger than twice the larger seed sd?"""
    gap = abs(table[a]["val_mean"] - table[b]["val_mean"])
    return gap > 2 * np.nanmax([table[a]["val_std"], table[b]["val_std"], 0.0])


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


def random_logit_budget(out, steps):
    """(sum of the learning rates, mean visible logit range of R) for the seed-0 `random` model.

    Adam moves each parameter by about the learning rate per step at most, and each
    entry of a Random synthesizer's R is a parameter of its own: the sum of the
    learning rates bounds how far any logit can travel from its initial value.
    """
    path = run_dir(out, "random", SEEDS[0]) / "checkpoint.npz"
    saved = out / "figures" / "random_logit_budget.json"  # committed; checkpoints are not
    if not path.exists():
        return tuple(json.loads(saved.read_text())) if saved.exists() else None
    total_lr = sum(
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


def findings(table, rows, out, tokens, steps):
    """The discussion's claims, each computed from the table (no canned verdicts)."""
    lines = []
    n_agree = sum(r[2] for r in rows)
    n_clear = sum(1 for r in rows if not r[4])
    n_clear_agree = sum(1 for r in rows if r[2] and not r[4])
    lines.append(
        f"**Pairwise ordering.** The miniature agrees with the paper on {n_agree} of "
        f"{len(rows)} ordered pairs; {n_clear} of the gaps are larger than twice the seed "
        f"standard deviation, and the paper's order holds for {n_clear_agree} of those."
    )
    lines.append("")
    # 1. mixtures against their components
    for mix in ("dense+vanilla", "random+vanilla"):
        parts = mix.split("+")
        if mix not in table or not all(p in table for p in parts):
            continue
        diffs = [
            f"`{p}` {table[mix]['val_mean'] - table[p]['val_mean']:+.3f} BPC"
            + ("" if beyond_noise(table, mix, p) else " (within noise)")
            for p in parts
        ]
        best_alone = all(table[mix]["val_mean"] < table[p]["val_mean"] for p in parts)
        lines.append(
            f"**Mixture `{mix}`** {'beats both' if best_alone else 'does not beat both'} "
            "of its components. Its validation BPC minus theirs (negative = the mixture "
            "is better): " + ", ".join(diffs) + "."
        )
        lines.append("")
    # 2. synthetic-only kinds against dot-product attention
    synthetic = [
        k for k in ("dense", "random", "factorized_dense", "factorized_random") if k in table
    ]
    if "vanilla" in table and synthetic:
        best = min(synthetic, key=lambda k: table[k]["val_mean"])
        gap = table[best]["val_mean"] - table["vanilla"]["val_mean"]
        rel = gap / table["vanilla"]["val_mean"]
        lines.append(
            f"**Synthetic alone vs dot product.** The best synthetic-only kind is `{best}`, "
            f"{gap:+.3f} BPC ({rel:+.1%}) against `vanilla` "
            + ("(within noise)." if not beyond_noise(table, best, "vanilla") else "(beyond noise).")
            + " Per kind: "
            + ", ".join(
                f"`{k}` {table[k]['val_mean'] - table['vanilla']['val_mean']:+.3f}"
                for k in synthetic
            )
            + " (positive = worse than vanilla). In the paper, Dense and Random alone have "
            "6-7% higher LM1B perplexity than the Transformer."
        )
        lines.append("")
    # 3. fixed random attention
    if "random_fixed" in table:
        order = sorted(table, key=lambda k: table[k]["val_mean"])
        rank = order.index("random_fixed") + 1
        lines.append(
            f"**Fixed random attention** ranks {rank} of {len(order)} "
            + (
                "(worst, as in the paper's translation results)."
                if rank == len(order)
                else f"(not the worst: `{order[-1]}` is)."
            )
        )
        lines.append("")
    # 4. are the runs converged?
    drops = late_improvement(out, table, SEEDS[0])
    if drops:
        s0, s1, _ = next(iter(drops.values()))
        lo, hi = min(d[2] for d in drops.values()), max(d[2] for d in drops.values())
        lines.append(
            f"**Budget.** Between steps {s0} and {s1} (seed {SEEDS[0]}), validation BPC "
            f"still fell by {lo:.3f} to {hi:.3f} for every kind: the models are far from "
            "converged, so this compares early training, and the ordering may change "
            "with a longer budget."
            if lo > 0
            else f"**Budget.** Between steps {s0} and {s1} (seed {SEEDS[0]}) the change in "
            f"validation BPC ranged from {-hi:+.3f} to {-lo:+.3f}."
        )
        lines.append("")
    budget = random_logit_budget(out, steps)
    if budget is not None:
        total_lr, spread_init, spread = budget
        lines.append(
            f"**Random's learning budget.** Adam moves each parameter by at most about the "
            f"learning rate per step, and every entry of R is its own parameter: over this "
            f"schedule the learning rates sum to {total_lr:.2f}, so no logit of R can travel "
            f"much further than that from its initial value. In the trained `random` model "
            f"(seed {SEEDS[0]}) the mean range (max - min) of a row's visible logits is "
            f"{spread:.2f}, against {spread_init:.2f} at initialisation. Dot-product and "
            "Dense logits are products of trained weights and inputs, and can grow much faster."
        )
        lines.append("")
    disagree = [(a, b) for a, b, agrees, _, noisy in rows if not agrees and not noisy]
    why = [
        "**Where the miniature disagrees, and why that may be** (hypotheses, not tested "
        "here). "
        + (
            f"Beyond noise, the miniature reverses {len(disagree)} of the paper's "
            "orderings: the paper has "
            + "; ".join(f"`{a}` better than `{b}`" for a, b in disagree)
            + ", the miniature the opposite."
            if disagree
            else "No paper-ordered pair is reversed beyond noise."
        )
    ]
    stats = load_map_stats(out / "figures")
    entropies = (
        {}
        if stats is None
        else {m["attention"]: head_mean(m, "entropy_nats") for m in stats["models"]}
    )
    if "random" in entropies:
        T = stats["input"]["bytes"]
        reference = uniform_causal_entropy(T)
        near_uniform = entropies["random"] >= 0.9 * reference
        why.append(
            f"On the comparison text, the `random` maps are "
            f"{'close to' if near_uniform else 'well away from'} uniform (entropy "
            f"{entropies['random']:.2f} nats against {reference:.2f} for uniform attention "
            f"over these {T} bytes; `vanilla` {entropies.get('vanilla', float('nan')):.2f}, "
            f"`dense` {entropies.get('dense', float('nan')):.2f})"
            + (
                ": within the learning budget above, Random attention stays nearly uniform, "
                "while the paper trains for hundreds of thousands of steps, in which R can "
                "become sharp."
                if near_uniform
                else "."
            )
        )
    why.append(
        f"More generally, the models are tiny ({MODEL['n_layers']} layers, d_model "
        f"{MODEL['d_model']}, context {MODEL['max_len']} bytes) and trained on "
        f"{tokens / 1e6:.1f}M characters of one 1 MB Wikipedia prefix, while the paper "
        "trains large word-piece models on LM1B; bytes and word pieces need different "
        "alignments, and BPC and perplexity gaps are not on one scale. The kinds also "
        "differ in parameters (Random adds H L^2 per layer, mixtures add their "
        "components'), which the paper does not hold fixed either. Gaps within twice "
        "the seed standard deviation are not orderings."
    )
    lines.append(" ".join(why))
    return lines


def compute_line(results):
    """One sentence on what the timings ran on, from the runs' recorded ``compute``."""
    seen = {json.dumps(r.get("compute"), sort_keys=True) for r in results}
    if len(seen) != 1 or results[0].get("compute") is None:
        return "Timings: the runs were made under different settings (see each result.json)."
    c = results[0]["compute"]
    env = ", ".join(
        f"{k}={c[k]}" for k in ("OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS") if c.get(k)
    )
    return (
        f"Timings: minisynth commit {c.get('minisynth_commit') or 'unknown'}, "
        f"{c['backend']} backend, {c['cpus_usable']} of {c['cpus_total']} CPUs usable"
        + (f", {env}" if env else "")
        + ". Tokens/s and wall time depend on these; BPC only up to floating-point rounding."
    )


def write_report(out, results, report, command):
    table = summarise(results)
    if not table:
        raise SystemExit("no finished runs: nothing to report")
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    bpc_chart(table, fig_dir / "bpc.png")
    seed0 = [run_dir(out, k, SEEDS[0]) for k in table if run_dir(out, k, SEEDS[0]).exists()]
    viz.curves_for_runs([str(d) for d in seed0], str(fig_dir / "curves.png"))
    maps = [str(d / "checkpoint.npz") for d in seed0 if (d / "checkpoint.npz").exists()]
    # checkpoints are not committed: from a clean clone, keep the committed maps rather
    # than redraw them for fewer models
    complete = len(maps) == len(seed0)
    if len(maps) >= 2 and (complete or not (fig_dir / "stats.json").exists()):
        viz.compare_checkpoints(maps, viz.encode_text(COMPARE_TEXT), fig_dir, log=lambda *a: None)

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
        "| attention | params (model) | attention params / layer | val BPC | test BPC "
        "| train tokens/s | wall time / run |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for k in order:
        t = table[k]
        lines.append(
            f"| {k} | {t['params']:,} | {t['attention_params']:,} | "
            f"{fmt(t['val_mean'], t['val_std'])} | {fmt(t['test_mean'], t['test_std'])} | "
            f"{t['tokens_per_s']:,.0f} | {t['wall_time_s'] / 60:.1f} min |"
        )
    lines += [
        "",
        "BPC: mean ± sample standard deviation over seeds (n = "
        + ", ".join(f"{k}: {t['n']}" for k, t in table.items())
        + "). "
        "Tokens/s include periodic validation.",
        "",
        "![BPC per kind](figures/bpc.png)",
        "",
        "Training curves (seed 0): ![curves](figures/curves.png)",
        "",
        "Attention maps of the last layer of each seed-0 model on the same text "
        f"(`{COMPARE_TEXT}`): ![maps](figures/compare.png)",
        "",
        *attention_stats_lines(load_map_stats(fig_dir)),
        "",
        "## Discussion",
        "",
        "Ordering here (best first, by mean validation BPC): "
        + " < ".join(f"{k} ({table[k]['val_mean']:.3f})" for k in order)
        + ".",
        "",
        "The paper's language-modelling ordering (LM1B perplexity, Table 3): "
        + " < ".join(f"{k} ({v})" for k, v in PAPER_LM1B.items())
        + "; fixed random attention is clearly the worst in its translation experiments.",
        "",
        "Pairwise agreement with the paper's ordering (gap = BPC of the second minus the "
        "first; 'within noise' = the gap is at most twice the larger seed standard deviation):",
        "",
        "| paper says better | than | miniature agrees | gap (BPC) | within noise |",
        "|---|---|---|---:|---|",
    ]
    rows = agreement(table)
    for a, b, agrees, gap, noisy in rows:
        lines.append(
            f"| {a} | {b} | {'yes' if agrees else 'no'} | {gap:+.3f} | {'yes' if noisy else 'no'} |"
        )
    lines += ["", *findings(table, rows, out, results[0]["tokens"], results[0]["steps"]), ""]
    text = "\n".join(lines)
    rel = os.path.relpath(fig_dir, report.parent)
    report.write_text(text.replace("](figures/", f"]({rel}/"))


def main(argv=None):
    set_backend(os.environ.get("MINISYNTH_BACKEND") or "numba")  # as `minisynth train`
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="bundled")
    parser.add_argument("--out", default="results")
    parser.add_argument("--kinds", nargs="+", default=KINDS, choices=KINDS)
    parser.add_argument("--seeds", nargs="+", type=int, default=SEEDS)
    parser.add_argument("--steps", type=int, default=SCHEDULE["steps"])
    parser.add_argument("--report", default="RESULTS.md", help="where to write the report")
    parser.add_argument("--report-only", action="store_true")
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
        f" {a}" for a in (argv if argv is not None else sys.argv[1:]) if a != "--report-only"
    )
    results = []
    for seed in args.seeds:  # seed-major: a partial sweep covers every kind early
        for kind in args.kinds:
            if args.report_only:
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
