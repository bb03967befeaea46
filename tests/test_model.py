import math

import numpy as np
import pytest
from helpers import HAS_BLAS, assert_gradient_close, two_shards

from minisynth import ModelConfig, SynthesizerLM, fast, layers
from minisynth.gradcheck import numerical_gradient

ALL_KINDS = [
    "vanilla",
    "dense",
    "random",
    "random_fixed",
    "factorized_dense",
    "factorized_random",
    "random+vanilla",
    "dense+vanilla",
    "dense+random",
    "dense+random+vanilla",
]


def tiny(kind, **kw):
    cfg = dict(vocab_size=7, d_model=4, n_heads=2, n_layers=2, max_len=4, attention=kind)
    cfg.update(kw)
    return ModelConfig(**cfg)


def test_parameter_names_follow_the_contract():
    model = SynthesizerLM(
        ModelConfig(d_model=8, n_heads=2, n_layers=2, max_len=6, attention="dense+vanilla")
    )
    names = list(model.params)
    assert names[:2] == ["wte", "wpe"] and names[-2:] == ["ln_f.g", "ln_f.b"]
    for i in range(2):
        for n in (
            "ln1.g",
            "ln1.b",
            "ln2.g",
            "ln2.b",
            "mlp.W1",
            "mlp.b1",
            "mlp.W2",
            "mlp.b2",
            "attn.Wv",
            "attn.alpha",
            "attn.dense.W2",
            "attn.vanilla.Wq",
        ):
            assert f"blocks.{i}.{n}" in model.params
    assert model.params["blocks.0.mlp.W1"].shape == (8, 32)
    assert model.params["wpe"].shape == (6, 8) and model.params["wte"].shape == (256, 8)
    assert model.buffers == {}
    fixed = SynthesizerLM(tiny("random_fixed"))
    assert set(fixed.buffers) == {"blocks.0.attn.R", "blocks.1.attn.R"}


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_whole_model_gradient_check(kind, backend):
    model = SynthesizerLM(tiny(kind), seed=3, dtype=np.float64, backend=backend)
    assert (model.ops is layers) == (backend == "numpy")  # the path this test checks
    rng = np.random.default_rng(0)
    for p in model.params.values():  # move off the init (zero biases, unit gains)
        p += rng.uniform(-0.3, 0.3, p.shape)
    idx = rng.integers(0, 7, size=(2, 4))
    targets = rng.integers(0, 7, size=(2, 4))
    loss, grads = model.loss_and_grads(idx, targets)
    assert set(grads) == set(model.params)
    assert loss == pytest.approx(model.loss(idx, targets), rel=1e-12)
    for name, p in model.params.items():
        numeric = numerical_gradient(lambda: model.loss(idx, targets), p, h=1e-4)
        assert_gradient_close(f"{kind}: {name}", grads[name], numeric)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_the_fast_path_gives_the_gradients_checked_above(kind):
    """The fast path (Numba kernels, the batch of 3 split into shards of 1 and 2 rows over
    two threads) gives the loss and gradients of the reference, which the
    finite-difference check above holds to the truth."""
    cfg = ModelConfig(vocab_size=7, d_model=8, n_heads=2, n_layers=2, max_len=8, attention=kind)
    rng = np.random.default_rng(1)
    idx = rng.integers(0, 7, size=(3, 8))
    targets = rng.integers(0, 7, size=(3, 8))
    model = SynthesizerLM(cfg, seed=3, dtype=np.float64)
    for p in model.params.values():
        p += rng.uniform(-0.3, 0.3, p.shape)
    loss, grads = model.loss_and_grads(idx, targets)  # the reference
    fast_model = SynthesizerLM(cfg, seed=3, dtype=np.float64, backend="numba")
    fast_model.load_state(model.params, model.buffers)
    assert model.ops is layers and fast_model.ops is not layers
    with two_shards() as splits:
        loss_split, grads_split = fast.loss_and_grads(fast_model, idx, targets)
    if not HAS_BLAS:
        pytest.skip("no BLAS that threadpoolctl controls: nothing splits")
    assert splits  # the shards ran in two threads
    assert loss_split == pytest.approx(loss, rel=1e-13)
    for name, g in grads.items():
        np.testing.assert_allclose(grads_split[name], g, rtol=1e-10, atol=1e-13, err_msg=name)


def test_tied_embedding_gradient_sums_both_uses():
    model = SynthesizerLM(tiny("vanilla"), dtype=np.float64)
    idx = np.array([[1, 2, 3]])
    _, grads = model.loss_and_grads(idx, np.array([[2, 3, 4]]))
    # row 0 is never an input, so its gradient comes from the output head alone and is nonzero
    assert np.any(grads["wte"][0] != 0)
    # the unused wpe row (T=3 < L=4) gets no gradient
    assert np.all(grads["wpe"][3] == 0)


def test_initial_loss_is_near_log_vocab():
    model = SynthesizerLM(ModelConfig(d_model=16, n_heads=2, n_layers=1, max_len=8))
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 256, size=(4, 8))
    assert model.loss(idx, idx) == pytest.approx(math.log(256), rel=0.05)


@pytest.mark.parametrize("kind", ["dense", "vanilla", "random"])
def test_overfits_one_batch(kind):
    from minisynth.optim import AdamW

    model = SynthesizerLM(
        ModelConfig(vocab_size=16, d_model=32, n_heads=2, n_layers=1, max_len=8, attention=kind),
        seed=1,
    )
    rng = np.random.default_rng(1)
    idx = rng.integers(0, 16, size=(4, 8))
    targets = rng.integers(0, 16, size=(4, 8))
    opt = AdamW(model.params, lr=1e-2, weight_decay=0.0)
    for _ in range(300):
        loss, grads = model.loss_and_grads(idx, targets)
        opt.step(grads)
    assert loss < 0.1


def test_float32_model_trains_in_float32():
    model = SynthesizerLM(tiny("dense+vanilla"))
    idx = np.array([[1, 2, 3, 4]])
    loss, grads = model.loss_and_grads(idx, idx)
    assert all(g.dtype == np.float32 for g in grads.values())
    assert model.forward(idx).dtype == np.float32


def test_generate_goes_past_max_len_and_is_seeded():
    model = SynthesizerLM(tiny("dense"))
    a = model.generate(np.array([1, 2, 3, 4, 5, 6]), 10, seed=5, top_k=3)
    b = model.generate(np.array([1, 2, 3, 4, 5, 6]), 10, seed=5, top_k=3)
    assert a.shape == (10,) and np.array_equal(a, b)
    assert a.max() < 7


def test_config_round_trips_through_json():
    cfg = ModelConfig(
        attention="factorized_dense", max_len=12, attention_options={"factors": (3, 4)}
    )
    assert ModelConfig.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize(
    ("kw", "error", "match"),
    [
        (dict(d_model=10, n_heads=3), ValueError, "not divisible"),
        (dict(attention="nope"), ValueError, "valid kinds"),
        (dict(n_layers=0), ValueError, "positive"),
        (dict(max_len=2.5), TypeError, "integer"),
        (
            dict(attention="factorized_dense", max_len=16, attention_options={"factors": (3, 5)}),
            ValueError,
            "multiply",
        ),
    ],
)
def test_bad_configs_are_named(kw, error, match):
    with pytest.raises(error, match=match):
        ModelConfig(**kw)


def test_bad_inputs_are_named():
    model = SynthesizerLM(tiny("dense"))
    with pytest.raises(ValueError, match="max_len"):
        model.forward(np.zeros((1, 5), dtype=np.int64))
    with pytest.raises(ValueError, match=r"\[0, 7\)"):
        model.forward(np.full((1, 3), 7))
    with pytest.raises(TypeError, match="integer"):
        model.forward(np.zeros((1, 3)))


def test_load_state_rejects_mismatches():
    model = SynthesizerLM(tiny("dense"))
    params = {k: v.copy() for k, v in model.params.items()}
    params.pop("wpe")
    with pytest.raises(ValueError, match="missing parameter"):
        model.load_state(params)
    params = {k: v.copy() for k, v in model.params.items()}
    params["wpe"] = np.zeros((5, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="shape"):
        model.load_state(params)
