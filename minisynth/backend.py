"""Which code computes a model: chosen per object, when it is built, and never global.

A model, an attention layer and an optimizer each carry the layer functions they
call, their ``ops``::

    model = SynthesizerLM(config)                    # model.ops is minisynth.layers
    model = SynthesizerLM(config, backend="numba")   # model.ops is minisynth.fast.ops

* ``"numpy"`` (the default): ``ops`` is the module :mod:`minisynth.layers` itself,
  the reference written as the math. Stepping into ``model.loss_and_grads`` in a
  debugger lands in the equations.
* ``"numba"``: ``ops`` is :mod:`minisynth.fast.ops`, a module holding the same
  names, where Numba twins stand in for some of the reference functions (each
  twin names its reference: ``kernel.reference``).

Nothing here changes a module attribute or a process-wide setting: two models of
different backends live side by side, in one thread or in two, and
``from minisynth.layers import gelu_forward`` is always the reference. The one
fact that is process-wide is a fact about the machine: if Numba cannot be
imported, or a kernel fails to compile, :func:`report_numba_problem` records why
(one RuntimeWarning), ``"numba"`` then gives the reference, and kernels already
handed out call their references.
"""

from __future__ import annotations

import importlib
import warnings

from . import layers

BACKENDS = ("numpy", "numba")

_numba_problem = None  # why Numba is unusable in this process, once known


def check_backend(name):
    """``name`` if it is one of :data:`BACKENDS`, else a ValueError naming the valid ones."""
    if not isinstance(name, str) or name not in BACKENDS:
        valid = ", ".join(repr(b) for b in BACKENDS)
        raise ValueError(f"unknown backend {name!r}; valid backends are {valid}")
    return name


def operations(backend):
    """The layer functions of ``backend``: :mod:`minisynth.layers` or :mod:`minisynth.fast.ops`.

    Falls back to the reference (with one RuntimeWarning for the process) when
    Numba cannot be used here.
    """
    if check_backend(backend) == "numpy" or _numba_problem is not None:
        return layers
    try:
        return importlib.import_module("minisynth.fast.ops")
    except Exception as err:  # ImportError, or Numba refusing an incompatible NumPy
        report_numba_problem(f"numba could not be imported ({type(err).__name__}: {err})")
        return layers


def backend_of(ops):
    """``"numba"`` if ``ops`` computes with Numba kernels in this process, else ``"numpy"``."""
    return "numpy" if ops is layers or _numba_problem is not None else "numba"


def report_numba_problem(reason):
    """Record that Numba is unusable in this process; warn once with ``reason``."""
    global _numba_problem
    if _numba_problem is None:
        _numba_problem = str(reason)
        warnings.warn(
            f"minisynth: using the NumPy reference because {_numba_problem}",
            RuntimeWarning,
            stacklevel=3,
        )


def numba_problem():
    """Why Numba is unusable in this process, or None if it is not known to be."""
    return _numba_problem
