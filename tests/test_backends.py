"""Which code runs is chosen per model, and nothing else changes it.

A model built in Python runs the reference (:mod:`minisynth.layers`, the math); one
built with ``backend="numba"`` runs the fast path, for itself alone. These tests
record the Python functions actually called (``sys.setprofile``, per thread) and
check their identity, not only equal numbers: after the ``minisynth`` command ran in
this process, in two threads at once, and through a direct import.
"""

import contextlib
import inspect
import os
import sys
import threading
from unittest import mock

import numpy as np
import pytest
import test_attention  # the reference gradient checks, run again below after a train
import test_layers
from conftest import _reference_state
from helpers import TINY_MODEL_ARGS

from minisynth import ModelConfig, SynthesizerLM, cli, fast, layers
from minisynth.backend import BACKENDS
from minisynth.fast import kernels
from minisynth.train import TrainConfig, train

FAST_DIR = os.path.dirname(fast.__file__) + os.sep
# the reference function each kernel stands in for: what a reference run must call
REFERENCE_CODE = {kernel.reference.__code__ for kernel in kernels.TWINS}
TRAIN = [*TINY_MODEL_ARGS, "--steps", "2", "--eval-interval", "2", "--sample-length", "0"]


@contextlib.contextmanager
def recorded_calls():
    """The code objects of every Python function called in this thread inside the block."""
    called = set()

    def profile(frame, event, arg):
        if event == "call":
            called.add(frame.f_code)

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        yield called
    finally:
        sys.setprofile(previous)


def fast_path_functions(called):
    """Names of the functions of minisynth/fast/ among ``called``."""
    return sorted({code.co_name for code in called if code.co_filename.startswith(FAST_DIR)})


def tiny_batch(seed=0, B=3, T=8):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (B, T)), rng.integers(0, 256, (B, T))


def test_the_references_live_in_layers_and_optim():
    files = {code.co_filename for code in REFERENCE_CODE}
    assert files == {layers.__file__, sys.modules["minisynth.optim"].__file__}


def test_reference_checks_still_run_the_reference_after_an_in_process_train(tmp_path, capsys):
    """The command runs its own model on the fast path; afterwards the gradient checks of
    the layers and the attention kinds, and a model built in Python, call the reference."""
    assert cli.main(["train", *TRAIN, "--quiet", "--out", str(tmp_path / "run")]) == 0
    from minisynth.layers import gelu_forward  # a direct import means the reference

    assert gelu_forward.__code__.co_filename == layers.__file__
    x, y = tiny_batch()
    with recorded_calls() as called:
        test_layers.test_layernorm_gradients()
        test_layers.test_gelu_gradients()
        test_layers.test_cross_entropy_gradients()
        test_layers.test_embedding_gradients()
        test_attention.test_attention_gradients(kind="dense+vanilla", causal=True)
        test_attention.test_attention_gradients(kind="random", causal=False)
        model = SynthesizerLM(ModelConfig(d_model=16, n_heads=2, n_layers=1, max_len=8))
        model.loss_and_grads(x, y)
    assert model.backend == "numpy" and model.ops is layers
    assert not fast_path_functions(called), fast_path_functions(called)
    missing = {code.co_name for code in REFERENCE_CODE - called} - {"adamw_update"}
    assert not missing, f"reference functions that never ran: {sorted(missing)}"


def test_entry_points_leave_the_next_model_on_the_reference(tmp_path, capsys):
    out = str(tmp_path / "run")
    config = ModelConfig(d_model=16, n_heads=2, n_layers=1, max_len=16)
    settings = TrainConfig(batch_size=2, steps=2, eval_interval=2, warmup_steps=1, sample_length=8)
    train(config, settings, out, progress=False, log=lambda *a: None)  # backend "numba"
    assert cli.main(["eval", "--checkpoint", out]) == 0
    assert cli.main(["sample", "--checkpoint", out, "--length", "5"]) == 0
    assert cli.main(["train", *TRAIN, "--quiet", "--out", out]) == 2  # refused: a run is there
    with pytest.raises(ValueError, match="unknown backend"):
        train(config, settings, str(tmp_path / "other"), backend="cuda")
    numba_model = SynthesizerLM(config, backend="numba")
    numba_model.generate(np.array([1, 2, 3]), 4)
    x, y = tiny_batch(T=16)
    with recorded_calls() as called:
        SynthesizerLM(config).loss_and_grads(x, y)
    assert not fast_path_functions(called)


def test_two_threads_with_different_backends_each_run_their_own():
    config = ModelConfig(d_model=16, n_heads=2, n_layers=2, max_len=8, attention="dense+vanilla")
    # the full path, whatever $MINISYNTH_TILES says: every twin of the core must run
    models = {b: SynthesizerLM(config, seed=0, dtype=np.float64, backend=b, tiles="never")
              for b in BACKENDS}  # fmt: skip
    x, y = tiny_batch()
    start = threading.Barrier(len(BACKENDS))
    results = {}

    def run(name):
        with recorded_calls() as called:
            start.wait()  # both threads compute at once
            for _ in range(5):
                loss, grads = models[name].loss_and_grads(x, y)
        results[name] = called, loss, grads

    workers = [threading.Thread(target=run, args=(b,)) for b in BACKENDS]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    (ref_calls, ref_loss, ref_grads), (fast_calls, fast_loss, fast_grads) = (
        results["numpy"],
        results["numba"],
    )
    assert not fast_path_functions(ref_calls)
    assert REFERENCE_CODE - {kernels.adamw_update.reference.__code__} <= ref_calls
    twins = {kernel.__name__ for kernel in kernels.TWINS} - {"adamw_update"}
    assert twins <= set(fast_path_functions(fast_calls))
    assert not (REFERENCE_CODE & fast_calls)  # no twin fell back to its reference
    assert fast_loss == pytest.approx(ref_loss, rel=1e-12)
    for name, g in ref_grads.items():
        np.testing.assert_allclose(fast_grads[name], g, rtol=1e-9, atol=1e-12, err_msg=name)


def test_the_optimizer_carries_its_own_update():
    params = {"w": np.ones(3)}
    backend = inspect.signature(SynthesizerLM).parameters["backend"]
    assert backend.default == "numpy"  # a model is the reference
    from minisynth.optim import AdamW, adamw_update

    assert AdamW(params).update is adamw_update
    assert AdamW(params, backend="numba").update is kernels.adamw_update


def test_the_guard_of_every_test_sees_a_rebound_function():
    """conftest's autouse guard compares these snapshots after each test: a twin swapped
    into minisynth.layers (as a global switch would do) is seen, and undone here."""
    before, _ = _reference_state()
    with mock.patch.object(layers, "gelu_forward", kernels.gelu_forward):
        during, _ = _reference_state()
    after, _ = _reference_state()
    key = ("minisynth.layers", "gelu_forward")
    assert during[key] is kernels.gelu_forward and before[key] is after[key]
    assert all(before[k] is after[k] for k in before)
