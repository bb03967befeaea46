"""Visualisation: statistics on maps with known answers, figures of the right size, the CLI."""

import json
import math

import matplotlib
import matplotlib.image as mpimg
import numpy as np
import pytest

from minisynth import viz
from minisynth.checkpoint import save_checkpoint
from minisynth.cli import main
from minisynth.model import ModelConfig, SynthesizerLM
from minisynth.train import TrainConfig, train

LN2 = math.log(2.0)
TEXT = "Hi,\nworld $5"  # a newline, a space and a '$' (mathtext) in the tick labels


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three tiny checkpoints: a trained mixture, an untrained random, a 3-head vanilla."""
    root = tmp_path_factory.mktemp("runs")
    train(
        ModelConfig(d_model=16, n_heads=2, n_layers=2, max_len=16, attention="dense+vanilla"),
        TrainConfig(batch_size=4, steps=3, eval_interval=3, warmup_steps=1, sample_length=0),
        root / "mix",
        progress=False,
        log=lambda *a: None,
        backend="numpy",  # the reference: no Numba compilation, so the module stays fast
    )
    paths = {"mix": root / "mix" / "checkpoint.npz", "mix_dir": root / "mix"}
    for name, cfg in (
        ("random", ModelConfig(d_model=16, n_heads=2, n_layers=2, max_len=16, attention="random")),
        (
            "vanilla",
            ModelConfig(d_model=12, n_heads=3, n_layers=1, max_len=8, attention="vanilla"),
        ),
    ):
        paths[name] = root / name / "checkpoint.npz"
        save_checkpoint(paths[name], SynthesizerLM(cfg, seed=1), step=0)
    return paths


def png_shape(figsize):
    """(height, width) in pixels of a figure of ``figsize`` inches saved at viz.DPI."""
    return round(figsize[1] * viz.DPI), round(figsize[0] * viz.DPI)


def assert_png(path, figsize):
    img = mpimg.imread(path)
    assert img.shape[:2] == png_shape(figsize)
    assert img.std() > 0  # something was drawn


def uniform_causal(T):
    P = np.tril(np.ones((T, T)))
    return P / P.sum(axis=1, keepdims=True)  # (T,T) row i uniform over j <= i


def previous_token(T):
    P = np.zeros((T, T))
    P[0, 0] = 1.0  # row 0 has no previous token
    P[np.arange(1, T), np.arange(T - 1)] = 1.0
    return P


# ---------------------------------------------------------------------------- statistics
def test_stats_identity():
    P = np.broadcast_to(np.eye(7), (3, 7, 7)).copy()  # (H,T,T)
    s = viz.attention_stats(P)
    assert set(s) == {"entropy_nats", "distance", "diagonal", "previous"}
    for key in s:
        assert s[key].shape == (3,)
    np.testing.assert_allclose(s["entropy_nats"], 0.0, atol=1e-12)
    np.testing.assert_allclose(s["distance"], 0.0, atol=1e-12)
    np.testing.assert_allclose(s["diagonal"], 1.0)
    np.testing.assert_allclose(s["previous"], 0.0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_stats_uniform_causal(dtype):
    T = 10
    i = np.arange(T)
    P = np.stack([uniform_causal(T)] * 2)[None].repeat(3, axis=0).astype(dtype)  # (B,H,T,T)
    s = viz.attention_stats(P)
    tol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(s["entropy_nats"], np.log(i + 1).mean(), rtol=tol)  # ln(i+1)
    np.testing.assert_allclose(s["distance"], (i / 2).mean(), rtol=tol)  # row i: i/2
    np.testing.assert_allclose(s["diagonal"], (1 / (i + 1)).mean(), rtol=tol)
    np.testing.assert_allclose(s["previous"], (1 / (i[1:] + 1)).mean(), rtol=tol)
    # a batch of identical maps has the statistics of one map
    one = viz.attention_stats(P[0])
    for key in s:
        np.testing.assert_allclose(s[key], one[key])


def test_stats_previous_token():
    T = 9
    s = viz.attention_stats(previous_token(T)[None])
    np.testing.assert_allclose(s["previous"], 1.0)  # every row i >= 1 puts all mass on i - 1
    np.testing.assert_allclose(s["diagonal"], 1 / T)  # only row 0, which can see itself only
    np.testing.assert_allclose(s["distance"], (T - 1) / T)  # distance 1 on rows i >= 1


def test_stats_single_position():
    s = viz.attention_stats(np.ones((2, 1, 1)))
    assert np.isnan(s["previous"]).all()  # no row has a previous token
    np.testing.assert_allclose(s["diagonal"], 1.0)


def test_js_divergence_known_values():
    rng = np.random.default_rng(0)
    P = rng.random((2, 6, 6))
    P /= P.sum(-1, keepdims=True)
    Q = rng.random((2, 6, 6))
    Q /= Q.sum(-1, keepdims=True)
    assert viz.js_divergence(P, P) == pytest.approx(0.0, abs=1e-12)
    eye = np.broadcast_to(np.eye(6), (2, 6, 6))
    shifted = np.roll(eye, 1, axis=-1)  # one-hot on a different key in every row
    assert viz.js_divergence(eye, shifted) == pytest.approx(LN2)
    assert viz.js_divergence(P, Q) == pytest.approx(viz.js_divergence(Q, P))
    assert 0 < viz.js_divergence(P, Q) < LN2
    # p = (1, 0), q = (1/2, 1/2), m = (3/4, 1/4)
    expected = 0.5 * math.log(4 / 3) + 0.5 * (0.5 * math.log(2 / 3) + 0.5 * math.log(2))
    assert viz.js_divergence(np.array([1.0, 0.0]), np.array([0.5, 0.5])) == pytest.approx(expected)
    # averaged over rows: one identical row and one disjoint row give ln 2 / 2
    p = np.array([[1.0, 0.0], [1.0, 0.0]])
    q = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert viz.js_divergence(p, q) == pytest.approx(LN2 / 2)


@pytest.mark.parametrize(
    "bad, err",
    [
        ("not an array", TypeError),
        (np.ones((3, 3), dtype=np.int64), TypeError),
        (np.ones((3, 3)) / 3, ValueError),  # 2-D: no head axis
        (np.ones((1, 3, 4)) / 4, ValueError),  # not square
        (np.ones((1, 3, 3)), ValueError),  # rows sum to 3
        (np.full((1, 2, 2), np.nan), ValueError),
        (np.array([[[1.5, -0.5], [0.0, 1.0]]]), ValueError),  # negative entry
        (np.zeros((1, 0, 0)), ValueError),
    ],
)
def test_stats_rejects_bad_maps(bad, err):
    with pytest.raises(err):
        viz.attention_stats(bad)


def test_js_rejects_bad_inputs():
    with pytest.raises(ValueError, match="same shape"):
        viz.js_divergence(np.eye(3), np.eye(4))
    with pytest.raises(ValueError, match="sum"):
        viz.js_divergence(np.ones((2, 2)), np.eye(2))
    with pytest.raises(TypeError):
        viz.js_divergence(np.eye(2, dtype=int), np.eye(2, dtype=int))


def test_labels_and_kinds():
    assert viz.byte_labels(b"a \n\t\x00$\xc3\xa9") == [
        "a",
        "\u2423",
        "\\n",
        "\\t",
        "\\x00",
        r"\$",
        "\\xc3",
        "\\xa9",
    ]
    with pytest.raises(TypeError, match="encode"):
        viz.byte_labels("text")
    assert viz.is_input_independent("random")
    assert viz.is_input_independent("random_fixed+factorized_random")
    assert not viz.is_input_independent("dense")
    assert not viz.is_input_independent("random+vanilla")
    assert viz.encode_text("é").tolist() == [0xC3, 0xA9]
    with pytest.raises(ValueError, match="empty"):
        viz.encode_text("")


# ------------------------------------------------------------------------- pure plotting
def test_plot_functions_write_sized_images(tmp_path):
    T, H = 6, 3
    maps = np.stack([np.stack([uniform_causal(T), previous_token(T), np.eye(T)])] * 2)
    path = viz.plot_attention_grid(maps, tmp_path / "grid.png", tokens=b"hello!", kind="x")
    assert path == tmp_path / "grid.png"
    assert_png(path, viz.grid_figsize(2, H, T))
    # long input: numeric ticks, no labels needed
    T2 = viz.MAX_TICK_LABELS + 2
    big = np.broadcast_to(uniform_causal(T2), (1, 1, T2, T2))
    assert_png(viz.plot_attention_grid(big, tmp_path / "big.png"), viz.grid_figsize(1, 1, T2))

    cmp = viz.plot_compare(
        [maps[0], maps[0][:1]], tmp_path / "c.png", labels=["a", "b"], tokens=np.arange(T) + 97
    )
    assert_png(cmp, viz.grid_figsize(2, H, T))  # a blank panel where model b has no head

    w = np.array([[[0.2, 0.8], [0.5, 0.5], [0.9, 0.1]]])  # (n_layers=1, H=3, N=2)
    alpha = viz.plot_alpha(w, tmp_path / "alpha.png", components=["dense", "vanilla"])
    assert_png(alpha, viz.alpha_figsize(1, 3, 2))

    recs = [{"step": 10, "loss": 3.0}, {"step": 20, "loss": 2.0, "val_bpc": 2.5}]
    curves = viz.plot_curves({"a": recs, "b": recs[:1]}, tmp_path / "curves.png")
    assert_png(curves, viz.CURVES_FIGSIZE)


def test_vector_formats(tmp_path):
    maps = np.eye(5)[None, None]  # (1,1,5,5)
    svg = viz.plot_attention_grid(maps, tmp_path / "g.svg")
    pdf = viz.plot_attention_grid(maps, tmp_path / "g.pdf")
    assert b"<svg" in svg.read_bytes()[:1000]
    assert pdf.read_bytes().startswith(b"%PDF")


def test_input_independent_title(tmp_path):
    maps = np.broadcast_to(uniform_causal(4), (1, 2, 4, 4))
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # keep text as text to search it
        indep = viz.plot_attention_grid(maps, tmp_path / "r.svg", kind="random_fixed")
        dep = viz.plot_attention_grid(maps, tmp_path / "d.svg", kind="dense")
    assert "same map for every input" in indep.read_text()
    assert "same map for every input" not in dep.read_text()


def test_plot_validation(tmp_path):
    maps = np.eye(4)[None, None]
    with pytest.raises(ValueError, match="format"):
        viz.plot_attention_grid(maps, tmp_path / "x.jpg")
    with pytest.raises(ValueError, match="tokens"):
        viz.plot_attention_grid(maps, tmp_path / "x.png", tokens=b"abc")
    with pytest.raises(ValueError, match="dimensions"):
        viz.plot_attention_grid(np.eye(4), tmp_path / "x.png")
    with pytest.raises(ValueError, match="same T"):
        viz.plot_compare([np.eye(4)[None], np.eye(3)[None]], tmp_path / "x.png", labels=["a", "b"])
    with pytest.raises(ValueError, match="labels"):
        viz.plot_compare([np.eye(4)[None]], tmp_path / "x.png", labels=["a", "b"])
    with pytest.raises(ValueError, match="components"):
        viz.plot_alpha(np.full((1, 2, 2), 0.5), tmp_path / "x.png", components=["a"])
    with pytest.raises(ValueError, match="sum to 1"):
        viz.plot_alpha(np.ones((1, 2, 2)), tmp_path / "x.png", components=["a", "b"])
    with pytest.raises(TypeError):
        viz.plot_curves({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="no 'loss'"):
        viz.plot_curves({"a": [{"step": 1}]}, tmp_path / "x.png")
    assert not list(tmp_path.iterdir())  # nothing written on bad input


def test_cli_plot_mixture(runs, tmp_path, capsys):
    out = tmp_path / "plots"
    assert main(["plot", "--checkpoint", str(runs["mix"]), "--text", TEXT, "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "entropy" in stdout and "nats" in stdout and "truncated" not in stdout
    T = len(TEXT.encode())
    assert_png(out / "attention.png", viz.grid_figsize(2, 2, T))  # 2 layers x 2 heads
    assert_png(out / "alpha.png", viz.alpha_figsize(2, 2, 2))  # mixture: weights drawn too
    report = json.loads((out / "stats.json").read_text())
    assert report["attention"] == "dense+vanilla" and report["input"]["bytes"] == T
    assert report["input"]["text"] == TEXT and not report["input_independent"]
    assert report["mixture_weights"]["components"] == ["dense", "vanilla"]
    np.testing.assert_allclose(np.sum(report["mixture_weights"]["layers"], axis=-1), 1.0)
    # the JSON holds exactly attention_stats of the model's maps
    from minisynth.checkpoint import load_checkpoint

    model, _ = load_checkpoint(runs["mix"])
    maps = viz.attention_maps(model, viz.encode_text(TEXT))
    expected = viz.attention_stats(maps[1])
    head = report["layers"][1]["heads"][1]
    for key in viz.STAT_UNITS:
        assert head[key] == pytest.approx(expected[key][1])


def test_cli_plot_from_split_truncates_and_formats(runs, tmp_path, capsys):
    out = tmp_path / "split"
    argv = ["plot", "--checkpoint", str(runs["random"]), "--from-split", "val", "--out", str(out)]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert "truncated" not in stdout and "alpha" not in stdout  # max_len bytes, no mixture
    assert_png(out / "attention.png", viz.grid_figsize(2, 2, 16))
    assert not (out / "alpha.png").exists()
    report = json.loads((out / "stats.json").read_text())
    assert report["input_independent"] and "val split" in report["input"]["source"]

    assert main([*argv, "--length", "40", "--format", "svg"]) == 0
    assert "truncated the input from 40 to 16 bytes" in capsys.readouterr().out
    assert b"<svg" in (out / "attention.svg").read_bytes()[:1000]
    long_text = ["--text", "x" * 30, "--format", "pdf"]
    assert main(["plot", "--checkpoint", str(runs["mix"]), *long_text, "--out", str(out)]) == 0
    assert "truncated the input from 30 to 16 bytes" in capsys.readouterr().out
    assert (out / "attention.pdf").read_bytes().startswith(b"%PDF")
    assert (out / "alpha.pdf").read_bytes().startswith(b"%PDF")


def test_cli_plot_default_out(runs, capsys):
    # figures go next to the checkpoint, given as a file or as its run directory
    assert main(["plot", "--checkpoint", str(runs["random"]), "--text", "ab"]) == 0
    assert (runs["random"].parent / "plots" / "attention.png").exists()
    assert main(["plot", "--checkpoint", str(runs["random"].parent), "--text", "ab"]) == 0
    assert (runs["random"].parent / "plots" / "stats.json").exists()


def test_cli_compare(runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    ckpts = [str(runs[k]) for k in ("mix_dir", "random", "vanilla")]  # a run dir works too
    assert main(["compare", *ckpts, "--text", "compare these models", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "truncated the input from 20 to 8 bytes" in stdout  # vanilla's max_len is 8
    assert "Jensen-Shannon" in stdout
    # one row per model; columns: the most heads (vanilla has 3)
    assert_png(out / "compare.png", viz.grid_figsize(3, 3, 8))
    report = json.loads((out / "stats.json").read_text())
    assert [m["attention"] for m in report["models"]] == ["dense+vanilla", "random", "vanilla"]
    assert [m["layer"] for m in report["models"]] == [1, 1, 0]  # each model's last layer
    assert len(report["pairs"]) == 3
    for pair in report["pairs"]:
        assert 0 <= pair["js_divergence"] <= LN2
    assert report["pairs"][0]["compared"] == "head by head"  # 2 heads and 2 heads
    assert "head-averaged" in report["pairs"][1]["compared"]  # 2 heads vs 3 heads

    assert main(["compare", *ckpts[:2], "--layer", "0", "--out", str(out)]) == 0
    capsys.readouterr()
    report = json.loads((out / "stats.json").read_text())
    assert [m["layer"] for m in report["models"]] == [0, 0]
    assert report["input"]["bytes"] == 16  # default input: max_len bytes of the val split


def test_cli_curves(runs, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    lines = [json.dumps({"step": s, "loss": 5.0 - s / 10, "val_bpc": 6.0 - s / 10}) for s in (1, 2)]
    (other / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 3, "lo')  # torn line
    out = tmp_path / "figs"
    assert (
        main(["curves", str(runs["mix_dir"]), str(other / "metrics.jsonl"), "--out", str(out)]) == 0
    )
    stdout = capsys.readouterr().out
    assert "mix:" in stdout and "other:" in stdout
    assert_png(out / "curves.png", viz.CURVES_FIGSIZE)
    assert main(["curves", str(other), "--out", str(out / "c.pdf")]) == 0
    assert (out / "c.pdf").read_bytes().startswith(b"%PDF")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["plot", "--checkpoint", "/nonexistent/ckpt.npz", "--text", "a"], "does not exist"),
        (["plot", "--checkpoint", "{mix}", "--text", ""], "empty"),
        (["plot", "--checkpoint", "{mix}", "--text", "a", "--length", "3"], "--length"),
        (["compare", "{mix}", "--text", "a", "--out", "{tmp}"], "at least two"),
        (["compare", "{mix}", "{vanilla}", "--layer", "1", "--out", "{tmp}"], "out of range"),
        (["curves", "/nonexistent/run", "--out", "{tmp}"], "no metrics file"),
        (["curves", "{mix_dir}", "--out", "{tmp}/c.png", "--format", "svg"], "conflicts"),
    ],
)
def test_cli_errors(runs, tmp_path, capsys, argv, message):
    fill = {k: str(v) for k, v in runs.items()}
    argv = [a.format(tmp=tmp_path, **fill) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error" in err and message in err


def test_show_figure_displays_the_saved_file_only_in_a_notebook(tmp_path, monkeypatch, capsys):
    import sys
    import types
    from pathlib import Path

    from matplotlib.figure import Figure

    from minisynth.viz import show_figure

    path = tmp_path / "fig.png"
    Figure(figsize=(1, 1)).savefig(path)
    shown, kernel = [], []  # kernel: what get_ipython() returns (empty: no kernel)
    ipython = types.ModuleType("IPython")  # a stand-in: IPython is no dependency
    ipython.get_ipython = lambda: kernel[0] if kernel else None
    display = types.ModuleType("IPython.display")
    display.Image = lambda filename: Path(filename).read_bytes()
    display.display = shown.append
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", display)
    assert show_figure(path) == path and not shown  # a script: nothing displayed or printed
    assert capsys.readouterr().out == ""
    kernel.append(object())  # inside a notebook's kernel
    show_figure(str(path))
    assert shown == [path.read_bytes()]  # the saved file itself
