import numpy as np
import pytest

from minisynth.gradcheck import (
    directional_check,
    numerical_gradient,
    numerical_gradient_array,
    rel_error,
)


def test_numerical_gradient_of_quadratic():
    x = np.array([1.0, -2.0, 3.0])
    grad = numerical_gradient(lambda: np.sum(x**2), x)
    np.testing.assert_allclose(grad, 2 * x, rtol=1e-8)
    np.testing.assert_array_equal(x, [1.0, -2.0, 3.0])  # restored after perturbation


def test_numerical_gradient_array_is_vector_jacobian_product():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((3, 4))
    x = rng.standard_normal(4)
    dout = rng.standard_normal(3)
    grad = numerical_gradient_array(lambda: A @ x, x, dout)
    assert rel_error(grad, A.T @ dout) < 1e-8


def test_rel_error_detects_sign_and_factor():
    a = np.array([1.0, -2.0, 0.5])
    assert rel_error(a, a) == 0.0
    assert rel_error(a, -a) == pytest.approx(1.0)
    assert rel_error(a, 2 * a) == pytest.approx(1 / 3)
    assert rel_error(np.zeros(3), np.zeros(3)) == 0.0


def test_directional_check_accepts_right_and_rejects_wrong_gradient():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((50, 40))
    f = lambda: np.sum(np.sin(x))  # noqa: E731
    assert directional_check(f, x, np.cos(x)) < 1e-7
    assert directional_check(f, x, -np.cos(x)) > 0.1
    assert directional_check(f, x, 1.1 * np.cos(x)) > 1e-2


def test_float32_is_refused_with_explanation():
    x = np.ones(3, dtype=np.float32)
    with pytest.raises(TypeError, match="float64"):
        numerical_gradient(lambda: float(np.sum(x)), x)
    with pytest.raises(TypeError, match="rounding"):
        numerical_gradient_array(lambda: x, x, np.ones(3, dtype=np.float32))
