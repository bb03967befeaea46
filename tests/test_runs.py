"""Runs you can trust: resume continues the saved run, nothing is overwritten silently,
files get the user's umask, and the command line explains every flag."""

import argparse
import gzip
import json
import os
import shlex
import stat
from importlib import resources

import numpy as np
import pytest
import scipy.stats

from minisynth.checkpoint import load_checkpoint
from minisynth.cli import build_parser, main
from minisynth.model import ModelConfig
from minisynth.train import RunConflict, TrainConfig, train, unigram_bpc

# the transcript: a non-default model on a custom data file
FIRST_RUN = ["train", "--steps", "8", "--eval-interval", "4", "--d-model", "16",
             "--n-heads", "2", "--n-layers", "1", "--max-len", "16", "--batch-size", "4",
             "--sample-length", "0", "--quiet"]  # fmt: skip


@pytest.fixture
def text_file(tmp_path):
    """A custom data file: 6 KB of enwik8."""
    corpus = resources.files("minisynth") / "corpus" / "enwik8-prefix-1048576.gz"
    path = tmp_path / "a.txt"
    path.write_bytes(gzip.decompress(corpus.read_bytes())[:6000])
    return path


def run_files(run):
    return {p.name: p.read_bytes() for p in sorted(run.iterdir())}


def metrics_steps(run):
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def one_error_line(capsys):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_resume_with_only_out_continues_the_saved_run(tmp_path, text_file, monkeypatch, capsys):
    run = tmp_path / "r"
    assert main([*FIRST_RUN, "--data", str(text_file), "--out", str(run)]) == 0
    # from another working directory, with none of the first run's flags
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--steps", "12", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert str(text_file) in out and "bundled" not in out  # the run's own data
    model, data = load_checkpoint(run)
    assert int(data["step"]) == 12
    assert model.config.d_model == 16 and model.config.max_len == 16
    saved = json.loads(str(data["train_config"]))
    assert saved["steps"] == 12 and saved["batch_size"] == 4 and saved["warmup_steps"] == 8
    assert metrics_steps(run) == [4, 8, 10, 12]  # log every 10, evaluate every 4


def test_extending_a_finished_run_keeps_its_history(tmp_path, text_file):
    run = tmp_path / "r"
    args = [*FIRST_RUN, "--data", str(text_file), "--log-interval", "1", "--out", str(run)]
    assert main(args) == 0
    first = (run / "metrics.jsonl").read_text().splitlines()
    assert main(["train", "--out", str(run), "--resume", "--steps", "12", "--quiet"]) == 0
    extended = (run / "metrics.jsonl").read_text().splitlines()
    assert extended[:8] == first and metrics_steps(run) == list(range(1, 13))


def test_a_fresh_run_into_a_run_stops_before_touching_it(tmp_path, text_file, capsys):
    run = tmp_path / "r"
    assert main([*FIRST_RUN, "--data", str(text_file), "--out", str(run)]) == 0
    before = run_files(run)
    capsys.readouterr()
    assert main([*FIRST_RUN, "--steps", "2", "--data", str(text_file), "--out", str(run)]) == 2
    err = one_error_line(capsys)
    assert "--resume" in err and "--force" in err and "--out" in err
    assert run_files(run) == before
    # metrics alone (a run killed before its first checkpoint) also count
    (run / "checkpoint.npz").unlink()
    assert main([*FIRST_RUN, "--out", str(run)]) == 2
    assert (run / "metrics.jsonl").read_bytes() == before["metrics.jsonl"]
    # --force starts over
    assert main([*FIRST_RUN, "--steps", "2", "--data", str(text_file), "--out", str(run),
                 "--force"]) == 0  # fmt: skip
    assert metrics_steps(run) == [2]


def test_resume_refuses_flags_that_differ_from_the_saved_run(
    tmp_path, text_file, capsys, monkeypatch
):
    run = tmp_path / "r"
    assert main([*FIRST_RUN, "--data", str(text_file), "--out", str(run)]) == 0
    before = run_files(run)
    capsys.readouterr()
    argv = ["train", "--out", str(run), "--resume", "--steps", "10", "--d-model", "32",
            "--lr", "0.01", "--data", "bundled", "--quiet"]  # fmt: skip
    assert main(argv) == 2
    err = one_error_line(capsys)
    assert "--d-model was 16 there and is 32 here" in err
    assert "--lr was 0.003 there and is 0.01 here" in err
    assert f"--data was {text_file} there and is bundled here" in err
    assert "--steps" not in err
    assert run_files(run) == before
    # the same values typed again are the saved run: accepted (a relative path included)
    monkeypatch.chdir(text_file.parent)
    assert main(["train", "--out", str(run), "--resume", "--steps", "10", "--d-model", "16",
                 "--data", text_file.name, "--quiet"]) == 0  # fmt: skip


def test_resume_refuses_data_that_changed(tmp_path, text_file, capsys):
    run = tmp_path / "r"
    assert main([*FIRST_RUN, "--data", str(text_file), "--out", str(run)]) == 0
    before = run_files(run)
    data = bytearray(text_file.read_bytes())
    data[100] ^= 1  # same size, one bit different
    text_file.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--steps", "10", "--quiet"]) == 2
    err = one_error_line(capsys)
    assert "changed since the run started" in err and "SHA-256" in err
    assert run_files(run) == before


def test_resume_refuses_fewer_steps_than_done(tmp_path, text_file, capsys):
    run = tmp_path / "r"
    assert main([*FIRST_RUN, "--warmup-steps", "2", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--steps", "7", "--quiet"]) == 2
    assert "below the 8 steps" in one_error_line(capsys)


def test_library_train_refuses_overwrite_and_mismatched_resume(tmp_path):
    mc = ModelConfig(attention="random", d_model=16, n_heads=2, n_layers=1, max_len=16)
    tc = TrainConfig(batch_size=2, steps=2, warmup_steps=1, eval_interval=2, sample_length=0)
    quiet = dict(progress=False, log=lambda *a: None)
    train(mc, tc, tmp_path, **quiet)
    with pytest.raises(RunConflict, match="already holds a run"):
        train(mc, tc, tmp_path, **quiet)
    with pytest.raises(RunConflict, match="d_model saved 16, given 32"):
        train(ModelConfig(**{**mc.__dict__, "d_model": 32}), tc, tmp_path, resume=True, **quiet)
    with pytest.raises(RunConflict, match="batch_size saved 2, given 3"):
        train(mc, TrainConfig(**{**tc.__dict__, "batch_size": 3}), tmp_path, resume=True, **quiet)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_files_get_the_users_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        run = tmp_path / "r"
        assert main([*FIRST_RUN, "--steps", "2", "--out", str(run)]) == 0
        assert main(["train", "--out", str(run), "--resume", "--steps", "4", "--quiet"]) == 0
    finally:
        os.umask(old)
    for name in ("checkpoint.npz", "metrics.jsonl"):
        assert stat.S_IMODE((run / name).stat().st_mode) == 0o666 & ~mask, name


def _subparsers(parser, prefix="minisynth"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix} {name}", sub
                yield from _subparsers(sub, f"{prefix} {name}")


def test_every_option_of_every_command_has_help_with_its_default():
    commands = dict(_subparsers(build_parser()))
    assert {"minisynth train", "minisynth eval", "minisynth sample", "minisynth data fetch",
            "minisynth plot", "minisynth compare", "minisynth curves"} <= set(commands)  # fmt: skip
    for command, sub in commands.items():
        for action in sub._actions:
            if not action.option_strings or action.dest == "help":
                continue
            assert action.help, f"{command} {action.option_strings[0]} has no help"
            assert "(default: " in action.help or "(required)" in action.help, (
                f"{command} {action.option_strings[0]}: help does not state its default"
            )


def test_every_command_ends_with_examples_that_parse():
    parser = build_parser()
    for command, sub in _subparsers(parser):
        epilog = sub.epilog or ""
        assert epilog.startswith("examples:"), command
        lines = [line.split("  #")[0].strip() for line in epilog.splitlines()[1:]]
        assert 2 <= len(lines) <= 3, command
        for line in lines:
            assert line.startswith(command), line
            parser.parse_args(shlex.split(line)[1:])  # a usage error would exit


def test_train_help_names_units_and_the_clamped_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for phrase in ("in bytes", "optimisation steps", "or --lr if that is lower",
                   "or --steps if the run is shorter", "examples:"):  # fmt: skip
        assert phrase in text, phrase


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--lr", "1e-3", "--min-lr", "1e-2"], "--min-lr 0.01 is above --lr 0.001"),
        (["--steps", "5", "--warmup-steps", "6"], "--warmup-steps 6 is more than --steps 5"),
    ],
)
def test_contradicting_schedule_flags_are_refused(flags, message, tmp_path, capsys):
    assert main([*FIRST_RUN, *flags, "--out", str(tmp_path / "r")]) == 2
    assert message in one_error_line(capsys)
    assert not (tmp_path / "r").exists()


def test_untyped_schedule_defaults_fit_a_short_run(tmp_path):
    run = tmp_path / "r"
    assert main([*FIRST_RUN, "--steps", "3", "--lr", "1e-4", "--out", str(run)]) == 0
    saved = json.loads(str(load_checkpoint(run)[1]["train_config"]))
    assert saved["warmup_steps"] == 3 and saved["min_lr"] == 1e-4


def test_eval_and_sample_take_a_run_folder(tmp_path, capsys):
    run = tmp_path / "r"
    assert main([*FIRST_RUN, "--steps", "2", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run)]) == 0
    by_folder = capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(run / "checkpoint.npz")]) == 0
    assert capsys.readouterr().out == by_folder and "val BPC" in by_folder
    assert main(["sample", "--checkpoint", str(run), "--prompt", "ab", "--length", "5"]) == 0
    assert capsys.readouterr().out.startswith("ab")
    assert main(["sample", "--checkpoint", str(tmp_path)]) == 2
    assert "no checkpoint.npz" in one_error_line(capsys)


def test_the_summary_puts_the_bpc_in_context(tmp_path, text_file, capsys):
    assert main([*FIRST_RUN, "--data", str(text_file), "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    data = np.frombuffer(text_file.read_bytes(), dtype=np.uint8)
    train_part, val_part = data[:5400], data[5400:5700]
    expected = unigram_bpc(train_part, val_part)
    assert f"a uniform guess scores 8.00 and the byte frequencies of the train split " \
           f"{expected:.2f}" in out  # fmt: skip


def test_unigram_bpc_is_the_cross_entropy_of_smoothed_byte_frequencies():
    rng = np.random.default_rng(0)
    train_bytes = rng.integers(0, 40, size=5000).astype(np.uint8)
    eval_bytes = rng.integers(0, 60, size=700).astype(np.uint8)  # some never seen in training
    q = (np.bincount(train_bytes, minlength=256) + 1) / (train_bytes.size + 256)
    p = np.bincount(eval_bytes, minlength=256) / eval_bytes.size
    # cross-entropy H(p, q) = H(p) + KL(p || q), in bits, by scipy
    expected = scipy.stats.entropy(p, base=2) + scipy.stats.entropy(p, q, base=2)
    assert unigram_bpc(train_bytes, eval_bytes) == pytest.approx(expected, rel=1e-12)
    uniform = rng.integers(0, 256, size=200_000).astype(np.uint8)
    assert unigram_bpc(uniform, uniform) == pytest.approx(8.0, abs=0.01)


def test_first_numba_use_is_announced_before_the_progress_bar(tmp_path, capsys, monkeypatch):
    from minisynth import train as train_module

    monkeypatch.setattr(train_module, "_compiled_in_this_process", False)
    assert main([*FIRST_RUN, "--steps", "2", "--out", str(tmp_path / "a")]) == 0
    assert main([*FIRST_RUN, "--steps", "2", "--out", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert out.count("Numba kernels (compiled on first use") == 1
