"""Benchmark: a whole training step of two minisynth checkouts, side by side.

Run from the repository root (a script, not a test)::

    python benchmarks/bench_commits.py OLD_CHECKOUT [--kinds vanilla dense] [--rounds 5]

OLD_CHECKOUT is another minisynth source tree (e.g. ``git worktree add /tmp/old
<commit>``). For each kind, each round times a step (forward, backward, global-norm
clipping, AdamW) at the bench config of ``bench_train.py`` (C=256, H=8, 4 layers,
T=256, B=16, float32) once in a fresh process per checkout, the checkouts
alternating so that both see the same machine load; every process applies the
malloc setting of ``minisynth train`` and runs as ``minisynth train`` does (this
checkout: a model and optimizer built with ``backend="numba"`` and
``minisynth.fast.loss_and_grads``; an older checkout: its global ``set_backend("numba")``
if it has one, else its default, and ``model.loss_and_grads``). Prints a Markdown table of the
median step times (each process reports the median of its steps after two
warm-up steps) and their ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

from harness import markdown_row, run_once, worker_env

HERE = Path(__file__).resolve().parents[1]
WORKER = r"""
import json, statistics, sys, time
import numpy as np
import inspect
from harness import apply_malloc_setting, reply
apply_malloc_setting()
try:
    from minisynth import fast
    step_grads = fast.loss_and_grads
except ImportError:  # an older layout
    step_grads = lambda model, x, y: model.loss_and_grads(x, y)
from minisynth.model import ModelConfig, SynthesizerLM
from minisynth.optim import AdamW, clip_grad_norm
numba = {}  # the fast path: chosen per object since issue 23, by a global switch before
if "backend" in inspect.signature(SynthesizerLM).parameters:
    numba = {"backend": "numba"}
elif hasattr(fast, "set_backend"):
    fast.set_backend("numba")
kind, steps = sys.argv[1], int(sys.argv[2])
cfg = ModelConfig(d_model=256, n_heads=8, n_layers=4, max_len=256, attention=kind)
model = SynthesizerLM(cfg, seed=0, **numba)
rng = np.random.default_rng(0)
x, y = rng.integers(0, 256, (16, 256)), rng.integers(0, 256, (16, 256))
opt = AdamW(model.params, lr=1e-3, weight_decay=0.1, **numba)
times = []
for _ in range(steps + 2):
    t0 = time.perf_counter()
    loss, grads = step_grads(model, x, y)
    clip_grad_norm(grads, 1.0)
    opt.step(grads, lr=1e-4)
    times.append(time.perf_counter() - t0)
reply({"ms": 1e3 * statistics.median(times[2:]), "loss": float(loss)})
"""


def time_step(checkout, kind, steps):
    """Median ms of a training step of ``kind`` in a fresh process importing ``checkout``."""
    env = worker_env()  # the malloc setting of `minisynth train`, in every process
    env["PYTHONPATH"] = os.pathsep.join([str(checkout), str(HERE / "benchmarks")])
    return run_once([sys.executable, "-c", WORKER, kind, str(steps)], env, cwd=checkout)["ms"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path, help="the other minisynth checkout")
    parser.add_argument(
        "--kinds",
        nargs="+",
        default=["vanilla", "dense", "random", "factorized_random", "dense+vanilla"],
    )
    parser.add_argument("--rounds", type=int, default=5, help="processes per checkout and kind")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per process")
    args = parser.parse_args(argv)
    print(f"old: {args.old.resolve()}  new: {HERE}  (median over {args.rounds} processes)\n")
    print(markdown_row(["kind", "old ms", "new ms", "new / old"]))
    print("|---|---:|---:|---:|")
    for kind in args.kinds:
        old, new = [], []
        for _ in range(args.rounds):
            old.append(time_step(args.old.resolve(), kind, args.steps))
            new.append(time_step(HERE, kind, args.steps))
        o, n = statistics.median(old), statistics.median(new)
        print(markdown_row([kind, f"{o:.0f}", f"{n:.0f}", f"{n / o:.2f}"]), flush=True)


if __name__ == "__main__":
    main()
