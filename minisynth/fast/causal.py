"""Products with causal attention maps that leave out the zero half.

A causal map (probabilities P, or the logit gradient dS) is zero above its
diagonal, so about half of every product with it multiplies zeros. The fast
twins of the attention core compute their own products in blocks of
:data:`CAUSAL_BLOCK` rows that skip the blocks wholly above the diagonal
(:func:`causal_product`, :func:`causal_outer`).

The logit gradient dS leaves the core for the attention kinds' own backward
passes (``dS @ k``, ``dS^T @ q`` for vanilla; ``hid^T @ dS``, ``dS @ W2^T`` for
Dense; ...), which the reference writes with ``@`` and knows nothing about. So
the core's twin returns dS marked as a :class:`CausalGrad`: an ndarray whose
matrix products, from either side and in either orientation, skip the zero
blocks. Scaling it by an array that is constant over its last two axes (the
mixture weights) keeps the mark, since zeros stay zeros; every other operation
gives a plain ndarray, and a product falls back to ``np.matmul`` unless the
operand's memory layout shows it is the whole square map or its transpose.
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


def product_with_causal(x, L, transpose=False):
    """``x @ L`` (``x @ L^T`` if ``transpose``) for L (..., T, T) zero above its diagonal;
    x (..., m, T). Computed as ``(L^T @ x^T)^T`` (``(L @ x^T)^T``): a transposed view."""
    return causal_product(L, x.swapaxes(-1, -2), transpose=not transpose).swapaxes(-1, -2)


def causal_outer(a, b):
    """``a @ b^T`` (..., T, T) on and below the diagonal blocks only; the blocks wholly
    above are left unset (for callers that never read them). a, b (..., T, n)."""
    T = a.shape[-2]
    out = np.empty(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (T, T), dtype=a.dtype)
    for lo in range(0, T, CAUSAL_BLOCK):
        hi = min(lo + CAUSAL_BLOCK, T)
        np.matmul(a[..., lo:hi, :], b[..., :hi, :].swapaxes(-1, -2), out=out[..., lo:hi, :hi])
    return out


def _layout(a):
    """ "lower" for the whole C-ordered square map, "upper" for its transposed view, else None."""
    T, item = a.shape[-1], a.itemsize
    if a.ndim < 2 or a.shape[-2] != T or T < 2:
        return None
    if a.strides[-1] == item and a.strides[-2] == T * item:
        return "lower"
    if a.strides[-2] == item and a.strides[-1] == T * item:
        return "upper"  # a swapaxes(-1, -2) view: the transpose of a lower map
    return None


def _constant_over_maps(x):
    """True if ``x`` broadcasts over the last two axes of a map (a per-(b, h) scale)."""
    shape = np.shape(x)
    return len(shape) < 2 or shape[-2:] == (1, 1)


class CausalGrad(np.ndarray):
    """A (..., T, T) attention-logit gradient known to be zero above its diagonal.

    See the module docstring: products with it skip the zero blocks; scaling by a
    per-map constant keeps the mark; anything else gives a plain ndarray.
    """

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        plain = [i.view(np.ndarray) if isinstance(i, CausalGrad) else i for i in inputs]
        if "out" in kwargs:
            kwargs["out"] = tuple(
                o.view(np.ndarray) if isinstance(o, CausalGrad) else o for o in kwargs["out"]
            )
        if method == "__call__" and not kwargs and len(inputs) == 2:
            a, b = inputs
            if ufunc is np.matmul:
                if isinstance(a, CausalGrad) and (layout := _layout(a)):
                    L = plain[0] if layout == "lower" else plain[0].swapaxes(-1, -2)
                    return causal_product(L, plain[1], transpose=layout == "upper")
                if isinstance(b, CausalGrad) and (layout := _layout(b)):
                    L = plain[1] if layout == "lower" else plain[1].swapaxes(-1, -2)
                    return product_with_causal(plain[0], L, transpose=layout == "upper")
            if ufunc is np.multiply:
                marked, other = (a, b) if isinstance(a, CausalGrad) else (b, a)
                if not isinstance(other, CausalGrad) and _constant_over_maps(other):
                    result = np.multiply(*plain)
                    if result.shape[-2:] == marked.shape[-2:]:
                        return result.view(CausalGrad)
                    return result
        return getattr(ufunc, method)(*plain, **kwargs)

    def __getitem__(self, index):  # a slice need not be a whole map: unmarked
        return self.view(np.ndarray)[index]
