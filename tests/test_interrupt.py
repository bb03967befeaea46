"""Interrupting training at any moment never leaves a broken checkpoint, and --resume continues."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
from helpers import TINY_MODEL_ARGS

from minisynth.checkpoint import load_checkpoint
from minisynth.cli import main

TRAIN = ["train", *TINY_MODEL_ARGS, "--eval-interval", "3", "--log-interval", "1",
         "--sample-length", "0", "--quiet"]  # fmt: skip


def start(out, steps):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "minisynth", *TRAIN, "--steps", str(steps), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def wait_for_step(out, step, proc, timeout=120):
    """Wait until metrics.jsonl has logged ``step`` (the run is mid-training)."""
    deadline = time.monotonic() + timeout
    metrics = out / "metrics.jsonl"
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if metrics.exists():
            lines = [x for x in metrics.read_text().splitlines() if x.strip()]
            try:
                if lines and json.loads(lines[-1])["step"] >= step:
                    return
            except json.JSONDecodeError:
                pass  # a line being written
        time.sleep(0.02)
    raise AssertionError(f"training did not reach step {step} in {timeout} s")


def test_killed_run_leaves_a_complete_checkpoint_and_resumes(tmp_path):
    out = tmp_path / "run"
    proc = start(out, steps=100_000)
    try:
        wait_for_step(out, 20, proc)
        # kill at several moments, including while checkpoints are being written
        for _ in range(5):
            time.sleep(np.random.default_rng().uniform(0.0, 0.2))
            model, data = load_checkpoint(out / "checkpoint.npz")  # always complete
            assert int(data["step"]) % 3 == 0
    finally:
        proc.kill()
        proc.wait()
    model, data = load_checkpoint(out / "checkpoint.npz")
    killed_at = int(data["step"])
    assert killed_at >= 18
    # resume to a total just past the checkpoint
    assert main([*TRAIN, "--steps", str(killed_at + 4), "--out", str(out), "--resume"]) == 0
    _, data = load_checkpoint(out / "checkpoint.npz")
    assert int(data["step"]) == killed_at + 4
    assert not list(out.glob(".*.tmp"))  # a temporary file of the killed write is cleaned up
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, killed_at + 5))  # no duplicated or missing steps


def test_sigint_saves_the_current_step_and_exits_130(tmp_path):
    out = tmp_path / "run"
    proc = start(out, steps=100_000)
    try:
        wait_for_step(out, 7, proc)
        proc.send_signal(signal.SIGINT)
        stdout, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted: saved step" in stdout
    _, data = load_checkpoint(out / "checkpoint.npz")
    logged = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert int(data["step"]) == logged[-1] >= 7  # saved exactly where it stopped
