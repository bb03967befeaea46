"""Make glibc's malloc keep and reuse freed memory during training.

A training step allocates and frees the same large temporaries every step
(activations, attention maps of B x H x T x T floats). With glibc's default
settings, freed blocks above its dynamic mmap threshold go back to the
operating system, and so does the free memory at the top of the heap beyond
128 kB, so the next step page-faults on fresh, zero-filled pages (what that
costs: ``benchmarks/bench_train.py --malloc default``, and BENCHMARKS.md).

:func:`reuse_freed_memory` makes three ``mallopt`` calls:

* ``M_MMAP_MAX = 0``: no block is served by its own ``mmap``; every block,
  however large, comes from the heap and goes back to it when freed. Raising
  the mmap threshold instead is not enough: glibc caps it at 32 MiB, and one
  attention map of the benchmark model (16 x 8 x 256 x 256 float32) is
  33.5 MB, so with the cap every map would still be page-faulted anew.
* ``M_TRIM_THRESHOLD = 1 GiB``: freed memory at the top of the heap is kept
  for reuse instead of being trimmed.
* ``M_ARENA_MAX = 1``: every thread allocates from the one heap. By default each
  thread gets its own arena; with nothing given back, the shard threads
  (:mod:`minisynth.fast.threads`) would each keep their own peak, and what one
  thread frees the other could not reuse: a step's peak memory then varied from
  process to process (T = 2048 in BENCHMARKS.md: 430 MB in most processes, up to
  520 MB in some), and with one arena it does not. The allocations are few and large,
  so the one lock costs nothing measurable.

The process then keeps its peak heap size until it exits, which a training run
reaches in its first step anyway.

The setting is process-wide, so the library never applies it on import; the
``minisynth`` command does (set ``MINISYNTH_MALLOC=default`` to opt out), and
so can an application that trains in-process. On other C libraries it does
nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1  # from glibc's malloc.h
M_MMAP_MAX = -4
M_ARENA_MAX = -8
MMAP_MAX_BLOCKS = 0  # no block gets its own mmap: all come from (and return to) the heap
TRIM_THRESHOLD_BYTES = 1024 * 1024 * 1024
ARENAS = 1  # one heap for every thread
OPT_OUT_VARIABLE = "MINISYNTH_MALLOC"


def reuse_freed_memory():
    """Tune glibc's malloc as described in the module docstring (three ``mallopt`` calls);
    True if it was applied.

    Returns False (and changes nothing) off Linux, on a C library without
    ``mallopt`` or refusing the values, or when ``MINISYNTH_MALLOC=default``.
    """
    if os.environ.get(OPT_OUT_VARIABLE, "").strip().lower() == "default":
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success, 0 on error
    settings = ((M_MMAP_MAX, MMAP_MAX_BLOCKS), (M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
                (M_ARENA_MAX, ARENAS))  # fmt: skip
    return all([bool(mallopt(option, value)) for option, value in settings])
