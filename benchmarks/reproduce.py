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
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from reproduce_report import write_report
from reproduce_setup import (
    BACKEND,
    KINDS,
    MODEL,
    SCHEDULE,
    SEEDS,
    VARIANTS,
    run_dir,
    tuning_variants,
)

from minisynth import ModelConfig, SynthesizerLM, attention, viz
from minisynth.checkpoint import load_checkpoint
from minisynth.data import load_data
from minisynth.train import TrainConfig, evaluate, train


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


def run_one(out, name, seed, data_spec, steps, variant=None):
    """Train (or resume, or skip) one run; returns its result dict. ``variant``: one
    outside VARIANTS (a point of the tuning search)."""
    variant = variant or VARIANTS[name]
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
        **{**SCHEDULE, "steps": steps, **({"lr": variant.lr} if variant.lr else {})},
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


def tune(out, data_spec, steps, part):
    """The selection runs (seed 0) of the tuning search, part ``i/n`` of them."""
    i, n = (int(x) for x in part.split("/"))
    for variant in list(tuning_variants().values())[i::n]:
        try:
            run_one(out, variant.name, 0, data_spec, steps, variant=variant)
        except KeyboardInterrupt:
            print("interrupted: rerun the same command to resume", file=sys.stderr)
            return 130
    return 0


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
    parser.add_argument(
        "--tune",
        action="store_true",
        help="run the tuning search's selection runs (seed 0) that are missing, then stop",
    )
    parser.add_argument(
        "--part", default="0/1", help="with --tune: i/n runs every n-th point from the i-th"
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
    if args.tune:
        return tune(out, args.data, args.steps, args.part)
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
