"""Attention in tiles: softmax(S) @ v without a T x T array, for every attention kind.

The full path (:func:`minisynth.fast.kernels.attention_core_forward`) stores the
logits S and the probabilities P, B x H x T x T numbers per layer: at fixed tokens
per batch (B T fixed) its memory grows linearly in T, and at T = 4096 the maps of
one layer alone are gigabytes. Here S is never stored. Each attention kind's
logits are written as up to three *pieces* (:class:`Pieces`), each of which gives
any tile S[i0:i1, j0:j1] from arrays of size O(T):

* ``q``, ``k`` (B,H,T,D): the dot-product piece ``q_i . k_j``. Vanilla's scaled
  queries and keys; Dense's ``[hid_i, 1] . [W2[:, j], b2[j]]``; factorized Random's
  ``R1[i] . R2[j]``. A mixture concatenates its components' features along D,
  each component's queries multiplied by its mixture weight, so that
  ``q_i . k_j = sum_n mix_n q_n,i . k_n,j``: one product for all of them.
* ``table`` (H,T,T): logits that are parameters, shared by the batch: Random's
  R[h, :T, :T] (the weighted sum of the R's in a mixture). It is as large as R
  itself: the Random Synthesizer's L^2 parameters are its design, not a cost of
  the path.
* ``A`` (B,H,T,a), ``Bt`` (B,H,T,b): factorized Dense, S[i, j] = A[i, j mod a]
  Bt[i, j div a] (mixture weight folded into A).

Forward (the online softmax, a strip of up to ROWS query rows at a time): walk the key
tiles j0 = 0, TILE, ... keeping for every row i the running maximum m_i, the running sum
l_i = sum_j exp(S_ij - m_i) and the running output acc_i = sum_j exp(S_ij - m_i) v_j;
a new tile with a larger maximum m' rescales both by exp(m_i - m'). At the end
o_i = acc_i / l_i, and the row's log-sum-exp lse_i = m_i + log l_i is saved (B,H,T).
Tiles wholly above the causal diagonal are never visited.

Backward: P_ij = exp(S_ij - lse_i) is recomputed tile by tile from the pieces and
lse; with Delta_i = do_i . o_i (= sum_j P_ij dP_ij), dS_ij = P_ij (dP_ij - Delta_i)
where dP_ij = do_i . v_j. Each tile adds its share to dv (P^T do), dq (dS k), dk
(dS^T q), dtable (dS, summed over the batch) and dA, dBt.

The products of a tile are BLAS calls (:func:`_gemm`: BLAS's gemm called from Numba on
views, adding into its output); exp of float32 logits is a polynomial that LLVM
vectorises (:func:`_exp_float32`), float64 calls libm; a float32 row's maximum is
taken on integer keys of its bits (:func:`_row_max`), which vectorise. Heads are split
over threads (:func:`minisynth.fast.threads.run_sharded`) when no batch split is
running already: at B = 1 the heads keep both cores busy.

Shape letters are those of :mod:`minisynth.layers`; D is the width of the
dot-product features, a and b the factorized Dense factors.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import jit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from .. import layers
from ..attention import LogitPieces, merge_heads, split_heads
from .kernels import JIT_OPTS, _falls_back_to
from .threads import run_sharded

# Keys per tile: the row-wise passes (max, exp, dS) run over TILE columns at a time.
TILE = 128
# Query rows taken at once against one key tile (a strip): fewer, larger BLAS calls, and
# the strip's scratch (two ROWS x TILE arrays, S and dS) stays the same whatever T.
ROWS = 1024

# exp(x) for float32 x <= 0 as 2^n 2^f, t = x log2(e) = n + f, |f| <= 1/2:
# 2^f by its Taylor polynomial in f ln 2 (degree 6: relative error below 3e-7; the
# float32 rounding of x log2(e) adds about 1e-7 |x|, and terms far below the row's
# maximum weigh nothing in a softmax), 2^n by writing n + 127 into a float32's
# exponent bits. Below 2^-126 it gives about 2^-126 (0 within the row's sum).
_LOG2E = np.float32(1.4426950408889634)
_C0, _C1, _C2, _C3, _C4, _C5, _C6 = (np.float32(math.log(2) ** n / math.factorial(n))
                                     for n in range(7))  # fmt: skip
_TINY_EXPONENT = np.float32(-126.0)


class Pieces(NamedTuple):
    """The logits of one attention layer in pieces that give any tile (module docstring)."""

    q: np.ndarray  # (B,H,T,D) dot-product features of the rows (D may be 0)
    k: np.ndarray  # (B,H,T,D) of the columns
    table: np.ndarray  # (H,T,T) logits that are parameters, or (H,0,0)
    A: np.ndarray  # (B,H,T,a) factorized Dense, or (B,H,T,0)
    Bt: np.ndarray  # (B,H,T,b) factorized Dense, or (B,H,T,0)


# --------------------------------------------------------------------- kernels
# BLAS's gemm as Numba's own np.dot calls it (Numba's helper library, SciPy's BLAS behind
# it); called directly, a product reads its operands in place (any row stride, either
# orientation) and adds into its output: no copies of a tile's rows, no temporaries.
_xxgemm = types.ExternalFunction("numba_xxgemm", types.intc(
    types.char, types.char, types.char,  # kind ('s', 'd'), transa, transb
    types.intp, types.intp, types.intp,  # m, n, k
    types.voidptr, types.voidptr, types.intp,  # alpha, a, lda
    types.voidptr, types.intp, types.voidptr,  # b, ldb, beta
    types.voidptr, types.intp))  # c, ldc  # fmt: skip


@intrinsic
def _address(typingctx, arr):
    """The address of an array's first element (a view's, offset included)."""

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.bitcast(array.data, cgutils.voidptr_t)

    return types.voidptr(arr), codegen


def _gemm(a, b, c, add):
    """c = a @ b, or c += a @ b if ``add``: a (m,k), b (k,n), c (m,n) 2-D views whose rows
    (or, for a and b, columns: a transposed view) are contiguous. This plain version runs
    without Numba (NUMBA_DISABLE_JIT=1); compiled code calls BLAS (:func:`_gemm_blas`)."""
    if add:
        c += a @ b
    else:
        c[...] = a @ b


@overload(_gemm, jit_options=JIT_OPTS)
def _gemm_blas(a, b, c, add):
    """:func:`_gemm` in compiled code: one BLAS call on the views as they lie in memory."""
    kind = np.int8(ord("s") if a.dtype == types.float32 else ord("d"))
    plain, transposed = np.int8(ord("n")), np.int8(ord("t"))

    def gemm(a, b, c, add):
        m, k = a.shape
        n = b.shape[1]
        if m == 0 or n == 0:
            return
        if k == 0:
            if not add:
                c[...] = 0.0
            return
        size = c.itemsize
        coefficients = np.empty(2, dtype=c.dtype)  # alpha, beta
        coefficients[0] = 1.0
        coefficients[1] = 1.0 if add else 0.0
        # BLAS reads column-major: the row-major c = a @ b is c^T = b^T a^T there, and a
        # row-major view is its own transpose in column-major ("n"), a transposed one "t"
        if b.strides[1] == size:
            trans_b, ld_b = plain, max(b.strides[0] // size, n)
        else:
            trans_b, ld_b = transposed, max(b.strides[1] // size, k)
        if a.strides[1] == size:
            trans_a, ld_a = plain, max(a.strides[0] // size, k)
        else:
            trans_a, ld_a = transposed, max(a.strides[1] // size, m)
        status = _xxgemm(kind, trans_b, trans_a, n, m, k, _address(coefficients), _address(b),
                         ld_b, _address(a), ld_a, _address(coefficients[1:]), _address(c),
                         max(c.strides[0] // size, n))  # fmt: skip
        if status != 0:  # Numba's helper found no BLAS (SciPy's) to call
            raise RuntimeError("BLAS gemm failed: SciPy's BLAS could not be loaded")

    return gemm


@jit(**JIT_OPTS)
def _tile_logits(q, k, table, A, Bt, b, h, i0, i1, j0, S):
    """S (i1-i0, nj), in place: the logits of rows i0:i1 against columns j0:j0+nj, head h,
    batch row b."""
    ni, nj = S.shape
    if q.shape[3] > 0:
        _gemm(q[b, h, i0:i1], k[b, h, j0 : j0 + nj].T, S, False)  # q_i . k_j
        if table.shape[1] > 0:
            for ii in range(ni):
                S_row, table_row = S[ii], table[h, i0 + ii, j0 : j0 + nj]  # (nj,) each
                for jj in range(nj):
                    S_row[jj] += table_row[jj]
    elif table.shape[1] > 0:
        S[...] = table[h, i0:i1, j0 : j0 + nj]
    else:
        S[...] = 0.0
    a = A.shape[3]
    if a > 0:
        for ii in range(ni):
            A_row, Bt_row, S_row = A[b, h, i0 + ii], Bt[b, h, i0 + ii], S[ii]  # (a,), (b,), (nj,)
            for jj in range(nj):
                j = j0 + jj
                S_row[jj] += A_row[j % a] * Bt_row[j // a]


@jit(**JIT_OPTS)
def _row_max(row, start, end):
    """max(start, row[:end]). float32: as integers, on each float's bits turned into a key
    that sorts like the float (a float running max is not vectorised without the nnan flag,
    an integer one is); float64 (checks, not training): a plain running max."""
    top = start
    if row.itemsize == 4:  # float32
        keys = row.view(np.int32)
        top_key = _float32_key(np.float32(start).view(np.int32))
        for j in range(end):
            top_key = max(top_key, _float32_key(keys[j]))
        top = np.int32(_float32_key(top_key)).view(np.float32)
    else:
        for j in range(end):
            top = max(top, row[j])
    return top


@jit(**JIT_OPTS)
def _float32_key(bits):
    """The int32 bits of a float32 -> an int32 that sorts as the float does (and back: the map
    is its own inverse): negative floats have their 31 lower bits flipped."""
    return np.int32(bits ^ ((bits >> np.int32(31)) & np.int32(0x7FFFFFFF)))


@jit(**JIT_OPTS)
def _exp_row(row, m, seen):
    """In place: row[:seen] = exp(row[:seen] - m), row[seen:] = 0 (columns a causal row may
    not see); returns the sum. float32 logits take the vectorised polynomial (and a float32
    sum: at most TILE terms), float64 libm's exp."""
    total = np.float64(0.0)  # float64 also as plain Python (NUMBA_DISABLE_JIT=1)
    if row.itemsize == 4:  # float32
        total32 = np.float32(0.0)
        for j in range(seen):
            e = _exp_float32(row[j] - m)
            row[j] = e
            total32 += e
        total = np.float64(total32)
    else:
        for j in range(seen):
            e = math.exp(row[j] - m)
            row[j] = e
            total += e
    for j in range(seen, len(row)):
        row[j] = 0.0
    return total


@jit(**JIT_OPTS)
def _exp_float32(x):
    """exp(x) for a float32 x <= 0 (the constants' comment): vectorised where it is inlined."""
    t = max(x * _LOG2E, _TINY_EXPONENT)
    n = np.floor(t + np.float32(0.5))
    f = t - n
    two_f = _C0 + f * (_C1 + f * (_C2 + f * (_C3 + f * (_C4 + f * (_C5 + f * _C6)))))
    two_n = np.int32((np.int32(n) + np.int32(127)) << np.int32(23)).view(np.float32)
    return two_f * two_n


@jit(**JIT_OPTS)
def _probs_and_grad_row(S_row, dS_row, lse_i, delta_i, seen):
    """In place, for one row of a tile: S_row = P = exp(S - lse_i) (0 past ``seen``) and
    dS_row, given dP, = P (dP - Delta_i): the backward's two passes over a row in one."""
    if S_row.itemsize == 4:  # float32
        for j in range(seen):
            p = _exp_float32(S_row[j] - lse_i)
            S_row[j] = p
            dS_row[j] = p * (dS_row[j] - delta_i)
    else:
        for j in range(seen):
            p = math.exp(S_row[j] - lse_i)
            S_row[j] = p
            dS_row[j] = p * (dS_row[j] - delta_i)
    for j in range(seen, len(S_row)):
        S_row[j] = 0.0
        dS_row[j] = 0.0


@jit(**JIT_OPTS)
def _seen(causal, i, j0, nj):
    """How many of the columns j0 .. j0+nj-1 row i sees (all, unless causal)."""
    return max(min(nj, i - j0 + 1), 0) if causal else nj


@jit(**JIT_OPTS)
def _forward_heads(q, k, v, table, A, Bt, causal, h0, h1, o, lse):
    """o[:, h0:h1] (B,.,T,hs) and lse[:, h0:h1] (B,.,T): the online softmax, a key tile at a
    time, for a strip of up to ROWS query rows at once (the rows that see the tile)."""
    B, _, T, hs = v.shape
    strip = np.empty(min(ROWS, T) * TILE, dtype=v.dtype)  # S of a strip against a tile
    for h in range(h0, h1):
        for b in range(B):
            for c0 in range(0, T, ROWS):
                c1 = min(c0 + ROWS, T)
                m = np.full(c1 - c0, -np.inf, dtype=v.dtype)  # running row maxima
                l = np.zeros(c1 - c0, dtype=np.float64)  # running sums of exp(S - m)
                acc = np.zeros((c1 - c0, hs), dtype=v.dtype)  # running sums of exp(S - m) v
                end = c1 if causal else T  # key tiles past the diagonal are never visited
                for j0 in range(0, end, TILE):
                    j1 = min(j0 + TILE, end)
                    r0 = max(c0, j0) if causal else c0  # the first row that sees the tile
                    S = strip[: (c1 - r0) * (j1 - j0)].reshape((c1 - r0, j1 - j0))  # (M,nj)
                    _tile_logits(q, k, table, A, Bt, b, h, r0, c1, j0, S)
                    for ii in range(c1 - r0):
                        a = r0 - c0 + ii  # the row's place in the strip
                        seen = _seen(causal, r0 + ii, j0, j1 - j0)
                        m_old = m[a]
                        m[a] = _row_max(S[ii], m_old, seen)  # in m: of the logits' dtype
                        total = _exp_row(S[ii], m[a], seen)  # S[ii] = exp(S[ii] - m[a])
                        if m[a] > m_old:  # 0 on the row's first tile
                            rescale = math.exp(m_old - m[a])
                            l[a] *= rescale
                            for d in range(hs):
                                acc[a, d] *= rescale
                        l[a] += total
                    _gemm(S, v[b, h, j0:j1], acc[r0 - c0 :], True)  # acc += P v
                for a in range(c1 - c0):
                    inv = 1.0 / l[a]
                    for d in range(hs):
                        o[b, h, c0 + a, d] = acc[a, d] * inv
                    lse[b, h, c0 + a] = m[a] + math.log(l[a])


@jit(**JIT_OPTS)
def _backward_heads(do, q, k, v, lse, delta, table, A, Bt, causal, h0, h1,
                    dq, dk, dv, dtable, dA, dBt):  # fmt: skip
    """Gradients of heads h0:h1, P recomputed from lse a key tile at a time, for a strip of
    up to ROWS query rows at once (module docstring)."""
    B, _, T, hs = v.shape
    D, a = q.shape[3], A.shape[3]
    # dS is wanted by the pieces' gradients; a frozen table alone (random_fixed) wants none:
    # then only dv = P^T do is computed
    wants_dS = D > 0 or a > 0 or dtable.shape[1] > 0
    # S, then P, and dP, then dS, of a strip against a tile; (M,nj) views of C layout, so
    # that Numba compiles their rows' loops for contiguous rows
    strip = np.empty(min(ROWS, T) * TILE, dtype=v.dtype)
    strip_grad = np.empty(min(ROWS, T) * TILE, dtype=v.dtype)
    for h in range(h0, h1):
        for b in range(B):
            for c0 in range(0, T, ROWS):
                c1 = min(c0 + ROWS, T)
                end = c1 if causal else T
                for j0 in range(0, end, TILE):
                    j1 = min(j0 + TILE, end)
                    nj = j1 - j0
                    r0 = max(c0, j0) if causal else c0  # the first row that sees the tile
                    S = strip[: (c1 - r0) * nj].reshape((c1 - r0, nj))  # (M,nj)
                    dS = strip_grad[: (c1 - r0) * nj].reshape((c1 - r0, nj))  # (M,nj)
                    _tile_logits(q, k, table, A, Bt, b, h, r0, c1, j0, S)
                    do_rows = do[b, h, r0:c1]  # (M,hs)
                    if wants_dS:
                        # o = P v:  dP = do v^T
                        _gemm(do_rows, v[b, h, j0:j1].T, dS, False)
                    for ii in range(c1 - r0):
                        # P = exp(S - lse), the forward's probabilities (S becomes P), and
                        # P = softmax(S):  dS = P (dP - Delta)
                        i = r0 + ii
                        seen = _seen(causal, i, j0, nj)
                        if wants_dS:
                            _probs_and_grad_row(S[ii], dS[ii], lse[b, h, i], delta[b, h, i], seen)
                        else:
                            _exp_row(S[ii], lse[b, h, i], seen)
                    _gemm(S.T, do_rows, dv[b, h, j0:j1], True)  # dv += P^T do
                    if D > 0:  # S = q k^T
                        _gemm(dS, k[b, h, j0:j1], dq[b, h, r0:c1], True)  # dq += dS k
                        _gemm(dS.T, q[b, h, r0:c1], dk[b, h, j0:j1], True)  # dk += dS^T q
                    if dtable.shape[1] > 0:  # S = table[h]: its gradient sums over the batch
                        for ii in range(c1 - r0):
                            dtable_row, dS_row = dtable[h, r0 + ii, j0:j1], dS[ii]  # (nj,) each
                            for jj in range(nj):
                                dtable_row[jj] += dS_row[jj]
                    if a > 0:  # S[i, j] = A[i, j mod a] Bt[i, j div a]
                        for ii in range(c1 - r0):
                            i = r0 + ii
                            for jj in range(nj):
                                j = j0 + jj
                                dA[b, h, i, j % a] += dS[ii, jj] * Bt[b, h, i, j // a]
                                dBt[b, h, i, j // a] += dS[ii, jj] * A[b, h, i, j % a]


# ------------------------------------------------------------------ wrappers
class TiledGrads(NamedTuple):
    q: np.ndarray  # (B,H,T,D)
    k: np.ndarray  # (B,H,T,D) for each batch row (a shared k sums them)
    v: np.ndarray  # (B,H,T,hs)
    table: np.ndarray  # (H,T,T) summed over the batch, or (H,0,0)
    A: np.ndarray  # (B,H,T,a)
    Bt: np.ndarray  # (B,H,T,b)


def full_logits(pieces):
    """S (B,H,T,T) from its pieces, materialised: for maps and the reference, not training."""
    q, k, table, A, Bt = pieces
    B, H, T, _ = q.shape
    S = q @ k.swapaxes(-1, -2)  # (B,H,T,T)
    if table.shape[1]:
        S = S + table  # (B,H,T,T)
    a = A.shape[3]
    if a:
        cols = np.arange(T)
        S = S + A[..., cols % a] * Bt[..., cols // a]  # (B,H,T,T)
    return S


def _masked(S, causal):
    if causal:
        S = np.where(np.tri(S.shape[-1], dtype=bool), S, -np.inf)  # (B,H,T,T)
    return S


def tiled_forward_reference(pieces, v, causal):
    """:func:`tiled_forward` written with the whole S (B,H,T,T): the kernels' ground truth."""
    S = _masked(full_logits(pieces), causal)  # (B,H,T,T)
    top = S.max(axis=-1, keepdims=True)  # (B,H,T,1)
    e = np.exp(S - top)  # (B,H,T,T)
    total = e.sum(axis=-1, keepdims=True)  # (B,H,T,1)
    return (e / total) @ v, (top + np.log(total))[..., 0]  # (B,H,T,hs), (B,H,T)


def probabilities(pieces, lse, causal):
    """P (B,H,T,T) = exp(S - lse), masked: the maps a tiled forward never stored."""
    return np.exp(_masked(full_logits(pieces), causal) - lse[..., None])  # (B,H,T,T)


def row_dots(do, o):
    """Delta (B,H,T): do_i . o_i for every row, = sum_j P_ij dP_ij (module docstring)."""
    return np.einsum("bhtd,bhtd->bht", do, o)


def tiled_backward_reference(do, delta, lse, pieces, v, causal, table_grad=True):
    """:func:`tiled_backward` written with the whole S and P (B,H,T,T)."""
    q, k, table, A, Bt = pieces
    P = probabilities(pieces, lse, causal)  # (B,H,T,T)
    dP = do @ v.swapaxes(-1, -2)  # (B,H,T,T)
    dS = P * (dP - delta[..., None])  # (B,H,T,T)
    T, a = v.shape[2], A.shape[3]
    dA, dBt = np.zeros_like(A), np.zeros_like(Bt)  # (B,H,T,a), (B,H,T,b)
    for j in range(T if a else 0):  # S[i, j] = A[i, j mod a] Bt[i, j div a]
        dA[..., j % a] += dS[..., j] * Bt[..., j // a]
        dBt[..., j // a] += dS[..., j] * A[..., j % a]
    if table.shape[1] and table_grad:
        dtable = dS.sum(axis=0)  # (H,T,T)
    else:
        dtable = np.zeros((table.shape[0], 0, 0), dtype=table.dtype)  # (H,0,0)
    return TiledGrads(dS @ k, dS.swapaxes(-1, -2) @ q, P.swapaxes(-1, -2) @ do, dtable, dA, dBt)


@_falls_back_to(tiled_forward_reference)
def tiled_forward(pieces, v, causal):
    """o (B,H,T,hs) = softmax(mask(S)) v and lse (B,H,T), S given by ``pieces``."""
    B, H, T, hs = v.shape
    o = np.empty((B, H, T, hs), dtype=v.dtype)  # (B,H,T,hs)
    lse = np.empty((B, H, T), dtype=v.dtype)  # (B,H,T) log-sum-exp of each row of S
    q, k, table, A, Bt = pieces
    # heads split over threads, unless a batch split runs already (threads.run_sharded)
    run_sharded(lambda h0, h1: _forward_heads(q, k, v, table, A, Bt, bool(causal), h0, h1,
                                              o, lse), H)  # fmt: skip
    return o, lse


@_falls_back_to(tiled_backward_reference)
def tiled_backward(do, delta, lse, pieces, v, causal, table_grad=True):
    """Gradients of o = softmax(mask(S)) v with respect to the pieces of S and to v;
    ``delta`` (B,H,T) is :func:`row_dots` of do and o. ``table_grad=False``: the table's
    gradient is not wanted (a frozen R alone), and comes back (H,0,0)."""
    q, k, table, A, Bt = pieces
    H = v.shape[1]
    dq = np.zeros(q.shape, dtype=v.dtype)  # (B,H,T,D)
    dk = np.zeros(q.shape, dtype=v.dtype)  # (B,H,T,D)
    dv = np.zeros_like(v)  # (B,H,T,hs)
    shape = table.shape if table_grad else (table.shape[0], 0, 0)
    dtable = np.zeros(shape, dtype=v.dtype)  # (H,T,T) or (H,0,0)
    dA = np.zeros(A.shape, dtype=v.dtype)  # (B,H,T,a)
    dBt = np.zeros(Bt.shape, dtype=v.dtype)  # (B,H,T,b)
    do = np.ascontiguousarray(do)
    run_sharded(lambda h0, h1: _backward_heads(do, q, k, v, lse, delta, table, A, Bt,
                                               bool(causal), h0, h1, dq, dk, dv, dtable,
                                               dA, dBt), H)  # fmt: skip
    return TiledGrads(dq, dk, dv, dtable, dA, dBt)


# ------------------------------------------------------- the attention layer
class TiledAttentionCache(NamedTuple):
    """What a tiled forward keeps: O(T) per row, no (B,H,T,T) array."""

    pieces: Pieces  # the layer's logits in pieces (mixture weights folded in)
    lse: np.ndarray  # (B',H,T) log-sum-exp of each row of the masked logits
    v_tiles: np.ndarray  # (B',H,T,B/B' hs) the values in the kernels' layout
    v_cache: layers.LinearCache
    o_cache: layers.LinearCache
    component_pieces: tuple  # per component: its LogitPieces, unweighted
    component_caches: tuple
    mix_weights: np.ndarray | None  # (H,N) softmax(alpha), None for a single kind
    causal: bool
    batch: int  # B
    shared: bool  # the logits are the same for every batch row: B' = 1, the batch folded

    @property
    def v(self):
        """(B,H,T,hs) the values (decoding's prefill keeps them)."""
        return unfold(self.v_tiles, self.batch) if self.shared else self.v_tiles

    @property
    def probs(self):
        """(B,H,T,T) the attention maps, recomputed from the pieces (for plots, not training)."""
        P = probabilities(self.pieces, self.lse, self.causal)  # (B',H,T,T)
        return np.broadcast_to(P, (self.batch,) + P.shape[1:])  # (B,H,T,T)


def shares_logits(component_pieces):
    """Whether S is the same for every batch row: no piece depends on the input (Random's
    R, factorized Random's R1 and R2)."""
    return all((lp.q is None or (lp.q.ndim == 3 and lp.k.ndim == 3)) and lp.A is None
               for lp in component_pieces)  # fmt: skip


def fold(a):
    """(B,H,T,hs) -> (1,H,T,B hs): the batch into the columns, for logits shared by it.
    Then o = P [v_0 .. v_B-1] is one product per tile, and dP summed over the batch too:
    sum_b do_b v_b^T = [do_0 .. do_B-1] [v_0 .. v_B-1]^T."""
    B, H, T, hs = a.shape
    return np.ascontiguousarray(a.transpose(1, 2, 0, 3)).reshape(1, H, T, B * hs)


def unfold(a, B):
    """(1,H,T,B hs) -> (B,H,T,hs), a view: :func:`fold` undone."""
    _, H, T, columns = a.shape
    return a.reshape(H, T, B, columns // B).transpose(2, 0, 1, 3)


def _writable(a):
    """``a`` itself if C-contiguous and writable, else a C-contiguous copy: the kernels
    compile once per dtype, for plain arrays (not read-only broadcasts)."""
    return np.require(a, requirements=["C", "W"])


def _per_row(a, B):
    """``a`` (B,H,T,D) as it is, or a shared (H,T,D) as a read-only (B,H,T,D) view."""
    return a if a.ndim == 4 else np.broadcast_to(a, (B,) + a.shape)


def _combine(component_pieces, mix, B, H, T, dtype):
    """The kernels' :class:`Pieces` of S = sum_n mix_n S_n: features concatenated (each
    component's queries times its weight), tables summed with their weights, the
    factorized Dense weight folded into A. B: the batch rows of the pieces (1 when the
    logits are shared). A single component's arrays are used as they are, not copied."""
    q_parts, k_parts = [], []
    table = A = Bt = None
    for n, lp in enumerate(component_pieces):
        w = None if mix is None else mix[:, n, None, None]  # (H,1,1)
        if lp.q is not None:
            q, k = (_per_row(a, B) for a in (lp.q, lp.k))  # (B,H,T,D) each
            q_parts.append(q if w is None else q * w)
            k_parts.append(k)
        if lp.table is not None:
            weighted = lp.table if w is None else lp.table * w  # (H,T,T)
            table = weighted if table is None else table + weighted
        if lp.A is not None:
            A, Bt = (lp.A if w is None else lp.A * w), lp.Bt  # (B,H,T,a), (B,H,T,b)
    if q_parts:
        q = q_parts[0] if len(q_parts) == 1 else np.concatenate(q_parts, axis=-1)  # (B,H,T,D)
        k = k_parts[0] if len(k_parts) == 1 else np.concatenate(k_parts, axis=-1)  # (B,H,T,D)
    else:
        q = k = np.zeros((B, H, T, 0), dtype=dtype)
    if table is None:
        table = np.zeros((H, 0, 0), dtype=dtype)
    if A is None:
        A = Bt = np.zeros((B, H, T, 0), dtype=dtype)
    return Pieces(*(_writable(a) for a in (q, k, table, A, Bt)))


def attention_forward(layer, x):
    """:meth:`minisynth.attention.Attention.forward` in tiles: x (B,T,C) -> (y, cache)."""
    B, T, _ = x.shape
    p, H = layer.params, layer.H
    v_flat, v_cache = layer.ops.linear_forward(x, p["Wv"], p["bv"])  # (B,T,C)
    parts, caches = [], []
    for comp, prefix in zip(layer.components, layer.prefixes, strict=True):
        lp, c = comp.tile_pieces(layer._component_arrays(comp, prefix), x)
        parts.append(lp)
        caches.append(c)
    mix = layer.ops.softmax_forward(p["alpha"])[0] if layer.mixture else None  # (H,N)
    shared = shares_logits(parts)
    pieces = _combine(parts, mix, 1 if shared else B, H, T, layer.dtype)
    v = split_heads(v_flat, H)  # (B,H,T,hs)
    v = fold(v) if shared else np.ascontiguousarray(v)  # (B',H,T,B/B' hs)
    o, lse = tiled_forward(pieces, v, layer.causal)  # like v, (B',H,T)
    y, o_cache = layer.ops.linear_forward(merge_heads(unfold(o, B) if shared else o),
                                          p["Wo"], p["bo"])  # (B,T,C)  # fmt: skip
    # o itself is not kept: Wo's cache holds it, heads merged
    cache = TiledAttentionCache(pieces, lse, v, v_cache, o_cache, tuple(parts), tuple(caches),
                                mix, layer.causal, B, shared)  # fmt: skip
    return y, cache


def attention_backward(layer, dy, cache):
    """:meth:`minisynth.attention.Attention.backward` in tiles: dy (B,T,C) -> (dx, grads)."""
    grads = {}
    H, B = layer.H, cache.batch
    shared = cache.shared
    # y = o @ Wo + bo
    do_flat, grads["Wo"], grads["bo"] = layer.ops.linear_backward(dy, cache.o_cache)
    do = split_heads(do_flat, H)  # (B,H,T,hs)
    # o = softmax(mask(S)) @ v, S in pieces
    # Delta_i = do_i . o_i, o from Wo's input (heads merged there); folded: summed over b
    delta = row_dots(do, split_heads(cache.o_cache.x, H))  # (B,H,T)
    if shared:
        do, delta = fold(do), delta.sum(axis=0, keepdims=True)  # (1,H,T,B hs), (1,H,T)
    else:
        do = np.ascontiguousarray(do)
    # the table's gradient is wanted by a trainable R, or by the mixture weights
    table_grad = layer.mixture or any(
        lp.table is not None and comp.synthetic_logits
        for lp, comp in zip(cache.component_pieces, layer.components, strict=True)
    )
    g = tiled_backward(do, delta, cache.lse, cache.pieces, cache.v_tiles, cache.causal,
                       table_grad)  # fmt: skip
    del do, delta
    # v = x @ Wv + bv
    dv = merge_heads(unfold(g.v, B) if shared else g.v)  # (B,T,C)
    g = g._replace(v=None)  # dv's only copy is now merged: the kernel's is let go
    dx, grads["Wv"], grads["bv"] = layer.ops.linear_backward(dv, cache.v_cache)
    del dv
    mix = cache.mix_weights  # (H,N) or None
    dmix = np.zeros((H, len(layer.components)), dtype=layer.dtype)  # (H,N)
    col = 0  # where the component's features start in the concatenated q and k
    for n, lp in enumerate(cache.component_pieces):
        w = None if mix is None else mix[:, n, None, None]  # (H,1,1)
        d = {}
        if lp.q is not None:  # S_n = q_n k_n^T, and the kernel's q was w q_n
            cols = slice(col, col + lp.q.shape[-1])
            col = cols.stop
            dq, dk = g.q[..., cols], g.k[..., cols]  # (B,H,T,D) each
            if w is not None:
                # sum over b, i, j of dS S_n = sum over b, i of q_n,i . dq_i
                dmix[:, n] = np.einsum("htd,bhtd->h" if lp.q.ndim == 3 else "bhtd,bhtd->h",
                                       lp.q, dq)  # fmt: skip
                dq = dq * w
            d["q"] = dq if lp.q.ndim == 4 else dq.sum(axis=0)  # shared: summed over the batch
            d["k"] = dk if lp.k.ndim == 4 else dk.sum(axis=0)
        if lp.table is not None:  # S_n = table_n
            if w is not None:
                dmix[:, n] = np.einsum("htj,htj->h", lp.table, g.table)
            d["table"] = g.table if w is None else g.table * w  # (H,T,T)
        if lp.A is not None:  # S_n[i, j] = A[i, j mod a] Bt[i, j div a], the kernel's A was w A
            if w is not None:
                dmix[:, n] = np.einsum("bhta,bhta->h", lp.A, g.A)
            d["A"], d["Bt"] = (g.A if w is None else g.A * w), g.Bt
        comp, prefix = layer.components[n], layer.prefixes[n]
        dx_n, comp_grads = comp.tile_backward(LogitPieces(**d), cache.component_caches[n])
        if dx_n is not None:
            dx = dx + dx_n
        layer._add_component_grads(grads, comp, prefix, comp_grads)
    if mix is not None:
        # mix = softmax(alpha)
        grads["alpha"] = layer.ops.softmax_backward(dmix, layers.SoftmaxCache(mix))  # (H,N)
    return dx, grads
