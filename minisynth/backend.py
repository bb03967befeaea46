"""The one switch between the NumPy reference path and the Numba kernels.

Two backends exist:

* ``"numpy"``: the reference functions of :mod:`minisynth.layers` (and
  :mod:`minisynth.optim`), the ground truth;
* ``"numba"``: the compiled twins in :mod:`minisynth.kernels`, same signatures,
  same return types, results equal to the dtype's rounding.

Typical use::

    from minisynth import backend

    out, cache = backend.op("layernorm_forward")(x, g, b)  # kernel or reference
    with backend.use_backend("numpy"):                      # e.g. for a gradient check
        ...

Look ops up with :func:`op` when they are called, not once at import time,
so that :func:`set_backend` and :func:`use_backend` take effect.

The initial backend comes from the environment variable ``MINISYNTH_BACKEND``
(``numpy`` or ``numba``; unset or empty means ``numba``), read on first use.
Numba is optional at run time: if it cannot be imported, or a kernel fails to
compile, the backend falls back to ``"numpy"`` for the rest of the process and
one RuntimeWarning says why. Nothing crashes; :func:`get_backend` always tells
the backend actually in use.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import warnings

VALID_BACKENDS = ("numpy", "numba")
DEFAULT_BACKEND = "numba"
ENV_VAR = "MINISYNTH_BACKEND"
KERNEL_MODULE = "minisynth.kernels"
# Where op() looks under "numpy" (and for names without a kernel), in this order.
REFERENCE_MODULES = ("minisynth.layers", "minisynth.optim")

_active = None  # the backend in use; None until first use, then read from ENV_VAR
_numba_problem = None  # why Numba is unusable in this process, once known
_numba_checked = False  # whether the kernel module has been imported yet


def _check_name(name, what="backend"):
    """Raise ValueError unless ``name`` is one of VALID_BACKENDS."""
    if not isinstance(name, str) or name not in VALID_BACKENDS:
        valid = ", ".join(repr(b) for b in VALID_BACKENDS)
        raise ValueError(f"unknown {what} {name!r}; valid backends are {valid}")


def _numba_usable():
    """Import the kernels once (which imports Numba); True unless Numba is unusable."""
    global _numba_checked
    if not _numba_checked:
        _numba_checked = True
        try:
            importlib.import_module(KERNEL_MODULE)
        except Exception as err:  # ImportError, or Numba refusing an incompatible NumPy
            disable_numba(f"numba could not be imported ({type(err).__name__}: {err})")
    return _numba_problem is None


def disable_numba(reason):
    """Switch to the NumPy backend for the rest of the process, warning once with ``reason``.

    Called when Numba cannot be imported, and by the kernels when one fails to
    compile. Later calls (and later ``set_backend("numba")``) stay on NumPy
    without repeating the warning.
    """
    global _numba_problem, _active
    if _numba_problem is None:
        _numba_problem = str(reason)
        warnings.warn(
            f"minisynth: using the NumPy backend because {_numba_problem}",
            RuntimeWarning,
            stacklevel=3,
        )
    _active = "numpy"


def numba_problem():
    """Why the Numba backend is unusable in this process, or None if it is not known to be."""
    return _numba_problem


def set_backend(name):
    """Select ``"numpy"`` or ``"numba"``; return the backend actually in use.

    Asking for ``"numba"`` when Numba is unusable selects ``"numpy"`` (with the
    one-time RuntimeWarning). Any other name raises ValueError.
    """
    global _active
    _check_name(name)
    if name == "numba" and not _numba_usable():
        name = "numpy"
    _active = name
    return name


def get_backend():
    """The backend in use, ``"numpy"`` or ``"numba"``.

    On first use it is read from ``MINISYNTH_BACKEND`` (default ``"numba"``); a
    value naming no backend raises ValueError, so a typo is not silently ignored.
    """
    if _active is None:
        requested = os.environ.get(ENV_VAR, "") or DEFAULT_BACKEND
        _check_name(requested, what=f"backend in the environment variable {ENV_VAR}")
        set_backend(requested)
    return _active


@contextlib.contextmanager
def use_backend(name):
    """Context manager: use backend ``name`` inside the block, restore the previous one after.

    Yields the backend actually in use (``"numpy"`` if ``"numba"`` is unusable).
    The previous backend is restored even if the block raises.
    """
    previous = get_backend()
    active = set_backend(name)
    try:
        yield active
    finally:
        set_backend(previous)  # re-checked: stays "numpy" if Numba failed inside the block


def _public_function(module, name):
    """``module.name`` if it is a public function defined in that module, else None."""
    fn = getattr(module, name, None)
    if name.startswith("_") or not inspect.isfunction(fn) or fn.__module__ != module.__name__:
        return None  # e.g. layers.np or layers.NamedTuple are not ops
    return fn


def op(name):
    """The function called ``name`` on the active backend.

    Under ``"numba"``: the kernel of that name in :mod:`minisynth.kernels` if one
    exists (listed in ``kernels.__all__``); otherwise, and under ``"numpy"``: the
    reference function of that name in :mod:`minisynth.layers` or
    :mod:`minisynth.optim`. Unknown names raise ValueError.
    """
    if not isinstance(name, str):
        raise TypeError(f"op name must be a str, got {type(name).__name__}")
    if get_backend() == "numba":
        kernels = importlib.import_module(KERNEL_MODULE)
        if name in kernels.__all__:
            return getattr(kernels, name)
    for module_name in REFERENCE_MODULES:
        fn = _public_function(importlib.import_module(module_name), name)
        if fn is not None:
            return fn
    where = " or ".join(REFERENCE_MODULES)
    raise ValueError(f"no op named {name!r} on the {get_backend()!r} backend (looked in {where})")
