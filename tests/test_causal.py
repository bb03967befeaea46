"""minisynth.fast.causal: products with causal maps skip the zero half.

The maps below carry NaN in every block that a product must skip, so a product that
read one would give NaN; the references multiply the same maps with the NaN set to 0.
"""

from unittest import mock

import numpy as np
import pytest
from helpers import uniform
from hypothesis import given, settings
from hypothesis import strategies as st

from minisynth.fast import causal, kernels

BLOCK = 2


def poisoned_map(rng, shape, dtype=np.float64):
    """(zeroed, poisoned): a map zero above the diagonal, and the same map with NaN in the
    blocks of BLOCK rows wholly above the diagonal (the ones a product skips)."""
    L = uniform(rng, shape, dtype=dtype)
    T = shape[-1]
    i, j = np.indices((T, T))
    L[..., j > i] = 0.0
    poisoned = L.copy()
    poisoned[..., j >= (i // BLOCK + 1) * BLOCK] = np.nan
    return L, poisoned


shapes = st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(2, 9), st.integers(1, 4))


@settings(deadline=None, max_examples=30)
@given(
    shape=shapes, seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from([np.float32, np.float64])
)
def test_every_product_form_skips_the_zero_blocks(shape, seed, dtype):
    B, H, T, n = shape
    rng = np.random.default_rng(seed)
    L, poisoned = poisoned_map(rng, (B, H, T, T), dtype)
    x = uniform(rng, (B, H, T, n), dtype=dtype)  # (B,H,T,n)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    with mock.patch.object(causal, "CAUSAL_BLOCK", BLOCK):
        cases = {
            "L @ x": (causal.causal_product(poisoned, x), L @ x),
            "L^T @ x": (causal.causal_product(poisoned, x, transpose=True), L.swapaxes(-1, -2) @ x),
            "broadcast": (causal.causal_product(poisoned, x[:1]), L @ x[:1]),
            "outer": (
                np.where(np.tri(T, dtype=bool), causal.causal_outer(x, x), 0.0),
                np.tril(x @ x.swapaxes(-1, -2)),
            ),
        }
        for what, (got, want) in cases.items():
            assert type(got) is np.ndarray, what
            np.testing.assert_allclose(got, want, err_msg=what, **tol)


def test_the_logit_gradient_leaves_the_fast_path_as_a_plain_array():
    """The kinds' backward passes multiply dS with NumPy's own ``@``: no subclass, no mark."""
    rng = np.random.default_rng(0)
    S = uniform(rng, (2, 3, 5, 5))
    v = uniform(rng, (2, 3, 5, 4))
    _, cache = kernels.attention_core_forward(S, v, True)
    dS, dv = kernels.attention_core_backward(uniform(rng, (2, 3, 5, 4)), cache)
    assert type(dS) is np.ndarray and type(dv) is np.ndarray
    assert not [name for name in vars(causal) if isinstance(vars(causal)[name], type)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_causal_product_matches_the_full_product(dtype):
    rng = np.random.default_rng(2)
    L, poisoned = poisoned_map(rng, (3, 7, 7), dtype)
    x = uniform(rng, (3, 7, 4), dtype=dtype)
    with mock.patch.object(causal, "CAUSAL_BLOCK", BLOCK):
        np.testing.assert_allclose(causal.causal_product(poisoned, x), L @ x, rtol=1e-5)
        np.testing.assert_allclose(
            causal.causal_product(poisoned, x, transpose=True), L.swapaxes(-1, -2) @ x, rtol=1e-5
        )
