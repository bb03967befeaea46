"""Benchmark: incremental decoding against full-window decoding, per attention kind.

Run from the repository root (a script, not a test)::

    python benchmarks/bench_decode.py [--quick] [--repeats 3] [--configs default,long]

For each config and kind it builds a float32 model (random weights: decoding
cost does not depend on training) and generates a full window, 1 prompt byte and
L - 1 new bytes, with ``SynthesizerLM.generate`` two ways, on the Numba backend
with the allocator setting of ``minisynth sample``:

* incremental (``use_cache=True``): one prefill, then one ``decode_step`` per
  byte, O(t) attention work at position t;
* full window (``use_cache=False``): a forward pass over the whole window for
  every byte, O(t^2) attention work at position t (what ``generate`` did before).

Both produce the same bytes (asserted). The two are interleaved, ``--repeats``
times, and the table gives the median bytes per second of each and their ratio,
with the decoding state a full window needs (``DecodeState.nbytes`` summed over
the layers, batch 1): values for every kind, keys as well for vanilla.

Configs: ``default`` is the model of ``minisynth train`` (d_model 128, 4 heads,
2 layers, max_len 128); ``long`` is the bench model of ``bench_train.py`` at
T = 1024 (d_model 256, 8 heads, 4 layers, max_len 1024).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from harness import apply_malloc_setting, markdown_row

from minisynth import ModelConfig, SynthesizerLM, attention

KINDS = (*attention.KINDS, "dense+vanilla")  # every single kind and the paper's best mixture
CONFIGS = {
    "default": dict(d_model=128, n_heads=4, n_layers=2, max_len=128),
    "long": dict(d_model=256, n_heads=8, n_layers=4, max_len=1024),
}
QUICK_CONFIGS = {
    "default": dict(d_model=32, n_heads=2, n_layers=1, max_len=32),
    "long": dict(d_model=32, n_heads=2, n_layers=1, max_len=128),
}


def decode_once(model, use_cache):
    """Seconds to generate a full window (1 prompt byte, L - 1 new bytes), and the bytes."""
    L = model.config.max_len
    start = time.perf_counter()
    out = model.generate(np.array([10]), L - 1, seed=0, use_cache=use_cache)
    return time.perf_counter() - start, out


def cache_bytes(model):
    _, states = model.prefill(np.array([[10]]))
    return sum(state.nbytes for state in states)


def measure(config, kind, repeats):
    model = SynthesizerLM(ModelConfig(attention=kind, **config), seed=0, backend="numba")
    decode_once(model, True)  # compile / warm up both paths
    times = {True: [], False: []}
    for _ in range(repeats):
        for use_cache in (True, False):
            seconds, out = decode_once(model, use_cache)
            times[use_cache].append(seconds)
            if use_cache:
                incremental_out = out
            elif out.tolist() != incremental_out.tolist():
                raise SystemExit(f"{kind}: incremental and full-window decoding disagree")
    n = config["max_len"] - 1
    incremental = n / statistics.median(times[True])
    full = n / statistics.median(times[False])
    return cache_bytes(model), incremental, full


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--configs", default="default,long")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--quick", action="store_true", help="small models, a smoke run")
    args = parser.parse_args()
    apply_malloc_setting()  # as `minisynth sample`
    table = QUICK_CONFIGS if args.quick else CONFIGS
    print(f"median of {args.repeats}; bytes/s generating a full window from a 1-byte prompt")
    print()
    print(markdown_row(["config", "kind", "decoding state (bytes)", "incremental (bytes/s)",
                        "full window (bytes/s)", "speedup"]))  # fmt: skip
    print("|---|---|---:|---:|---:|---:|")
    for name in args.configs.split(","):
        config = table[name]
        label = (
            f"{name} (C={config['d_model']}, layers={config['n_layers']}, T={config['max_len']})"
        )
        for kind in args.kinds.split(","):
            nbytes, incremental, full = measure(config, kind, args.repeats)
            cells = [label, kind, f"{nbytes:,}", f"{incremental:,.0f}", f"{full:,.1f}",
                     f"{incremental / full:.1f}x"]  # fmt: skip
            print(markdown_row(cells), flush=True)


if __name__ == "__main__":
    main()
