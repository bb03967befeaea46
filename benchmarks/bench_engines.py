"""Benchmark: the training throughput of ``minisynth train`` on each engine, side by side.

Run from the repository root (a script, not a test)::

    python benchmarks/bench_engines.py [--steps 300] [--repeats 3] [--attention dense]

Each repeat runs, in fresh processes one after the other, the default model of
``minisynth train`` (d_model 128, 4 heads, 2 layers, max_len 128, batch 32) for
``--steps`` steps with:

* ``--engine numpy`` (``--backend numba``, the default): minisynth's own passes,
  Numba kernels, the batch split over the cores;
* ``--engine torch --device cpu``: the PyTorch twin and ``torch.optim.AdamW``, with
  PyTorch's own threads over the cores;
* ``torchrun --nproc_per_node 2 ... --engine torch --device cpu``: two gloo
  processes of one thread each, DistributedDataParallel (``--no-ddp`` leaves it out).

Throughput is the bytes trained per second that the run logs itself
(``metrics.jsonl``'s ``tokens_per_s``: evaluation excluded), the median over the
logged intervals after the first ``--skip`` (compilation, warm-up), then the median
over the repeats. Ratios are to the numpy engine of the same repeat.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import ROOT, cpu_model, git_state, markdown_row


def command(engine, out, args):
    flags = ["train", "--attention", args.attention, "--steps", str(args.steps),
             "--eval-interval", str(10 * args.steps), "--log-interval", "10",
             "--sample-length", "0", "--quiet", "--out", str(out)]  # fmt: skip
    python = [sys.executable, "-m", "minisynth"]
    if engine == "numpy":
        return python + flags
    if engine == "torch":
        return python + flags + ["--engine", "torch", "--device", "cpu"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            "2", "-m", "minisynth", *flags, "--engine", "torch", "--device", "cpu"]  # fmt: skip


def throughput(engine, args):
    """The run's own median bytes/s after the first ``args.skip`` logged intervals."""
    env = dict(os.environ)
    if engine == "torchrun x2":
        env["OMP_NUM_THREADS"] = "1"  # one thread per process: two processes, two cores
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        proc = subprocess.run(command(engine, out, args), env=env, cwd=ROOT,
                              capture_output=True, text=True)  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"{engine}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
        records = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    return statistics.median(r["tokens_per_s"] for r in records[args.skip :])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip", type=int, default=3, help="logged intervals left out")
    parser.add_argument("--attention", default="dense")
    parser.add_argument("--no-ddp", action="store_true")
    args = parser.parse_args(argv)
    engines = ["numpy", "torch"] + ([] if args.no_ddp else ["torchrun x2"])
    rates = {e: [] for e in engines}
    ratios = {e: [] for e in engines}
    for repeat in range(args.repeats):
        for engine in engines:
            rates[engine].append(throughput(engine, args))
            print(f"repeat {repeat + 1}: {engine}: {rates[engine][-1]:,.0f} bytes/s",
                  file=sys.stderr, flush=True)  # fmt: skip
        for engine in engines:
            ratios[engine].append(rates[engine][-1] / rates["numpy"][-1])
    import torch

    print(f"{cpu_model()}, {os.cpu_count()} CPUs; {git_state()}; torch {torch.__version__}")
    print(f"`minisynth train --attention {args.attention}` (the default model, batch 32 x 128 "
          f"bytes), {args.steps} steps, median of {args.repeats} repeats\n")  # fmt: skip
    print(markdown_row(["engine", "bytes/s (median)", "min - max", "vs numpy engine"]))
    print(markdown_row(["---", "---:", "---:", "---:"]))
    for engine in engines:
        r, ratio = rates[engine], statistics.median(ratios[engine])
        cells = [f"{statistics.median(r):,.0f}", f"{min(r):,.0f} - {max(r):,.0f}", f"{ratio:.2f}x"]
        print(markdown_row([engine, *cells]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
