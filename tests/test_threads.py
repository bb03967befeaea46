"""minisynth.fast.threads: a batch split into shards run at once, and the fast path that uses it.

The shards must cover the batch in order, restore BLAS's thread count whatever
happens, and actually run in two threads when they say they do (otherwise the
parity tests of the fast path would hold vacuously).
"""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from helpers import BLAS, HAS_BLAS, two_shards
from hypothesis import given, settings
from hypothesis import strategies as st

from minisynth import ModelConfig, SynthesizerLM, fast
from minisynth.fast import threads

needs_blas = pytest.mark.skipif(not HAS_BLAS, reason="no BLAS that threadpoolctl controls")


def test_threadpoolctl_finds_numpys_blas():
    """On this project's machines NumPy's wheel brings OpenBLAS; threadpoolctl finds it."""
    assert HAS_BLAS
    numpy_dir = os.path.realpath(os.path.dirname(np.__file__))
    infos = threads.blas_info()
    assert any(os.path.realpath(i["filepath"]).startswith(numpy_dir) for i in infos), infos
    assert threads.thread_count() >= 1
    assert all(i["version"] and i["internal_api"] for i in infos)  # what benchmarks print


@needs_blas
@given(n=st.integers(1, 9))
@settings(deadline=None, max_examples=10)
def test_shards_cover_the_batch_in_order_on_single_threaded_blas(n):
    with two_shards() as splits:
        seen = threads.run_sharded(lambda lo, hi: (lo, hi, threads.thread_count()), n)
        assert threads.thread_count() == 2  # restored
    bounds = [(lo, hi) for lo, hi, _ in seen]
    assert bounds == ([(0, n // 2), (n // 2, n)] if n >= 2 else [(0, 1)])
    if n >= 2:
        assert splits and all(blas == 1 for *_, blas in seen)


@needs_blas
def test_thread_count_is_restored_when_a_shard_fails():
    def fails_off_the_main_thread(lo, hi):
        if threading.current_thread() is not threading.main_thread():
            raise FloatingPointError("injected")
        return lo

    with two_shards():
        with pytest.raises(FloatingPointError, match="injected"):
            threads.run_sharded(fails_off_the_main_thread, 4)
        assert threads.thread_count() == 2
        assert threads.run_sharded(lambda lo, hi: hi - lo, 4) == [2, 2]


@needs_blas
def test_one_blas_thread_does_not_split(monkeypatch):
    splits = []
    real_workers = threads._workers
    monkeypatch.setattr(threads, "_workers", lambda n: splits.append(n) or real_workers(n))
    with BLAS.limit(limits=1):  # e.g. OPENBLAS_NUM_THREADS=1: the user asked for one
        assert threads.run_sharded(lambda lo, hi: (lo, hi), 8) == [(0, 8)]
    assert splits == []


@needs_blas
def test_concurrent_callers_get_correct_results():
    results = [None] * 4

    def work(i):
        for _ in range(20):
            results[i] = threads.run_sharded(lambda lo, hi: sum(range(lo, hi)) * i, 10)

    with two_shards():
        callers = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in callers:
            t.start()
        for t in callers:
            t.join()
        assert threads.thread_count() == 2  # no caller left it at 1
    assert [sum(r) for r in results] == [45 * i for i in range(4)]


@needs_blas
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_can_split():
    code = """
import os, sys
from minisynth.fast import threads
threads.blas().limit(limits=2)
threads.run_sharded(lambda lo, hi: hi - lo, 4)  # the parent's pool exists
pid = os.fork()
if pid == 0:
    ok = threads.run_sharded(lambda lo, hi: hi - lo, 4) == [2, 2]
    os._exit(0 if ok else 1)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""
    proc = subprocess.run([sys.executable, "-c", code], timeout=60, capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast_logits_equal_the_reference_forward(dtype):
    config = ModelConfig(d_model=16, n_heads=2, n_layers=2, max_len=8)
    model = SynthesizerLM(config, dtype=dtype)
    fast_model = SynthesizerLM(config, dtype=dtype, backend="numba")
    idx = np.random.default_rng(0).integers(0, 256, size=(5, 8))
    expected = model.forward(idx)
    with two_shards() as splits:
        got = fast.logits(fast_model, idx)
    assert splits  # the fast path split the batch
    with two_shards() as splits:
        fast.logits(model, idx)
    assert not splits  # a reference model runs whole, in the calling thread
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, expected, rtol=tol, atol=tol)
