"""Input checks shared by every public function.

Each helper raises a ``TypeError`` (wrong kind of object or dtype) or a
``ValueError`` (wrong shape, length or value) whose message names the argument
and says what was expected, so a user sees the problem, not a broadcasting
error three frames deeper.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_float_array(name, x, *, ndim=None, min_ndim=None, dtype=None):
    """Check that ``x`` is a float32/float64 ndarray (optionally of a given rank and dtype)."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {x.dtype}")
    if dtype is not None and x.dtype != np.dtype(dtype):
        raise TypeError(
            f"{name} has dtype {x.dtype} but must match the other inputs' dtype {np.dtype(dtype)}"
        )
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {x.shape}")
    if min_ndim is not None and x.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimensions, got shape {x.shape}")
    return x


def check_shape(name, x, expected):
    """Check ``x.shape == expected`` (``None`` entries match any length)."""
    ok = x.ndim == len(expected) and all(
        e is None or e == s for s, e in zip(x.shape, expected, strict=True)
    )
    if not ok:
        want = "(" + ", ".join("?" if e is None else str(e) for e in expected) + ")"
        raise ValueError(f"{name} must have shape {want}, got {x.shape}")
    return x


def check_int_array(name, x, *, upper=None, ndim=None):
    """Check that ``x`` is an integer ndarray with values in [0, upper)."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of integers, got {type(x).__name__}")
    if not np.issubdtype(x.dtype, np.integer):
        raise TypeError(f"{name} must have an integer dtype, got {x.dtype}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {x.shape}")
    if x.size and (x.min() < 0 or (upper is not None and x.max() >= upper)):
        raise ValueError(
            f"{name} values must lie in [0, {upper}), got min {x.min()} and max {x.max()}"
        )
    return x


def check_positive_int(name, value):
    """Check that ``value`` is a positive Python/NumPy integer (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return int(value)


def check_real(name, value, *, low=None, high=None, low_open=False, high_open=False):
    """Check that ``value`` is a finite real number in the given interval; return a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and (value >= high if high_open else value > high):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value}")
    return value


def check_nonneg_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return int(value)


def check_array_dict(what, arrays):
    """Check a non-empty mapping of str -> float32/float64 ndarray."""
    if not isinstance(arrays, Mapping):
        raise TypeError(
            f"{what} must be a dict of name -> numpy.ndarray, got {type(arrays).__name__}"
        )
    if len(arrays) == 0:
        raise ValueError(f"{what} is empty")
    for name, arr in arrays.items():
        if not isinstance(name, str):
            raise TypeError(f"{what} keys must be strings, got {name!r}")
        check_float_array(f"{what}[{name!r}]", arr)


def check_same_keys(what, got, expected):
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {missing}")
        if extra:
            parts.append(f"unexpected {extra}")
        raise ValueError(f"{what} keys do not match the parameters: " + "; ".join(parts))
