"""Export to model.safetensors + config.json, import back, and the PyTorch twin both ways."""

import json
import struct
import subprocess
import sys

import numpy as np
import pytest
import safetensors.numpy
from test_model import ALL_KINDS

from minisynth import ModelConfig, SynthesizerLM
from minisynth.checkpoint import load_checkpoint, save_checkpoint
from minisynth.cli import main
from minisynth.export import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    ExportError,
    export_checkpoint,
    import_pretrained,
    read_pretrained,
)

KINDS = [*ALL_KINDS, "factorized_dense+random_fixed", "factorized_random+dense"]
V, B, T = 256, 2, 8


def config(kind, **kw):
    sizes = dict(vocab_size=V, d_model=8, n_heads=2, n_layers=2, max_len=8, attention=kind)
    return ModelConfig(**{**sizes, **kw})


def moved_model(kind, dtype=np.float32, seed=1):
    """A model moved off its initialisation, so that no array is all zeros or ones."""
    model = SynthesizerLM(config(kind), seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed)
    for a in (*model.params.values(), *model.buffers.values()):
        a += rng.uniform(-0.3, 0.3, a.shape).astype(dtype)
    return model


def batch(seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))


def saved_run(tmp_path, model, name="run"):
    run = tmp_path / name
    run.mkdir()
    save_checkpoint(run / "checkpoint.npz", model)
    return run


def all_arrays(model):
    return {**model.params, **model.buffers}


def assert_bit_identical(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture
def tm():
    """minisynth.torch_model (skipped without torch; CI fails on skips), on one thread."""
    torch = pytest.importorskip("torch")
    from minisynth import torch_model

    old = torch.get_num_threads()
    torch.set_num_threads(1)  # small matrices: more threads only add overhead
    yield torch_model
    torch.set_num_threads(old)


# ----------------------------------------------------------------- round trips
@pytest.mark.parametrize("kind", KINDS)
def test_export_then_import_is_bit_identical(kind, tmp_path):
    model = moved_model(kind)
    export_checkpoint(saved_run(tmp_path, model), tmp_path / "exp")
    imported, _ = load_checkpoint(import_pretrained(tmp_path / "exp", tmp_path / "back"))
    assert imported.config == model.config
    assert_bit_identical(all_arrays(imported), all_arrays(model))


def test_the_export_is_plain_safetensors_and_json(tmp_path):
    model = moved_model("random_fixed+dense")
    export_checkpoint(saved_run(tmp_path, model), tmp_path / "exp")
    tensors = safetensors.numpy.load_file(str(tmp_path / "exp" / WEIGHTS_NAME))  # no torch
    assert_bit_identical(tensors, all_arrays(model))
    fields = json.loads((tmp_path / "exp" / CONFIG_NAME).read_text())
    assert fields["format_version"] == 1 and fields["attention"] == "random_fixed+dense"
    # and the other way: a file written by the official library is read by minisynth
    safetensors.numpy.save_file(tensors, str(tmp_path / "exp" / WEIGHTS_NAME))
    assert_bit_identical(all_arrays(read_pretrained(tmp_path / "exp")), all_arrays(model))


@pytest.mark.parametrize("kind", KINDS)
def test_minisynth_to_pytorch_gives_the_same_logits_and_loss(kind, tmp_path, tm):
    model = moved_model(kind)
    export_checkpoint(saved_run(tmp_path, model), tmp_path / "exp")
    twin = tm.SynthesizerTorch.from_pretrained(tmp_path / "exp")
    idx, targets = batch()
    with tm.torch.no_grad():
        logits, loss = twin(idx, targets)
    assert rel(logits.numpy(), model.forward(idx)) < 1e-5
    assert float(loss) == pytest.approx(model.loss(idx, targets), rel=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_pytorch_trained_weights_come_back_exactly(kind, tmp_path, tm):
    tm.torch.manual_seed(0)
    twin = tm.SynthesizerTorch(config(kind))
    optimizer = tm.make_adamw(twin, lr=1e-2)
    idx, targets = batch(1)
    for _ in range(3):  # trained in PyTorch, with torch's own optimizer
        optimizer.zero_grad()
        twin(idx, targets)[1].backward()
        optimizer.step()
    twin.save_pretrained(tmp_path / "exp")
    assert main(["import", str(tmp_path / "exp"), "--out", str(tmp_path / "run")]) == 0
    model, _ = load_checkpoint(tmp_path / "run")
    with tm.torch.no_grad():
        logits, loss = twin(idx, targets)
    assert rel(model.forward(idx), logits.numpy()) < 1e-5
    assert model.loss(idx, targets) == pytest.approx(float(loss), rel=1e-5)
    # and back again: minisynth -> export -> PyTorch leaves every tensor bit-identical
    export_checkpoint(tmp_path / "run", tmp_path / "again")
    again = tm.SynthesizerTorch.from_pretrained(tmp_path / "again")
    for name, tensor in twin.state_dict().items():
        assert tm.torch.equal(again.state_dict()[name], tensor), name


@pytest.mark.parametrize("kind", KINDS)
def test_float64_conversions_agree_to_1e10_both_ways(kind, tm):
    model = moved_model(kind, np.float64)
    idx, targets = batch(2)
    twin = tm.SynthesizerTorch.from_minisynth(model)
    assert twin.wte.dtype == tm.torch.float64
    with tm.torch.no_grad():
        logits, loss = twin(idx, targets)
    assert rel(logits.numpy(), model.forward(idx)) < 1e-10
    assert float(loss) == pytest.approx(model.loss(idx, targets), rel=1e-10)
    with tm.torch.no_grad():
        for p in twin.parameters():  # move the PyTorch weights, then convert back
            p.add_(0.01 * tm.torch.randn_like(p))
        logits = twin(idx).numpy()
    back = twin.to_minisynth()
    assert back.dtype == np.float64
    assert rel(back.forward(idx), logits) < 1e-10


def test_a_fresh_pytorch_model_is_initialised_by_minisynths_rules(tm):
    tm.torch.manual_seed(0)
    twin = tm.SynthesizerTorch(config("dense+random_fixed", d_model=16, max_len=16))
    reference = SynthesizerLM(twin.config)
    state = twin.state_dict()
    assert state.keys() == all_arrays(reference).keys()
    for name, ours in all_arrays(reference).items():
        theirs = state[name].numpy()
        assert theirs.shape == ours.shape, name
        if not ours.std():  # zeros and ones
            assert np.array_equal(theirs, ours), name
        else:  # the same distribution: same bound, spread within 20%
            assert np.abs(theirs).max() <= max(np.abs(ours).max(), 4 * ours.std()) * 1.05, name
            assert theirs.std() == pytest.approx(ours.std(), rel=0.2), name


def test_import_minisynth_does_not_import_torch():
    code = "import sys, minisynth, minisynth.export; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------ bad input
def exported(tmp_path, kind="dense"):
    export_checkpoint(saved_run(tmp_path, moved_model(kind), "source"), tmp_path / "exp")
    return tmp_path / "exp"


def edit_config(directory, **changes):
    path = directory / CONFIG_NAME
    fields = json.loads(path.read_text())
    path.write_text(json.dumps({**fields, **changes}))


def rewrite_tensor(directory, name, array):
    tensors = safetensors.numpy.load_file(str(directory / WEIGHTS_NAME))
    tensors[name] = array
    safetensors.numpy.save_file(tensors, str(directory / WEIGHTS_NAME))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / WEIGHTS_NAME).unlink(), "model.safetensors does not exist"),
        (lambda d: (d / CONFIG_NAME).unlink(), "config.json does not exist"),
        (lambda d: (d / CONFIG_NAME).write_text("{not json"), "not readable JSON"),
        (lambda d: edit_config(d, format_version=7), "format_version 7"),
        (lambda d: edit_config(d, attention="sparse"), "unknown attention kind 'sparse'"),
        (lambda d: edit_config(d, n_layers=3), "missing ['blocks.2."),
        (lambda d: edit_config(d, attention="vanilla"), "unexpected ['blocks.0.attn.W1'"),
        (lambda d: edit_config(d, d_model=16), "implies (256, 16)"),
        (
            lambda d: rewrite_tensor(d, "wpe", np.zeros((4, 8), np.float32)),
            "tensor wpe has shape (4, 8), but config.json implies (8, 8)",
        ),
        (
            lambda d: rewrite_tensor(d, "wpe", np.zeros((8, 8), np.float64)),
            "tensor wpe has dtype F64, expected F32",
        ),
        (
            lambda d: (d / WEIGHTS_NAME).write_bytes((d / WEIGHTS_NAME).read_bytes()[:-10]),
            "(truncated, or trailing bytes)",
        ),
        (
            lambda d: (d / WEIGHTS_NAME).write_bytes(struct.pack("<Q", 10**7) + b"{}"),
            "truncated or not a safetensors file",
        ),
    ],
)
def test_bad_exports_are_refused_with_one_line(damage, message, tmp_path, capsys):
    directory = exported(tmp_path)
    damage(directory)
    with pytest.raises(ExportError) as err:
        read_pretrained(directory)
    assert message in str(err.value)
    assert main(["import", str(directory), "--out", str(tmp_path / "run")]) == 2
    line = capsys.readouterr().err
    assert message in line and line.count("\n") == 1 and "Traceback" not in line
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_import_and_export_refuse_to_overwrite_without_force(tmp_path, capsys):
    directory = exported(tmp_path)
    run = tmp_path / "run"
    assert main(["import", str(directory), "--out", str(run)]) == 0
    before = (run / "checkpoint.npz").read_bytes()
    assert main(["import", str(directory), "--out", str(run)]) == 2
    assert "--force" in capsys.readouterr().err
    assert (run / "checkpoint.npz").read_bytes() == before
    assert main(["import", str(directory), "--out", str(run), "--force"]) == 0
    assert main(["export", "--checkpoint", str(run), "--out", str(directory)]) == 2
    assert main(["export", "--checkpoint", str(run), "--out", str(directory), "--force"]) == 0
    assert main(["import", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r2")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_an_imported_run_works_with_eval_sample_plot_and_compare(tmp_path, capsys):
    directory = exported(tmp_path, "dense+vanilla")
    run = tmp_path / "run"
    assert main(["import", str(directory), "--out", str(run)]) == 0
    other = saved_run(tmp_path, moved_model("random"), "other")
    assert main(["eval", "--checkpoint", str(run), "--split", "test", "--batch-size", "4"]) == 0
    assert main(["sample", "--checkpoint", str(run), "--length", "5"]) == 0
    plot = ["plot", "--checkpoint", str(run), "--text", "abc", "--out", str(tmp_path / "p")]
    assert main(plot) == 0
    assert (
        main(["compare", str(run), str(other), "--text", "abc", "--out", str(tmp_path / "c")]) == 0
    )
    capsys.readouterr()
    assert any((tmp_path / "p").iterdir()) and any((tmp_path / "c").iterdir())
