"""Hostile files and careless hands (issue 25): bounded memory, one run per folder, nothing of
the user's deleted, refusals before any change, a strict safetensors reader, messages that
help. Each test is a case that failed before; the fuzz tests run under an address-space
limit set with ``resource.setrlimit`` in a subprocess."""

import errno
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_MODEL_ARGS

from minisynth import ModelConfig, SynthesizerLM
from minisynth import checkpoint as ckpt
from minisynth import train as train_module
from minisynth.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from minisynth.cli import main
from minisynth.export import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    ExportError,
    export_checkpoint,
    read_pretrained,
    read_safetensors_header,
    save_safetensors,
    write_pretrained,
)
from minisynth.run_folder import LOCK_NAME

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc, flock")
TINY = dict(d_model=16, n_heads=2, n_layers=1, max_len=16)
TRAIN = ["train", *TINY_MODEL_ARGS, "--sample-length", "0", "--quiet", "--backend", "numpy"]


def one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def export_dir(tmp_path, **config_changes):
    """A valid export of a tiny model, with ``config_changes`` written into its config.json."""
    model = SynthesizerLM(ModelConfig(attention="dense", **TINY), seed=1)
    out = tmp_path / "exp"
    write_pretrained(out, model.config, {**model.params, **model.buffers})
    if config_changes:
        fields = json.loads((out / CONFIG_NAME).read_text())
        (out / CONFIG_NAME).write_text(json.dumps({**fields, **config_changes}))
    return out


def safetensors_file(path, header, data=b""):
    head = json.dumps(header).encode() if not isinstance(header, bytes) else header
    path.write_bytes(struct.pack("<Q", len(head)) + head + data)
    return path


# ------------------------------------------------------------------ 1. bounded memory
@pytest.mark.parametrize(
    ("changes", "needle"),
    [(dict(max_len=2_000_000), "wpe has shape (16, 16), but config.json implies (2000000, 16)"),
     (dict(attention="random", max_len=100_000), "more than the limit of 4.00 GiB")],
)  # fmt: skip
def test_a_tiny_export_cannot_ask_for_a_huge_model(changes, needle, tmp_path, capsys):
    """Refused from the config and the weights' header, before any model array exists."""
    out = export_dir(tmp_path, **changes)
    with pytest.raises(ExportError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        read_pretrained(out)
    assert main(["import", str(out), "--out", str(tmp_path / "run")]) == 2
    one_line_error(capsys, needle)


@pytest.mark.parametrize(
    ("flags", "needle"),
    [(["--d-model", "100000", "--n-heads", "4"], "blocks.0.mlp.W1 (100000, 400000)"),
     (["--batch-size", "10000000"], "--batch-size 10000000")],
)  # fmt: skip
def test_train_flags_asking_for_too_much_memory_are_one_line(flags, needle, tmp_path, capsys):
    assert main([*TRAIN, *flags, "--out", str(tmp_path / "run")]) == 2
    one_line_error(capsys, needle, "more than the limit")
    assert not (tmp_path / "run").exists()  # refused before anything was made


def test_the_memory_limit_is_overridable(monkeypatch):
    monkeypatch.setenv("MINISYNTH_MAX_BYTES", "1000")
    with pytest.raises(ValueError, match="more than the limit of 1,000 bytes"):
        SynthesizerLM(ModelConfig(**TINY))
    monkeypatch.setenv("MINISYNTH_MAX_BYTES", "lots")
    with pytest.raises(ValueError, match="MINISYNTH_MAX_BYTES must be a positive number"):
        SynthesizerLM(ModelConfig(**TINY))


def test_a_checkpoint_entry_larger_than_its_config_allows_is_never_inflated(tmp_path):
    model = SynthesizerLM(ModelConfig(**TINY))
    good = tmp_path / "good.npz"
    save_checkpoint(good, model)
    arrays = dict(np.load(good))
    arrays["wte"] = np.zeros(4_000_000, np.float32)  # 16 MB, deflated to a few kB
    np.savez_compressed(tmp_path / "bomb.npz", **arrays)
    assert (tmp_path / "bomb.npz").stat().st_size < 200_000
    with pytest.raises(CheckpointError, match="entry 'wte' declares 16,000,128 bytes"):
        read_checkpoint(tmp_path / "bomb.npz")


def test_a_memory_error_is_one_line(tmp_path, capsys, monkeypatch):
    def exhausted(*args, **kwargs):
        raise MemoryError("Unable to allocate 7.45 GiB for an array")

    monkeypatch.setattr(train_module, "train", exhausted)
    assert main([*TRAIN, "--out", str(tmp_path / "run")]) == 2
    one_line_error(capsys, "out of memory (Unable to allocate 7.45 GiB")


@linux_only
@pytest.mark.parametrize("reader", [read_safetensors_header, read_checkpoint])
def test_only_regular_files_are_read(reader, tmp_path):
    """/dev/zero would be read forever; a folder is not a file."""
    for path in (Path("/dev/zero"), tmp_path):
        if reader is read_checkpoint and path == tmp_path:
            continue  # a folder stands for the run's checkpoint.npz: covered elsewhere
        with pytest.raises(CheckpointError, match="not a regular file"):
            reader(path)


FUZZ_WORKER = textwrap.dedent(
    """
    import json, resource, struct, sys, tempfile
    from pathlib import Path
    from hypothesis import given, settings, strategies as st, HealthCheck
    from minisynth.export import ExportError, read_pretrained, write_pretrained
    from minisynth import ModelConfig, SynthesizerLM

    LIMIT = int(sys.argv[1])
    folder = Path(tempfile.mkdtemp())
    model = SynthesizerLM(ModelConfig(d_model=16, n_heads=2, n_layers=1, max_len=16))
    write_pretrained(folder / "good", model.config, {**model.params, **model.buffers})
    good_config = json.loads((folder / "good" / "config.json").read_text())
    good_weights = (folder / "good" / "model.safetensors").read_bytes()
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))  # from here on: bounded
    ints = st.one_of(st.integers(-3, 40), st.integers(10**6, 10**12), st.none(),
                     st.text(max_size=3))
    json_values = st.recursive(
        st.one_of(st.none(), st.booleans(), ints, st.text(max_size=5)),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
        max_leaves=8)
    entry = st.fixed_dictionaries({"dtype": st.sampled_from(["F32", "F64", "I8", 7]),
                                   "shape": st.lists(ints, max_size=3),
                                   "data_offsets": st.lists(ints, max_size=3)})
    names = st.sampled_from(["wte", "wpe", "__metadata__", "x"])
    headers = st.one_of(json_values,
                        st.dictionaries(names, st.one_of(entry, json_values), max_size=4))
    configs = st.dictionaries(st.sampled_from(sorted(good_config)), json_values | ints, max_size=3)
    n = [0]

    @settings(max_examples=int(sys.argv[2]), deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(header=headers, length=st.one_of(st.none(), st.integers(0, 2**64 - 1)),
           tail=st.binary(max_size=64), config=configs, use_good_weights=st.booleans())
    def case(header, length, tail, config, use_good_weights):
        d = folder / "case"
        d.mkdir(exist_ok=True)
        (d / "config.json").write_text(json.dumps({**good_config, **config}))
        head = json.dumps(header).encode()
        weights = good_weights if use_good_weights else (
            struct.pack("<Q", len(head) if length is None else length) + head + tail)
        (d / "model.safetensors").write_bytes(weights)
        try:
            read_pretrained(d)
        except ExportError:
            n[0] += 1
    case()
    print("ok", n[0])
    """
)


@linux_only
def test_malformed_exports_raise_only_the_documented_error_within_a_memory_bound():
    """Hypothesis-drawn headers, lengths and configs, read under RLIMIT_AS = 2 GiB: each
    either imports or raises ExportError, never another exception or a MemoryError."""
    examples = "60" if os.environ.get("CI") else "150"
    proc = subprocess.run(
        [sys.executable, "-c", FUZZ_WORKER, str(2 * 2**30), examples],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0 and proc.stdout.startswith("ok"), proc.stderr[-3000:]
    assert int(proc.stdout.split()[1]) > 0  # most cases are refused


# ------------------------------------------------------------- 2. one run per folder
def start_run(out, steps=100_000):
    return subprocess.Popen(
        [sys.executable, "-m", "minisynth", *TRAIN, "--steps", str(steps), "--eval-interval",
         "1000000", "--out", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def wait_for_lock(out, proc, timeout=60):
    lock = out / LOCK_NAME
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if lock.exists() and lock.read_text().strip() == str(proc.pid):
            return
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.1)
    raise AssertionError("the run never took its folder's lock")


@linux_only
def test_a_folder_in_use_refuses_train_force_and_resume(tmp_path):
    out = tmp_path / "run"
    first = start_run(out)
    try:
        wait_for_lock(out, first)
        time.sleep(0.5)  # some metrics written
        for extra in ([], ["--force"], ["--resume"]):
            proc = subprocess.run(
                [sys.executable, "-m", "minisynth", *TRAIN, "--steps", "5", "--out", str(out),
                 *extra], capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert proc.returncode == 2, (extra, proc.stderr)
            assert f"in use by another minisynth run (process {first.pid})" in proc.stderr
    finally:
        first.send_signal(signal.SIGINT)  # the run saves a checkpoint and ends
        first.wait(timeout=120)
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # one run's history, nothing interleaved
    assert load_checkpoint(out)[1]["step"] >= steps[-1]


@linux_only
def test_two_runs_started_at_once_into_a_new_folder(tmp_path):
    out = tmp_path / "new"
    runs = [start_run(out, steps=3000) for _ in range(2)]
    try:
        deadline = time.monotonic() + 120
        while all(r.poll() is None for r in runs) and time.monotonic() < deadline:
            time.sleep(0.1)
        losers = [r for r in runs if r.poll() is not None]
        assert len(losers) == 1 and losers[0].returncode == 2
        assert "in use by another minisynth run" in losers[0].stderr.read()
    finally:
        for r in runs:
            if r.poll() is None:
                r.send_signal(signal.SIGINT)
                r.wait(timeout=120)


# ------------------------------------------------- 3. only minisynth's files are deleted
def test_the_users_hidden_tmp_files_and_folders_survive(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".notes.tmp").write_text("mine")
    (out / ".draft.minisynth-dir.tmp").mkdir()  # a folder of minisynth's shape: not swept
    stale = out / ".checkpoint.npz.minisynth-0123456789ab.tmp"
    stale.write_bytes(b"half a checkpoint")
    for extra in ([], ["--force"]):
        assert main([*TRAIN, "--steps", "2", "--out", str(out), *extra]) == 0
        assert (out / ".notes.tmp").read_text() == "mine"
        assert (out / ".draft.minisynth-dir.tmp").is_dir()
        assert not stale.exists()  # minisynth's own leftover is swept


def test_a_run_that_fails_before_its_first_checkpoint_leaves_a_reusable_folder(
    tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"

    def broken(model, x, y):
        raise FloatingPointError("injected failure in the first step")

    with monkeypatch.context() as patch:
        patch.setattr(train_module.fast, "loss_and_grads", broken)
        with pytest.raises(FloatingPointError):
            settings = train_module.TrainConfig(steps=3, warmup_steps=1, batch_size=2)
            train_module.train(ModelConfig(**TINY), settings, out, progress=False,
                               log=lambda *a: None, backend="numpy")  # fmt: skip
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoint.npz").exists()
    assert main([*TRAIN, "--steps", "2", "--out", str(out)]) == 0  # no --force needed


# ----------------------------------------------------------- 4. refusals before changes
def test_an_imported_run_resumes_with_the_data_named_now(tmp_path, capsys):
    model = SynthesizerLM(ModelConfig(attention="vanilla", **TINY), seed=1)
    source = tmp_path / "src"
    save_checkpoint(source / "checkpoint.npz", model)
    export_checkpoint(source, tmp_path / "exp")
    assert main(["import", str(tmp_path / "exp"), "--out", str(tmp_path / "imp")]) == 0
    assert main([*TRAIN, "--out", str(tmp_path / "imp"), "--resume", "--steps", "4"]) == 0
    _, data = load_checkpoint(tmp_path / "imp")
    assert int(data["step"]) == 4
    assert json.loads(str(data["data"]))["sha256"]  # recorded from now on
    assert main([*TRAIN, "--out", str(tmp_path / "imp"), "--resume", "--steps", "6"]) == 0


def run_with_metrics(tmp_path):
    out = tmp_path / "run"
    assert main([*TRAIN, "--steps", "4", "--eval-interval", "2", "--log-interval", "1",
                 "--out", str(out)]) == 0  # fmt: skip
    return out


def rewrite_entry(checkpoint, **entries):
    arrays = dict(np.load(checkpoint))
    arrays.update(entries)
    np.savez(checkpoint, **arrays)


@pytest.mark.parametrize(
    ("entry", "value", "needle"),
    [("step", np.array(-5), "step counter -5"), ("step", np.array([1, 2]), "step counter [1, 2]"),
     ("rng_state", np.array('{"bit_generator": "x"}'), "entry rng_state is not a data RNG")],
)  # fmt: skip
def test_a_refused_resume_leaves_the_metrics_untouched(entry, value, needle, tmp_path, capsys):
    out = run_with_metrics(tmp_path)
    rewrite_entry(out / "checkpoint.npz", **{entry: value})
    before = (out / "metrics.jsonl").read_bytes()
    assert main([*TRAIN, "--out", str(out), "--resume", "--steps", "8"]) == 2
    one_line_error(capsys, needle)
    assert (out / "metrics.jsonl").read_bytes() == before


def test_a_data_entry_without_a_checksum_resumes(tmp_path, capsys):
    out = run_with_metrics(tmp_path)
    rewrite_entry(out / "checkpoint.npz", data=np.array('{"spec": "bundled"}'))
    assert main([*TRAIN, "--out", str(out), "--resume", "--steps", "6"]) == 0


# ------------------------------------------------------- 5. a strict safetensors reader
@pytest.mark.parametrize(
    ("header", "data", "needle"),
    [
        ([1, 2], b"", "header is a JSON list"),
        ("wte", b"", "header is a JSON str"),
        (None, b"", "header is a JSON NoneType"),
        (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, b"", "nested too deeply"),
        (b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
         b'"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}', b"\0" * 8,
         "names ['a'] more than once"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12,
         "tensor 'b' starts at data byte 4, expected 8"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8,
         "tensor 'a' starts at data byte 4, expected 0"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 8,
         "cover 4 bytes of data but the file holds 8"),
        ({"__metadata__": {"format": 1}}, b"", "__metadata__ must map strings to strings"),
        ({"a": {"dtype": "F32", "shape": [1]}}, b"", "tensor 'a' must have exactly dtype, shape"),
        ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4,
         "tensor 'a' has the shape [-1]"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4,
         "tensor 'a' has a byte range that does not fit its shape (2,)"),
    ],
)  # fmt: skip
def test_the_safetensors_reader_is_as_strict_as_the_format(header, data, needle, tmp_path):
    path = safetensors_file(tmp_path / "m.safetensors", header, data)
    with pytest.raises(ExportError) as err:
        read_safetensors_header(path)
    assert needle in str(err.value) and str(path) in str(err.value)


def test_a_header_over_the_formats_limit_is_refused_unread(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", 100_000_001) + b"{}")
    with pytest.raises(ExportError, match="over the format's limit of 100,000,000"):
        read_safetensors_header(path)


def test_non_finite_weights_are_refused_unless_asked_for(tmp_path, capsys):
    out = export_dir(tmp_path)
    from minisynth.export import load_safetensors

    arrays, _ = load_safetensors(out / WEIGHTS_NAME)
    arrays["wpe"][0, 0] = np.nan
    save_safetensors(out / WEIGHTS_NAME, arrays)
    assert main(["import", str(out), "--out", str(tmp_path / "a")]) == 2
    one_line_error(capsys, "tensor wpe holds NaN or infinite values", "--allow-nonfinite")
    assert main(["import", str(out), "--out", str(tmp_path / "b"), "--allow-nonfinite"]) == 0


def test_a_vocabulary_other_than_bytes_is_refused(tmp_path, capsys):
    out = export_dir(tmp_path, vocab_size=300)
    assert main(["import", str(out), "--out", str(tmp_path / "run")]) == 2
    one_line_error(capsys, "vocab_size 300", "must be 256")


# ----------------------------------------------------------- 6. messages that help
def test_a_file_that_is_not_an_npz_gets_no_pickle_advice(tmp_path, capsys):
    bad = tmp_path / "x.npz"
    bad.write_bytes(os.urandom(4096))
    assert main(["eval", "--checkpoint", str(bad)]) == 2
    err = one_line_error(capsys, str(bad), "not a readable .npz archive")
    assert "pickle" not in err


def test_a_full_disk_names_the_intact_checkpoint(tmp_path, capsys, monkeypatch):
    real_save = ckpt.save_checkpoint
    calls = []

    def disk_full_on_the_second_save(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(ckpt, "save_checkpoint", disk_full_on_the_second_save)
    out = tmp_path / "run"
    assert main([*TRAIN, "--steps", "4", "--eval-interval", "2", "--out", str(out)]) == 2
    one_line_error(capsys, "no space left", f"the last good checkpoint, {out / 'checkpoint.npz'}")
    assert int(load_checkpoint(out)[1]["step"]) == 2


def test_export_force_writes_both_files_or_neither(tmp_path, monkeypatch):
    out = export_dir(tmp_path)
    before = {name: (out / name).read_bytes() for name in (WEIGHTS_NAME, CONFIG_NAME)}
    other = SynthesizerLM(ModelConfig(attention="random", **TINY), seed=2)
    from minisynth import export

    real_write = export.atomic_write

    def fails_on_the_config(path, write):
        if CONFIG_NAME in Path(path).name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, write)

    monkeypatch.setattr(export, "atomic_write", fails_on_the_config)
    with pytest.raises(OSError):
        write_pretrained(out, other.config, {**other.params, **other.buffers})
    assert {name: (out / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in out.iterdir()) == sorted(before)  # no temporary left


def test_curves_out_with_a_suffix_that_is_no_image_format(tmp_path, capsys):
    out = run_with_metrics(tmp_path)
    capsys.readouterr()
    assert main(["curves", str(out), "--out", str(tmp_path / "x.jpg")]) == 2
    one_line_error(capsys, ".jpg is not an image format")
    assert not (tmp_path / "x.jpg").exists()


def test_sample_and_eval_refuse_a_model_that_does_not_read_bytes(tmp_path, capsys):
    """A token above 255 would be wrapped into a wrong byte."""
    save_checkpoint(tmp_path / "c.npz", SynthesizerLM(ModelConfig(vocab_size=300, **TINY)))
    for command in ("sample", "eval"):
        assert main([command, "--checkpoint", str(tmp_path / "c.npz"), "--backend", "numpy"]) == 2
        one_line_error(capsys, "vocab_size 300", "must be 256")
