"""Multi-head attention with every attention kind of the Synthesizer paper.

Tay et al., 2020, "Synthesizer: Rethinking Self-Attention in Transformer Models".
Shape letters are those of :mod:`minisynth.layers` (B, T, C, H, hs, L).

Every kind shares the value and output path; only the logits S differ::

    v = x @ Wv + bv                 (B,T,C) -> split into heads (B,H,T,hs)
    P = softmax(mask(S))            (B,H,T,T), j > i excluded when causal
    o = P @ v                       (B,H,T,hs) -> heads merged (B,T,C)
    y = o @ Wo + bo                 (B,T,C)

Logits per kind (head h uses columns h*hs:(h+1)*hs of any (.., C) projection):

* ``vanilla``            S = q k^T / sqrt(hs),  q = x Wq + bq,  k = x Wk + bk
* ``dense``              S[b,h,i,:] = (relu(x W1 + b1)[b,h,i] @ W2[h] + b2[h])[:T]
* ``random``             S[b,h] = R[h,:T,:T]  (trainable, shared across the batch)
* ``random_fixed``       the same R, frozen (a buffer, not a parameter)
* ``factorized_dense``   full[j] = A[j mod a] * B_tilde[j div a],  S = full[:T]
* ``factorized_random``  S[b,h] = (R1[h] @ R2[h]^T)[:T,:T]
* mixtures ``k1+k2+...`` S = sum_n softmax(alpha[h,:])[n] * S_n

Decoding one position at a time (causal layers; :meth:`Attention.prefill` and
:meth:`Attention.step`): the new position t needs row t of S and the values of
positions 0..t. What each kind must remember from earlier positions follows
from its logits:

* ``vanilla``            its keys k[:t] as well as the values: row t is q_t k^T
* ``dense``, ``factorized_dense``  nothing but the values: row t comes from x_t alone
* ``random``, ``random_fixed``, ``factorized_random``  nothing but the values:
  row t is a row of R (or R1[t] R2^T), independent of the input
* mixtures               the union of their components' needs

Initialisation: every weight matrix is Xavier-uniform, U(-a, a) with
a = sqrt(6 / (fan_in + fan_out)), as in the authors' code; biases and the
mixture logits ``alpha`` start at zero (equal mixture weights). For R (L x L)
this gives a = sqrt(3 / L), small logits, so random attention starts close to
uniform over the visible positions. Same seed, same parameters.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from . import layers
from ._validate import (
    FLOAT_DTYPES,
    check_float_array,
    check_positive_int,
    check_real,
    check_shape,
)
from .backend import backend_of, operations

# --------------------------------------------------------------------------- helpers


def split_heads(x, H):
    """(B,T,C) -> (B,H,T,hs)."""
    B, T, C = x.shape
    return x.reshape(B, T, H, C // H).transpose(0, 2, 1, 3)  # (B,H,T,hs)


def merge_heads(x):
    """(B,H,T,hs) -> (B,T,C), a fresh contiguous array."""
    B, H, T, hs = x.shape
    return np.ascontiguousarray(x.transpose(0, 2, 1, 3)).reshape(B, T, H * hs)  # (B,T,C)


def xavier_uniform(rng, shape, fan_in, fan_out, dtype):
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape).astype(dtype)


def default_factors(L):
    """(a, b) with a the largest divisor of L not above sqrt(L) and b = L // a."""
    a = max(d for d in range(1, math.isqrt(L) + 1) if L % d == 0)
    return a, L // a


class LogitPieces(NamedTuple):
    """One component's logits in pieces (the tiled path, :mod:`minisynth.fast.tiled`):
    S[i, j] = q_i . k_j + table[i, j] + A[i, j mod a] Bt[i, j div a], absent pieces None.
    Arrays (B,H,T,.) per batch row, or (H,T,.) when shared by the batch."""

    q: np.ndarray | None = None  # (B,H,T,D) or (H,T,D)
    k: np.ndarray | None = None  # (B,H,T,D) or (H,T,D)
    table: np.ndarray | None = None  # (H,T,T)
    A: np.ndarray | None = None  # (B,H,T,a)
    Bt: np.ndarray | None = None  # (B,H,T,b)


# ------------------------------------------------------------- the tiled path
TILES = ("auto", "always", "never")
TILES_VARIABLE = "MINISYNTH_TILES"
# From this many positions on, "auto" computes attention in tiles (the crossover
# measured in BENCHMARKS.md, "Attention at length").
TILED_FROM = 512


def check_tiles(tiles=None):
    """When a ``"numba"`` layer computes attention in tiles (:mod:`minisynth.fast.tiled`),
    never storing a (B,H,T,T) map: ``"auto"`` (from :data:`TILED_FROM` positions on),
    ``"always"`` or ``"never"``. None means ``$MINISYNTH_TILES``, else ``"auto"``.
    The reference (``"numpy"``) never tiles: it is written as the math."""
    if tiles is None:
        tiles = os.environ.get(TILES_VARIABLE, "").strip() or "auto"
        source = f"{TILES_VARIABLE}={tiles!r}"
    else:
        source = f"tiles={tiles!r}"
    if tiles not in TILES:
        raise ValueError(f"{source} is not one of {', '.join(repr(t) for t in TILES)}")
    return tiles


def takes_tiles(T, tiles, backend):
    """Whether a layer of ``backend`` set to ``tiles`` computes T positions in tiles."""
    return backend == "numba" and (tiles == "always" or (tiles == "auto" and T >= TILED_FROM))


# ------------------------------------------------------------- logit components
class Component:
    """One source of attention logits. Subclasses define the kind's parameters and math.

    ``input_independent`` components return logits (H,T,T) that do not depend
    on x (one map for the whole batch); the others return (B,H,T,T).
    ``forward(p, x)`` reads parameters from the dict ``p`` (local names);
    ``backward(dS, cache)`` returns (dx or None, grads).
    For decoding, ``row(p, x_t, t, memory)`` returns the logits of one new
    position t, and ``remembers`` names what it keeps of earlier positions.
    ``ops`` holds the layer functions it calls: :mod:`minisynth.layers` or the
    fast path's twins (see :mod:`minisynth.backend`).
    """

    kind = ""
    input_independent = False
    synthetic_logits: tuple = ()  # parameters that are attention logits themselves (R, ...)
    options: tuple = ()
    buffer_names: tuple = ()
    remembers: tuple = ()  # per-position (B,H,L,hs) arrays decoding keeps, besides v

    def memory_from_forward(self, cache):
        """The remembered arrays of the positions a forward pass saw: name -> (B,H,T,hs)."""
        return {}

    def __init__(self, C, H, L, options, ops=layers):
        self.C, self.H, self.L = C, H, L
        self.hs = C // H
        self.ops = ops  # the layer functions it calls (see minisynth.backend)

    def shapes(self):
        """name -> shape of the trainable parameters (in creation order)."""
        raise NotImplementedError

    def tile_pieces(self, p, x):
        """The logits in pieces that give any tile without S (the tiled path,
        :mod:`minisynth.fast.tiled`): ``(LogitPieces, cache)``."""
        raise NotImplementedError

    def tile_backward(self, d, cache):
        """``d``: LogitPieces of gradients (shared pieces summed over the batch) ->
        (dx or None, grads), as :meth:`backward`."""
        raise NotImplementedError

    def buffer_shapes(self):
        return {}

    def aliases(self):
        """local name -> (kind, name) of another component's parameter used in its place."""
        return {}

    def init(self, rng, dtype):
        """Fresh parameters and buffers: (params, buffers) dicts with local names."""
        arrays = {
            name: self.initial(name, shape, rng, dtype)
            for name, shape in {**self.shapes(), **self.buffer_shapes()}.items()
        }
        buffers = {n: arrays.pop(n) for n in self.buffer_names}
        return arrays, buffers

    def initial(self, name, shape, rng, dtype):
        if name.startswith("b"):  # every bias starts at zero
            return np.zeros(shape, dtype=dtype)
        # (.., fan_in, fan_out) weights; R-like (H,L,L) or (H,L,k) alike
        return xavier_uniform(rng, shape, shape[-2], shape[-1], dtype)


class Vanilla(Component):
    """Dot-product attention: S = q k^T / sqrt(hs), q = x Wq + bq, k = x Wk + bk.

    Parameters: Wq, Wk (C,C); bq, bk (C,): 2C^2 + 2C (per head 2(C hs + hs)).
    """

    kind = "vanilla"
    remembers = ("k",)

    def shapes(self):
        C = self.C
        return {"Wq": (C, C), "bq": (C,), "Wk": (C, C), "bk": (C,)}

    def forward(self, p, x):
        pieces, cache = self.tile_pieces(p, x)  # q / sqrt(hs) and k, (B,H,T,hs) each
        S = pieces.q @ pieces.k.swapaxes(-1, -2)  # (B,H,T,T)
        return S, cache

    def backward(self, dS, cache):
        q_scaled, k, q_cache, k_cache, scale = cache
        # S = (q / sqrt(hs)) @ k^T
        dq_scaled = dS @ k  # (B,H,T,hs)
        dk = dS.swapaxes(-1, -2) @ q_scaled  # (B,H,T,hs)
        return self._features_backward(dq_scaled, dk, cache)

    def tile_pieces(self, p, x):
        q_flat, q_cache = self.ops.linear_forward(x, p["Wq"], p["bq"])  # (B,T,C)
        k_flat, k_cache = self.ops.linear_forward(x, p["Wk"], p["bk"])  # (B,T,C)
        scale = 1.0 / math.sqrt(self.hs)
        # C-contiguous (B,H,T,hs): the tiled path reads them as they are, without a copy
        q_scaled = np.multiply(split_heads(q_flat, self.H), scale, order="C")  # q / sqrt(hs)
        k = np.ascontiguousarray(split_heads(k_flat, self.H))  # (B,H,T,hs)
        return LogitPieces(q=q_scaled, k=k), (q_scaled, k, q_cache, k_cache, scale)

    def tile_backward(self, d, cache):
        return self._features_backward(d.q, d.k, cache)

    def _features_backward(self, dq_scaled, dk, cache):
        _, _, q_cache, k_cache, scale = cache
        dq = merge_heads(dq_scaled)  # (B,T,C) a fresh array: scaled in place
        dq *= scale  # q_scaled = q / sqrt(hs)
        # q = x Wq + bq;  k = x Wk + bk
        dx, dWq, dbq = self.ops.linear_backward(dq, q_cache)
        dx_k, dWk, dbk = self.ops.linear_backward(merge_heads(dk), k_cache)
        dx += dx_k  # dx is the fresh result of linear_backward
        return dx, {"Wq": dWq, "bq": dbq, "Wk": dWk, "bk": dbk}

    def memory_from_forward(self, cache):
        return {"k": cache[1]}  # (B,H,T,hs)

    def row(self, p, x_t, t, memory):
        q_flat, _ = self.ops.linear_forward(x_t, p["Wq"], p["bq"])  # (B,1,C)
        k_flat, _ = self.ops.linear_forward(x_t, p["Wk"], p["bk"])  # (B,1,C)
        memory["k"][:, :, t] = split_heads(k_flat, self.H)[:, :, 0]  # (B,H,hs) key of position t
        q_scaled = split_heads(q_flat, self.H) * (1.0 / math.sqrt(self.hs))  # (B,H,1,hs)
        return q_scaled @ memory["k"][:, :, : t + 1].swapaxes(-1, -2)  # (B,H,1,t+1)


class _DenseHidden(Component):
    """The per-token hidden layer shared by dense kinds: hid = relu(x W1 + b1) in heads."""

    def hidden_forward(self, p, x):
        pre, lin_cache = self.ops.linear_forward(x, p["W1"], p["b1"])  # (B,T,C)
        hid_flat, relu_cache = self.ops.relu_forward(pre)  # (B,T,C)
        return split_heads(hid_flat, self.H), (lin_cache, relu_cache)  # (B,H,T,hs)

    def hidden_backward(self, dhid, hidden_cache):
        lin_cache, relu_cache = hidden_cache
        # hid = relu(x W1 + b1)
        dpre = self.ops.relu_backward(merge_heads(dhid), relu_cache)  # (B,T,C)
        dx, dW1, db1 = self.ops.linear_backward(dpre, lin_cache)
        return dx, {"W1": dW1, "b1": db1}


class Dense(_DenseHidden):
    """Dense Synthesizer: S[b,h,i,:] = (relu(x W1 + b1)[b,h,i] @ W2[h] + b2[h])[:T].

    Parameters: W1 (C,C), b1 (C,), W2 (H,hs,L), b2 (H,L): C^2 + C + C L + H L
    (per head: the shared C x C first layer plus hs L + L for its second layer).

    Option ``dense_from_query=True`` (mixtures with vanilla only): the first layer
    is vanilla's query projection, hid = relu(x Wq + bq), as in the authors'
    ``dense_plus`` (Mesh TensorFlow); Dense then adds only W2 and b2, C L + H L,
    and Wq's gradient sums both uses. (Their second layer is shared by the heads
    and has no bias; here it stays per head with a bias, as in ``dense``.)
    """

    kind = "dense"
    options = ("dense_from_query",)

    def __init__(self, C, H, L, options, ops=layers):
        super().__init__(C, H, L, options, ops)
        self.from_query = options.get("dense_from_query", False)
        if not isinstance(self.from_query, bool):
            raise TypeError(f"dense_from_query must be True or False, got {self.from_query!r}")

    def shapes(self):
        C, H, L = self.C, self.H, self.L
        first = {} if self.from_query else {"W1": (C, C), "b1": (C,)}
        return {**first, "W2": (H, self.hs, L), "b2": (H, L)}

    def aliases(self):
        return {"W1": ("vanilla", "Wq"), "b1": ("vanilla", "bq")} if self.from_query else {}

    def forward(self, p, x):
        T = x.shape[1]
        hid, hidden_cache = self.hidden_forward(p, x)  # (B,H,T,hs)
        W2 = p["W2"][:, :, :T]  # (H,hs,T) only the first T logit columns are used
        S = hid @ W2  # (B,H,T,T)
        S += p["b2"][:, None, :T]  # (H,1,T) the same bias row for every b and i
        return S, (hid, W2, hidden_cache)

    def backward(self, dS, cache):
        hid, W2, hidden_cache = cache
        # S = hid @ W2[:, :, :T] + b2[:, :T]   (W2 and b2 shared by every b and i)
        dW2 = (hid.swapaxes(-1, -2) @ dS).sum(axis=0)  # (H,hs,T) sum_b hid[b]^T dS[b]
        db2 = dS.sum(axis=(0, 2))  # (H,T) sum over b and i
        dhid = dS @ W2.swapaxes(-1, -2)  # (B,H,T,hs)
        return self._grads(dhid, dW2, db2, hidden_cache)

    def _grads(self, dhid, dW2, db2, hidden_cache):
        """dx and the gradients; dW2 (H,hs,T) and db2 (H,T) padded to L columns (zeros)."""
        H, hs, T = dW2.shape
        dW2_full = np.zeros((H, hs, self.L), dtype=dW2.dtype)  # (H,hs,L) columns >= T stay 0
        dW2_full[:, :, :T] = dW2
        db2_full = np.zeros((H, self.L), dtype=db2.dtype)  # (H,L)
        db2_full[:, :T] = db2
        dx, grads = self.hidden_backward(dhid, hidden_cache)
        return dx, {**grads, "W2": dW2_full, "b2": db2_full}

    def tile_pieces(self, p, x):
        # S[i, j] = [hid_i, 1] . [W2[:, j], b2[j]]: a dot product of width hs + 1
        T = x.shape[1]
        hid, hidden_cache = self.hidden_forward(p, x)  # (B,H,T,hs)
        ones = np.ones(hid.shape[:3] + (1,), dtype=hid.dtype)  # (B,H,T,1)
        q = np.concatenate([hid, ones], axis=-1)  # (B,H,T,hs+1)
        k = np.concatenate([p["W2"][:, :, :T].swapaxes(-1, -2), p["b2"][:, :T, None]],
                           axis=-1)  # (H,T,hs+1) shared by the batch  # fmt: skip
        return LogitPieces(q=q, k=k), hidden_cache

    def tile_backward(self, d, hidden_cache):
        # d.k (H,T,hs+1) is summed over the batch already
        return self._grads(d.q[..., :-1], d.k[..., :-1].swapaxes(-1, -2), d.k[..., -1],
                           hidden_cache)  # fmt: skip

    def row(self, p, x_t, t, memory):
        hid, _ = self.hidden_forward(p, x_t)  # (B,H,1,hs) from the new token alone
        return hid @ p["W2"][:, :, : t + 1] + p["b2"][:, None, : t + 1]  # (B,H,1,t+1)


class FactorizedDense(_DenseHidden):
    """Factorized Dense: A = hid W_a[h] + b_a[h] (a), B_tilde = hid W_b[h] + b_b[h] (b), a b = L,
    full[j] = A[j mod a] * B_tilde[j div a] (A tiled, B_tilde repeated), S = full[:T].

    Parameters: W1 (C,C), b1 (C,), Wa (H,hs,a), ba (H,a), Wb (H,hs,b), bb (H,b):
    C^2 + C + C (a + b) + H (a + b). Option ``factors=(a, b)``.
    """

    kind = "factorized_dense"
    options = ("factors",)

    def __init__(self, C, H, L, options, ops=layers):
        super().__init__(C, H, L, options, ops)
        factors = options.get("factors")
        if factors is None:
            factors = default_factors(L)
        try:
            a, b = (check_positive_int("factors", f) for f in factors)
        except TypeError:
            raise TypeError(f"factors must be a pair of integers (a, b), got {factors!r}") from None
        except ValueError as err:
            raise ValueError(f"factors must be a pair of positive integers: {err}") from None
        if a * b != L:
            raise ValueError(
                f"factors {a} x {b} = {a * b} must multiply to max_len L = {L} "
                f"(the default is {default_factors(L)})"
            )
        self.a, self.b = a, b

    def shapes(self):
        C, H, hs = self.C, self.H, self.hs
        a, b = self.a, self.b
        return {
            "W1": (C, C),
            "b1": (C,),
            "Wa": (H, hs, a),
            "ba": (H, a),
            "Wb": (H, hs, b),
            "bb": (H, b),
        }

    def full_logits(self, p, x):
        """x (B,T,C) -> (full (B,H,T,L), cache)."""
        pieces, cache = self.tile_pieces(p, x)  # A (B,H,T,a), B_tilde (B,H,T,b)
        # full reshaped to (b, a): full[q*a + r] = B_tilde[q] * A[r]
        full = pieces.Bt[..., :, None] * pieces.A[..., None, :]  # (B,H,T,b,a)
        full = full.reshape(pieces.A.shape[:3] + (self.L,))  # (B,H,T,L)
        return full, cache

    def forward(self, p, x):
        T = x.shape[1]
        full, cache = self.full_logits(p, x)  # (B,H,T,L)
        return full[..., :T], cache  # S (B,H,T,T)

    def row(self, p, x_t, t, memory):
        full, _ = self.full_logits(p, x_t)  # (B,H,1,L) from the new token alone
        return full[..., : t + 1]  # (B,H,1,t+1)

    def backward(self, dS, cache):
        hid, A, B_tilde, Wa, Wb, hidden_cache = cache
        B, H, T, _ = dS.shape
        # S = full[:T]
        dfull = np.zeros((B, H, T, self.L), dtype=dS.dtype)  # (B,H,T,L)
        dfull[..., :T] = dS
        dF = dfull.reshape(B, H, T, self.b, self.a)  # (B,H,T,b,a)
        # full[q*a + r] = B_tilde[q] * A[r]
        dA = np.einsum("bhtqr,bhtq->bhtr", dF, B_tilde)  # (B,H,T,a) sum_q dF[q, r] B_tilde[q]
        dB_tilde = np.einsum("bhtqr,bhtr->bhtq", dF, A)  # (B,H,T,b) sum over r of dF[q, r] A[r]
        return self._factors_backward(dA, dB_tilde, cache)

    def tile_pieces(self, p, x):
        # S[i, j] = A[i, j mod a] B_tilde[i, j div a]: the tile takes A and B_tilde
        hid, hidden_cache = self.hidden_forward(p, x)  # (B,H,T,hs)
        A = hid @ p["Wa"] + p["ba"][:, None, :]  # (B,H,T,a)
        B_tilde = hid @ p["Wb"] + p["bb"][:, None, :]  # (B,H,T,b)
        return LogitPieces(A=A, Bt=B_tilde), (hid, A, B_tilde, p["Wa"], p["Wb"], hidden_cache)

    def tile_backward(self, d, cache):
        return self._factors_backward(d.A, d.Bt, cache)

    def _factors_backward(self, dA, dB_tilde, cache):
        hid, _, _, Wa, Wb, hidden_cache = cache
        # A = hid @ Wa[h] + ba[h];  B_tilde = hid @ Wb[h] + bb[h]
        dWa = (hid.swapaxes(-1, -2) @ dA).sum(axis=0)  # (H,hs,a) sum_b hid[b]^T dA[b]
        dWb = (hid.swapaxes(-1, -2) @ dB_tilde).sum(axis=0)  # (H,hs,b)
        dhid = dA @ Wa.swapaxes(-1, -2) + dB_tilde @ Wb.swapaxes(-1, -2)  # (B,H,T,hs)
        dx, grads = self.hidden_backward(dhid, hidden_cache)
        return dx, {
            **grads,
            "Wa": dWa,
            "ba": dA.sum(axis=(0, 2)),
            "Wb": dWb,
            "bb": dB_tilde.sum(axis=(0, 2)),
        }


class Random(Component):
    """Random Synthesizer: S[b,h] = R[h,:T,:T], R (H,L,L) trainable, shared across the batch.

    Parameters: R (H,L,L): H L^2 (per head L^2). Its gradient sums over the batch.
    Option ``init_std``: R starts as N(0, init_std^2) instead of Xavier-uniform
    (about +-sqrt(3/L), near-uniform attention); 0 gives exactly uniform attention
    over the visible positions, 1 a sharp random alignment.
    """

    kind = "random"
    input_independent = True
    synthetic_logits = ("R",)
    options = ("init_std",)

    def __init__(self, C, H, L, options, ops=layers):
        super().__init__(C, H, L, options, ops)
        self.init_std = options.get("init_std")
        if self.init_std is not None:
            self.init_std = check_real("init_std", self.init_std, low=0.0)

    def initial(self, name, shape, rng, dtype):
        if name == "R" and self.init_std is not None:
            return (rng.standard_normal(shape) * self.init_std).astype(dtype)
        return super().initial(name, shape, rng, dtype)

    def shapes(self):
        return {"R": (self.H, self.L, self.L)}

    def forward(self, p, x):
        T = x.shape[1]
        return p["R"][:, :T, :T], (T,)  # (H,T,T) a view; never written to

    def backward(self, dS, cache):
        (T,) = cache
        # S = R[:, :T, :T]
        dR = np.zeros((self.H, self.L, self.L), dtype=dS.dtype)  # (H,L,L) unused rows/cols 0
        dR[:, :T, :T] = dS
        return None, {"R": dR}

    def row(self, p, x_t, t, memory):
        return p["R"][:, t : t + 1, : t + 1]  # (H,1,t+1) row t of R: no input at all

    def tile_pieces(self, p, x):
        S, cache = self.forward(p, x)
        return LogitPieces(table=S), cache  # (H,T,T) the logits are parameters

    def tile_backward(self, d, cache):
        # d.table (H,T,T), summed over the batch: a fresh array of the tiled path's own.
        # At T = L it is R's gradient as it stands (a frozen R, RandomFixed, has none)
        if d.table.shape[1] == self.L and "R" in self.shapes():
            return None, {"R": d.table}
        return self.backward(d.table, cache)


class RandomFixed(Random):
    """Fixed Random Synthesizer: S[b,h] = R[h,:T,:T] with R (H,L,L) frozen.

    Parameters: none trainable (R is a buffer, H L^2 numbers, never updated).
    """

    kind = "random_fixed"
    buffer_names = ("R",)
    synthetic_logits = ()  # R is a buffer: no gradient, no update

    def shapes(self):
        return {}

    def buffer_shapes(self):
        return {"R": (self.H, self.L, self.L)}

    def backward(self, dS, cache):
        return None, {}


class FactorizedRandom(Component):
    """Factorized Random Synthesizer: S[b,h] = (R1[h] @ R2[h]^T)[:T,:T], R1, R2 (H,L,k).

    Parameters: 2 H L k (per head 2 L k). Option ``k`` (default 8, the paper's value).
    """

    kind = "factorized_random"
    input_independent = True
    synthetic_logits = ("R1", "R2")
    options = ("k",)

    def __init__(self, C, H, L, options, ops=layers):
        super().__init__(C, H, L, options, ops)
        self.k = check_positive_int("k", options.get("k", 8))

    def shapes(self):
        return {"R1": (self.H, self.L, self.k), "R2": (self.H, self.L, self.k)}

    def forward(self, p, x):
        pieces, cache = self.tile_pieces(p, x)
        return pieces.q @ pieces.k.swapaxes(-1, -2), cache  # (H,T,T) R1 R2^T

    def tile_pieces(self, p, x):
        T = x.shape[1]
        R1 = p["R1"][:, :T]  # (H,T,k)
        R2 = p["R2"][:, :T]  # (H,T,k)
        return LogitPieces(q=R1, k=R2), (R1, R2)  # S[i, j] = R1[i] . R2[j], shared

    def tile_backward(self, d, cache):
        return self._factor_grads(d.q, d.k)  # (H,T,k) each, summed over the batch

    def backward(self, dS, cache):
        R1, R2 = cache
        # S = R1[:, :T] @ R2[:, :T]^T
        return self._factor_grads(dS @ R2, dS.swapaxes(-1, -2) @ R1)  # (H,T,k) each

    def _factor_grads(self, dR1_rows, dR2_rows):
        """Gradients of the first T rows of R1 and R2 (H,T,k), padded to L rows."""
        T = dR1_rows.shape[1]
        dR1 = np.zeros((self.H, self.L, self.k), dtype=dR1_rows.dtype)  # (H,L,k)
        dR2 = np.zeros((self.H, self.L, self.k), dtype=dR2_rows.dtype)  # (H,L,k)
        dR1[:, :T] = dR1_rows
        dR2[:, :T] = dR2_rows
        return None, {"R1": dR1, "R2": dR2}

    def row(self, p, x_t, t, memory):
        return p["R1"][:, t : t + 1] @ p["R2"][:, : t + 1].swapaxes(-1, -2)  # (H,1,t+1)


KINDS = {
    cls.kind: cls
    for cls in (Vanilla, Dense, Random, RandomFixed, FactorizedDense, FactorizedRandom)
}
SHARED_NAMES = ("Wv", "bv", "Wo", "bo")


def parse_kind(kind):
    """'dense+vanilla' -> ['dense', 'vanilla'], with clear errors for unknown or repeated kinds."""
    if not isinstance(kind, str):
        raise TypeError(f"attention kind must be a string, got {type(kind).__name__}")
    parts = [p.strip() for p in kind.split("+")]
    valid = ", ".join(KINDS)
    for p in parts:
        if p not in KINDS:
            raise ValueError(
                f"unknown attention kind {p!r}; valid kinds are {valid}, "
                "or a mixture of them joined by '+' (e.g. 'dense+vanilla')"
            )
    if len(set(parts)) != len(parts):
        raise ValueError(f"attention kind {kind!r} repeats a component; each may appear once")
    return parts


def _check_sizes(d_model, n_heads, max_len):
    C = check_positive_int("d_model", d_model)
    H = check_positive_int("n_heads", n_heads)
    L = check_positive_int("max_len", max_len)
    if C % H:
        raise ValueError(f"d_model {C} is not divisible by n_heads {H}")
    return C, H, L


def _make_components(parts, C, H, L, options, ops=layers):
    used = set()
    comps = []
    for p in parts:
        cls = KINDS[p]
        used.update(cls.options)
        comps.append(cls(C, H, L, options, ops))
    unknown = set(options) - used
    if unknown:
        takes = "; ".join(
            f"{kind} takes {', '.join(repr(o) for o in cls.options)}"
            for kind, cls in KINDS.items()
            if cls.options
        )
        raise ValueError(
            f"unknown option(s) {sorted(unknown)} for attention {'+'.join(parts)!r}; {takes}"
        )
    for comp in comps:
        for kind, _ in comp.aliases().values():
            if kind not in parts:
                raise ValueError(
                    f"{comp.kind} with these options uses {kind}'s parameters, but the "
                    f"attention {'+'.join(parts)!r} has no {kind} component (e.g. 'dense+vanilla')"
                )
    return comps


def components(kind, d_model, n_heads, max_len, **options):
    """The validated :class:`Component` objects of ``kind`` (their shapes, no arrays)."""
    C, H, L = _check_sizes(d_model, n_heads, max_len)
    return _make_components(parse_kind(kind), C, H, L, options)


def parameter_shapes(kind, d_model, n_heads, max_len, **options):
    """``(params, buffers)``: name -> shape of every array of ``build(kind, ...)``, keyed as
    in ``layer.params`` and ``layer.buffers``, without allocating any of them."""
    comps = components(kind, d_model, n_heads, max_len, **options)
    C, H = comps[0].C, comps[0].H
    mixture = len(comps) > 1
    params = {"Wv": (C, C), "bv": (C,), "Wo": (C, C), "bo": (C,)}
    buffers = {}
    for comp in comps:
        prefix = f"{comp.kind}." if mixture else ""
        params.update({prefix + n: s for n, s in comp.shapes().items()})
        buffers.update({prefix + n: s for n, s in comp.buffer_shapes().items()})
    if mixture:
        params["alpha"] = (H, len(comps))
    return params, buffers


def count_params(kind, d_model, n_heads, max_len, **options):
    """Number of trainable parameters of ``build(kind, ...)`` without allocating them."""
    params, _ = parameter_shapes(kind, d_model, n_heads, max_len, **options)
    return sum(math.prod(shape) for shape in params.values())


class AttentionCache(NamedTuple):
    core: layers.AttentionCoreCache  # probs (B,H,T,T) after masking and softmax, v (B,H,T,hs)
    v_cache: layers.LinearCache
    o_cache: layers.LinearCache
    logits: tuple  # per component: S_n (B,H,T,T) or shared (H,T,T)
    component_caches: tuple
    mix_weights: np.ndarray | None  # (H,N) softmax(alpha), None for a single kind

    @property
    def probs(self):
        """(B,H,T,T) the attention maps: probabilities after masking and softmax."""
        return self.core.probs

    @property
    def v(self):
        """(B,H,T,hs) the values."""
        return self.core.v


class Attention:
    """Multi-head attention of one kind (or a mixture); build it with :func:`build`.

    ``ops`` holds the layer functions the layer calls: :mod:`minisynth.layers`
    (``backend="numpy"``, the reference) or the fast path's twins (``"numba"``);
    see :mod:`minisynth.backend`. A ``"numba"`` layer may compute in tiles
    (``tiles``, :func:`check_tiles`; :mod:`minisynth.fast.tiled`): the same outputs
    and gradients, from each component's :meth:`Component.tile_pieces`, and a cache
    that keeps no (B,H,T,T) array (its ``probs`` are recomputed when asked for).
    """

    def __init__(
        self,
        kind,
        d_model,
        n_heads,
        max_len,
        *,
        causal,
        seed,
        dtype,
        backend="numpy",
        tiles=None,
        **options,
    ):
        if np.dtype(dtype) not in FLOAT_DTYPES:
            raise TypeError(f"dtype must be float32 or float64, got {np.dtype(dtype)}")
        self.ops = operations(backend)
        self.tiles = check_tiles(tiles)
        self.parts = parse_kind(kind)
        self.kind = "+".join(self.parts)
        self.C, self.H, self.L = _check_sizes(d_model, n_heads, max_len)
        self.hs = self.C // self.H
        self.causal = bool(causal)
        self.dtype = np.dtype(dtype)
        self.components = _make_components(self.parts, self.C, self.H, self.L, options, self.ops)
        self.mixture = len(self.components) > 1
        self.prefixes = [f"{c.kind}." if self.mixture else "" for c in self.components]

        rng = np.random.default_rng(seed)
        C = self.C
        self.params = {
            "Wv": xavier_uniform(rng, (C, C), C, C, self.dtype),
            "bv": np.zeros(C, dtype=self.dtype),
            "Wo": xavier_uniform(rng, (C, C), C, C, self.dtype),
            "bo": np.zeros(C, dtype=self.dtype),
        }
        self.buffers = {}
        for comp, prefix in zip(self.components, self.prefixes, strict=True):
            params, buffers = comp.init(rng, self.dtype)
            self.params.update({prefix + n: a for n, a in params.items()})
            self.buffers.update({prefix + n: a for n, a in buffers.items()})
        if self.mixture:
            self.params["alpha"] = np.zeros((self.H, len(self.components)), dtype=self.dtype)

    @property
    def backend(self):
        """``"numpy"`` (the reference) or ``"numba"``: what computes this layer."""
        return backend_of(self.ops)

    def uses_tiles(self, T):
        """Whether a forward pass over T positions takes the tiled path (:func:`check_tiles`)."""
        return takes_tiles(T, self.tiles, self.backend)

    def __repr__(self):
        return (
            f"Attention({self.kind!r}, d_model={self.C}, n_heads={self.H}, max_len={self.L}, "
            f"causal={self.causal}, dtype={self.dtype.name}, backend={self.backend!r})"
        )

    def _component_arrays(self, comp, prefix):
        """The component's parameters and buffers under their local names."""
        p = {n: self.params[prefix + n] for n in comp.shapes()}
        p.update({n: self.buffers[prefix + n] for n in comp.buffer_shapes()})
        p.update({n: self.params[self._param_key(comp, n, prefix)] for n in comp.aliases()})
        return p

    def _param_key(self, comp, local, prefix):
        """The key in ``params`` of a component's local parameter (another's, if aliased)."""
        if local in comp.aliases():
            kind, name = comp.aliases()[local]
            return self.prefixes[self.parts.index(kind)] + name
        return prefix + local

    def _check_input(self, x):
        check_float_array("x", x, ndim=3)
        B, T, C = x.shape
        if x.dtype != self.dtype:
            raise TypeError(f"x has dtype {x.dtype} but this layer was built with {self.dtype}")
        if C != self.C:
            raise ValueError(f"x has {C} channels but the layer has d_model = {self.C}")
        if T > self.L:
            raise ValueError(
                f"sequence length T = {T} exceeds max_len L = {self.L}: Dense and Random "
                "synthesizers are tied to a maximum length L (their logits have L columns), "
                "so every kind here accepts T <= L"
            )
        if T == 0 or B == 0:
            raise ValueError(
                f"x must have at least one batch element and one position, got {x.shape}"
            )

    def _mix(self, logits):
        """Per-component logits -> (S, mix): S = sum_n softmax(alpha)[h,n] S_n for a mixture."""
        if not self.mixture:
            return logits[0], None  # (B,H,Tq,Tk) or (H,Tq,Tk)
        mix, _ = self.ops.softmax_forward(self.params["alpha"])  # (H,N)
        S = mix[:, 0, None, None] * logits[0]  # (B?,H,Tq,Tk)
        for n in range(1, len(logits)):
            S = S + mix[:, n, None, None] * logits[n]  # (B?,H,Tq,Tk) sum_n mix[h,n] S_n
        return S, mix

    def forward(self, x):
        """x (B,T,C) -> (y (B,T,C), cache); ``cache.probs`` is (B,H,T,T)."""
        self._check_input(x)
        if self.uses_tiles(x.shape[1]):
            return self.ops.tiled_attention_forward(self, x)  # no (B,H,T,T) array kept
        p = self.params
        v_flat, v_cache = self.ops.linear_forward(x, p["Wv"], p["bv"])  # (B,T,C)
        v = split_heads(v_flat, self.H)  # (B,H,T,hs)

        logits, caches = [], []
        for comp, prefix in zip(self.components, self.prefixes, strict=True):
            S_n, c = comp.forward(self._component_arrays(comp, prefix), x)  # (B,H,T,T) or (H,T,T)
            logits.append(S_n)
            caches.append(c)
        S, mix = self._mix(logits)  # (B,H,T,T) or (H,T,T)
        o, core = self.ops.attention_core_forward(S, v, self.causal)  # (B,H,T,hs)
        y, o_cache = self.ops.linear_forward(merge_heads(o), p["Wo"], p["bo"])  # (B,T,C)
        cache = AttentionCache(core, v_cache, o_cache, tuple(logits), tuple(caches), mix)
        return y, cache

    def backward(self, dy, cache):
        """dy (B,T,C) -> (dx (B,T,C), grads keyed like ``params``)."""
        check_float_array("dy", dy, ndim=3, dtype=self.dtype)
        if dy.shape != cache.v_cache.x.shape:
            raise ValueError(f"dy has shape {dy.shape}, expected {cache.v_cache.x.shape}")
        if not isinstance(cache, AttentionCache):  # the cache of a tiled forward
            return self.ops.tiled_attention_backward(self, dy, cache)
        grads = {}
        # y = o @ Wo + bo
        do_flat, grads["Wo"], grads["bo"] = self.ops.linear_backward(dy, cache.o_cache)
        do = split_heads(do_flat, self.H)  # (B,H,T,hs)
        # o = softmax(mask(S)) @ v
        dS, dv = self.ops.attention_core_backward(do, cache.core)  # like S, (B,H,T,hs)
        # v = x @ Wv + bv
        dx, grads["Wv"], grads["bv"] = self.ops.linear_backward(merge_heads(dv), cache.v_cache)

        if self.mixture:
            mix = cache.mix_weights  # (H,N)
            # S = sum_n mix[h,n] * S_n
            # dmix[h,n] = sum over b, i, j of dS[b,h,i,j] S_n[b,h,i,j]
            dmix = np.stack(
                [
                    np.einsum("...ij,...ij->...", dS, S_n).reshape(-1, self.H).sum(axis=0)
                    for S_n in cache.logits
                ],
                axis=1,
            )  # (H,N)
            # mix = softmax(alpha)
            grads["alpha"] = self.ops.softmax_backward(dmix, layers.SoftmaxCache(mix))  # (H,N)
        for n, (comp, prefix) in enumerate(zip(self.components, self.prefixes, strict=True)):
            dS_n = dS * mix[:, n, None, None] if self.mixture else dS  # like S
            if comp.input_independent and dS_n.ndim == 4:
                dS_n = dS_n.sum(axis=0)  # (H,T,T) one map for the batch: sum over it
            dx_n, g = comp.backward(dS_n, cache.component_caches[n])
            if dx_n is not None:
                dx = dx + dx_n
            self._add_component_grads(grads, comp, prefix, g)
        return dx, grads

    def _add_component_grads(self, grads, comp, prefix, comp_grads):
        """Add a component's gradients (local names) into ``grads`` (keys of ``params``)."""
        for name, a in comp_grads.items():  # a parameter used twice (an alias) sums both
            full = self._param_key(comp, name, prefix)
            grads[full] = grads[full] + a if full in grads else a

    # ------------------------------------------------------------ decoding
    def prefill(self, x):
        """x (B,T,C), a causal prompt -> (y (B,T,C), DecodeState remembering its T positions)."""
        if not self.causal:
            raise ValueError("decoding position by position needs a causal layer (causal=True)")
        y, cache = self.forward(x)
        B, T, _ = x.shape
        memories = []
        for comp, comp_cache in zip(self.components, cache.component_caches, strict=True):
            remembered = comp.memory_from_forward(comp_cache)
            memories.append(
                {name: self._memory_buffer(B, remembered[name]) for name in comp.remembers}
            )
        return y, DecodeState(self._memory_buffer(B, cache.v), tuple(memories), T)

    def _memory_buffer(self, B, first):
        """A (B,H,L,hs) buffer holding ``first`` (B,H,T,hs) in its first T positions."""
        buf = np.zeros((B, self.H, self.L, self.hs), dtype=self.dtype)  # (B,H,L,hs)
        buf[:, :, : first.shape[2]] = first
        return buf

    def step(self, x_t, state):
        """The next position: x_t (B,1,C) -> y_t (B,1,C); ``state`` gains the position.

        Attention work O(t) for position t: the new row of logits against the
        remembered positions 0..t, no T x T matrix.
        """
        check_float_array("x_t", x_t, ndim=3, dtype=self.dtype)
        B, t = state.v.shape[0], state.length
        check_shape("x_t", x_t, (B, 1, self.C))
        if t >= self.L:
            raise ValueError(
                f"the decoding state already holds max_len L = {self.L} positions; "
                "Dense and Random logits exist only for positions below L "
                "(prefill a shorter window)"
            )
        p = self.params
        v_flat, _ = self.ops.linear_forward(x_t, p["Wv"], p["bv"])  # (B,1,C)
        state.v[:, :, t] = split_heads(v_flat, self.H)[:, :, 0]  # (B,H,hs) value of position t
        rows = [
            # (B,H,1,t+1), or (H,1,t+1) for input-independent logits
            comp.row(self._component_arrays(comp, prefix), x_t, t, memory)
            for comp, prefix, memory in zip(
                self.components, self.prefixes, state.memories, strict=True
            )
        ]
        S, _ = self._mix(rows)  # (B?,H,1,t+1)
        probs, _ = self.ops.softmax_forward(S)  # (B?,H,1,t+1) no mask: position t sees 0..t
        o = probs @ state.v[:, :, : t + 1]  # (B,H,1,hs)
        y, _ = self.ops.linear_forward(merge_heads(o), p["Wo"], p["bo"])  # (B,1,C)
        state.length = t + 1
        return y


@dataclass
class DecodeState:
    """What one attention layer remembers while decoding, for positions 0..length-1.

    Buffers have room for all L positions; only the first ``length`` are filled.
    """

    v: np.ndarray  # (B,H,L,hs) values, needed by every kind
    memories: tuple  # per component: name -> (B,H,L,hs), e.g. vanilla's keys "k"
    length: int

    @property
    def nbytes(self):
        """Bytes held for a full window of L positions."""
        return self.v.nbytes + sum(a.nbytes for m in self.memories for a in m.values())


def build(
    kind,
    d_model,
    n_heads,
    max_len,
    *,
    causal=True,
    seed=0,
    dtype=np.float32,
    backend="numpy",
    tiles=None,
    **options,
):
    """Build a multi-head attention layer of ``kind`` (see the module docstring).

    ``kind`` is one of vanilla, dense, random, random_fixed, factorized_dense,
    factorized_random, or a mixture joined by '+'. Options (each kind's class
    docstring says more): ``factors=(a, b)`` for factorized_dense (a b = max_len),
    ``k`` for factorized_random, ``init_std`` for random and random_fixed (R's
    initial standard deviation), ``dense_from_query=True`` for dense in a mixture
    with vanilla (Dense's first layer is vanilla's query projection).
    ``backend``: ``"numpy"`` (the reference) or ``"numba"`` (the fast path's
    twins), see :mod:`minisynth.backend`. ``tiles``: when the fast path computes
    attention in tiles, see :func:`check_tiles`.
    """
    return Attention(
        kind,
        d_model,
        n_heads,
        max_len,
        causal=causal,
        seed=seed,
        dtype=dtype,
        backend=backend,
        tiles=tiles,
        **options,
    )
