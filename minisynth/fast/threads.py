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
the others. OpenBLAS's thread count is a process-wide setting, so it is lowered
to 1 only while shards run, under a lock, and restored after. The number of
threads is OpenBLAS's own count, so ``OPENBLAS_NUM_THREADS=1`` turns splitting
off; where NumPy's BLAS is not an OpenBLAS this module can find, nothing splits.
"""

from __future__ import annotations

import ctypes
import glob
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

# Symbol pairs (set, get) NumPy's bundled OpenBLAS may export, newest naming first.
_THREAD_SYMBOLS = [
    (f"{prefix}set_num_threads{suffix}", f"{prefix}get_num_threads{suffix}")
    for prefix in ("scipy_openblas_", "openblas_")
    for suffix in ("64_", "")
]


class OpenBLAS:
    """NumPy's OpenBLAS library: its file, config, run-time core and thread-count functions."""

    def __init__(self, path, set_threads, get_threads, config, corename):
        self.path = path
        self.config = config  # e.g. "OpenBLAS 0.3.31 USE64BITINT DYNAMIC_ARCH ..."
        self.corename = corename  # the kernel set picked for this CPU, e.g. "SkylakeX"
        self._set = set_threads
        self._get = get_threads

    def get_num_threads(self):
        return int(self._get())

    def set_num_threads(self, n):
        self._set(int(n))


def _numpy_library_dirs():
    """Where NumPy wheels keep their bundled shared libraries (Linux, macOS, Windows)."""
    package = os.path.dirname(np.__file__)
    return [package + ".libs", os.path.join(package, ".dylibs"), package]


def _candidate_paths():
    """OpenBLAS files of NumPy: those already loaded (from /proc/self/maps), else on disk."""
    dirs = tuple(os.path.realpath(d) + os.sep for d in _numpy_library_dirs())
    loaded = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1]
                if "openblas" in path.lower() and os.path.realpath(path).startswith(dirs):
                    loaded.append(path)  # scipy's own OpenBLAS lives elsewhere: not ours
    except OSError:
        pass
    on_disk = [p for d in _numpy_library_dirs() for p in glob.glob(os.path.join(d, "*openblas*"))]
    return list(dict.fromkeys(loaded + sorted(on_disk)))


def _load_openblas():
    for path in _candidate_paths():
        try:
            lib = ctypes.CDLL(path)  # already loaded by NumPy: the same handle, no second copy
        except OSError:
            continue
        for set_name, get_name in _THREAD_SYMBOLS:
            set_threads = getattr(lib, set_name, None)
            get_threads = getattr(lib, get_name, None)
            if set_threads is None or get_threads is None:
                continue
            set_threads.argtypes, set_threads.restype = [ctypes.c_int], None
            get_threads.argtypes, get_threads.restype = [], ctypes.c_int
            config, corename = (
                _string_function(lib, get_name.replace("get_num_threads", what))
                for what in ("get_config", "get_corename")
            )
            return OpenBLAS(path, set_threads, get_threads, config, corename)
    return None


def _string_function(lib, name):
    """What the library's ``char *name(void)`` returns, whitespace-normalised ("" if absent)."""
    fn = getattr(lib, name, None)
    if fn is None:
        return ""
    fn.restype = ctypes.c_char_p
    return " ".join(fn().decode(errors="replace").split())


_openblas = None
_openblas_checked = False
_split_lock = threading.Lock()  # one split at a time owns the pool and the BLAS thread count
_pool = None  # ThreadPoolExecutor with (threads - 1) workers; the caller is the last thread
_pool_size = 0


def numpy_openblas():
    """NumPy's OpenBLAS (an :class:`OpenBLAS`), or None if it cannot be found."""
    global _openblas, _openblas_checked
    if not _openblas_checked:
        _openblas_checked = True
        _openblas = _load_openblas()
    return _openblas


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
    """Threads a split uses: NumPy's OpenBLAS thread count, or 1 when it cannot be found."""
    blas = numpy_openblas()
    return blas.get_num_threads() if blas is not None else 1


def _run_shares(threads, shares):
    """Run the zero-argument callables ``shares`` at once, the caller taking the first.

    NumPy's OpenBLAS is single-threaded meanwhile, and its thread count restored
    after, whatever happens. Returns False, having run nothing, if another split
    holds the lock (a nested or concurrent split runs serially instead).
    """
    if not _split_lock.acquire(blocking=False):
        return False
    try:
        blas = numpy_openblas()
        before = blas.get_num_threads()
        blas.set_num_threads(1)
        try:
            futures = [_workers(threads - 1).submit(share) for share in shares[1:]]
            shares[0]()
            wait(futures)  # all shares done before the thread count is restored
            for future in futures:
                future.result()  # re-raises a worker's exception here
        finally:
            blas.set_num_threads(before)
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
