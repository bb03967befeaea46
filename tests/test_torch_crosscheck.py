"""Cross-check against PyTorch autograd: an independent test of the hand-written backward.

The finite-difference checks of test_model.py compare minisynth with itself;
here the same weights are transplanted into :mod:`minisynth.torch_model` (the
PyTorch twin of the model, with autograd's backward) and losses, every gradient
and one full optimizer step (clip + AdamW) must agree. Skipped when torch is not
installed (the ``torch`` extra; CI fails on skips); ``import minisynth`` never
imports torch.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from minisynth import ModelConfig, SynthesizerLM, fast, layers  # noqa: E402
from minisynth.gradcheck import rel_error  # noqa: E402
from minisynth.optim import AdamW, clip_grad_norm, synthetic_logits_lr_scale  # noqa: E402
from minisynth.torch_model import SynthesizerTorch, adamw_like, train_step  # noqa: E402

KINDS = [
    "vanilla",
    "dense",
    "random",
    "random_fixed",
    "factorized_dense",
    "factorized_random",
    "dense+vanilla",
    "random+vanilla",
    "factorized_dense+random_fixed",
    "factorized_random+dense",
    "dense+random+vanilla",
]
ZERO_GRAD = 1e-12  # float64 gradients below this norm are rounding noise (loss ~ 2.4)
V, B, T = 11, 3, 6  # T < max_len, so the unused rows/columns of wpe, R, W2 ... are exercised


# issue 18's options: the authors' dense+vanilla, R's initial scale
OPTION_CASES = [
    ("dense+vanilla", {"dense_from_query": True}),
    ("dense+random+vanilla", {"dense_from_query": True, "init_std": 1.0}),
    ("random_fixed", {"init_std": 0.0}),
]


def tiny_model(kind, dtype, seed=1, backend="numpy", **options):
    """A tiny model moved off its init (zero biases, unit gains, equal mixture weights)."""
    config = ModelConfig(
        vocab_size=V, d_model=8, n_heads=2, n_layers=2, max_len=8, attention=kind,
        attention_options=options,
    )  # max_len 8 gives factorized_dense the factors (2, 4)  # fmt: skip
    model = SynthesizerLM(config, seed=seed, dtype=dtype, backend=backend)
    rng = np.random.default_rng(seed)
    for p in list(model.params.values()) + list(model.buffers.values()):
        p += rng.uniform(-0.3, 0.3, p.shape).astype(dtype)
    idx = rng.integers(0, V, size=(B, T))
    targets = rng.integers(0, V, size=(B, T))
    return model, idx, targets


@pytest.fixture(autouse=True)
def _one_thread():
    """Small matrices: torch's thread pool only adds overhead (and noise) here."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("kind", KINDS)
def test_loss_and_every_gradient_match_torch_autograd(kind, backend):
    check_against_autograd(kind, backend)


@pytest.mark.parametrize(("kind", "options"), OPTION_CASES, ids=[k for k, _ in OPTION_CASES])
def test_options_match_torch_autograd(kind, options):
    check_against_autograd(kind, "numba", **options)


def check_against_autograd(kind, backend, **options):
    model, idx, targets = tiny_model(kind, np.float64, backend=backend, **options)
    assert (model.ops is layers) == (backend == "numpy")  # the path this test checks
    tmodel = SynthesizerTorch.from_minisynth(model)
    loss, grads = fast.loss_and_grads(model, idx, targets)  # numba: the batch in shards
    t_loss, t_grads = tmodel.loss_and_grads(idx, targets)
    assert loss == pytest.approx(t_loss, rel=1e-10)
    assert set(grads) == set(t_grads)
    for name, g in grads.items():
        assert g.shape == t_grads[name].shape, name
        if np.linalg.norm(t_grads[name]) < ZERO_GRAD:
            # zero in exact arithmetic (the key bias shifts a whole softmax row): the
            # relative error of two rounding noises means nothing, both must be negligible
            assert np.linalg.norm(g) < ZERO_GRAD, f"{kind} [{backend}]: {name} is not ~0"
            continue
        err = rel_error(g, t_grads[name])
        assert err < 1e-8, f"{kind} [{backend}]: gradient of {name}: relative error {err:.3e}"


@pytest.mark.parametrize("kind", KINDS)
def test_float32_loss_matches_torch(kind):
    model, idx, targets = tiny_model(kind, np.float32)
    tmodel = SynthesizerTorch.from_minisynth(model)
    assert tmodel.wte.dtype == torch.float32
    assert model.loss(idx, targets) == pytest.approx(tmodel.loss(idx, targets), rel=1e-5)


@pytest.mark.parametrize(
    ("kind", "synthetic_scale"),
    [("dense+vanilla", 1.0), ("random", 10.0), ("factorized_random+vanilla", 10.0)],
)
def test_clip_and_adamw_steps_match_torch(kind, synthetic_scale):
    """Three steps of loss, backward, clip and AdamW land on the same weights in both."""
    model, idx, targets = tiny_model(kind, np.float64)
    tmodel = SynthesizerTorch.from_minisynth(model)
    scale = synthetic_logits_lr_scale(synthetic_scale)
    opt = AdamW(model.params, lr=1e-2, weight_decay=0.1, lr_scale=scale)
    topt = adamw_like(tmodel, opt)
    # the groups must be minisynth's: alpha, embeddings and 1-D arrays undecayed; R, R1,
    # R2 at their own learning rate
    group_of = {id(p): g for g in topt.param_groups for p in g["params"]}
    for name, param in tmodel.named_parameters():
        group = group_of[id(param)]
        assert (group["weight_decay"] > 0) == opt.decay[name], name
        assert group["lr_scale"] == opt.lr_scale[name], name
    for step, max_norm in enumerate([0.05, 100.0, 0.05]):  # clipping both engaged and idle
        lr = 1e-2 / (step + 1)
        loss, grads = model.loss_and_grads(idx, targets)
        clip_grad_norm(grads, max_norm)
        opt.step(grads, lr=lr)
        t_loss = train_step(tmodel, topt, idx, targets, lr=lr, max_norm=max_norm)
        assert loss == pytest.approx(t_loss, rel=1e-10)
    for name, value in tmodel.numpy_params().items():
        err = rel_error(model.params[name], value)
        assert err < 1e-10, f"{kind}: {name} after 3 steps: relative error {err:.3e}"
