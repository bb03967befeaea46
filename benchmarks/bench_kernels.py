"""Benchmark: the Numba kernels against their NumPy twins at training sizes.

Run from the repository root (a script, not a test)::

    python benchmarks/bench_kernels.py [--repeat 15] [--threads 2] [--warm-cache]

Sizes: N = B*T = 16*256 = 4096 rows, C = 256 (layer norm, embedding), GELU on
4096 x 1024, V = 256 (cross-entropy), AdamW on one 3.3M-element parameter, the
causal attention core on (B, H, T, T) = (16, 8, 256, 256) logits with hs = 32; all
float32, as in training (the bench config of ``bench_train.py``).

Table 1, kernels as shipped (serial Numba kernels run on chunks of rows in
minisynth.parallel's threads; the matrix-product twins split over the same
threads): median wall time of ``--repeat`` calls of the NumPy twin and of the
kernel, their ratio, the first kernel call (compilation + one run) and the
largest difference between the two results, relative to the largest magnitude
of the twin's result.

Table 2, why no kernel is compiled with ``parallel=True``: the same kernels
recompiled with ``kernels.PARALLEL_JIT_OPTS`` (``--threads`` threads; for the
embedding scatter-add, the race-free column-block variant below) and called
from one thread, against the shipped chunks, alone and right after a
training-size BLAS matmul (untimed), as every kernel runs in a training step.

By default Numba's on-disk cache points at a fresh temporary directory, so the
first-call column is the real compile time. ``--warm-cache`` uses the package's
own cache instead: what a user pays once the kernels are compiled (a cache load).
A kernel that shares a compiled pass with an earlier row (the GELU and softmax
passes) only compiles what is new. Other processes on the machine skew timings
(parallel kernels suffer most): the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time

import numpy as np

B, T, C, V, HIDDEN = 16, 256, 256, 256, 1024
HEADS = 8  # attention core: hs = C / HEADS
IDLE_S = 0.5  # long enough for OpenBLAS's idle workers to stop spinning
ADAMW_PARAMS = 3_300_000


def parse_args(argv=None):
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15, help="timed calls per measurement")
    parser.add_argument("--threads", type=int, default=2, help="Numba threads (table 2)")
    parser.add_argument(
        "--warm-cache", action="store_true", help="use the package's Numba cache (no compilation)"
    )
    return parser.parse_args(argv)


def median_ms(fn, repeat, before=None):
    """Median wall time of ``repeat`` calls of ``fn()`` in ms, after one warm-up call.

    ``before()``, if given, runs untimed before every call.
    """
    fn()
    times = []
    for _ in range(repeat):
        if before is not None:
            before()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


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
    _, probs = layers.attention_core_forward(S, v, True)  # (B, H, T, T)
    W = rng.uniform(-0.1, 0.1, (C, HIDDEN)).astype(f32)  # (C, 4C) as the MLP's first layer
    bias = rng.uniform(-0.1, 0.1, HIDDEN).astype(f32)  # (4C,)
    _, lin_cache = layers.linear_forward(x, W, bias)
    q = x.reshape(B, T, HEADS, hs).transpose(0, 2, 1, 3)  # (B, H, T, hs) strided, like attention's
    k = dout.reshape(B, T, HEADS, hs).transpose(0, 2, 1, 3)  # (B, H, T, hs)

    def ce_forward_backward():
        loss, cache = layers.cross_entropy_forward(logits, targets)
        return loss, layers.cross_entropy_backward(1.0, cache)

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
        ("cross_entropy fwd+bwd (fused)", f"{bt}x{V}",
         ce_forward_backward, lambda: kernels.cross_entropy_forward_backward(logits, targets)),
        ("embedding_backward", f"{bt}x{C}, V={V}",
         lambda: layers.embedding_backward(dout, emb_cache),
         lambda: kernels.embedding_backward(dout, emb_cache)),
        ("attention_core_forward", f"{B}x{HEADS}x{T}x{T}, causal",
         lambda: layers.attention_core_forward(S, v, True),
         lambda: kernels.attention_core_forward(S, v, True)),
        ("attention_core_backward", f"{B}x{HEADS}x{T}x{T}",
         lambda: layers.attention_core_backward(do, probs, v, False),
         lambda: kernels.attention_core_backward(do, probs, v, False)),
        ("attention_core_backward (causal)", f"{B}x{HEADS}x{T}x{T}, causal",
         lambda: layers.attention_core_backward(do, probs, v, False, True),
         lambda: kernels.attention_core_backward(do, probs, v, False, True)),
        ("linear_forward", f"{bt}x{C} @ {C}x{HIDDEN}",
         lambda: layers.linear_forward(x, W, bias), lambda: kernels.linear_forward(x, W, bias)),
        ("linear_backward", f"{bt}x{HIDDEN} -> {C}",
         lambda: layers.linear_backward(dh, lin_cache),
         lambda: kernels.linear_backward(dh, lin_cache)),
        ("matmul q @ k^T", f"{B}x{HEADS}x{T}x{hs} @ ^T",
         lambda: layers.matmul(q, k.swapaxes(-1, -2)),
         lambda: kernels.matmul(q, k.swapaxes(-1, -2))),
        ("causal_matmul P @ v", f"{B}x{HEADS}x{T}x{T} @ {T}x{hs}",
         lambda: layers.causal_matmul(probs, v), lambda: kernels.causal_matmul(probs, v)),
        ("adamw_update", f"{ADAMW_PARAMS / 1e6:.1f}M",
         lambda: adamw(optim.adamw_update, "twin"), lambda: adamw(kernels.adamw_update, "kernel")),
    ]  # fmt: skip


def embedding_backward_column_blocks(numba, opts):
    """The race-free parallel scatter-add, jitted with ``opts``: returns dW (V, C).

    Each prange iteration owns a block of 32 columns, walks all N rows in order
    and accumulates into a private (V, 32) buffer: no two iterations write the
    same element, and no ``+=`` goes into a shared array.
    """

    def cols(dout, idx, V):
        N, C = dout.shape
        dW = np.empty((V, C), dtype=dout.dtype)  # (V, C)
        n_blocks = (C + 31) // 32
        for k in numba.prange(n_blocks):  # iteration k writes columns c0:c1 only
            c0 = k * 32
            c1 = min(C, c0 + 32)
            acc = np.zeros((V, c1 - c0), dtype=dout.dtype)  # (V, c1 - c0) private
            for n in range(N):
                for c in range(c0, c1):
                    acc[idx[n], c - c0] += dout[n, c]
            dW[:, c0:c1] = acc
        return dW

    return numba.jit(**opts)(cols)


def compare_parallel(numba, kernels, cases, repeat, rng):
    """Table 2: (name, shipped, parallel, shipped after matmul, parallel after matmul) in ms.

    "shipped": the serial kernels on chunks of rows in minisynth.parallel's threads.
    "parallel": the same kernels compiled with ``kernels.PARALLEL_JIT_OPTS`` and
    called once, from one thread (minisynth.parallel told there is one thread).
    The public wrappers look their inner functions up in the module at call
    time, so swapping the module attributes swaps the build. All "alone"
    columns are measured before the first matmul: once OpenBLAS has run on
    several threads, its worker spins on for a while and competes for the cores.
    Matrix-product rows (no jitted code of their own) are left out.
    """
    from minisynth import parallel as threads_module

    serial = {
        name: fn
        for name, fn in vars(kernels).items()
        if isinstance(fn, numba.core.registry.CPUDispatcher)
    }
    opts = dict(kernels.PARALLEL_JIT_OPTS, cache=False)
    parallel = {name: numba.jit(**opts)(fn.py_func) for name, fn in serial.items()}
    parallel["_embedding_backward_rows"] = embedding_backward_column_blocks(numba, opts)
    shipped_thread_count = threads_module.thread_count
    jitted_cases = [c for c in cases if c[0].split()[0] not in kernels.BLAS_TWINS]
    jitted_cases = [c for c in jitted_cases if not c[0].startswith(("matmul", "causal_matmul"))]
    a = rng.standard_normal((B * T, C)).astype(np.float32)  # (N, C)
    w = rng.standard_normal((C, HIDDEN)).astype(np.float32)  # (C, 4C)

    def matmul():
        return a @ w  # (N, 4C) as in the MLP; OpenBLAS's worker spins on afterwards

    def use(build):
        for attr, fn in build.items():
            setattr(kernels, attr, fn)
        one_thread = build is parallel  # Numba's own threads instead of chunks
        threads_module.thread_count = (lambda: 1) if one_thread else shipped_thread_count

    times = {}  # (case name, column) -> ms
    try:
        for before, suffix in ((None, ""), (matmul, " after matmul")):
            for name, _, _, kernel in jitted_cases:
                for build_name, build in (("shipped", serial), ("parallel", parallel)):
                    use(build)
                    times[name, build_name + suffix] = median_ms(kernel, repeat, before=before)
    finally:
        use(serial)
    columns = ("shipped", "parallel", "shipped after matmul", "parallel after matmul")
    return [(name, *(times[name, col] for col in columns)) for name, *_ in jitted_cases]


def print_table(header, rows, formats):
    """A Markdown table: ``formats`` are format specs, one per column."""
    cells = [[format(v, f) for v, f in zip(row, formats, strict=True)] for row in rows]
    widths = [max(len(c) for c in column) for column in zip(header, *cells, strict=True)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:  # text left, numbers right
        columns = zip(row, widths, formats, strict=True)
        print("| " + " | ".join(c.ljust(w) if not f else c.rjust(w) for c, w, f in columns) + " |")


def main(argv=None):
    """Run every case and print the two tables."""
    args = parse_args(argv)
    if not args.warm_cache:  # must be set before Numba is imported
        os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="minisynth-bench-numba-")
    numba = importlib.import_module("numba")
    kernels = importlib.import_module("minisynth.kernels")
    layers = importlib.import_module("minisynth.layers")
    optim = importlib.import_module("minisynth.optim")
    threads = min(args.threads, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(threads)
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
        # the kernel first, after a pause: a twin's product leaves OpenBLAS's workers
        # spinning for a while, which would slow the kernel's split products
        time.sleep(IDLE_S)
        numba_ms = median_ms(kernel, args.repeat)
        numpy_ms = median_ms(twin, args.repeat)
        rows.append((name, shape, numpy_ms, numba_ms, numpy_ms / numba_ms, first_s, diff))
    print("Table 1: kernels as shipped (minisynth.parallel's threads) vs their NumPy twins")
    print_table(
        ["op", "shape", "numpy ms", "numba ms", "speedup", "first call s", "max rel diff"],
        rows,
        ["", "", ".3f", ".3f", ".1f", ".2f", ".1e"],
    )

    rows = compare_parallel(numba, kernels, cases, args.repeat, rng)
    print(
        f"\nTable 2: shipped (serial kernels on chunks in minisynth.parallel's threads) vs "
        f"parallel=True ({threads} threads, {numba.threading_layer()} layer)"
    )
    print_table(
        ["op", "shipped ms", "parallel ms", "shipped ms after matmul", "parallel ms after matmul"],
        rows,
        ["", ".3f", ".3f", ".3f", ".3f"],
    )
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
