"""Products with causal attention maps that leave out the zero half.

A causal map (probabilities P, or the logit gradient dP before the softmax
backward) is zero, or never read, above its diagonal, so about half of every
product with it multiplies zeros. The fast twins of the attention core compute
their own products in blocks of :data:`CAUSAL_BLOCK` rows that skip the blocks
wholly above the diagonal (:func:`causal_product`, :func:`causal_outer`). The
logit gradient dS they return is a plain array: the attention kinds' own
backward passes multiply it with plain ``@``.
"""

from __future__ import annotations

import numpy as np

# Rows per block: smaller blocks skip more of the zero half but give BLAS smaller
# products (see BENCHMARKS.md for the sizes measured).
CAUSAL_BLOCK = 64


def causal_product(L, x, transpose=False):
    """``L @ x`` (``L^T @ x`` if ``transpose``) for L (..., T, T) zero above its diagonal;
    x (..., T, n), leading dimensions broadcast. Blocks above the diagonal are never read."""
    T, n = L.shape[-1], x.shape[-1]
    out = np.empty(np.broadcast_shapes(L.shape[:-2], x.shape[:-2]) + (T, n), dtype=x.dtype)
    for lo in range(0, T, CAUSAL_BLOCK):
        hi = min(lo + CAUSAL_BLOCK, T)
        if transpose:  # (L^T x)[j] = sum over i >= j of L[i, j] x[i]
            np.matmul(L[..., lo:, lo:hi].swapaxes(-1, -2), x[..., lo:, :], out=out[..., lo:hi, :])
        else:  # (L x)[i] = sum over j <= i of L[i, j] x[j]
            np.matmul(L[..., lo:hi, :hi], x[..., :hi, :], out=out[..., lo:hi, :])
    return out  # (..., T, n)


def causal_outer(a, b):
    """``a @ b^T`` (..., T, T) on and below the diagonal blocks only; the blocks wholly
    above are left unset (for callers that never read them). a, b (..., T, n)."""
    T = a.shape[-2]
    out = np.empty(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (T, T), dtype=a.dtype)
    for lo in range(0, T, CAUSAL_BLOCK):
        hi = min(lo + CAUSAL_BLOCK, T)
        np.matmul(a[..., lo:hi, :], b[..., :hi, :].swapaxes(-1, -2), out=out[..., lo:hi, :hi])
    return out
