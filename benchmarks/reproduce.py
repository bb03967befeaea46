"""A miniature reproduction of the Synthesizer paper's comparison on character-level enwik8.

Tunes every attention kind alike (a learning-rate search, and for the kinds that train
R, R1 or R2 a search over R's learning-rate multiplier, selected on seed 0), trains the
chosen settings on fresh seeds, and writes ``RESULTS.md``: the protocol, the search,
Holm-corrected comparisons with a pooled check, parameters as they act, BPC against
wall time, figures and a discussion generated from the runs' own output files.

    python benchmarks/reproduce.py                  # the whole study, then the report
    for i in 0 1; do taskset -c $i python benchmarks/reproduce.py & done; wait
                                                    # one process per core (as RESULTS.md)
    python benchmarks/reproduce.py --tune           # only the search's selection runs
    python benchmarks/reproduce.py --report-only    # rebuild RESULTS.md from finished runs
    python benchmarks/reproduce.py --data enwik8    # full enwik8 (after `minisynth data fetch`)

The study is resumable: a finished run leaves ``result.json`` and is skipped; an
interrupted run continues from its checkpoint (``minisynth train --resume``
semantics, so its trajectory is the uninterrupted one). Several processes share the
work: each takes the next run no other process holds (the run folder's lock). Run
directories live in ``--out`` (default ``results/``); checkpoints are not committed,
the metrics, per-run results and figures are.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import NamedTuple

import reproduce_setup as setup
from reproduce_report import kinds_needing_more_seeds, write_report
from reproduce_setup import (
    BACKEND,
    FINAL_SEEDS,
    KINDS,
    MODEL,
    PAPER_KINDS,
    RERUN,
    SCHEDULE,
    SEEDS,
    SELECTION_SEED,
    VARIANTS,
    WIDE_VANILLA,
    kind_search,
    model_config,
    reachable_params,
    run_dir,
    selected_variants,
    tuning_name,
    tuning_variants,
    widened_vanilla,
)

from minisynth import ModelConfig, attention, viz
from minisynth.checkpoint import load_checkpoint
from minisynth.data import load_data
from minisynth.run_folder import RunInUse, check_not_in_use
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
    mc = model_config(variant)
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
        res = train(mc, tc, rdir, resume=resume, force=not resume,
                    progress=sys.stderr.isatty(), log=print, backend=BACKEND)  # fmt: skip
    except RunInUse:  # another process of the study trains it: not ours to record
        raise
    except BaseException:  # wall time survives interruptions
        rdir.mkdir(parents=True, exist_ok=True)
        elapsed_path.write_text(json.dumps({"wall_time_s": before + time.perf_counter() - t0}))
        raise
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
        "reachable_params": reachable_params(mc),
        "attention_params_per_layer": attention.count_params(
            variant.attention, mc.d_model, mc.n_heads, mc.max_len, **options
        ),
        "lr": tc.lr,
        "val_bpc": evaluate(model, splits["val"]),
        "test_bpc": evaluate(model, splits["test"]),
        "steps": steps,
        "tokens": steps * SCHEDULE["batch_size"] * mc.max_len,
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


def selection_bpc(out):
    """name -> validation BPC of every finished selection run (seed 0) of the search."""
    known = {}
    while True:
        found = {}
        for name in tuning_variants(known):
            path = run_dir(out, name, SELECTION_SEED) / "result.json"
            if name not in known and path.exists():
                found[name] = json.loads(path.read_text())["val_bpc"]
        if not found:
            return known
        known.update(found)


def finished(out, name, seed):
    path = run_dir(out, name, seed) / "result.json"
    return path.exists() and is_complete(json.loads(path.read_text()))


@functools.cache
def wide_vanilla(vanilla):
    """The chosen vanilla widened to dense+vanilla's reachable size (computed once)."""
    return widened_vanilla(vanilla, reachable_params(model_config(VARIANTS["dense+vanilla"])))


def read_result(out, name, seed):
    """A finished run's result.json, with what runs made before issue 26 did not record
    (their variant's name, reachable parameter count) filled in."""
    result = json.loads((run_dir(out, name, seed) / "result.json").read_text())
    result.setdefault("variant", name)
    if "reachable_params" not in result:
        result["reachable_params"] = reachable_count(json.dumps(result["model_config"]))
    return result


@functools.cache
def reachable_count(config_json):
    return reachable_params(ModelConfig(**json.loads(config_json)))


class Study(NamedTuple):
    """What the report reads: every finished run, by its role in the study."""

    selection: dict  # name -> seed-0 result of every finished point of the search
    points: dict  # kind -> [(lr, R multiplier, name)] of every point known so far
    chosen: dict  # kind (and WIDE_VANILLA) -> the chosen Variant
    final: dict  # kind -> results at the fresh seeds (kinds with every fresh seed done)
    untuned: dict  # VARIANTS name -> results at SEEDS
    seeds: list  # the fresh seeds


def study_plan(out, kinds, final_seeds):
    """(runs, study): every (variant, seed) the study calls for so far, in the order they
    run (the search's selection runs on seed 0; the chosen settings of the kinds whose
    search has finished, and vanilla widened, at the fresh seeds; the controls and the
    untuned kinds they are compared with at SEEDS; vanilla's seed 1 rerun), and the
    finished ones as a :class:`Study`. Finished runs may call for more."""
    known = selection_bpc(out)
    search = tuning_variants(known)
    runs = [(v, SELECTION_SEED) for v in search.values() if v.attention in kinds]
    chosen = {k: v for k, v in selected_variants(known).items() if k in kinds}
    if "vanilla" in chosen and "dense+vanilla" in kinds:
        chosen[WIDE_VANILLA] = wide_vanilla(chosen["vanilla"])

    def results(variant, seeds):
        return [read_result(out, variant.name, s) for s in seeds if finished(out, variant.name, s)]

    runs += [(v, seed) for seed in final_seeds for v in chosen.values()]
    first = {k: results(v, final_seeds) for k, v in chosen.items()}
    more = set()  # decided on the first seeds only, once every chosen kind has them
    searched = all(k in chosen for k in PAPER_KINDS if k in kinds)
    if searched and all(len(r) == len(final_seeds) for r in first.values()):
        more = kinds_needing_more_seeds(first)
    extra = list(range(max(final_seeds) + 1, max(final_seeds) + 1 + setup.EXTRA_SEEDS))
    runs += [(chosen[k], seed) for seed in extra for k in chosen if k in more]
    untuned = [VARIANTS[k] for k in kinds]  # the paper kinds as first run, and the controls
    runs += [(v, seed) for seed in SEEDS for v in untuned]
    if "vanilla" in kinds:
        runs.append((replace(VARIANTS["vanilla"], name=RERUN), 1))

    seeds = {k: final_seeds + (extra if k in more else []) for k in chosen}
    final = {k: results(v, seeds[k]) for k, v in chosen.items()}
    study = Study(
        selection={n: results(v, [SELECTION_SEED])[0] for n, v in search.items() if n in known},
        points={
            k: [(lr, r, tuning_name(k, lr, r)) for lr, r in kind_search(k, known)[0]]
            for k in PAPER_KINDS
            if k in kinds
        },  # fmt: skip
        chosen=chosen,
        final={k: r for k, r in final.items() if len(r) == len(seeds[k])},
        untuned={v.name: r for v in untuned if (r := results(v, SEEDS))},
        seeds=list(final_seeds),
    )
    return runs, study


def run_study(out, kinds, final_seeds, data_spec, steps, tune_only=False):
    """Run what the study calls for until nothing is left. Several processes may run it
    at once (one per core): each takes the first run no other holds (the run folder's
    lock), and waits while the only runs left are another's."""
    while True:
        runs = study_plan(out, kinds, final_seeds)[0]
        if tune_only:
            runs = [(v, s) for v, s in runs if s == SELECTION_SEED and v.lr is not None]
        pending = [(v, s) for v, s in runs if not finished(out, v.name, s)]
        if not pending:
            return 0
        for variant, seed in pending:
            try:
                check_not_in_use(run_dir(out, variant.name, seed))
                run_one(out, variant.name, seed, data_spec, steps, variant=variant)
                break  # what it found may change what the study calls for
            except RunInUse:
                continue
            except KeyboardInterrupt:
                print("interrupted: rerun the same command to resume", file=sys.stderr)
                return 130
        else:
            time.sleep(15)  # every pending run is another process's


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="bundled")
    parser.add_argument("--out", default="results")
    parser.add_argument("--kinds", nargs="+", default=KINDS, choices=KINDS)
    parser.add_argument("--seeds", nargs="+", type=int, default=FINAL_SEEDS,
                        help="the fresh seeds of the chosen settings")  # fmt: skip
    parser.add_argument("--steps", type=int, default=SCHEDULE["steps"])
    parser.add_argument("--report", default="RESULTS.md", help="where to write the report")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a seconds-long sweep of tiny models, to test this script",
    )
    parser.add_argument(
        "--tune",
        action="store_true",
        help="run only the tuning search's selection runs (seed 0) that are missing, then stop",
    )
    args = parser.parse_args(argv)
    if args.smoke:  # module-level settings, so every function sees the tiny sweep
        MODEL.update(d_model=16, n_heads=2, n_layers=1, max_len=16)
        SCHEDULE.update(batch_size=4, warmup_steps=2, eval_interval=3, log_interval=1, steps=6)
        args.steps = min(args.steps, 6)
        # a two-point grid per axis that the search cannot leave
        setup.LR_GRID = setup.LR_LADDER = (3e-3, 6e-3)
        setup.R_SCALE_GRID = setup.R_SCALE_LADDER = (1.0, 10.0)
        SEEDS[:] = [0, 1]
        setup.EXTRA_SEEDS = 1
    SCHEDULE["steps"] = args.steps
    out = Path(args.out)
    command = "python benchmarks/reproduce.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:]) if a != "--report-only"
    )
    if not args.report_only:
        status = run_study(out, args.kinds, args.seeds, args.data, args.steps, args.tune)
        if status or args.tune:
            return status
    write_report(out, study_plan(out, args.kinds, args.seeds)[1], Path(args.report), command)
    print(f"wrote {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
