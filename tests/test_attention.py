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

from minisynth import attention, layers

SINGLE_KINDS = [
    "vanilla",
    "dense",
    "random",
    "random_fixed",
    "factorized_dense",
    "factorized_random",
]
MIXTURES = ["random+vanilla", "dense+vanilla", "dense+random", "dense+random+vanilla"]
ALL_KINDS = SINGLE_KINDS + MIXTURES


def randomise(layer, rng, scale=1.0):
    """Replace every parameter (in place) with bounded random values, so biases and
    mixture logits are not all zero during the check."""
    for p in layer.params.values():
        p[...] = uniform(rng, p.shape, -scale, scale)


def keep_relu_away_from_kink(layer, x, margin=0.05):
    """Shift the dense hidden bias b1 so that no pre-activation x @ W1 + b1 lies within
    ``margin`` of ReLU's kink at 0 (finite differences across a kink are meaningless).
    Zero is moved into the widest gap of each column's sorted values (or past them).
    With ``dense_from_query`` the hidden layer is vanilla's query projection."""
    pairs = [(n[:-2] + "W1", n) for n in layer.params if n.endswith("b1")]
    dense = [c for c in layer.components if c.kind == "dense"]
    if dense and dense[0].from_query:
        pairs.append(("vanilla.Wq", "vanilla.bq"))
    for w_name, b_name in pairs:
        W1, b1 = layer.params[w_name], layer.params[b_name]
        pre = (x @ W1 + b1).reshape(-1, W1.shape[1])  # (N, C)
        for c in range(pre.shape[1]):
            v = np.sort(pre[:, c])
            edges = np.concatenate([[v[0] - 4 * margin], v, [v[-1] + 4 * margin]])
            gap = int(np.argmax(np.diff(edges)))
            b1[c] -= (edges[gap] + edges[gap + 1]) / 2  # zero now sits mid-gap
        pre = x @ W1 + b1
        assert np.abs(pre).min() >= margin, "no gap wide enough; draw again"


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("kind", ALL_KINDS)
@given(
    B=st.integers(1, 2),
    H=st.integers(1, 2),
    hs=st.integers(1, 3),
    L=st.integers(1, 6),
    data=st.data(),
    seed=seeds,
)
def test_attention_gradients(kind, causal, B, H, hs, L, data, seed):
    check_gradients(kind, causal, B, H, hs, L, data, seed)


# the options of issue 18's controls: R's initial scale, the authors' dense+vanilla
OPTION_CASES = [
    ("dense+vanilla", {"dense_from_query": True}),
    ("dense+random+vanilla", {"dense_from_query": True, "init_std": 0.5}),
    ("random", {"init_std": 1.0}),
    ("random_fixed+vanilla", {"init_std": 0.0}),
]


@pytest.mark.parametrize(("kind", "options"), OPTION_CASES, ids=[k for k, _ in OPTION_CASES])
@given(B=st.integers(1, 2), H=st.integers(1, 2), hs=st.integers(1, 3), L=st.integers(1, 6),
       data=st.data(), seed=seeds)  # fmt: skip
def test_attention_gradients_with_options(kind, options, B, H, hs, L, data, seed):
    check_gradients(kind, True, B, H, hs, L, data, seed, **options)


def check_gradients(kind, causal, B, H, hs, L, data, seed, **options):
    T = data.draw(st.integers(1, L), label="T")
    rng = np.random.default_rng(seed)
    layer = attention.build(
        kind, H * hs, H, L, causal=causal, seed=seed % 1000, dtype=np.float64, **options
    )
    assert layer.ops is layers  # the reference: the math a learner reads, checked here
    randomise(layer, rng)
    x = uniform(rng, (B, T, H * hs))
    keep_relu_away_from_kink(layer, x)
    y, cache = layer.forward(x)
    assert y.shape == x.shape and cache.probs.shape == (B, H, T, T)
    dy = upstream(rng, y.shape)
    before = snapshot(x, dy, cache.probs, *layer.params.values(), *layer.buffers.values())
    dx, grads = layer.backward(dy, cache)
    after = [x, dy, cache.probs, *layer.params.values(), *layer.buffers.values()]
    assert_unchanged(before, after)
    assert set(grads) == set(layer.params)
    assert_no_aliasing(
        [dx, *grads.values()], [x, dy, *layer.params.values(), *layer.buffers.values()]
    )
    assert_gradients_match(
        lambda: layer.forward(x)[0], {"x": x, **layer.params}, {"x": dx, **grads}, dy
    )


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_causality(kind):
    """Changing x at position t changes no output at positions < t."""
    rng = np.random.default_rng(1)
    B, T, C, H, L = 2, 7, 8, 2, 8
    layer = attention.build(kind, C, H, L, dtype=np.float64, seed=3)
    randomise(layer, rng, 0.5)
    x = uniform(rng, (B, T, C))
    y, _ = layer.forward(x)
    for t in range(T):
        x2 = x.copy()
        x2[:, t] += uniform(rng, (B, C))
        y2, _ = layer.forward(x2)
        np.testing.assert_array_equal(y2[:, :t], y[:, :t])
        assert not np.allclose(y2[:, t:], y[:, t:])  # the change is visible from t on


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_bidirectional_sees_the_future(kind):
    rng = np.random.default_rng(2)
    layer = attention.build(kind, 8, 2, 6, causal=False, dtype=np.float64)
    randomise(layer, rng, 0.5)
    x = uniform(rng, (1, 6, 8))
    x2 = x.copy()
    x2[:, -1] += 1.0
    assert not np.allclose(layer.forward(x)[0][:, 0], layer.forward(x2)[0][:, 0])


def test_random_with_zero_R_is_uniform_over_visible_positions():
    layer = attention.build("random", 8, 2, 6, dtype=np.float64)
    layer.params["R"][...] = 0.0
    _, cache = layer.forward(np.random.default_rng(0).standard_normal((3, 5, 8)))
    expected = np.tril(np.ones((5, 5))) / np.arange(1, 6)[:, None]  # row i: 1/(i+1) on j <= i
    np.testing.assert_allclose(cache.probs, np.broadcast_to(expected, (3, 2, 5, 5)))


def test_random_is_input_independent_and_its_gradient_sums_over_the_batch():
    rng = np.random.default_rng(4)
    layer = attention.build("random", 6, 2, 5, dtype=np.float64)
    randomise(layer, rng)
    x = uniform(rng, (2, 4, 6))
    dy = upstream(rng, x.shape)
    y, cache = layer.forward(x)
    np.testing.assert_array_equal(cache.probs[0], cache.probs[1])
    _, grads = layer.backward(dy, cache)
    parts = [layer.backward(dy[b : b + 1], layer.forward(x[b : b + 1])[1])[1] for b in range(2)]
    np.testing.assert_allclose(grads["R"], parts[0]["R"] + parts[1]["R"], rtol=1e-12)


@pytest.mark.parametrize("mixture", MIXTURES)
def test_mixture_with_dominant_alpha_equals_that_component(mixture):
    rng = np.random.default_rng(5)
    parts = mixture.split("+")
    mixed = attention.build(mixture, 8, 2, 6, dtype=np.float64, seed=1)
    randomise(mixed, rng, 0.5)
    x = uniform(rng, (2, 6, 8))
    for n, part in enumerate(parts):
        alone = attention.build(part, 8, 2, 6, dtype=np.float64, seed=2)
        for name in alone.params:
            key = name if name in attention.SHARED_NAMES else f"{part}.{name}"
            alone.params[name][...] = mixed.params[key]
        mixed.params["alpha"][...] = 0.0
        mixed.params["alpha"][:, n] = 200.0  # softmax puts weight 1 - O(e^-200) on part n
        np.testing.assert_allclose(mixed.forward(x)[0], alone.forward(x)[0], rtol=1e-10)


def test_mixture_weights_start_equal_and_sum_to_one():
    layer = attention.build("dense+random+vanilla", 8, 2, 6)
    _, cache = layer.forward(np.zeros((1, 3, 8), dtype=np.float32))
    np.testing.assert_allclose(cache.mix_weights, np.full((2, 3), 1 / 3), rtol=1e-6)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_count_params_matches_layer(kind):
    layer = attention.build(kind, 12, 3, 8)
    assert attention.count_params(kind, 12, 3, 8) == sum(p.size for p in layer.params.values())


def test_count_params_with_options():
    for options in ({"k": 3}, {"k": 1}):
        layer = attention.build("factorized_random+vanilla", 12, 3, 8, **options)
        n = sum(p.size for p in layer.params.values())
        assert attention.count_params("factorized_random+vanilla", 12, 3, 8, **options) == n
    layer = attention.build("factorized_dense", 12, 3, 8, factors=(2, 4))
    n = sum(p.size for p in layer.params.values())
    assert attention.count_params("factorized_dense", 12, 3, 8, factors=(2, 4)) == n


def test_count_params_follow_the_papers_per_head_formulas():
    C, H, L, k = 256, 8, 256, 8
    hs = C // H
    shared = 2 * C * C + 2 * C  # Wv, bv, Wo, bo
    per_head = {
        "vanilla": 2 * (C * hs + hs),  # Wq, Wk columns of the head, and their biases
        "random": L * L,
        "factorized_random": 2 * L * k,
        # the first dense layer is shared (C x C), the second is per head: hs x L + L
        "dense": (C * C + C) / H + hs * L + L,
        "factorized_dense": (C * C + C) / H + hs * (16 + 16) + 16 + 16,  # a = b = 16
        "random_fixed": 0,
    }
    for kind, n in per_head.items():
        assert attention.count_params(kind, C, H, L) == shared + H * n, kind
    assert attention.count_params("dense+vanilla", C, H, L) == (
        shared + H * (per_head["dense"] + per_head["vanilla"]) + H * 2
    )


@pytest.mark.parametrize("kind", ["random", "dense", "factorized_random", "dense+random"])
def test_short_sequences_leave_unused_rows_and_columns_without_gradient(kind):
    rng = np.random.default_rng(6)
    L, T = 7, 4
    layer = attention.build(kind, 6, 2, L, dtype=np.float64)
    randomise(layer, rng)
    x = uniform(rng, (2, T, 6))
    y, cache = layer.forward(x)
    _, grads = layer.backward(upstream(rng, y.shape), cache)
    for name, g in grads.items():
        if name.endswith("R"):
            assert np.all(g[:, T:, :] == 0) and np.all(g[:, :, T:] == 0)
            assert np.any(g[:, :T, :T] != 0)
        if name.endswith(("R1", "R2")):
            assert np.all(g[:, T:] == 0) and np.any(g[:, :T] != 0)
        if name.endswith(("W2", "b2")):
            assert np.all(g[..., T:] == 0) and np.any(g[..., :T] != 0)


def test_short_sequence_uses_the_top_left_block_of_R():
    layer = attention.build("random", 4, 1, 6, dtype=np.float64, causal=False)
    R = layer.params["R"]
    R[...] = np.random.default_rng(7).standard_normal(R.shape)
    _, cache = layer.forward(np.zeros((1, 3, 4)))
    e = np.exp(R[0, :3, :3] - R[0, :3, :3].max(axis=1, keepdims=True))
    np.testing.assert_allclose(cache.probs[0, 0], e / e.sum(axis=1, keepdims=True))


def test_factorized_dense_tiles_A_and_repeats_B():
    layer = attention.build("factorized_dense", 2, 1, 6, factors=(3, 2), dtype=np.float64)
    x = np.zeros((1, 6, 2))
    p = layer.params
    p["W1"][...] = 0.0
    p["Wa"][...] = 0.0
    p["Wb"][...] = 0.0
    p["ba"][0] = [1.0, 2.0, 3.0]  # A
    p["bb"][0] = [10.0, 20.0]  # Bf
    S, _ = layer.components[0].forward(layer._component_arrays(layer.components[0], ""), x)
    np.testing.assert_array_equal(S[0, 0, 0], [10, 20, 30, 20, 40, 60])  # A[j%3] * B[j//3]


def test_default_factors():
    assert attention.default_factors(256) == (16, 16)
    assert attention.default_factors(12) == (3, 4)
    assert attention.default_factors(7) == (1, 7)


def test_random_fixed_keeps_R_as_a_buffer():
    layer = attention.build("random_fixed", 8, 2, 6)
    assert "R" not in layer.params and layer.buffers["R"].shape == (2, 6, 6)
    mix = attention.build("random_fixed+vanilla", 8, 2, 6)
    assert set(mix.buffers) == {"random_fixed.R"}
    x = np.ones((1, 4, 8), dtype=np.float32)
    y, cache = mix.forward(x)
    _, grads = mix.backward(np.ones_like(y) * 0.5, cache)
    assert "random_fixed.R" not in grads


def test_same_seed_same_parameters():
    a = attention.build("dense+random+vanilla", 8, 2, 6, seed=11)
    b = attention.build("dense+random+vanilla", 8, 2, 6, seed=11)
    c = attention.build("dense+random+vanilla", 8, 2, 6, seed=12)
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name])
    assert not np.array_equal(a.params["random.R"], c.params["random.R"])


def test_float32_layer_stays_float32():
    layer = attention.build("dense+random+vanilla", 8, 2, 6)
    x = np.ones((2, 5, 8), dtype=np.float32)
    y, cache = layer.forward(x)
    dx, grads = layer.backward(y.copy(), cache)
    assert y.dtype == dx.dtype == np.float32
    assert all(g.dtype == np.float32 for g in grads.values())


# --------------------------------------------------------------------------- bad input
def test_too_long_sequence_explains_the_max_length_tie():
    layer = attention.build("dense", 8, 2, 4)
    with pytest.raises(ValueError, match="tied to a maximum length L"):
        layer.forward(np.zeros((1, 5, 8), dtype=np.float32))


@pytest.mark.parametrize(
    ("x", "error", "match"),
    [
        (np.zeros((5, 8), dtype=np.float32), ValueError, "3 dimensions"),
        (np.zeros((1, 3, 6), dtype=np.float32), ValueError, "d_model"),
        (np.zeros((1, 3, 8), dtype=np.float64), TypeError, "dtype"),
        (np.zeros((1, 3, 8), dtype=np.int64), TypeError, "float32 or float64"),
        ([[[0.0] * 8]], TypeError, "ndarray"),
    ],
)
def test_bad_inputs_are_named(x, error, match):
    with pytest.raises(error, match=match):
        attention.build("vanilla", 8, 2, 4).forward(x)


def test_bad_configurations_are_named():
    with pytest.raises(ValueError, match="not divisible"):
        attention.build("vanilla", 10, 3, 4)
    with pytest.raises(ValueError, match="valid kinds are vanilla, dense, random"):
        attention.build("synthetic", 8, 2, 4)
    with pytest.raises(ValueError, match="must multiply to max_len"):
        attention.build("factorized_dense", 8, 2, 16, factors=(3, 5))
    with pytest.raises(ValueError, match="unknown option"):
        attention.build("vanilla", 8, 2, 4, k=3)
    with pytest.raises(ValueError, match="positive"):
        attention.build("vanilla", 8, 2, 0)
    with pytest.raises(ValueError, match="repeats"):
        attention.build("random+random", 8, 2, 4)
    with pytest.raises(TypeError, match="float32 or float64"):
        attention.build("random", 8, 2, 4, dtype=np.int32)
    assert math.isfinite(attention.count_params("factorized_dense", 8, 2, 16, factors=(4, 4)))


def test_init_std_sets_the_scale_of_R_and_zero_means_uniform_attention():
    sharp = attention.build("random", 8, 2, 64, init_std=1.0, seed=0)
    assert sharp.params["R"].std() == pytest.approx(1.0, rel=0.05)
    default = attention.build("random", 8, 2, 64, seed=0)
    assert np.abs(default.params["R"]).max() <= math.sqrt(6 / 128)  # Xavier: near-uniform
    flat = attention.build("random_fixed", 8, 2, 6, init_std=0.0, dtype=np.float64)
    assert not flat.buffers["R"].any()
    _, cache = flat.forward(np.random.default_rng(0).standard_normal((1, 6, 8)))
    expected = np.tril(np.ones((6, 6))) / np.arange(1, 7)[:, None]  # 1/(i+1) on j <= i
    np.testing.assert_allclose(cache.probs[0, 0], expected, atol=1e-15)
    with pytest.raises(ValueError, match="init_std must be >= 0"):
        attention.build("random", 8, 2, 4, init_std=-1.0)


def test_dense_from_query_reuses_the_query_projection():
    C, H, L = 8, 2, 6
    layer = attention.build("dense+vanilla", C, H, L, dense_from_query=True, dtype=np.float64)
    own = attention.build("dense+vanilla", C, H, L, dtype=np.float64)
    assert "dense.W1" not in layer.params and "dense.b1" not in layer.params
    assert (
        sum(a.size for a in own.params.values()) - sum(a.size for a in layer.params.values())
        == C * C + C
    )
    assert attention.count_params("dense+vanilla", C, H, L, dense_from_query=True) == sum(
        a.size for a in layer.params.values()
    )
    rng = np.random.default_rng(1)
    randomise(layer, rng)
    x = rng.standard_normal((2, 5, C))
    _, cache = layer.forward(x)
    p = layer.params
    hid = np.maximum(x @ p["vanilla.Wq"] + p["vanilla.bq"], 0)  # relu(q), (B,T,C)
    hid = hid.reshape(2, 5, H, C // H).transpose(0, 2, 1, 3)  # (B,H,T,hs)
    want = hid @ p["dense.W2"][:, :, :5] + p["dense.b2"][:, None, :5]  # (B,H,T,T)
    np.testing.assert_allclose(cache.logits[0], want, atol=1e-12)
    with pytest.raises(ValueError, match="has no vanilla component"):
        attention.build("dense", C, H, L, dense_from_query=True)
    with pytest.raises(TypeError, match="True or False"):
        attention.build("dense+vanilla", C, H, L, dense_from_query="yes")
