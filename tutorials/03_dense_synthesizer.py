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
# # 03 · The Dense Synthesizer: each token writes its own row of attention
#
# The Dense Synthesizer keeps one thing from dot-product attention, namely that
# the weights depend on the input, but drops the comparison between tokens.
# Token $i$ alone goes through a small two-layer MLP whose output is a whole
# row of logits, one per key position $j = 0, \dots, L-1$ (positions are
# counted from 0, as everywhere in minisynth):
#
# $$S_{i,:} = \mathrm{relu}(x_i W_1 + b_1)\, W_2 + b_2 \in \mathbb{R}^{L},\qquad
#   P = \mathrm{softmax}(\mathrm{mask}(S_{:, :T})) .$$
#
# In minisynth (see the docstring of `minisynth.attention`) the first layer
# $W_1$ is one C x C matrix whose output is split into heads; head $h$ has its
# own second layer $W_2[h]$ of shape (hs, L) and bias $b_2[h]$ of length L. The
# value and output path is the same as in every kind.
#
# This tutorial rebuilds the logits from `layer.params`, shows why the layer
# is tied to a maximum length L, derives and checks the backward pass, and
# shows that the causal mask makes the future irrelevant.
#
# Run as a script or as a notebook (jupytext); `MINISYNTH_TUTORIAL_TINY=1` for a
# quick run; the figure goes to `tutorials/output/` or `$MINISYNTH_TUTORIAL_OUT`.

# %%
import os
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from minisynth import attention, layers
from minisynth.gradcheck import numerical_gradient_array, rel_error

TINY = os.environ.get("MINISYNTH_TUTORIAL_TINY", "0") not in ("", "0")
try:
    HERE = Path(__file__).resolve().parent  # run as a script
except NameError:
    HERE = Path.cwd()  # run as a notebook: Jupyter starts in the notebook's folder
OUT = Path(os.environ.get("MINISYNTH_TUTORIAL_OUT", HERE / "output"))
OUT.mkdir(parents=True, exist_ok=True)

C, H, L = (8, 2, 8) if TINY else (24, 3, 24)  # width, heads, maximum length
B, T = (2, 6) if TINY else (3, 16)
hs = C // H
rng = np.random.default_rng(0)
layer = attention.build("dense", C, H, L, causal=True, seed=0, dtype=np.float64)
for a in layer.params.values():  # random biases too, so every term is exercised
    a[...] = rng.uniform(-0.5, 0.5, a.shape)
print(layer)
print({name: a.shape for name, a in layer.params.items()})
print(
    "count_params:",
    attention.count_params("dense", C, H, L),
    "= 2C^2+2C (value/output) + C^2+C (W1,b1) + C*L+H*L (W2,b2) =",
    2 * C * C + 2 * C + C * C + C + C * L + H * L,
)

# %% [markdown]
# ## 1. The logits, rebuilt by hand
#
# For an input `x` (B, T, C): the hidden layer is (B, T, C), split into heads
# (B, H, T, hs); head $h$ multiplies by its $W_2[h]$ (hs, L) and adds $b_2[h]$.
# Only the first T of the L columns are needed because there are only T keys.
# We compare the result, after `minisynth.layers.softmax_forward(..., causal=True)`,
# with the layer's own `cache.probs`.


# %%
def heads(a):
    """(B, T, C) -> (B, H, T, hs)."""
    return a.reshape(a.shape[0], a.shape[1], H, hs).transpose(0, 2, 1, 3)


def dense_logits(x, p):
    pre = x @ p["W1"] + p["b1"]  # (B, T, C)
    hid = heads(np.maximum(pre, 0.0))  # (B, H, T, hs)
    Tx = x.shape[1]
    S = hid @ p["W2"][None, :, :, :Tx] + p["b2"][None, :, None, :Tx]  # (B, H, T, T)
    return S, pre, hid


x = rng.standard_normal((B, T, C))
y, cache = layer.forward(x)
S, pre, hid = dense_logits(x, layer.params)
P, _ = layers.softmax_forward(S, causal=True)
print("rel_error(our P, cache.probs) =", rel_error(P, cache.probs))
assert rel_error(P, cache.probs) < 1e-14

# %% [markdown]
# **No token-token interaction.** Row $i$ of S is a function of $x_i$ alone. If
# the same token vector appears at two positions, in two different
# sequences, both positions produce the same row of logits, whatever surrounds
# them. (The *probabilities* still differ, because the mask keeps a different
# number of columns for different $i$.)

# %%
x_copy = rng.standard_normal((B, T, C))
x_copy[1, T - 1] = x[0, 2]  # the token at (b=0, i=2) reappears at (b=1, i=T-1)
S_copy, _, _ = dense_logits(x_copy, layer.params)
print("same logit row for the same token:", np.allclose(S_copy[1, :, T - 1], S[0, :, 2]))

# %% [markdown]
# ## 2. Tied to a maximum length L
#
# Column $j$ of $W_2[h]$ produces the logit for key position $j$. A sequence
# longer than L would need columns that do not exist, so a Dense Synthesizer
# (like a Random one, whose R is L x L) can only attend over at most L
# positions. minisynth checks the length and says so:

# %%
try:
    layer.forward(rng.standard_normal((1, L + 1, C)))
except ValueError as err:
    print("ValueError:", err)

# %% [markdown]
# A language model therefore reads at most L bytes at a time (tutorial 11
# shows what `SynthesizerLM.generate` does when a window is full). The opposite case, T < L, is
# fine: the layer uses the first T columns, and the unused columns get no
# gradient, so they are only trained by batches long enough to reach them.

# %%
_, grads = layer.backward(rng.standard_normal(y.shape), cache)
print(f"T={T} < L={L}: dW2 columns >= T all zero:", not grads["W2"][:, :, T:].any())
print("                 db2 entries >= T all zero:", not grads["b2"][:, T:].any())

# %% [markdown]
# ## 3. The backward pass
#
# The attention core hands us $dS$ (B, H, T, T), the softmax backward of
# tutorial 01. From there, reversing each forward line of the synthesizer:
#
# * $S = \mathrm{hid}\; W_2[:, :, :T] + b_2[:, :T]$ gives
#   $dW_2[h][:, :T] = \sum_b \mathrm{hid}_{b,h}^\top dS_{b,h}$,
#   $db_2[h][:T] = \sum_{b,i} dS_{b,h,i,:}$ and $d\mathrm{hid} = dS\, W_2^\top$;
# * $\mathrm{hid} = \mathrm{split}(\mathrm{relu}(\mathrm{pre}))$ gives
#   $d\mathrm{pre} = \mathrm{merge}(d\mathrm{hid}) \odot [\mathrm{pre} > 0]$;
# * $\mathrm{pre} = x W_1 + b_1$ gives $dW_1 = x^\top d\mathrm{pre}$,
#   $db_1 = \sum d\mathrm{pre}$ and $dx \mathrel{+}= d\mathrm{pre}\, W_1^\top$.
#
# Sums over the batch appear because $W_2$ and $b_2$ are used by every example
# (like R in tutorial 02). `dx` gets two contributions: this one through the
# logits, and the usual one through the values.
#
# We write the whole layer (value path included) once more so that we can
# compare every gradient with `layer.backward`.


# %%
def merge(a):
    """(B, H, T, hs) -> (B, T, C)."""
    return a.transpose(0, 2, 1, 3).reshape(a.shape[0], a.shape[2], C)


def flat(a):
    """(..., F) -> (N, F): every leading axis becomes one axis of rows."""
    return a.reshape(-1, a.shape[-1])


def dense_forward(x, p, causal=True):
    S, pre, hid = dense_logits(x, p)  # (B, H, T, T)
    P, _ = layers.softmax_forward(S, causal=causal)  # (B, H, T, T)
    v = heads(x @ p["Wv"] + p["bv"])  # (B, H, T, hs)
    om = merge(P @ v)  # (B, T, C)
    y = om @ p["Wo"] + p["bo"]
    return y, (x, pre, hid, P, v, om)


def dense_backward(dy, cache, p):
    x, pre, hid, P, v, om = cache
    Tx = x.shape[1]
    g = {}
    # y = om Wo + bo
    g["Wo"], g["bo"] = flat(om).T @ flat(dy), flat(dy).sum(axis=0)
    do = heads(dy @ p["Wo"].T)  # (B, H, T, hs)
    # o = P v
    dP = do @ v.swapaxes(-1, -2)
    dv = P.swapaxes(-1, -2) @ do
    # P = softmax(mask(S))
    dS = P * (dP - np.sum(dP * P, axis=-1, keepdims=True))  # (B, H, T, T)
    # v = x Wv + bv
    dv_flat = merge(dv)
    g["Wv"], g["bv"] = flat(x).T @ flat(dv_flat), flat(dv_flat).sum(axis=0)
    dx = dv_flat @ p["Wv"].T
    # S = hid W2[:, :, :T] + b2[:, :T]
    g["W2"] = np.zeros_like(p["W2"])
    g["W2"][:, :, :Tx] = np.einsum("bhti,bhtj->hij", hid, dS)  # sum over b and t
    g["b2"] = np.zeros_like(p["b2"])
    g["b2"][:, :Tx] = dS.sum(axis=(0, 2))
    dhid = dS @ p["W2"][None, :, :, :Tx].swapaxes(-1, -2)  # (B, H, T, hs)
    # hid = split(relu(pre))
    dpre = merge(dhid) * (pre > 0)  # (B, T, C)
    # pre = x W1 + b1
    g["W1"], g["b1"] = flat(x).T @ flat(dpre), flat(dpre).sum(axis=0)
    dx = dx + dpre @ p["W1"].T
    return dx, g


dy = rng.standard_normal((B, T, C))
y_ours, ours_cache = dense_forward(x, layer.params)
dx_ours, g_ours = dense_backward(dy, ours_cache, layer.params)
dx_ref, g_ref = layer.backward(dy, cache)
print("forward  rel_error:", rel_error(y_ours, y))
print("dx       rel_error:", rel_error(dx_ours, dx_ref))
for name in layer.params:
    print(f"d{name:3s}     rel_error: {rel_error(g_ours[name], g_ref[name]):.1e}")
assert max(rel_error(g_ours[n], g_ref[n]) for n in layer.params) < 1e-12

# %% [markdown]
# ### Checking against finite differences, and ReLU's kink
#
# Now the layer's gradients against central differences. `f` re-runs the
# layer; `numerical_gradient_array` perturbs one entry of the array in place,
# calls `f`, and restores it.


# %%
def finite_difference_errors(lay, x, dy):
    _, c = lay.forward(x)
    dx, g = lay.backward(dy, c)

    def f():  # re-runs the layer, reading whatever the arrays hold right now
        return lay.forward(x)[0]

    errs = {"x": rel_error(dx, numerical_gradient_array(f, x, dy))}
    for name, a in lay.params.items():
        errs[name] = rel_error(g[name], numerical_gradient_array(f, a, dy))
    return errs


print(f"smallest |pre-activation|: {np.abs(pre).min():.1e}  (finite-difference step h = 1e-3)")
errors_before = finite_difference_errors(layer, x, dy)
print({name: f"{e:.0e}" for name, e in errors_before.items()})
before_relu = ("x", "W1", "b1")  # the arrays whose perturbation moves a pre-activation
worst_relu = max(errors_before[name] for name in before_relu)
others = max(e for name, e in errors_before.items() if name not in before_relu)
print(
    f"this draw: worst of dx, dW1, db1 = {worst_relu:.0e}, worst of the rest = {others:.0e}:",
    "the kink spoils the check"
    if worst_relu > 1e3 * others
    else "no unit is close enough to its kink",
)

# %% [markdown]
# Look at `dx`, `dW1` and `db1`, the gradients that pass through the ReLU
# (the last line above gives the verdict for this draw). Depending on the
# random draw they can come out far worse than the rest (errors of 1e-4 to
# 1e-2 instead of about 1e-12), although the backward pass is not wrong: ReLU
# has a kink at 0. The five-point rule evaluates the function at $\pm h$ and
# $\pm 2h$ with $h = 10^{-3}$; if a pre-activation sits within about $2h$ of
# zero (scaled by whatever multiplies the perturbed entry), some of those
# evaluations are on the other side of the kink and the difference quotient
# mixes two slopes. The more pre-activations (hidden units times positions),
# the likelier one of them lands that close.
#
# Whether or not this draw was hit, the fix is to move the inputs of the
# check, not the tolerance: we shift each hidden unit's bias $b_1[c]$ so that
# zero falls in the middle of the widest gap between that unit's
# pre-activations. Then no pre-activation is near the kink, and both slopes of
# every unit that has a gap inside its range are still exercised. (Any
# parameter values are fine for a gradient check.)


# %%
def move_kinks_away(lay, x):
    pre = (x @ lay.params["W1"] + lay.params["b1"]).reshape(-1, C)  # (N, C)
    for c in range(C):
        v = np.sort(pre[:, c])
        k = np.argmax(np.diff(v))  # the widest gap between neighbouring values
        lay.params["b1"][c] -= (v[k] + v[k + 1]) / 2  # zero now sits in its middle
    return np.abs(x @ lay.params["W1"] + lay.params["b1"]).min()


print(f"smallest |pre-activation| after the shift: {move_kinks_away(layer, x):.1e}")
errors_after = finite_difference_errors(layer, x, dy)
for name, e in errors_after.items():
    print(f"d{name:3s} vs finite differences: {e:.1e}  (before: {errors_before[name]:.0e})")
assert max(errors_after.values()) < 1e-7

# %% [markdown]
# ## 4. Causal masking: the future does not matter
#
# Row $i$ of $S$ holds logits for **all** columns, including $j > i$: the MLP
# has no idea which columns will be masked. The mask sets those logits to
# $-\infty$ before the softmax, so $P_{ij} = 0$ for $j > i$, and
# $y_i = \sum_{j \le i} P_{ij} v_j$ never reads a later value. Row $i$'s own
# logits depend only on $x_i$. Hence **$y_i$ depends on $x_0, \dots, x_i$ only**, which
# is what lets a language model be trained on all positions in parallel.
#
# Numerical demonstration: change the token at position $t_0$ and see which
# outputs move.

# %%
y, cache = layer.forward(x)  # the layer's b1 moved in section 3: recompute
t0 = T // 2
x_future = x.copy()
x_future[:, t0] = rng.standard_normal((B, C))  # a different token at position t0
y_future, _ = layer.forward(x_future)
print(f"max |change| in y[:, :{t0}] (before t0):", np.abs(y_future[:, :t0] - y[:, :t0]).max())
print(f"max |change| in y[:, {t0}:] (t0 and after):", np.abs(y_future[:, t0:] - y[:, t0:]).max())
assert np.abs(y_future[:, :t0] - y[:, :t0]).max() < 1e-12  # no path at all (prints 0.0)

# %% [markdown]
# The backward pass tells the same story for all pairs at once. Put a random
# upstream gradient $g$ (length C) on output position $i$ only; `layer.backward`
# returns the vector-Jacobian product $dx_j = g^\top \partial y_i / \partial x_j$
# for every input position $j$, and its norm $\lVert g^\top \partial y_i / \partial x_j
# \rVert$ measures how much $y_i$ depends on $x_j$ (one random direction $g$
# instead of the whole C x C Jacobian: it is zero exactly when the Jacobian is,
# unless $g$ happens to be orthogonal to all of its columns, which has
# probability 0). Doing this for every $i$ gives a T x T dependency matrix:
# lower triangular when causal, full for a bidirectional layer (`causal=False`)
# built from the same parameters.


# %%
def dependency_matrix(lay, x):
    _, c = lay.forward(x[:1])
    M = np.zeros((T, T))
    for i in range(T):
        dy_i = np.zeros((1, T, C))
        dy_i[0, i] = rng.standard_normal(C)  # g: a random upstream gradient on y_i alone
        dx_i, _ = lay.backward(dy_i, c)  # dx_i[0, j] = g^T dy_i/dx_j
        M[i] = np.linalg.norm(dx_i[0], axis=-1)  # (T,) one entry per input position j
    return M


bidirectional = attention.build("dense", C, H, L, causal=False, seed=0, dtype=np.float64)
for name, a in layer.params.items():
    bidirectional.params[name][...] = a  # the very same weights
M_causal = dependency_matrix(layer, x)
M_bidir = dependency_matrix(bidirectional, x)
print("causal: g^T dy_i/dx_j = 0 for every j > i:", not np.triu(M_causal, k=1).any())
print(
    "causal=False: nonzero above the diagonal:",
    np.count_nonzero(np.triu(M_bidir, k=1)),
    "of",
    T * (T - 1) // 2,
)

# %% [markdown]
# ## 5. Picture
#
# Left: one head's causal attention map for the first sequence. Middle and
# right: the dependency matrices $\lVert g^\top \partial y_i / \partial x_j \rVert$
# (log color scale; white means exactly zero).

# %%
fig = Figure(figsize=(15, 4.6), layout="constrained")
axes = fig.subplots(1, 3)
P_show = np.where(np.tril(np.ones((T, T), dtype=bool)), cache.probs[0, 0], np.nan)
im = axes[0].imshow(P_show, cmap="viridis", vmin=0, vmax=1)
axes[0].set(title="Dense Synthesizer P (b=0, head 0)", xlabel="key position j")
axes[0].set_ylabel("query position i")
fig.colorbar(im, ax=axes[0], shrink=0.8, label="attention weight")
vmin = min(M_causal[M_causal > 0].min(), M_bidir[M_bidir > 0].min())
vmax = max(M_causal.max(), M_bidir.max())
for ax, M, title in ((axes[1], M_causal, "causal"), (axes[2], M_bidir, "causal=False")):
    im = ax.imshow(np.where(M > 0, M, np.nan), cmap="magma", norm="log", vmin=vmin, vmax=vmax)
    ax.set(title=f"|g^T dy_i/dx_j|, {title}", xlabel="input position j", ylabel="output position i")
fig.colorbar(im, ax=axes[1:], shrink=0.8, label="norm of dx_j, one random g (log scale)")
for ax in axes:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))

path = OUT / "03_dense_synthesizer.png"
fig.savefig(path, dpi=100)
print("saved", path)
fig  # noqa: B018  (a notebook displays a bare last expression: the figure)

# %% [markdown]
# ## Exercises
#
# 1. **Without the ReLU.** Replace the hidden ReLU by the identity: Dense becomes
#    a linear map of x. Show that its logits are then $x W_1 W_2$ and that the
#    gradient check passes at the points where the ReLU version needed care.
# 2. **Longer than max_len.** Explain in one sentence why Dense cannot run at
#    T > L while vanilla can, then check how `attention.build("dense", ...)`
#    reports it.
# 3. **Dead units.** Count the hidden units that are zero for every position of a
#    batch at initialisation and after 200 steps of the toy task of tutorial 02.
