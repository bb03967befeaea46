"""The fast path's threads: a batch split into shards, one shard per thread.

A training step is a few hundred NumPy and Numba calls on arrays of the whole
batch. On 2 cores, letting OpenBLAS split each product over its threads helps
little for attention's many small per-head products (OpenBLAS synchronises its
threads for every one of them), and elementwise kernels run on one core. Here the
*batch* is split instead: each thread runs the whole reference forward and
backward (:meth:`SynthesizerLM.loss_and_grads`) on its shard of the rows, with
NumPy's OpenBLAS single-threaded, and the shards' losses and gradients are
averaged with their shares of the batch as weights. NumPy's ufuncs and BLAS and
the ``nogil`` Numba kernels release the GIL, so the shards run in parallel.

The mean cross-entropy of the batch is the weighted mean of the shards' means,
so the result is the unsplit one up to float rounding (the order of the sums
changes). The calling thread takes the first shard and a ``ThreadPoolExecutor``
the others. BLAS's thread count is a process-wide setting, so it is lowered to 1
only while shards run, under a lock, and restored after; threadpoolctl finds the
BLAS libraries and sets their counts (OpenBLAS, MKL and BLIS alike). The number of
threads is BLAS's own count, so ``OPENBLAS_NUM_THREADS=1`` (or ``MKL_NUM_THREADS=1``)
turns splitting off. Where threadpoolctl finds no BLAS it can control, nothing
splits: so on macOS with NumPy on Apple's Accelerate (which threadpoolctl cannot
control), every batch runs whole in one thread and Accelerate threads its own
products.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

from threadpoolctl import ThreadpoolController

_blas = None  # threadpoolctl's controller of the BLAS libraries loaded, made on first use
_split_lock = threading.Lock()  # one split at a time owns the pool and the BLAS thread count
_pool = None  # ThreadPoolExecutor with (threads - 1) workers; the caller is the last thread
_pool_size = 0


def blas():
    """threadpoolctl's controller of the BLAS libraries loaded in this process (NumPy's among
    them: OpenBLAS, MKL or BLIS), restricted to BLAS; found once, on first use."""
    global _blas
    if _blas is None:
        # SciPy's BLAS is another library than NumPy's; Numba's np.dot (the tiled
        # attention's products) calls it. Loaded now, so that it is controlled too.
        import scipy.linalg.cython_blas  # noqa: F401

        _blas = ThreadpoolController().select(user_api="blas")
    return _blas


def blas_info():
    """One dict per BLAS library found (threadpoolctl's: ``internal_api``, ``version``,
    ``num_threads``, ``architecture``, ``filepath``, ...), for benchmarks to print."""
    return blas().info()


def _reset_after_fork():
    # a forked child has no pool threads, and the lock may have been held mid-split
    global _pool, _pool_size, _split_lock
    _pool, _pool_size, _split_lock = None, 0, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _workers(n):
    global _pool, _pool_size
    if _pool is None or _pool_size != n:
        if _pool is not None:
            _pool.shutdown(wait=True)
        _pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="minisynth")
        _pool_size = n
    return _pool


def thread_count():
    """Threads a split uses: the BLAS libraries' thread count, or 1 when none is found."""
    return max((lib.num_threads for lib in blas().lib_controllers), default=1)


def _run_shares(threads, shares):
    """Run the zero-argument callables ``shares`` at once, the caller taking the first.

    BLAS is single-threaded meanwhile, and its thread count restored after,
    whatever happens. Returns False, having run nothing, if another split
    holds the lock (a nested or concurrent split runs serially instead).
    """
    if not _split_lock.acquire(blocking=False):
        return False
    try:
        with blas().limit(limits=1):  # restores the libraries' thread counts on exit
            futures = [_workers(threads - 1).submit(share) for share in shares[1:]]
            shares[0]()
            wait(futures)  # all shares done before the thread count is restored
            for future in futures:
                future.result()  # re-raises a worker's exception here
        return True
    finally:
        _split_lock.release()


def shard_bounds(n, parts):
    """parts + 1 increasing integers from 0 to n: contiguous, near-equal shards."""
    return [n * i // parts for i in range(parts + 1)]


def run_sharded(work, n):
    """``[work(lo, hi) for each shard]`` of ``range(n)``, the shards run at once.

    One shard per thread (:func:`thread_count`, at most n); a single shard runs
    ``work(0, n)`` in the calling thread, as does a call made while another split
    runs (nested or concurrent callers run serially instead).
    """
    threads = min(thread_count(), n)
    if threads >= 2:
        bounds = shard_bounds(n, threads)
        results = [None] * threads

        def shard(i):
            def run():
                results[i] = work(bounds[i], bounds[i + 1])

            return run

        if _run_shares(threads, [shard(i) for i in range(threads)]):
            return results
    return [work(0, n)]
