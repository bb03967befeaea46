"""The Numba path's threads: matrix products and row kernels split over a small pool.

Attention multiplies B*H small matrices at a time (q @ k^T is 128 products of
256 x 32 by 32 x 256 at the benchmark size). ``np.matmul`` loops over them and
calls OpenBLAS once per matrix; OpenBLAS splits every one of those small
products over its threads and synchronises them each time, so on 2 cores a
batched product is hardly faster than on one (measured: 10.0 ms on 2 threads,
10.7 ms on 1). Splitting the *batch* instead, each Python thread running its
share through single-threaded BLAS (``np.matmul`` releases the GIL while it
computes), takes 6.4 ms.

* :func:`threaded_matmul`: ``a @ b`` with the batch (or the rows) split.
* :func:`threaded_causal_matmul`: ``L @ x`` or ``L^T @ x`` for causal maps L
  (zero above the diagonal), in row blocks that leave out the zero half.
* :func:`run_chunks`: a ``nogil`` Numba kernel (or NumPy ufuncs) on chunks of
  rows, one chunk per thread.

The calling thread takes the first share and a ``ThreadPoolExecutor`` the
others. OpenBLAS's thread count is a process-wide setting, so it is lowered to
1 only while a split runs, under a lock, and restored after (a pair of calls
costs about 1 microsecond). The number of threads is OpenBLAS's own count, so
``OPENBLAS_NUM_THREADS=1`` turns splitting off. Once a product has run on
several OpenBLAS threads, OpenBLAS's idle workers keep spinning for a while and
take a core from the next split: that slowed a whole training step by a third,
so every product of a training step goes through this module.

When NumPy's BLAS is not an OpenBLAS whose thread count this module can find
(another BLAS, an unusual build, a platform without the library files it looks
for), nothing splits: plain ``np.matmul`` and one thread, same results. A batch
split changes no result bit (each output matrix is the same BLAS call); a row
split or a causal product may change the last bits (tested against the
NumPy twins to rounding).
"""

from __future__ import annotations

import ctypes
import functools
import glob
import itertools
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

# Below this much work a split costs more (thread hand-off, ~50 us) than it saves:
MIN_SPLIT_WORK = 1 << 20  # multiply-adds of a matrix product
MIN_SPLIT_ELEMENTS = 1 << 16  # array elements of a row-wise kernel (run_chunks)
# Row blocks of a causal product (threaded_causal_matmul): smaller blocks skip more of
# the zero half, but give BLAS smaller products; 64 was fastest at T = 256 (2.5 ms
# for a product the full square takes 5.8 ms, one thread).
CAUSAL_BLOCK = 64
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
        blas.set_num_threads(1)
        try:
            futures = [_workers(threads - 1).submit(share) for share in shares[1:]]
            shares[0]()
            wait(futures)  # all shares done before the thread count is restored
            for future in futures:
                future.result()  # re-raises a worker's exception here
        finally:
            blas.set_num_threads(threads)
        return True
    finally:
        _split_lock.release()


def _bounds(n, parts):
    """parts + 1 increasing integers from 0 to n: contiguous, near-equal chunks."""
    return [n * i // parts for i in range(parts + 1)]


def run_chunks(n, work, work_per_item=1, products=False):
    """Call ``work(lo, hi)`` on contiguous chunks covering ``range(n)``, one per thread, at once.

    ``work`` must release the GIL to gain anything (a ``nogil`` Numba kernel,
    NumPy's ufuncs and matmul) and must write only what belongs to its chunk.
    NumPy's OpenBLAS is single-threaded meanwhile. Runs ``work(0, n)`` in the
    calling thread when there is one thread, fewer than two items, too little
    work (``n * work_per_item`` below :data:`MIN_SPLIT_ELEMENTS`, or below
    :data:`MIN_SPLIT_WORK` multiply-adds with ``products``), or while another
    split is running.
    """
    threads = min(thread_count(), n)
    floor = MIN_SPLIT_WORK if products else MIN_SPLIT_ELEMENTS
    if threads >= 2 and n * work_per_item >= floor:
        bounds = _bounds(n, threads)
        shares = [functools.partial(work, lo, hi) for lo, hi in itertools.pairwise(bounds)]
        if _run_shares(threads, shares):
            return
    work(0, n)


def _split_axis(shape):
    """The axis of the output ``shape`` to split: the longest batch axis, else rows, else columns.

    None when no candidate has two entries.
    """
    batch = shape[:-2]
    if batch and max(batch) >= 2:
        return int(np.argmax(batch))
    for axis in (len(shape) - 2, len(shape) - 1):  # rows of a, then columns of b
        if shape[axis] >= 2:
            return axis
    return None


def threaded_matmul(a, b):
    """``np.matmul(a, b)`` for 2-D or stacked matrices, split over threads.

    a (..., m, k), b (..., k, n) with broadcastable leading dimensions; returns a
    fresh (..., m, n) array equal to ``a @ b``. The split takes the longest batch
    axis, or for plain matrices the rows of ``a`` (else the columns of ``b``), so
    every output element is still one BLAS dot product over all of k. Splits only
    when NumPy's OpenBLAS is found and set to more than one thread, no other split
    is running, and the product is large enough to pay for the hand-off (see
    :func:`run_chunks`).
    """
    if a.ndim < 2 or b.ndim < 2:
        return np.matmul(a, b)  # vectors: nothing worth splitting
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    m, k = a.shape[-2:]
    n = b.shape[-1]
    shape = batch + (m, n)
    axis = _split_axis(shape)
    if axis is None or thread_count() < 2:
        return np.matmul(a, b)
    out = np.empty(shape, dtype=np.result_type(a, b))  # (..., m, n)
    a = np.broadcast_to(a, batch + (m, k))  # (..., m, k) views: no copies
    b = np.broadcast_to(b, batch + (k, n))  # (..., k, n)

    def share(lo, hi):
        part = (slice(None),) * axis + (slice(lo, hi),)  # of the output
        if axis < len(batch):  # a batch axis: both operands follow
            np.matmul(a[part], b[part], out=out[part])
        elif axis == len(batch):  # rows: a's rows, all of b
            np.matmul(a[part], b, out=out[part])
        else:  # columns: all of a, b's columns
            np.matmul(a, b[part], out=out[part])

    run_chunks(shape[axis], share, work_per_item=math.prod(shape) // shape[axis] * k, products=True)
    return out


def _causal_blocks(L, x, out, transpose):
    """out = L @ x (L^T @ x if ``transpose``) for L (..., T, T) zero above the diagonal.

    Works in row blocks of :data:`CAUSAL_BLOCK` and leaves out the zero blocks.
    """
    T = L.shape[-1]
    for lo in range(0, T, CAUSAL_BLOCK):
        hi = min(lo + CAUSAL_BLOCK, T)
        if transpose:  # (L^T x)[j] = sum over i >= j of L[i, j] x[i]
            np.matmul(L[..., lo:, lo:hi].swapaxes(-1, -2), x[..., lo:, :], out=out[..., lo:hi, :])
        else:  # (L x)[i] = sum over j <= i of L[i, j] x[j]
            np.matmul(L[..., lo:hi, :hi], x[..., :hi, :], out=out[..., lo:hi, :])


def threaded_causal_matmul(L, x, transpose=False):
    """``L @ x`` (``L^T @ x`` if ``transpose``) for causal maps L (..., T, T), split over threads.

    L must be zero above the diagonal; blocks wholly above it are never read. x is
    (..., T, n) and leading dimensions broadcast. The longest batch axis is split
    over the threads (:func:`run_chunks`); without one, it runs in this thread.
    """
    T, n = L.shape[-1], x.shape[-1]
    batch = np.broadcast_shapes(L.shape[:-2], x.shape[:-2])
    out = np.empty(batch + (T, n), dtype=np.result_type(L, x))  # (..., T, n)
    L = np.broadcast_to(L, batch + (T, T))  # (..., T, T) views: no copies
    x = np.broadcast_to(x, batch + (T, n))  # (..., T, n)
    if not batch:
        _causal_blocks(L, x, out, transpose)
        return out
    axis = int(np.argmax(batch))

    def share(lo, hi):
        part = (slice(None),) * axis + (slice(lo, hi),)
        _causal_blocks(L[part], x[part], out[part], transpose)

    run_chunks(
        batch[axis], share, work_per_item=math.prod(out.shape) // batch[axis] * T, products=True
    )
    return out
