"""Parity of the Numba attention core with its reference (forward and backward).

The reference is the function each kernel names (``kernel.reference``), never a
module attribute that something could have rebound.
"""

import contextlib

import numpy as np
import pytest
from helpers import (
    assert_no_aliasing,
    assert_unchanged,
    seeds,
    snapshot,
    two_shards,
    uniform,
    upstream,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from minisynth import layers
from minisynth.fast import kernels

core_forward = kernels.attention_core_forward
core_backward = kernels.attention_core_backward
reference_forward = core_forward.reference
reference_backward = core_backward.reference

TOL = {np.float64: dict(rtol=1e-12, atol=1e-12), np.float32: dict(rtol=2e-5, atol=2e-6)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(
    B=st.integers(1, 3),
    H=st.integers(1, 3),
    T=st.integers(1, 9),
    hs=st.integers(1, 5),
    shared=st.booleans(),
    causal=st.booleans(),
    split=st.booleans(),
    seed=seeds,
)
@settings(deadline=None)
def test_attention_core_matches_reference(dtype, B, H, T, hs, shared, causal, split, seed):
    """``split``: the softmax passes one map at a time, as full-size maps take them."""
    rng = np.random.default_rng(seed)
    S = uniform(rng, (H, T, T) if shared else (B, H, T, T), -4, 4, dtype)
    v = uniform(rng, (B, H, T, hs), dtype=dtype)
    do = upstream(rng, (B, H, T, hs), dtype)
    o_ref, ref_cache = reference_forward(S, v, causal)
    p_ref = ref_cache.probs
    threaded = two_shards if split else contextlib.nullcontext
    with threaded():
        o, cache = core_forward(S, v, causal)
    p = cache.probs
    assert (cache.shared, cache.causal) == (ref_cache.shared, ref_cache.causal) == (shared, causal)
    assert o.dtype == p.dtype == dtype
    np.testing.assert_allclose(p, p_ref, **TOL[dtype])
    np.testing.assert_allclose(o, o_ref, **TOL[dtype])
    if causal:
        assert np.all(p[..., np.triu_indices(T, 1)[0], np.triu_indices(T, 1)[1]] == 0)
    before = snapshot(do, p_ref, v)
    dS_ref, dv_ref = reference_backward(do, ref_cache)
    with threaded():
        dS, dv = core_backward(do, ref_cache)
    assert_unchanged(before, [do, p_ref, v])
    assert_no_aliasing([dS, dv], [do, p_ref, v])
    assert dS.shape == S.shape and dv.shape == v.shape
    np.testing.assert_allclose(dS, dS_ref, **TOL[dtype])
    np.testing.assert_allclose(dv, dv_ref, **TOL[dtype])


@pytest.mark.parametrize("shared", [False, True])
def test_causal_blocks_above_the_diagonal_are_never_read(shared):
    """NaN in the blocks of 2 rows wholly above the diagonal of P changes nothing."""
    rng = np.random.default_rng(0)
    B, H, T, hs = 2, 2, 7, 3
    S = uniform(rng, (H, T, T) if shared else (B, H, T, T), -4, 4)
    v = uniform(rng, (B, H, T, hs))
    do = upstream(rng, (B, H, T, hs))
    o_ref, ref_cache = reference_forward(S, v, True)
    probs = ref_cache.probs
    dS_ref, dv_ref = reference_backward(do, ref_cache)
    i, j = np.indices((T, T))
    poisoned = np.array(probs)  # (B,H,T,T) a writable copy
    poisoned[..., j >= (i // 2 + 1) * 2] = np.nan  # the skipped blocks
    if shared:  # one map for the whole batch, as the forward returns it
        poisoned = np.broadcast_to(poisoned[0], probs.shape)
    with two_shards():
        dS, dv = core_backward(do, ref_cache._replace(probs=poisoned))
        o, _ = core_forward(S, v, True)
    np.testing.assert_allclose(dS, dS_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dv, dv_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(o, o_ref, rtol=1e-12, atol=1e-12)


def test_the_references_are_the_functions_of_minisynth_layers():
    """What this file compares with is the math a learner reads, not a twin of it."""
    for reference, kernel in (
        (reference_forward, core_forward),
        (reference_backward, core_backward),
    ):
        assert reference.__code__.co_filename == layers.__file__
        assert reference is getattr(layers, kernel.__name__)  # and nothing rebound the module's
        assert kernel.__code__.co_filename != layers.__file__
