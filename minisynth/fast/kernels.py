"""Numba kernels: drop-in twins of reference functions of the NumPy layers.

Each function in :data:`TWINS` has the signature and the return types (the same
NamedTuple caches) of the reference function it replaces, named by its
``reference`` attribute (:mod:`minisynth.layers`; ``adamw_update``:
:mod:`minisynth.optim`); :mod:`minisynth.fast.ops` hands them to the models built
with ``backend="numba"``. Like their
references, they trust their callers (the public entry points check inputs),
except that ids and targets are bounds-checked, since compiled code would
otherwise read or write out of bounds. A public function is a thin Python
wrapper: it views the data as a C-contiguous 2-D ``(N, C)`` (or flat) array and
calls a jitted inner function that does the arithmetic. ``tests/test_kernels.py``
holds each kernel to its reference.

Conventions
-----------
* Arithmetic runs in the input dtype (float32 or float64). Row reductions (mean,
  variance, log-sum-exp, the loss) and column sums (``dg``, ``db``) accumulate in
  float64, so results agree with the twins to the rounding of the dtype.
* All jit options live in :data:`JIT_OPTS`. fastmath is an explicit flag set
  without ``nnan`` / ``ninf``: masked logits are ``-inf`` and must stay ``-inf``
  (``exp(-inf) = 0``).
* The kernels are serial and ``nogil``: :mod:`minisynth.fast.threads` runs whole
  shards of a batch in parallel threads, so a kernel never splits itself.
  Their ``prange`` loops run only over the index that one iteration writes (a
  row, a block of rows, an element); no prange body does ``+=`` into an array
  shared between iterations, so they stay correct if compiled in parallel.
  Column sums over rows are formed as partial sums of fixed-size row blocks,
  added up in block order.
* Backward functions are pure: they never write into ``dout`` or the cache and
  return freshly allocated arrays.
* exp: Numba (without Intel's SVML library) calls the scalar libm ``exp`` for
  every element, while NumPy's ``np.exp`` ufunc is SIMD and several times faster.
  So the exp-heavy kernels (GELU, softmax / cross-entropy) run as a jitted pass
  that writes the exponent into a fresh buffer, ``np.exp`` in place on it, and a
  jitted pass that finishes the job in the same buffer.
* If a kernel fails to compile, its wrapper tells :mod:`minisynth.backend`
  (one RuntimeWarning; from then on every kernel calls its reference) and returns the
  reference's result.

Shape letters are those of :mod:`minisynth.layers`; ``P`` is the number of
elements of one parameter array.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numba import jit, prange
from numba.core.errors import NumbaError

from .. import backend, layers, optim
from .._validate import check_int_array
from ..layers import (
    GELU_CUBIC,
    GELU_SCALE,
    LAYERNORM_EPS,
    AttentionCoreCache,
    CrossEntropyCache,
    GeluCache,
    LayerNormCache,
)
from .causal import causal_outer, causal_product

__all__ = [
    "layernorm_forward",
    "layernorm_backward",
    "gelu_forward",
    "gelu_backward",
    "cross_entropy_forward",
    "cross_entropy_backward",
    "embedding_backward",
    "adamw_update",
    "attention_core_forward",
    "attention_core_backward",
]

# ------------------------------------------------------------------- jit options
# The one place for jit options. fastmath flags, spelled out because
# fastmath set to True would add nnan/ninf, under which LLVM may assume no -inf exists
# and break masked logits:
#   nsz      ignore the sign of zero          arcp   x / y may become x * (1 / y)
#   contract a * b + c may fuse into an FMA   afn    approximate libm functions allowed
#   reassoc  any float expression may be regrouped: lets LLVM vectorise row sums,
#            but also regroups products, so intermediates must stay far from
#            overflow even when regrouped (see the GELU clamp)
FASTMATH_FLAGS = {"nsz", "arcp", "contract", "afn", "reassoc"}  # a set: Numba rejects frozenset
# error_model="numpy": x / 0 gives inf/nan as in NumPy instead of a Python
# ZeroDivisionError, which also keeps the division checks out of inner loops.
# nogil: minisynth.fast.threads runs shards of a batch in several Python threads at once.
JIT_OPTS = dict(nopython=True, nogil=True, cache=True, error_model="numpy", fastmath=FASTMATH_FLAGS)

# Bytes of work a multi-pass kernel keeps in cache between its passes (half an L2 of
# the development machine's 2 MiB: room for the inputs too).
CACHE_BYTES = 1 << 20

# Rows per block of the dg/db partial sums (layer norm backward).
ROW_BLOCK = 64


# ---------------------------------------------------------------------- helpers
def _falls_back_to(reference):
    """Decorate a kernel wrapper: if Numba fails to compile, warn once and use ``reference``.

    Compilation happens on the first call for each dtype, so a broken Numba /
    LLVM shows up here as a ``NumbaError``. The wrapper reports it to
    :func:`minisynth.backend.report_numba_problem` (one RuntimeWarning for the
    process; ``"numba"`` gives the reference from then on) and every kernel
    simply calls its reference. Input-check errors (TypeError / ValueError) are not NumbaErrors and
    propagate unchanged. ``functools.wraps`` keeps the kernel's name, docstring
    and signature.
    """

    def decorate(kernel):
        @functools.wraps(kernel)
        def wrapper(*args, **kwargs):
            if backend.numba_problem() is None:
                try:
                    return kernel(*args, **kwargs)
                except NumbaError as err:
                    first_line = str(err).strip().split("\n", 1)[0]  # Numba errors are long
                    backend.report_numba_problem(
                        f"the Numba kernel {kernel.__name__} failed to compile "
                        f"({type(err).__name__}: {first_line})"
                    )
            return reference(*args, **kwargs)

        wrapper.reference = reference  # the NumPy twin, for tests and benchmarks
        return wrapper

    return decorate


def _rows(a, C):
    """View ``a`` (..., C) as a C-contiguous (N, C) array; copies only if ``a`` is strided."""
    N = math.prod(a.shape[:-1])  # explicit N: reshape(-1, C) fails when C == 0
    return np.ascontiguousarray(a.reshape(N, C))  # (N, C)


def _flat(a):
    """View ``a`` (...) as a C-contiguous 1-D array; copies only if ``a`` is strided."""
    return np.ascontiguousarray(a.reshape(-1))  # (size,)


def _like_twin(out, shape):
    """Give ``out`` the twin's shape; a 0-d result becomes a NumPy scalar, as NumPy returns."""
    out = out.reshape(shape)  # (...)
    return out[()] if out.ndim == 0 else out


# ------------------------------------------------------------------- layer norm
@jit(**JIT_OPTS)
def _layernorm_forward_rows(x, g, b, eps, out, xhat, rstd):
    """Layer norm of each row of x (N, C) into out (N, C), xhat (N, C), rstd (N,)."""
    N, C = x.shape
    for i in prange(N):  # each iteration writes row i only
        s = 0.0  # float64 accumulator
        for j in range(C):
            s += x[i, j]
        mean = s / C
        ss = 0.0
        for j in range(C):
            d = x[i, j] - mean  # two passes (centre, then square), as the twin
            ss += d * d
        rstd[i] = 1.0 / np.sqrt(ss / C + eps)  # rounded to the dtype on store
        mu = x.dtype.type(mean)  # the row statistics in the dtype, so the
        r = rstd[i]  # elementwise loop below stays in the dtype
        for j in range(C):
            xh = (x[i, j] - mu) * r
            xhat[i, j] = xh
            out[i, j] = xh * g[j] + b[j]


@jit(**JIT_OPTS)
def _layernorm_backward_rows(dout, xhat, rstd, g, dx, dg_part, db_part):
    """Layer norm backward on rows (N, C) into dx (N, C), and the float64 partial sums of
    dg and db over each block of ROW_BLOCK rows into dg_part, db_part (n_blocks, C)."""
    N, C = dout.shape
    n_blocks = dg_part.shape[0]
    for k in prange(n_blocks):  # each iteration writes rows k*ROW_BLOCK.. of dx, row k of parts
        dg_acc = np.zeros(C)  # (C,) private to this block
        db_acc = np.zeros(C)  # (C,)
        for i in range(k * ROW_BLOCK, min(N, (k + 1) * ROW_BLOCK)):
            # out = xhat * g + b
            s1 = 0.0  # sum_j dxhat_j, float64
            s2 = 0.0  # sum_j dxhat_j * xhat_j, float64
            for j in range(C):
                dxh = dout[i, j] * g[j]
                s1 += dxh
                s2 += dxh * xhat[i, j]
                dg_acc[j] += dout[i, j] * xhat[i, j]
                db_acc[j] += dout[i, j]
            # xhat = (x - mean) * rstd:  dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat))
            m1 = dout.dtype.type(s1 / C)
            m2 = dout.dtype.type(s2 / C)
            r = rstd[i]
            for j in range(C):
                dx[i, j] = r * (dout[i, j] * g[j] - m1 - xhat[i, j] * m2)
        dg_part[k] = dg_acc
        db_part[k] = db_acc


@_falls_back_to(layers.layernorm_forward)
def layernorm_forward(x, g, b, eps=LAYERNORM_EPS):
    """out = (x - mean) / sqrt(var + eps) * g + b over the last axis (biased variance).

    Twin of :func:`minisynth.layers.layernorm_forward`; returns ``(out, LayerNormCache)``.
    """
    C = g.shape[0]
    x2, g, b, eps = _rows(x, C), np.ascontiguousarray(g), np.ascontiguousarray(b), float(eps)
    N = x2.shape[0]
    out = np.empty_like(x2)  # (N, C)
    xhat = np.empty_like(x2)  # (N, C)
    rstd = np.empty(N, dtype=x2.dtype)  # (N,)
    _layernorm_forward_rows(x2, g, b, eps, out, xhat, rstd)
    cache = LayerNormCache(
        xhat.reshape(x.shape),  # (..., C)
        rstd.reshape(x.shape[:-1] + (1,)),  # (..., 1)
        g,  # (C,) the caller's array, as the twin stores it
    )
    return out.reshape(x.shape), cache  # (..., C)


@_falls_back_to(layers.layernorm_backward)
def layernorm_backward(dout, cache):
    """Returns (dx, dg, db). Twin of :func:`minisynth.layers.layernorm_backward`."""
    xhat, rstd, g = cache
    C = g.shape[0]
    dout2, xhat2, rstd1, g = _rows(dout, C), _rows(xhat, C), _flat(rstd), np.ascontiguousarray(g)
    N = dout2.shape[0]
    dx = np.empty_like(dout2)  # (N, C)
    n_blocks = (N + ROW_BLOCK - 1) // ROW_BLOCK
    dg_part = np.empty((n_blocks, C))  # (n_blocks, C) float64 partial sums, one row per block
    db_part = np.empty((n_blocks, C))  # (n_blocks, C)
    _layernorm_backward_rows(dout2, xhat2, rstd1, g, dx, dg_part, db_part)
    # summed over blocks in block order: deterministic
    dg = dg_part.sum(axis=0).astype(dout.dtype)  # (C,)
    db = db_part.sum(axis=0).astype(dout.dtype)  # (C,)
    return dx.reshape(dout.shape), dg, db  # (..., C), (C,), (C,)


# ------------------------------------------------------------------------- GELU
# GELU via a sigmoid: 0.5 (1 + tanh(u)) = 1 / (1 + exp(-2u)) = s, and
# 0.5 (1 - tanh(u)^2) = 2 s (1 - s) = 2 e s^2 with e = exp(-2u). The same function
# as the twin with one exp instead of a tanh, and no cancellation in 1 + tanh(u)
# or 1 - tanh(u)^2. The exp runs as NumPy's SIMD ufunc between two jitted passes
# (see "exp" in the module docstring).
# Below u_min, tanh(u) rounds to exactly -1 in the dtype, so the twin's 1 + t is 0:
# there s = 0 too (same result, sign of zero included), and u is clamped so that
# exp(-2u) stays small (e s s could otherwise overflow in a reassociated product).


def _gelu_u_min(dtype):
    """u below which tanh(u) == -1 in ``dtype``: 1 + tanh(u) ~ 2 exp(2u) < eps / 8."""
    return dtype.type(0.5 * math.log(np.finfo(dtype).eps / 16.0))


@jit(**JIT_OPTS)
def _gelu_exp_arg(x, u_min, arg):
    """First pass: -2u of each element (u clamped at u_min) into ``arg`` (size,), to be exp'ed."""
    # constants in the dtype: a float64 constant would promote float32 math to float64
    scale = x.dtype.type(GELU_SCALE)
    cubic = x.dtype.type(GELU_CUBIC)
    minus_two = x.dtype.type(-2.0)
    for i in prange(x.shape[0]):  # each iteration writes element i only
        xi = x[i]
        u = scale * (xi + cubic * (xi * xi * xi))
        if u < u_min:  # a comparison, not max(): NaN propagates
            u = u_min
        arg[i] = minus_two * u


@jit(**JIT_OPTS)
def _gelu_forward_finish(x, e, u_min):
    """Second pass: out = x s with s = 1 / (1 + e); overwrites ``e`` (size,) with out."""
    scale = x.dtype.type(GELU_SCALE)
    cubic = x.dtype.type(GELU_CUBIC)
    one = x.dtype.type(1.0)
    zero = x.dtype.type(0.0)
    for i in prange(x.shape[0]):
        xi = x[i]
        u = scale * (xi + cubic * (xi * xi * xi))  # recomputed: cheaper than storing a flag
        s = one / (one + e[i])  # 0.5 (1 + tanh(u))
        if u < u_min:
            s = zero
        e[i] = xi * s  # out = 0.5 x (1 + tanh(u))
    return e


@jit(**JIT_OPTS)
def _gelu_backward_finish(dout, x, e, u_min):
    """Second pass of the backward: overwrites ``e`` (size,) with dx."""
    scale = x.dtype.type(GELU_SCALE)
    cubic = x.dtype.type(GELU_CUBIC)
    cubic3 = x.dtype.type(3.0 * GELU_CUBIC)
    one = x.dtype.type(1.0)
    two = x.dtype.type(2.0)
    zero = x.dtype.type(0.0)
    for i in prange(x.shape[0]):
        xi = x[i]
        u = scale * (xi + cubic * (xi * xi * xi))
        s = one / (one + e[i])  # 0.5 (1 + t)
        es = e[i] * s  # 1 - s
        if u < u_min:
            s = zero
            es = zero
        # out = 0.5 x (1 + t),  dt/dx = (1 - t^2) * sqrt(2/pi) * (1 + 3 * 0.044715 x^2)
        dudx = scale * (one + cubic3 * (xi * xi))
        e[i] = dout[i] * (s + two * xi * (es * s) * dudx)  # 0.5 x (1 - t^2) = 2 x e s^2
    return e


@_falls_back_to(layers.gelu_forward)
def gelu_forward(x):
    """GPT-2's tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).

    Twin of :func:`minisynth.layers.gelu_forward`; returns ``(out, GeluCache)``.
    """
    xf = _flat(x)  # (size,)
    u_min = _gelu_u_min(x.dtype)
    out = np.empty_like(xf)  # (size,)
    _gelu_exp_arg(xf, u_min, out)  # -2u
    np.exp(out, out=out)  # exp(-2u), SIMD
    _gelu_forward_finish(xf, out, u_min)  # out, in the same buffer
    return _like_twin(out, x.shape), GeluCache(x)  # (...)


@_falls_back_to(layers.gelu_backward)
def gelu_backward(dout, cache):
    """Returns dx. Twin of :func:`minisynth.layers.gelu_backward`."""
    (x,) = cache
    xf = _flat(x)  # (size,)
    doutf = _flat(dout)  # (size,)
    u_min = _gelu_u_min(x.dtype)
    dx = np.empty_like(xf)  # (size,) a fresh buffer: dout and the cache stay untouched
    _gelu_exp_arg(xf, u_min, dx)  # -2u
    np.exp(dx, out=dx)  # exp(-2u), SIMD
    _gelu_backward_finish(doutf, xf, dx, u_min)  # dx, in the same buffer
    return _like_twin(dx, x.shape)  # (...)


# ---------------------------------------------------------------- cross-entropy
@jit(**JIT_OPTS)
def _softmax_shift(z, t):
    """First pass: z - rowmax into a new (N, V) buffer (exp'ed in place next), and
    the shifted target logit z[t] - rowmax of each row (N,)."""
    N, V = z.shape
    shifted = np.empty_like(z)  # (N, V)
    zt = np.empty(N, dtype=z.dtype)  # (N,)
    for i in prange(N):  # each iteration writes row i only
        zmax = z[i, 0]
        for j in range(1, V):
            zmax = max(zmax, z[i, j])  # finite unless the whole row is -inf
        for j in range(V):
            shifted[i, j] = z[i, j] - zmax  # -inf stays -inf: exp gives 0
        zt[i] = z[i, t[i]] - zmax
    return shifted, zt


@jit(**JIT_OPTS)
def _softmax_normalise(e, zt):
    """Second pass, in place on e (N, V) = exp(z - rowmax): makes e the probabilities.

    Returns the per-row losses -log p[t] = logsumexp - z[t] (N,) in float64.
    """
    N, V = e.shape
    losses = np.empty(N)  # (N,) float64, averaged by the caller
    for i in prange(N):  # each iteration writes row i only
        s = 0.0  # float64 accumulator
        for j in range(V):
            s += e[i, j]
        inv = e.dtype.type(1.0 / s)
        for j in range(V):
            e[i, j] = e[i, j] * inv  # p = exp(z - max) / sum
        losses[i] = np.log(s) - zt[i]
    return losses


@jit(**JIT_OPTS)
def _cross_entropy_backward_rows(probs, t, scale):
    """dlogits = (probs - onehot(t)) * scale for each row: returns dlogits (N, V)."""
    N, V = probs.shape
    dlogits = np.empty_like(probs)  # (N, V)
    one = probs.dtype.type(1.0)
    for i in prange(N):  # each iteration writes row i only
        for j in range(V):
            dlogits[i, j] = probs[i, j] * scale
        dlogits[i, t[i]] = (probs[i, t[i]] - one) * scale
    return dlogits


def _softmax_rows(logits, targets, V):
    """The three passes of the forward: probabilities (N, V) and per-row losses (N,)."""
    t = _flat(targets).astype(np.intp, copy=False)  # (N,) one integer type: one compilation
    e, zt = _softmax_shift(_rows(logits, V), t)  # (N, V) z - max, (N,) z[t] - max
    np.exp(e, out=e)  # (N, V) SIMD exp, in place
    losses = _softmax_normalise(e, zt)  # (N,) e is now the probabilities
    return e, losses


def _mean_loss(losses, dtype):
    """Mean of the float64 per-row losses, as a NumPy scalar of ``dtype`` (the twin's type)."""
    return dtype.type(losses.sum() / losses.shape[0])


@_falls_back_to(layers.cross_entropy_forward)
def cross_entropy_forward(logits, targets):
    """Mean over all positions of -log softmax(logits)[target]. logits (..., V), targets (...).

    Twin of :func:`minisynth.layers.cross_entropy_forward`; returns
    ``(loss, CrossEntropyCache)`` with ``loss`` a NumPy scalar of the logits' dtype.
    """
    V = logits.shape[-1]
    check_int_array("targets", targets, upper=V)  # compiled code must not read out of bounds
    probs, losses = _softmax_rows(logits, targets, V)  # (N, V), (N,)
    t = targets.reshape(-1)  # (N,) the caller's ids, as the twin caches them
    return _mean_loss(losses, logits.dtype), CrossEntropyCache(probs, t, logits.shape)


@_falls_back_to(layers.cross_entropy_backward)
def cross_entropy_backward(dloss, cache):
    """Returns dlogits (..., V). Twin of :func:`minisynth.layers.cross_entropy_backward`.

    The cached targets are bounds-checked: NumPy indexing would raise on a bad
    target, compiled code would read out of bounds.
    """
    probs, t, shape = cache
    check_int_array("cache.targets", t, upper=probs.shape[-1])
    dloss = float(dloss)
    N = t.size
    scale = probs.dtype.type(dloss / N)  # rounded to the dtype first, as the twin's `*=`
    dlogits = _cross_entropy_backward_rows(
        np.ascontiguousarray(probs), _flat(t).astype(np.intp, copy=False), scale
    )  # (N, V)
    return dlogits.reshape(shape)  # (..., V)


# -------------------------------------------------------------------- embedding
@jit(**JIT_OPTS)
def _embedding_backward_rows(dout, idx, V):
    """Scatter-add dW[idx[n]] += dout[n] over the rows in order: returns dW (V, C).

    Serial on purpose: rows with the same id would race under a prange over
    rows. Per element the additions happen in row order, as ``np.add.at`` does,
    so the result is bit-identical to the twin's; the inner loop over C is
    contiguous and vectorised.
    """
    N, C = dout.shape
    dW = np.zeros((V, C), dtype=dout.dtype)  # (V, C) ids that never occur keep 0
    for n in range(N):
        row = idx[n]
        for c in range(C):
            dW[row, c] += dout[n, c]
    return dW


@_falls_back_to(layers.embedding_backward)
def embedding_backward(dout, cache):
    """Returns dW (V, C): a scatter-add, so repeated ids accumulate their gradients.

    Twin of :func:`minisynth.layers.embedding_backward`. The cached ids are
    bounds-checked: compiled code would write out of bounds.
    """
    idx, V = cache
    check_int_array("cache.idx", idx, upper=V)
    C = dout.shape[-1]
    dW = _embedding_backward_rows(
        _rows(dout, C), _flat(idx).astype(np.intp, copy=False), V
    )  # (V, C)
    return dW


# ------------------------------------------------------------------------ AdamW
@jit(**JIT_OPTS)
def _adamw_flat(p, g, m, v, decay, beta1, one_m_beta1, beta2, one_m_beta2, bias2_sqrt, eps, step):
    """One AdamW step on flat arrays, in place; the scalars arrive in the arrays' dtype.

    Same operation order as the twin (decay, moments, sqrt(v) / sqrt(bias2) + eps,
    step), so float32 results differ from it only by FMA contraction.
    """
    for i in prange(p.shape[0]):  # each iteration writes element i of p, m, v only
        gi = g[i]
        mi = beta1 * m[i] + one_m_beta1 * gi  # m = beta1 m + (1 - beta1) g
        vi = beta2 * v[i] + one_m_beta2 * (gi * gi)  # v = beta2 v + (1 - beta2) g^2
        denom = np.sqrt(vi) / bias2_sqrt + eps  # sqrt(v_hat) + eps
        p[i] = p[i] * decay - step * (mi / denom)  # decoupled decay, then the Adam step
        m[i] = mi
        v[i] = vi


@_falls_back_to(optim.adamw_update)
def adamw_update(p, g, m, v, lr, beta1, beta2, eps, weight_decay, t):
    """One AdamW step for one array: updates ``p``, ``m`` and ``v`` in place; returns None.

    Twin of :func:`minisynth.optim.adamw_update` (torch.optim.AdamW semantics, see
    :mod:`minisynth.optim`). Strided arrays work: they are
    updated through contiguous copies that are written back.
    """
    dt = p.dtype.type  # every scalar rounded to the dtype once, as NumPy does for the twin
    decay = 1.0 - lr * weight_decay  # 1.0 when weight_decay == 0: the twin skips the multiply
    scalars = (
        dt(decay), dt(beta1), dt(1.0 - beta1), dt(beta2), dt(1.0 - beta2),
        dt(math.sqrt(1.0 - beta2**t)), dt(eps), dt(lr / (1.0 - beta1**t)),
    )  # fmt: skip
    in_place = all(a.flags.c_contiguous for a in (p, m, v))
    pf, mf, vf = (_flat(a) for a in (p, m, v))  # (P,) views when contiguous, else copies
    _adamw_flat(pf, _flat(g), mf, vf, *scalars)
    if not in_place:  # strided arrays: the kernel updated copies, write them back
        for a, af in ((p, pf), (m, mf), (v, vf)):
            a[...] = af.reshape(a.shape)  # (...)


# ------------------------------------------------------------- attention core
# probs = softmax(mask(S)); o = probs @ v per (batch, head). The softmax is two
# jitted row passes around NumPy's SIMD exp; the T x T products (P @ v, and dP, dv
# in the backward) stay on BLAS, which outruns scalar loops by far, in causal blocks
# that leave out the zero half. Shared (H,T,T) logits take one softmax per head and
# never materialise B copies.


@jit(**JIT_OPTS)
def _attention_shift_rows(S, causal, z):
    M, T, _ = z.shape
    for m in prange(M):  # each iteration writes map z[m] only
        for i in range(T):
            end = i + 1 if causal else T
            top = -np.inf
            for j in range(end):
                top = max(top, S[m, i, j])
            for j in range(end):
                z[m, i, j] = S[m, i, j] - top
            for j in range(end, T):
                z[m, i, j] = -np.inf  # exp(-inf) = 0: the causal mask


@jit(**JIT_OPTS)
def _attention_normalise_rows(causal, probs):
    M, T, _ = probs.shape
    for m in prange(M):  # each iteration writes map probs[m] only
        for i in range(T):
            end = i + 1 if causal else T  # masked entries are exp(-inf) = 0 already
            total = 0.0
            for j in range(end):
                total += probs[m, i, j]
            inv = 1.0 / total
            for j in range(end):
                probs[m, i, j] *= inv


@_falls_back_to(layers.attention_core_forward)
def attention_core_forward(S, v, causal):
    """Twin of :func:`minisynth.layers.attention_core_forward` (jitted softmax, BLAS P @ v)."""
    B, H, T, hs = v.shape
    causal = bool(causal)
    if S.ndim == 3:  # shared: one (H,T,T) softmax, then the products; nothing to fuse
        probs_h, _ = layers.softmax_forward(S, causal=causal)  # (H,T,T)
        o = causal_product(probs_h, v) if causal else probs_h @ v  # (B,H,T,hs)
        return o, AttentionCoreCache(np.broadcast_to(probs_h, (B, H, T, T)), v, True, causal)
    probs = np.empty((B, H, T, T), dtype=v.dtype)  # (B,H,T,T)
    S_maps = np.ascontiguousarray(S).reshape(B * H, T, T)  # (B*H,T,T) one map per (b, h)
    P_maps = probs.reshape(B * H, T, T)  # (B*H,T,T) a view of probs
    # three passes: shifted logits, NumPy's SIMD exp in place (see the module
    # docstring), then divide by the row sums; a few maps at a time, so the second
    # and third passes find them in cache
    step = max(1, CACHE_BYTES // (T * T * probs.itemsize))
    for a in range(0, B * H, step):
        z = P_maps[a : a + step]
        _attention_shift_rows(S_maps[a : a + step], causal, z)
        np.exp(z, out=z)
        _attention_normalise_rows(causal, z)
    o = causal_product(probs, v) if causal else probs @ v  # (B,H,T,hs)
    return o, AttentionCoreCache(probs, v, False, causal)


@jit(**JIT_OPTS)
def _softmax_backward_rows(probs, dS, causal):
    M, T, _ = probs.shape
    for m in prange(M):  # each iteration writes map dS[m] only
        for i in range(T):
            # P = softmax(S):  dS[i,j] = P[i,j] (dP[i,j] - sum_k P[i,k] dP[i,k]); dS holds dP.
            # Causal: P = 0 for j > i, so dS = 0 there, and dP there is never read (it
            # may be unset: causal_outer leaves out the blocks above the diagonal).
            end = i + 1 if causal else T
            dot = 0.0
            for j in range(end):
                dot += probs[m, i, j] * dS[m, i, j]
            for j in range(end):
                dS[m, i, j] = probs[m, i, j] * (dS[m, i, j] - dot)
            for j in range(end, T):
                dS[m, i, j] = 0.0


@_falls_back_to(layers.attention_core_backward)
def attention_core_backward(do, cache):
    """Twin of :func:`minisynth.layers.attention_core_backward` (BLAS dP, dv; jitted softmax).

    Shared logits: the batch sum of dP is one product per head, the batch folded
    into the columns. Causal maps: the products leave out the blocks above the
    diagonal, where P and dS are zero.
    """
    probs, v, shared, causal = cache
    B, H, T, hs = v.shape
    if shared:  # one (H,T,T) map: dP = sum_b do[b] v[b]^T, the batch folded into the columns
        P = np.ascontiguousarray(probs[0])  # (H,T,T)
        do_rows = do.transpose(1, 2, 0, 3).reshape(H, T, B * hs)  # (H,T,B*hs)
        v_rows = v.transpose(1, 2, 0, 3).reshape(H, T, B * hs)  # (H,T,B*hs)
    else:
        P, do_rows, v_rows = np.ascontiguousarray(probs), do, v  # (B,H,T,T), (B,H,T,hs) x2
    # o = P @ v
    if causal:  # P is zero above the diagonal: leave those blocks out
        dS = causal_outer(do_rows, v_rows)  # dP for now: fresh, made dS in place
        dv = causal_product(P, do, transpose=True)  # (B,H,T,hs)
    else:
        dS = do_rows @ v_rows.swapaxes(-1, -2)  # dP for now
        dv = P.swapaxes(-1, -2) @ do  # (B,H,T,hs)
    _softmax_backward_rows(P.reshape(-1, T, T), dS.reshape(-1, T, T), causal)
    return dS, dv  # dS (B,H,T,T), or (H,T,T) if shared


# every kernel with a reference: what minisynth.fast.ops hands out in place of the references
TWINS = tuple(globals()[name] for name in __all__ if hasattr(globals()[name], "reference"))
