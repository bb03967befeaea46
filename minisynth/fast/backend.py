"""The one switch between the reference path and the fast path.

``set_backend("numba")`` puts the Numba twin of each function listed in
:data:`minisynth.fast.kernels.TWINS` in place of its reference function, in that
function's own module (``minisynth.layers.gelu_forward`` *becomes* the kernel);
``set_backend("numpy")`` puts the references back. The reference modules call
these functions by module attribute (``layers.gelu_forward(x)``), so the swap
takes effect at the next call, and nothing in them knows about it.

The initial backend comes from ``MINISYNTH_BACKEND`` (``numpy`` or ``numba``;
unset or empty means ``numpy``, the reference, so that a learner who steps into
the code lands in the math), read on first use. ``minisynth train`` and the
benchmarks select ``numba``. If Numba cannot be imported, or a kernel fails to
compile, the backend falls back to ``"numpy"`` for the rest of the process and
one RuntimeWarning says why; :func:`get_backend` always tells the backend in use.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import warnings

VALID_BACKENDS = ("numpy", "numba")
DEFAULT_BACKEND = "numpy"
ENV_VAR = "MINISYNTH_BACKEND"

_active = None  # the backend in use; None until first use, then read from ENV_VAR
_numba_problem = None  # why Numba is unusable in this process, once known
_references = {}  # (module, name) -> the reference function, saved before the first swap


def _check_name(name, what="backend"):
    if not isinstance(name, str) or name not in VALID_BACKENDS:
        valid = ", ".join(repr(b) for b in VALID_BACKENDS)
        raise ValueError(f"unknown {what} {name!r}; valid backends are {valid}")


def _twins():
    """The kernels module's TWINS, or None (after one warning) when Numba is unusable."""
    if _numba_problem is not None:
        return None
    try:
        return importlib.import_module("minisynth.fast.kernels").TWINS
    except Exception as err:  # ImportError, or Numba refusing an incompatible NumPy
        disable_numba(f"numba could not be imported ({type(err).__name__}: {err})")
        return None


def _install(twins):
    for twin in twins:
        module = importlib.import_module(twin.reference.__module__)
        key = (module, twin.reference.__name__)
        _references.setdefault(key, getattr(module, key[1]))
        setattr(module, key[1], twin)


def _restore():
    for (module, name), reference in _references.items():
        setattr(module, name, reference)


def disable_numba(reason):
    """Switch to the reference for the rest of the process, warning once with ``reason``."""
    global _numba_problem, _active
    if _numba_problem is None:
        _numba_problem = str(reason)
        warnings.warn(
            f"minisynth: using the NumPy reference because {_numba_problem}",
            RuntimeWarning,
            stacklevel=3,
        )
    _restore()
    _active = "numpy"


def numba_problem():
    """Why the Numba backend is unusable in this process, or None if it is not known to be."""
    return _numba_problem


def set_backend(name):
    """Select ``"numpy"`` (the reference) or ``"numba"``; return the backend actually in use."""
    global _active
    _check_name(name)
    twins = _twins() if name == "numba" else None
    if twins is None:
        _restore()
        name = "numpy"
    else:
        _install(twins)
    _active = name
    return name


def get_backend():
    """The backend in use, ``"numpy"`` or ``"numba"`` (from ``MINISYNTH_BACKEND`` on first use)."""
    if _active is None:
        requested = os.environ.get(ENV_VAR, "") or DEFAULT_BACKEND
        _check_name(requested, what=f"backend in the environment variable {ENV_VAR}")
        set_backend(requested)
    return _active


@contextlib.contextmanager
def use_backend(name):
    """Use backend ``name`` inside the block; restore the previous one after, even on error."""
    previous = get_backend()
    active = set_backend(name)
    try:
        yield active
    finally:
        set_backend(previous)  # stays "numpy" if Numba failed inside the block
