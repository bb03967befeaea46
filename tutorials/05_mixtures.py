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
# # 05 · Mixtures: learning how much of each kind to use
#
# The paper's best models mix synthetic and dot-product attention. In
# minisynth a mixture of N kinds, written `"random+vanilla"`, adds their
# logits with learned weights, separately for every head h:
#
# $$S_h = \sum_{n=0}^{N-1} w_{h,n}\, S_{h,n}, \qquad
#   w_{h,:} = \mathrm{softmax}(\alpha_{h,:}),$$
#
# then proceeds as always, $P = \mathrm{softmax}(\mathrm{mask}(S))$. The
# mixture logits $\alpha$ (H, N) start at zero, so every component starts with
# weight 1/N. The softmax keeps the weights positive and summing to one.
#
# This tutorial derives how the gradient reaches $\alpha$ (through two
# softmaxes: the attention one and the one over components), checks it
# numerically, and trains a mixture on the toy task of tutorial 02 to watch
# the weights move.
#
# Run as a script or as a notebook (jupytext); `MINISYNTH_TUTORIAL_TINY=1` for a
# quick run; the figure goes to `tutorials/output/` or `$MINISYNTH_TUTORIAL_OUT`.

# %%
import os
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from minisynth import attention, layers
from minisynth.gradcheck import numerical_gradient_array, rel_error
from minisynth.optim import AdamW

TINY = os.environ.get("MINISYNTH_TUTORIAL_TINY", "0") not in ("", "0")
try:
    HERE = Path(__file__).resolve().parent  # run as a script
except NameError:
    HERE = Path.cwd()  # run as a notebook: Jupyter starts in the notebook's folder
OUT = Path(os.environ.get("MINISYNTH_TUTORIAL_OUT", HERE / "output"))
OUT.mkdir(parents=True, exist_ok=True)

C, H, L = (8, 2, 8) if TINY else (16, 2, 16)  # width, heads, maximum length
B, T = (2, 6) if TINY else (3, 12)
rng = np.random.default_rng(0)
print(f"C={C}, H={H}, L={L}, B={B}, T={T}, tiny={TINY}")

# %% [markdown]
# ## 1. A mixture layer
#
# We take three components, `"dense+random+vanilla"`. Each keeps its own
# parameters, prefixed by its kind (`dense.W1`, `random.R`, `vanilla.Wq`, ...);
# the shared value/output projections keep their plain names, and `alpha`
# (H, N) is new. `cache.mix_weights` holds
# $\mathrm{softmax}(\alpha)$ and `cache.logits` the component logits $S_n$ in the
# order of the kind string (a shared component such as Random has (H, T, T)
# logits, an input-dependent one (B, H, T, T)).

# %%
KIND = "dense+random+vanilla"
mix = attention.build(KIND, C, H, L, seed=0, dtype=np.float64)
print({name: arr.shape for name, arr in mix.params.items()})
for arr in mix.params.values():  # random values everywhere, alpha included
    arr[...] = rng.uniform(-1.0, 1.0, arr.shape)

x = rng.standard_normal((B, T, C))
y, cache = mix.forward(x)
w = cache.mix_weights  # (H, N)
print("mix weights softmax(alpha):\n", np.round(w, 3))
print("component logits:", [S_n.shape for S_n in cache.logits])

S = sum(w[:, n, None, None] * S_n for n, S_n in enumerate(cache.logits))  # (B, H, T, T)
P, _ = layers.softmax_forward(S, causal=True)
print("rel_error(softmax(mask(sum_n w_n S_n)), cache.probs) =", rel_error(P, cache.probs))
assert rel_error(P, cache.probs) < 1e-14

# %% [markdown]
# ## 2. The gradient of alpha
#
# Start from $dS$ (B, H, T, T), the gradient with respect to the mixed logits,
# which the attention core provides exactly as in tutorial 01. Reverse the two
# forward lines:
#
# **$S_h = \sum_n w_{h,n} S_{h,n}$.** $S$ is linear in each $w_{h,n}$, and every
# logit of head h (all examples b, rows i, columns j) uses the same weight
# (for a shared component, $(S_n)_{b,h,i,j}$ is the same for every b):
#
# $$dw_{h,n} = \sum_{b,i,j} dS_{b,h,i,j}\, (S_n)_{b,h,i,j},
# \qquad dS_{h,n} = w_{h,n}\, dS_h \;(\text{summed over } b \text{ if } S_n \text{ is shared}).$$
#
# **$w_{h,:} = \mathrm{softmax}(\alpha_{h,:})$.** The same softmax
# vector-Jacobian product as in tutorial 01, now over components instead of keys:
#
# $$d\alpha_{h,n} = w_{h,n}\Big(dw_{h,n} - \sum_m w_{h,m}\, dw_{h,m}\Big).$$
#
# Reading the formula: $\alpha_n$ grows when component n's logits are more
# aligned with the descent direction $-dS$ than the weighted average of all
# components. Adding a constant to a row of $\alpha$ changes nothing, so
# $\sum_n d\alpha_{h,n} = 0$; and if all components produced the same logits,
# $d\alpha$ would vanish.
#
# To get $dS$ by hand we undo the output projection, split the heads, and call
# `layers.attention_core_backward`, the reference attention-core backward
# (with the layer's cache of the core: probabilities and values).

# %%
dy = rng.standard_normal((B, T, C))
_, grads = mix.backward(dy, cache)

do = attention.split_heads(dy @ mix.params["Wo"].T, H)  # (B, H, T, hs) y = merge(o) Wo + bo
dS, _ = layers.attention_core_backward(do, cache.core)  # (B, H, T, T)
dw = np.stack(
    [np.broadcast_to(dS * S_n, dS.shape).sum(axis=(0, 2, 3)) for S_n in cache.logits], axis=1
)  # (H, N)
dalpha = w * (dw - np.sum(w * dw, axis=1, keepdims=True))  # (H, N)
dalpha_num = numerical_gradient_array(lambda: mix.forward(x)[0], mix.params["alpha"], dy)

print("dalpha by hand:\n", dalpha)
print("rel_error(by hand, layer.backward) =", rel_error(dalpha, grads["alpha"]))
print("rel_error(by hand, finite diffs)   =", rel_error(dalpha, dalpha_num))
print("each row sums to 0:", np.allclose(dalpha.sum(axis=1), 0.0))
assert rel_error(dalpha, grads["alpha"]) < 1e-12 and rel_error(dalpha, dalpha_num) < 1e-7

# %% [markdown]
# The components receive the same $dS$ scaled by their weight. For the
# shared Random component the batch sum of tutorial 02 comes on top:
# $dR_{:T,:T} = w_{\mathrm{random}} \sum_b dS_b$.

# %%
n_random = mix.parts.index("random")  # components are in the order of the kind string
dR_hand = w[:, n_random, None, None] * dS.sum(axis=0)  # (H, T, T)
print("rel_error(dR by hand, layer) =", rel_error(dR_hand, grads["random.R"][:, :T, :T]))
dR_num = numerical_gradient_array(lambda: mix.forward(x)[0], mix.params["random.R"], dy)
print("rel_error(dR layer, finite diffs) =", rel_error(grads["random.R"], dR_num))
assert rel_error(dR_hand, grads["random.R"][:, :T, :T]) < 1e-12

# %% [markdown]
# ## 3. Watching the weights move
#
# The previous-token task of tutorial 02: fresh Gaussian inputs every step
# (full-length sequences, T = L), target $y_i = x_{i-1}$, loss
# $\frac12\,\mathrm{mean}\|y_i - x_{i-1}\|^2$ over the $B\,(T-1)$ pairs
# (example, position $i \ge 1$), so $dy_i = (y_i - x_{i-1}) / (B\,(T-1))$. The Random
# component can express "look one position back" directly; dot-product
# attention has no position information here, and a Dense row depends on its
# own token only (which carries no position either).
# So we expect gradient descent, starting from equal weights, to shift each
# head's weight towards `random`; the last lines of the cell below say
# whether it did. (AdamW's default `decay_filter` never decays `alpha`; here we
# turn weight decay off altogether.)


# %%
def previous_token_batch(rng, B, T):
    x = rng.standard_normal((B, T, C))
    target = np.zeros_like(x)
    target[:, 1:] = x[:, :-1]
    return x, target


STEPS, TOY_B = (40, 8) if TINY else (300, 16)
layer = attention.build(KIND, C, H, L, seed=0, dtype=np.float64)
opt = AdamW(layer.params, lr=2e-2, weight_decay=0.0)
data_rng = np.random.default_rng(1)
weights, losses = [], []
for _ in range(STEPS):
    xb, target = previous_token_batch(data_rng, TOY_B, L)
    yb, c = layer.forward(xb)
    diff = (yb - target)[:, 1:]
    losses.append(0.5 * np.mean(np.sum(diff**2, axis=-1)))
    dyb = np.zeros_like(yb)
    dyb[:, 1:] = diff / diff[..., 0].size  # d loss / d y; diff[..., 0].size = B (T - 1)
    _, g = layer.backward(dyb, c)
    opt.step(g)
    weights.append(c.mix_weights.copy())  # the weights used in this step
weights = np.array(weights)  # (STEPS, H, N)
print("weights at step 0:\n", np.round(weights[0], 3))
print(f"weights at step {STEPS - 1} (columns: {layer.parts}):\n", np.round(weights[-1], 3))
print(f"loss: first {losses[0]:.3f}, mean of the last 10 steps {np.mean(losses[-10:]):.3f}")
for h in range(H):
    top = int(np.argmax(weights[-1, h]))
    print(
        f"head {h}: largest weight now {layer.parts[top]} "
        f"({weights[0, h, top]:.3f} -> {weights[-1, h, top]:.3f})"
    )

# %% [markdown]
# ## 4. Picture
#
# Left: $d\alpha$ by hand against finite differences for every (head,
# component). Middle: each head's mixture weights during training (solid
# head 0, dashed head 1). Right: the loss.

# %%
fig = Figure(figsize=(15, 4.4), layout="constrained")
ax1, ax2, ax3 = fig.subplots(1, 3)
labels = [f"h{h} {kind}" for h in range(H) for kind in mix.parts]
pos = np.arange(len(labels))
ax1.bar(pos - 0.2, dalpha.ravel(), 0.4, label="by hand")
ax1.bar(pos + 0.2, dalpha_num.ravel(), 0.4, label="finite differences")
ax1.axhline(0, color="k", lw=0.5)
ax1.set_xticks(pos, labels, rotation=20, ha="right")
ax1.set(title="d alpha per (head, component)", ylabel="gradient")
ax1.legend()
for h in range(H):
    for n, kind in enumerate(layer.parts):
        ax2.plot(weights[:, h, n], color=f"C{n}", ls=["-", "--"][h % 2], label=f"h{h} {kind}")
ax2.axhline(1 / len(layer.parts), color="gray", ls=":", label="start (1/N)")
ax2.set(title=f"mixture weights in {KIND}", xlabel="AdamW step", ylabel="softmax(alpha)")
ax2.set_ylim(0, 1)
ax2.legend(fontsize=8, ncols=2)
ax3.plot(losses)
ax3.set_yscale("log")
ax3.set(title="previous-token task", xlabel="AdamW step", ylabel="loss (log scale)")
path = OUT / "05_mixtures.png"
fig.savefig(path, dpi=100)
print("saved", path)
fig  # noqa: B018  (a notebook displays a bare last expression: the figure)

# %% [markdown]
# ## Exercises
#
# 1. **Initial weights.** Start alpha at (2, 0, 0) instead of zeros (the dense
#    component at 0.79). Does training still find the same final weights?
# 2. **A mixture of one.** Show that `"random"` and a one-component mixture would
#    have identical logits, and that dalpha is then always zero.
# 3. **Temperature.** Scale the component logits by a temperature before mixing
#    and derive the extra term it adds to dalpha.
