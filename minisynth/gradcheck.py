"""Numerical gradient checks for hand-written backward passes.

All checks use central differences, (f(x + h) - f(x - h)) / 2h, whose error is
O(h^2) plus the rounding error eps * |f| / h. In float64 (eps ~ 1e-16) with
h ~ 1e-6 both terms are around 1e-10, so a correct backward pass agrees to a
relative error far below 1e-7. In float32 (eps ~ 6e-8) the rounding term alone
is ~1e-2 at that h: a float32 check cannot tell a correct gradient from a
slightly wrong one, so every function here refuses float32 input.

Typical use, for a layer ``out = f(x)`` with backward ``dx = g(dout)``::

    dout = rng.standard_normal(out.shape)        # random, never all ones
    dx_num = numerical_gradient_array(lambda: f(x), x, dout)
    assert rel_error(dx, dx_num) < 1e-7
"""

from __future__ import annotations

import numpy as np

DEFAULT_STEP = 1e-6


def _require_float64(name, x):
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype != np.float64:
        raise TypeError(
            f"{name} has dtype {x.dtype}; gradient checks need float64. Central differences "
            "in float32 carry a rounding error of about 1e-2 relative, which hides real "
            "bugs; cast the inputs and parameters with .astype(np.float64) first."
        )


def numerical_gradient(f, x, h=DEFAULT_STEP):
    """Central-difference gradient of the scalar ``f()`` with respect to the array ``x``.

    ``f`` takes no arguments and reads ``x`` (perturbed in place and restored), so
    it works for parameters held inside a layer as well as for inputs.
    Returns a new array shaped like x.
    """
    _require_float64("x", x)
    grad = np.zeros_like(x)
    flat_x = x.reshape(-1)  # a view: perturbing it perturbs x
    if not np.shares_memory(flat_x, x):
        raise ValueError("x must be contiguous so that it can be perturbed in place")
    flat_g = grad.reshape(-1)
    for i in range(flat_x.size):
        old = flat_x[i]
        flat_x[i] = old + h
        f_plus = float(f())
        flat_x[i] = old - h
        f_minus = float(f())
        flat_x[i] = old
        flat_g[i] = (f_plus - f_minus) / (2.0 * h)
    return grad


def numerical_gradient_array(f, x, dout, h=DEFAULT_STEP):
    """Gradient of sum(f() * dout) with respect to ``x``: the vector-Jacobian product.

    ``f`` returns an array shaped like ``dout``. ``dout`` should be random (for a
    layer whose output sums to a constant, such as softmax or layer norm, an
    all-ones ``dout`` makes the true gradient zero and the check vacuous).
    """
    _require_float64("dout", dout)
    return numerical_gradient(lambda: np.sum(f() * dout), x, h)


def rel_error(a, b):
    """Relative error ||a - b|| / (||a|| + ||b||), 0 when both are zero.

    A sign error gives 1, a factor-of-two error gives 1/3; a correct float64
    gradient against central differences gives about 1e-9 or less.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"cannot compare arrays of shapes {a.shape} and {b.shape}")
    denom = np.linalg.norm(a) + np.linalg.norm(b)
    if denom == 0.0:
        return 0.0
    return float(np.linalg.norm(a - b) / denom)


def directional_check(f, x, grad, n_directions=4, h=DEFAULT_STEP, seed=0):
    """Cheap check for large tensors: compare directional derivatives.

    For random unit directions v, compares (f(x + h v) - f(x - h v)) / 2h with
    <grad, v>; costs 2 * n_directions calls of the scalar ``f()`` instead of
    2 * x.size. Returns the largest of |numeric - analytic| / (|numeric| + |analytic|)
    over the directions. ``x`` is perturbed in place and restored.
    """
    _require_float64("x", x)
    _require_float64("grad", grad)
    if grad.shape != x.shape:
        raise ValueError(f"grad has shape {grad.shape} but x has shape {x.shape}")
    rng = np.random.default_rng(seed)
    original = x.copy()
    worst = 0.0
    try:
        for _ in range(n_directions):
            v = rng.standard_normal(x.shape)
            v /= np.linalg.norm(v)
            x[...] = original + h * v
            f_plus = float(f())
            x[...] = original - h * v
            f_minus = float(f())
            numeric = (f_plus - f_minus) / (2.0 * h)
            analytic = float(np.sum(grad * v))
            # the small |grad| floor keeps a direction nearly orthogonal to the
            # gradient from turning rounding noise into a large ratio
            denom = abs(numeric) + abs(analytic) + 1e-8 * np.linalg.norm(grad)
            err = 0.0 if denom == 0.0 else abs(numeric - analytic) / denom
            worst = max(worst, err)
    finally:
        x[...] = original
    return worst
