"""Gradient checks of minisynth.layers: the reference, the math a learner reads.

Every function called here is the one written in ``minisynth/layers.py`` (the first
test says so); the Numba twins are held to these in ``test_kernels.py``.
"""

import math

import numpy as np
import pytest
from helpers import (
    assert_gradients_match,
    assert_no_aliasing,
    assert_unchanged,
    seeds,
    snapshot,
    uniform,
    upstream,
)
from hypothesis import given
from hypothesis import strategies as st

from minisynth import layers

batch = st.integers(1, 3)
time = st.integers(1, 5)  # T = 1 included
width = st.integers(1, 6)


def test_the_functions_checked_here_are_written_in_layers_py():
    called = [
        layers.linear_forward,
        layers.layernorm_backward,
        layers.gelu_backward,
        layers.softmax_backward,
        layers.cross_entropy_backward,
        layers.embedding_backward,
    ]
    assert {fn.__code__.co_filename for fn in called} == {layers.__file__}


# ------------------------------------------------------------------ gradient properties
@given(B=batch, T=time, D=width, F=width, seed=seeds)
def test_linear_gradients(B, T, D, F, seed):
    rng = np.random.default_rng(seed)
    x, W, b = uniform(rng, (B, T, D)), uniform(rng, (D, F)), uniform(rng, (F,))
    out, cache = layers.linear_forward(x, W, b)
    assert out.shape == (B, T, F)
    dout = upstream(rng, out.shape)
    before = snapshot(x, W, b, dout, *cache)
    dx, dW, db = layers.linear_backward(dout, cache)
    assert_unchanged(before, [x, W, b, dout, *cache])
    assert_no_aliasing([dx, dW, db], [x, W, b, dout, *cache])
    assert_gradients_match(
        lambda: layers.linear_forward(x, W, b)[0],
        {"x": x, "W": W, "b": b},
        {"x": dx, "W": dW, "b": db},
        dout,
    )


@given(B=batch, T=time, V=st.integers(1, 6), C=width, seed=seeds)
def test_embedding_gradients(B, T, V, C, seed):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, V, size=(B, T))  # small V: repeated ids are common
    W = uniform(rng, (V, C))
    out, cache = layers.embedding_forward(idx, W)
    dout = upstream(rng, out.shape)
    before = snapshot(idx, W, dout)
    dW = layers.embedding_backward(dout, cache)
    assert_unchanged(before, [idx, W, dout])
    assert_no_aliasing([dW], [idx, W, dout])
    assert_gradients_match(lambda: layers.embedding_forward(idx, W)[0], {"W": W}, {"W": dW}, dout)


@given(B=batch, T=time, C=st.integers(3, 6), seed=seeds)
def test_layernorm_gradients(B, T, C, seed):
    rng = np.random.default_rng(seed)
    x, g, b = uniform(rng, (B, T, C)), uniform(rng, (C,)), uniform(rng, (C,))
    out, cache = layers.layernorm_forward(x, g, b)
    dout = upstream(rng, out.shape)
    before = snapshot(x, g, b, dout, *cache)
    dx, dg, db = layers.layernorm_backward(dout, cache)
    assert_unchanged(before, [x, g, b, dout, *cache])
    assert_no_aliasing([dx, dg, db], [x, g, b, dout, *cache])
    assert_gradients_match(
        lambda: layers.layernorm_forward(x, g, b)[0],
        {"x": x, "g": g, "b": b},
        {"x": dx, "g": dg, "b": db},
        dout,
        h=1e-4,  # rows of 3 values can have a small variance: large higher derivatives
    )


@given(B=batch, T=time, C=width, seed=seeds)
def test_gelu_gradients(B, T, C, seed):
    rng = np.random.default_rng(seed)
    x = uniform(rng, (B, T, C), -4, 4)
    out, cache = layers.gelu_forward(x)
    dout = upstream(rng, out.shape)
    before = snapshot(x, dout)
    dx = layers.gelu_backward(dout, cache)
    assert_unchanged(before, [x, dout])
    assert_no_aliasing([dx], [x, dout, *cache])
    assert_gradients_match(lambda: layers.gelu_forward(x)[0], {"x": x}, {"x": dx}, dout)


@given(B=batch, T=time, C=width, seed=seeds)
def test_relu_gradients(B, T, C, seed):
    rng = np.random.default_rng(seed)
    # keep every pre-activation at least 0.1 away from the kink at 0
    x = uniform(rng, (B, T, C), 0.1, 2.0) * rng.choice([-1.0, 1.0], size=(B, T, C))
    out, cache = layers.relu_forward(x)
    dout = upstream(rng, out.shape)
    before = snapshot(x, dout)
    dx = layers.relu_backward(dout, cache)
    assert_unchanged(before, [x, dout])
    assert_no_aliasing([dx], [x, dout, *cache])
    assert_gradients_match(lambda: layers.relu_forward(x)[0], {"x": x}, {"x": dx}, dout)


@given(B=batch, H=st.integers(1, 3), T=time, causal=st.booleans(), seed=seeds)
def test_softmax_gradients(B, H, T, causal, seed):
    rng = np.random.default_rng(seed)
    x = uniform(rng, (B, H, T, T))
    probs, cache = layers.softmax_forward(x, causal=causal)
    dout = upstream(rng, probs.shape)
    before = snapshot(x, dout, *cache)
    dx = layers.softmax_backward(dout, cache)
    assert_unchanged(before, [x, dout, *cache])
    assert_no_aliasing([dx], [x, dout, *cache])
    assert_gradients_match(
        lambda: layers.softmax_forward(x, causal=causal)[0], {"x": x}, {"x": dx}, dout
    )


@given(B=batch, T=time, V=st.integers(1, 7), seed=seeds)
def test_cross_entropy_gradients(B, T, V, seed):
    rng = np.random.default_rng(seed)
    logits = uniform(rng, (B, T, V))
    targets = rng.integers(0, V, size=(B, T))
    loss, cache = layers.cross_entropy_forward(logits, targets)
    dloss = np.array(rng.uniform(0.5, 2.0))  # a scalar upstream gradient other than 1
    before = snapshot(logits, targets, *cache[:2])
    dlogits = layers.cross_entropy_backward(dloss, cache)
    assert_unchanged(before, [logits, targets, *cache[:2]])
    assert_no_aliasing([dlogits], [logits, targets, *cache[:2]])
    assert_gradients_match(
        lambda: np.asarray(layers.cross_entropy_forward(logits, targets)[0]),
        {"logits": logits},
        {"logits": dlogits},
        dloss,
    )


# ------------------------------------------------------------------------ pinned values
def test_softmax_of_equal_logits_is_uniform():
    probs, _ = layers.softmax_forward(np.zeros((2, 5)))
    np.testing.assert_allclose(probs, np.full((2, 5), 0.2))


def test_causal_softmax_rows_spread_over_visible_positions():
    probs, _ = layers.softmax_forward(np.zeros((4, 4)), causal=True)
    np.testing.assert_array_equal(probs[0], [1.0, 0.0, 0.0, 0.0])  # row 0 is one-hot
    for i in range(4):
        np.testing.assert_allclose(probs[i, : i + 1], 1.0 / (i + 1))
        assert np.all(probs[i, i + 1 :] == 0.0)


def test_causal_softmax_ignores_future_logits():
    x = np.zeros((3, 3))
    y = x.copy()
    y[0, 2] = y[1, 2] = 50.0  # huge logits in the masked (future) positions
    np.testing.assert_array_equal(
        layers.softmax_forward(x, causal=True)[0], layers.softmax_forward(y, causal=True)[0]
    )


def test_cross_entropy_of_uniform_logits_is_log_vocab():
    V = 256
    loss, _ = layers.cross_entropy_forward(np.zeros((2, 3, V)), np.zeros((2, 3), dtype=np.int64))
    assert loss == pytest.approx(math.log(V))


def test_cross_entropy_known_value():
    logits = np.array([[2.0, 0.0]])
    loss, _ = layers.cross_entropy_forward(logits, np.array([1]))
    assert loss == pytest.approx(math.log(1 + math.e**2))


def test_layernorm_output_is_normalised():
    x = np.random.default_rng(0).normal(3.0, 5.0, size=(4, 16))
    out, _ = layers.layernorm_forward(x, np.ones(16), np.zeros(16))
    np.testing.assert_allclose(out.mean(axis=-1), 0.0, atol=1e-12)
    np.testing.assert_allclose(out.var(axis=-1), 1.0, rtol=1e-5)  # biased variance + eps


def test_gelu_known_values():
    out, _ = layers.gelu_forward(np.array([0.0, 1.0, -1.0]))
    # GPT-2 tanh approximation: gelu(1) = 0.8411920, gelu(-1) = -0.1588080
    np.testing.assert_allclose(out, [0.0, 0.841192, -0.158808], atol=1e-6)


def test_embedding_backward_accumulates_repeated_ids():
    idx = np.array([[1, 1, 1]])
    _, cache = layers.embedding_forward(idx, np.zeros((3, 2)))
    dW = layers.embedding_backward(np.ones((1, 3, 2)), cache)
    np.testing.assert_array_equal(dW, [[0, 0], [3, 3], [0, 0]])


def test_linear_known_value():
    out, _ = layers.linear_forward(np.array([[1.0, 2.0]]), np.eye(2) * 3, np.array([1.0, -1.0]))
    np.testing.assert_array_equal(out, [[4.0, 5.0]])


@given(st.integers(1, 3), st.integers(1, 5), st.integers(2, 9), st.booleans(), seeds)
def test_softmax_and_cross_entropy_match_scipy(B, T, V, causal, seed):
    """scipy.special as an independent oracle for the two reductions every step relies on."""
    import scipy.special

    rng = np.random.default_rng(seed)
    x = uniform(rng, (B, T, T), low=-30.0, high=30.0)  # (B,T,T) wide range: tests the shift
    probs, _ = layers.softmax_forward(x, causal=causal)
    masked = np.where(np.tril(np.ones((T, T), dtype=bool)), x, -np.inf) if causal else x
    np.testing.assert_allclose(probs, scipy.special.softmax(masked, axis=-1), rtol=1e-12, atol=0)
    logits = uniform(rng, (B, T, V), low=-30.0, high=30.0)  # (B,T,V)
    targets = rng.integers(0, V, size=(B, T))  # (B,T)
    loss, _ = layers.cross_entropy_forward(logits, targets)
    logp = scipy.special.log_softmax(logits, axis=-1)  # (B,T,V)
    expected = -np.take_along_axis(logp, targets[..., None], axis=-1).mean()
    assert loss == pytest.approx(expected, rel=1e-12)
