"""Benchmark: the Numba kernels against their NumPy twins at training sizes.

Run from the repository root (a script, not a test)::

    python benchmarks/bench_kernels.py [--repeat 15] [--threads 2] [--warm-cache]

Sizes: N = B*T = 16*256 = 4096 rows, C = 256 (layer norm, embedding), GELU on
4096 x 1024, V = 256 (cross-entropy), AdamW on one 3.3M-element parameter, the
causal attention core on (B, H, T, T) = (16, 8, 256, 256) logits with hs = 32; all
float32, as in training (the bench config of ``bench_train.py``).

One table, every kernel of ``minisynth.fast.kernels`` (serial: in training the
fast path runs one shard of the batch per thread, see ``minisynth.fast.threads``),
single-threaded BLAS as in a shard: median wall time of ``--repeat`` calls of the
NumPy reference and of the kernel, their ratio, the first kernel call
(compilation + one run) and the largest difference between the two results,
relative to the largest magnitude of the reference's result.

By default Numba's on-disk cache points at a fresh temporary directory, so the
first-call column is the real compile time. ``--warm-cache`` uses the package's
own cache instead: what a user pays once the kernels are compiled (a cache load).
A kernel that shares a compiled pass with an earlier row (the GELU and softmax
passes) only compiles what is new. Other processes on the machine skew timings:
the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time

import numpy as np
from harness import markdown_table, time_call_ms

B, T, C, V, HIDDEN = 16, 256, 256, 256, 1024
HEADS = 8  # attention core: hs = C / HEADS
ADAMW_PARAMS = 3_300_000


def parse_args(argv=None):
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15, help="timed calls per measurement")
    parser.add_argument(
        "--warm-cache", action="store_true", help="use the package's Numba cache (no compilation)"
    )
    return parser.parse_args(argv)


def float_arrays(result):
    """The float arrays inside a result (arrays, NumPy scalars, tuples and NamedTuple caches)."""
    if isinstance(result, (np.ndarray, np.floating)):
        arr = np.asarray(result)
        return [arr] if arr.dtype.kind == "f" else []
    if isinstance(result, tuple):
        return [a for item in result for a in float_arrays(item)]
    return []


def max_rel_diff(kernel_result, twin_result):
    """max |kernel - twin| / max |twin| over all float arrays of the two results."""
    worst = 0.0
    for a, b in zip(float_arrays(kernel_result), float_arrays(twin_result), strict=True):
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        worst = max(worst, float(np.max(np.abs(a64 - b64)) / max(np.max(np.abs(b64)), 1e-30)))
    return worst


def make_cases(kernels, layers, optim, rng):
    """(name, shape, twin call, kernel call) for every kernel, on float32 training-size inputs.

    Each call takes no argument and returns what is compared; AdamW, which works
    in place, returns its updated parameter.
    """
    f32 = np.float32
    x = rng.uniform(-2, 2, (B, T, C)).astype(f32)  # (B, T, C)
    g = rng.uniform(-2, 2, C).astype(f32)  # (C,)
    b = rng.uniform(-2, 2, C).astype(f32)  # (C,)
    dout = rng.standard_normal((B, T, C)).astype(f32)  # (B, T, C)
    _, ln_cache = layers.layernorm_forward(x, g, b)
    h = rng.uniform(-2, 2, (B, T, HIDDEN)).astype(f32)  # (B, T, 4C)
    dh = rng.standard_normal((B, T, HIDDEN)).astype(f32)  # (B, T, 4C)
    _, gelu_cache = layers.gelu_forward(h)
    logits = rng.uniform(-2, 2, (B, T, V)).astype(f32)  # (B, T, V)
    targets = rng.integers(0, V, size=(B, T))  # (B, T)
    _, ce_cache = layers.cross_entropy_forward(logits, targets)
    idx = rng.integers(0, V, size=(B, T))  # (B, T) byte ids
    _, emb_cache = layers.embedding_forward(idx, rng.uniform(-2, 2, (V, C)).astype(f32))
    p0 = rng.standard_normal(ADAMW_PARAMS).astype(f32)  # (P,)
    grad = rng.standard_normal(ADAMW_PARAMS).astype(f32)  # (P,)
    # separate AdamW states: both start equal, then each keeps updating its own
    adam = {
        who: [p0.copy(), np.zeros_like(p0), np.zeros_like(p0)]  # p, m, v (P,)
        for who in ("twin", "kernel")
    }
    hp = dict(lr=1e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, t=1)

    def adamw(fn, who):
        p, m, v = adam[who]
        fn(p, grad, m, v, **hp)
        return p

    hs = C // HEADS
    S = rng.standard_normal((B, HEADS, T, T)).astype(f32)  # (B, H, T, T)
    v = rng.standard_normal((B, HEADS, T, hs)).astype(f32)  # (B, H, T, hs)
    do = rng.standard_normal((B, HEADS, T, hs)).astype(f32)  # (B, H, T, hs)
    _, causal_cache = layers.attention_core_forward(S, v, True)  # probs (B, H, T, T)
    full_cache = layers.attention_core_forward(S, v, False)[1]  # probs (B, H, T, T)
    bt = f"{B}x{T}"
    return [
        ("layernorm_forward", f"{bt}x{C}",
         lambda: layers.layernorm_forward(x, g, b), lambda: kernels.layernorm_forward(x, g, b)),
        ("layernorm_backward", f"{bt}x{C}",
         lambda: layers.layernorm_backward(dout, ln_cache),
         lambda: kernels.layernorm_backward(dout, ln_cache)),
        ("gelu_forward", f"{bt}x{HIDDEN}",
         lambda: layers.gelu_forward(h), lambda: kernels.gelu_forward(h)),
        ("gelu_backward", f"{bt}x{HIDDEN}",
         lambda: layers.gelu_backward(dh, gelu_cache),
         lambda: kernels.gelu_backward(dh, gelu_cache)),
        ("cross_entropy_forward", f"{bt}x{V}",
         lambda: layers.cross_entropy_forward(logits, targets),
         lambda: kernels.cross_entropy_forward(logits, targets)),
        ("cross_entropy_backward", f"{bt}x{V}",
         lambda: layers.cross_entropy_backward(1.0, ce_cache),
         lambda: kernels.cross_entropy_backward(1.0, ce_cache)),
        ("embedding_backward", f"{bt}x{C}, V={V}",
         lambda: layers.embedding_backward(dout, emb_cache),
         lambda: kernels.embedding_backward(dout, emb_cache)),
        ("attention_core_forward", f"{B}x{HEADS}x{T}x{T}, causal",
         lambda: layers.attention_core_forward(S, v, True),
         lambda: kernels.attention_core_forward(S, v, True)),
        ("attention_core_backward", f"{B}x{HEADS}x{T}x{T}",
         lambda: layers.attention_core_backward(do, full_cache),
         lambda: kernels.attention_core_backward(do, full_cache)),
        ("attention_core_backward (causal)", f"{B}x{HEADS}x{T}x{T}, causal",
         lambda: layers.attention_core_backward(do, causal_cache),
         lambda: kernels.attention_core_backward(do, causal_cache)),
        ("adamw_update", f"{ADAMW_PARAMS / 1e6:.1f}M",
         lambda: adamw(optim.adamw_update, "twin"), lambda: adamw(kernels.adamw_update, "kernel")),
    ]  # fmt: skip


def main(argv=None):
    """Run every case and print the table."""
    args = parse_args(argv)
    if not args.warm_cache:  # must be set before Numba is imported
        os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="minisynth-bench-numba-")
    numba = importlib.import_module("numba")
    kernels = importlib.import_module("minisynth.fast.kernels")
    # BLAS single-threaded for the whole run, as inside one shard of the fast path
    importlib.import_module("minisynth.fast.threads").blas().limit(limits=1)
    layers = importlib.import_module("minisynth.layers")
    optim = importlib.import_module("minisynth.optim")
    rng = np.random.default_rng(0)

    print(
        f"numpy {np.__version__}, numba {numba.__version__}, python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs, float32, median of {args.repeat} calls"
    )
    print(f"load average before: {os.getloadavg()[0]:.2f}\n")
    cases = make_cases(kernels, layers, optim, rng)
    rows = []
    for name, shape, twin, kernel in cases:
        start = time.perf_counter()
        kernel_result = kernel()  # the first call compiles (unless cached)
        first_s = time.perf_counter() - start
        diff = max_rel_diff(kernel_result, twin())
        twin()  # one warm-up call each (the kernel's was its first, compiling call)
        numba_ms = time_call_ms(kernel, args.repeat)
        numpy_ms = time_call_ms(twin, args.repeat)
        rows.append((name, shape, numpy_ms, numba_ms, numpy_ms / numba_ms, first_s, diff))
    print("Numba kernels (minisynth.fast.kernels) vs the NumPy reference, one thread")
    header = ["op", "shape", "numpy ms", "numba ms", "speedup", "first call s", "max rel diff"]
    print(markdown_table(header, rows, ["", "", ".3f", ".3f", ".1f", ".2f", ".1e"]))

    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
