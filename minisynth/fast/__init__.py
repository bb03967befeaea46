"""The fast path: everything minisynth does for speed, behind one wall.

The reference (:mod:`minisynth.layers`, :mod:`~minisynth.attention`,
:mod:`~minisynth.model`, :mod:`~minisynth.optim`) is written as the math and
imports nothing from here. The fast path plugs in at two places:

1. **Kernels** (:mod:`minisynth.fast.kernels`): Numba twins of reference
   functions, each naming the function it replaces (``kernel.reference``).
   :func:`set_backend` ``("numba")`` swaps them into the reference modules'
   namespaces (:mod:`minisynth.fast.backend`); ``set_backend("numpy")`` swaps
   the references back. The reference calls ``layers.gelu_forward(x)`` either way.
2. **Threads** (:mod:`minisynth.fast.threads`): :func:`loss_and_grads` and
   :func:`logits` split the batch into one shard per core and run the
   reference model on each shard at once, with NumPy's BLAS single-threaded.

Plus :mod:`minisynth.fast.allocator`, the glibc malloc setting the ``minisynth``
command applies. Which path you are on: :func:`get_backend`. The default is the
reference (``"numpy"``), so a learner who steps into a model in a debugger lands
in the math; ``minisynth train``, :func:`minisynth.train.train` and the
benchmarks select ``"numba"``, and ``MINISYNTH_BACKEND`` sets the default.
"""

from __future__ import annotations

import numpy as np

from .backend import get_backend, set_backend, use_backend
from .threads import run_sharded

__all__ = ["get_backend", "set_backend", "use_backend", "loss_and_grads", "logits"]


def loss_and_grads(model, idx, targets):
    """``model.loss_and_grads(idx, targets)``; on the fast path, the batch split over threads.

    Each shard's mean loss and gradients are weighted by its share of the batch
    rows, which gives the whole batch's mean (up to float rounding).
    """
    if get_backend() != "numba" or not isinstance(idx, np.ndarray) or idx.ndim != 2:
        return model.loss_and_grads(idx, targets)  # (which also names any problem)
    B = idx.shape[0]
    shards = run_sharded(
        lambda lo, hi: (hi - lo, *model.loss_and_grads(idx[lo:hi], targets[lo:hi])), B
    )
    if len(shards) == 1:
        return shards[0][1:]
    (n, loss, grads), *rest = shards
    loss *= n / B
    for name in grads:
        grads[name] *= n / B  # in place: the shard's fresh arrays
    for n, shard_loss, shard_grads in rest:
        loss += shard_loss * n / B
        for name, g in shard_grads.items():
            grads[name] += g * (n / B)
    return loss, grads


def logits(model, idx):
    """``model.forward(idx)``; on the fast path, the batch split over threads."""
    if get_backend() != "numba" or not isinstance(idx, np.ndarray) or idx.ndim != 2:
        return model.forward(idx)
    shards = run_sharded(lambda lo, hi: model.forward(idx[lo:hi]), idx.shape[0])
    return shards[0] if len(shards) == 1 else np.concatenate(shards, axis=0)
