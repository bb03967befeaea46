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
# # 01 · Dot-product attention by hand
#
# The Synthesizer paper (Tay et al., 2020) asks what happens when the attention
# weights of a Transformer are *not* computed from query-key dot products. To
# appreciate the alternatives we first take the original apart: we write
# dot-product attention in a few lines of NumPy, derive its backward pass one
# line at a time, check every gradient against finite differences, and finally
# check our code against `minisynth.attention.build("vanilla", ...)`.
#
# Shape letters follow `minisynth.layers`: **B** batch, **T** sequence length,
# **C** model width, **H** heads, **hs** head size, **L** maximum length;
# positions are counted from 0. In a layer of H heads every head gets an equal
# slice of the width, hs = C / H (section 5). Sections 1 to 4 study one head on
# its own, which projects width C to any head size hs we choose.
#
# Run it as a script (`python tutorials/01_dot_product_attention.py`) or open it
# as a notebook with jupytext. `MINISYNTH_TUTORIAL_TINY=1` shrinks every size so
# that it finishes in a second or two; figures go to `tutorials/output/` (or to
# `$MINISYNTH_TUTORIAL_OUT`).

# %%
import math
import os
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from minisynth import attention
from minisynth.gradcheck import directional_check, numerical_gradient_array, rel_error

TINY = os.environ.get("MINISYNTH_TUTORIAL_TINY", "0") not in ("", "0")
try:
    HERE = Path(__file__).resolve().parent  # run as a script
except NameError:
    HERE = Path.cwd()  # run as a notebook: Jupyter starts in the notebook's folder
OUT = Path(os.environ.get("MINISYNTH_TUTORIAL_OUT", HERE / "output"))
OUT.mkdir(parents=True, exist_ok=True)

# One head, one sequence. Everything here is float64: finite differences in
# float32 are too noisy to tell a right gradient from a slightly wrong one.
T, C, hs = (5, 6, 4) if TINY else (10, 16, 8)  # one head alone: hs need not be C / H
rng = np.random.default_rng(0)
print(f"T={T}, C={C}, hs={hs}, tiny={TINY}, output folder: {OUT}")

# %% [markdown]
# ## 1. The forward pass of one head
#
# Each of the T tokens (a row of `x`, shape (T, C)) is projected three times:
#
# $$q = x W_q,\quad k = x W_k,\quad v = x W_v \qquad (T, hs)$$
#
# The logit $S_{ij} = q_i \cdot k_j / \sqrt{hs}$ says how well query $i$ matches
# key $j$: **this is the token-token interaction** that the Synthesizer removes.
# A row-wise softmax turns logits into weights, and each output row is a
# weighted average of the value rows:
#
# $$P = \mathrm{softmax}(\mathrm{mask}(S)),\qquad o = P v.$$
#
# For a language model the mask is *causal*: position $i$ may only look at
# $j \le i$, so $S_{ij}$ is replaced by $-\infty$ for $j > i$ and those weights
# become exactly 0. The $1/\sqrt{hs}$ keeps the logits' scale independent of the
# head size (a dot product of hs unit-variance terms has variance hs).
#
# The functions below work on any leading dimensions (`...`), so we can reuse
# them for a batch of many heads later.


# %%
def masked_softmax(S, causal):
    """Row-wise softmax over the last axis; entries with column j > row i get 0 if causal."""
    if causal:
        Tq, Tk = S.shape[-2:]
        S = np.where(np.tril(np.ones((Tq, Tk), dtype=bool)), S, -np.inf)
    Z = S - S.max(axis=-1, keepdims=True)  # subtracting the row max changes nothing but overflow
    E = np.exp(Z)  # exp(-inf) = 0 on masked entries
    return E / E.sum(axis=-1, keepdims=True)


def head_forward(x, Wq, Wk, Wv, causal=True):
    """One attention head. x (..., T, C) -> o (..., T, hs), plus what the backward needs."""
    q = x @ Wq  # (..., T, hs)
    k = x @ Wk  # (..., T, hs)
    v = x @ Wv  # (..., T, hs)
    scale = 1.0 / math.sqrt(q.shape[-1])
    S = (q @ k.swapaxes(-1, -2)) * scale  # (..., T, T)
    P = masked_softmax(S, causal)  # (..., T, T)
    o = P @ v  # (..., T, hs)
    return o, (x, q, k, v, P, scale)


x = rng.standard_normal((T, C))
Wq, Wk, Wv = (rng.standard_normal((C, hs)) / math.sqrt(C) for _ in range(3))
o, head_cache = head_forward(x, Wq, Wk, Wv)
P = head_cache[4]
print("o:", o.shape, " P:", P.shape)
print("rows of P sum to 1:", np.allclose(P.sum(axis=-1), 1.0))
print("weights above the diagonal (the future) are exactly 0:", np.all(np.triu(P, 1) == 0))
print("first rows of P:\n", np.round(P[:3, :4], 3))

# %% [markdown]
# Row 0 can only see itself, so $P_{00} = 1$; row $i$ spreads its weight over
# $i + 1$ positions.
#
# ## 2. The softmax Jacobian
#
# Take one row: logits $s$ (length T) and probabilities
# $p_j = e^{s_j} / \sum_k e^{s_k}$. Differentiating the quotient,
#
# $$\frac{\partial p_j}{\partial s_i}
#   = \frac{\delta_{ij} e^{s_j}}{\sum_k e^{s_k}} - \frac{e^{s_j} e^{s_i}}{(\sum_k e^{s_k})^2}
#   = p_j(\delta_{ij} - p_i),
# \qquad J = \mathrm{diag}(p) - p\,p^\top .$$
#
# In the backward pass we never need $J$ itself, only the vector-Jacobian
# product: given the upstream gradient $dp = \partial\ell/\partial p$,
#
# $$ds_i = \sum_j dp_j\, p_j(\delta_{ij} - p_i)
#        = p_i\Big(dp_i - \sum_j dp_j\, p_j\Big),
# \qquad\text{row-wise: } dS = P \odot \big(dP - \mathrm{rowsum}(dP \odot P)\big).$$
#
# Two consequences are worth seeing in numbers:
#
# * every row of $J$ sums to 0 (adding a constant to all logits of a row does not
#   change the softmax), so every row of $dS$ sums to 0;
# * a masked entry has $p_j = 0$, hence $ds_j = 0$: masked logits get no gradient.
#
# We check the formula three ways on the last row of $S$: the explicit $J^\top dp$,
# the one-line formula, and central differences (`numerical_gradient_array`
# perturbs each logit by $\pm h, \pm 2h$ and returns the gradient of
# $\sum_j p_j\,dp_j$).

# %%
_, q, k, _, _, scale = head_cache
s = (q[-1] @ k.T) * scale  # (T,) logits of the last row: q_{T-1} . k_j / sqrt(hs)
p = masked_softmax(s, causal=False)  # the last row sees every position
J = np.diag(p) - np.outer(p, p)  # (T, T), J[j, i] = dp_j / ds_i
dp = rng.standard_normal(T)  # a random upstream gradient (never all ones: that gives 0)

ds_jacobian = J.T @ dp
ds_formula = p * (dp - np.sum(dp * p))
ds_numeric = numerical_gradient_array(lambda: masked_softmax(s, causal=False), s, dp)
print("rel_error(J^T dp, formula)    =", rel_error(ds_jacobian, ds_formula))
print("rel_error(formula, numerical) =", rel_error(ds_formula, ds_numeric))
print("rows of J sum to 0:", np.allclose(J.sum(axis=1), 0.0), "| sum of ds:", ds_formula.sum())
assert rel_error(ds_formula, ds_numeric) < 1e-8

# %% [markdown]
# ## 3. The backward pass, one forward line at a time
#
# We go through the forward lines in reverse. For each line `out = f(in)` the
# gradient of the loss with respect to `in` follows from the one with respect
# to `out` (the upstream gradient `do` is given):
#
# | forward | backward |
# |---|---|
# | $o = P v$ | $dP = do\, v^\top$, $\quad dv = P^\top do$ |
# | $P = \mathrm{softmax}(\mathrm{mask}(S))$ | $dS = P \odot (dP - \mathrm{rowsum}(dP \odot P))$ |
# | $S = q k^\top / \sqrt{hs}$ | $dq = dS\, k / \sqrt{hs}$, $\quad dk = dS^\top q / \sqrt{hs}$ |
# | $q = x W_q$ (same for k, v) | $dW_q = x^\top dq$, $\quad dx \mathrel{+}= dq\, W_q^\top$ |
#
# The matrix-product rule ($Y = AB \Rightarrow dA = dY\,B^\top,\ dB = A^\top dY$)
# gives every line except the softmax. Because `x` feeds three projections,
# its gradient is the **sum** of three contributions.


# %%
def head_backward(do, cache, Wq, Wk, Wv):
    """Gradients of sum(o * do) with respect to x, Wq, Wk, Wv."""
    x, q, k, v, P, scale = cache
    # o = P @ v
    dP = do @ v.swapaxes(-1, -2)  # (..., T, T)
    dv = P.swapaxes(-1, -2) @ do  # (..., T, hs)
    # P = softmax(mask(S))
    dS = P * (dP - np.sum(dP * P, axis=-1, keepdims=True))  # (..., T, T)
    # S = q k^T * scale
    dq = (dS @ k) * scale  # (..., T, hs)
    dk = (dS.swapaxes(-1, -2) @ q) * scale  # (..., T, hs)
    # q = x Wq, k = x Wk, v = x Wv: x is used three times, so its gradients add
    dWq = x.T @ dq
    dWk = x.T @ dk
    dWv = x.T @ dv
    dx = dq @ Wq.T + dk @ Wk.T + dv @ Wv.T  # (..., T, C)
    return {"x": dx, "Wq": dWq, "Wk": dWk, "Wv": dWv}


do = rng.standard_normal((T, hs))
analytic = head_backward(do, head_cache, Wq, Wk, Wv)

# %% [markdown]
# ## 4. Gradient check
#
# `numerical_gradient_array(f, a, do)` perturbs the array `a` **in place**, one
# element at a time, re-runs `f()` and differentiates $\sum f() \odot do$ by
# the five-point central difference. So `f` must read `a` itself, which a
# `lambda` closing over our arrays does. In float64 a correct gradient agrees
# to a relative error many orders of magnitude below $10^{-7}$, the tolerance
# we assert (the values are printed below); a sign error gives 1, a missing
# factor of 2 gives 1/3.

# %%
arrays = {"x": x, "Wq": Wq, "Wk": Wk, "Wv": Wv}
errors = {}
for name, a in arrays.items():
    numeric = numerical_gradient_array(lambda: head_forward(x, Wq, Wk, Wv)[0], a, do)
    errors[f"head d{name}"] = rel_error(analytic[name], numeric)
    print(f"d{name:3s} rel_error = {errors[f'head d{name}']:.2e}")
assert max(errors.values()) < 1e-7

# %% [markdown]
# ## 5. Many heads, a batch, and the output projection
#
# A multi-head layer runs H heads side by side on slices of one wide projection
# ($W_q$ is (C, C) and hs = C / H; head $h$ uses columns $h\,hs:(h+1)\,hs$),
# adds biases, then merges the heads back to (B, T, C) and mixes them with an
# output projection:
#
# $$y = \mathrm{merge}(o)\, W_o + b_o .$$
#
# Splitting heads is only a reshape (B, T, C) -> (B, T, H, hs) and a transpose
# to (B, H, T, hs); its backward is the inverse reshape. Our `head_forward`
# already handles the leading (B, H) axes; only the projections move outside.
# minisynth stores the layer's weights in `layer.params` under the names
# `Wq, bq, Wk, bk, Wv, bv, Wo, bo`, all (C, C) or (C,), so our function takes
# that dict. We keep the head size hs of the sections above, so the layer's
# width is C = H hs (`Cm` in the code: `C` still holds the single head's input
# width).


# %%
def split(a, H):
    B, T, C = a.shape
    return a.reshape(B, T, H, C // H).transpose(0, 2, 1, 3)  # (B, H, T, hs)


def merge(a):
    B, H, T, hs = a.shape
    return a.transpose(0, 2, 1, 3).reshape(B, T, H * hs)  # (B, T, C)


def mha_forward(x, p, H, causal=True):
    """Multi-head dot-product attention with biases and output projection."""
    q = split(x @ p["Wq"] + p["bq"], H)  # (B, H, T, hs)
    k = split(x @ p["Wk"] + p["bk"], H)
    v = split(x @ p["Wv"] + p["bv"], H)
    scale = 1.0 / math.sqrt(q.shape[-1])
    P = masked_softmax((q @ k.swapaxes(-1, -2)) * scale, causal)  # (B, H, T, T)
    om = merge(P @ v)  # (B, T, C)
    y = om @ p["Wo"] + p["bo"]  # (B, T, C)
    return y, (x, q, k, v, P, scale, om)


def mha_backward(dy, cache, p, H):
    x, q, k, v, P, scale, om = cache
    C = x.shape[-1]
    g = {}
    # y = om @ Wo + bo  (sum over batch and positions for the weights)
    g["Wo"] = om.reshape(-1, C).T @ dy.reshape(-1, C)
    g["bo"] = dy.reshape(-1, C).sum(axis=0)
    do = split(dy @ p["Wo"].T, H)  # (B, H, T, hs)
    # o = P v;  P = softmax(mask(S));  S = q k^T * scale  (exactly as for one head)
    dP = do @ v.swapaxes(-1, -2)
    dv = P.swapaxes(-1, -2) @ do
    dS = P * (dP - np.sum(dP * P, axis=-1, keepdims=True))
    dq = (dS @ k) * scale
    dk = (dS.swapaxes(-1, -2) @ q) * scale
    # q = x Wq + bq etc.; merge() undoes split()
    dx = np.zeros_like(x)
    for name, d in (("q", dq), ("k", dk), ("v", dv)):
        dflat = merge(d)  # (B, T, C)
        g["W" + name] = x.reshape(-1, C).T @ dflat.reshape(-1, C)
        g["b" + name] = dflat.reshape(-1, C).sum(axis=0)
        dx += dflat @ p["W" + name].T
    return dx, g


B, H = (2, 2) if TINY else (3, 4)
Cm, L = H * hs, T + 2  # the layer's width C = H * hs, its maximum length (any L >= T works)
layer = attention.build("vanilla", Cm, H, L, causal=True, seed=1, dtype=np.float64)
for a in layer.params.values():  # biases start at 0; random ones make the check stricter
    a[...] = rng.uniform(-0.5, 0.5, a.shape)
print(layer)
print({name: a.shape for name, a in layer.params.items()})

xb = rng.standard_normal((B, T, Cm))
dy = rng.standard_normal((B, T, Cm))
y_ref, cache = layer.forward(xb)  # minisynth
dx_ref, grads_ref = layer.backward(dy, cache)
y_ours, ours_cache = mha_forward(xb, layer.params, H)  # ours, same parameters
dx_ours, grads_ours = mha_backward(dy, ours_cache, layer.params, H)

errors["layer y"] = rel_error(y_ours, y_ref)
P_ours = ours_cache[4]  # our attention probabilities (B, H, T, T)
errors["layer probs"] = rel_error(P_ours, cache.probs)
errors["layer dx"] = rel_error(dx_ours, dx_ref)
for name in layer.params:
    if name != "bk":  # dbk is zero up to rounding: see "A trap" below
        errors[f"layer d{name}"] = rel_error(grads_ours[name], grads_ref[name])
layer_keys = [k for k in errors if k.startswith("layer")]
for key in layer_keys:
    print(f"ours vs minisynth, {key[6:]:7s}: rel_error = {errors[key]:.2e}")
n_exact = sum(errors[k] == 0.0 for k in layer_keys)
print(f"{n_exact} of {len(layer_keys)} comparisons are bit-identical (rel_error exactly 0)")
assert max(errors[k] for k in layer_keys) < 1e-12

# %% [markdown]
# Our few lines and minisynth agree to rounding: every relative error is 0
# or at the level of float64 rounding (about $10^{-16}$; we assert
# $10^{-12}$). The last line counts the comparisons that agree to the last
# bit. How many do depends on the sizes and the BLAS library: the two compute
# the same sums, but not always grouped the same way (our `x @ W` multiplies a
# (B, T, C) array, minisynth flattens it to one (B T, C) matrix product first),
# and a different grouping can change the last bit or two. We left out `dbk`,
# for a reason explained below. To close the loop we also check the layer's
# own backward against finite differences. Small arrays (`bq`, `bv`) and `Wo` get the full
# element-by-element check; for the other matrices we use `directional_check`,
# which is cheaper for large arrays:
# it compares the derivative along a few random directions $u$,
# $\frac{d}{d\epsilon}\ell(W + \epsilon u)$, with $\langle dW, u\rangle$, at
# four forward passes per direction instead of four per element.


# %%
def f_loss():
    """The scalar whose gradient layer.backward(dy, ...) computes: sum(y * dy)."""
    return np.sum(layer.forward(xb)[0] * dy)


for name in ("bq", "bv", "Wo"):
    numeric = numerical_gradient_array(lambda: layer.forward(xb)[0], layer.params[name], dy)
    errors[f"numeric d{name}"] = rel_error(grads_ref[name], numeric)
for name in ("Wq", "Wk", "Wv"):
    errors[f"directional d{name}"] = directional_check(f_loss, layer.params[name], grads_ref[name])
for key in [k for k in errors if k.startswith(("numeric", "directional"))]:
    print(f"minisynth vs finite differences, {key}: {errors[key]:.2e}")
assert max(errors[k] for k in errors if k.startswith(("numeric", "directional"))) < 1e-7

# %% [markdown]
# ### A trap: a gradient that is exactly zero
#
# We skipped `bk` twice. Adding the same vector $b_k$ to every key adds, in
# each head, the same number $q_i \cdot b_k / \sqrt{hs}$ (that head's slices
# of $q_i$ and $b_k$) to *every* logit of row $i$, and the softmax ignores
# a constant added to a row (the Jacobian rows sum to 0, section 2). So the
# true gradient of `bk` is zero. Both sides then hold only rounding noise, and
# the *relative* error of two noises is of order 1 (the first line below), a
# false alarm (even between our code and minisynth's, whenever the two round
# differently, for example when the BLAS library splits a matrix product across
# threads differently). The right test for a gradient that should vanish is
# its absolute size compared with the gradients around it.

# %%
numeric_bk = numerical_gradient_array(lambda: layer.forward(xb)[0], layer.params["bk"], dy)
print(f"rel_error(dbk, numeric) = {rel_error(grads_ref['bk'], numeric_bk):.2f}  (noise vs noise)")
print(
    f"|dbk| analytic = {np.linalg.norm(grads_ref['bk']):.1e}, numeric = "
    f"{np.linalg.norm(numeric_bk):.1e}, while |dbq| = {np.linalg.norm(grads_ref['bq']):.1e}"
)
assert np.linalg.norm(numeric_bk) < 1e-8 * np.linalg.norm(grads_ref["bq"]) + 1e-9

# %% [markdown]
# ## 6. Picture: the attention map, one softmax Jacobian, and all the checks
#
# We save one figure with three panels: the causal attention map of head 0
# (masked cells are blank), the Jacobian $J$ of the softmax row we checked in
# section 2, and the relative error of every gradient check on a log scale.

# %%
fig = Figure(figsize=(15, 4.8), layout="constrained")
ax1, ax2, ax3 = fig.subplots(1, 3, width_ratios=[1, 1, 1.5])

probs0 = np.ma.masked_where(np.triu(np.ones((T, T), dtype=bool), 1), cache.probs[0, 0])
im = ax1.imshow(probs0, cmap="viridis", vmin=0, vmax=1)
ax1.set(title="P, batch 0, head 0 (causal)", xlabel="key position j", ylabel="query position i")
fig.colorbar(im, ax=ax1, shrink=0.8, label="attention weight")

lim = np.abs(J).max()
im = ax2.imshow(J, cmap="RdBu_r", vmin=-lim, vmax=lim)
ax2.set(title=r"softmax Jacobian $J = \mathrm{diag}(p) - pp^\top$", xlabel="logit i")
ax2.set_ylabel("probability j")
fig.colorbar(im, ax=ax2, shrink=0.8)

names = list(errors)
vals = [max(errors[n], 1e-17) for n in names]  # exact zeros drawn at the bottom of the axis
ax3.barh(names, vals, color=["tab:blue" if v < 1e-7 else "tab:red" for v in vals])
for i, n in enumerate(names):
    if errors[n] == 0.0:  # a zero has no place on a log axis: say it in words
        ax3.text(3e-17, i, "0 (bit-identical)", va="center", fontsize=8)
ax3.axvline(1e-7, color="k", ls="--", lw=1, label="tolerance 1e-7")
ax3.set_xscale("log")
ax3.set_xlim(1e-17, 1)
ax3.invert_yaxis()
ax3.tick_params(axis="y", labelsize=8)
ax3.set(title="relative error of every check (float64)", xlabel="rel_error")
ax3.legend(loc="lower right")

path = OUT / "01_dot_product_attention.png"
fig.savefig(path, dpi=100)
print("saved", path)
fig  # noqa: B018  (a notebook displays a bare last expression: the figure)

# %% [markdown]
# ## Exercises
#
# 1. **Scale.** Drop the $1/\sqrt{hs}$ factor, draw q and k with unit variance at
#    hs = 64, and measure the mean row entropy of P with and without it. Why does
#    the unscaled softmax saturate, and what does that do to `dS`?
# 2. **The Jacobian, explicitly.** For one row build the (T, T) Jacobian
#    $J = \mathrm{diag}(p) - p p^\top$ and check that `J @ dP` equals the
#    one-line backward `P * (dP - rowsum(dP * P))`. Which is cheaper, and by how
#    much at T = 1024?
# 3. **Break the mask.** Apply the causal mask *after* the softmax (zero the
#    future, no renormalisation). Which gradient check fails, and why do the
#    rows no longer sum to 1?
