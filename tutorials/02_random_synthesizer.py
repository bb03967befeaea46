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
# # 02 · The Random Synthesizer: attention without queries and keys
#
# In tutorial 01 the attention weights came from $q_i \cdot k_j$, a comparison
# of two tokens. The Random Synthesizer throws that away. Each head owns an
# L x L matrix of logits $R$ and uses it for **every** input:
#
# $$P = \mathrm{softmax}(\mathrm{mask}(R_{:T,:T})),\qquad y = \mathrm{merge}(P\,v)\,W_o + b_o,
# \qquad v = x W_v + b_v .$$
#
# Only the value path still looks at the tokens. The paper reports that such
# input-independent "alignments" are surprisingly competitive. This tutorial
# covers:
#
# 1. `random` (R is a trained parameter) versus `random_fixed` (R is a frozen buffer);
# 2. why R is shared across the batch, and what that does to its gradient:
#    $dR = \sum_b dS_b$, shown numerically;
# 3. a toy task that a learned R can solve and that a frozen R and dot-product
#    attention (without position information) cannot; we train all three and compare.
#
# Run as a script or as a notebook (jupytext); `MINISYNTH_TUTORIAL_TINY=1` for a
# quick run; the figure goes to `tutorials/output/` or `$MINISYNTH_TUTORIAL_OUT`.

# %%
import os
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from minisynth import attention
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
B, T = (3, 6) if TINY else (4, 12)  # a batch shorter than L, to see what T < L does
rng = np.random.default_rng(0)
print(f"C={C}, H={H}, L={L}, B={B}, T={T}, tiny={TINY}")

# %% [markdown]
# ## 1. Trainable or fixed: parameters versus buffers
#
# `attention.build(kind, d_model, n_heads, max_len)` returns a layer whose
# trainable arrays live in `layer.params` and whose frozen arrays live in
# `layer.buffers`. An optimizer is only ever given `params`, so a buffer keeps
# its initial value forever. Both kinds share the value and output projections
# `Wv, bv, Wo, bo` ($2C^2 + 2C$ numbers); the trainable Random Synthesizer adds
# $H L^2$ (one L x L matrix per head), the fixed one adds nothing trainable.

# %%
random_layer = attention.build("random", C, H, L, seed=0, dtype=np.float64)
fixed_layer = attention.build("random_fixed", C, H, L, seed=0, dtype=np.float64)
for layer in (random_layer, fixed_layer):
    print(layer.kind)
    print("  params :", {n: a.shape for n, a in layer.params.items()})
    print("  buffers:", {n: a.shape for n, a in layer.buffers.items()})
    print("  count_params:", attention.count_params(layer.kind, C, H, L), "trainable numbers")
print(
    "same seed, same initial R:", np.array_equal(random_layer.params["R"], fixed_layer.buffers["R"])
)

# %% [markdown]
# `R` starts Xavier-uniform, $U(-a, a)$ with $a = \sqrt{6/(L+L)}$: small logits,
# so the initial attention is close to uniform over the visible positions.
#
# ## 2. The map does not depend on the input
#
# Feed two unrelated batches. The probabilities `cache.probs` (B, H, T, T) are
# the same for every example of both batches: they are `softmax(mask(R[:, :T, :T]))`.
# With a causal mask they are also the same for every length: a prefix of
# length T' sees exactly the top-left T' x T' block, whose rows never involve
# columns beyond the row index.

# %%
x1 = rng.standard_normal((B, T, C))
x2 = 10 * rng.standard_normal((B, T, C))
_, c1 = random_layer.forward(x1)
_, c2 = random_layer.forward(x2)
print("same map for both batches:", np.array_equal(c1.probs, c2.probs))
same_everywhere = all(np.array_equal(c1.probs[0], c1.probs[b]) for b in range(B))
print("same map for every example:", same_everywhere)
_, c_short = random_layer.forward(x1[:, : T // 2])
print(
    "a shorter input sees the top-left block:",
    np.allclose(c_short.probs, c1.probs[:, :, : T // 2, : T // 2]),
)

# %% [markdown]
# ## 3. Shared across the batch: the gradient of R is a sum
#
# Write the logits of example $b$ as $S_b$. Every example uses the same
# matrix, $S_b = R_{:T,:T}$ for $b = 0, \dots, B-1$ (per head; we drop the head
# index). The loss depends on $R$ through all B copies, so by the chain rule
# (a sum over every path from $R$ to the loss)
#
# $$dR_{:T,:T} = \sum_{b=0}^{B-1} dS_b ,$$
#
# where each $dS_b = P_b \odot (dP_b - \mathrm{rowsum}(dP_b \odot P_b))$ is the
# ordinary softmax backward of tutorial 01. Three more facts follow from the
# forward pass `S = R[:, :T, :T]`, followed by the mask:
#
# * rows and columns $\ge T$ were not used, so their gradient is 0 (for T < L);
# * with a causal mask, entries above the diagonal are masked and get gradient 0:
#   **a causal Random Synthesizer never trains the upper triangle of R**;
# * the same parameter appears once per example, so this batch sum is the
#   only place where the batch size enters (as with any weight matrix).
#
# We verify all of it numerically: (a) the batch gradient equals the sum of
# per-example gradients (run the layer on one example at a time); (b) it equals
# central differences; (c) the zero patterns.

# %%
dy = rng.standard_normal((B, T, C))
_, cache = random_layer.forward(x1)
_, grads = random_layer.backward(dy, cache)
dR = grads["R"]  # (H, L, L)

# (a) one example at a time, then add up
dR_sum = np.zeros_like(dR)
for b in range(B):
    _, cache_b = random_layer.forward(x1[b : b + 1])
    _, grads_b = random_layer.backward(dy[b : b + 1], cache_b)
    dR_sum += grads_b["R"]
err_sum = rel_error(dR, dR_sum)

# (b) finite differences: perturb R in place, re-run the whole layer
dR_num = numerical_gradient_array(lambda: random_layer.forward(x1)[0], random_layer.params["R"], dy)
err_num = rel_error(dR, dR_num)

print(f"(a) rel_error(batch dR, sum of per-example dR) = {err_sum:.1e}")
print(f"(b) rel_error(batch dR, finite differences)    = {err_num:.1e}")
print("(c) rows/columns >= T get 0:", not dR[:, T:, :].any() and not dR[:, :, T:].any())
print("    upper triangle gets 0:  ", not np.triu(dR[:, :T, :T], k=1).any())
print("    R[:, 0, 0] gets 0:      ", not dR[:, 0, 0].any())
print(
    "    lower triangle nonzero: ",
    np.count_nonzero(np.tril(dR[0, :T, :T])),
    "of",
    T * (T + 1) // 2,
    "entries of head 0",
)
assert err_sum < 1e-12 and err_num < 1e-7

# %% [markdown]
# One more zero hides in the lower triangle: $R_{00}$. Row 0 sees only itself,
# so its single weight is 1 whatever $R_{00}$ is, and the softmax backward
# gives $p(dP - p\,dP) = 0$. In general a causal Random Synthesizer has
# $T(T+1)/2 - 1$ logits per head that influence anything; the rest of the
# $L^2$ parameters get no gradient from a length-T batch.

# %% [markdown]
# The fixed layer's backward returns no gradient for R at all (there is
# nothing to train), but still returns `dx` and the value/output gradients:

# %%
_, fixed_cache = fixed_layer.forward(x1)
_, fixed_grads = fixed_layer.backward(dy, fixed_cache)
print("random_fixed grads:", sorted(fixed_grads))

# %% [markdown]
# ## 4. What a learned R buys: a toy "previous token" task
#
# Target: output at position $i$ should equal the input at position $i-1$,
# $y_i \approx x_{i-1}$ (position 0 has no target). Inputs are fresh Gaussian
# noise at every step, so there is nothing to memorise except **where** to
# look. The loss is $\frac{1}{2}\,\mathrm{mean}_{b,i\ge1}\|y_{b,i} - x_{b,i-1}\|^2$;
# predicting zeros scores $C/2$.
#
# * `random` can learn $P_{i,i-1} \approx 1$ directly in R (and $W_v W_o \approx I$);
# * `random_fixed` is stuck with its initial near-uniform averages;
# * `vanilla` (dot product) has no position information here (no position
#   embeddings), and dot-product attention treats the set of keys
#   symmetrically, so it cannot find "the previous token" either.
#
# Each layer is trained by AdamW from `minisynth.optim` on `layer.params`. The
# loss is a mean over the $N = B\,(T-1)$ pairs (example, position $i \ge 1$),
# so its gradient with respect to y is $dy_{b,i} = (y_{b,i} - x_{b,i-1}) / N$ for
# $i \ge 1$ and 0 at position 0; `layer.backward(dy, cache)` does the rest.
# Training uses full-length sequences, T = L.


# %%
def previous_token_batch(rng, B, T, C):
    x = rng.standard_normal((B, T, C))
    target = np.zeros_like(x)
    target[:, 1:] = x[:, :-1]
    return x, target


def train_toy(kind, steps, B, T, lr=3e-2, seed=0):
    layer = attention.build(kind, C, H, L, seed=seed, dtype=np.float64)
    opt = AdamW(layer.params, lr=lr, weight_decay=0.0)
    data_rng = np.random.default_rng(seed + 1)
    losses = []
    for _ in range(steps):
        x, target = previous_token_batch(data_rng, B, T, C)
        y, cache = layer.forward(x)
        diff = (y - target)[:, 1:]  # (B, T-1, C) position 0 has no target
        losses.append(0.5 * np.mean(np.sum(diff**2, axis=-1)))
        dy = np.zeros_like(y)
        dy[:, 1:] = diff / (B * (T - 1))  # d loss / d y, N = B (T - 1)
        _, grads = layer.backward(dy, cache)
        opt.step(grads)
    return layer, losses


STEPS, TOY_B = (40, 8) if TINY else (300, 16)
R_init = attention.build("random", C, H, L, seed=0, dtype=np.float64).params["R"].copy()
toy = {kind: train_toy(kind, STEPS, TOY_B, L) for kind in ("random", "random_fixed", "vanilla")}
print("the frozen R did not move:", np.array_equal(toy["random_fixed"][0].buffers["R"], R_init))

# Where each trained layer looks, on a fresh batch: the mean weight of row i on
# column i-1 (over examples and i >= 1), per head. A uniform causal map gives 1/(i+1).
x_eval, _ = previous_token_batch(np.random.default_rng(123), TOY_B, L, C)
final, prev_weight = {}, {}
for kind, (lay, losses) in toy.items():
    final[kind] = np.mean(losses[-10:])
    probs = lay.forward(x_eval)[1].probs  # (B, H, L, L)
    prev_weight[kind] = probs[:, :, np.arange(1, L), np.arange(L - 1)].mean(axis=(0, 2))  # (H,)
    print(
        f"{kind:13s} loss: first {losses[0]:.3f}, mean of the last 10 steps {final[kind]:.3f};"
        f" weight on i-1 per head {np.round(prev_weight[kind], 2)}"
    )
uniform_prev = np.mean(1 / np.arange(2, L + 1))  # mean over i = 1..L-1 of 1/(i+1)
print(f"predict zeros: loss C/2 = {C / 2};  uniform map: weight on i-1 {uniform_prev:.2f}")
best = min(final, key=final.get)
runner_up = min((k for k in final if k != best), key=final.get)
print(
    f"lowest final loss: {best} ({final[best]:.3f}), {final[runner_up] / final[best]:.1f} times "
    f"below the next best, {runner_up} ({final[runner_up]:.3f})"
)

# %% [markdown]
# Read the printout. Look for `random` driving the loss close to 0 (far
# below the zero-prediction loss C/2) with nearly all of each row's weight on
# column $i-1$, in both heads. `random_fixed` and `vanilla` should end far
# above it, somewhat below C/2 (an average over the visible positions already
# contains a share of $x_{i-1}$), with about the weight a uniform map puts on
# $i-1$: neither can single out the previous position. The last line gives
# the ratio of the final losses. (In tiny mode, with 40 steps, the gap is
# much smaller.) The frozen layer's map is its initial one.
#
# ## 5. Picture
#
# The figure shows head 0's attention map at initialisation, after training
# (`random`), the frozen map (`random_fixed`), and the three loss curves.


# %%
def causal_probs(R):
    """softmax(mask(R)) of one head, for display (masked cells become NaN -> blank)."""
    Tq = R.shape[-1]
    Z = np.where(np.tril(np.ones((Tq, Tq), dtype=bool)), R, -np.inf)
    P = np.exp(Z - Z.max(axis=-1, keepdims=True))
    P /= P.sum(axis=-1, keepdims=True)
    return np.where(np.tril(np.ones((Tq, Tq), dtype=bool)), P, np.nan)


maps = {
    "initial R (both kinds)": causal_probs(R_init[0]),
    "random: learned R": causal_probs(toy["random"][0].params["R"][0]),
    "random_fixed: frozen R": causal_probs(toy["random_fixed"][0].buffers["R"][0]),
}
fig = Figure(figsize=(17, 4.4), layout="constrained")
fig.get_layout_engine().set(wspace=0.06)  # room between the colorbar and the last panel
axes = fig.subplots(1, 4, width_ratios=[1, 1, 1, 1.4])
for ax, (title, P) in zip(axes[:3], maps.items(), strict=True):
    im = ax.imshow(P, cmap="viridis", vmin=0, vmax=1)
    ax.set(title=f"{title}\nhead 0", xlabel="key position j", ylabel="query position i")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # positions are whole numbers
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
fig.colorbar(im, ax=axes[2], shrink=0.8, label="attention weight")
ax = axes[3]
for kind, (_, losses) in toy.items():
    ax.plot(losses, label=kind)
ax.axhline(C / 2, color="gray", ls=":", label="predict zeros")
ax.set_yscale("log")
ax.set(title="previous-token task", xlabel="AdamW step", ylabel="loss (log scale)")
ax.legend()

path = OUT / "02_random_synthesizer.png"
fig.savefig(path, dpi=100)
print("saved", path)
fig  # noqa: B018  (a notebook displays a bare last expression: the figure)

# %% [markdown]
# ## Exercises
#
# 1. **Shift by k.** Change the toy task to "copy the token k positions back" for
#    k = 2 and 5. Does the learned R find it as fast, and what does its map look
#    like?
# 2. **Learning rate of R.** Train the toy task with R's learning rate 10x and
#    0.1x the rest (`AdamW(..., lr_scale=synthetic_logits_lr_scale(10.0))`). How
#    many steps does each need to reach a loss of 0.1? Tutorial 13 meets the same
#    lever in a real model.
# 3. **Why dR sums over the batch.** Make a batch of B identical examples, push the
#    same upstream gradient through each, and show that dR is B times the dR of
#    one example, while dx stays per example.
