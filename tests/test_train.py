import json

import numpy as np
import pytest

from minisynth import ModelConfig
from minisynth.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from minisynth.train import TrainConfig, TrainingDiverged, decode, evaluate, train

TINY = dict(d_model=16, n_heads=2, n_layers=1, max_len=16)


def losses(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines)}


def tiny_train_config(**kw):
    cfg = dict(
        batch_size=4,
        steps=12,
        warmup_steps=2,
        eval_interval=4,
        log_interval=1,
        sample_length=8,
        lr=1e-2,
        min_lr=1e-3,
    )
    cfg.update(kw)
    return TrainConfig(**cfg)


@pytest.mark.parametrize("kind", ["dense+vanilla", "random_fixed"])
def test_resume_reproduces_the_uninterrupted_run_exactly(tmp_path, kind):
    mc = ModelConfig(attention=kind, **TINY)
    full = train(mc, tiny_train_config(), tmp_path / "full", progress=False, log=lambda *a: None)
    part = train(
        mc,
        tiny_train_config(),
        tmp_path / "part",
        progress=False,
        log=lambda *a: None,
        stop_after=5,
    )
    assert part["interrupted"] and part["steps"] == 5
    resumed = train(
        mc, tiny_train_config(), tmp_path / "part", resume=True, progress=False, log=lambda *a: None
    )
    assert resumed["steps"] == 12 and not resumed["interrupted"]
    assert losses(tmp_path / "part") == losses(tmp_path / "full")  # bit-for-bit equal
    assert resumed["val_bpc"] == full["val_bpc"]
    a, _ = load_checkpoint(tmp_path / "full" / "checkpoint.npz")
    b, _ = load_checkpoint(tmp_path / "part" / "checkpoint.npz")
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name])
    for name in a.buffers:
        np.testing.assert_array_equal(a.buffers[name], b.buffers[name])


def test_training_writes_checkpoint_metrics_and_sample(tmp_path):
    mc = ModelConfig(attention="dense", **TINY)
    result = train(mc, tiny_train_config(), tmp_path, progress=False, log=lambda *a: None)
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 13))
    assert all({"step", "lr", "loss", "tokens_per_s"} <= set(r) for r in records)
    assert [r["step"] for r in records if "val_bpc" in r] == [4, 8, 12]
    assert records[-1]["loss"] < records[0]["loss"]
    assert isinstance(result["sample"], str)
    model, data = load_checkpoint(tmp_path / "checkpoint.npz")
    assert int(data["step"]) == 12 and model.config == mc
    assert "optim.m.wte" in data and "optim.t" in data


def test_evaluate_is_bits_per_character():
    from minisynth import SynthesizerLM

    model = SynthesizerLM(ModelConfig(attention="random", **TINY))
    model.params["wte"][...] = 0.0  # uniform predictions over 256 bytes: exactly 8 bits
    bpc = evaluate(model, np.arange(200, dtype=np.uint8))
    assert bpc == pytest.approx(8.0, rel=1e-6)


def test_divergence_stops_with_step_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    from minisynth import model as model_module
    from minisynth import train as train_module

    mc = ModelConfig(attention="dense", **TINY)
    train(mc, tiny_train_config(steps=4), tmp_path, progress=False, log=lambda *a: None)
    before = (tmp_path / "checkpoint.npz").read_bytes()
    original = model_module.SynthesizerLM.loss_and_grads
    calls = {"n": 0}

    def exploding(self, idx, targets):
        loss, grads = original(self, idx, targets)
        calls["n"] += 1
        return (float("nan") if calls["n"] == 3 else loss), grads

    monkeypatch.setattr(model_module.SynthesizerLM, "loss_and_grads", exploding)
    monkeypatch.setattr(train_module, "_compiled_in_this_process", True)  # no warm-up call
    with pytest.raises(TrainingDiverged, match="step 7.*learning rate"):
        train(
            mc,
            tiny_train_config(steps=8),
            tmp_path,
            resume=True,
            progress=False,
            log=lambda *a: None,
            backend="numpy",  # one loss_and_grads call per step (no shards)
        )
    assert (tmp_path / "checkpoint.npz").read_bytes() == before


def test_checkpoint_errors_are_named(tmp_path):
    from minisynth import SynthesizerLM

    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.npz")
    with pytest.raises(CheckpointError, match="directory"):
        load_checkpoint(tmp_path)
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(tmp_path / "junk.npz")
    model = SynthesizerLM(ModelConfig(attention="dense", **TINY))
    good = tmp_path / "good.npz"
    save_checkpoint(good, model)
    (tmp_path / "cut.npz").write_bytes(good.read_bytes()[:-500])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(tmp_path / "cut.npz")
    arrays = dict(np.load(good))
    del arrays["blocks.0.mlp.W1"]
    np.savez(tmp_path / "missing.npz", **arrays)
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(tmp_path / "missing.npz")
    arrays = dict(np.load(good))
    arrays["wpe"] = np.zeros((3, 16), dtype=np.float32)
    np.savez(tmp_path / "other.npz", **arrays)
    with pytest.raises(CheckpointError, match="wpe"):
        load_checkpoint(tmp_path / "other.npz")


def test_decode_replaces_invalid_utf8():
    assert decode(np.array([104, 105, 0xFF])) == "hi\ufffd"


def test_bad_train_configs():
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="min_lr"):
        TrainConfig(lr=1e-3, min_lr=1e-2)
    with pytest.raises(ValueError, match="synthetic_lr_scale"):
        TrainConfig(synthetic_lr_scale=0)


def test_synthetic_lr_scale_moves_R_further_and_resumes_exactly(tmp_path):
    mc = ModelConfig(attention="random", **TINY)
    quiet = dict(progress=False, log=lambda *a: None)
    start = initial_R(mc)
    travelled = {}
    for scale in (1.0, 10.0):
        tc = tiny_train_config(synthetic_lr_scale=scale)
        train(mc, tc, tmp_path / f"x{scale}", **quiet)
        model, _ = load_checkpoint(tmp_path / f"x{scale}")
        travelled[scale] = np.abs(model.params["blocks.0.attn.R"] - start).max()
    assert travelled[10.0] > 5 * travelled[1.0]
    tc = tiny_train_config(synthetic_lr_scale=10.0)
    train(mc, tc, tmp_path / "part", stop_after=5, **quiet)
    train(mc, tc, tmp_path / "part", resume=True, **quiet)
    assert losses(tmp_path / "part") == losses(tmp_path / "x10.0")


def initial_R(mc):
    from minisynth import SynthesizerLM

    return SynthesizerLM(mc, seed=0).params["blocks.0.attn.R"].copy()  # train()'s seed 0


def test_max_len_the_data_cannot_fill(tmp_path):
    small = tmp_path / "small.txt"
    small.write_bytes(b"x" * 400)  # val split: 20 bytes
    mc = ModelConfig(attention="dense", d_model=8, n_heads=2, n_layers=1, max_len=64)
    with pytest.raises(ValueError, match="too few for max_len 64"):
        train(mc, tiny_train_config(data=str(small)), tmp_path / "o", progress=False)
