"""AdamW, gradient clipping and the learning-rate schedule against hand-computed values."""

import math

import numpy as np
import pytest

from minisynth.optim import (
    AdamW,
    adamw_update,
    clip_grad_norm,
    default_decay_filter,
    lr_schedule,
)


def model_params(rng, dtype=np.float32):
    """Parameter names and ranks as the model uses them (small sizes)."""
    shapes = {
        "wte": (7, 4),
        "wpe": (5, 4),
        "blocks.0.ln1.g": (4,),
        "blocks.0.ln1.b": (4,),
        "blocks.0.attn.Wq": (4, 4),
        "blocks.0.attn.dense.W2": (2, 3, 5),
        "blocks.0.attn.random.R": (2, 5, 5),
        "blocks.0.attn.alpha": (2, 3),
        "blocks.0.mlp.b1": (8,),
        "ln_f.b": (4,),
    }
    return {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}


# ------------------------------------------------------------------ hand-computed AdamW
def test_adamw_two_steps_by_hand():
    # lr = 0.1, betas = (0.9, 0.95), eps = 1e-8, weight_decay = 0.1; a (1, 2) weight is decayed.
    p = np.array([[1.0, -2.0]])
    opt = AdamW({"W": p}, lr=0.1, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    assert opt.decay == {"W": True}

    # step 1, g = [0.5, -1.0]
    # decay:  p = 0.99 * [1, -2] = [0.99, -1.98]
    # m = 0.1 * g = [0.05, -0.1];  v = 0.05 * g^2 = [0.0125, 0.05]
    # m_hat = m / (1 - 0.9) = [0.5, -1.0];  v_hat = v / (1 - 0.95) = [0.25, 1.0]
    # p -= 0.1 * m_hat / (sqrt(v_hat) + eps) = 0.1 * [1, -1] (up to eps)
    opt.step({"W": np.array([[0.5, -1.0]])})
    assert opt.t == 1
    np.testing.assert_allclose(opt.m["W"], [[0.05, -0.1]], rtol=1e-14)
    np.testing.assert_allclose(opt.v["W"], [[0.0125, 0.05]], rtol=1e-14)
    expected1 = [[0.99 - 0.1 * 0.5 / (0.5 + 1e-8), -1.98 + 0.1 * 1.0 / (1.0 + 1e-8)]]
    np.testing.assert_allclose(p, expected1, rtol=1e-14)
    np.testing.assert_allclose(p, [[0.89, -1.88]], rtol=1e-7)
    assert opt.params["W"] is p  # updated in place

    # step 2, g = [0.1, 0.2]
    # decay: p = 0.99 * p
    # m = 0.9 * [0.05, -0.1] + 0.1 * [0.1, 0.2] = [0.055, -0.07]
    # v = 0.95 * [0.0125, 0.05] + 0.05 * [0.01, 0.04] = [0.012375, 0.0495]
    # bias corrections: 1 - 0.9^2 = 0.19, 1 - 0.95^2 = 0.0975
    # p -= 0.1 * (m / 0.19) / (sqrt(v / 0.0975) + eps)
    opt.step({"W": np.array([[0.1, 0.2]])})
    assert opt.t == 2
    np.testing.assert_allclose(opt.m["W"], [[0.055, -0.07]], rtol=1e-13)
    np.testing.assert_allclose(opt.v["W"], [[0.012375, 0.0495]], rtol=1e-13)
    p1 = np.array(expected1)
    m2 = np.array([[0.055, -0.07]])
    v2 = np.array([[0.012375, 0.0495]])
    expected2 = 0.99 * p1 - 0.1 * (m2 / 0.19) / (np.sqrt(v2 / 0.0975) + 1e-8)
    np.testing.assert_allclose(p, expected2, rtol=1e-13)
    # written out: 0.8811 - 0.1 * 0.2894737 / 0.3562627 and -1.8612 + 0.1 * 0.3684211 / 0.7125253
    np.testing.assert_allclose(p, [[0.79984712, -1.80949362]], rtol=1e-7)


def test_adamw_no_decay_for_vector_by_default():
    # A 1-D parameter: pure Adam, first step moves each entry by lr * sign(g).
    p = np.array([1.0, -2.0])
    opt = AdamW({"blocks.0.mlp.b1": p}, lr=0.1, weight_decay=0.5)
    opt.step({"blocks.0.mlp.b1": np.array([0.5, -1.0])})
    np.testing.assert_allclose(p, [0.9, -1.9], rtol=1e-7)


def test_adamw_update_matches_class_and_keeps_float32():
    rng = np.random.default_rng(0)
    p = rng.standard_normal((3, 4)).astype(np.float32)
    g = rng.standard_normal((3, 4)).astype(np.float32)
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    q = p.copy()
    adamw_update(p, g, m, v, 1e-2, 0.9, 0.95, 1e-8, 0.1, 1)
    assert p.dtype == m.dtype == v.dtype == np.float32
    opt = AdamW({"W": q}, lr=1e-2, weight_decay=0.1)  # backend "numpy": adamw_update itself
    assert opt.update is adamw_update
    opt.step({"W": g})
    np.testing.assert_array_equal(p, q)
    np.testing.assert_array_equal(m, opt.m["W"])
    np.testing.assert_array_equal(v, opt.v["W"])


def test_zero_gradient_step_only_decays():
    p = np.array([[2.0, -4.0]])
    opt = AdamW({"W": p}, lr=0.5, weight_decay=0.2)
    opt.step({"W": np.zeros((1, 2))})
    np.testing.assert_allclose(p, [[2.0 * 0.9, -4.0 * 0.9]], rtol=1e-15)


# ------------------------------------------------------------------------ decay filter
def test_default_decay_filter_names():
    rng = np.random.default_rng(1)
    params = model_params(rng)
    opt = AdamW(params)
    decayed = sorted(k for k, d in opt.decay.items() if d)
    assert decayed == ["blocks.0.attn.Wq", "blocks.0.attn.dense.W2"]
    for name in ("blocks.3.attn.alpha", "blocks.0.attn.R", "blocks.1.attn.R1", "blocks.1.attn.R2"):
        assert default_decay_filter(name, np.zeros((2, 2))) is False, name
    # Only the last name component counts: a weight whose name merely ends in "R" decays.
    assert default_decay_filter("blocks.0.attn.WR", np.zeros((2, 2))) is True


def test_no_decay_params_unchanged_with_zero_grads():
    # With zero gradients only weight decay moves a parameter.
    rng = np.random.default_rng(2)
    params = model_params(rng, np.float64)
    before = {k: v.copy() for k, v in params.items()}
    opt = AdamW(params, lr=0.1, weight_decay=0.5)
    opt.step({k: np.zeros_like(v) for k, v in params.items()})
    for k, v in params.items():
        if opt.decay[k]:
            np.testing.assert_allclose(v, before[k] * 0.95, rtol=1e-15)
        else:
            np.testing.assert_array_equal(v, before[k], err_msg=k)


def test_custom_decay_filter():
    rng = np.random.default_rng(3)
    params = model_params(rng, np.float64)
    before = {k: v.copy() for k, v in params.items()}
    opt = AdamW(params, lr=0.1, weight_decay=0.5, decay_filter=lambda name, a: name == "wte")
    assert [k for k, d in opt.decay.items() if d] == ["wte"]
    opt.step({k: np.zeros_like(v) for k, v in params.items()})
    np.testing.assert_allclose(params["wte"], before["wte"] * 0.95, rtol=1e-15)
    np.testing.assert_array_equal(params["blocks.0.attn.Wq"], before["blocks.0.attn.Wq"])


# --------------------------------------------------------------------------- state dict
def test_state_dict_round_trip_gives_identical_next_step(tmp_path):
    rng = np.random.default_rng(4)
    params = model_params(rng)
    grads = [
        {k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in params.items()}
        for _ in range(3)
    ]
    opt = AdamW(params, lr=1e-2)
    opt.step(grads[0])
    opt.step(grads[1])
    path = tmp_path / "opt.npz"
    np.savez(path, **opt.state_dict())
    saved_params = {k: v.copy() for k, v in params.items()}

    opt.step(grads[2])  # reference next step

    params2 = {k: v.copy() for k, v in saved_params.items()}
    opt2 = AdamW(params2, lr=1e-2)
    with np.load(path) as state:
        opt2.load_state_dict(state)
    assert opt2.t == 2
    opt2.step(grads[2])
    for k in params:
        np.testing.assert_array_equal(params2[k], params[k], err_msg=k)
        np.testing.assert_array_equal(opt2.m[k], opt.m[k], err_msg=k)
        np.testing.assert_array_equal(opt2.v[k], opt.v[k], err_msg=k)
    assert opt2.t == opt.t == 3


def test_state_dict_is_a_copy():
    p = np.ones((2, 2))
    opt = AdamW({"W": p})
    state = opt.state_dict()
    assert set(state) == {"t", "m.W", "v.W"}
    opt.step({"W": np.ones((2, 2))})
    assert int(state["t"]) == 0 and not state["m.W"].any()


def test_load_state_dict_errors():
    opt = AdamW({"W": np.ones((2, 2)), "b": np.ones(2)})
    good = opt.state_dict()
    missing = dict(good)
    del missing["v.b"]
    with pytest.raises(ValueError, match=r"missing \['v.b'\]"):
        opt.load_state_dict(missing)
    extra = dict(good, **{"m.x": np.ones(1)})
    with pytest.raises(ValueError, match=r"unexpected \['m.x'\]"):
        opt.load_state_dict(extra)
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict(dict(good, **{"m.W": np.ones((3, 2))}))
    with pytest.raises(TypeError, match="dtype"):
        opt.load_state_dict(dict(good, **{"m.W": np.ones((2, 2), np.float32)}))
    with pytest.raises(ValueError, match="non-negative integer"):
        opt.load_state_dict(dict(good, t=np.array(1.5)))
    with pytest.raises(TypeError):
        opt.load_state_dict([1, 2])


# ------------------------------------------------------------------------- bad inputs
def test_step_rejects_bad_grads_and_changes_nothing():
    p = np.ones((2, 2))
    b = np.ones(2)
    opt = AdamW({"W": p, "b": b})
    with pytest.raises(ValueError, match=r"missing \['b'\]"):
        opt.step({"W": np.ones((2, 2))})
    with pytest.raises(ValueError, match=r"unexpected \['c'\]"):
        opt.step({"W": np.ones((2, 2)), "b": np.ones(2), "c": np.ones(2)})
    with pytest.raises(ValueError, match="shape"):
        opt.step({"W": np.ones((2, 2)), "b": np.ones(3)})
    with pytest.raises(TypeError, match="dtype"):
        opt.step({"W": np.ones((2, 2)), "b": np.ones(2, np.float32)})
    with pytest.raises(TypeError):
        opt.step({"W": [[1.0, 1.0], [1.0, 1.0]], "b": np.ones(2)})
    with pytest.raises(ValueError, match="lr"):
        opt.step({"W": np.ones((2, 2)), "b": np.ones(2)}, lr=-1.0)
    assert opt.t == 0
    np.testing.assert_array_equal(p, np.ones((2, 2)))
    np.testing.assert_array_equal(b, np.ones(2))


def test_constructor_rejects_bad_arguments():
    W = {"W": np.ones((2, 2))}
    with pytest.raises(ValueError, match="empty"):
        AdamW({})
    with pytest.raises(TypeError):
        AdamW([np.ones(2)])
    with pytest.raises(TypeError, match="dtype"):
        AdamW({"W": np.ones((2, 2), dtype=np.int64)})
    with pytest.raises(ValueError, match="beta1"):
        AdamW(W, betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="beta2"):
        AdamW(W, betas=(0.9, -0.1))
    with pytest.raises(TypeError, match="betas"):
        AdamW(W, betas=0.9)
    with pytest.raises(ValueError, match="lr"):
        AdamW(W, lr=float("nan"))
    with pytest.raises(ValueError, match="weight_decay"):
        AdamW(W, weight_decay=-0.1)
    with pytest.raises(TypeError, match="decay_filter"):
        AdamW(W, decay_filter="no")
    ro = np.ones((2, 2))
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        AdamW({"W": ro})


# --------------------------------------------------------------------------- clipping
def test_clip_scales_to_max_norm():
    grads = {"a": np.array([3.0, 0.0]), "b": np.array([[0.0, 4.0]], dtype=np.float64)}
    norm = clip_grad_norm(grads, 1.0)
    assert norm == pytest.approx(5.0, rel=1e-15)
    np.testing.assert_allclose(grads["a"], [0.6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(grads["b"], [[0.0, 0.8]], rtol=1e-6)
    new = math.sqrt(sum(float(np.sum(g**2)) for g in grads.values()))
    assert new == pytest.approx(1.0, rel=1e-6)


def test_clip_float32_norm_in_float64():
    rng = np.random.default_rng(5)
    grads = {"W": rng.standard_normal((64, 64)).astype(np.float32), "b": np.ones(3, np.float32)}
    expected = math.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads.values()))
    norm = clip_grad_norm(grads, 0.5)
    assert norm == pytest.approx(expected, rel=1e-12)
    assert grads["W"].dtype == np.float32
    new = math.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads.values()))
    assert new == pytest.approx(0.5, rel=1e-5)


def test_clip_leaves_small_grads_untouched():
    g = np.array([0.3, -0.4])
    norm = clip_grad_norm({"g": g}, 1.0)
    assert norm == pytest.approx(0.5)
    np.testing.assert_array_equal(g, [0.3, -0.4])


def test_clip_nonfinite_norm_returned_unscaled():
    g = np.array([np.inf, 1.0])
    assert clip_grad_norm({"g": g}, 1.0) == math.inf
    np.testing.assert_array_equal(g, [np.inf, 1.0])


def test_clip_rejects_bad_inputs():
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm({"g": np.ones(2)}, 0.0)
    with pytest.raises(ValueError, match="empty"):
        clip_grad_norm({}, 1.0)
    with pytest.raises(TypeError):
        clip_grad_norm({"g": [1.0]}, 1.0)


# --------------------------------------------------------------------------- schedule
def test_schedule_known_values():
    kw = dict(max_lr=1.0, warmup_steps=10, total_steps=110, min_lr=0.1)
    assert lr_schedule(0, **kw) == pytest.approx(0.1)  # max_lr / warmup
    assert lr_schedule(4, **kw) == pytest.approx(0.5)
    assert lr_schedule(9, **kw) == pytest.approx(1.0)  # peak at warmup - 1
    assert lr_schedule(10, **kw) == pytest.approx(1.0)  # cosine starts at max_lr
    assert lr_schedule(60, **kw) == pytest.approx(0.55)  # midpoint: (max + min) / 2
    assert lr_schedule(35, **kw) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 4)))
    assert lr_schedule(110, **kw) == pytest.approx(0.1)  # end
    assert lr_schedule(500, **kw) == 0.1  # after the end: min_lr


def test_schedule_monotone_after_warmup():
    lrs = [lr_schedule(s, max_lr=3e-3, warmup_steps=5, total_steps=50) for s in range(60)]
    assert all(a <= b for a, b in zip(lrs[:5], lrs[1:6], strict=True))
    assert all(a >= b for a, b in zip(lrs[5:], lrs[6:], strict=False))
    assert lrs[-1] == 0.0


def test_schedule_without_warmup():
    kw = dict(max_lr=2.0, warmup_steps=0, total_steps=100)
    assert lr_schedule(0, **kw) == 2.0
    assert lr_schedule(50, **kw) == pytest.approx(1.0)
    assert lr_schedule(100, **kw) == 0.0


def test_schedule_warmup_equals_total():
    kw = dict(max_lr=1.0, warmup_steps=4, total_steps=4, min_lr=0.2)
    assert [lr_schedule(s, **kw) for s in range(5)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 0.2])


@pytest.mark.parametrize(
    "step, kw, exc",
    [
        (-1, dict(max_lr=1.0, warmup_steps=1, total_steps=10), ValueError),
        (1.0, dict(max_lr=1.0, warmup_steps=1, total_steps=10), TypeError),
        (0, dict(max_lr=0.0, warmup_steps=1, total_steps=10), ValueError),
        (0, dict(max_lr=1.0, warmup_steps=-1, total_steps=10), ValueError),
        (0, dict(max_lr=1.0, warmup_steps=1, total_steps=0), ValueError),
        (0, dict(max_lr=1.0, warmup_steps=11, total_steps=10), ValueError),
        (0, dict(max_lr=1.0, warmup_steps=1, total_steps=10, min_lr=2.0), ValueError),
        (0, dict(max_lr=1.0, warmup_steps=1, total_steps=10, min_lr=-0.1), ValueError),
        (0, dict(max_lr=float("inf"), warmup_steps=1, total_steps=10), ValueError),
    ],
)
def test_schedule_rejects_bad_arguments(step, kw, exc):
    with pytest.raises(exc):
        lr_schedule(step, **kw)


def test_lr_scale_multiplies_the_step_of_the_synthetic_logits_only():
    from minisynth.optim import synthetic_logits_lr_scale

    rng = np.random.default_rng(0)
    params = {"blocks.0.attn.R": rng.standard_normal((2, 4, 4)),
              "blocks.0.attn.R1": rng.standard_normal((2, 4, 3)),
              "blocks.0.attn.Wv": rng.standard_normal((4, 4))}  # fmt: skip
    before = {n: p.copy() for n, p in params.items()}
    grads = {n: rng.standard_normal(p.shape) for n, p in params.items()}
    opt = AdamW(params, lr=1e-3, weight_decay=0.0, lr_scale=synthetic_logits_lr_scale(10))
    assert opt.lr_scale == {"blocks.0.attn.R": 10.0, "blocks.0.attn.R1": 10.0,
                            "blocks.0.attn.Wv": 1.0}  # fmt: skip
    opt.step(grads)
    # Adam's first step moves every entry by lr * sign(g) (up to eps)
    for name, scale in opt.lr_scale.items():
        moved = np.abs(params[name] - before[name])
        np.testing.assert_allclose(moved, 1e-3 * scale, rtol=1e-4)


def test_lr_scale_is_checked():
    params = {"w": np.zeros((2, 2))}
    with pytest.raises(TypeError, match="lr_scale must be callable"):
        AdamW(params, lr_scale=3.0)
    with pytest.raises(ValueError, match=r"lr_scale\('w'\) must be > 0"):
        AdamW(params, lr_scale=lambda name, array: 0.0)
