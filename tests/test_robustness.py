"""Bad input, corrupt files and missing dependencies fail clearly (issue 9)."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import TINY_MODEL_ARGS

from minisynth import ModelConfig, SynthesizerLM
from minisynth.checkpoint import save_checkpoint
from minisynth.cli import main

TINY = [*TINY_MODEL_ARGS, "--steps", "3", "--eval-interval", "3", "--warmup-steps", "1",
        "--sample-length", "0", "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A good checkpoint and broken variants of it."""
    d = tmp_path_factory.mktemp("ckpts")
    model = SynthesizerLM(ModelConfig(d_model=16, n_heads=2, n_layers=1, max_len=16))
    good = d / "good.npz"
    save_checkpoint(good, model)
    raw = good.read_bytes()
    (d / "truncated.npz").write_bytes(raw[: len(raw) // 2])
    (d / "text.npz").write_text("hello, not an archive")
    arrays = dict(np.load(good))
    missing = dict(arrays)
    del missing["blocks.0.attn.W2"]
    np.savez(d / "missing.npz", **missing)
    other = dict(arrays)
    other["config"] = np.array(ModelConfig(d_model=32, n_heads=2, n_layers=1, max_len=16).to_json())
    np.savez(d / "other_config.npz", **other)
    noconfig = dict(arrays)
    del noconfig["config"]
    np.savez(d / "noconfig.npz", **noconfig)
    return d


BROKEN = ["truncated", "text", "missing", "other_config", "noconfig"]


def commands(path, out):
    return [
        ["eval", "--checkpoint", path],
        ["sample", "--checkpoint", path, "--length", "3"],
        ["plot", "--checkpoint", path, "--text", "abc", "--out", out],
    ]


@pytest.mark.parametrize("name", BROKEN)
def test_broken_checkpoints_exit_2_with_a_named_problem(checkpoints, name, capsys, tmp_path):
    for argv in commands(str(checkpoints / f"{name}.npz"), str(tmp_path)):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err and "KeyError" not in err
        assert f"{name}.npz" in err  # names the file


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--data", "/nonexistent/file.txt"], "not found"),
        (["--data", "/"], "directory"),
        (["--attention", "dense+bogus"], "valid kinds are"),
        (["--n-heads", "3"], "not divisible"),
        (
            ["--attention", "factorized_dense", "--attention-options", '{"factors": [3, 3]}'],
            "multiply",
        ),
    ],
)
def test_train_input_errors(argv, message, capsys, tmp_path):
    assert main(["train", *TINY, *argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.parametrize("size", ["0", "-4"])
def test_zero_or_negative_sizes_are_usage_errors(size, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--max-len", size])
    assert exc.value.code == 2
    assert "positive integer" in capsys.readouterr().err


def test_max_len_the_data_cannot_fill(tmp_path, capsys):
    data = tmp_path / "short.bin"
    data.write_bytes(os.urandom(300))
    code = main(["train", *TINY, "--max-len", "64", "--data", str(data), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "too few for max_len 64" in err


def test_non_utf8_data_and_prompts(tmp_path, capsys):
    data = tmp_path / "binary.bin"
    data.write_bytes(bytes(range(256)) * 8 + b"\xff\xfe\x80" * 100)  # not valid UTF-8
    assert main(["train", *TINY, "--data", str(data), "--out", str(tmp_path / "run")]) == 0
    ckpt = str(tmp_path / "run" / "checkpoint.npz")
    prompt = b"caf\xe9 \xff".decode("utf-8", errors="surrogateescape")  # as argv delivers it
    capsys.readouterr()
    assert main(["sample", "--checkpoint", ckpt, "--prompt", prompt, "--length", "5"]) == 0
    out = capsys.readouterr().out
    assert out  # decoded with replacement, printed without an encoding error


def test_numpy_path_works_without_numba(tmp_path):
    """With numba unimportable, everything runs on NumPy with exactly one warning."""
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "numba.py").write_text("raise ImportError('numba is broken on this platform')\n")
    script = textwrap.dedent(
        """
        import warnings
        import numpy as np
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import minisynth
            from minisynth import ModelConfig, SynthesizerLM
            config = ModelConfig(d_model=8, n_heads=2, n_layers=1, max_len=4)
            m = SynthesizerLM(config, backend="numba")  # asks for the fast path
            step = minisynth.fast.loss_and_grads
            loss, grads = step(m, np.zeros((2, 4), dtype=np.int64), np.ones((2, 4), dtype=np.int64))
            loss2, _ = step(m, np.zeros((2, 4), dtype=np.int64), np.ones((2, 4), dtype=np.int64))
        msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        assert len(msgs) == 1, msgs
        assert "numba" in msgs[0] and "NumPy reference" in msgs[0], msgs
        assert m.backend == "numpy" and m.ops is minisynth.layers
        assert np.isfinite(loss) and loss == loss2
        print("ok")
        """
    )
    env = {
        **os.environ,
        "PYTHONPATH": f"{fake}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    res = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
