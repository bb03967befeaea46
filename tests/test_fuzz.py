"""Fuzzing the public API: arbitrary inputs give a result or a clear ValueError/TypeError."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from minisynth import ModelConfig, SynthesizerLM, attention
from minisynth.cli import build_parser, main

anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.integers(-3, 20), max_size=3),
    st.tuples(st.integers(-3, 20), st.integers(-3, 20)),
)
kinds = st.one_of(
    st.sampled_from(
        [
            "vanilla",
            "dense",
            "random",
            "random_fixed",
            "factorized_dense",
            "factorized_random",
            "dense+vanilla",
            "random+random",
            "dense++vanilla",
        ]
    ),
    st.text(max_size=15),
    anything,
)
sizes = st.one_of(st.integers(-2, 9), anything)


@given(
    kind=kinds,
    d_model=sizes,
    n_heads=sizes,
    max_len=sizes,
    options=st.dictionaries(st.sampled_from(["k", "factors", "bogus"]), anything, max_size=2),
    dtype=st.sampled_from([np.float32, np.float64, np.int32, "float16", "nonsense"]),
)
def test_attention_build_fuzz(kind, d_model, n_heads, max_len, options, dtype):
    try:
        layer = attention.build(kind, d_model, n_heads, max_len, dtype=dtype, **options)
    except (ValueError, TypeError) as err:
        assert str(err)  # a message, not a bare exception
        return
    x = np.ones((1, min(layer.L, 3), layer.C), dtype=layer.dtype)
    y, cache = layer.forward(x)
    dx, grads = layer.backward(y, cache)
    assert dx.shape == x.shape and set(grads) == set(layer.params)


@given(
    d_model=sizes,
    n_heads=sizes,
    n_layers=sizes,
    max_len=sizes,
    vocab=sizes,
    kind=kinds,
    options=st.one_of(anything, st.dictionaries(st.sampled_from(["k", "x"]), anything)),
)
def test_model_config_fuzz(d_model, n_heads, n_layers, max_len, vocab, kind, options):
    try:
        cfg = ModelConfig(
            vocab_size=vocab,
            d_model=d_model,
            n_heads=n_heads,
            n_layers=n_layers,
            max_len=max_len,
            attention=kind,
            attention_options=options,
        )
    except (ValueError, TypeError) as err:
        assert str(err)
        return
    if cfg.d_model * cfg.max_len * cfg.vocab_size > 10_000:
        return  # valid but too large to build cheaply
    model = SynthesizerLM(cfg)
    idx = np.zeros((1, cfg.max_len), dtype=np.int64)
    assert model.forward(idx).shape == (1, cfg.max_len, cfg.vocab_size)


@given(
    idx=st.one_of(
        anything,
        hnp.arrays(
            dtype=st.sampled_from([np.int64, np.int8, np.uint8, np.float64, np.bool_]),
            shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6),
        ),
    )
)
def test_model_inputs_fuzz(idx):
    model = SynthesizerLM(ModelConfig(d_model=8, n_heads=2, n_layers=1, max_len=4))
    try:
        logits = model.forward(idx)
    except (ValueError, TypeError) as err:
        assert str(err)
        return
    assert logits.shape == idx.shape + (256,)


words = st.sampled_from(
    [
        "train",
        "eval",
        "sample",
        "data",
        "fetch",
        "plot",
        "compare",
        "curves",
        "--attention",
        "--d-model",
        "--steps",
        "--max-len",
        "--checkpoint",
        "--text",
        "--lr",
        "-1",
        "0",
        "3",
        "nan",
        "dense",
        "x",
        "--help",
    ]
)


@given(argv=st.lists(st.one_of(words, st.text(max_size=6)), max_size=6))
def test_cli_parser_fuzz(argv):
    """The parser either parses or exits 0 (help) / 2 (usage error); never another crash."""
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        assert exc.code in (0, 2)


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--attention", "", "--quiet"],
        ["train", "--attention-options", "[1, 2]"],
        ["train", "--max-len", "999999999", "--d-model", "8", "--n-heads", "2", "--steps", "1"],
        ["eval", "--checkpoint", ""],
        ["sample", "--checkpoint", "/dev/null"],
    ],
)
def test_cli_bad_input_exits_2(argv, capsys, tmp_path):
    try:
        code = main([*argv, "--out", str(tmp_path)] if argv[0] == "train" else argv)
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip()
