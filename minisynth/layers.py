"""NumPy reference layers: hand-written forward/backward pairs.

These functions are the ground truth of minisynth, written as the math: NumPy
products with ``@``, one line per equation. The fast path (:mod:`minisynth.fast`)
has Numba twins of some of them and is tested against them; nothing here knows
about it.

Conventions
-----------
* ``*_forward(...) -> (out, cache)`` and ``*_backward(dout, cache) -> (dx, ...)``
  in the CS231n style. Caches are NamedTuples.
* Backward functions are pure: they never write into ``dout`` or the cache and
  always return freshly allocated arrays.
* Each backward step quotes, in a comment, the forward line it inverts.
* All float inputs of one call must share one dtype (float32 for training,
  float64 for gradient checks).
* Inputs are not checked here: these are inner functions, and the public entry
  points (:func:`minisynth.attention.build` and its layers, :class:`SynthesizerLM`,
  :class:`minisynth.optim.AdamW`, the CLI) check what users pass them.

Shape letters (used in the shape comment on every array line, package-wide)
---------------------------------------------------------------------------
B  batch size                  T  sequence length (T <= L)
C  model width (d_model)       H  number of heads
hs head size, C // H           L  maximum sequence length (max_len)
V  vocabulary size (256 bytes) N  number of flattened rows (e.g. B*T)
D  input width of a linear     F  output width of a linear
``...`` stands for any leading dimensions.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

LAYERNORM_EPS = 1e-5
GELU_SCALE = math.sqrt(2.0 / math.pi)
GELU_CUBIC = 0.044715


# ----------------------------------------------------------------------------- linear
class LinearCache(NamedTuple):
    x: np.ndarray  # (..., D)
    W: np.ndarray  # (D, F)


def linear_forward(x, W, b):
    """out = x @ W + b with W shaped (in, out)."""
    D, F = W.shape
    out = x.reshape(-1, D) @ W  # (N, F) the leading dimensions flattened into N rows
    out += b  # (N, F)
    return out.reshape(x.shape[:-1] + (F,)), LinearCache(x, W)  # (..., F)


def linear_backward(dout, cache):
    """Returns (dx, dW, db)."""
    x, W = cache
    # out = x @ W + b
    x2 = x.reshape(-1, W.shape[0])  # (N, D)
    dout2 = dout.reshape(-1, W.shape[1])  # (N, F)
    dx = (dout2 @ W.T).reshape(x.shape)  # (..., D)
    dW = x2.T @ dout2  # (D, F)
    db = dout2.sum(axis=0)  # (F,)
    return dx, dW, db


# -------------------------------------------------------------------------- embedding
class EmbeddingCache(NamedTuple):
    idx: np.ndarray  # (...) integer ids
    vocab_size: int


def embedding_forward(idx, W):
    """out[...] = W[idx[...]]: a row lookup. idx (...) ints in [0, V), W (V, C)."""
    out = W[idx]  # (..., C)
    return out, EmbeddingCache(idx, W.shape[0])


def embedding_backward(dout, cache):
    """Returns dW (V, C): a scatter-add, so repeated ids accumulate their gradients."""
    idx, V = cache
    C = dout.shape[-1]
    # out = W[idx]
    dW = np.zeros((V, C), dtype=dout.dtype)  # (V, C)
    np.add.at(dW, idx.reshape(-1), dout.reshape(-1, C))  # add.at accumulates repeated ids
    return dW


# ------------------------------------------------------------------------- layer norm
class LayerNormCache(NamedTuple):
    xhat: np.ndarray  # (..., C) normalised input
    rstd: np.ndarray  # (..., 1) 1 / sqrt(var + eps)
    g: np.ndarray  # (C,)


def layernorm_forward(x, g, b, eps=LAYERNORM_EPS):
    """out = (x - mean) / sqrt(var + eps) * g + b over the last axis (biased variance)."""
    mean = x.mean(axis=-1, keepdims=True)  # (..., 1)
    xc = x - mean  # (..., C)
    var = (xc * xc).mean(axis=-1, keepdims=True)  # (..., 1)
    rstd = 1.0 / np.sqrt(var + eps)  # (..., 1)
    xhat = xc * rstd  # (..., C)
    out = xhat * g + b  # (..., C)
    return out, LayerNormCache(xhat, rstd, g)


def layernorm_backward(dout, cache):
    """Returns (dx, dg, db)."""
    xhat, rstd, g = cache
    C = g.shape[0]
    # out = xhat * g + b
    dg = (dout * xhat).reshape(-1, C).sum(axis=0)  # (C,)
    db = dout.reshape(-1, C).sum(axis=0)  # (C,)
    dxhat = dout * g  # (..., C)
    # xhat = (x - mean) * rstd, with mean and rstd themselves functions of x
    dx = rstd * (
        dxhat
        - dxhat.mean(axis=-1, keepdims=True)
        - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True)
    )  # (..., C)
    return dx, dg, db


# ------------------------------------------------------------------------------- GELU
class GeluCache(NamedTuple):
    x: np.ndarray  # (...)


def gelu_forward(x):
    """GPT-2's tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    u = GELU_SCALE * (x + GELU_CUBIC * x * x * x)  # (...)
    out = 0.5 * x * (1.0 + np.tanh(u))  # (...)
    return out, GeluCache(x)


def gelu_backward(dout, cache):
    """Returns dx."""
    (x,) = cache
    u = GELU_SCALE * (x + GELU_CUBIC * x * x * x)  # (...)
    t = np.tanh(u)  # (...)
    # out = 0.5 x (1 + t),  dt/dx = (1 - t^2) * sqrt(2/pi) * (1 + 3 * 0.044715 x^2)
    dudx = GELU_SCALE * (1.0 + 3.0 * GELU_CUBIC * x * x)  # (...)
    dx = dout * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * dudx)  # (...)
    return dx


# ------------------------------------------------------------------------------- ReLU
class ReluCache(NamedTuple):
    x: np.ndarray  # (...)


def relu_forward(x):
    """out = max(x, 0)."""
    out = np.maximum(x, 0)  # (...)
    return out, ReluCache(x)


def relu_backward(dout, cache):
    """Returns dx (the subgradient at 0 is taken as 0)."""
    (x,) = cache
    # out = max(x, 0)
    dx = np.where(x > 0, dout, 0).astype(dout.dtype, copy=False)  # (...)
    return dx


# ---------------------------------------------------------------------------- softmax
class SoftmaxCache(NamedTuple):
    probs: np.ndarray  # (..., Tq, Tk)  (or (..., K) when not causal)


def causal_mask(Tq, Tk):
    """Boolean (Tq, Tk) mask, True where query i may see key j (j <= i)."""
    return np.tril(np.ones((Tq, Tk), dtype=bool))


def softmax_forward(x, causal=False):
    """Softmax over the last axis; if causal, entries with column j > row i get probability 0.

    For causal=True the last two axes are (rows i, columns j).
    """
    if causal:
        x = np.where(causal_mask(*x.shape[-2:]), x, -np.inf)  # (..., Tq, Tk)
    z = x - x.max(axis=-1, keepdims=True)  # (..., K) max is finite: column 0 is always visible
    e = np.exp(z)  # (..., K) exp(-inf) = 0 on masked entries
    probs = e / e.sum(axis=-1, keepdims=True)  # (..., K)
    return probs, SoftmaxCache(probs)


def softmax_backward(dout, cache):
    """Returns dx; masked entries get gradient 0."""
    (probs,) = cache
    # probs = e / sum(e):  dx_j = p_j (dout_j - sum_k p_k dout_k)
    dx = probs * (dout - (dout * probs).sum(axis=-1, keepdims=True))  # (..., K)
    return dx


# --------------------------------------------------------------------- attention core
class AttentionCoreCache(NamedTuple):
    probs: np.ndarray  # (B,H,T,T) P, a read-only broadcast of one (H,T,T) map when shared
    v: np.ndarray  # (B,H,T,hs)
    shared: bool  # the logits S were one (H,T,T) map for the whole batch
    causal: bool  # the forward masked j > i


def attention_core_forward(S, v, causal):
    """P = softmax(mask(S)); o = P @ v.

    S (B,H,T,T), or (H,T,T) when the logits are shared across the batch (random
    synthesizers); v (B,H,T,hs). Returns o (B,H,T,hs) and the cache, whose
    ``probs`` (B,H,T,T) are the attention maps. Shared logits give the same P for
    every batch element: it is computed once per head and ``probs`` is a
    read-only broadcast view of it.
    """
    B, H, T, _ = v.shape
    probs, _ = softmax_forward(S, causal=causal)  # (B,H,T,T), or (H,T,T) once for all b
    o = probs @ v  # (B,H,T,hs) a shared (H,T,T) P broadcasts over the batch
    shared = probs.ndim == 3
    if shared:
        probs = np.broadcast_to(probs, (B, H, T, T))  # (B,H,T,T) a view, not B copies
    return o, AttentionCoreCache(probs, v, shared, bool(causal))


def attention_core_backward(do, cache):
    """Returns (dS, dv); dS is (H,T,T), summed over the batch, when the logits were shared.

    No mask is needed here: masked entries of P are 0, so their gradient is 0.
    """
    probs, v, shared, _ = cache
    # o = P @ v
    dv = probs.swapaxes(-1, -2) @ do  # (B,H,T,hs)
    dprobs = do @ v.swapaxes(-1, -2)  # (B,H,T,T)
    if shared:  # one P = softmax(S) for every b: the gradients of its B uses add up
        dprobs = dprobs.sum(axis=0)  # (H,T,T)
        probs = probs[0]  # (H,T,T)
    # P = softmax(mask(S))
    dS = softmax_backward(dprobs, SoftmaxCache(probs))  # (B,H,T,T) or (H,T,T)
    return dS, dv


# ---------------------------------------------------------------------- cross-entropy
class CrossEntropyCache(NamedTuple):
    probs: np.ndarray  # (N, V) softmax of the logits, flattened rows
    targets: np.ndarray  # (N,) integer targets
    logits_shape: tuple


def cross_entropy_forward(logits, targets):
    """Mean over all positions of -log softmax(logits)[target]. logits (..., V), targets (...)."""
    V = logits.shape[-1]
    z = logits.reshape(-1, V)  # (N, V)
    z = z - z.max(axis=-1, keepdims=True)  # (N, V)
    logsumexp = np.log(np.exp(z).sum(axis=-1, keepdims=True))  # (N, 1)
    logp = z - logsumexp  # (N, V)
    t = targets.reshape(-1)  # (N,)
    loss = -logp[np.arange(t.size), t].mean()  # scalar
    return loss, CrossEntropyCache(np.exp(logp), t, logits.shape)


def cross_entropy_backward(dloss, cache):
    """Returns dlogits (..., V). dloss is the scalar upstream gradient of the mean loss."""
    probs, t, shape = cache
    dloss = float(dloss)
    N = t.size
    # loss = -mean_n log p[n, t_n]:  dlogits = (p - onehot(t)) / N
    dlogits = probs.copy()  # (N, V)
    dlogits[np.arange(N), t] -= 1.0
    dlogits *= dloss / N
    return dlogits.reshape(shape)
