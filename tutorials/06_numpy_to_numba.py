# %% [markdown]
# # 06 · From NumPy to Numba
#
# minisynth has two paths. The NumPy functions in `minisynth.layers` are the
# ground truth: short, readable, one array expression per line of maths. The
# functions of the same names in `minisynth.fast.kernels` are compiled with
# [Numba](https://numba.readthedocs.io) and must return the same results (to
# float rounding); each names the reference it replaces (`kernel.reference`).
# `set_backend("numba")` swaps the kernels into `minisynth.layers` in place of
# their references, and `set_backend("numpy")` swaps them back, so the model
# code, which calls `layers.gelu_forward(...)`, never changes.
#
# This tutorial follows the path from one to the other:
#
# 1. **profile** a training step on the NumPy backend: where does the time go?
# 2. **write a fused kernel** with `numba.njit`: masked softmax and the weighted
#    sum of values in one pass, with the signature of its NumPy twin;
# 3. **check** it against the twin, and the library's kernels against theirs
#    (plus a float64 gradient check of the library's backward);
# 4. the **fastmath** flags: why `nnan` and `ninf` are left out;
# 5. **prange**: why a parallel loop may only run over what one iteration writes;
# 6. **measure** our kernel against the library's and the reference, and where
#    the measurement harness for the rest lives (`benchmarks/`).
#
# Run as a script or as a notebook (jupytext). `MINISYNTH_TUTORIAL_TINY=1`
# shrinks the sizes and repeats (the timings are then meaningless, only the
# code runs); figures and tables go to `tutorials/output/` or
# `$MINISYNTH_TUTORIAL_OUT`. Timings depend on the machine and on what else runs
# on it: your numbers will differ from any quoted here.

# %%
import cProfile
import os
import pstats
import time
from pathlib import Path

import numba
import numpy as np

import minisynth
from minisynth import ModelConfig, SynthesizerLM, get_backend, layers, use_backend
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
print(f"tiny={TINY}, numba {numba.__version__}, default backend {get_backend()}, output: {OUT}")


def median_ms(fn, repeat=REPEAT):
    """Median wall time of ``repeat`` calls of ``fn()`` in milliseconds, after one warm-up call.

    The warm-up call pays for compilation (or loading a compiled kernel from
    Numba's disk cache) and for first-touch memory; the median ignores the odd
    run slowed down by another process.
    """
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


# %% [markdown]
# ## 1. Profile a training step on the NumPy backend
#
# We take the model of tutorial 07 (a dense Synthesizer, 2 layers, width 64,
# context 64, batch 16) and run `model.loss_and_grads(x, y)`, the forward and
# backward pass of one step, under Python's `cProfile` with the NumPy backend
# selected by `use_backend("numpy")`. One untimed call first, so that
# one-time costs (allocating, importing) stay out of the profile.
#
# cProfile records every *Python* function call. Two things to keep in mind
# when reading its table:
#
# * **self time** (`tottime`) is the time spent in a function's own lines,
#   excluding the functions it calls. A NumPy expression such as `x @ W` or
#   `np.tanh(u)` is not a Python call, so its time counts as self time of the
#   function whose line contains it. `linear_forward` is almost entirely one
#   matrix product, `gelu_backward` a chain of elementwise array operations.
# * NumPy methods such as `.sum()`, `.max()` and `.mean()` do appear, as
#   `method 'reduce' of 'numpy.ufunc' objects`, one entry for all their callers.

# %%
splits, _ = load_data("bundled")
if TINY:
    config = ModelConfig(attention="dense", d_model=16, n_heads=2, n_layers=1, max_len=16)
    BATCH, PROFILE_STEPS = 4, 2
else:
    config = ModelConfig(attention="dense", d_model=64, n_heads=4, n_layers=2, max_len=64)
    BATCH, PROFILE_STEPS = 16, 10
model = SynthesizerLM(config, seed=0)
x, y = get_batch(splits["train"], BATCH, config.max_len, rng)
print(model)

with use_backend("numpy"):
    model.loss_and_grads(x, y)  # untimed warm-up
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(PROFILE_STEPS):
        model.loss_and_grads(x, y)
    profiler.disable()

# pstats.Stats(...).stats maps (file, line, function) -> (calls, calls, self, cumulative, callers)
entries = []
for (file, line, name), (_, ncalls, self_s, _, _) in pstats.Stats(profiler).stats.items():
    label = name if file == "~" else f"{Path(file).name}:{line}({name})"  # "~": a builtin
    entries.append((self_s, ncalls, label))
entries.sort(reverse=True)
step_ms = 1e3 * sum(e[0] for e in entries) / PROFILE_STEPS  # all self times add up to the step
top = entries[:12]
rows = [
    "| function (file:line) | calls per step | self time per step (ms) | share of the step |",
    "|---|---:|---:|---:|",
]
for self_s, ncalls, label in top:
    per_step = 1e3 * self_s / PROFILE_STEPS
    rows.append(
        f"| `{label}` | {ncalls / PROFILE_STEPS:g} | {per_step:.2f} | {per_step / step_ms:.0%} |"
    )
rest = step_ms - sum(1e3 * e[0] / PROFILE_STEPS for e in top)
rows.append(f"| everything else | | {rest:.2f} | {rest / step_ms:.0%} |")
rows.append(f"| **whole step** | | **{step_ms:.2f}** | 100% |")
profile_table = "\n".join(rows)
print(profile_table)

# %% [markdown]
# The same self times grouped by what they do gives a shorter answer to "what
# dominates". Functions of `minisynth.layers` are grouped by their name; the
# attention layer's and the model's own lines (projections, synthesizer
# logits, embeddings, the tied output layer, residual additions) form two more
# groups; NumPy's Python-level helpers and builtins (reductions, `einsum`,
# `ufunc.at`) and minisynth's input checks form the rest.

# %%
PACKAGE_DIR = Path(minisynth.__file__).resolve().parent
LAYER_GROUPS = {
    "linear_": "matrix products of the linear layers",
    "gelu_": "GELU (MLP activation)",
    "softmax_": "attention softmax and P @ v",
    "attention_core_": "attention softmax and P @ v",
    "causal_mask": "attention softmax and P @ v",
    "layernorm_": "layer norm",
    "cross_entropy_": "cross-entropy",
    "embedding_": "embedding",
    "relu_": "ReLU (dense synthesizer)",
}


def group_of(file, name):
    """The group of one profile entry: what that code does in a training step."""
    path = Path(file)
    if path.name == "layers.py":
        return next((g for pre, g in LAYER_GROUPS.items() if name.startswith(pre)), "other layers")
    if path.name == "attention.py":
        return "attention layer: projections, synthesizer logits"
    if path.name == "model.py":
        return "model: embeddings, tied output layer, residuals"
    if path.parent.resolve() == PACKAGE_DIR:
        return "minisynth input checks"
    return "NumPy helpers and builtins (reductions, einsum, add.at)"


groups = {}
for (file, _, name), (_, _, self_s, _, _) in pstats.Stats(profiler).stats.items():
    key = group_of(file, name)
    groups[key] = groups.get(key, 0.0) + 1e3 * self_s / PROFILE_STEPS
group_rows = ["| group | self time per step (ms) | share of the step |", "|---|---:|---:|"]
for key, ms in sorted(groups.items(), key=lambda kv: -kv[1]):
    group_rows.append(f"| {key} | {ms:.2f} | {ms / step_ms:.0%} |")
group_table = "\n".join(group_rows)
(OUT / "06_profile.md").write_text(
    f"Self time of a training step, NumPy backend, {config.attention} Synthesizer "
    f"(d_model {config.d_model}, {config.n_layers} layers, batch {BATCH} x "
    f"{config.max_len}), mean of {PROFILE_STEPS} profiled steps.\n\n"
    f"## The twelve largest entries\n\n{profile_table}\n\n## Grouped\n\n{group_table}\n",
    encoding="utf-8",
)
print(group_table)

# %% [markdown]
# How to read it (at the full size; the tiny model's shares are different):
#
# * the **matrix products** (`linear_forward`, `linear_backward`, and the tied
#   output layer among the model's own lines) are already calls into an
#   optimised BLAS library. A hand-written loop will not beat them, and
#   they only grow in share as the model grows (section 6).
# * **GELU** forward and backward are elementwise chains: `gelu_backward`
#   evaluates `u`, `tanh(u)`, `du/dx` and the product rule, and every NumPy
#   operation writes a full (B, T, 4C) temporary and reads it back. Memory
#   traffic and fresh allocations (section 7), not arithmetic, are the cost.
# * the **attention softmax** (`softmax_forward` and the attention core) works
#   on (B, H, T, T) arrays: NumPy first copies the logits with `np.where` to
#   insert the causal mask, then exponentiates the masked half too (to get 0),
#   then normalises in a third pass; `attention_core_forward` then multiplies by
#   `v` in a fourth.
# * **layer norm** and **cross-entropy** are row operations of the same kind:
#   a few reductions over each row and a few elementwise passes.
#
# (If the matrix products take far more, say hundreds of milliseconds per
# step, BLAS's threads are competing with other programs for the cores; see
# section 7.)
#
# The pattern "several NumPy passes over the same rows" is what a compiled
# kernel can **fuse**: read a row once, keep the intermediate values in
# registers, write the result once, and skip the masked half of an attention
# row entirely.
#
# ## 2. A fused kernel: masked softmax and weighted sum in one pass
#
# The NumPy twin `layers.attention_core_forward(S, v, causal)` computes
#
# $$P = \mathrm{softmax}(\mathrm{mask}(S)),\qquad o = P v$$
#
# for logits `S` (B, H, T, T), or (H, T, T) when they are shared by the whole
# batch (the `random` Synthesizer), and values `v` (B, H, T, hs). It returns
# `(o, probs)`. We write a Numba version with **the same signature and return
# values**, so it could replace the twin anywhere. For every row i of every
# (b, h), one loop nest does:
#
# 1. the row maximum $m$ over the visible keys $j \le i$ (all $j$ if not causal);
# 2. $e_j = \exp(S_{ij} - m)$ and their sum (subtracting $m$ avoids overflow);
# 3. $p_j = e_j / \sum e$, written to `probs`, and at the same time
#    $o_i \mathrel{+}= p_j v_j$;
# 4. zeros in the masked part of the row, which is never read.
#
# Numba compiles the function on its first call for each combination of
# argument types (here: float32 or float64 arrays). The jitted inner function
# works on plain arrays; a small Python wrapper does the reshaping and the
# allocation, like the library's kernels do. The options are the library's
# own (`kernels.FASTMATH_FLAGS`, `error_model="numpy"`; section 4 explains
# them). `numba.prange` marks the loop over (b, h) pairs as one whose
# iterations are independent (section 5); in a function compiled without
# `parallel=True` it is an ordinary `range`.


# %%
@numba.njit(fastmath=kernels.FASTMATH_FLAGS, error_model="numpy")
def fused_attention_rows(S, shared, causal, v, probs, o):
    """probs[b,h] = softmax(mask(S[b or 0, h])) and o[b,h] = probs[b,h] @ v[b,h], in place.

    S (B|1, H, T, T) logits; v (B, H, T, hs); probs (B, H, T, T) and o (B, H, T, hs) outputs.
    """
    B, H, T, hs = v.shape
    for bh in numba.prange(B * H):  # iteration bh writes probs[b, h] and o[b, h] only
        b = bh // H
        h = bh % H
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
            for c in range(hs):
                o[b, h, i, c] = 0.0
            for j in range(end):
                p = probs[b, h, i, j] * inv
                probs[b, h, i, j] = p
                for c in range(hs):  # the inner loop runs along contiguous memory
                    o[b, h, i, c] += p * v[b, h, j, c]
            for j in range(end, T):
                probs[b, h, i, j] = 0.0  # masked: exactly zero, as in the twin


def my_attention_core_forward(S, v, causal):
    """Same signature and results as minisynth.layers.attention_core_forward.

    S (B,H,T,T) or shared (H,T,T); v (B,H,T,hs). Returns o (B,H,T,hs), probs (B,H,T,T).
    """
    B, H, T, hs = v.shape
    shared = S.ndim == 3
    S4 = np.ascontiguousarray(S).reshape((1,) + S.shape if shared else S.shape)  # (1|B,H,T,T)
    probs = np.empty((B, H, T, T), dtype=v.dtype)  # (B,H,T,T)
    o = np.empty((B, H, T, hs), dtype=v.dtype)  # (B,H,T,hs)
    fused_attention_rows(S4, shared, bool(causal), np.ascontiguousarray(v), probs, o)
    return o, probs


Bk, Hk, Tk, hsk = (2, 2, 6, 4) if TINY else (BATCH, config.n_heads, config.max_len, 16)
for dtype in (np.float32, np.float64):
    S_demo = rng.standard_normal((Bk, Hk, Tk, Tk)).astype(dtype)
    v_demo = rng.standard_normal((Bk, Hk, Tk, hsk)).astype(dtype)
    t0 = time.perf_counter()
    my_attention_core_forward(S_demo, v_demo, True)
    print(f"first call, {np.dtype(dtype).name}: {time.perf_counter() - t0:.2f} s (compilation)")

# %% [markdown]
# The first call of each dtype takes about a second: that is Numba compiling
# (type inference, then LLVM). Later calls with the same types reuse the
# machine code. The library's kernels are compiled with `cache=True`, so their
# machine code is also written to disk and the next Python process only loads
# it; a function defined in a notebook cannot be cached that way, which is why
# ours leaves it out.
#
# ## 3. Check against the twin, and the library's kernels against theirs
#
# A kernel is only useful if it computes the same thing. We compare with
# `rel_error` (the relative error $\|a-b\| / (\|a\| + \|b\|)$ of
# `minisynth.gradcheck`) in both dtypes, for causal and full rows, with
# per-example and with shared logits. In float64 agreement to ~1e-16 means the
# same numbers up to the order of the additions; in float32 the expected level
# is ~1e-7 (the kernel sums in float64, NumPy in float32).

# %%
twin_checks = {}
for dtype in (np.float32, np.float64):
    for causal in (True, False):
        for shared in (False, True):
            S_shape = (Hk, Tk, Tk) if shared else (Bk, Hk, Tk, Tk)
            S_demo = rng.standard_normal(S_shape).astype(dtype)
            v_demo = rng.standard_normal((Bk, Hk, Tk, hsk)).astype(dtype)
            o_ours, p_ours = my_attention_core_forward(S_demo, v_demo, causal)
            o_twin, p_twin = layers.attention_core_forward(S_demo, v_demo, causal)
            err = max(rel_error(o_ours, o_twin), rel_error(p_ours, p_twin))
            twin_checks[(np.dtype(dtype).name, causal, shared)] = err
            print(
                f"{np.dtype(dtype).name} causal={causal!s:5} shared={shared!s:5}: "
                f"rel_error vs twin {err:.1e}"
            )
            assert err < (1e-6 if dtype == np.float32 else 1e-13)
            if causal:  # the future gets exactly zero weight, as in the twin
                assert not np.triu(p_ours, 1).any()

# %% [markdown]
# The library's kernels pass the same kind of test in `tests/test_kernels.py`;
# here is a quick version for every kernel that a training step uses, each
# against its twin in `minisynth.layers`, on random float32 and float64 inputs
# shaped like those of our model. Backward kernels get the cache made by the
# *twin's* forward, so that each comparison tests one function.

# %%
V = config.vocab_size


def op_cases(dtype, B, H, T, hs, C):
    """(name, arguments) for each kernel of a training step, on random inputs of ``dtype``:
    N = B T rows of width C (hidden 4C, V logits) and attention maps (B, H, T, T)."""
    f = np.dtype(dtype).type
    N = B * T
    xr = rng.uniform(-2, 2, (N, C)).astype(f)  # (N, C)
    g, b = rng.uniform(-2, 2, C).astype(f), rng.uniform(-2, 2, C).astype(f)  # (C,)
    dxr = rng.standard_normal((N, C)).astype(f)  # (N, C)
    _, ln_cache = layers.layernorm_forward(xr, g, b)
    h = rng.uniform(-3, 3, (N, 4 * C)).astype(f)  # (N, 4C)
    dh = rng.standard_normal((N, 4 * C)).astype(f)  # (N, 4C)
    _, gelu_cache = layers.gelu_forward(h)
    logits = rng.uniform(-3, 3, (N, V)).astype(f)  # (N, V)
    targets = rng.integers(0, V, N)  # (N,)
    _, ce_cache = layers.cross_entropy_forward(logits, targets)
    _, emb_cache = layers.embedding_forward(targets, rng.standard_normal((V, C)).astype(f))
    S4 = rng.standard_normal((B, H, T, T)).astype(f)  # (B,H,T,T)
    va = rng.standard_normal((B, H, T, hs)).astype(f)  # (B,H,T,hs)
    do = rng.standard_normal((B, H, T, hs)).astype(f)  # (B,H,T,hs)
    _, probs = layers.attention_core_forward(S4, va, True)
    return [
        ("layernorm_forward", (xr, g, b)),
        ("layernorm_backward", (dxr, ln_cache)),
        ("gelu_forward", (h,)),
        ("gelu_backward", (dh, gelu_cache)),
        ("cross_entropy_forward", (logits, targets)),
        ("cross_entropy_backward", (1.0, ce_cache)),
        ("embedding_backward", (dxr, emb_cache)),
        ("attention_core_forward", (S4, va, True)),
        ("attention_core_backward", (do, probs, va, False)),
    ]


def float_arrays(result):
    """The float arrays inside a result: arrays, NumPy scalars, tuples and NamedTuple caches."""
    if isinstance(result, (np.ndarray, np.floating)):
        return [np.asarray(result)] if np.asarray(result).dtype.kind == "f" else []
    if isinstance(result, tuple):
        return [a for item in result for a in float_arrays(item)]
    return []


library_checks = {}
for dtype in (np.float32, np.float64):
    for name, args in op_cases(dtype, Bk, Hk, Tk, hsk, 8 if TINY else config.d_model):
        ours = float_arrays(getattr(kernels, name)(*args))
        twin = float_arrays(getattr(layers, name)(*args))
        err = max(rel_error(a, b) for a, b in zip(ours, twin, strict=True))
        library_checks[(name, np.dtype(dtype).name)] = err
names = list(dict.fromkeys(name for name, _ in library_checks))
print(f"{'kernel vs twin: rel_error':28s}{'float32':>10s}{'float64':>10s}")
for name in names:
    e32, e64 = library_checks[(name, "float32")], library_checks[(name, "float64")]
    print(f"{name:28s}{e32:10.1e}{e64:10.1e}")
assert max(e for (_, dt), e in library_checks.items() if dt == "float32") < 1e-5
assert max(e for (_, dt), e in library_checks.items() if dt == "float64") < 1e-12

# %% [markdown]
# Agreeing with the twin is not yet proof of a correct *gradient*: both could
# share a mistake. The library's backward `kernels.attention_core_backward(do,
# probs, v, shared)` returns `(dS, dv)`, the gradients of $\sum o \odot do$ with
# respect to the logits and the values. We check it against finite differences
# of **our** forward kernel, in float64 (`numerical_gradient_array` perturbs
# each entry of `S` or `v` in place and re-runs the forward, five-point rule).
# So three implementations meet: our forward, the library's backward, and
# numerical differentiation. With shared logits, dS must be summed over the
# batch, which the kernel does when `shared=True`.

# %%
Bg, Hg, Tg, hsg = (2, 2, 4, 3) if TINY else (2, 2, 7, 4)
grad_checks = {}
for shared in (False, True):
    S_g = rng.standard_normal((Hg, Tg, Tg) if shared else (Bg, Hg, Tg, Tg))  # float64
    v_g = rng.standard_normal((Bg, Hg, Tg, hsg))  # (B,H,T,hs)
    do_g = rng.standard_normal((Bg, Hg, Tg, hsg))  # (B,H,T,hs) random upstream gradient
    _, probs_g = my_attention_core_forward(S_g, v_g, True)
    dS, dv = kernels.attention_core_backward(do_g, probs_g, v_g, shared)

    def outputs(S=S_g, v=v_g):  # reads the arrays that numerical_gradient_array perturbs
        return my_attention_core_forward(S, v, True)[0]

    dS_num = numerical_gradient_array(outputs, S_g, do_g)  # (H|B,H,T,T) as S_g
    dv_num = numerical_gradient_array(outputs, v_g, do_g)  # (B,H,T,hs)
    grad_checks[f"dS, shared={shared}"] = rel_error(dS, dS_num)
    grad_checks[f"dv, shared={shared}"] = rel_error(dv, dv_num)
    masked_grad = np.triu(dS, 1)  # gradient of logits the softmax never saw
    print(f"shared={shared}: masked dS entries are exactly 0: {not masked_grad.any()}")
for key, err in grad_checks.items():
    print(f"kernels.attention_core_backward {key:16s} vs finite differences: {err:.1e}")
assert max(grad_checks.values()) < 1e-8

# %% [markdown]
# ## 4. fastmath, and why `nnan` and `ninf` are left out
#
# IEEE floating point forbids a compiler from many rewrites that are true in
# real arithmetic: $(a + b) + c$ may differ from $a + (b + c)$, so a loop
# `total += x[i]` must add in order, one element at a time, and cannot use
# SIMD lanes that each hold a partial sum. `fastmath` lifts such rules. Numba's
# `fastmath=True` turns on all of LLVM's flags:
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
# The last two are promises, not hints: if the program breaks them, the result
# is undefined and LLVM may, for example, delete a comparison with infinity as
# "always false". But masked attention logits are exactly $-\infty$: the
# library's masked softmax writes $-\infty$ into the masked half and relies on
# $\exp(-\infty) = 0$, and a maximum over a row often starts from $-\infty$.
# So minisynth passes an explicit set, `kernels.FASTMATH_FLAGS`, without
# `nnan` and `ninf`.
#
# Two tiny functions make this concrete: counting the masked entries of a row,
# and asking whether a row contains an infinity. We compile each twice, with
# the library's flags and with `fastmath=True`.


# %%
def count_masked(row):
    """How many entries of ``row`` are -inf (masked logits)."""
    n = 0
    for j in range(row.shape[0]):
        if row[j] == -np.inf:
            n += 1
    return n


def has_inf(row):
    for j in range(row.shape[0]):
        if np.isinf(row[j]):
            return True
    return False


print("library flags:", sorted(kernels.FASTMATH_FLAGS), "| JIT_OPTS:", kernels.JIT_OPTS)
masked_row = np.array([0.3, 1.2, -np.inf, -np.inf, -np.inf])  # a causal row i = 1 of T = 5
fastmath_demo = {}
for label, flags in (("FASTMATH_FLAGS", kernels.FASTMATH_FLAGS), ("fastmath=True", True)):
    fastmath_demo[label] = (
        numba.njit(fastmath=flags)(count_masked)(masked_row),
        numba.njit(fastmath=flags)(has_inf)(masked_row),
    )
    n_masked, found_inf = fastmath_demo[label]
    print(f"{label:15s}: count_masked = {n_masked}, has_inf = {found_inf}")
assert fastmath_demo["FASTMATH_FLAGS"] == (3, True)

# %% [markdown]
# With `fastmath=True` the compiled code typically reports 0 masked entries and
# no infinity (the exact outcome depends on the LLVM version: undefined
# behaviour makes no promise either way). A bug like this would not crash; it
# would silently let a causal model see the future, or divide by zero
# somewhere far away.
#
# What the safe flags buy: `reassoc` lets LLVM vectorise a reduction. A plain
# loop summing a float64 array, compiled without fastmath and with the
# library's flags:


# %%
def loop_sum(a):
    total = 0.0
    for i in range(a.shape[0]):
        total += a[i]
    return total


big = rng.standard_normal(50_000 if TINY else 2_000_000)
strict_sum = numba.njit(loop_sum)
flagged_sum = numba.njit(fastmath=kernels.FASTMATH_FLAGS)(loop_sum)
sum_ms = {
    "strict IEEE": median_ms(lambda: strict_sum(big)),
    "FASTMATH_FLAGS": median_ms(lambda: flagged_sum(big)),
}
print({k: f"{v:.3f} ms" for k, v in sum_ms.items()})
difference = abs(strict_sum(big) - flagged_sum(big))
print(f"the two sums differ by {difference:.1e} (another order of additions)")

# %% [markdown]
# Several times faster, and a slightly different last digit: the regrouped sum
# is neither more nor less accurate, only different. This is why the kernels
# accumulate in float64 and why the tests compare kernels with twins to a
# tolerance, not bit for bit.
#
# ## 5. prange: a parallel loop runs only over what one iteration writes
#
# Compiled with `parallel=True`, a `numba.prange` loop is split into chunks
# that run on several threads at once. That is only correct if no two
# iterations write the same memory. Every prange loop in `minisynth.fast.kernels`
# (and ours above: iteration `bh` writes `probs[b, h]` and `o[b, h]`, nothing
# else) follows that rule, so that the kernels stay correct if they are ever
# compiled in parallel.
#
# The classic way to break it is a reduction across the loop index into a
# shared array, such as the column sums of a layer-norm backward
# ($dg = \sum_{\text{rows}} dout \odot \hat x$). Below, `column_sums_racy`
# parallelises over rows and does `out[j] += x[i, j]`: two threads read the
# same `out[j]`, add to it, and write it back, and one of the two additions is
# lost. (Numba recognises `total += ...` on a scalar, or on a whole array, in
# a prange loop as a reduction and handles it; an update of one *element*,
# `out[j] += ...`, it cannot.)
# `column_sums_blocks` is the library's pattern: iteration k sums its own block
# of `ROW_BLOCK` rows into its own row of a partial-sums array, and the blocks
# are added up afterwards, serially and in a fixed order, so the result does
# not even depend on the number of threads.
#
# Compiling with `parallel=True` takes a few seconds.


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
expected = ones.sum(axis=0)
runs = 10
wrong_racy = sum(not np.array_equal(column_sums_racy(ones), expected) for _ in range(runs))
wrong_blocks = sum(
    not np.array_equal(column_sums_blocks(ones, kernels.ROW_BLOCK), expected) for _ in range(runs)
)
print(f"{numba.get_num_threads()} threads; one racy result: {column_sums_racy(ones)}")
print(f"wrong results in {runs} runs: racy {wrong_racy}, blocks {wrong_blocks}")
assert wrong_blocks == 0

# %% [markdown]
# How often the racy version is wrong depends on the machine and its load
# (with one thread, or when the threads happen not to overlap, it is right);
# that is what makes such bugs dangerous. The block version is right every
# time.
#
# Yet no kernel of minisynth is compiled with `parallel=True`: in a training
# step every kernel follows a BLAS matrix product whose worker thread keeps
# spinning on the other core for a while, and a Numba parallel region then
# waits for it. Instead, the kernels are serial and compiled with `nogil=True`,
# and `minisynth.fast.threads` splits the *batch*: each thread runs the whole
# forward and backward on its shard, with OpenBLAS single-threaded, so no
# thread pool spins against another. Measure before you parallelise.
#
# ## 6. Measure
#
# Our fused forward from section 2 against the reference and the library's
# kernel, on float32 inputs shaped like a training step of our model (attention
# maps (B, H, T, T), hs = C / H), median of `REPEAT` runs. (Tiny arrays mostly
# measure Python overhead.)

# %%
Bt, Ht, Tt, Ct = BATCH, config.n_heads, config.max_len, config.d_model
St, vt, _ = dict(op_cases(np.float32, Bt, Ht, Tt, Ct // Ht, Ct))["attention_core_forward"]
core_ms = {
    "reference (layers)": median_ms(lambda: layers.attention_core_forward(St, vt, True)),
    "library kernel": median_ms(lambda: kernels.attention_core_forward(St, vt, True)),
    "ours (section 2)": median_ms(lambda: my_attention_core_forward(St, vt, True)),
}
for name, ms in core_ms.items():
    print(f"attention_core_forward, {name:20s} {ms:8.3f} ms")
fastest = min(core_ms, key=core_ms.get)
print(f"fastest here: {fastest}")

# %% [markdown]
# Look at which one is fastest: at the full size, our fully fused forward is
# usually *not* it. The reason is `exp`: Numba (without Intel's SVML library)
# calls the C library's scalar `exp` once per element, while NumPy's `np.exp` is
# a SIMD loop, several times faster per element. And our fused loop computes
# `P @ v` with an innermost loop over only hs numbers, while BLAS runs the
# product on the full square far faster. So the library's exp-heavy kernels
# (attention core, GELU, cross-entropy) are split in three: a jitted pass writes
# the shifted logits into a fresh buffer, `np.exp(buf, out=buf)` exponentiates
# it in place, and a second jitted pass finishes the job (for attention: divides
# by the row sums); the products stay on BLAS. The module docstring of
# `minisynth.fast.kernels` tells the story. "Compiled" does not mean "faster":
# measure each step.
#
# The measurement harness lives in `benchmarks/`, not here:
#
# * `python benchmarks/bench_kernels.py`: every kernel against its reference at
#   training size (speed-up, first-call compile time, largest difference);
# * `python benchmarks/bench_train.py`: a whole training step on the reference,
#   on the fast path and in PyTorch, side by side; `--malloc default` shows how
#   much of the difference is glibc's allocator (the fast path's
#   `minisynth.fast.allocator` keeps freed memory for reuse instead of
#   page-faulting it back in every step); results in `BENCHMARKS.md`.
#
# A kernel's speed-up in isolation is not the speed-up of a program: a training
# step is mostly matrix products, the same BLAS calls on both paths, and a
# benchmark measures its whole environment, the allocator and BLAS's threads
# included.
