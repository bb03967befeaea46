import subprocess
import sys

import pytest
from helpers import TINY_MODEL_ARGS

from minisynth import __version__
from minisynth.cli import build_parser, main

TRAIN = ["train", *TINY_MODEL_ARGS, "--steps", "6", "--eval-interval", "3",
         "--sample-length", "10", "--quiet"]  # fmt: skip


def test_version_and_help():
    out = subprocess.run(
        [sys.executable, "-m", "minisynth", "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert __version__ in out
    out = subprocess.run(
        [sys.executable, "-m", "minisynth", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in ("train", "eval", "sample", "data"):
        assert command in out


def test_train_eval_sample(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*TRAIN, "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "final validation BPC" in out and (run / "checkpoint.npz").exists()
    assert main(["eval", "--checkpoint", str(run / "checkpoint.npz"), "--split", "test"]) == 0
    assert "test BPC" in capsys.readouterr().out
    prompt = "x" * 40  # longer than max_len 16: the window slides
    assert (
        main(
            [
                "sample",
                "--checkpoint",
                str(run / "checkpoint.npz"),
                "--prompt",
                prompt,
                "--length",
                "20",
                "--top-k",
                "5",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.startswith(prompt)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--attention", "bogus"], "valid kinds are"),
        (["train", "--d-model", "10", "--n-heads", "3"], "not divisible"),
        (
            [
                "train",
                "--attention",
                "factorized_dense",
                "--max-len",
                "16",
                "--attention-options",
                '{"factors": [3, 5]}',
            ],
            "multiply",
        ),
        (["eval", "--checkpoint", "/nonexistent/ckpt.npz"], "does not exist"),
        (["sample", "--checkpoint", "/"], "directory"),
    ],
)
def test_user_errors_exit_2_with_one_line(argv, message, capsys, tmp_path):
    if argv[0] == "train":
        argv = [*argv, "--out", str(tmp_path), "--steps", "1", "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--d-model", "0"],
        ["train", "--steps", "-3"],
        ["train", "--lr", "nan"],
        ["sample", "--checkpoint", "c", "--temperature", "0"],
    ],
)
def test_bad_numbers_are_rejected_by_the_parser(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "expected a positive" in capsys.readouterr().err


def test_train_flags_take_their_defaults_from_the_config_fields():
    """One source for every default: `minisynth train` with no flags gives ModelConfig()'s
    and TrainConfig()'s values, and every field but vocab_size (bytes) has a flag."""
    import dataclasses

    from minisynth.cli.parser import CONFIG_FLAGS
    from minisynth.model import ModelConfig
    from minisynth.train import TrainConfig

    args = build_parser().parse_args(["train"])
    for config in (ModelConfig(), TrainConfig()):
        for field in dataclasses.fields(config):
            if field.name == "vocab_size":
                assert field.name not in CONFIG_FLAGS
                continue
            assert field.name in CONFIG_FLAGS, f"{field.name} has no flag"
            assert getattr(args, field.name) == getattr(config, field.name), field.name
    assert args.typed == set()
    typed = build_parser().parse_args(["train", "--lr", "0.01", "--d-model", "64"]).typed
    assert typed == {"lr", "d_model"}
