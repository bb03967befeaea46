"""The layer functions of the fast path: :mod:`minisynth.layers`, Numba twins in place of some.

A model, attention layer or optimizer built with ``backend="numba"`` calls the
functions of this module (``model.ops``) where the reference calls those of
:mod:`minisynth.layers`. Every name means the same function as there; where a
Numba twin exists (:mod:`minisynth.fast.kernels`, each naming its reference as
``kernel.reference``) this module holds the twin, else the reference itself.
Also here: the twin of :func:`minisynth.optim.adamw_update`, for
:class:`minisynth.optim.AdamW`, and the tiled attention layer
(:mod:`minisynth.fast.tiled`), which has no function of the reference to stand in
for: a ``"numba"`` layer calls it instead of its whole forward and backward.
Importing this module changes nothing anywhere else: ``minisynth.layers`` keeps
its own functions.
"""

from ..layers import (
    causal_mask,
    embedding_forward,
    linear_backward,
    linear_forward,
    relu_backward,
    relu_forward,
    softmax_backward,
    softmax_forward,
)
from .kernels import (
    adamw_update,
    attention_core_backward,
    attention_core_forward,
    cross_entropy_backward,
    cross_entropy_forward,
    embedding_backward,
    gelu_backward,
    gelu_forward,
    layernorm_backward,
    layernorm_forward,
)
from .tiled import attention_backward as tiled_attention_backward
from .tiled import attention_forward as tiled_attention_forward

__all__ = [
    "adamw_update",
    "attention_core_backward",
    "attention_core_forward",
    "causal_mask",
    "cross_entropy_backward",
    "cross_entropy_forward",
    "embedding_backward",
    "embedding_forward",
    "gelu_backward",
    "gelu_forward",
    "layernorm_backward",
    "layernorm_forward",
    "linear_backward",
    "linear_forward",
    "relu_backward",
    "relu_forward",
    "softmax_backward",
    "softmax_forward",
    "tiled_attention_backward",
    "tiled_attention_forward",
]
