"""Shared test helpers: random inputs, upstream gradients, purity and gradient assertions."""

import contextlib
from unittest import mock

import numpy as np
from hypothesis import strategies as st

from minisynth.fast import causal, kernels, threads
from minisynth.gradcheck import DEFAULT_STEP, numerical_gradient_array, rel_error

# command-line sizes of a model that trains in a fraction of a second
TINY_MODEL_ARGS = ["--d-model", "16", "--n-heads", "2", "--n-layers", "1", "--max-len", "16",
                   "--batch-size", "4"]  # fmt: skip
GRAD_TOL = 1e-7
ZERO_GRAD = 1e-7  # below this norm a finite-difference gradient is rounding noise
# Below this norm of (analytic - numeric) the two agree to rounding noise, however small
# the gradient: a tiny but nonzero gradient (norm ~1e-6) has a relative error dominated by
# the ~1e-12 noise of float64 finite differences. A wrong gradient misses by far more.
ROUNDOFF_DIFF = 1e-11
seeds = st.integers(min_value=0, max_value=2**32 - 1)


def uniform(rng, shape, low=-2.0, high=2.0, dtype=np.float64):
    """Bounded values (no subnormals, no infinities)."""
    return rng.uniform(low, high, size=shape).astype(dtype)


def upstream(rng, shape, dtype=np.float64):
    """A random upstream gradient; never constant, so softmax/layernorm checks are not vacuous."""
    dout = rng.standard_normal(shape).astype(dtype)
    assert dout.size < 2 or np.ptp(dout) > 0
    return dout


def snapshot(*arrays):
    return [np.array(a, copy=True) for a in arrays]


def assert_unchanged(before, after):
    for i, (b, a) in enumerate(zip(before, after, strict=True)):
        np.testing.assert_array_equal(a, b, err_msg=f"argument {i} was mutated")


def assert_no_aliasing(grads, others=()):
    """No gradient shares memory with another gradient or with any input, dout or cache array."""
    grads = [g for g in grads if isinstance(g, np.ndarray)]
    for i, g in enumerate(grads):
        for j, h in enumerate(grads):
            if i < j:
                assert not np.shares_memory(g, h), f"gradients {i} and {j} share memory"
        for k, o in enumerate(others):
            if isinstance(o, np.ndarray):
                assert not np.shares_memory(g, o), f"gradient {i} shares memory with input {k}"


def assert_gradients_match(forward, wrt, analytic, dout, tol=GRAD_TOL, h=DEFAULT_STEP):
    """For each named array in ``wrt``, compare the analytic gradient with central differences.

    ``forward()`` recomputes the output from the (in-place perturbed) arrays.
    """
    assert set(wrt) == set(analytic), (sorted(wrt), sorted(analytic))
    for name, arr in wrt.items():
        numeric = numerical_gradient_array(forward, arr, dout, h=h)
        assert_gradient_close(name, analytic[name], numeric, tol)


def assert_gradient_close(name, analytic, numeric, tol=GRAD_TOL):
    """Relative error <= tol, or both negligible where the exact gradient is zero."""
    if np.linalg.norm(numeric) < ZERO_GRAD:
        # a gradient that is zero in exact arithmetic (e.g. the key bias, which shifts a
        # whole softmax row): relative error of two rounding noises means nothing, so
        # the analytic gradient must be just as negligible
        norm = np.linalg.norm(analytic)
        assert norm < ZERO_GRAD, f"gradient of {name}: {norm:.3e} where finite differences give 0"
        return
    if np.linalg.norm(analytic - numeric) <= ROUNDOFF_DIFF:
        return
    err = rel_error(analytic, numeric)
    assert err <= tol, f"gradient of {name}: relative error {err:.3e} > {tol}"


BLAS = threads.blas()  # threadpoolctl's controller of the BLAS libraries NumPy loaded
HAS_BLAS = bool(BLAS.lib_controllers)


@contextlib.contextmanager
def two_shards():
    """BLAS on 2 threads, so the fast path splits every batch of two or more rows,
    attention maps in steps of one and causal products in blocks of 2 rows (so tiny
    test shapes take full-size training's paths);
    yields the list of thread-pool sizes used. Without a BLAS threadpoolctl can
    control nothing splits: the list stays empty, and tests that need a split should skip."""
    splits = []
    if not HAS_BLAS:
        yield splits
        return
    real_workers = threads._workers
    with (
        BLAS.limit(limits=2),  # restores the thread count on exit
        mock.patch.object(kernels, "CACHE_BYTES", 1),
        mock.patch.object(causal, "CAUSAL_BLOCK", 2),
        mock.patch.object(threads, "_workers", lambda n: splits.append(n) or real_workers(n)),
    ):
        yield splits
