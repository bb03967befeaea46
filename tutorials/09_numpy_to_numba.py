# ---
# jupyter:
#   jupytext:
#     formats: py:percent,ipynb
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---
# %% [markdown]
# # 09 · From NumPy to Numba
#
# minisynth has two paths. The NumPy functions in `minisynth.layers` are the
# ground truth: one array expression per line of maths. The functions of the
# same names in `minisynth.fast.kernels` are compiled with
# [Numba](https://numba.readthedocs.io) and must return the same results (to
# float rounding); each names the reference it replaces (`kernel.reference`).
# A model carries the functions it calls, `model.ops`: `SynthesizerLM(config)`
# holds `minisynth.layers` itself, `SynthesizerLM(config, backend="numba")`
# holds `minisynth.fast.ops`, the same names with the kernels in place of
# their references. The model code, which calls `ops.gelu_forward(...)`, is
# the same for both, and neither model changes what the other runs. This
# tutorial:
#
# 1. **profiles** a training step on the NumPy backend;
# 2. **writes a fused kernel** with `numba.njit`: masked softmax and the
#    weighted sum of values in one pass, with the signature of its NumPy twin;
# 3. **checks** it against the twin, the library's kernels against theirs, and
#    the library's backward of the attention core against finite differences;
# 4. explains the **fastmath** flags, and why `nnan` and `ninf` are left out;
# 5. shows why a **prange** loop may only run over what one iteration writes;
# 6. **measures** every kernel against its twin, ours included (a figure), a
#    whole training step on both backends, and why a function costs more inside
#    a step than alone (page faults, counted).
#
# `MINISYNTH_TUTORIAL_TINY=1` shrinks sizes and repeats (timings are then
# noise); tables go to `tutorials/output/` or `$MINISYNTH_TUTORIAL_OUT`.
# Timings depend on the machine and its load, so the prose says what to look
# for, and every verdict that depends on them is printed from this run's numbers.

# %%
import cProfile
import math
import os
import pstats
import resource
import time
import types
from pathlib import Path

import numba
import numpy as np
from matplotlib.figure import Figure

from minisynth import ModelConfig, SynthesizerLM, layers
from minisynth.data import get_batch, load_data
from minisynth.fast import kernels
from minisynth.gradcheck import numerical_gradient_array, rel_error

TINY = os.environ.get("MINISYNTH_TUTORIAL_TINY", "0") not in ("", "0")
try:
    HERE = Path(__file__).resolve().parent  # run as a script
except NameError:
    HERE = Path.cwd()  # run as a notebook: Jupyter starts in the notebook's folder
OUT = Path(os.environ.get("MINISYNTH_TUTORIAL_OUT", HERE / "output"))
OUT.mkdir(parents=True, exist_ok=True)
REPEAT = 3 if TINY else 15  # timed runs per measurement; we report the median
rng = np.random.default_rng(0)
print(f"tiny={TINY}, numba {numba.__version__}")


def median_ms(fn, repeat=REPEAT):
    """Median wall time of ``fn()`` in ms, after one untimed call (compilation, first touch)."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def md_table(header, rows):
    """A Markdown table from a header and rows of cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows])


# %% [markdown]
# ## 1. Profile a training step on the NumPy backend
#
# The model of tutorial 07 (a dense Synthesizer, 2 layers, width 64, context
# 64, batch 16) runs `model.loss_and_grads(x, y)`, forward and backward, under
# Python's `cProfile` on the NumPy backend, after one untimed call.
#
# cProfile records *Python* function calls. In the `pstats` table, `tottime`
# is a function's **self time** (its own lines, not the functions it calls),
# `cumtime` includes them; both are totals over all profiled steps. A NumPy
# expression such as `x @ W` is not a Python call, so its time is self time
# of the function whose line contains it: `linear_forward` is almost entirely
# one matrix product. `.sum()` and `.mean()` appear once for all callers, as
# `method 'reduce' of 'numpy.ufunc' objects` and NumPy's `_methods.py`. The
# profiler adds to every Python call, so a profiled step is slower than the
# unprofiled one timed in section 6.

# %%
splits, _ = load_data("bundled")
if TINY:
    config = ModelConfig(attention="dense", d_model=16, n_heads=2, n_layers=1, max_len=16)
    BATCH, PROFILE_STEPS = 4, 2
else:
    config = ModelConfig(attention="dense", d_model=64, n_heads=4, n_layers=2, max_len=64)
    BATCH, PROFILE_STEPS = 16, 10
model = SynthesizerLM(config, seed=0)  # backend "numpy": model.ops is minisynth.layers
x, y = get_batch(splits["train"], BATCH, config.max_len, rng)
print(model)

model.loss_and_grads(x, y)  # untimed warm-up
profiler = cProfile.Profile()
profiler.enable()
for _ in range(PROFILE_STEPS):
    model.loss_and_grads(x, y)
profiler.disable()
stats = pstats.Stats(profiler).strip_dirs().sort_stats("tottime")
stats.print_stats(10)  # the ten largest self times, totals over PROFILE_STEPS steps
print(f"one step under the profiler: {1e3 * stats.total_tt / PROFILE_STEPS:.2f} ms")

# %% [markdown]
# Grouped, the self times give a shorter answer: functions of
# `minisynth.layers` by name (forward and backward together), the attention
# layer's and the model's own lines by file, and the rest (NumPy's Python-level
# helpers, builtins, input checks).


# %%
def group_of(file, name):
    """A profile entry's group: layers.py functions by name, other code by file."""
    if file == "layers.py":
        return "layers." + name.removesuffix("_forward").removesuffix("_backward")
    own = {"attention.py": "attention.py's own lines", "model.py": "model.py's own lines"}
    return own.get(file, "NumPy helpers, builtins, input checks")


group_s = {}  # group -> self time over all profiled steps
for (file, _, name), (_, _, self_s, _, _) in stats.stats.items():
    group_s[group_of(file, name)] = group_s.get(group_of(file, name), 0.0) + self_s
step_s = sum(group_s.values())  # all self times add up to the whole step
ranked = sorted(group_s.items(), key=lambda kv: -kv[1]) + [("whole step", step_s)]
rows = [(g, f"{1e3 * s / PROFILE_STEPS:.2f}", f"{s / step_s:.0%}") for g, s in ranked]
profile_table = md_table(["group (self time)", "ms per step", "share"], rows)
print(profile_table)
(OUT / "09_profile.md").write_text(f"{model}\n\n{profile_table}\n", encoding="utf-8")

# %% [markdown]
# Look at which groups lead; the shares change with the sizes (the smaller
# the arrays, the more Python's per-call overhead weighs). What they are:
#
# * **matrix products**: `layers.linear` and, among `model.py`'s own lines,
#   the tied output layer. They are calls into an optimised BLAS library, and
#   minisynth leaves them there. Per token they cost in proportion to $C^2$,
#   layer norm and GELU to $C$, so their share grows with the model.
# * **`layers.gelu`**: elementwise chains. `gelu_backward` evaluates `u`,
#   `tanh(u)`, `du/dx` and the product rule in 19 NumPy operations (count them
#   in `minisynth/layers.py`; `gelu_forward` has 9), each a full pass over
#   (B, T, 4C) numbers that produces a new array: 18 temporaries and the result.
# * **`layers.softmax`** (called by `layers.attention_core`, which then
#   multiplies by `v`): six passes over (B, H, T, T) arrays. `np.where` copies
#   the logits to insert the causal mask, then come the row maximum, the
#   subtraction, `np.exp` (of the masked half too, to get 0), the row sums and
#   the division.
# * **`layers.layernorm`** and **`layers.cross_entropy`**: a few reductions
#   over each row and a few elementwise passes.
#
# "Several NumPy passes over the same rows" is what a compiled kernel can
# **fuse**: read a row once, keep intermediate values in registers, write the
# result once, and skip the masked half of an attention row.
#
# (If the matrix products take far longer here than the whole unprofiled step
# of section 6, another program was competing for the cores: BLAS's threads
# wait for each other, and one busy core stalls them all; see the docstring
# of `benchmarks/bench_train.py`.)
#
# ## 2. A fused kernel: masked softmax and weighted sum in one pass
#
# The twin `layers.attention_core_forward(S, v, causal)` computes
# $P = \mathrm{softmax}(\mathrm{mask}(S))$ and $o = P v$ for logits `S`
# (B, H, T, T), or (H, T, T) when the whole batch shares them (the `random`
# Synthesizer), and values `v` (B, H, T, hs), and returns `o` and its cache,
# an `AttentionCoreCache` holding the probabilities `probs` (B, H, T, T) for
# the backward pass. Our Numba version has **the same signature and return
# values**. For every row i
# of every (b, h), one loop nest does:
#
# 1. the row maximum $m$ over the visible keys $j \le i$ (all $j$ if not causal);
# 2. $e_j = \exp(S_{ij} - m)$ and their sum (subtracting $m$ avoids overflow);
# 3. $p_j = e_j / \sum e$, written to `probs`, and $o_i \mathrel{+}= p_j v_j$;
# 4. zeros in the masked part of the row, which is never read.
#
# Numba compiles on the first call for each combination of argument types
# (float32 or float64 here). As in the library, a jitted inner function works
# on plain arrays and a Python wrapper reshapes and allocates. The options are
# the library's (`kernels.FASTMATH_FLAGS`, `error_model="numpy"`; section 4).
# `numba.prange` marks the loop over (b, h) as one whose iterations are
# independent (section 5); compiled without `parallel=True` it is a `range`.


# %%
@numba.njit(fastmath=kernels.FASTMATH_FLAGS, error_model="numpy")
def fused_attention_rows(S, shared, causal, v, probs, o):
    """probs[b,h] = softmax(mask(S[b or 0, h])), o[b,h] = probs[b,h] @ v[b,h], in place.
    S (B|1,H,T,T) logits; v (B,H,T,hs); outputs probs (B,H,T,T), o (B,H,T,hs)."""
    B, H, T, hs = v.shape
    for bh in numba.prange(B * H):  # iteration bh writes probs[b, h] and o[b, h] only
        b, h = bh // H, bh % H
        sb = 0 if shared else b  # shared logits: every batch element reads S[0]
        for i in range(T):
            end = i + 1 if causal else T  # causal: keys j > i are never even read
            m = S[sb, h, i, 0]  # column 0 is always visible
            for j in range(1, end):
                m = max(m, S[sb, h, i, j])
            total = 0.0  # float64 accumulator, whatever the dtype
            for j in range(end):
                e = np.exp(S[sb, h, i, j] - m)
                probs[b, h, i, j] = e
                total += e
            inv = 1.0 / total
            o[b, h, i, :] = 0.0
            for j in range(end):
                p = probs[b, h, i, j] * inv
                probs[b, h, i, j] = p
                for c in range(hs):  # the inner loop runs along contiguous memory
                    o[b, h, i, c] += p * v[b, h, j, c]
            probs[b, h, i, end:] = 0.0  # masked: exactly zero, as in the twin


def my_attention_core_forward(S, v, causal):
    """Same signature and results as minisynth.layers.attention_core_forward.
    S (B,H,T,T) or shared (H,T,T); v (B,H,T,hs). Returns o (B,H,T,hs) and the cache,
    whose probs are (B,H,T,T)."""
    B, H, T, hs = v.shape
    shared = S.ndim == 3
    S4 = np.ascontiguousarray(S).reshape((1,) + S.shape if shared else S.shape)  # (1|B,H,T,T)
    probs = np.empty((B, H, T, T), dtype=v.dtype)  # (B,H,T,T)
    o = np.empty((B, H, T, hs), dtype=v.dtype)  # (B,H,T,hs)
    fused_attention_rows(S4, shared, bool(causal), np.ascontiguousarray(v), probs, o)
    return o, layers.AttentionCoreCache(probs, v, shared, bool(causal))


Bk, Hk, Tk, hsk = (2, 2, 6, 4) if TINY else (BATCH, config.n_heads, config.max_len, 16)
for dtype in (np.float32, np.float64):
    S_demo = rng.standard_normal((Bk, Hk, Tk, Tk)).astype(dtype)
    v_demo = rng.standard_normal((Bk, Hk, Tk, hsk)).astype(dtype)
    t0 = time.perf_counter()
    my_attention_core_forward(S_demo, v_demo, True)
    first_s = time.perf_counter() - t0
    later_ms = median_ms(lambda S=S_demo, v=v_demo: my_attention_core_forward(S, v, True))
    print(f"{np.dtype(dtype).name}: first call {first_s:.2f} s, later calls {later_ms:.3f} ms")

# %% [markdown]
# Compare the first call of each dtype with the later ones: the first pays
# for Numba compiling (type inference, then LLVM). The library's kernels use
# `cache=True`, which writes the machine code to disk for the next process to
# load; a function defined in a notebook cannot be cached that way.
#
# ## 3. Check against the twin, and the library's kernels against theirs
#
# We compare with `rel_error` ($\|a-b\| / (\|a\| + \|b\|)$, from
# `minisynth.gradcheck`), the larger of the errors of `o` and `probs`, in both
# dtypes, for causal and full rows, with per-example and shared logits. Look
# for errors within a small multiple of the dtype's machine epsilon (float32
# 1.2e-7, float64 2.2e-16): the same numbers up to the order of the additions
# (the kernel sums in float64, NumPy in the input dtype). The asserts allow a
# margin, 1e-6 and 1e-13.

# %%
print(f"{'ours vs twin: rel_error':28s}{'float32':>10s}{'float64':>10s}")
for causal in (True, False):
    for shared in (False, True):
        errs = []
        for dtype in (np.float32, np.float64):
            shape = (Hk, Tk, Tk) if shared else (Bk, Hk, Tk, Tk)  # S (H|B,H,T,T)
            S_demo = rng.standard_normal(shape).astype(dtype)
            v_demo = rng.standard_normal((Bk, Hk, Tk, hsk)).astype(dtype)
            o_ours, cache_ours = my_attention_core_forward(S_demo, v_demo, causal)
            o_twin, cache_twin = layers.attention_core_forward(S_demo, v_demo, causal)
            p_ours, p_twin = cache_ours.probs, cache_twin.probs  # (B,H,T,T) each
            errs.append(max(rel_error(o_ours, o_twin), rel_error(p_ours, p_twin)))
            assert not (causal and np.triu(p_ours, 1).any())  # the future gets exactly 0
        print(f"causal={causal!s:5} shared={shared!s:5}{'':9s}{errs[0]:10.1e}{errs[1]:10.1e}")
        assert errs[0] < 1e-6 and errs[1] < 1e-13

# %% [markdown]
# The library's kernels pass such tests in `tests/test_kernels.py`. A quick
# version for every kernel of a training step, on random inputs shaped like
# our model's, each against the reference it names (`kernel.reference`);
# backward kernels get the cache of the *twin's* forward, so that each
# comparison tests one function. Look for the same small multiples of
# epsilon (the asserts allow 1e-5 and 1e-12). Section 6 times the same calls.

# %%
V = config.vocab_size


def op_cases(dtype, B, H, T, hs, C):
    """(name, arguments) for each kernel of a training step, random inputs of ``dtype``:
    N = B T rows of width C (hidden 4C, V logits), causal attention maps (B, H, T, T)."""
    f = np.dtype(dtype).type
    N = B * T
    xr, dxr = rng.uniform(-2, 2, (N, C)).astype(f), rng.standard_normal((N, C)).astype(f)
    g, b = rng.uniform(-2, 2, C).astype(f), rng.uniform(-2, 2, C).astype(f)  # (C,)
    h, dh = rng.uniform(-3, 3, (N, 4 * C)).astype(f), rng.standard_normal((N, 4 * C)).astype(f)
    logits, targets = rng.uniform(-3, 3, (N, V)).astype(f), rng.integers(0, V, N)  # (N,V) (N,)
    S4 = rng.standard_normal((B, H, T, T)).astype(f)  # (B,H,T,T)
    va, do = rng.standard_normal((2, B, H, T, hs)).astype(f)  # (B,H,T,hs) each
    emb_cache = layers.embedding_forward(targets, rng.standard_normal((V, C)).astype(f))[1]
    core_cache = layers.attention_core_forward(S4, va, True)[1]  # probs (B,H,T,T), v
    return [
        ("layernorm_forward", (xr, g, b)),
        ("layernorm_backward", (dxr, layers.layernorm_forward(xr, g, b)[1])),
        ("gelu_forward", (h,)),
        ("gelu_backward", (dh, layers.gelu_forward(h)[1])),
        ("cross_entropy_forward", (logits, targets)),
        ("cross_entropy_backward", (1.0, layers.cross_entropy_forward(logits, targets)[1])),
        ("embedding_backward", (dxr, emb_cache)),
        ("attention_core_forward", (S4, va, True)),  # causal, as in our model
        ("attention_core_backward", (do, core_cache)),
    ]


def float_arrays(result):
    """The float arrays in a result: arrays, scalars, tuples and NamedTuple caches."""
    if isinstance(result, tuple):
        return [a for item in result for a in float_arrays(item)]
    return [np.asarray(result)] if np.asarray(result).dtype.kind == "f" else []


checks = {}  # (name, dtype) -> largest rel_error over the arrays of the result
for dtype in (np.float32, np.float64):
    for name, args in op_cases(dtype, Bk, Hk, Tk, hsk, 8 if TINY else config.d_model):
        kernel = getattr(kernels, name)
        ours, twin = kernel(*args), kernel.reference(*args)
        pairs = zip(float_arrays(ours), float_arrays(twin), strict=True)
        checks[name, dtype] = max(rel_error(a, b) for a, b in pairs)
print(f"{'kernel vs twin: rel_error':28s}{'float32':>10s}{'float64':>10s}")
for name in dict.fromkeys(name for name, _ in checks):
    print(f"{name:28s}{checks[name, np.float32]:10.1e}{checks[name, np.float64]:10.1e}")
assert max(e for (_, dt), e in checks.items() if dt == np.float32) < 1e-5
assert max(e for (_, dt), e in checks.items() if dt == np.float64) < 1e-12

# %% [markdown]
# Agreeing with the twin does not prove a correct *gradient*: both could
# share a mistake. The library's backward, `kernels.attention_core_backward(do,
# cache)` (jitted softmax passes around BLAS products, not a fused loop like
# our forward), returns `(dS, dv)`, the gradients of
# $\sum o \odot do$. We check it against finite differences of **our**
# forward kernel in float64 (`numerical_gradient_array` perturbs each entry of
# `S` or `v` in place and re-runs the forward, five-point rule): our forward,
# the library's backward and numerical differentiation meet. With shared
# logits the kernel must sum dS over the batch. Look for errors far below the
# assert's 1e-8; a mistake in a gradient shows up many orders of magnitude higher.

# %%
Bg, Hg, Tg, hsg = (2, 2, 4, 3) if TINY else (2, 2, 7, 4)
grad_checks = {}
for shared in (False, True):
    S_g = rng.standard_normal((Hg, Tg, Tg) if shared else (Bg, Hg, Tg, Tg))  # float64
    v_g, do_g = rng.standard_normal((2, Bg, Hg, Tg, hsg))  # (B,H,T,hs) values, upstream grad
    _, cache_g = my_attention_core_forward(S_g, v_g, True)  # probs, v, shared, causal
    dS, dv = kernels.attention_core_backward(do_g, cache_g)

    def outputs(S=S_g, v=v_g):  # reads the arrays that numerical_gradient_array perturbs
        return my_attention_core_forward(S, v, True)[0]

    dS_num = numerical_gradient_array(outputs, S_g, do_g)  # (H|B,H,T,T) as S_g
    dv_num = numerical_gradient_array(outputs, v_g, do_g)  # (B,H,T,hs)
    grad_checks[f"dS, shared={shared}"] = rel_error(dS, dS_num)
    grad_checks[f"dv, shared={shared}"] = rel_error(dv, dv_num)
    print(f"shared={shared}: masked dS entries are exactly 0: {not np.triu(dS, 1).any()}")
for key, err in grad_checks.items():
    print(f"kernels.attention_core_backward {key:16s} vs finite differences: {err:.1e}")
assert max(grad_checks.values()) < 1e-8

# %% [markdown]
# ## 4. fastmath, and why `nnan` and `ninf` are left out
#
# IEEE floating point forbids many rewrites that are true in real arithmetic:
# $(a + b) + c$ may differ from $a + (b + c)$, so a loop `total += x[i]` must
# add in order and cannot keep partial sums in SIMD lanes. `fastmath` lifts
# such rules; Numba's `fastmath=True` turns on all of LLVM's flags:
#
# | flag | allows |
# |---|---|
# | `reassoc` | regrouping: vectorised sums (partial sums per SIMD lane) |
# | `contract` | `a * b + c` as one fused multiply-add |
# | `arcp` | `x / y` as `x * (1 / y)` |
# | `afn` | approximate versions of `exp`, `log`, ... |
# | `nsz` | ignoring the sign of zero |
# | `nnan` | assume **no operand or result is NaN** |
# | `ninf` | assume **no operand or result is +-inf** |
#
# The last two are promises, not hints: if the program breaks them, the
# result is undefined, and LLVM may delete a comparison with infinity as
# "always false". But masked attention logits are exactly $-\infty$ (the
# library's masked softmax relies on $\exp(-\infty) = 0$). So minisynth passes
# an explicit set, `kernels.FASTMATH_FLAGS`, without `nnan` and `ninf`. A tiny
# function counting the masked entries of a row, compiled with each:


# %%
def count_masked(row):
    """How many entries of ``row`` are -inf (masked logits)."""
    n = 0
    for j in range(row.shape[0]):
        if row[j] == -np.inf:
            n += 1
    return n


masked_row = np.array([0.3, 1.2, -np.inf, -np.inf, -np.inf])  # a causal row i = 1 of T = 5
fastmath_demo = {}
for label, flags in (("FASTMATH_FLAGS", kernels.FASTMATH_FLAGS), ("fastmath=True", True)):
    fastmath_demo[label] = numba.njit(fastmath=flags)(count_masked)(masked_row)
    print(f"{label:15s}: count_masked = {fastmath_demo[label]}")
assert fastmath_demo["FASTMATH_FLAGS"] == 3
if fastmath_demo["fastmath=True"] != 3:
    print("fastmath=True got the row wrong: LLVM assumed that no value is infinite")

# %% [markdown]
# Whatever this LLVM did with `fastmath=True`, that code has no defined result.
# Such a bug does not crash; it silently lets a causal model see the future,
# or divides by zero somewhere far away.
#
# What the safe flags buy: `reassoc` lets LLVM vectorise a reduction. A plain
# loop summing a float64 array, compiled without fastmath and with the
# library's flags, each compared with `math.fsum`, the correctly rounded sum:


# %%
def loop_sum(a):
    total = 0.0
    for i in range(a.shape[0]):
        total += a[i]
    return total


big = rng.standard_normal(50_000 if TINY else 2_000_000)
exact, sum_ms = math.fsum(big), {}
for label, flags in (("strict IEEE", set()), ("FASTMATH_FLAGS", kernels.FASTMATH_FLAGS)):
    fn = numba.njit(fastmath=flags)(loop_sum)
    sum_ms[label] = median_ms(lambda f=fn: f(big))
    print(f"{label:15s}: {sum_ms[label]:7.3f} ms, error vs math.fsum {abs(fn(big) - exact):.1e}")
print(f"FASTMATH_FLAGS is {sum_ms['strict IEEE'] / sum_ms['FASTMATH_FLAGS']:.1f}x as fast")

# %% [markdown]
# The speed ratio is `reassoc` at work: several partial sums in SIMD lanes
# instead of one chain of dependent additions. The two results differ in the
# last digits, and which lands closer to the exact sum varies with the data.
# Regrouping does not make the sum less accurate (the worst-case rounding
# error of k partial sums of n/k terms is *smaller* than that of one running
# sum of n terms), only different: this is why tests compare kernels with
# twins to a tolerance, not bit for bit.
#
# ## 5. prange: a parallel loop runs only over what one iteration writes
#
# With `parallel=True`, a `numba.prange` loop is split into chunks that run
# on several threads at once, which is correct only if no two iterations
# write the same memory. Every prange loop in `minisynth.fast.kernels` (and
# ours: iteration `bh` writes `probs[b, h]` and `o[b, h]`) follows that rule.
#
# The classic way to break it is a reduction into a shared array, such as the
# column sums of a layer-norm backward ($dg = \sum_{\text{rows}} dout \odot
# \hat x$). `column_sums_racy` parallelises over rows and does `out[j] +=
# x[i, j]`. One might expect an occasional lost addition, when two threads read
# the same `out[j]` at the same moment. What happens is worse: nothing tells the
# compiler that another thread writes `out[j]`, so it may keep `out[j]` in a
# register for its whole chunk of rows, reading it once at the start and writing
# it once at the end. Each thread then adds *its whole chunk* to the value it read
# first, and the last thread to write wins: every other thread's chunk is lost at
# once. (Numba handles `total += ...` on a scalar, or on a whole array, as a
# reduction; an update of one *element* it cannot.)
# `column_sums_blocks` is the library's pattern: iteration k sums its own
# block of `ROW_BLOCK` rows into its own row of partial sums, added up
# afterwards in a fixed order, so the result does not even depend on the
# number of threads.


# %%
@numba.njit(parallel=True)
def column_sums_racy(x):
    N, C = x.shape
    out = np.zeros(C)  # (C,) shared by all iterations: the bug
    for i in numba.prange(N):
        for j in range(C):
            out[j] += x[i, j]
    return out


@numba.njit(parallel=True)
def column_sums_blocks(x, block):
    N, C = x.shape
    n_blocks = (N + block - 1) // block
    partial = np.empty((n_blocks, C))  # (n_blocks, C) row k belongs to iteration k
    for k in numba.prange(n_blocks):  # iteration k writes partial[k] only
        acc = np.zeros(C)  # (C,) private to the iteration
        for i in range(k * block, min(N, (k + 1) * block)):
            for j in range(C):
                acc[j] += x[i, j]
        partial[k] = acc
    out = np.zeros(C)  # (C,)
    for k in range(n_blocks):  # serial, in block order
        out += partial[k]
    return out


ones = np.ones((200_000, 4))  # every column sums to exactly 200000
racy = [int(column_sums_racy(ones)[0]) for _ in range(10)]  # column 0 of ten runs
blocks = [int(column_sums_blocks(ones, kernels.ROW_BLOCK)[0]) for _ in range(10)]
threads = numba.get_num_threads()
print(f"{threads} threads; column 0 of ten racy runs: {racy}")
wrong = [sum(r != 200_000 for r in runs) for runs in (racy, blocks)]
print(f"wrong in ten runs: racy {wrong[0]}, blocks {wrong[1]}")
lost = sorted({200_000 - r for r in racy if r != 200_000})
chunk = 200_000 // threads  # rows per thread when prange splits the loop evenly
print(f"additions lost in a wrong run: {lost}; one thread's chunk is {chunk:,} rows")
assert blocks == [200_000] * 10

# %% [markdown]
# When a run is wrong, the lost additions number close to a whole chunk (with two
# threads about half of them, give or take the moments when the two threads did not
# overlap), not a scattering of single additions: as the register explanation says. How often it is
# wrong depends on the machine and its load (with one thread, or when the threads
# happen not to overlap in time, the chunks add up correctly); that is what makes
# such bugs dangerous. The block version is right every time.
#
# Yet no kernel of minisynth is compiled with `parallel=True`. On a machine
# with few cores, a parallel region in every kernel would start and
# synchronise threads dozens of times per step, next to OpenBLAS's own thread
# pool. Instead the kernels are serial and `nogil=True`, and
# `minisynth.fast.threads` splits the *batch*: each thread runs the whole
# forward and backward on its shard, with OpenBLAS single-threaded (its
# docstring has the details).
#
# ## 6. Measure
#
# Every kernel of section 3 against its twin, plus our fused forward, on
# float32 inputs the size of our model's training step (N = B T rows, maps
# (B, H, T, T), hs = C / H), median of `REPEAT` calls. A speed-up below 1
# means the kernel is *slower* than NumPy.

# %%
speed = {}  # name -> (NumPy ms, Numba ms)
hs = config.d_model // config.n_heads
for name, args in op_cases(np.float32, BATCH, config.n_heads, config.max_len, hs, config.d_model):
    kernel = getattr(kernels, name)
    twin = kernel.reference
    speed[name] = (
        median_ms(lambda f=twin, a=args: f(*a)),
        median_ms(lambda f=kernel, a=args: f(*a)),
    )
    if name == "attention_core_forward":
        ours_ms = median_ms(lambda a=args: my_attention_core_forward(*a))
        speed["our fused forward (section 2)"] = (speed[name][0], ours_ms)
rows = [(f"`{n}`", f"{a:.3f}", f"{b:.3f}", f"{a / b:.2f}x") for n, (a, b) in speed.items()]
kernel_table = md_table(["kernel", "NumPy ms", "Numba ms", "speed-up"], rows)
(OUT / "09_kernels.md").write_text(kernel_table + "\n", encoding="utf-8")
print(kernel_table)
verdicts = {"faster than": [], "within 10% of": [], "SLOWER than": []}
for name, (a, b) in speed.items():
    verdict = "faster than" if a > 1.1 * b else "SLOWER than" if b > 1.1 * a else "within 10% of"
    verdicts[verdict].append(name)
for verdict, names in verdicts.items():
    print(f"{verdict} NumPy in this run: {', '.join(names) or 'none'}")

fig = Figure(figsize=(7.5, 0.32 * len(speed) + 1.2), layout="constrained")
ax = fig.add_subplot()
names = sorted(speed, key=lambda n: speed[n][0] / speed[n][1])
ratios = [speed[n][0] / speed[n][1] for n in names]
ax.barh(names, ratios, color=["tab:green" if r > 1.1 else "tab:red" if r < 1 / 1.1 else
                              "tab:grey" for r in ratios])  # fmt: skip
ax.axvline(1.0, color="black", linewidth=0.8)
ax.set_xscale("log")
ax.set_xlabel("speed-up over the NumPy twin (log scale; right of the line: faster)")
ax.set_title(f"Each kernel alone, float32, N = {BATCH * config.max_len} rows (median of {REPEAT})")
ax.tick_params(axis="y", labelsize=8)
fig.savefig(OUT / "09_kernel_speedups.png", dpi=100)
fig  # noqa: B018  (a notebook displays a bare last expression: the figure)

# %% [markdown]
# Read the verdicts, not a rule: "compiled" does not mean "faster". Two
# design facts lie behind them. The first is `exp`: Numba without Intel's
# SVML library calls the C library's scalar `exp` once per element, while
# NumPy's `np.exp` is a SIMD loop. One array of float32 logits both ways:


# %%
@numba.njit(fastmath=kernels.FASTMATH_FLAGS, error_model="numpy")
def exp_loop(a, out):
    for i in range(a.shape[0]):
        out[i] = np.exp(a[i])


z = rng.uniform(-10, 0, 4096 if TINY else 1 << 20).astype(np.float32)
ez = np.empty_like(z)
exp_ms = [median_ms(lambda: np.exp(z, out=ez)), median_ms(lambda: exp_loop(z, ez))]
print(f"np.exp {exp_ms[0]:.3f} ms, Numba loop {exp_ms[1]:.3f} ms")
print(f"np.exp is {exp_ms[1] / exp_ms[0]:.1f}x as fast; Numba uses SVML: {numba.config.USING_SVML}")

# %% [markdown]
# Our fused forward calls that scalar `exp` for every visible logit. The
# library's exp-heavy kernels (GELU, cross-entropy, the attention softmax)
# are split in three instead: a jitted pass writes the exponents into a fresh
# buffer, `np.exp(buf, out=buf)` exponentiates it in place, and a second
# jitted pass finishes the job (the docstring of `minisynth.fast.kernels`).
#
# The second is the matrix products. Our fused loop computes `P @ v` with an
# innermost loop over only hs numbers. The library's attention core kernels
# leave `P @ v` (and, backward, `dP` and `dv`) to BLAS and compile only the
# softmax passes around them. They skip the all-zero blocks of causal maps
# longer than `minisynth.fast.causal.CAUSAL_BLOCK` (64) rows; at this model's
# T = 64 that is one block, so the products are the reference's, the kernels
# can gain at most the softmax passes' share of the call, and they can lose to
# NumPy outright (the verdicts say which did here). The library's choices
# were measured at the sizes of `benchmarks/bench_kernels.py` (T = 256,
# C = 256, four times this model's in both), where fixed costs per call weigh
# less.
#
# Finally, a kernel's speed-up in isolation is not the speed-up of a program.
# The training step of section 1, without the profiler, on each backend: the
# same weights in a model built with `backend="numba"`.

# %%
fast_model = SynthesizerLM(config, seed=0, backend="numba")  # fast_model.ops: the kernels
step_ms = {}
for name, m in (("numpy", model), ("numba", fast_model)):
    step_ms[name] = median_ms(lambda m=m: m.loss_and_grads(x, y))
step_speedup = step_ms["numpy"] / step_ms["numba"]
print(f"training step: NumPy {step_ms['numpy']:.2f} ms, with the kernels {step_ms['numba']:.2f} ms")
library = [name for name in speed if hasattr(kernels, name)]  # the table without ours
more = [name for name in library if speed[name][0] / speed[name][1] > step_speedup]
print(f"step speed-up {step_speedup:.2f}x; {len(more)} of the {len(library)} library kernels")
print(f"gained more than that in isolation: {', '.join(more) or 'none'}")

# %% [markdown]
# Compare the step's speed-up with the kernels'. The kernels replace only the
# functions with a twin; the matrix products (the same BLAS calls on both
# backends) and the Python around them stay, so however fast the kernels
# were, the step would gain only on the time it spends in those functions
# (Amdahl's law).
#
# ### A call in a step is not a call in a loop
#
# The profile of section 1 gave GELU far more time per step than GELU's forward
# and backward take when timed alone on arrays of the same shape. Two candidate
# causes: the profiler's own overhead, and memory. We can measure both. We time
# the NumPy GELU (forward + backward) three ways: alone in a loop on the same
# arrays; inside real training steps without the profiler (the model calls
# `model.ops.gelu_forward`, so we hand it a copy of `layers` whose two GELU
# functions time themselves); and we count the **minor page faults** of each
# (`resource.getrusage`): every first touch of a page the process got from the
# operating system costs one, a few microseconds each.

# %%
spent = {"s": 0.0, "faults": 0, "calls": 0}


def timed(fn):
    """``fn`` that adds its wall time and the page faults during it to ``spent``."""

    def call(*args):
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        out = fn(*args)
        spent["s"] += time.perf_counter() - start
        spent["faults"] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        spent["calls"] += 1
        return out

    return call


timed_ops = types.SimpleNamespace(**vars(layers))  # the reference, with a timed GELU
timed_ops.gelu_forward, timed_ops.gelu_backward = (
    timed(layers.gelu_forward), timed(layers.gelu_backward))  # fmt: skip
in_step = SynthesizerLM(config, seed=0)
in_step.ops = timed_ops
in_step.loss_and_grads(x, y)  # warm-up
spent.update(s=0.0, faults=0, calls=0)
for _ in range(REPEAT):
    in_step.loss_and_grads(x, y)
step_gelu_ms = 1e3 * spent["s"] / REPEAT  # per step: every layer's forward and backward
step_faults = spent["faults"] / REPEAT

h_shape = (BATCH, config.max_len, 4 * config.d_model)  # the MLP's hidden activations
h = rng.standard_normal(h_shape).astype(np.float32)
dh = rng.standard_normal(h_shape).astype(np.float32)


def gelu_both():
    out, cache = layers.gelu_forward(h)
    return layers.gelu_backward(dh, cache)


spent.update(s=0.0, faults=0, calls=0)
alone = timed(gelu_both)
for _ in range(REPEAT):
    alone()
alone_ms = config.n_layers * 1e3 * spent["s"] / REPEAT  # as many calls as one step makes
alone_faults = config.n_layers * spent["faults"] / REPEAT
print(f"GELU forward + backward per step, {config.n_layers} layers, hidden {h_shape}:")
print(f"  alone in a loop:       {alone_ms:7.2f} ms, {alone_faults:7.0f} page faults")
print(f"  inside training steps: {step_gelu_ms:7.2f} ms, {step_faults:7.0f} page faults")
print(f"  under the profiler (section 1): {1e3 * group_s['layers.gelu'] / PROFILE_STEPS:.2f} ms")
print(f"  a page fault here costs about "
      f"{(step_gelu_ms - alone_ms) / max(step_faults - alone_faults, 1) * 1e3:.1f} us "
      "if the faults explain the whole difference")  # fmt: skip

# %% [markdown]
# Read the three lines together. GELU's temporaries are large (B T 4C floats, MBs
# per call); glibc takes such blocks from the operating system, and every first touch
# of a fresh page costs a fault. How many of those pages are fresh depends on what
# ran before: in a loop, memory freed by the previous call can come straight back;
# inside a step, the other layers' temporaries come and go in between, and more of
# GELU's pages are new. The last line divides the extra time by the extra faults: a
# minor fault costs about a microsecond or two, so when the line lands there, the
# faults explain the gap. Whatever the profiler adds on top is the difference with
# section 1's number.
# `minisynth.fast.allocator` asks glibc to keep freed memory for reuse instead,
# one of the reasons `minisynth train` is faster than its kernels alone would
# make it. A benchmark measures its whole environment, other programs on the
# machine included. `minisynth train` adds the batch split over threads and that
# allocator setting to the kernels; the harness that measures all of it lives in
# `benchmarks/`:
#
# * `python benchmarks/bench_kernels.py`: every kernel against its reference at
#   training size (speed-up, first-call compile time, largest difference);
# * `python benchmarks/bench_train.py`: a whole training step on the reference,
#   on the fast path and in PyTorch; `--malloc default` shows how much of the
#   difference is the allocator setting; results in `BENCHMARKS.md`.

# %% [markdown]
# ## Exercises
#
# 1. **Fix the race.** Rewrite `column_sums_racy` with `prange` over *columns*
#    instead of rows. Why is that correct, and why is it slow for C = 4?
# 2. **Fuse the GELU backward** into one jitted loop (no NumPy temporaries) and
#    compare it with `kernels.gelu_backward` inside a training step, not only in
#    a loop: does the page-fault count change?
# 3. **Turn on nnan.** Compile the masked softmax with `fastmath=True` (all flags)
#    and feed it a causal mask of -inf. What comes out, and why?
