# ---
# jupyter:
#   jupytext:
#     formats: py:percent,ipynb
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---
# %% [markdown]
# # 11 · Incremental decoding, and what each kind must remember
#
# A language model writes one byte at a time: it reads the window so far,
# samples the next byte from the last row of logits, appends it, and goes on.
# Run naively, every new byte sends the whole window through the model again:
# at position $t$ that is $O(t^2)$ attention work (a $t \times t$ map per head),
# although only one new row of that map is new.
#
# Incremental decoding computes only the new row. Row $t$ of the attention
# output is
#
# $$o_t = \sum_{j \le t} P_{t,j}\, v_j, \qquad P_{t,:} = \mathrm{softmax}(S_{t,0..t}),$$
#
# so every kind must keep the values $v_j$ of the earlier positions. What else
# it must keep depends only on how it makes its logits row $S_{t,:}$:
#
# | kind | row $t$ of the logits | must remember besides $v$ |
# |---|---|---|
# | vanilla | $q_t k_j^\top / \sqrt{hs}$ for $j \le t$ | the keys $k_j$ |
# | dense | $\mathrm{relu}(x_t W_1 + b_1) W_2 + b_2$, first $t+1$ entries | nothing: $x_t$ alone |
# | factorized dense | $A_t$ tiled times $B_t$ repeated, first $t+1$ entries | nothing |
# | random, random_fixed | $R_{t,0..t}$ | nothing: not even $x_t$ |
# | factorized random | $R_{1,t} R_{2,0..t}^\top$ | nothing |
# | mixtures | $\sum_n w_n S^{(n)}_{t,:}$ | the union of the components' needs |
#
# This is one of the most instructive differences between the kinds: the
# Synthesizer's logits involve no token-token interaction, so it needs no key
# cache at all. In this tutorial we:
#
# 1. look at what `SynthesizerLM.prefill` keeps per layer for every kind, and
#    its size;
# 2. compute one new row by hand for Dense and Random;
# 3. check that incremental decoding gives the logits of a full forward pass;
# 4. time a byte at each position, incremental against full window (a figure);
# 5. see what `generate` does when the window reaches `max_len`.
#
# Run as a script or as a notebook (jupytext); `MINISYNTH_TUTORIAL_TINY=1` for a
# quick run; the figure goes to `tutorials/output/` or `$MINISYNTH_TUTORIAL_OUT`.

# %%
import os
import statistics
import time
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from minisynth import ModelConfig, SynthesizerLM, attention, layers

TINY = os.environ.get("MINISYNTH_TUTORIAL_TINY", "0") not in ("", "0")
try:
    HERE = Path(__file__).resolve().parent  # run as a script
except NameError:
    HERE = Path.cwd()  # run as a notebook: Jupyter starts in the notebook's folder
OUT = Path(os.environ.get("MINISYNTH_TUTORIAL_OUT", HERE / "output"))
OUT.mkdir(parents=True, exist_ok=True)

BACKEND = "numba"  # every model and layer here runs the fast path, as `minisynth sample` does
KINDS = ["vanilla", "dense", "random", "random_fixed", "factorized_dense",
         "factorized_random", "dense+vanilla"]  # fmt: skip
# the default model of `minisynth train` (tiny: a miniature) and a longer window for timing
SIZES = dict(d_model=16, n_heads=2, n_layers=1, max_len=16) if TINY else {}
TIMING_LEN = 32 if TINY else 512
print(f"tiny={TINY}, default model config:", ModelConfig(**SIZES))

# %% [markdown]
# ## 1. What `prefill` keeps
#
# `model.prefill(idx)` runs a prompt (B, T) through the model once, like
# `forward`, and returns one `DecodeState` per layer besides the logits. Each
# state has room for all $L$ positions and fills the first $T$: `state.v` (B,
# H, L, hs) holds the values, and `state.memories` holds, per component of the
# kind, the arrays that component needs to remember. A value vector is $hs$
# numbers per head, $C = H \cdot hs$ per position, so a full window costs
# $L \cdot C$ float32 numbers per layer for the values, and as many again for
# vanilla's keys. Random kinds keep their $R$ as a parameter, not per position.

# %%
prompt = np.frombuffer(b"The cat", dtype=np.uint8).astype(np.int64)[None]  # (1,7)
models = {
    kind: SynthesizerLM(ModelConfig(attention=kind, **SIZES), seed=0, backend=BACKEND)
    for kind in KINDS
}
print(f"{'kind':20s} {'remembered per layer':28s} {'bytes for a full window (B=1)':>30s}")
for kind, model in models.items():
    _, states = model.prefill(prompt)
    kept = ["v"] + [name for memory in states[0].memories for name in memory]
    total = sum(state.nbytes for state in states)
    print(f"{kind:20s} {', '.join(kept):28s} {total:>30,}")
cfg = models["dense"].config
print(f"\nL * C * 4 bytes * layers = {cfg.max_len * cfg.d_model * 4 * cfg.n_layers:,}")

# %% [markdown]
# ## 2. One new row by hand
#
# Take a single Dense layer and a prompt of $t$ positions. The next position's
# logits come from its own input $x_t$ alone; we compute them from the
# parameters and compare with row $t$ of the layer's full forward pass (whose
# cache keeps the logits `cache.logits[0]`, (B, H, T, T); `tiles="never"`, since a
# forward in tiles, tutorial 10, keeps no such map).

# %%
C, H, L, t = 8, 2, 6, 4
rng = np.random.default_rng(0)
dense = attention.build("dense", C, H, L, dtype=np.float64, seed=0, backend=BACKEND, tiles="never")
x = rng.standard_normal((1, t + 1, C))  # (B,t+1,C) the prompt and the new position
_, cache = dense.forward(x)
p = dense.params
hid = layers.relu_forward(x[:, t] @ p["W1"] + p["b1"])[0].reshape(1, H, C // H)  # (B,H,hs)
row = np.einsum("bhs,hsj->bhj", hid, p["W2"][:, :, : t + 1]) + p["b2"][:, : t + 1]  # (B,H,t+1)
print("Dense row t by hand vs full forward:", np.abs(row - cache.logits[0][:, :, t]).max())

random_layer = attention.build(
    "random", C, H, L, dtype=np.float64, seed=0, backend=BACKEND, tiles="never"
)
_, cache = random_layer.forward(x)
row = random_layer.params["R"][:, t, : t + 1]  # (H,t+1) no input at all
print("Random row t = R[:, t, :t+1]:", np.array_equal(row, cache.logits[0][:, t]))

# %% [markdown]
# `Attention.step(x_t, state)` does exactly this for any kind: each component
# returns its row (`Component.row`), the mixture weights combine them, a softmax
# over the $t + 1$ visible positions (no mask needed: nothing later exists yet)
# gives $P_{t,:}$, and $P_{t,:} V$ uses the remembered values. The state gains
# position $t$.

# %% [markdown]
# ## 3. Incremental equals full
#
# For every kind: prefill a prompt of 3 bytes, decode the rest of a window one
# byte at a time with `decode_step`, and compare every row of logits with a
# single forward pass over all the bytes. In float32 the two round differently
# (the products have different shapes), so expect differences around 1e-6
# relative, not zero.

# %%
tokens = rng.integers(0, 256, (1, cfg.max_len))  # (1,L)
for kind, model in models.items():
    full = model.forward(tokens)  # (1,L,V)
    logits, states = model.prefill(tokens[:, :3])
    rows = [logits[0, -1]] + [
        model.decode_step(tokens[:, t], states)[0] for t in range(3, cfg.max_len)
    ]
    diff = np.abs(np.stack(rows) - full[0, 2:]).max() / np.abs(full).max()
    print(f"{kind:20s} max |incremental - full| / max |logit| = {diff:.1e}")

# %% [markdown]
# ## 4. Time per byte against position
#
# Now a model with a longer window, $L$ = `TIMING_LEN`, and the time to
# produce the logits of one byte at position $t$: one `decode_step` after a
# prefill of $t$ bytes, against one forward pass over $t + 1$ bytes. We time a
# few positions, a few times each, and keep the median.

# %%
timing_sizes = {**SIZES, "max_len": TIMING_LEN}
positions = np.unique(np.geomspace(1, TIMING_LEN - 1, 6 if TINY else 10).astype(int))
REPEATS = 3 if TINY else 5


def median_seconds(fn, *args):
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def step_at(model, ids, states, t):
    for state in states:
        state.length = t  # forget the last timed step, so that every repeat decodes position t
    model.decode_step(ids[:, t], states)


def time_per_byte(kind):
    """Median ms for one byte at each position: (incremental, full window), and the state size."""
    model = SynthesizerLM(ModelConfig(attention=kind, **timing_sizes), seed=0, backend=BACKEND)
    ids = rng.integers(0, 256, (1, TIMING_LEN))
    model.forward(ids[:, :8])  # compile the kernels before timing
    step, full = [], []
    for t in positions:
        _, states = model.prefill(ids[:, :t])
        step.append(1e3 * median_seconds(step_at, model, ids, states, t))
        full.append(1e3 * median_seconds(model.forward, ids[:, : t + 1]))
    return step, full, sum(state.nbytes for state in states)


step_ms, full_ms, cache_bytes = {}, {}, {}
for kind in KINDS:
    step_ms[kind], full_ms[kind], cache_bytes[kind] = time_per_byte(kind)

print(f"ms per byte at position t = {positions[-1]} (L = {TIMING_LEN}):")
for kind in KINDS:
    ratio = full_ms[kind][-1] / step_ms[kind][-1]
    print(
        f"  {kind:20s} incremental {step_ms[kind][-1]:7.3f}   full window {full_ms[kind][-1]:7.3f}"
        f"   full / incremental {ratio:5.1f}x   state {cache_bytes[kind]:,} bytes"
    )

# %% [markdown]
# Setting `state.length` back is a timing trick, not an API: a state only
# grows, one position per `decode_step`.
#
# In the figure, look for two families of curves. The full-window times grow
# with the position, faster than linearly once the $t \times t$ maps dominate
# (which kind is slowest there depends on the work per map entry and on the
# machine: the printed times above say it for this run). The incremental times stay nearly
# flat: at these sizes one step is dominated by the per-position work (layer
# norms, projections, the MLP: independent of $t$) and by Python's overhead per
# call; the $O(t)$ attention row only shows at large $t$. The printed ratios
# above say how far apart the two families end at the last position.

# %%
fig = Figure(figsize=(13, 4.6), layout="constrained")
ax1, ax2 = fig.subplots(1, 2)
for n, kind in enumerate(KINDS):
    ax1.plot(positions, full_ms[kind], color=f"C{n}", ls="--", marker=".")
    ax1.plot(positions, step_ms[kind], color=f"C{n}", ls="-", marker=".", label=kind)
ax1.set_xscale("log")
ax1.set_yscale("log")
ax1.set(
    title=f"one byte at position t (L={TIMING_LEN})\nsolid: incremental, dashed: full window",
    xlabel="position t",
    ylabel="ms (median)",
)
ax1.legend(fontsize=8)
ax2.barh(KINDS, [cache_bytes[k] / 1024 for k in KINDS], color=[f"C{n}" for n in range(len(KINDS))])
ax2.invert_yaxis()
ax2.set(title="decoding state for a full window (B=1)", xlabel="KiB")
path = OUT / "11_decoding.png"
fig.savefig(path, dpi=100)
print("saved", path)
fig  # noqa: B018  (a notebook displays a bare last expression: the figure)

# %% [markdown]
# ## 5. Past `max_len`
#
# Dense and Random logits belong to absolute positions $0..L-1$: $W_2$ and $R$
# have $L$ columns. When the window is full, the next byte would be position
# $L$, which they have no logits for; dropping the oldest byte instead shifts
# every remaining byte one position to the left, so every remembered value
# (computed at its old position) is stale. A cache cannot slide. `generate`
# offers two policies (`overflow=`):
#
# * `"refill"` (the default): keep the last $L/2$ bytes, prefill them, decode
#   on. The context shrinks to $L/2$ and grows back to $L$; one prefill per
#   $L/2$ bytes.
# * `"slide"`: run the last $L$ bytes through the whole model for every byte
#   (always $L$ bytes of context, full-window cost).
#
# Both are exact for the window they choose, and with `use_cache=False`
# `generate` computes every byte with a full forward pass over the same
# window: the same bytes come out. Until the window fills the two policies
# agree.

# %%
model = models["dense"]
L = model.config.max_len
prompt = np.frombuffer(b"Attention", dtype=np.uint8).astype(np.int64)
n_new = 3 * L
results = {}
for overflow in ("refill", "slide"):
    for use_cache in (True, False):
        start = time.perf_counter()
        out = model.generate(prompt, n_new, seed=1, overflow=overflow, use_cache=use_cache)
        results[overflow, use_cache] = (out, time.perf_counter() - start)
for overflow in ("refill", "slide"):
    (fast, fast_s), (slow, slow_s) = results[overflow, True], results[overflow, False]
    print(
        f"{overflow:6s}: cached {n_new / fast_s:8.0f} bytes/s, full window {n_new / slow_s:8.0f}"
        f" bytes/s, same bytes: {np.array_equal(fast, slow)}"
    )
refill, slide = results["refill", True][0], results["slide", True][0]
first_difference = int(np.argmax(refill != slide)) if (refill != slide).any() else None
print(
    f"the window fills after {L - len(prompt)} new bytes; "
    f"refill and slide first differ at new byte {first_difference}"
)

# %% [markdown]
# ## Exercises
#
# 1. **Memory per byte.** From the state sizes printed above, compute how many
#    bytes of state a vanilla model and a dense model keep per decoded position
#    for the default config, and the total at T = max_len.
# 2. **Refill's spikes.** Time every generated byte with `overflow="refill"` for
#    3 max_len bytes and plot time against position. Where are the spikes, and
#    what does the model recompute there?
# 3. **Random at position t.** Show that a Random model's row t of logits does not
#    depend on the prompt at all; what does the state of a Random layer hold then?
