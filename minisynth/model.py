"""A decoder-only, character-level Synthesizer language model with a hand-written backward.

Shape letters are those of :mod:`minisynth.layers` (B, T, C, V, L).

Forward (GPT-2 layout with pre-norm blocks and a tied output embedding)::

    x = wte[idx] + wpe[:T]                                  (B,T,C)
    for each block:
        x = x + attn(ln1(x))                                (B,T,C)
        x = x + gelu_tanh(ln2(x) @ W1 + b1) @ W2 + b2       (B,T,C)
    logits = ln_f(x) @ wte^T                                (B,T,V)
    loss = mean cross-entropy in nats;  BPC = loss / ln 2

Initialisation: token and position embeddings N(0, 0.02); MLP weights
Xavier-uniform like the attention layers (see :mod:`minisynth.attention`);
biases zero; layer-norm gains one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from . import attention, layers
from ._validate import FLOAT_DTYPES, check_int_array, check_positive_int
from .backend import backend_of, operations

EMBEDDING_STD = 0.02
MAX_SIZE = 2**31 - 1  # of any size field of a config (the limits below bound memory)
# Bytes a model's parameters (and a training step, see minisynth.train) may ask for: a
# file or a flag asking for more is refused before anything is allocated.
MAX_BYTES_VARIABLE = "MINISYNTH_MAX_BYTES"
DEFAULT_MAX_BYTES = 4 * 2**30


@dataclass
class ModelConfig:
    """Size and kind of a :class:`SynthesizerLM`; validated on creation."""

    vocab_size: int = 256
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 2
    max_len: int = 128
    attention: str = "dense"
    attention_options: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_heads", "n_layers", "max_len"):
            setattr(self, name, check_positive_int(name, getattr(self, name)))
            if getattr(self, name) > MAX_SIZE:
                raise ValueError(
                    f"{name} {getattr(self, name)} is beyond any model minisynth builds"
                )
        if not isinstance(self.attention_options, dict):
            raise TypeError(
                f"attention_options must be a dict, got {type(self.attention_options).__name__}"
            )
        if isinstance(self.attention_options.get("factors"), list):  # JSON gives lists
            self.attention_options["factors"] = tuple(self.attention_options["factors"])
        # validates the kind, d_model % n_heads, and the options (factors, k)
        attention.count_params(
            self.attention, self.d_model, self.n_heads, self.max_len, **self.attention_options
        )
        self.attention = "+".join(attention.parse_kind(self.attention))

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text):
        try:
            fields = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"the model config is not valid JSON: {err}") from None
        if not isinstance(fields, dict):
            raise ValueError("the model config must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(fields) - known
        if unknown:
            raise ValueError(f"the model config has unknown fields {sorted(unknown)}")
        return cls(**fields)


def memory_limit():
    """Bytes a model or a training step may ask for: ``MINISYNTH_MAX_BYTES``, else 4 GiB."""
    text = os.environ.get(MAX_BYTES_VARIABLE, "").strip()
    if not text:
        return DEFAULT_MAX_BYTES
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{MAX_BYTES_VARIABLE} must be a positive number of bytes, got {text!r}")
    return int(value)


def _layer_shapes(config):
    """``(params, buffers)`` of one block, under their names inside ``blocks.<i>.``."""
    C = config.d_model
    attn_params, attn_buffers = attention.parameter_shapes(
        config.attention, C, config.n_heads, config.max_len, **config.attention_options
    )
    params = {"ln1.g": (C,), "ln1.b": (C,)}
    params.update({"attn." + n: shape for n, shape in attn_params.items()})
    params.update({"ln2.g": (C,), "ln2.b": (C,), "mlp.W1": (C, 4 * C), "mlp.b1": (4 * C,),
                   "mlp.W2": (4 * C, C), "mlp.b2": (C,)})  # fmt: skip
    return params, {"attn." + n: shape for n, shape in attn_buffers.items()}


def _outer_shapes(config):
    """The arrays outside the blocks: the embeddings and the final layer norm."""
    C = config.d_model
    return {"wte": (config.vocab_size, C), "wpe": (config.max_len, C), "ln_f.g": (C,),
            "ln_f.b": (C,)}  # fmt: skip


def parameter_shapes(config):
    """``(params, buffers)``: name -> shape of every array of ``SynthesizerLM(config)``,
    without allocating any of them (check :func:`check_model_size` first: a config may
    name any number of layers)."""
    outer = _outer_shapes(config)
    layer_params, layer_buffers = _layer_shapes(config)
    params = {"wte": outer["wte"], "wpe": outer["wpe"]}
    buffers = {}
    for i in range(config.n_layers):
        params.update({f"blocks.{i}.{n}": shape for n, shape in layer_params.items()})
        buffers.update({f"blocks.{i}.{n}": shape for n, shape in layer_buffers.items()})
    params.update({"ln_f.g": outer["ln_f.g"], "ln_f.b": outer["ln_f.b"]})
    return params, buffers


def gib(nbytes):
    """A size for a message: GiB, MiB, or bytes when smaller."""
    if nbytes >= 2**30:
        return f"{nbytes / 2**30:.2f} GiB"
    return f"{nbytes / 2**20:.1f} MiB" if nbytes >= 2**20 else f"{nbytes:,} bytes"


ARRAY_OVERHEAD = 256  # bytes of bookkeeping per array (the ndarray object, its dict entries)


def check_model_size(config, dtype=np.float32):
    """The bytes of ``SynthesizerLM(config, dtype=dtype)``'s arrays, counted without listing
    them; a ValueError naming the largest array and the config's sizes when they exceed
    :func:`memory_limit`."""
    outer = _outer_shapes(config)
    layer_params, layer_buffers = _layer_shapes(config)
    layer = {**layer_params, **layer_buffers}
    numbers = sum(map(math.prod, outer.values())) + config.n_layers * sum(
        map(math.prod, layer.values())
    )
    arrays = len(outer) + config.n_layers * len(layer)
    nbytes = numbers * np.dtype(dtype).itemsize + ARRAY_OVERHEAD * arrays
    limit = memory_limit()
    if nbytes > limit:
        shapes = {**outer, **{"blocks.0." + n: shape for n, shape in layer.items()}}
        largest = max(shapes, key=lambda name: math.prod(shapes[name]))
        raise ValueError(
            f"this model would hold {gib(nbytes)} in {arrays:,} arrays, more than the limit of "
            f"{gib(limit)} ({MAX_BYTES_VARIABLE}); its largest array is {largest} "
            f"{shapes[largest]} (d_model {config.d_model}, max_len {config.max_len}, "
            f"n_layers {config.n_layers}, vocab_size {config.vocab_size})"
        )
    return nbytes


class BlockCache(NamedTuple):
    ln1: layers.LayerNormCache
    attn: attention.AttentionCache
    ln2: layers.LayerNormCache
    fc: layers.LinearCache
    gelu: layers.GeluCache
    proj: layers.LinearCache


class ModelCache(NamedTuple):
    idx: np.ndarray  # (B,T)
    embedding: layers.EmbeddingCache  # the token lookup wte[idx]
    blocks: tuple  # BlockCache per block
    ln_f: layers.LayerNormCache
    xf: np.ndarray  # (B,T,C) ln_f output, the input of the tied head


class SynthesizerLM:
    """Decoder-only Synthesizer LM. ``params`` and ``buffers`` are flat dicts (contract names).

    ``backend`` chooses the code that computes it, for this model alone:
    ``"numpy"`` (the default) calls the reference functions of
    :mod:`minisynth.layers`, ``"numba"`` their fast twins; ``model.ops`` holds
    them (see :mod:`minisynth.backend`). Both give the same numbers to rounding.
    ``tiles`` (``"auto"``, ``"always"``, ``"never"``; None: ``$MINISYNTH_TILES``,
    else ``"auto"``): when the fast path computes attention in tiles, never storing
    a (B,H,T,T) map (:func:`minisynth.attention.check_tiles`).
    """

    def __init__(self, config, seed=0, dtype=np.float32, backend="numpy", tiles=None):
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
        if np.dtype(dtype) not in FLOAT_DTYPES:
            raise TypeError(f"dtype must be float32 or float64, got {np.dtype(dtype)}")
        check_model_size(config, dtype)  # before anything is allocated
        self.ops = operations(backend)  # minisynth.layers, or minisynth.fast.ops
        tiles = attention.check_tiles(tiles)
        self.config = config
        self.dtype = np.dtype(dtype)
        cfg = config
        C, V, L = cfg.d_model, cfg.vocab_size, cfg.max_len
        rng = np.random.default_rng(seed)
        p = {
            "wte": (rng.standard_normal((V, C)) * EMBEDDING_STD).astype(self.dtype),
            "wpe": (rng.standard_normal((L, C)) * EMBEDDING_STD).astype(self.dtype),
        }
        self.buffers = {}
        self.attn = []
        for i in range(cfg.n_layers):
            pre = f"blocks.{i}."
            layer = attention.build(
                cfg.attention,
                C,
                cfg.n_heads,
                L,
                causal=True,
                seed=int(rng.integers(2**31)),
                dtype=self.dtype,
                backend=backend_of(self.ops),
                tiles=tiles,
                **cfg.attention_options,
            )
            self.attn.append(layer)
            p[pre + "ln1.g"] = np.ones(C, dtype=self.dtype)
            p[pre + "ln1.b"] = np.zeros(C, dtype=self.dtype)
            # the layer's own arrays: updating model.params in place updates the layer
            p.update({pre + "attn." + n: a for n, a in layer.params.items()})
            self.buffers.update({pre + "attn." + n: a for n, a in layer.buffers.items()})
            p[pre + "ln2.g"] = np.ones(C, dtype=self.dtype)
            p[pre + "ln2.b"] = np.zeros(C, dtype=self.dtype)
            p[pre + "mlp.W1"] = attention.xavier_uniform(rng, (C, 4 * C), C, 4 * C, self.dtype)
            p[pre + "mlp.b1"] = np.zeros(4 * C, dtype=self.dtype)
            p[pre + "mlp.W2"] = attention.xavier_uniform(rng, (4 * C, C), 4 * C, C, self.dtype)
            p[pre + "mlp.b2"] = np.zeros(C, dtype=self.dtype)
        p["ln_f.g"] = np.ones(C, dtype=self.dtype)
        p["ln_f.b"] = np.zeros(C, dtype=self.dtype)
        self.params = p

    @property
    def backend(self):
        """``"numpy"`` (the reference) or ``"numba"``: what computes this model."""
        return backend_of(self.ops)

    @property
    def tiles(self):
        """When the fast path computes attention in tiles: ``"auto"``, ``"always"`` or
        ``"never"`` (:func:`minisynth.attention.check_tiles`); settable."""
        return self.attn[0].tiles if self.attn else attention.check_tiles("auto")

    @tiles.setter
    def tiles(self, tiles):
        tiles = attention.check_tiles(tiles)
        for layer in self.attn:
            layer.tiles = tiles

    def __repr__(self):
        return (
            f"SynthesizerLM({self.config}, params={self.num_params():,}, backend={self.backend!r})"
        )

    def num_params(self):
        return sum(a.size for a in self.params.values())

    # ------------------------------------------------------------------ state
    def load_state(self, params, buffers=None):
        """Copy arrays into the model in place (keeps the attention layers' views valid).

        Raises ValueError naming any missing, unexpected or mis-shaped array.
        """
        for what, ours, theirs in (
            ("parameter", self.params, params),
            ("buffer", self.buffers, buffers or {}),
        ):
            missing = sorted(set(ours) - set(theirs))
            extra = sorted(set(theirs) - set(ours))
            if missing:
                raise ValueError(f"missing {what}(s) {missing[:5]} for this model config")
            if extra:
                raise ValueError(f"unexpected {what}(s) {extra[:5]} for this model config")
            for name, arr in ours.items():
                new = np.asarray(theirs[name])
                if new.shape != arr.shape:
                    raise ValueError(
                        f"{what} {name} has shape {new.shape}, the model expects {arr.shape}"
                    )
        for ours, theirs in ((self.params, params), (self.buffers, buffers or {})):
            for name, arr in ours.items():
                arr[...] = theirs[name]

    # ---------------------------------------------------------------- forward
    def _check_idx(self, idx, name="idx"):
        check_int_array(name, idx, upper=self.config.vocab_size, ndim=2)
        B, T = idx.shape
        if T == 0 or B == 0:
            raise ValueError(f"{name} must have at least one row and one position, got {idx.shape}")
        if T > self.config.max_len:
            raise ValueError(
                f"{name} has length T = {T} but the model's max_len is {self.config.max_len}"
            )

    def _forward(self, idx):
        p = self.params
        B, T = idx.shape
        tokens, embedding = self.ops.embedding_forward(idx, p["wte"])  # (B,T,C)
        x = tokens + p["wpe"][:T]  # (B,T,C)
        x, block_caches = self._blocks(x, lambda i, a_in: self.attn[i].forward(a_in))  # (B,T,C)
        logits, ln_f, xf = self._head(x)  # (B,T,V)
        return logits, ModelCache(idx, embedding, tuple(block_caches), ln_f, xf)

    def _blocks(self, x, attend):
        """x (B,T,C) through every block; ``attend(i, a_in)`` runs layer i's attention."""
        p, ops = self.params, self.ops
        block_caches = []
        for i in range(len(self.attn)):
            pre = f"blocks.{i}."
            a_in, ln1 = ops.layernorm_forward(x, p[pre + "ln1.g"], p[pre + "ln1.b"])  # (B,T,C)
            a_out, attn_cache = attend(i, a_in)  # (B,T,C), AttentionCache or None
            x = x + a_out  # (B,T,C)
            m_in, ln2 = ops.layernorm_forward(x, p[pre + "ln2.g"], p[pre + "ln2.b"])  # (B,T,C)
            h, fc = ops.linear_forward(m_in, p[pre + "mlp.W1"], p[pre + "mlp.b1"])  # (B,T,4C)
            hg, gelu = ops.gelu_forward(h)  # (B,T,4C)
            m_out, proj = ops.linear_forward(hg, p[pre + "mlp.W2"], p[pre + "mlp.b2"])
            x = x + m_out  # (B,T,C)
            block_caches.append(BlockCache(ln1, attn_cache, ln2, fc, gelu, proj))
        return x, block_caches

    def _head(self, x):
        """x (B,T,C) -> (logits (B,T,V), ln_f cache, xf (B,T,C))."""
        p, ops = self.params, self.ops
        xf, ln_f = ops.layernorm_forward(x, p["ln_f.g"], p["ln_f.b"])  # (B,T,C)
        return xf @ p["wte"].T, ln_f, xf  # (B,T,V)

    def forward(self, idx):
        """idx (B,T) ints -> logits (B,T,V)."""
        self._check_idx(idx)
        logits, _ = self._forward(idx)
        return logits

    def forward_with_cache(self, idx):
        """idx (B,T) -> (logits, cache); ``cache.blocks[i].attn.probs`` are the attention maps."""
        self._check_idx(idx)
        return self._forward(idx)

    def loss(self, idx, targets):
        """Mean cross-entropy in nats (no gradients)."""
        self._check_idx(idx)
        self._check_idx(targets, "targets")
        if targets.shape != idx.shape:
            raise ValueError(f"targets shape {targets.shape} differs from idx shape {idx.shape}")
        logits, _ = self._forward(idx)
        loss, _ = self.ops.cross_entropy_forward(logits, targets)
        return float(loss)

    # --------------------------------------------------------------- backward
    def loss_and_grads(self, idx, targets):
        """(mean cross-entropy in nats, grads keyed like ``params``)."""
        self._check_idx(idx)
        self._check_idx(targets, "targets")
        if targets.shape != idx.shape:
            raise ValueError(f"targets shape {targets.shape} differs from idx shape {idx.shape}")
        p, ops = self.params, self.ops
        logits, cache = self._forward(idx)
        loss, ce = ops.cross_entropy_forward(logits, targets)
        del logits  # the cross-entropy cache keeps what its backward needs
        # each block's activations are let go once its backward is done, as autograd does:
        # a step's peak memory is then the activations plus one block's gradients
        blocks, cache = list(cache.blocks), cache._replace(blocks=())
        grads = {}
        B, T = idx.shape
        C, V = self.config.d_model, self.config.vocab_size

        # loss = mean cross-entropy(logits, targets)
        dlogits = ops.cross_entropy_backward(1.0, ce)  # (B,T,V)
        # logits = xf @ wte^T  (the first use of the tied embedding)
        dxf = dlogits @ p["wte"]  # (B,T,C)
        dwte = dlogits.reshape(-1, V).T @ cache.xf.reshape(-1, C)  # (V,C) summed over b and t
        # xf = ln_f(x)
        dx, grads["ln_f.g"], grads["ln_f.b"] = ops.layernorm_backward(dxf, cache.ln_f)
        for i in reversed(range(len(self.attn))):
            pre = f"blocks.{i}."
            block, blocks[i] = blocks[i], None
            # x = x + gelu(ln2(x) @ W1 + b1) @ W2 + b2
            dhg, grads[pre + "mlp.W2"], grads[pre + "mlp.b2"] = ops.linear_backward(dx, block.proj)
            dh = ops.gelu_backward(dhg, block.gelu)  # (B,T,4C)
            dm_in, grads[pre + "mlp.W1"], grads[pre + "mlp.b1"] = ops.linear_backward(dh, block.fc)
            dx_ln2, grads[pre + "ln2.g"], grads[pre + "ln2.b"] = ops.layernorm_backward(
                dm_in, block.ln2
            )
            dx = dx + dx_ln2  # (B,T,C) the residual passes dx through unchanged
            # x = x + attn(ln1(x))
            da_in, attn_grads = self.attn[i].backward(dx, block.attn)
            grads.update({pre + "attn." + n: g for n, g in attn_grads.items()})
            dx_ln1, grads[pre + "ln1.g"], grads[pre + "ln1.b"] = ops.layernorm_backward(
                da_in, block.ln1
            )
            dx = dx + dx_ln1  # (B,T,C)
        # x = wte[idx] + wpe[:T]
        dwpe = np.zeros_like(p["wpe"])  # (L,C) rows >= T get no gradient
        dwpe[:T] = dx.sum(axis=0)
        grads["wpe"] = dwpe
        grads["wte"] = dwte + ops.embedding_backward(dx, cache.embedding)  # tied: both uses add
        return float(loss), {name: grads[name] for name in p}

    # --------------------------------------------------------------- decoding
    def prefill(self, idx):
        """Run a prompt idx (B,T) once -> (logits (B,T,V), states, one DecodeState per layer).

        Each layer's state remembers what its attention kind needs to decode the
        next positions with :meth:`decode_step` (see :mod:`minisynth.attention`).
        """
        self._check_idx(idx)
        return self._prefill(idx)

    def _prefill(self, idx):
        p = self.params
        T = idx.shape[1]
        x = self.ops.embedding_forward(idx, p["wte"])[0] + p["wpe"][:T]  # (B,T,C)
        states = []

        def attend(i, a_in):
            a_out, state = self.attn[i].prefill(a_in)  # (B,T,C)
            states.append(state)
            return a_out, None

        x, _ = self._blocks(x, attend)  # (B,T,C)
        logits, _, _ = self._head(x)  # (B,T,V)
        return logits, states

    def decode_step(self, tokens, states):
        """The next position: tokens (B,) ints at position t -> logits (B,V); states gain t.

        Equal, to rounding, to row t of a full forward pass over all t+1 tokens,
        at attention cost O(t) instead of O(t^2).
        """
        tokens = np.asarray(tokens)
        check_int_array("tokens", tokens, upper=self.config.vocab_size, ndim=1)
        if len(states) != len(self.attn):
            raise ValueError(f"states must hold one DecodeState per layer ({len(self.attn)})")
        if tokens.shape[0] != states[0].v.shape[0]:
            raise ValueError(
                f"tokens has {tokens.shape[0]} rows but the states were prefilled with "
                f"{states[0].v.shape[0]}"
            )
        if states[0].length >= self.config.max_len:
            raise ValueError(
                f"the states already hold max_len = {self.config.max_len} positions; "
                "prefill a shorter window to go on"
            )
        return self._decode_step(tokens, states)

    def _decode_step(self, tokens, states):
        p = self.params
        t = states[0].length
        x = self.ops.embedding_forward(tokens[:, None], p["wte"])[0] + p["wpe"][t]  # (B,1,C)
        x, _ = self._blocks(x, lambda i, a_in: (self.attn[i].step(a_in, states[i]), None))
        logits, _, _ = self._head(x)  # (B,1,V)
        return logits[:, 0]  # (B,V)

    # ------------------------------------------------------------- generation
    def generate(
        self,
        prompt,
        length,
        *,
        temperature=1.0,
        top_k=None,
        seed=0,
        overflow="refill",
        use_cache=True,
    ):
        """Sample ``length`` bytes after ``prompt`` (1-D ints); returns the new tokens only.

        The prompt is prefilled in one pass, then every new byte costs one
        :meth:`decode_step` (O(t) attention work at position t). The model sees
        at most the last L = max_len bytes. Dense and Random logits belong to
        absolute positions 0..L-1, so a full window cannot slide by one position
        without recomputing every position. ``overflow`` says what happens when
        the window is full:

        * ``"refill"`` (default): keep the last L // 2 bytes, prefill them, and
          decode on; the context the model sees shrinks to L/2 and grows back to L.
        * ``"slide"``: run the last L bytes through the full model for every new
          byte (always L bytes of context; O(L^2) attention work per byte).

        Both are exact: the logits equal those of a full forward pass over the
        same window. ``use_cache=False`` computes every byte's logits with such a
        full pass (the slow reference, same policy, same output up to rounding).
        """
        prompt = np.asarray(prompt)
        check_int_array("prompt", prompt, upper=self.config.vocab_size, ndim=1)
        if prompt.size == 0:
            raise ValueError("the prompt must contain at least one byte")
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0:
            raise ValueError(f"length must be a non-negative integer, got {length!r}")
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature)):
            raise ValueError(f"temperature must be a finite number, got {temperature!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        V = self.config.vocab_size
        if top_k is not None:
            top_k = min(check_positive_int("top_k", top_k), V)
        if overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"overflow must be one of {OVERFLOW_POLICIES}, got {overflow!r}")
        L = self.config.max_len
        keep = max(1, L // 2) if overflow == "refill" else L  # bytes kept when the window is full

        def run_window(window):  # a full pass over the window -> its last logits (V,), states
            idx = np.array(window, dtype=np.int64)[None]  # (1,T)
            if not use_cache:
                return self._forward(idx)[0][0, -1], None
            logits, states = self._prefill(idx)  # (1,T,V)
            return logits[0, -1], states

        rng = np.random.default_rng(seed)
        window = prompt.tolist()[-L:]
        logits, states = run_window(window)  # (V,)
        out = []
        for n in range(int(length)):
            nxt = sample_token(logits, rng, temperature, top_k)
            out.append(nxt)
            if n == length - 1:
                break
            if len(window) == L:  # full: start a new window from the last `keep` bytes
                window = (window + [nxt])[-keep:]
                logits, states = run_window(window)
            else:
                window.append(nxt)
                if use_cache:
                    logits = self._decode_step(np.array([nxt]), states)[0]  # (V,)
                else:
                    logits, _ = run_window(window)
        return np.array(out, dtype=np.int64)


OVERFLOW_POLICIES = ("refill", "slide")


def sample_token(logits, rng, temperature, top_k):
    """One draw from softmax(logits / temperature), restricted to the top_k logits."""
    z = logits.astype(np.float64) / temperature  # (V,)
    V = z.shape[0]
    if top_k is not None and top_k < V:
        cutoff = np.partition(z, V - top_k)[V - top_k]
        z = np.where(z >= cutoff, z, -np.inf)
    probs = np.exp(z - z.max())  # (V,)
    probs /= probs.sum()
    return int(rng.choice(V, p=probs))
