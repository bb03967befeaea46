"""AdamW, global gradient-norm clipping and the warmup + cosine learning-rate schedule.

Everything here works on plain ``dict[str, numpy.ndarray]`` parameter and
gradient collections keyed by dotted names (``wte``, ``blocks.0.attn.Wq``,
``blocks.0.ln1.g``, ...). Parameters are updated **in place**: the optimizer
holds references to the model's own arrays.

The per-array update lives in :func:`adamw_update`, the NumPy reference that a
Numba kernel mirrors with the same signature. It follows ``torch.optim.AdamW``
(decoupled weight decay, bias correction, ``eps`` added after the bias-corrected
square root)::

    p  <- p * (1 - lr * weight_decay)                 # decoupled weight decay
    m  <- beta1 * m + (1 - beta1) * g                 # first moment
    v  <- beta2 * v + (1 - beta2) * g * g             # second moment
    p  <- p - lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

with ``t`` the 1-based step count.

Shape letters follow :mod:`minisynth.layers`; ``...`` is the shape of one parameter.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np

from . import attention, layers
from ._validate import (
    check_array_dict,
    check_nonneg_int,
    check_positive_int,
    check_real,
    check_same_keys,
)
from .backend import backend_of, operations

# The synthetic logits of the Random kinds (R; R1, R2): each entry is a logit of its own.
SYNTHETIC_LOGIT_NAMES = frozenset(
    name for kind in attention.KINDS.values() for name in kind.synthetic_logits
)
# Last name component of parameters never decayed by default: embeddings, and attention
# logits that no input multiplies (mixture weights, Random and factorized-Random R).
NO_DECAY_NAMES = frozenset({"wte", "wpe", "alpha"}) | SYNTHETIC_LOGIT_NAMES


def _check_hparams(lr, beta1, beta2, eps, weight_decay):
    lr = check_real("lr", lr, low=0.0)
    beta1 = check_real("beta1", beta1, low=0.0, high=1.0, high_open=True)
    beta2 = check_real("beta2", beta2, low=0.0, high=1.0, high_open=True)
    eps = check_real("eps", eps, low=0.0)
    weight_decay = check_real("weight_decay", weight_decay, low=0.0)
    return lr, beta1, beta2, eps, weight_decay


# ----------------------------------------------------------------- per-array update
def adamw_update(p, g, m, v, lr, beta1, beta2, eps, weight_decay, t):
    """One AdamW step for one array: updates ``p``, ``m`` and ``v`` in place; returns None.

    ``p``, ``g``, ``m``, ``v`` are arrays of one shape and one float dtype
    (float32 or float64), checked by :class:`AdamW`; ``g`` is only read.
    ``t`` is the 1-based step number
    (after incrementing), used for bias correction. ``weight_decay`` is the
    decoupled decay coefficient (pass 0.0 for arrays that are not decayed).
    Arithmetic stays in the arrays' dtype. See the module docstring for the formula.
    """
    bias1 = 1.0 - beta1**t  # Python floats: NumPy keeps float32 arrays float32 (NEP 50)
    bias2_sqrt = math.sqrt(1.0 - beta2**t)
    step_size = lr / bias1
    if weight_decay != 0.0:
        p *= 1.0 - lr * weight_decay  # (...) decoupled decay, before the Adam step
    m *= beta1  # (...)
    m += (1.0 - beta1) * g  # (...) m = beta1 m + (1 - beta1) g
    v *= beta2  # (...)
    v += (1.0 - beta2) * (g * g)  # (...) v = beta2 v + (1 - beta2) g^2
    denom = np.sqrt(v)  # (...)
    denom /= bias2_sqrt  # (...) sqrt(v_hat)
    denom += eps  # (...)
    p -= step_size * (m / denom)  # (...) p -= lr * m_hat / (sqrt(v_hat) + eps)


# ------------------------------------------------------------------------- optimizer
def default_decay_filter(name, array):
    """True for arrays that get weight decay by default.

    Decayed: weight matrices and tensors with ``array.ndim >= 2`` (``blocks.0.attn.Wq``,
    the 3-D ``dense.W2``). Not decayed: 1-D biases and gains (``ln_f.b``,
    ``blocks.0.ln1.g``, ``blocks.0.mlp.b1``), the embeddings (``wte``, ``wpe``), the
    mixture logits (``alpha``) and the synthetic logits of the Random kinds (``R``,
    ``R1``, ``R2``). Those last are attention logits themselves, not feature weights:
    decaying them pulls every learned alignment toward the uniform one, a prior the
    paper's setup (no weight decay) does not have.
    """
    return array.ndim >= 2 and name.rsplit(".", 1)[-1] not in NO_DECAY_NAMES


def synthetic_logits_lr_scale(scale):
    """An ``lr_scale`` for :class:`AdamW`: ``scale`` for R, R1, R2 and 1 for the rest.

    Adam moves each entry of R by about the learning rate per step, and each entry
    is a logit of its own, so a short run leaves R close to its initialisation;
    a larger learning rate for these parameters alone lets it travel further.
    """
    scale = check_real("synthetic lr scale", scale, low=0.0, low_open=True)
    return lambda name, array: scale if name.rsplit(".", 1)[-1] in SYNTHETIC_LOGIT_NAMES else 1.0


class AdamW:
    """AdamW over a dict of named parameter arrays, updated in place.

    Parameters
    ----------
    params : dict[str, ndarray]
        The model's float32/float64 arrays. The optimizer keeps references to
        these arrays (not copies) and :meth:`step` writes into them.
    lr : float
        Default learning rate (a per-step ``lr`` passed to :meth:`step` overrides it).
    betas : (float, float)
        ``(beta1, beta2)`` moment decay rates, each in [0, 1).
    eps : float
        Added to the bias-corrected ``sqrt(v)``.
    weight_decay : float
        Decoupled decay coefficient applied to arrays selected by ``decay_filter``.
    decay_filter : callable(name, array) -> bool, optional
        Which parameters are decayed; :func:`default_decay_filter` if ``None``.
    lr_scale : callable(name, array) -> float, optional
        A positive multiplier of the learning rate per parameter (a parameter
        group's rate); 1 for every parameter if ``None``. See
        :func:`synthetic_logits_lr_scale`.
    backend : "numpy" or "numba"
        The per-array update: :func:`adamw_update` (the reference, default) or
        its Numba twin (see :mod:`minisynth.backend`).

    Attributes
    ----------
    m, v : dict[str, ndarray]
        First and second moments, same shapes and dtypes as the parameters.
    t : int
        Number of steps taken.
    decay : dict[str, bool]
        Whether each parameter is decayed (the filter is evaluated once, here).
    lr_scale : dict[str, float]
        Each parameter's learning-rate multiplier (evaluated once, here).
    """

    def __init__(
        self,
        params,
        lr=3e-3,
        betas=(0.9, 0.95),
        eps=1e-8,
        weight_decay=0.1,
        decay_filter: Callable[[str, np.ndarray], bool] | None = None,
        lr_scale: Callable[[str, np.ndarray], float] | None = None,
        backend="numpy",
    ):
        ops = operations(backend)
        self.update = adamw_update if ops is layers else ops.adamw_update  # or its twin
        self.backend = backend_of(ops)
        check_array_dict("params", params)
        for name, p in params.items():
            if not p.flags.writeable:
                raise ValueError(f"params[{name!r}] is read-only but is updated in place")
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        self.lr, self.beta1, self.beta2, self.eps, self.weight_decay = _check_hparams(
            lr, betas[0], betas[1], eps, weight_decay
        )
        if decay_filter is None:
            decay_filter = default_decay_filter
        if not callable(decay_filter):
            raise TypeError(
                "decay_filter must be callable(name, array) -> bool, "
                f"got {type(decay_filter).__name__}"
            )
        self.params = dict(params)  # a new dict holding the model's own arrays
        self.decay = {name: bool(decay_filter(name, p)) for name, p in self.params.items()}
        if lr_scale is not None and not callable(lr_scale):
            raise TypeError(
                f"lr_scale must be callable(name, array) -> float, got {type(lr_scale).__name__}"
            )
        self.lr_scale = {
            name: 1.0
            if lr_scale is None
            else check_real(f"lr_scale({name!r})", lr_scale(name, p), low=0.0, low_open=True)
            for name, p in self.params.items()
        }
        self.m = {name: np.zeros_like(p) for name, p in self.params.items()}
        self.v = {name: np.zeros_like(p) for name, p in self.params.items()}
        self.t = 0

    def _check_grads(self, grads):
        check_array_dict("grads", grads)
        check_same_keys("grads", grads, self.params)
        for name, p in self.params.items():
            g = grads[name]
            if g.dtype != p.dtype:
                raise TypeError(
                    f"grads[{name!r}] has dtype {g.dtype} but the parameter is {p.dtype}"
                )
            if g.shape != p.shape:
                raise ValueError(
                    f"grads[{name!r}] has shape {g.shape} but the parameter has shape {p.shape}"
                )

    def step(self, grads, lr=None):
        """Apply one AdamW update with ``grads`` (same keys, shapes, dtypes as the params).

        ``lr`` overrides the default learning rate for this step only (for a
        schedule). All inputs are checked before anything is modified, so a
        rejected call leaves parameters and state untouched.
        """
        self._check_grads(grads)
        lr = self.lr if lr is None else check_real("lr", lr, low=0.0)
        self.t += 1
        for name, p in self.params.items():
            wd = self.weight_decay if self.decay[name] else 0.0
            self.update(
                p, grads[name], self.m[name], self.v[name],
                lr * self.lr_scale[name], self.beta1, self.beta2, self.eps, wd, self.t,
            )  # fmt: skip

    def state_dict(self):
        """Optimizer state as a flat dict of arrays (copies), ready for ``np.savez``.

        Keys: ``t`` (0-d int64), ``m.<name>`` and ``v.<name>`` for each parameter.
        Hyperparameters are not included: they are constructor arguments.
        """
        state = {"t": np.array(self.t, dtype=np.int64)}
        for name in self.params:
            state[f"m.{name}"] = self.m[name].copy()
            state[f"v.{name}"] = self.v[name].copy()
        return state

    def load_state_dict(self, state):
        """Restore the state saved by :meth:`state_dict` (a dict or an ``np.load`` result).

        Keys must match exactly; every moment array must have its parameter's
        shape and dtype. Everything is checked before anything is changed; the
        arrays are copied.
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a dict of arrays, got {type(state).__name__}")
        expected = ["t"] + [f"{k}.{name}" for name in self.params for k in ("m", "v")]
        check_same_keys("optimizer state", list(state.keys()), expected)
        t = np.asarray(state["t"])
        if t.shape != () or not np.issubdtype(t.dtype, np.integer) or int(t) < 0:
            raise ValueError(f"state['t'] must be a non-negative integer scalar, got {t!r}")
        new = {"m": {}, "v": {}}
        for name, p in self.params.items():
            for k in ("m", "v"):
                key = f"{k}.{name}"
                arr = np.asarray(state[key])
                if arr.shape != p.shape:
                    raise ValueError(
                        f"state[{key!r}] has shape {arr.shape} "
                        f"but the parameter has shape {p.shape}"
                    )
                if arr.dtype != p.dtype:
                    raise TypeError(
                        f"state[{key!r}] has dtype {arr.dtype} but the parameter is {p.dtype}"
                    )
                new[k][name] = np.array(arr, copy=True)
        self.m, self.v, self.t = new["m"], new["v"], int(t)


# -------------------------------------------------------------------------- clipping
SQUARES_CHUNK = 1 << 16  # elements converted to float64 at a time (512 KiB: stays in cache)


def _sum_of_squares(g):
    """sum(g**2) accumulated in float64, a chunk at a time: no float64 copy of a large
    gradient (Random's R) is ever made whole. (einsum, not a BLAS dot: BLAS would wake
    its thread pool, whose spinning threads then slow the next training step.)"""
    flat = g.reshape(-1)
    total = 0.0
    for start in range(0, flat.size, SQUARES_CHUNK):
        chunk = flat[start : start + SQUARES_CHUNK].astype(np.float64)
        total += float(np.einsum("i,i->", chunk, chunk))
    return total


def clip_grad_norm(grads, max_norm):
    """Clip gradients by their global L2 norm, in place; return the norm before clipping.

    The norm ``sqrt(sum over all arrays of sum(g**2))`` is accumulated in float64.
    If it exceeds ``max_norm``, every array is multiplied by
    ``max_norm / (norm + 1e-6)`` (as ``torch.nn.utils.clip_grad_norm_``), so the
    new norm is ``max_norm`` up to that 1e-6. If the norm is not finite (NaN/inf
    gradients) nothing is scaled and the non-finite norm is returned, so the
    caller can detect it and skip the step.
    """
    check_array_dict("grads", grads)
    max_norm = check_real("max_norm", max_norm, low=0.0, low_open=True)
    total = math.sqrt(sum(_sum_of_squares(g) for g in grads.values()))
    if math.isfinite(total) and total > max_norm:
        scale = max_norm / (total + 1e-6)
        for name, g in grads.items():
            if not g.flags.writeable:
                raise ValueError(f"grads[{name!r}] is read-only but would be scaled in place")
        for g in grads.values():
            g *= scale  # (...) stays in g's dtype
    return total


# -------------------------------------------------------------------------- schedule
def lr_schedule(step, *, max_lr, warmup_steps, total_steps, min_lr=0.0):
    """Learning rate at 0-based ``step``: linear warmup, then cosine decay to ``min_lr``.

    * ``step < warmup_steps``: ``max_lr * (step + 1) / warmup_steps`` (so step 0
      gives ``max_lr / warmup_steps`` and step ``warmup_steps - 1`` gives ``max_lr``);
    * ``warmup_steps <= step < total_steps``: with
      ``progress = (step - warmup_steps) / (total_steps - warmup_steps)`` in [0, 1),
      ``min_lr + 0.5 * (max_lr - min_lr) * (1 + cos(pi * progress))`` (so step
      ``warmup_steps`` gives ``max_lr`` and the midpoint gives ``(max_lr + min_lr) / 2``);
    * ``step >= total_steps``: ``min_lr``.

    ``warmup_steps=0`` means no warmup (the cosine starts at ``max_lr`` at step 0).
    Requires ``0 <= min_lr <= max_lr``, ``max_lr > 0`` and ``0 <= warmup_steps <= total_steps``.
    """
    step = check_nonneg_int("step", step)
    max_lr = check_real("max_lr", max_lr, low=0.0, low_open=True)
    min_lr = check_real("min_lr", min_lr, low=0.0)
    if min_lr > max_lr:
        raise ValueError(f"min_lr ({min_lr}) must not exceed max_lr ({max_lr})")
    warmup_steps = check_nonneg_int("warmup_steps", warmup_steps)
    total_steps = check_positive_int("total_steps", total_steps)
    if warmup_steps > total_steps:
        raise ValueError(
            f"warmup_steps ({warmup_steps}) must not exceed total_steps ({total_steps})"
        )
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + math.cos(math.pi * progress))
