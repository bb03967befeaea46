"""``minisynth train --engine torch``: the same run as the NumPy engine, computed by PyTorch.

In float64 the two engines' losses, weights and AdamW moments agree to rounding over
several steps from the same weights and batches; in float32 whole runs agree to float32
rounding; a checkpoint of either engine loads and resumes in the other.
"""

import json
import os
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest

from minisynth import ModelConfig, SynthesizerLM
from minisynth.checkpoint import load_checkpoint
from minisynth.data import get_batch, load_bundled
from minisynth.optim import AdamW, lr_schedule, synthetic_logits_lr_scale
from minisynth.train import NumpyEngine, TrainConfig, train

torch = pytest.importorskip("torch")
from minisynth.torch_engine import TorchEngine  # noqa: E402

KINDS = ["vanilla", "dense", "random", "factorized_random", "dense+vanilla", "random+vanilla"]


def noise_driven(name):
    """Vanilla's key bias gets no gradient but rounding noise (softmax ignores a constant
    added to a row, tutorial 06); AdamW normalises that noise, different on each engine,
    into real steps, so the two engines move it differently. It is left out of the
    comparisons of weights."""
    return name.endswith("bk")


def run_like(kind, dtype):
    """What an engine reads of a run: the model, its AdamW and the data."""
    config = ModelConfig(d_model=16, n_heads=2, n_layers=2, max_len=12, attention=kind)
    model = SynthesizerLM(config, seed=3, dtype=dtype)
    optimizer = AdamW(model.params, lr=1e-2, weight_decay=0.1,
                      lr_scale=synthetic_logits_lr_scale(5.0))  # fmt: skip
    return types.SimpleNamespace(model=model, optimizer=optimizer,
                                 splits={"train": load_bundled()[:20_000]})  # fmt: skip


def steps(engine, run, n=6, seed=0):
    """n steps of the training loop's body (schedule, batch, loss, clip, AdamW)."""
    rng, losses = np.random.default_rng(seed), []
    for step in range(n):
        lr = lr_schedule(step, max_lr=1e-2, warmup_steps=2, total_steps=n, min_lr=1e-3)
        x, y = get_batch(run.splits["train"], 4, run.model.config.max_len, rng)
        losses.append(engine.forward_backward(x, y))
        engine.update(lr, grad_clip=0.5)  # small enough to clip: the clipping path runs
    engine.sync()
    return np.array(losses)


@pytest.mark.parametrize("kind", KINDS)
def test_float64_steps_equal_the_numpy_engine(kind):
    ours, theirs = run_like(kind, np.float64), run_like(kind, np.float64)
    losses = steps(NumpyEngine(ours), ours)
    torch_losses = steps(TorchEngine(theirs, device="cpu"), theirs)
    np.testing.assert_allclose(torch_losses, losses, rtol=1e-12)
    for name, p in ours.model.params.items():
        if noise_driven(name):  # in float64: steps of about lr * noise / eps, 1e-7
            assert np.abs(theirs.model.params[name] - p).max() < 1e-6
            continue
        np.testing.assert_allclose(theirs.model.params[name], p, rtol=1e-10, atol=1e-12,
                                   err_msg=name)  # fmt: skip
        np.testing.assert_allclose(theirs.optimizer.m[name], ours.optimizer.m[name],
                                   rtol=1e-10, atol=1e-14, err_msg=name)  # fmt: skip
        np.testing.assert_allclose(theirs.optimizer.v[name], ours.optimizer.v[name],
                                   rtol=1e-10, atol=1e-18, err_msg=name)  # fmt: skip
    assert theirs.optimizer.t == ours.optimizer.t == 6
    assert not np.allclose(ours.model.params["wte"], run_like(kind, np.float64).model.params["wte"])


def test_an_optimizer_state_continues_on_the_other_engine():
    ours, theirs = run_like("dense+vanilla", np.float64), run_like("dense+vanilla", np.float64)
    steps(NumpyEngine(ours), ours, n=3)
    steps(NumpyEngine(theirs), theirs, n=3)
    engine = TorchEngine(theirs, device="cpu")  # minisynth's m, v, t -> torch's state
    state = engine.optimizer.state[engine.params["blocks.0.mlp.W1"]]
    assert int(state["step"]) == 3
    assert np.array_equal(state["exp_avg"].numpy(), theirs.optimizer.m["blocks.0.mlp.W1"])
    steps(NumpyEngine(ours), ours, n=3, seed=1)  # three more steps on each engine
    steps(engine, theirs, n=3, seed=1)  # ... and torch's state -> minisynth's
    assert theirs.optimizer.t == ours.optimizer.t == 6
    for name, p in ours.model.params.items():
        if not noise_driven(name):
            np.testing.assert_allclose(theirs.model.params[name], p, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(theirs.optimizer.v[name], ours.optimizer.v[name],
                                       rtol=1e-10, atol=1e-18)  # fmt: skip


SMALL = dict(d_model=16, n_heads=2, n_layers=1, max_len=16)
SCHEDULE = dict(batch_size=4, steps=20, warmup_steps=4, eval_interval=10, log_interval=5,
                sample_length=8)  # fmt: skip


def losses_of(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").open()]


@pytest.mark.parametrize("kind", ["dense+vanilla", "random"])
def test_a_float32_run_is_the_numpy_engines_to_rounding(tmp_path, kind):
    config, schedule = ModelConfig(attention=kind, **SMALL), TrainConfig(**SCHEDULE)
    a = train(config, schedule, tmp_path / "numpy", progress=False, backend="numpy")
    b = train(config, schedule, tmp_path / "torch", progress=False, engine="torch", device="cpu")
    np.testing.assert_allclose(losses_of(tmp_path / "torch"), losses_of(tmp_path / "numpy"),
                               rtol=2e-5)  # fmt: skip
    assert b["val_bpc"] == pytest.approx(a["val_bpc"], rel=2e-5)
    records = [json.loads(line) for line in (tmp_path / "torch" / "metrics.jsonl").open()]
    assert {r["engine"] for r in records} == {"torch"}
    first_numpy = json.loads((tmp_path / "numpy" / "metrics.jsonl").open().readline())
    assert set(records[0]) == set(first_numpy)  # the same fields on both engines
    ours, _ = load_checkpoint(tmp_path / "numpy")
    theirs, _ = load_checkpoint(tmp_path / "torch")
    for name, p in ours.params.items():
        if not noise_driven(name):
            np.testing.assert_allclose(theirs.params[name], p, rtol=1e-3, atol=2e-5, err_msg=name)


@pytest.mark.parametrize("first, then", [("numpy", "torch"), ("torch", "numpy")])
def test_a_run_continues_on_the_other_engine(tmp_path, first, then):
    config, schedule = ModelConfig(attention="random+vanilla", **SMALL), TrainConfig(**SCHEDULE)
    train(config, schedule, tmp_path / "whole", progress=False, backend="numpy")
    split = tmp_path / "split"
    train(config, schedule, split, progress=False, backend="numpy", engine=first,
          device="cpu", stop_after=10)  # fmt: skip
    # the checkpoint of step 10 loads bit-exactly on the other engine
    saved, data = load_checkpoint(split)
    mirror = types.SimpleNamespace(model=saved, optimizer=AdamW(saved.params))
    mirror.optimizer.load_state_dict(
        {k[len("optim."):]: v for k, v in data.items() if k.startswith("optim.")})  # fmt: skip
    engine = TorchEngine(mirror, device="cpu")
    for name, p in saved.params.items():
        assert np.array_equal(engine.params[name].detach().numpy(), p), name
    train(config, schedule, split, resume=True, progress=False, backend="numpy", engine=then,
          device="cpu")  # fmt: skip
    np.testing.assert_allclose(losses_of(split), losses_of(tmp_path / "whole"), rtol=2e-5)
    engines = [json.loads(line)["engine"] for line in (split / "metrics.jsonl").open()]
    assert engines == [first] * 2 + [then] * 2  # logged every 5 steps, switched at 10


def test_the_numpy_engine_never_imports_torch(tmp_path):
    code = (
        "import sys\n"
        "from minisynth.cli import main\n"
        f"status = main(['train', '--steps', '3', '--warmup-steps', '1', '--d-model', '16', "
        f"'--n-heads', '2', '--n-layers', '1', '--max-len', '16', '--batch-size', '2', "
        f"'--out', {str(tmp_path / 'run')!r}, '--quiet'])\n"
        "assert status == 0, status\n"
        "assert 'torch' not in sys.modules, 'the numpy engine imported torch'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_without_torch_the_torch_engine_says_how_to_install_it(tmp_path):
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # as if PyTorch were not installed\n"
        "from minisynth.cli import main\n"
        f"sys.exit(main(['train', '--engine', 'torch', '--out', {str(tmp_path / 'run')!r}]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        'minisynth train: error: the torch engine needs PyTorch: pip install "minisynth[torch]"'
    ]
    assert not (tmp_path / "run").exists()  # refused before the run folder was touched


# ------------------------------------------------------------- several processes
TINY_FLAGS = ["--engine", "torch", "--device", "cpu", "--d-model", "16", "--n-heads", "2",
              "--n-layers", "1", "--max-len", "16", "--batch-size", "4", "--warmup-steps", "4",
              "--eval-interval", "10", "--log-interval", "5", "--sample-length", "8",
              "--attention", "dense+vanilla", "--quiet"]  # fmt: skip


def torchrun(n, *args, timeout=180):
    """``torchrun --nproc_per_node n -m minisynth train ...`` with this Python."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n),
           "--standalone", "-m", "minisynth", "train", *args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def weights(run_dir):
    model, _ = load_checkpoint(run_dir)
    return {n: p for n, p in model.params.items() if not noise_driven(n)}


def test_two_gloo_processes_train_as_one_with_the_whole_batch(tmp_path):
    proc = torchrun(2, *TINY_FLAGS, "--steps", "20", "--out", str(tmp_path / "two"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 processes (torch.distributed, gloo), 2 rows of each batch" in proc.stdout
    assert proc.stdout.count("final validation BPC") == 1  # process 0 alone reports
    from minisynth.cli import main

    assert main(["train", *TINY_FLAGS, "--steps", "20", "--out", str(tmp_path / "one")]) == 0
    np.testing.assert_allclose(losses_of(tmp_path / "two"), losses_of(tmp_path / "one"),
                               rtol=1e-5)  # fmt: skip
    one, two = weights(tmp_path / "one"), weights(tmp_path / "two")
    for name, p in one.items():
        np.testing.assert_allclose(two[name], p, rtol=1e-4, atol=1e-6, err_msg=name)


def test_a_run_resumes_on_another_number_of_processes(tmp_path):
    from minisynth.cli import main

    resume = ["--resume", "--steps", "20", "--engine", "torch", "--device", "cpu", "--quiet"]
    # the same protocol twice (10 steps, then resumed to 20): on 1 + 1 and on 2 + 1 processes
    assert main(["train", *TINY_FLAGS, "--steps", "10", "--out", str(tmp_path / "one")]) == 0
    assert main(["train", "--out", str(tmp_path / "one"), *resume]) == 0
    proc = torchrun(2, *TINY_FLAGS, "--steps", "10", "--out", str(tmp_path / "two"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert main(["train", "--out", str(tmp_path / "two"), *resume]) == 0
    np.testing.assert_allclose(losses_of(tmp_path / "two"), losses_of(tmp_path / "one"),
                               rtol=1e-5)  # fmt: skip
    assert len(losses_of(tmp_path / "two")) == 4


def test_a_batch_that_does_not_divide_is_refused_by_every_process(tmp_path):
    flags = [f if f != "4" or i != TINY_FLAGS.index("--batch-size") + 1 else "3"
             for i, f in enumerate(TINY_FLAGS)]  # fmt: skip
    proc = torchrun(2, *flags, "--steps", "4", "--out", str(tmp_path / "run"), timeout=120)
    assert proc.returncode != 0
    assert "--batch-size 3 does not divide among 2 processes" in proc.stderr
    assert not (tmp_path / "run" / "checkpoint.npz").exists()


def test_ctrl_c_stops_every_process_at_one_step_and_saves(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--standalone", "-m", "minisynth", "train", *TINY_FLAGS,
           "--steps", "100000", "--eval-interval", "50000", "--out", str(run)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (run / "metrics.jsonl").exists() or len(losses_of(run)) < 3:
            assert proc.poll() is None and time.monotonic() < deadline, "no progress"
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)  # as Ctrl-C in the terminal
        out, err = proc.communicate(timeout=90)  # no process left hanging
    finally:
        proc.kill()
    assert "interrupted: saved step" in out, err[-3000:]
    saved = int(np.load(run / "checkpoint.npz")["step"])
    assert 0 < saved < 100000
    assert f"saved step {saved} " in out


def test_bf16_autocast_and_torch_compile_train_the_same_run(tmp_path):
    from minisynth.cli import main

    base = ["train", *TINY_FLAGS, "--steps", "20", "--sample-length", "0"]
    assert main([*base, "--out", str(tmp_path / "eager")]) == 0
    assert main([*base, "--out", str(tmp_path / "bf16"), "--bf16"]) == 0
    assert main([*base, "--out", str(tmp_path / "compiled"), "--compile"]) == 0
    eager = losses_of(tmp_path / "eager")
    np.testing.assert_allclose(losses_of(tmp_path / "compiled"), eager, rtol=1e-4)
    np.testing.assert_allclose(losses_of(tmp_path / "bf16"), eager, rtol=2e-2)  # 8-bit mantissa
    assert not np.allclose(losses_of(tmp_path / "bf16"), eager, rtol=1e-6)  # it did change
    model, _ = load_checkpoint(tmp_path / "bf16")
    assert model.params["wte"].dtype == np.float32  # the weights stay float32


def test_torch_options_are_refused_on_the_numpy_engine(tmp_path, capsys):
    from minisynth.cli import main

    assert main(["train", "--bf16", "--out", str(tmp_path / "run")]) == 2
    assert "--bf16 and --compile are options of --engine torch" in capsys.readouterr().err


def test_an_error_in_one_process_ends_every_process(tmp_path):
    """Process 1 fails at its 8th step: nothing hangs, the run's checkpoint of step 5 stays."""
    script = tmp_path / "fail_on_rank_1.py"
    script.write_text(
        "import os, sys\n"
        "from minisynth import torch_engine\n"
        "from minisynth.cli import main\n"
        "step = torch_engine.TorchEngine.forward_backward\n"
        "calls = []\n"
        "def failing(self, x, y):\n"
        "    calls.append(1)\n"
        "    if os.environ['RANK'] == '1' and len(calls) == 8:\n"
        "        raise RuntimeError('a failure in process 1')\n"
        "    return step(self, x, y)\n"
        "torch_engine.TorchEngine.forward_backward = failing\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    run = tmp_path / "run"
    flags = [*TINY_FLAGS, "--steps", "20", "--eval-interval", "5", "--out", str(run)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", str(script), "train", *flags]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert proc.returncode != 0
    assert "a failure in process 1" in proc.stderr
    assert int(np.load(run / "checkpoint.npz")["step"]) == 5  # the last good one
