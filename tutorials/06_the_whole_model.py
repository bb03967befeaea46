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
# # 06 · The whole model by hand: every layer between the attention and the loss
#
# Tutorials 01-05 built attention layers and their backward passes. A language
# model needs more: byte and position embeddings, LayerNorm, residual
# connections, a GELU MLP, an output head that reuses the byte embedding, a
# cross-entropy loss, and an optimizer. This tutorial writes each of them out,
# derives each backward pass, checks it in float64 against finite differences, and
# then assembles the pieces into one full backward pass that must equal
# `SynthesizerLM.loss_and_grads` to rounding. It ends with AdamW, one step by hand.
#
# After this tutorial nothing in `minisynth.model` is a black box: 07 trains this
# network on enwik8.
#
# Run as a script or as a notebook (jupytext); `MINISYNTH_TUTORIAL_TINY=1` for a
# quick run; figures go to `tutorials/output/` or `$MINISYNTH_TUTORIAL_OUT`.

# %%
import os
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch

from minisynth import ModelConfig, SynthesizerLM, layers
from minisynth.gradcheck import (
    directional_check,
    numerical_gradient,
    numerical_gradient_array,
    rel_error,
)
from minisynth.optim import AdamW

TINY = os.environ.get("MINISYNTH_TUTORIAL_TINY", "0") not in ("", "0")
try:
    HERE = Path(__file__).resolve().parent  # run as a script
except NameError:
    HERE = Path.cwd()  # run as a notebook: Jupyter starts in the notebook's folder
OUT = Path(os.environ.get("MINISYNTH_TUTORIAL_OUT", HERE / "output"))
OUT.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)

# a tiny model, in float64 so that finite differences are meaningful; random+vanilla is
# smooth everywhere (Dense's ReLU has kinks that finite differences can straddle, 03)
config = ModelConfig(d_model=8, n_heads=2, n_layers=2, max_len=8, attention="random+vanilla")
model = SynthesizerLM(config, seed=0, dtype=np.float64)
B, T = (2, 6) if TINY else (3, 8)
idx = rng.integers(0, config.vocab_size, (B, T))  # (B,T) byte ids
targets = rng.integers(0, config.vocab_size, (B, T))  # (B,T) the next bytes
print(config)
print(f"{model.num_params():,} parameters; B={B}, T={T}, tiny={TINY}")

# %% [markdown]
# ## 1. The network, drawn from its own parameters
#
# `model.params` is a flat dict: its names say where each array sits, its shapes
# what it multiplies. The diagram below is drawn from that dict (not by hand), for
# the model above: one block is repeated `n_layers` times. Read it bottom-up.
#
# - **Embeddings.** A byte id picks a row of `wte` (V, C); the position t adds row
#   t of `wpe` (L, C).
# - **A block** (pre-LayerNorm, as GPT-2): `x = x + attn(ln1(x))`, then
#   `x = x + W2 gelu(ln2(x) W1 + b1) + b2`. The residual stream `x` (B, T, C) is
#   never normalised itself: each branch reads a normalised copy and adds its result.
# - **The head.** A final LayerNorm, then `logits = ln_f(x) @ wte^T`: the output
#   layer *is* the byte embedding, transposed (weight tying). One matrix, two uses.
# - **The loss.** Cross-entropy between `softmax(logits)` and the next byte, averaged
#   over the B T positions.


# %%
def block_diagram(model):
    """A bottom-up flow chart of the model, labelled with its parameters' shapes."""
    p, cfg = model.params, model.config

    def shapes(prefix):
        return ", ".join(
            f"{n[len(prefix) :]} {tuple(a.shape)}" for n, a in p.items() if n.startswith(prefix)
        )

    attn_names = [n[len("blocks.0.attn.") :] for n in p if n.startswith("blocks.0.attn.")]
    half = (len(attn_names) + 1) // 2
    stages = [
        ("bytes idx (B, T)", "input", "#eeeeee"),
        (f"wte {p['wte'].shape}[idx] + wpe {p['wpe'].shape}[:T]", "embeddings", "#cfe2f3"),
        (f"ln1: {shapes('blocks.0.ln1.')}", "LayerNorm", "#fff2cc"),
        (
            f"attention '{cfg.attention}': {', '.join(attn_names[:half])},\n"
            f"{', '.join(attn_names[half:])}",
            "x + attn(ln1(x))",
            "#f4cccc",
        ),  # fmt: skip
        (f"ln2: {shapes('blocks.0.ln2.')}", "LayerNorm", "#fff2cc"),
        (f"MLP: {shapes('blocks.0.mlp.')}; GELU between", "x + mlp(ln2(x))", "#d9ead3"),
        (f"ln_f: {shapes('ln_f.')}", "LayerNorm", "#fff2cc"),
        (f"logits = ln_f(x) @ wte^T  (V={cfg.vocab_size})", "tied head", "#cfe2f3"),
        ("mean cross-entropy with the next bytes", "loss", "#eeeeee"),
    ]
    fig = Figure(figsize=(8.5, 7.2), layout="constrained")
    ax = fig.add_subplot()
    ax.set_xlim(0, 10)
    ax.set_ylim(-0.5, len(stages))
    ax.axis("off")
    for y, (text, role, colour) in enumerate(stages):
        ax.add_patch(FancyBboxPatch((1.2, y), 6.6, 0.62, boxstyle="round,pad=0.05",
                                    facecolor=colour, edgecolor="black"))  # fmt: skip
        ax.text(4.5, y + 0.31, text, ha="center", va="center", fontsize=8)
        ax.text(8.0, y + 0.31, role, ha="left", va="center", fontsize=8, style="italic")
        if y:
            ax.annotate("", (4.5, y - 0.02), (4.5, y - 0.33), arrowprops={"arrowstyle": "->"})
    # the repeated block and its two residual connections
    ax.add_patch(FancyBboxPatch((0.6, 1.85), 8.9, 3.95, boxstyle="round,pad=0.05",
                                fill=False, linestyle="--", edgecolor="grey"))  # fmt: skip
    ax.text(9.4, 1.95, f"block\nx {cfg.n_layers}", fontsize=9, color="grey", ha="right")
    for top, bottom in ((3.3, 1.7), (5.3, 3.7)):  # skip paths around each branch
        ax.annotate("", (1.05, top), (1.05, bottom),
                    arrowprops={"arrowstyle": "->", "color": "tab:blue"})  # fmt: skip
        ax.text(0.2, (top + bottom) / 2, "+ x", color="tab:blue", fontsize=8)
    ax.set_title(f"SynthesizerLM as built from its config ({model.num_params():,} parameters)")
    return fig


fig = block_diagram(model)
fig.savefig(OUT / "06_block_diagram.png", dpi=100)
fig  # noqa: B018  (a notebook displays a bare last expression: the figure)

# %% [markdown]
# ## 2. The forward pass, written out
#
# Every step below is one function of `minisynth.layers` (the reference the model
# itself calls) and keeps its cache for the backward pass. The attention layers are
# `model.attn[i]`, as built in tutorials 01-05. The result must be the model's own
# logits.

# %%
p = model.params


def forward(idx):
    """The model's forward pass, one layer call per line, keeping every cache."""
    caches = {}
    tok, caches["embed"] = layers.embedding_forward(idx, p["wte"])  # (B,T,C)
    x = tok + p["wpe"][: idx.shape[1]]  # (B,T,C)
    for i, attn in enumerate(model.attn):
        pre = f"blocks.{i}."
        a_in, caches[pre + "ln1"] = layers.layernorm_forward(x, p[pre + "ln1.g"], p[pre + "ln1.b"])
        a_out, caches[pre + "attn"] = attn.forward(a_in)  # (B,T,C)
        x = x + a_out  # (B,T,C) residual
        m_in, caches[pre + "ln2"] = layers.layernorm_forward(x, p[pre + "ln2.g"], p[pre + "ln2.b"])
        h, caches[pre + "fc"] = layers.linear_forward(m_in, p[pre + "mlp.W1"], p[pre + "mlp.b1"])
        hg, caches[pre + "gelu"] = layers.gelu_forward(h)  # (B,T,4C)
        m_out, caches[pre + "proj"] = layers.linear_forward(
            hg, p[pre + "mlp.W2"], p[pre + "mlp.b2"]
        )  # (B,T,C)
        x = x + m_out  # (B,T,C) residual
    xf, caches["ln_f"] = layers.layernorm_forward(x, p["ln_f.g"], p["ln_f.b"])  # (B,T,C)
    caches["xf"] = xf
    logits = xf @ p["wte"].T  # (B,T,V) the tied head
    return logits, caches


logits, caches = forward(idx)
print("max |our logits - model.forward| =", np.abs(logits - model.forward(idx)).max())

# %% [markdown]
# ## 3. Each backward pass, derived and checked
#
# Each check below compares a hand-derived gradient with the central-difference
# gradient of `sum(f(x) * dout)` for a **random** upstream gradient `dout`: with an
# all-ones `dout`, LayerNorm and softmax would have a true gradient of zero and the
# check would prove nothing. In float64 a correct gradient agrees to about 1e-9 or
# better; a wrong one gives an error of order 1.


# %%
def check(name, analytic, numeric):
    err = rel_error(analytic, numeric)
    print(f"{name:38s} relative error {err:.1e}")
    assert err < 1e-7, name


# %% [markdown]
# ### LayerNorm
#
# For one row $x \in \mathbb{R}^C$: $\mu = \frac1C\sum_k x_k$,
# $\sigma^2 = \frac1C\sum_k (x_k-\mu)^2$, $r = (\sigma^2+\epsilon)^{-1/2}$,
# $\hat x = (x-\mu)\,r$, $y = g \odot \hat x + b$.
#
# The parameters are easy: $\partial L/\partial g = \sum_{\text{rows}} dy \odot \hat x$,
# $\partial L/\partial b = \sum_{\text{rows}} dy$. For the input, write
# $d\hat x = dy \odot g$. Every $x_j$ reaches every $\hat x_k$ three ways: directly,
# through $\mu$, and through $r$:
#
# $$\frac{\partial \hat x_k}{\partial x_j} = r\,\delta_{kj} - \frac{r}{C}
#   + (x_k-\mu)\frac{\partial r}{\partial x_j},\qquad
#   \frac{\partial r}{\partial x_j} = -\tfrac12 (\sigma^2+\epsilon)^{-3/2}\,
#   \frac{\partial \sigma^2}{\partial x_j} = -\frac{r^3}{C}(x_j-\mu)$$
#
# (the $\mu$ term in $\partial\sigma^2/\partial x_j = \frac2C\sum_k (x_k-\mu)
# (\delta_{kj}-\frac1C)$ vanishes because the deviations sum to zero). So
# $\frac{\partial \hat x_k}{\partial x_j} = \frac{r}{C}\big(C\delta_{kj} - 1 -
# \hat x_k \hat x_j\big)$ and
#
# $$dx_j = \sum_k d\hat x_k \frac{\partial \hat x_k}{\partial x_j}
#   = r\Big(d\hat x_j - \overline{d\hat x} - \hat x_j\, \overline{d\hat x \odot \hat x}\Big),$$
#
# where the bars are means over the row. Two row means and one multiply: that is
# the line in `layers.layernorm_backward`.

# %%
C = config.d_model
x = rng.standard_normal((B, T, C))
g, b = rng.standard_normal(C), rng.standard_normal(C)
dout = rng.standard_normal((B, T, C))
_, ln_cache = layers.layernorm_forward(x, g, b)
xhat, r = ln_cache.xhat, ln_cache.rstd
dxhat = dout * g
dx_ours = r * (dxhat - dxhat.mean(-1, keepdims=True)
               - xhat * (dxhat * xhat).mean(-1, keepdims=True))  # fmt: skip
dg_ours = (dout * xhat).sum((0, 1))
db_ours = dout.sum((0, 1))


def layernorm_out():
    return layers.layernorm_forward(x, g, b)[0]


check("LayerNorm dx (our derivation)", dx_ours, numerical_gradient_array(layernorm_out, x, dout))
check("LayerNorm dg", dg_ours, numerical_gradient_array(layernorm_out, g, dout))
check("LayerNorm db", db_ours, numerical_gradient_array(layernorm_out, b, dout))
print("equal to layers.layernorm_backward:",
      np.allclose(dx_ours, layers.layernorm_backward(dout, ln_cache)[0], atol=1e-13))  # fmt: skip

# %% [markdown]
# ### GELU (the tanh form)
#
# $\mathrm{gelu}(x) = \tfrac12 x\,(1 + \tanh u)$ with
# $u = \sqrt{2/\pi}\,(x + 0.044715\,x^3)$. The product rule and
# $\tanh' = 1 - \tanh^2$ give
#
# $$\mathrm{gelu}'(x) = \tfrac12(1+\tanh u) + \tfrac12 x\,(1-\tanh^2 u)\,
#   \sqrt{2/\pi}\,(1 + 3\cdot 0.044715\,x^2).$$
#
# It is applied elementwise, so the backward pass multiplies `dout` by it.

# %%
h = 2 * rng.standard_normal((B, T, 4 * C))
dh_out = rng.standard_normal(h.shape)
u = np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)
gelu_prime = 0.5 * (1 + np.tanh(u)) + 0.5 * h * (1 - np.tanh(u) ** 2) * np.sqrt(2 / np.pi) * (
    1 + 3 * 0.044715 * h**2
)
check("GELU dx", dh_out * gelu_prime,
      numerical_gradient_array(lambda: layers.gelu_forward(h)[0], h, dh_out))  # fmt: skip

# %% [markdown]
# ### Softmax and cross-entropy together
#
# For one position with logits $z$ and target $t$:
# $\ell = -\log p_t = -z_t + \log\sum_k e^{z_k}$. Its derivative is
# $\partial\ell/\partial z_k = p_k - [k = t]$: the softmax Jacobian and the log
# cancel, which is why the two are computed as one layer (and why it is
# numerically safe: no division by a small $p_t$). The loss is the mean over the
# $N = BT$ positions, so each position's gradient is divided by $N$:
#
# $$\frac{\partial L}{\partial z_{n,k}} = \frac{p_{n,k} - [k = t_n]}{N}.$$
#
# Each row of this gradient sums to zero: raising every logit of a row by the same
# amount changes nothing.

# %%
z = rng.standard_normal((B, T, config.vocab_size))
_, ce_cache = layers.cross_entropy_forward(z, targets)
probs = ce_cache.probs.reshape(z.shape)
onehot = np.eye(config.vocab_size)[targets]  # (B,T,V)
dz_ours = (probs - onehot) / (B * T)
check("softmax + cross-entropy dlogits", dz_ours,
      numerical_gradient(lambda: layers.cross_entropy_forward(z, targets)[0], z))  # fmt: skip
print("each row sums to", float(np.abs(dz_ours.sum(-1)).max()), "(zero up to rounding)")

# %% [markdown]
# ### The embedding: a lookup whose gradient is a scatter-add
#
# `out[b, t] = W[idx[b, t]]` copies a row, so its gradient sends `dout[b, t]` back
# to row `idx[b, t]`. When a byte occurs several times its row receives the **sum**
# of their gradients: `dW[idx] += dout` in NumPy would keep only one of them
# (fancy-index assignment does not accumulate); `np.add.at` does.

# %%
ids = np.array([[3, 5, 3, 3]])  # byte 3 occurs three times
W = rng.standard_normal((8, C))
d_emb = rng.standard_normal((1, 4, C))
dW_wrong = np.zeros_like(W)
dW_wrong[ids.reshape(-1)] += d_emb.reshape(-1, C)  # the buffered += keeps one occurrence
dW_right = np.zeros_like(W)
np.add.at(dW_right, ids.reshape(-1), d_emb.reshape(-1, C))
numeric = numerical_gradient_array(lambda: layers.embedding_forward(ids, W)[0], W, d_emb)
check("embedding dW (np.add.at)", dW_right, numeric)
print(f"with a plain +=: relative error {rel_error(dW_wrong, numeric):.2f} (row 3 lost two terms)")

# %% [markdown]
# ### Residual fan-out and the tied head: where gradients add
#
# Whenever a value is used twice, its gradient is the sum of the gradients of the
# two uses (the multivariate chain rule). Two places in this model:
#
# - **The residual stream.** `y = x + f(x)` uses x twice: `dx = dy + f'(x)^T dy`.
#   The skip path passes `dy` through unchanged: this is why deep residual networks
#   train, the gradient always has a short road to early layers.
# - **The tied embedding.** `wte` is read by the lookup at the bottom and by the
#   head at the top: `dwte = dlogits^T xf` (summed over positions) **plus** the
#   scatter-add of the gradient reaching the embeddings.

# %%
Wr = rng.standard_normal((C, C)) / np.sqrt(C)
xr = rng.standard_normal((B, T, C))
dyr = rng.standard_normal((B, T, C))


def residual():
    return xr + np.tanh(xr @ Wr)  # y = x + f(x)


dx_res = dyr + ((1 - np.tanh(xr @ Wr) ** 2) * dyr) @ Wr.T  # skip + branch
check("residual dx = dy + f'(x)^T dy", dx_res, numerical_gradient_array(residual, xr, dyr))

# %% [markdown]
# ## 4. The full backward pass, assembled
#
# Now the pieces in reverse order of the forward pass. Each step quotes the forward
# line it inverts; the attention layers' backward passes are those of tutorials
# 01-05 (`model.attn[i].backward`). The result must equal
# `model.loss_and_grads`, the function training calls, for every parameter.


# %%
def backward(idx, targets, logits, caches):
    """Every parameter's gradient of the mean cross-entropy, by hand."""
    grads = {}
    loss, ce = layers.cross_entropy_forward(logits, targets)
    # loss = mean cross-entropy(logits, targets)
    dlogits = layers.cross_entropy_backward(1.0, ce)  # (B,T,V) (p - onehot) / N
    # logits = xf @ wte^T: the head's use of wte
    dxf = dlogits @ p["wte"]  # (B,T,C)
    dwte_head = np.einsum("btv,btc->vc", dlogits, caches["xf"])  # (V,C) summed over b, t
    # xf = ln_f(x)
    dx, grads["ln_f.g"], grads["ln_f.b"] = layers.layernorm_backward(dxf, caches["ln_f"])
    for i in reversed(range(len(model.attn))):
        pre = f"blocks.{i}."
        # x = x + mlp(ln2(x)): the skip passes dx on, the branch adds its part
        dhg, grads[pre + "mlp.W2"], grads[pre + "mlp.b2"] = layers.linear_backward(
            dx, caches[pre + "proj"]
        )
        dh = layers.gelu_backward(dhg, caches[pre + "gelu"])  # (B,T,4C)
        dm_in, grads[pre + "mlp.W1"], grads[pre + "mlp.b1"] = layers.linear_backward(
            dh, caches[pre + "fc"]
        )
        dln2, grads[pre + "ln2.g"], grads[pre + "ln2.b"] = layers.layernorm_backward(
            dm_in, caches[pre + "ln2"]
        )
        dx = dx + dln2  # (B,T,C)
        # x = x + attn(ln1(x))
        da_in, attn_grads = model.attn[i].backward(dx, caches[pre + "attn"])
        grads.update({pre + "attn." + n: g for n, g in attn_grads.items()})
        dln1, grads[pre + "ln1.g"], grads[pre + "ln1.b"] = layers.layernorm_backward(
            da_in, caches[pre + "ln1"]
        )
        dx = dx + dln1  # (B,T,C)
    # x = wte[idx] + wpe[:T]
    grads["wpe"] = np.zeros_like(p["wpe"])
    grads["wpe"][: idx.shape[1]] = dx.sum(axis=0)  # positions beyond T get nothing
    grads["wte"] = dwte_head + layers.embedding_backward(dx, caches["embed"])  # two uses add
    return loss, grads


loss_ours, grads_ours = backward(idx, targets, logits, caches)
loss_model, grads_model = model.loss_and_grads(idx, targets)
print(f"loss {loss_ours:.12f} (ours) vs {loss_model:.12f} (model)")
worst = max(rel_error(grads_ours[n], grads_model[n]) for n in grads_model)
print(f"{len(grads_model)} parameter arrays; worst relative difference {worst:.1e}")
assert sorted(grads_ours) == sorted(grads_model) and worst < 1e-12

# %% [markdown]
# ### A gradient check of the whole model
#
# Finally the whole backward pass against finite differences of the loss itself.
# Checking every entry of every array would take many thousands of forward passes,
# so for each parameter array we compare the directional derivative along random
# directions (`directional_check`): a few forward passes per array, and a wrong
# term anywhere in the chain shows up as an error of order 1. We check at random
# weights (std 0.5) rather than at the initialisation: there the embeddings are tiny
# (std 0.02), LayerNorm curves sharply at their scale, and some gradients are so
# small that rounding dominates their finite differences.

# %%
initial = {n: a.copy() for n, a in p.items()}
for a in p.values():
    a[...] = rng.normal(0.0, 0.5, a.shape)
_, grads_model = model.loss_and_grads(idx, targets)
errors, zero = {}, []
for name, arr in p.items():
    if np.abs(grads_model[name]).max() < 1e-12:  # zero up to rounding: see below
        zero.append(name)
        continue
    errors[name] = directional_check(lambda: model.loss(idx, targets), arr, grads_model[name],
                                     n_directions=2 if TINY else 4)  # fmt: skip
worst_name = max(errors, key=errors.get)
print(f"worst directional error over {len(errors)} arrays: {errors[worst_name]:.1e} ({worst_name})")
assert errors[worst_name] < 1e-6
# arrays whose gradient is zero up to rounding: the loss must not change along any entry
for name in zero:
    slope = numerical_gradient(lambda: model.loss(idx, targets), p[name])
    print(f"{name}: |gradient| <= {np.abs(grads_model[name]).max():.0e}; finite differences "
          f"give at most {np.abs(slope).max():.0e}")  # fmt: skip
    assert np.abs(slope).max() < 1e-9

# the tied embedding's gradient is the sum of its two uses; the head's alone is wrong
logits, caches = forward(idx)
dlogits = layers.cross_entropy_backward(1.0, layers.cross_entropy_forward(logits, targets)[1])
head_only = np.einsum("btv,btc->vc", dlogits, caches["xf"])  # (V,C)
head_error = directional_check(lambda: model.loss(idx, targets), p["wte"], head_only)
print(f"wte with the head's use only: directional error {head_error:.2f}")
for n, a in initial.items():  # back to the initial weights
    p[n][...] = a

# %% [markdown]
# The arrays with a zero gradient (up to rounding) are the key biases `bk` of the vanilla
# component. They are no bug: the logit $q_i \cdot (k_j + b_k)$ adds
# $q_i \cdot b_k$ to every entry of row i, and softmax ignores a constant added
# to a whole row. So $b_k$ can never change the output, and its gradient is zero
# for every input (the model's backward computes it, and rounding leaves ~1e-17).
# (minisynth keeps it, as GPT-2's attention and PyTorch's `nn.MultiheadAttention`
# with its default `bias=True` do; it costs C parameters per layer and changes
# nothing.)
#
# ## 5. AdamW: one step by hand
#
# Each parameter $\theta$ with gradient $g$ keeps two running averages. At step
# $t = 1, 2, \dots$, with learning rate $\eta$ and decay coefficient $\lambda$:
#
# $$\theta \leftarrow \theta\,(1 - \eta\lambda) \quad\text{(decoupled weight decay,
#   only for matrices)}$$
# $$m \leftarrow \beta_1 m + (1-\beta_1)\, g,\qquad v \leftarrow \beta_2 v +
#   (1-\beta_2)\, g^2$$
# $$\hat m = m / (1-\beta_1^t),\quad \hat v = v / (1-\beta_2^t),\qquad
#   \theta \leftarrow \theta - \eta\, \hat m / (\sqrt{\hat v} + \epsilon)$$
#
# The bias corrections undo the zero start of $m$ and $v$: at $t = 1$,
# $\hat m = g$ and $\hat v = g^2$, so the first step moves every entry by about
# $\eta$ whatever the size of its gradient. *Decoupled* means the decay shrinks
# $\theta$ directly instead of being added to $g$ (where Adam's normalisation would
# undo it). `optim.AdamW` decays matrices only: not biases, LayerNorm gains,
# embeddings, the mixture weights `alpha`, nor the Random kinds' `R` (tutorial 02).
# We take two steps by hand and compare with the optimizer.

# %%
lr, (beta1, beta2), eps, wd = 1e-2, (0.9, 0.95), 1e-8, 0.1
start = {n: a.copy() for n, a in p.items()}
opt = AdamW(p, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=wd)
by_hand = {n: a.copy() for n, a in p.items()}
m = {n: np.zeros_like(a) for n, a in p.items()}
v = {n: np.zeros_like(a) for n, a in p.items()}
for t in (1, 2):
    _, grads = model.loss_and_grads(idx, targets)  # at the optimizer's current weights
    opt.step(grads)
    for n in by_hand:
        if opt.decay[n]:  # the optimizer's own filter: 2-D arrays except wte, wpe
            by_hand[n] *= 1 - lr * wd
        m[n] = beta1 * m[n] + (1 - beta1) * grads[n]
        v[n] = beta2 * v[n] + (1 - beta2) * grads[n] ** 2
        m_hat, v_hat = m[n] / (1 - beta1**t), v[n] / (1 - beta2**t)
        by_hand[n] -= lr * m_hat / (np.sqrt(v_hat) + eps)
worst = max(np.abs(by_hand[n] - p[n]).max() for n in p)
print(f"after 2 steps, max |by hand - optim.AdamW| = {worst:.1e}")
print("decayed:", sorted(n for n in p if opt.decay[n])[:4], "...")
moved = {n: np.abs(p[n] - start[n]).max() for n in ("wte", "blocks.0.ln1.g")}
print("largest move of one entry after 2 steps:", {n: f"{d:.4f}" for n, d in moved.items()},
      f"(about 2 lr = {2 * lr})")  # fmt: skip
assert worst < 1e-12
for n, a in start.items():  # leave the model as it was
    p[n][...] = a

# %% [markdown]
# ## 6. How much of the model is where
#
# The parameter names also say where the model's size goes. With the default
# `minisynth train` model (d_model 128, 4 heads, 2 layers, 128 bytes of context)
# the MLPs hold the most, then attention; the attention kind changes only its part:


# %%
def group(name):
    """The part of the network a parameter belongs to, from its name."""
    for part, marker in (("attention", ".attn."), ("MLP", ".mlp."), ("LayerNorm", ".ln")):
        if marker in name:
            return part
    return "LayerNorm" if name.startswith("ln_f") else name  # wte, wpe


kinds = ("vanilla", "dense", "random")
default = {k: SynthesizerLM(ModelConfig(attention=k), seed=0) for k in kinds}
groups = ("wte", "wpe", "attention", "MLP", "LayerNorm")
sizes = {k: {g: sum(a.size for n, a in m.params.items() if group(n) == g) for g in groups}
         for k, m in default.items()}  # fmt: skip
fig2 = Figure(figsize=(7, 3.2), layout="constrained")
ax = fig2.add_subplot()
left = np.zeros(len(default))
for g in groups:
    counts = np.array([sizes[k][g] for k in default])
    ax.barh(list(default), counts, left=left, label=g)
    left += counts
ax.set_xlabel("parameters")
ax.set_title("Where the default model's parameters are, per attention kind")
ax.legend(ncol=5, fontsize=8, loc="lower right")
fig2.savefig(OUT / "06_parameter_budget.png", dpi=100)
for k in default:
    print(f"{k:8s}", {g: f"{sizes[k][g]:,}" for g in groups})
fig2  # noqa: B018

# %% [markdown]
# Random's R is 4 x 128 x 128 per layer, as many entries as all four of vanilla's
# projections (it replaces only the query and key ones), and half of it sits above
# the causal diagonal where no gradient ever reaches it (the reproduction, tutorial
# 12, counts *reachable* parameters for this reason).
#
# ## Exercises
#
# 1. **Post-LN.** The original Transformer normalised after the residual add:
#    `x = ln(x + f(x))`. Write that block's backward pass with the pieces above and
#    check it with `numerical_gradient_array`. Which path no longer reaches the
#    early layers unchanged?
# 2. **Untie the head.** Give the head its own matrix `W_out` (V, C). Which lines of
#    `backward` change? Count the parameters it adds to the default model.
# 3. **The exact GELU** is $x\,\Phi(x)$ with $\Phi$ the normal CDF. Derive its
#    derivative ($\Phi(x) + x\,\varphi(x)$), implement it with `scipy.special.ndtr`,
#    and measure the largest gap between the two GELUs and between their derivatives.
# 4. **Break it on purpose.** Replace `np.add.at` in the embedding backward with
#    `dW[idx] += dout` and rerun section 4: which arrays' checks fail, and why only
#    those?
# 5. **Adam without bias correction.** Drop the two corrections and print how far
#    the first step moves an entry, for `beta2 = 0.95` and `0.999`.
