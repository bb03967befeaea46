"""Numerical gradient checks for hand-written backward passes.

All checks use central differences. The default five-point rule has a
truncation error O(h^4) plus the rounding error eps * |f| / h. In float64
(eps ~ 1e-16) with h = 1e-3 both terms are around 1e-12 to 1e-13 of |f|, so a
correct backward pass agrees to a relative error far below 1e-7 even for
gradients much smaller than f. In float32 (eps ~ 6e-8) the rounding term alone
is ~1e-4 of |f|: a float32 check cannot tell a correct gradient from a
slightly wrong one, so every function here refuses float32 input.

Functions with kinks (ReLU) need inputs at least 2h away from the kink.

Typical use, for a layer ``out = f(x)`` with backward ``dx = g(dout)``::

    dout = rng.standard_normal(out.shape)        # random, never all ones
    dx_num = numerical_gradient_array(lambda: f(x), x, dout)
    assert rel_error(dx, dx_num) < 1e-7
"""

from __future__ import annotations

import numpy as np

DEFAULT_STEP = 1e-3  # suits the five-point rule in float64; see numerical_gradient


def _require_float64(name, x):
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype != np.float64:
        raise TypeError(
            f"{name} has dtype {x.dtype}; gradient checks need float64. Central differences "
            "in float32 carry a rounding error of about 1e-2 relative, which hides real "
            "bugs; cast the inputs and parameters with .astype(np.float64) first."
        )


def numerical_gradient(f, x, h=DEFAULT_STEP, order=4):
    """Central-difference gradient of the scalar ``f()`` with respect to the array ``x``.

    ``f`` takes no arguments and reads ``x`` (perturbed in place and restored), so
    it works for parameters held inside a layer as well as for inputs.
    ``order=2`` is the three-point rule (f(x+h) - f(x-h)) / 2h, error O(h^2);
    ``order=4`` (default) the five-point rule
    (8 (f(x+h) - f(x-h)) - (f(x+2h) - f(x-2h))) / 12h, error O(h^4), which allows
    a larger h and so a smaller rounding error eps |f| / h: small gradients then
    keep their relative precision. Returns a new array shaped like x.
    """
    _require_float64("x", x)
    if order not in (2, 4):
        raise ValueError(f"order must be 2 or 4, got {order}")
    grad = np.zeros_like(x)
    flat_x = x.reshape(-1)  # a view: perturbing it perturbs x
    if not np.shares_memory(flat_x, x):
        raise ValueError("x must be contiguous so that it can be perturbed in place")
    flat_g = grad.reshape(-1)

    for i in range(flat_x.size):
        old = flat_x[i]

        def f_at(step, i=i, old=old):
            flat_x[i] = old + step
            return float(f())

        try:
            flat_g[i] = _central_difference(f_at, h, order)
        finally:
            flat_x[i] = old
    return grad


def _central_difference(f_at, h, order):
    """Derivative at 0 of the scalar function ``f_at(step)`` by the 3- or 5-point rule."""
    d1 = f_at(h) - f_at(-h)
    if order == 2:
        return d1 / (2.0 * h)
    d2 = f_at(2 * h) - f_at(-2 * h)
    return (8.0 * d1 - d2) / (12.0 * h)


def numerical_gradient_array(f, x, dout, h=DEFAULT_STEP, order=4):
    """Gradient of sum(f() * dout) with respect to ``x``: the vector-Jacobian product.

    ``f`` returns an array shaped like ``dout``. ``dout`` should be random (for a
    layer whose output sums to a constant, such as softmax or layer norm, an
    all-ones ``dout`` makes the true gradient zero and the check vacuous).
    """
    _require_float64("dout", dout)
    return numerical_gradient(lambda: np.sum(f() * dout), x, h, order)


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


def directional_check(f, x, grad, n_directions=4, h=DEFAULT_STEP, seed=0, order=4):
    """Cheap check for large tensors: compare directional derivatives.

    For random unit directions v, compares the central difference of
    s -> f(x + s v) at s = 0 with <grad, v>: ``order`` calls of ``f()`` per
    direction instead of per element of x. Returns the largest
    |numeric - analytic| / (|numeric| + |analytic|) over the directions.
    ``x`` is perturbed in place and restored.
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

            def f_at(step, v=v):
                x[...] = original + step * v
                return float(f())

            numeric = _central_difference(f_at, h, order)
            analytic = float(np.sum(grad * v))
            # the small |grad| floor keeps a direction nearly orthogonal to the
            # gradient from turning rounding noise into a large ratio
            denom = abs(numeric) + abs(analytic) + 1e-8 * np.linalg.norm(grad)
            err = 0.0 if denom == 0.0 else abs(numeric - analytic) / denom
            worst = max(worst, err)
    finally:
        x[...] = original
    return worst
