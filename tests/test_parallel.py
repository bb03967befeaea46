"""minisynth.parallel: matrix products split over threads, and their twins in minisynth.kernels.

A batch split must not change a single bit (each output matrix is still the
same BLAS call); a row or column split keeps every element one dot product
over all of k, but BLAS may pick another kernel for the smaller piece, so it
agrees to rounding. The split must restore OpenBLAS's thread count whatever happens,
and must actually split when it says it does (otherwise the parity tests
below would hold vacuously).
"""

import contextlib
import os
import subprocess
import sys
import threading
from unittest import mock

import numpy as np
import pytest
from helpers import (
    OPENBLAS,
    assert_no_aliasing,
    assert_unchanged,
    seeds,
    snapshot,
    splitting_everything,
    uniform,
    upstream,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from minisynth import kernels, layers, parallel

needs_openblas = pytest.mark.skipif(OPENBLAS is None, reason="NumPy's BLAS is not OpenBLAS")
dtypes = st.sampled_from([np.float32, np.float64])


@pytest.fixture
def two_threads():
    with splitting_everything() as splits:
        yield splits


def test_numpy_openblas_is_numpys_own():
    if OPENBLAS is None:
        pytest.skip("NumPy's BLAS is not OpenBLAS")
    assert "openblas" in os.path.basename(OPENBLAS.path).lower()
    assert os.path.realpath(OPENBLAS.path).startswith(
        os.path.realpath(os.path.dirname(np.__file__))
    )  # numpy/ or numpy.libs/, never scipy's copy
    assert OPENBLAS.get_num_threads() >= 1
    assert OPENBLAS.config.startswith("OpenBLAS") and OPENBLAS.corename  # what benchmarks print


# (a shape, b shape) split along a batch axis: the very same BLAS call per matrix
BATCH_SPLITS = [
    ((4, 3, 5, 2), (4, 3, 2, 6)),  # batch axis 0
    ((4, 3, 5, 2), (1, 3, 2, 6)),  # b broadcast over the batch, as Dense's W2[None]
    ((4, 5, 2), (2, 4, 2, 6)),  # a broadcast; the longest batch axis is axis 1
    ((1, 6, 5, 2), (1, 6, 2, 3)),  # the longest batch axis is axis 1
    ((6, 5, 4), (4, 3)),  # a stack times one matrix, as the tied head
    ((6, 1, 4), (6, 4, 1)),  # stacks of vectors
]
# plain matrices, split by rows of a (or columns of b when a has one row)
ROW_COLUMN_SPLITS = [((9, 4), (4, 7)), ((1, 4), (4, 7)), ((5, 7), (7, 1)), ((64, 300), (300, 65))]


def _split_product(a_shape, b_shape, splits):
    rng = np.random.default_rng(0)
    a = uniform(rng, a_shape, dtype=np.float32)
    b = uniform(rng, b_shape, dtype=np.float32)
    out = parallel.threaded_matmul(a, b)
    assert splits == [1]  # it split, with one pool worker beside the caller
    assert out.dtype == np.float32 and out.flags.c_contiguous
    assert OPENBLAS.get_num_threads() == 2  # restored
    return out, np.matmul(a, b)


@needs_openblas
@pytest.mark.parametrize(("a_shape", "b_shape"), BATCH_SPLITS)
def test_batch_splits_equal_numpy_bit_for_bit(two_threads, a_shape, b_shape):
    out, expected = _split_product(a_shape, b_shape, two_threads)
    np.testing.assert_array_equal(out, expected)


@needs_openblas
@pytest.mark.parametrize(("a_shape", "b_shape"), ROW_COLUMN_SPLITS)
def test_row_and_column_splits_equal_numpy_to_rounding(two_threads, a_shape, b_shape):
    out, expected = _split_product(a_shape, b_shape, two_threads)
    k = a_shape[-1]
    np.testing.assert_allclose(out, expected, rtol=0, atol=k * 2.0**-23 * 4)


@needs_openblas
@settings(deadline=None, max_examples=40)
@given(
    seed=seeds,
    dtype=dtypes,
    batch=st.lists(st.integers(1, 4), min_size=0, max_size=2).map(tuple),
    broadcast_b=st.booleans(),
    transpose_a=st.booleans(),
    m=st.integers(1, 9),
    k=st.integers(1, 9),
    n=st.integers(1, 9),
)
def test_kernel_matmul_equals_its_twin(seed, dtype, batch, broadcast_b, transpose_a, m, k, n):
    rng = np.random.default_rng(seed)
    a = uniform(rng, batch + (k, m), dtype=dtype).swapaxes(-1, -2) if transpose_a else None
    if a is None:
        a = uniform(rng, batch + (m, k), dtype=dtype)
    b_batch = tuple(1 for _ in batch) if broadcast_b else batch
    b = uniform(rng, b_batch + (k, n), dtype=dtype)
    before = snapshot(a, b)
    with splitting_everything() as splits:
        out = kernels.matmul(a, b)
    assert splits or max(out.shape) < 2  # split unless there is nothing to split
    expected = layers.matmul(a, b)
    if batch and max(batch) >= 2:  # a batch split: the same BLAS calls
        np.testing.assert_array_equal(out, expected)
    else:  # rows or columns: see the module docstring
        eps = np.finfo(dtype).eps
        np.testing.assert_allclose(out, expected, rtol=0, atol=4 * k * 4.0 * eps)
    assert out.dtype == dtype
    assert_unchanged(before, [a, b])
    assert_no_aliasing([out], [a, b])


@needs_openblas
@settings(deadline=None, max_examples=25)
@given(seed=seeds, dtype=dtypes, lead=st.sampled_from([(5,), (2, 3), (4, 1)]), D=st.integers(1, 6))
def test_kernel_linear_equals_its_twin(seed, dtype, lead, D):
    with splitting_everything() as splits:
        _check_linear_twins(seed, dtype, lead, D)
    assert splits  # the GEMMs were split


def _check_linear_twins(seed, dtype, lead, D):
    rng = np.random.default_rng(seed)
    F = 3
    x = uniform(rng, lead + (D,), dtype=dtype)
    W = uniform(rng, (D, F), dtype=dtype)
    bias = uniform(rng, (F,), dtype=dtype)
    tol = dict(rtol=0, atol=4 * max(D, *lead) * 4.0 * np.finfo(dtype).eps)  # rows split
    out, cache = kernels.linear_forward(x, W, bias)
    ref_out, ref_cache = layers.linear_forward(x, W, bias)
    np.testing.assert_allclose(out, ref_out, **tol)
    assert type(cache) is type(ref_cache)
    dout = upstream(rng, out.shape, dtype=dtype)
    before = snapshot(dout, x, W)
    grads = kernels.linear_backward(dout, cache)
    for got, want in zip(grads, layers.linear_backward(dout, ref_cache), strict=True):
        np.testing.assert_allclose(got, want, **tol)
        assert got.dtype == dtype
    assert_unchanged(before, [dout, x, W])
    assert_no_aliasing(list(grads), [dout, x, W])


@needs_openblas
def test_thread_count_is_restored_when_a_share_fails(two_threads, monkeypatch):
    real = np.matmul

    def fails_off_the_main_thread(*args, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            raise FloatingPointError("injected")
        return real(*args, **kwargs)

    monkeypatch.setattr(np, "matmul", fails_off_the_main_thread)
    with pytest.raises(FloatingPointError, match="injected"):
        parallel.threaded_matmul(np.ones((4, 3, 3)), np.ones((4, 3, 3)))
    assert OPENBLAS.get_num_threads() == 2
    monkeypatch.setattr(np, "matmul", real)
    out = parallel.threaded_matmul(np.ones((4, 3, 3)), np.ones((4, 3, 3)))
    np.testing.assert_array_equal(out, 3)


@needs_openblas
def test_one_blas_thread_or_small_products_do_not_split(monkeypatch):
    splits = []
    real_workers = parallel._workers
    monkeypatch.setattr(parallel, "_workers", lambda n: splits.append(n) or real_workers(n))
    previous = OPENBLAS.get_num_threads()
    a = np.ones((4, 64, 64), np.float32)
    try:
        OPENBLAS.set_num_threads(1)  # e.g. OPENBLAS_NUM_THREADS=1: the user asked for one
        monkeypatch.setattr(parallel, "MIN_SPLIT_WORK", 0)
        np.testing.assert_array_equal(parallel.threaded_matmul(a, a), 64)
        OPENBLAS.set_num_threads(2)
        monkeypatch.setattr(parallel, "MIN_SPLIT_WORK", 4 * 64**3 + 1)  # just above this product
        np.testing.assert_array_equal(parallel.threaded_matmul(a, a), 64)
        assert splits == []
        monkeypatch.setattr(parallel, "MIN_SPLIT_WORK", 4 * 64**3)
        parallel.threaded_matmul(a, a)
        assert splits == [1]
    finally:
        OPENBLAS.set_num_threads(previous)


@needs_openblas
def test_concurrent_callers_get_correct_results(two_threads):
    rng = np.random.default_rng(1)
    pairs = [(uniform(rng, (6, 8, 5)), uniform(rng, (6, 5, 7))) for _ in range(4)]
    results = [None] * len(pairs)

    def work(i):
        for _ in range(20):
            results[i] = parallel.threaded_matmul(*pairs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(pairs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (a, b), out in zip(pairs, results, strict=True):
        np.testing.assert_array_equal(out, np.matmul(a, b))
    assert OPENBLAS.get_num_threads() == 2  # no caller left it at 1


@needs_openblas
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_can_split(two_threads):
    parallel.threaded_matmul(np.ones((4, 3, 3)), np.ones((4, 3, 3)))  # the parent's pool exists
    code = """
import os, sys
import numpy as np
from minisynth import parallel
parallel.MIN_SPLIT_WORK = 0
parallel.numpy_openblas().set_num_threads(2)
parallel.threaded_matmul(np.ones((4, 3, 3)), np.ones((4, 3, 3)))
pid = os.fork()
if pid == 0:
    ok = (parallel.threaded_matmul(np.ones((4, 3, 3)), np.ones((4, 3, 3))) == 3).all()
    os._exit(0 if ok else 1)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""
    proc = subprocess.run([sys.executable, "-c", code], timeout=60, capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()


# ------------------------------------------------------------------ causal products
def causal_map(rng, shape, dtype, block=None):
    """A random (..., T, T) map, zero above the diagonal; with ``block``, NaN in the blocks
    of ``block`` rows that lie wholly above the diagonal (the ones a causal product skips)."""
    L = uniform(rng, shape, dtype=dtype)
    T = shape[-1]
    i, j = np.indices((T, T))
    L[..., j > i] = 0.0
    if block is not None:
        L[..., j >= (i // block + 1) * block] = np.nan
    return L


@settings(deadline=None, max_examples=40)
@given(
    seed=seeds,
    dtype=dtypes,
    batch=st.sampled_from([(), (3,), (2, 3), (1, 2)]),
    broadcast_x=st.booleans(),
    T=st.integers(1, 9),
    n=st.integers(1, 4),
    block=st.integers(1, 4),
    transpose=st.booleans(),
    split=st.booleans(),
)
def test_kernel_causal_matmul_equals_its_twin(
    seed, dtype, batch, broadcast_x, T, n, block, transpose, split
):
    rng = np.random.default_rng(seed)
    L = causal_map(rng, batch + (T, T), dtype)
    x = uniform(rng, (tuple(1 for _ in batch) if broadcast_x else batch) + (T, n), dtype=dtype)
    before = snapshot(L, x)
    expected = layers.causal_matmul(L, x, transpose)
    threaded = splitting_everything(causal_block=block) if split else contextlib.nullcontext()
    with threaded, mock.patch.object(parallel, "CAUSAL_BLOCK", block):
        out = kernels.causal_matmul(L, x, transpose)
    np.testing.assert_allclose(out, expected, rtol=0, atol=4 * T * 4.0 * np.finfo(dtype).eps)
    assert out.shape == expected.shape and out.dtype == dtype
    assert_unchanged(before, [L, x])
    assert_no_aliasing([out], [L, x])
    # the blocks above the diagonal are skipped, never read: NaN there changes nothing
    L_nan = causal_map(np.random.default_rng(seed), batch + (T, T), dtype, block=block)
    threaded = splitting_everything(causal_block=block) if split else contextlib.nullcontext()
    with threaded, mock.patch.object(parallel, "CAUSAL_BLOCK", block):
        out_nan = kernels.causal_matmul(L_nan, x, transpose)
    if T > block:  # there is a skipped block: the twin, which reads it, gets NaN
        assert np.isnan(layers.causal_matmul(L_nan, x, transpose)).any()
    np.testing.assert_array_equal(out_nan, out)


@needs_openblas
def test_causal_products_split_the_batch(two_threads):
    rng = np.random.default_rng(3)
    L = causal_map(rng, (4, 2, 6, 6), np.float32)
    x = uniform(rng, (1, 2, 6, 3), dtype=np.float32)
    out = kernels.causal_matmul(L, x, True)
    assert two_threads == [1]
    np.testing.assert_allclose(out, layers.causal_matmul(L, x, True), rtol=0, atol=1e-5)


def test_causal_matmul_rejects_bad_input():
    for fn in (layers.causal_matmul, kernels.causal_matmul):
        with pytest.raises(ValueError, match="L must be square"):
            fn(np.ones((2, 3, 4)), np.ones((2, 4, 2)))
        with pytest.raises(ValueError, match="columns"):
            fn(np.ones((3, 3)), np.ones((4, 2)))
        with pytest.raises(TypeError, match="dtype"):
            fn(np.ones((3, 3)), np.ones((3, 2), dtype=np.float32))


# ------------------------------------------------------------- row kernels in chunks
@needs_openblas
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_kernels_split_over_threads_give_the_same_bits(dtype):
    """Layer norm and GELU on chunks of rows in two threads equal the one-thread run exactly
    (too small to split by default; dg and db are summed over the same row blocks)."""
    rng = np.random.default_rng(7)
    x = uniform(rng, (5, 70, 8), dtype=dtype)  # 350 rows: 6 blocks of ROW_BLOCK = 64
    g = uniform(rng, (8,), dtype=dtype)
    b = uniform(rng, (8,), dtype=dtype)
    dout = upstream(rng, x.shape, dtype)

    def run():
        out, cache = kernels.layernorm_forward(x, g, b)
        grads = kernels.layernorm_backward(dout, cache)
        gelu, gelu_cache = kernels.gelu_forward(x)
        return [out, *cache[:2], *grads, gelu, kernels.gelu_backward(dout, gelu_cache)]

    alone = run()
    with splitting_everything() as splits:
        threaded = run()
    assert len(splits) == 4  # every one of the four calls split
    for a, t in zip(alone, threaded, strict=True):
        np.testing.assert_array_equal(t, a)
