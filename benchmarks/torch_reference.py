"""PyTorch (eager, CPU) twin of :class:`minisynth.model.SynthesizerLM`, for cross-checks and timing.

This module is the only place besides ``tests/test_torch_crosscheck.py`` that imports
PyTorch: minisynth itself never does. It rebuilds exactly the model of
:mod:`minisynth.model` and :mod:`minisynth.attention` with torch operations and lets
autograd do the backward pass, so it is an independent check of minisynth's
hand-written gradients and a baseline for its speed.

The model is always built FROM a minisynth model (:meth:`TorchSynthesizerLM.from_minisynth`):
every parameter and buffer is copied under its contract name (``wte``,
``blocks.0.attn.dense.W2``, ...), in the minisynth model's dtype. Nothing here
initialises weights, so the two models can only differ by their arithmetic.

Math, mirrored line by line (shape letters of :mod:`minisynth.layers`)::

    x = wte[idx] + wpe[:T]
    per block:  x += attn(ln1(x));  x += gelu_tanh(ln2(x) @ W1 + b1) @ W2 + b2
    logits = ln_f(x) @ wte^T;  loss = mean cross-entropy

with layer norm eps 1e-5 (biased variance), GELU's tanh approximation, and the
attention kinds of :mod:`minisynth.attention` (logits S per kind, mixtures weighted
by softmax(alpha) per head, causal mask j <= i, P = softmax(S), o = P v).

One difference in *how*, not *what*: logits shared across the batch (random,
random_fixed, factorized_random alone) are softmaxed once as (H,T,T) and broadcast
in ``P @ v``; autograd then sums their gradient over the batch before the softmax
backward. minisynth broadcasts S to (B,H,T,T) first and so does that softmax B
times; the results are equal, torch just does less work.

The optimizer helpers build a ``torch.optim.AdamW`` with minisynth's decay groups
(:func:`minisynth.optim.default_decay_filter`) and hyperparameters; torch's AdamW
update is the formula quoted in :mod:`minisynth.optim`. Clipping uses
``torch.nn.utils.clip_grad_norm_``, which scales by ``max_norm / (norm + 1e-6)``
clamped to 1, the same as :func:`minisynth.optim.clip_grad_norm`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from minisynth import attention
from minisynth.layers import LAYERNORM_EPS
from minisynth.optim import default_decay_filter

TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


def _mangle(name):
    """Contract name -> a name torch accepts for a parameter (no dots allowed there)."""
    return name.replace(".", "__")


def as_index_tensor(idx):
    """Integer ids (NumPy array or tensor) -> an int64 tensor, as embeddings and CE require."""
    if isinstance(idx, torch.Tensor):
        return idx.to(torch.long)
    return torch.from_numpy(np.ascontiguousarray(idx, dtype=np.int64))


class TorchSynthesizerLM(torch.nn.Module):
    """The minisynth LM in PyTorch; build it with :meth:`from_minisynth`.

    ``contract_parameters()`` yields ``(contract name, parameter)`` in minisynth's
    order, which is also the order the optimizer groups follow.
    """

    def __init__(self, config, params, buffers, dtype):
        super().__init__()
        self.config = config
        self.parts = attention.parse_kind(config.attention)
        self.mixture = len(self.parts) > 1
        self.prefixes = [f"{k}." if self.mixture else "" for k in self.parts]
        self.H = config.n_heads
        self.hs = config.d_model // config.n_heads
        self.dtype = dtype
        self.names = list(params)
        for name, arr in params.items():
            # a copy: training one model must never move the other's weights
            tensor = torch.tensor(np.array(arr), dtype=dtype)
            self.register_parameter(_mangle(name), torch.nn.Parameter(tensor))
        self.buffer_names = list(buffers)
        for name, arr in buffers.items():
            self.register_buffer(_mangle(name), torch.tensor(np.array(arr), dtype=dtype))
        L = config.max_len
        # True where query i may see key j (j <= i), as minisynth.layers.causal_mask
        self.register_buffer("causal", torch.ones(L, L, dtype=torch.bool).tril(), persistent=False)

    @classmethod
    def from_minisynth(cls, model):
        """Transplant a :class:`minisynth.model.SynthesizerLM`'s parameters and buffers (copies)."""
        return cls(model.config, model.params, model.buffers, TORCH_DTYPES[model.dtype])

    # ------------------------------------------------------------------ access
    def p(self, name):
        """Parameter or buffer by contract name."""
        return getattr(self, _mangle(name))

    def contract_parameters(self):
        """(contract name, parameter) pairs in minisynth's order."""
        return [(name, self.p(name)) for name in self.names]

    def numpy_params(self):
        """Copies of the parameters as NumPy arrays keyed by contract name."""
        return {name: t.detach().numpy().copy() for name, t in self.contract_parameters()}

    def numpy_grads(self):
        """Copies of the ``.grad`` of every parameter (zeros where autograd left none)."""
        return {
            name: (np.zeros(t.shape, t.detach().numpy().dtype) if t.grad is None else
                   t.grad.detach().numpy().copy())
            for name, t in self.contract_parameters()
        }  # fmt: skip

    # ----------------------------------------------------------------- forward
    def _component_logits(self, kind, pre, x):
        """Logits S_n of one component: (B,H,T,T), or (H,T,T) when shared across the batch."""
        p = self.p
        B, T, C = x.shape
        H, hs = self.H, self.hs
        if kind == "vanilla":
            q = (x @ p(pre + "Wq") + p(pre + "bq")).view(B, T, H, hs).transpose(1, 2)
            k = (x @ p(pre + "Wk") + p(pre + "bk")).view(B, T, H, hs).transpose(1, 2)
            return (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(hs))  # (B,H,T,T)
        if kind in ("dense", "factorized_dense"):
            hid = torch.relu(x @ p(pre + "W1") + p(pre + "b1"))  # (B,T,C)
            hid = hid.view(B, T, H, hs).transpose(1, 2)  # (B,H,T,hs)
            if kind == "dense":
                W2 = p(pre + "W2")[:, :, :T]  # (H,hs,T)
                return hid @ W2 + p(pre + "b2")[:, None, :T]  # (B,H,T,T)
            A = hid @ p(pre + "Wa") + p(pre + "ba")[:, None, :]  # (B,H,T,a)
            Bf = hid @ p(pre + "Wb") + p(pre + "bb")[:, None, :]  # (B,H,T,b)
            # full[q*a + r] = Bf[q] * A[r]  (A tiled, Bf repeated)
            full = (Bf[..., :, None] * A[..., None, :]).reshape(B, H, T, -1)  # (B,H,T,L)
            return full[..., :T]  # (B,H,T,T)
        if kind in ("random", "random_fixed"):
            return p(pre + "R")[:, :T, :T]  # (H,T,T)
        if kind == "factorized_random":
            R1 = p(pre + "R1")[:, :T]  # (H,T,k)
            R2 = p(pre + "R2")[:, :T]  # (H,T,k)
            return R1 @ R2.transpose(-1, -2)  # (H,T,T)
        raise ValueError(f"unknown attention kind {kind!r}")

    def _attention(self, i, x):
        """Block i's attention on its (layer-normed) input x (B,T,C) -> (B,T,C)."""
        pre = f"blocks.{i}.attn."
        B, T, C = x.shape
        H, hs = self.H, self.hs
        v = (x @ self.p(pre + "Wv") + self.p(pre + "bv")).view(B, T, H, hs).transpose(1, 2)
        if self.parts == ["vanilla"]:  # what PyTorch users run (as nanoGPT does): the fused call
            p = self.p
            q = (x @ p(pre + "Wq") + p(pre + "bq")).view(B, T, H, hs).transpose(1, 2)
            k = (x @ p(pre + "Wk") + p(pre + "bk")).view(B, T, H, hs).transpose(1, 2)
            o = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            return o.transpose(1, 2).reshape(B, T, C) @ p(pre + "Wo") + p(pre + "bo")
        logits = [
            self._component_logits(kind, pre + prefix, x)
            for kind, prefix in zip(self.parts, self.prefixes, strict=True)
        ]
        if self.mixture:
            mix = torch.softmax(self.p(pre + "alpha"), dim=-1)  # (H,N)
            S = sum(mix[:, n, None, None] * S_n for n, S_n in enumerate(logits))  # (B?,H,T,T)
        else:
            S = logits[0]  # (B,H,T,T) or shared (H,T,T)
        S = S.masked_fill(~self.causal[:T, :T], float("-inf"))
        P = torch.softmax(S, dim=-1)  # (B?,H,T,T)
        o = P @ v  # (B,H,T,hs) a shared P broadcasts over the batch here
        o = o.transpose(1, 2).reshape(B, T, C)  # (B,T,C)
        return o @ self.p(pre + "Wo") + self.p(pre + "bo")

    def forward(self, idx, targets=None):
        """idx (B,T) ints -> logits (B,T,V), plus the mean cross-entropy if ``targets`` is given."""
        idx = as_index_tensor(idx)
        p = self.p
        B, T = idx.shape
        C = self.config.d_model
        x = p("wte")[idx] + p("wpe")[:T]  # (B,T,C)
        for i in range(self.config.n_layers):
            pre = f"blocks.{i}."
            a_in = F.layer_norm(x, (C,), p(pre + "ln1.g"), p(pre + "ln1.b"), LAYERNORM_EPS)
            x = x + self._attention(i, a_in)
            m_in = F.layer_norm(x, (C,), p(pre + "ln2.g"), p(pre + "ln2.b"), LAYERNORM_EPS)
            h = F.gelu(m_in @ p(pre + "mlp.W1") + p(pre + "mlp.b1"), approximate="tanh")
            x = x + (h @ p(pre + "mlp.W2") + p(pre + "mlp.b2"))
        xf = F.layer_norm(x, (C,), p("ln_f.g"), p("ln_f.b"), LAYERNORM_EPS)
        logits = xf @ p("wte").T  # (B,T,V) tied output embedding
        if targets is None:
            return logits
        targets = as_index_tensor(targets)
        loss = F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(-1))
        return logits, loss

    def loss(self, idx, targets):
        """Mean cross-entropy in nats, without building a graph."""
        with torch.no_grad():
            return float(self.forward(idx, targets)[1])

    def loss_and_grads(self, idx, targets):
        """(loss, grads as NumPy arrays keyed by contract name), like minisynth's method."""
        self.zero_grad(set_to_none=True)
        _, loss = self.forward(idx, targets)
        loss.backward()
        return float(loss.detach()), self.numpy_grads()


# ---------------------------------------------------------------------- optimizer
def make_adamw(
    model,
    *,
    lr=3e-3,
    betas=(0.9, 0.95),
    eps=1e-8,
    weight_decay=0.1,
    decay_filter=None,
    **torch_options,
):
    """``torch.optim.AdamW`` with minisynth's decay groups (defaults: minisynth.optim.AdamW's).

    ``decay_filter(name, array)`` decides per contract name, exactly as in
    :class:`minisynth.optim.AdamW` (:func:`~minisynth.optim.default_decay_filter`
    if None): decayed arrays go in a group with ``weight_decay``, the rest in one
    with 0. ``torch_options`` (``foreach``, ``fused``) pass through to torch.
    """
    decay_filter = default_decay_filter if decay_filter is None else decay_filter
    decayed, plain = [], []
    for name, param in model.contract_parameters():
        # the filter looks at ndim and the name, so a NumPy view of the weights suffices
        (decayed if decay_filter(name, param.detach().numpy()) else plain).append(param)
    groups = [
        {"params": decayed, "weight_decay": weight_decay},
        {"params": plain, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]  # torch rejects an empty group
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, **torch_options)


def adamw_like(model, ms_optimizer, **torch_options):
    """A torch AdamW matching an existing :class:`minisynth.optim.AdamW`'s settings and groups.

    The decay choice is read from ``ms_optimizer.decay`` (evaluated once by
    minisynth), so a custom filter there carries over too.
    """
    return make_adamw(
        model,
        lr=ms_optimizer.lr,
        betas=(ms_optimizer.beta1, ms_optimizer.beta2),
        eps=ms_optimizer.eps,
        weight_decay=ms_optimizer.weight_decay,
        decay_filter=lambda name, array: ms_optimizer.decay[name],
        **torch_options,
    )


def train_step(model, optimizer, idx, targets, *, lr=None, max_norm=1.0):
    """One training step as in :func:`minisynth.train.train`: loss, backward, clip, AdamW.

    ``lr`` (if given) is set on every group for this step, like
    ``minisynth.optim.AdamW.step(grads, lr=lr)``; ``max_norm <= 0`` skips clipping
    (minisynth's ``grad_clip = 0``). Returns the loss as a float.
    """
    if lr is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    _, loss = model(idx, targets)
    loss.backward()
    if max_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    return float(loss.detach())
