"""The PyTorch twin of :class:`minisynth.model.SynthesizerLM`: the same model, trained anywhere.

Imported on demand; ``import minisynth`` never imports torch::

    pip install "minisynth[torch]"
    from minisynth.torch_model import SynthesizerTorch

Same architecture as :mod:`minisynth.model` and :mod:`minisynth.attention`, every
attention kind and mixture, written as a PyTorch user writes it: ``nn.Module``s,
autograd for the backward pass, vanilla attention through
``F.scaled_dot_product_attention``, any device (CPU, CUDA, MPS), any torch optimizer.
Its ``state_dict()`` keys are minisynth's contract names (``wte``,
``blocks.0.attn.Wq``, ``blocks.0.attn.dense.W2`` in a mixture, ...), so weights
travel both ways:

* ``SynthesizerTorch.from_pretrained(DIR)`` loads what ``minisynth export`` writes
  (``model.safetensors`` + ``config.json``, :mod:`minisynth.export`), and
  ``model.save_pretrained(DIR)`` writes what ``minisynth import`` reads;
* ``from_minisynth(model)`` and ``to_minisynth()`` convert in memory.

Math (shape letters of :mod:`minisynth.layers`)::

    x = wte[idx] + wpe[:T]
    per block:  x += attn(ln1(x));  x += gelu_tanh(ln2(x) @ W1 + b1) @ W2 + b2
    logits = ln_f(x) @ wte^T;  loss = mean cross-entropy

A fresh model is initialised by minisynth's rules (embeddings N(0, 0.02), weights
Xavier-uniform over their last two axes, biases and mixture logits zero, layer-norm
gains one); seed it with ``torch.manual_seed``.

Logits shared across the batch (random, random_fixed, factorized_random alone) are
softmaxed once as (H,T,T) and broadcast in ``P @ v``, and autograd sums their
gradient over the batch; minisynth computes the same numbers.

This module is also the PyTorch side of the benchmarks (``benchmarks/bench_train.py``)
and of the cross-check of minisynth's hand-written gradients
(``tests/test_torch_crosscheck.py``): the one PyTorch implementation in the repository.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import attention, export
from .layers import LAYERNORM_EPS
from .model import EMBEDDING_STD, ModelConfig, SynthesizerLM
from .optim import default_decay_filter

TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


def as_index_tensor(idx, device=None):
    """Integer ids (NumPy array or tensor) -> an int64 tensor, as embeddings and CE require."""
    if isinstance(idx, torch.Tensor):
        return idx.to(device=device, dtype=torch.long)
    return torch.from_numpy(np.ascontiguousarray(idx, dtype=np.int64)).to(device)


def split_heads(x, H):
    """(B,T,C) -> (B,H,T,hs)."""
    B, T, C = x.shape
    return x.view(B, T, H, C // H).transpose(1, 2)


def merge_heads(x):
    """(B,H,T,hs) -> (B,T,C)."""
    B, H, T, hs = x.shape
    return x.transpose(1, 2).reshape(B, T, H * hs)


# -------------------------------------------------------------- logits per kind
# m is the module holding the component's parameters; x (B,T,C); H heads.
def vanilla_logits(m, x, H):
    q = split_heads(x @ m.Wq + m.bq, H)  # (B,H,T,hs)
    k = split_heads(x @ m.Wk + m.bk, H)  # (B,H,T,hs)
    return (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-1, -2)  # (B,H,T,T)


def dense_logits(m, x, H):
    T = x.shape[1]
    hid = split_heads(torch.relu(x @ m.W1 + m.b1), H)  # (B,H,T,hs)
    return hid @ m.W2[:, :, :T] + m.b2[:, None, :T]  # (B,H,T,T)


def factorized_dense_logits(m, x, H):
    B, T, _ = x.shape
    hid = split_heads(torch.relu(x @ m.W1 + m.b1), H)  # (B,H,T,hs)
    A = hid @ m.Wa + m.ba[:, None, :]  # (B,H,T,a)
    B_tilde = hid @ m.Wb + m.bb[:, None, :]  # (B,H,T,b)
    full = (B_tilde[..., :, None] * A[..., None, :]).reshape(B, H, T, -1)  # (B,H,T,L) A tiled
    return full[..., :T]  # (B,H,T,T)


def random_logits(m, x, H):
    T = x.shape[1]
    return m.R[:, :T, :T]  # (H,T,T)


def factorized_random_logits(m, x, H):
    T = x.shape[1]
    return m.R1[:, :T] @ m.R2[:, :T].transpose(-1, -2)  # (H,T,T)


LOGITS = {
    "vanilla": vanilla_logits,
    "dense": dense_logits,
    "random": random_logits,
    "random_fixed": random_logits,
    "factorized_dense": factorized_dense_logits,
    "factorized_random": factorized_random_logits,
}


# ----------------------------------------------------------------------- modules
class LayerNorm(nn.Module):
    def __init__(self, C):
        super().__init__()
        self.g = nn.Parameter(torch.ones(C))
        self.b = nn.Parameter(torch.zeros(C))

    def forward(self, x):
        return F.layer_norm(x, (x.shape[-1],), self.g, self.b, LAYERNORM_EPS)


class MLP(nn.Module):
    def __init__(self, C):
        super().__init__()
        self.W1 = nn.Parameter(torch.empty(C, 4 * C))
        self.b1 = nn.Parameter(torch.zeros(4 * C))
        self.W2 = nn.Parameter(torch.empty(4 * C, C))
        self.b2 = nn.Parameter(torch.zeros(C))

    def forward(self, x):
        return F.gelu(x @ self.W1 + self.b1, approximate="tanh") @ self.W2 + self.b2


class SelfAttention(nn.Module):
    """Causal multi-head attention of ``config.attention``; a mixture keeps each
    component's parameters in a child module named by its kind."""

    def __init__(self, config):
        super().__init__()
        C, H, L = config.d_model, config.n_heads, config.max_len
        comps = attention.components(config.attention, C, H, L, **config.attention_options)
        self.H = H
        self.kinds = [comp.kind for comp in comps]
        self.aliases = {comp.kind: comp.aliases() for comp in comps}  # dense_from_query
        self.mixture = len(comps) > 1
        self.Wv = nn.Parameter(torch.empty(C, C))
        self.bv = nn.Parameter(torch.zeros(C))
        self.Wo = nn.Parameter(torch.empty(C, C))
        self.bo = nn.Parameter(torch.zeros(C))
        for comp in comps:
            holder = nn.Module() if self.mixture else self
            for name, shape in comp.shapes().items():
                holder.register_parameter(name, nn.Parameter(torch.empty(shape)))
            for name, shape in comp.buffer_shapes().items():
                holder.register_buffer(name, torch.empty(shape))
            if self.mixture:
                self.add_module(comp.kind, holder)
        if self.mixture:
            self.alpha = nn.Parameter(torch.zeros(H, len(comps)))
        # True where query i may see key j <= i; rebuilt, not saved
        self.register_buffer("causal", torch.ones(L, L, dtype=torch.bool).tril(), persistent=False)

    def holder(self, kind):
        """The module holding a component's parameters (with any it borrows, by local name)."""
        own = getattr(self, kind) if self.mixture else self
        if not self.aliases[kind]:
            return own
        borrowed = {local: getattr(self.holder(other), name)
                    for local, (other, name) in self.aliases[kind].items()}  # fmt: skip
        return SimpleNamespace(**dict(own.named_parameters(recurse=False)), **borrowed)

    def forward(self, x):
        B, T, C = x.shape
        v = split_heads(x @ self.Wv + self.bv, self.H)  # (B,H,T,hs)
        if self.kinds == ["vanilla"]:  # what PyTorch users run: the fused kernel
            q = split_heads(x @ self.Wq + self.bq, self.H)  # (B,H,T,hs)
            k = split_heads(x @ self.Wk + self.bk, self.H)  # (B,H,T,hs)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B,H,T,hs)
        else:
            logits = [LOGITS[kind](self.holder(kind), x, self.H) for kind in self.kinds]
            if self.mixture:
                mix = torch.softmax(self.alpha, dim=-1)  # (H,N)
                S = sum(mix[:, n, None, None] * S_n for n, S_n in enumerate(logits))
            else:
                S = logits[0]  # (B,H,T,T), or (H,T,T) shared across the batch
            S = S.masked_fill(~self.causal[:T, :T], float("-inf"))
            o = torch.softmax(S, dim=-1) @ v  # (B,H,T,hs) a shared P broadcasts over B
        return merge_heads(o) @ self.Wo + self.bo  # (B,T,C)


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln1 = LayerNorm(config.d_model)
        self.attn = SelfAttention(config)
        self.ln2 = LayerNorm(config.d_model)
        self.mlp = MLP(config.d_model)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class SynthesizerTorch(nn.Module):
    """The minisynth language model in PyTorch, for a :class:`~minisynth.model.ModelConfig`."""

    def __init__(self, config):
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
        self.config = config
        C, V, L = config.d_model, config.vocab_size, config.max_len
        self.wte = nn.Parameter(torch.empty(V, C))
        self.wpe = nn.Parameter(torch.empty(L, C))
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_f = LayerNorm(C)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        """minisynth's initialisation rules (see the module docstring)."""
        r_std = self.config.attention_options.get("init_std")  # random kinds' option
        for name, tensor in self.state_dict(keep_vars=True).items():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "R" and r_std is not None:
                tensor.normal_(0.0, r_std)
            elif name in ("wte", "wpe"):
                tensor.normal_(0.0, EMBEDDING_STD)
            elif leaf == "g":
                tensor.fill_(1.0)
            elif leaf.startswith("b") or leaf == "alpha":
                tensor.zero_()
            else:  # weights (.., fan_in, fan_out), and R-like (H,L,L) or (H,L,k)
                limit = math.sqrt(6.0 / (tensor.shape[-2] + tensor.shape[-1]))
                tensor.uniform_(-limit, limit)

    def forward(self, idx, targets=None):
        """idx (B,T) ints -> logits (B,T,V); with ``targets``, (logits, mean cross-entropy)."""
        idx = as_index_tensor(idx, self.wte.device)
        B, T = idx.shape
        if T > self.config.max_len:
            raise ValueError(
                f"idx has length T = {T} but the model's max_len is {self.config.max_len}"
            )
        x = self.wte[idx] + self.wpe[:T]  # (B,T,C)
        for block in self.blocks:
            x = block(x)
        logits = self.ln_f(x) @ self.wte.T  # (B,T,V) tied output embedding
        if targets is None:
            return logits
        targets = as_index_tensor(targets, self.wte.device)
        return logits, F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(-1))

    # ------------------------------------------------------------ conversion
    @classmethod
    def from_minisynth(cls, model):
        """A copy of a :class:`SynthesizerLM`'s weights, in its dtype (float32 or float64)."""
        twin = cls(model.config).to(TORCH_DTYPES[model.dtype])
        arrays = {**model.params, **model.buffers}
        twin.load_state_dict({n: torch.tensor(np.array(a)) for n, a in arrays.items()})
        return twin

    def to_minisynth(self, dtype=None):
        """A :class:`SynthesizerLM` holding a copy of these weights (dtype: this model's)."""
        state = {n: t.detach().cpu().numpy() for n, t in self.state_dict().items()}
        if dtype is None:
            dtype = state["wte"].dtype
        model = SynthesizerLM(self.config, dtype=dtype)
        model.load_state({n: state[n] for n in model.params}, {n: state[n] for n in model.buffers})
        return model

    def save_pretrained(self, out_dir):
        """Write ``out_dir/model.safetensors`` (float32) and ``config.json`` (minisynth import)."""
        state = {n: t.detach().float().cpu().numpy() for n, t in self.state_dict().items()}
        export.write_pretrained(out_dir, self.config, state)

    @classmethod
    def from_pretrained(cls, src_dir, device=None):
        """Load a directory written by ``minisynth export`` or :meth:`save_pretrained`."""
        model = export.read_pretrained(src_dir)  # checks every tensor against config.json
        return cls.from_minisynth(model).to(device)

    # ----------------------------------------------- NumPy views for cross-checks
    def numpy_params(self):
        """Copies of the parameters as NumPy arrays keyed by contract name."""
        return {n: t.detach().cpu().numpy().copy() for n, t in self.named_parameters()}

    def numpy_grads(self):
        """Copies of every parameter's ``.grad`` (zeros where autograd left none)."""
        return {
            n: (torch.zeros_like(t) if t.grad is None else t.grad).detach().cpu().numpy().copy()
            for n, t in self.named_parameters()
        }

    def loss(self, idx, targets):
        """Mean cross-entropy in nats, without building a graph."""
        with torch.no_grad():
            return float(self(idx, targets)[1])

    def loss_and_grads(self, idx, targets):
        """(loss, grads as NumPy arrays keyed by contract name), like minisynth's method."""
        self.zero_grad(set_to_none=True)
        _, loss = self(idx, targets)
        loss.backward()
        return float(loss.detach()), self.numpy_grads()


# --------------------------------------------------------------------- training
def make_adamw(model, *, lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1,
               decay_filter=None, lr_scale=None, **torch_options):  # fmt: skip
    """``torch.optim.AdamW`` with minisynth's parameter groups and defaults.

    ``decay_filter(name, array)`` and ``lr_scale(name, array)`` decide per contract
    name, exactly as in :class:`minisynth.optim.AdamW`; each group records its
    ``lr_scale``, which :func:`train_step` applies. ``torch_options`` (``foreach``,
    ``fused``) pass through to torch.
    """
    decay_filter = default_decay_filter if decay_filter is None else decay_filter
    groups = {}
    for name, param in model.named_parameters():
        like = np.empty((0,) * param.ndim)  # the filters look at ndim and the name only
        decay = bool(decay_filter(name, like))
        scale = 1.0 if lr_scale is None else float(lr_scale(name, like))
        groups.setdefault((decay, scale), []).append(param)
    return torch.optim.AdamW(
        [{"params": params, "weight_decay": weight_decay if decay else 0.0,
          "lr": lr * scale, "lr_scale": scale}
         for (decay, scale), params in groups.items()],
        lr=lr, betas=tuple(betas), eps=eps, **torch_options,
    )  # fmt: skip


def adamw_like(model, ms_optimizer, **torch_options):
    """A torch AdamW with the settings and decay groups of a :class:`minisynth.optim.AdamW`."""
    return make_adamw(
        model,
        lr=ms_optimizer.lr,
        betas=(ms_optimizer.beta1, ms_optimizer.beta2),
        eps=ms_optimizer.eps,
        weight_decay=ms_optimizer.weight_decay,
        decay_filter=lambda name, array: ms_optimizer.decay[name],
        lr_scale=lambda name, array: ms_optimizer.lr_scale[name],
        **torch_options,
    )


def train_step(model, optimizer, idx, targets, *, lr=None, max_norm=1.0):
    """One step as :func:`minisynth.train.train` takes it: loss, backward, clip, AdamW.

    ``lr`` (if given) times each group's ``lr_scale`` is set for this step; ``max_norm <= 0`` skips
    clipping. ``torch.nn.utils.clip_grad_norm_`` scales by ``max_norm / (norm + 1e-6)``
    clamped to 1, as :func:`minisynth.optim.clip_grad_norm` does. Returns the loss.
    """
    if lr is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
    optimizer.zero_grad(set_to_none=True)
    _, loss = model(idx, targets)
    loss.backward()
    if max_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    return float(loss.detach())
