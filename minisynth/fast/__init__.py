"""The fast path: everything minisynth does for speed, behind one wall.

The reference (:mod:`minisynth.layers`, :mod:`~minisynth.attention`,
:mod:`~minisynth.model`, :mod:`~minisynth.optim`) is written as the math and
imports nothing from here. A model, attention layer or optimizer built with
``backend="numba"`` takes the fast path, for itself alone (see
:mod:`minisynth.backend`):

1. **Kernels** (:mod:`minisynth.fast.kernels`): Numba twins of reference
   functions, each naming the function it replaces (``kernel.reference``).
   :mod:`minisynth.fast.ops` is the namespace such a model calls
   (``model.ops``): the reference's functions, with the twins in their place.
2. **Threads** (:mod:`minisynth.fast.threads`): :func:`loss_and_grads` and
   :func:`logits` split the batch of a ``"numba"`` model into one shard per
   core and run the model on each shard at once, with BLAS single-threaded.

Plus :mod:`minisynth.fast.allocator`, the glibc malloc setting the ``minisynth``
command applies. ``minisynth train``, :func:`minisynth.train.train` and the
benchmarks build their models with ``backend="numba"``; a model built in Python
is the reference unless asked otherwise.
"""

from __future__ import annotations

import numpy as np

from .threads import run_sharded

__all__ = ["loss_and_grads", "logits"]


def _splits(model, idx):
    """Whether the fast path splits this call: a ``"numba"`` model and a well-formed batch
    (anything else goes to the model unsplit, which also names any problem)."""
    return model.backend == "numba" and isinstance(idx, np.ndarray) and idx.ndim == 2


def loss_and_grads(model, idx, targets):
    """``model.loss_and_grads(idx, targets)``; a ``"numba"`` model's batch split over threads.

    Each shard's mean loss and gradients are weighted by its share of the batch
    rows, which gives the whole batch's mean (up to float rounding).
    """
    if not _splits(model, idx):
        return model.loss_and_grads(idx, targets)
    B = idx.shape[0]
    shards = run_sharded(
        lambda lo, hi: (hi - lo, *model.loss_and_grads(idx[lo:hi], targets[lo:hi])), B
    )
    if len(shards) == 1:
        return shards[0][1:]
    # sum_s (n_s / B) mean_s = (n_0 / B) sum_s (n_s / n_0) mean_s: the shards added up with
    # weights relative to the first (1 for equal shards: no multiply), then scaled once
    (n0, loss, grads), *rest = shards
    for n, shard_loss, shard_grads in rest:
        weight = n / n0
        loss += shard_loss * weight
        for name, g in shard_grads.items():
            if weight != 1:
                g *= weight  # in place: no temporary as large as the parameter (Random's R)
            grads[name] += g  # in place: the first shard's fresh arrays
    scale = n0 / B
    for g in grads.values():
        g *= scale
    return loss * scale, grads


def logits(model, idx):
    """``model.forward(idx)``; for a ``"numba"`` model, the batch split over threads."""
    if not _splits(model, idx):
        return model.forward(idx)
    shards = run_sharded(lambda lo, hi: model.forward(idx[lo:hi]), idx.shape[0])
    return shards[0] if len(shards) == 1 else np.concatenate(shards, axis=0)
