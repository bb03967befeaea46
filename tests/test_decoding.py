"""Incremental decoding: every kind remembers only what it needs and matches a full pass."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_model import ALL_KINDS

from minisynth import ModelConfig, SynthesizerLM, attention, layers
from minisynth.checkpoint import load_checkpoint, save_checkpoint
from minisynth.cli import build_parser, main
from minisynth.model import OVERFLOW_POLICIES, sample_token
from minisynth.train import decode

KINDS_AND_MORE = [*ALL_KINDS, "factorized_dense+factorized_random", "random_fixed+vanilla"]
# float32 logits of a prefix computed by a shorter matrix product round differently
FLOAT32_TOL = dict(rtol=1e-4, atol=1e-5)


def random_model(kind, *, L=8, dtype=np.float32, seed=0, vocab=11):
    """A small model with all parameters drawn at scale 0.5, so no kind is near-uniform."""
    options = {"factors": (2, L // 2)} if "factorized_dense" in kind else {}
    cfg = ModelConfig(
        vocab_size=vocab, d_model=8, n_heads=2, n_layers=2, max_len=L, attention=kind,
        attention_options=options,
    )  # fmt: skip
    model = SynthesizerLM(cfg, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed)
    for arrays in (model.params, model.buffers):
        for a in arrays.values():
            a[...] = rng.normal(0, 0.5, a.shape)
    return model


@settings(deadline=None, max_examples=40)
@given(
    kind=st.sampled_from(KINDS_AND_MORE),
    prompt_len=st.integers(1, 8),
    batch=st.integers(1, 3),
    seed=st.integers(0, 2**31),
)
def test_every_decoded_position_matches_the_full_forward_pass(kind, prompt_len, batch, seed):
    model = random_model(kind, seed=seed)
    L = model.config.max_len
    idx = np.random.default_rng(seed).integers(0, 11, (batch, L))  # decoded up to max_len
    full = model.forward(idx)  # (B,L,V)
    logits, states = model.prefill(idx[:, :prompt_len])
    np.testing.assert_allclose(logits, full[:, :prompt_len], **FLOAT32_TOL)
    for t in range(prompt_len, L):
        before = [s.v[:, :, :t].copy() for s in states]
        np.testing.assert_allclose(model.decode_step(idx[:, t], states), full[:, t], **FLOAT32_TOL)
        for s, old in zip(states, before, strict=True):
            assert s.length == t + 1
            np.testing.assert_array_equal(s.v[:, :, :t], old)  # earlier positions untouched


@pytest.mark.parametrize("kind", KINDS_AND_MORE)
def test_attention_step_is_the_forward_row_in_float64(kind):
    options = {"factors": (2, 3)} if "factorized_dense" in kind else {}
    layer = attention.build(kind, 8, 2, 6, dtype=np.float64, seed=1, **options)
    rng = np.random.default_rng(2)
    for a in (*layer.params.values(), *layer.buffers.values()):
        a[...] = rng.normal(0, 1.0, a.shape)
    x = rng.standard_normal((2, 6, 8))
    y_full, _ = layer.forward(x)
    y, state = layer.prefill(x[:, :2])
    steps = [layer.step(x[:, t : t + 1], state) for t in range(2, 6)]
    np.testing.assert_allclose(np.concatenate([y, *steps], axis=1), y_full, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS_AND_MORE)
def test_each_kind_remembers_values_and_only_vanilla_remembers_keys(kind):
    model = random_model(kind)
    _, states = model.prefill(np.array([[1, 2, 3]]))
    parts = kind.split("+")
    B, H, L, hs = 1, 2, 8, 4
    for state in states:
        assert state.v.shape == (B, H, L, hs)
        remembered = [sorted(m) for m in state.memories]
        assert remembered == [["k"] if p == "vanilla" else [] for p in parts]
        slots = 2 if "vanilla" in parts else 1  # keys and values, or values only
        assert state.nbytes == slots * B * H * L * hs * 4


def test_decoding_under_the_numba_backend_matches_the_reference():
    model = random_model("dense+vanilla")
    fast_model = SynthesizerLM(model.config, backend="numba")
    fast_model.load_state(model.params, model.buffers)
    assert model.ops is layers and fast_model.ops is not layers
    idx = np.random.default_rng(0).integers(0, 11, (2, 8))
    _, states = model.prefill(idx[:, :3])
    want = [model.decode_step(idx[:, t], states) for t in range(3, 8)]
    _, states = fast_model.prefill(idx[:, :3])
    got = [fast_model.decode_step(idx[:, t], states) for t in range(3, 8)]
    np.testing.assert_allclose(got, want, **FLOAT32_TOL)


def plain_generate(model, prompt, length, *, seed, overflow, temperature=1.0, top_k=None):
    """The policy written as plainly as possible: a full forward pass over the window per byte."""
    L = model.config.max_len
    keep = L // 2 if overflow == "refill" else L
    rng = np.random.default_rng(seed)
    tokens = list(prompt)
    start = max(0, len(tokens) - L)  # the window is tokens[start:]
    out = []
    for _ in range(length):
        if len(tokens) - start > L:  # the last byte did not fit: keep the last `keep`
            start = len(tokens) - keep
        logits = model.forward(np.array([tokens[start:]]))[0, -1]
        nxt = sample_token(logits, rng, temperature, top_k)
        tokens.append(nxt)
        out.append(nxt)
    return out


@settings(deadline=None, max_examples=30)
@given(
    kind=st.sampled_from(KINDS_AND_MORE),
    prompt_len=st.integers(1, 20),
    length=st.integers(0, 30),
    overflow=st.sampled_from(["refill", "slide"]),
    seed=st.integers(0, 2**31),
)
def test_generate_follows_its_overflow_policy_exactly(kind, prompt_len, length, overflow, seed):
    model = random_model(kind, seed=seed)
    prompt = np.random.default_rng(seed).integers(0, 11, prompt_len)
    want = plain_generate(model, prompt, length, seed=seed, overflow=overflow, temperature=2.0)
    got = model.generate(prompt, length, seed=seed, overflow=overflow, temperature=2.0)
    assert got.tolist() == want
    slow = model.generate(prompt, length, seed=seed, overflow=overflow, temperature=2.0,
                          use_cache=False)  # fmt: skip
    assert slow.tolist() == want


def test_the_policies_agree_until_the_window_fills_and_then_differ():
    model = random_model("dense", L=8)
    prompt = np.array([1, 2, 3])
    refill = model.generate(prompt, 40, seed=4, overflow="refill", temperature=2.0)
    slide = model.generate(prompt, 40, seed=4, overflow="slide", temperature=2.0)
    # 3 + 5 bytes fill the window; the 6th new byte is drawn from the first overflow
    assert refill[:6].tolist() == slide[:6].tolist()
    assert refill.tolist() != slide.tolist()


def test_decode_step_refuses_bad_input():
    model = random_model("vanilla")
    _, states = model.prefill(np.array([[1, 2]]))
    with pytest.raises(ValueError, match="rows"):
        model.decode_step(np.array([1, 2]), states)
    with pytest.raises(ValueError, match=r"\[0, 11\)"):
        model.decode_step(np.array([11]), states)
    with pytest.raises(ValueError, match="one DecodeState per layer"):
        model.decode_step(np.array([1]), states[:1])
    _, states = model.prefill(np.arange(8)[None])
    with pytest.raises(ValueError, match="max_len = 8"):
        model.decode_step(np.array([1]), states)
    with pytest.raises(ValueError, match="overflow must be one of"):
        model.generate(np.array([1]), 3, overflow="wrap")


def test_a_non_causal_layer_cannot_decode():
    layer = attention.build("dense", 4, 2, 4, causal=False)
    with pytest.raises(ValueError, match="causal"):
        layer.prefill(np.zeros((1, 2, 4), dtype=np.float32))


def test_attention_step_checks_its_input():
    layer = attention.build("vanilla", 4, 2, 4)
    _, state = layer.prefill(np.zeros((1, 2, 4), dtype=np.float32))
    with pytest.raises(ValueError, match=r"x_t must have shape \(1, 1, 4\)"):
        layer.step(np.zeros((1, 2, 4), dtype=np.float32), state)
    with pytest.raises(TypeError, match="dtype"):
        layer.step(np.zeros((1, 1, 4)), state)


@pytest.mark.parametrize("overflow", ["refill", "slide"])
def test_cli_sample_decodes_with_the_chosen_policy(overflow, tmp_path, capsys):
    model = random_model("dense+vanilla", vocab=256)
    save_checkpoint(tmp_path / "checkpoint.npz", model)
    argv = ["sample", "--checkpoint", str(tmp_path), "--prompt", "abc", "--length", "30",
            "--seed", "7", "--overflow", overflow]  # fmt: skip
    assert main(argv) == 0
    loaded, _ = load_checkpoint(tmp_path / "checkpoint.npz")
    want = loaded.generate(np.frombuffer(b"abc", np.uint8).astype(np.int64), 30, seed=7,
                           overflow=overflow)  # fmt: skip
    assert capsys.readouterr().out == "abc" + decode(want) + "\n"


def test_the_cli_offers_the_model_policies():
    parser = build_parser()
    sample = parser._subparsers._group_actions[0].choices["sample"]
    (action,) = [a for a in sample._actions if a.dest == "overflow"]
    assert tuple(action.choices) == OVERFLOW_POLICIES
