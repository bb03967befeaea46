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
# # 04 · Factorized Synthesizers and what every kind costs
#
# Dense and Random Synthesizers pay for their L columns of logits: the Dense
# second layer is C x L, a Random head is L x L. The paper proposes two
# factorized forms that keep the idea but not the bill:
#
# * **factorized dense**: each token emits two short vectors, $A$ of length $a$
#   and $\tilde B$ of length $b$ with $a\,b = L$, and the row of L logits is
#   built by *tiling* $A$ and *repeating* $\tilde B$:
#   $\mathrm{full}[j] = A[j \bmod a] \cdot \tilde B[j \,\mathrm{div}\, a]$;
# * **factorized random**: $R = R_1 R_2^\top$ with $R_1, R_2$ of shape (L, k),
#   a rank-k matrix of logits ($k = 8$ in the paper).
#
# We build both by hand, derive and check their backward passes, then count
# parameters of every kind with `attention.count_params` next to the formulas
# in `minisynth/attention.py` and Table 1 of the paper, and save the table (as
# Markdown) and a bar chart.
#
# Notation: as in `minisynth/attention.py`, the factor lengths are $a$ and $b$.
# The letter B stays the batch size, so the second factor vector is
# $\tilde B$ (`Bf` in the code and the printouts), and the examples of a
# batch are numbered by $n$.
# Positions are counted from 0.
#
# Run as a script or as a notebook (jupytext); `MINISYNTH_TUTORIAL_TINY=1` for a
# quick run; files go to `tutorials/output/` or `$MINISYNTH_TUTORIAL_OUT`.

# %%
import os
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from minisynth import attention
from minisynth.gradcheck import numerical_gradient_array, rel_error

TINY = os.environ.get("MINISYNTH_TUTORIAL_TINY", "0") not in ("", "0")
try:
    HERE = Path(__file__).resolve().parent  # run as a script
except NameError:
    HERE = Path.cwd()  # run as a notebook: Jupyter starts in the notebook's folder
OUT = Path(os.environ.get("MINISYNTH_TUTORIAL_OUT", HERE / "output"))
OUT.mkdir(parents=True, exist_ok=True)

C, H, L = (8, 2, 12) if TINY else (16, 2, 32)  # width, heads, maximum length
B, T = (2, 10) if TINY else (3, 28)
K = 2 if TINY else 4  # rank of the factorized random logits
rng = np.random.default_rng(0)
print(f"C={C}, H={H}, L={L}, B={B}, T={T}, k={K}, tiny={TINY}")

# %% [markdown]
# ## 1. Tile and repeat
#
# With $a = 3$ and $b = 4$ (so $L = 12$): tiling repeats the whole vector $A$
# $b$ times, repeating repeats each entry of $\tilde B$ $a$ times, and the row
# of logits is their elementwise product.
#
# Either one alone could not tell the positions apart: $\mathrm{tile}(A)$
# gives the same logit to positions $a$ apart, $\mathrm{repeat}(\tilde B)$ the
# same logit to the $a$ positions of a block. In the product, position $j = q a + r$ ($0 \le r < a$,
# $0 \le q < b$) is the only one that gets the pair $(A[r], \tilde B[q])$, so
# $a + b$ numbers per token set all $L = a b$ logits (the counts below show
# how many distinct values each row has). The price: read as a b x a matrix
# (row $q$, column $r$) the row is the outer product $\tilde B A^\top$, which
# has rank 1.

# %%
a_demo, b_demo = 3, 4
A_demo = np.array([1, 2, 3])  # integers, to keep the printout short
Bf_demo = np.array([1, 10, 100, 1000])
tiled, repeated = np.tile(A_demo, b_demo), np.repeat(Bf_demo, a_demo)
full_demo = tiled * repeated
for name, row in (("tile(A, b)", tiled), ("repeat(Bf, a)", repeated), ("full", full_demo)):
    print(f"{name:14s}: {row}  ({np.unique(row).size} distinct of {row.size})")
print(
    "full as a (b, a) matrix equals the outer product Bf A^T:",
    np.array_equal(full_demo.reshape(b_demo, a_demo), np.outer(Bf_demo, A_demo)),
)

# %% [markdown]
# ### Its backward pass
#
# Given $d\mathrm{full}$ (length L), reshape it to $dF$ of shape (b, a). Since
# $F_{qr} = \tilde B_q A_r$, each $A_r$ appears in column $r$ and each
# $\tilde B_q$ in row $q$:
#
# $$dA_r = \sum_q dF_{qr}\, \tilde B_q, \qquad d\tilde B_q = \sum_r dF_{qr}\, A_r .$$
#
# The tiled vector collects its gradient from all $b$ copies, the repeated one
# from all $a$ copies. Checked against central differences:


# %%
def tile_repeat(A, Bf):
    return np.tile(A, Bf.size) * np.repeat(Bf, A.size)


def tile_repeat_backward(dfull, A, Bf):
    dF = dfull.reshape(Bf.size, A.size)  # (b, a)
    return dF.T @ Bf, dF @ A  # dA (a,), dBf (b,)


A_t, Bf_t = rng.standard_normal(a_demo), rng.standard_normal(b_demo)
dfull = rng.standard_normal(a_demo * b_demo)
dA, dBf = tile_repeat_backward(dfull, A_t, Bf_t)
err_A = rel_error(dA, numerical_gradient_array(lambda: tile_repeat(A_t, Bf_t), A_t, dfull))
err_Bf = rel_error(dBf, numerical_gradient_array(lambda: tile_repeat(A_t, Bf_t), Bf_t, dfull))
print(f"dA rel_error = {err_A:.1e}, dBf rel_error = {err_Bf:.1e}")
assert max(err_A, err_Bf) < 1e-9

# %% [markdown]
# ## 2. The factorized dense layer
#
# In minisynth (docstring of `attention.FactorizedDense`) the token first goes
# through the same hidden layer as the Dense Synthesizer,
# $\mathrm{hid} = \mathrm{relu}(x W_1 + b_1)$ split into heads, then head $h$
# computes $A = \mathrm{hid}\,W_a[h] + b_a[h]$ (length a) and
# $\tilde B = \mathrm{hid}\,W_b[h] + b_b[h]$ (length b). The option `factors=(a, b)`
# must multiply to L; by default `attention.default_factors(L)` picks the
# largest divisor $a \le \sqrt{L}$.

# %%
print("default_factors(L) =", attention.default_factors(L))
try:
    attention.build("factorized_dense", C, H, L, factors=(5, 7))
except ValueError as err:
    print("ValueError:", err)

a, b = attention.default_factors(L)
fd = attention.build("factorized_dense", C, H, L, factors=(a, b), seed=0, dtype=np.float64)
for arr in fd.params.values():
    arr[...] = rng.uniform(-0.5, 0.5, arr.shape)
print({name: arr.shape for name, arr in fd.params.items()})

x = rng.standard_normal((B, T, C))
y, cache = fd.forward(x)

p = fd.params
hs = C // H
hid = np.maximum(x @ p["W1"] + p["b1"], 0).reshape(B, T, H, hs).transpose(0, 2, 1, 3)
A = hid @ p["Wa"][None] + p["ba"][None, :, None, :]  # (B, H, T, a)
Bf = hid @ p["Wb"][None] + p["bb"][None, :, None, :]  # (B, H, T, b)
full = np.tile(A, b) * np.repeat(Bf, a, axis=-1)  # (B, H, T, L): tile A, repeat Bf
S = full[..., :T]  # only T keys exist
Sm = np.where(np.tril(np.ones((T, T), dtype=bool)), S, -np.inf)  # causal mask
P = np.exp(Sm - Sm.max(axis=-1, keepdims=True))
P /= P.sum(axis=-1, keepdims=True)
print("rel_error(our P, cache.probs) =", rel_error(P, cache.probs))
assert rel_error(P, cache.probs) < 1e-13

# %% [markdown]
# The backward pass of the layer chains three pieces we already know: the
# attention core gives $dS$; padding it with zeros to length L gives
# $d\mathrm{full}$; tile/repeat gives $dA$, $d\tilde B$; and then the two small
# linear maps give, per head, $dW_a = \sum_{n,t} \mathrm{hid}_{n,t}^\top\, dA_{n,t}$
# and $db_a = \sum_{n,t} dA_{n,t}$ (summed over examples $n$ and positions $t$),
# the same for $W_b$, $b_b$ with $d\tilde B$, and
# $d\mathrm{hid} = dA\, W_a^\top + d\tilde B\, W_b^\top$, which continues into the ReLU
# hidden layer exactly as in tutorial 03. We check the layer's gradients of
# the factor weights against finite differences (the ReLU part and its kink
# were the subject of tutorial 03).

# %%
dy = rng.standard_normal((B, T, C))
_, grads = fd.backward(dy, cache)
fd_errors = {}
for name in ("Wa", "ba", "Wb", "bb"):
    num = numerical_gradient_array(lambda: fd.forward(x)[0], fd.params[name], dy)
    fd_errors[name] = rel_error(grads[name], num)
    print(f"factorized_dense d{name}: rel_error = {fd_errors[name]:.1e}")
assert max(fd_errors.values()) < 1e-7

# %% [markdown]
# ## 3. The factorized random layer: low-rank logits
#
# $S = (R_1 R_2^\top)_{:T,:T}$ per head, shared across the batch like R in
# tutorial 02. Its rank is at most k, which we can see in the singular values.
# The backward pass is the matrix-product rule plus the sum over the examples
# $n$ of the batch:
#
# $$dR_1[:T] = \Big(\sum_{n=0}^{B-1} dS_n\Big) R_2[:T], \qquad
#   dR_2[:T] = \Big(\sum_{n=0}^{B-1} dS_n\Big)^\top R_1[:T],$$
#
# and rows $\ge T$ get zero gradient.

# %%
fr = attention.build("factorized_random", C, H, L, k=K, seed=0, dtype=np.float64)
print({name: arr.shape for name, arr in fr.params.items()})
R_low = fr.params["R1"][0] @ fr.params["R2"][0].T  # (L, L) logits of head 0
R_full = attention.build("random", C, H, L, seed=0, dtype=np.float64).params["R"][0]
sv_low = np.linalg.svd(R_low, compute_uv=False)
sv_full = np.linalg.svd(R_full, compute_uv=False)
print(
    "rank of R1 R2^T:",
    np.linalg.matrix_rank(R_low),
    " rank of a Random R:",
    np.linalg.matrix_rank(R_full),
)

y_fr, cache_fr = fr.forward(x)
_, grads_fr = fr.backward(dy, cache_fr)
fr_errors = {}
for name in ("R1", "R2"):
    num = numerical_gradient_array(lambda: fr.forward(x)[0], fr.params[name], dy)
    fr_errors[name] = rel_error(grads_fr[name], num)
    print(f"factorized_random d{name}: rel_error = {fr_errors[name]:.1e}")
print("rows >= T get no gradient:", not grads_fr["R1"][:, T:].any())
assert max(fr_errors.values()) < 1e-7

# %% [markdown]
# ## 4. Picture: tile/repeat and low rank
#
# Left: for one token of head 0, the tiled $A$, the repeated $\tilde B$ and their
# product (the row of L logits). Middle: the resulting causal attention map.
# Right: singular values of the logit matrix of a factorized random head
# (rank k) against those of a full Random head.

# %%
fig = Figure(figsize=(16, 4.4), layout="constrained")
ax1, ax2, ax3 = fig.subplots(1, 3, width_ratios=[1.4, 1, 1.1])
tok = T - 1
rows = np.stack([np.tile(A[0, 0, tok], b), np.repeat(Bf[0, 0, tok], a), full[0, 0, tok]])  # (3, L)
lim = np.abs(rows).max()
im = ax1.imshow(rows, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
ax1.set_yticks([0, 1, 2], [f"tile(A), a={a}", f"repeat(Bf), b={b}", "product"])
ax1.set(title=f"one token's row of L={L} logits (head 0)", xlabel="key position j")
for j in range(a, L, a):  # block boundaries of the repeated factor
    ax1.axvline(j - 0.5, color="k", lw=0.5)
fig.colorbar(im, ax=ax1, shrink=0.8)
P_show = np.where(np.tril(np.ones((T, T), dtype=bool)), cache.probs[0, 0], np.nan)
im = ax2.imshow(P_show, cmap="viridis", vmin=0, vmax=1)
ax2.set(title="factorized dense P (example 0, head 0)", xlabel="key position j")
ax2.set_ylabel("query position i")
fig.colorbar(im, ax=ax2, shrink=0.8)
ax3.semilogy(np.arange(1, L + 1), sv_full, "o-", ms=3, label="random: R (L x L)")
ax3.semilogy(
    np.arange(1, L + 1),
    np.maximum(sv_low, 1e-16),
    "s-",
    ms=3,
    label=f"factorized_random: R1 R2^T, k={K}",
)  # beyond k: rounding noise
ax3.axvline(K + 0.5, color="gray", ls=":")
ax3.set(title="singular values of head 0's logits", xlabel="index", ylabel="singular value")
ax3.set_ylim(1e-17, 10)
ax3.legend(loc="center right", fontsize=8)
path = OUT / "04_factorized.png"
fig.savefig(path, dpi=100)
print("saved", path)
fig  # noqa: B018  (a notebook displays a bare last expression: the figure)

# %% [markdown]
# ## 5. Parameter counts: minisynth against the paper
#
# Every kind shares the value and output projections, $2C^2 + 2C$; we count
# what each kind adds on top of that, in three ways that should agree:
#
# * `attention.count_params(kind, C, H, L)` minus $2C^2 + 2C$, computed from
#   the layer's shapes without allocating anything;
# * the formula in the kind's docstring in `minisynth/attention.py`
#   (`docstring_formula` below; the cell asserts that it equals `count_params`);
# * Table 1 of the paper (`paper_formula`), which gives $|\theta|$ of each
#   synthesizing function **without biases**: dot product $2d^2$, Dense
#   $d^2 + d\ell$, factorized Dense $d^2 + d(k_1 + k_2)$, Random $\ell^2$,
#   factorized Random $2\ell k$. We evaluate it with $d = C$, $\ell = L$,
#   $(k_1, k_2) = (a, b)$ and the paper's $k = 8$. The projections ($W_q$,
#   $W_k$, $W_1$) serve all heads at once, as here; a Random R (or $R_1, R_2$)
#   belongs to one head, so those terms are multiplied by H.
#
# The difference between minisynth and the paper's formula is then exactly
# the biases, plus H mixture logits per component for a mixture (tutorial 05).
# Two sizes: minisynth's default model and a base-Transformer width.


# %%
def docstring_formula(kind, C, H, L, k=8):
    """The per-layer counts written in minisynth/attention.py (without Wv, bv, Wo, bo)."""
    a, b = attention.default_factors(L)
    per_kind = {
        "vanilla": 2 * C * C + 2 * C,
        "dense": C * C + C + C * L + H * L,
        "factorized_dense": C * C + C + C * (a + b) + H * (a + b),
        "random": H * L * L,
        "random_fixed": 0,  # R is a buffer
        "factorized_random": 2 * H * L * k,
    }
    parts = kind.split("+")
    alpha = H * len(parts) if len(parts) > 1 else 0
    return sum(per_kind[part] for part in parts) + alpha


def paper_formula(kind, C, H, L, k=8):
    """Table 1 of Tay et al. (2020), no biases, evaluated as described above."""
    a, b = attention.default_factors(L)
    per_kind = {
        "vanilla": 2 * C * C,
        "dense": C * C + C * L,
        "factorized_dense": C * C + C * (a + b),
        "random": H * L * L,
        "random_fixed": 0,  # the paper's fixed R is not trained either
        "factorized_random": H * 2 * L * k,
    }
    return sum(per_kind[part] for part in kind.split("+"))


KINDS = ["vanilla", "dense", "factorized_dense", "random", "random_fixed", "factorized_random"]
KINDS += ["dense+vanilla", "random+vanilla"]
SIZES = {"default": (128, 4, 128), "base": (512, 8, 512)}  # (C, H, L)
counts = {}  # (size, kind) -> (minisynth, paper)
for size, (Cs, Hs, Ls) in SIZES.items():
    for kind in KINDS:
        ours = attention.count_params(kind, Cs, Hs, Ls) - (2 * Cs * Cs + 2 * Cs)
        assert ours == docstring_formula(kind, Cs, Hs, Ls), kind  # the docstrings tell the truth
        counts[size, kind] = ours, paper_formula(kind, Cs, Hs, Ls)

print("; ".join(f"{size}: C={Cs}, H={Hs}, L={Ls}" for size, (Cs, Hs, Ls) in SIZES.items()))
cols = [f"C={Cs} {what}" for Cs, _, _ in SIZES.values() for what in ("ours", "paper", "diff")]
lines = [f"| {'kind':17s} | " + " | ".join(f"{c:>11s}" for c in cols) + " |"]
lines.append("|" + "---|" * (1 + len(cols)))
for kind in KINDS:
    cells = [f"{v:>11,}" for size in SIZES for o, p in [counts[size, kind]] for v in (o, p, o - p)]
    lines.append(f"| {kind:17s} | " + " | ".join(cells) + " |")
table = "\n".join(lines)
print(table)
(OUT / "04_params.md").write_text(table + "\n", encoding="utf-8")

# %% [markdown]
# Reading the table at the base width (the cell below computes the numbers):
# one Random head costs $L^2$, so the H heads cost as much as two entire
# dot-product layers; $k = 8$ cuts that $L^2 / 2Lk = L / 2k$-fold. Dense pays
# $C L$ for its second layer; factorizing with $a + b$ instead of $L$ leaves
# mostly the $C^2$ first layer.

# %%
Cs, Hs, Ls = SIZES["base"]
a_s, b_s = attention.default_factors(Ls)
dot_layer = attention.count_params("vanilla", Cs, Hs, Ls)
print(
    f"L={Ls}: one Random head {Ls * Ls:,}, {Hs} heads {Hs * Ls * Ls:,}"
    f" = {Hs * Ls * Ls / dot_layer:.2f} whole dot-product layers ({dot_layer:,} each)"
)
shrink = counts["base", "random"][0] / counts["base", "factorized_random"][0]
print(f"factorized random (k=8) is {shrink:.0f} times smaller than random (L / 2k = {Ls // 16})")
print(
    f"dense: C L = {Cs * Ls:,}; factorized dense: C (a + b) = {Cs * (a_s + b_s):,} with (a, b) = "
    f"({a_s}, {b_s}); both also pay C^2 = {Cs * Cs:,} for W1"
)

# %% [markdown]
# ## 6. Picture: the same counts as a bar chart

# %%
fig = Figure(figsize=(12, 5.5), layout="constrained")
ax = fig.subplots()
for i, (size, (Cs, Hs, Ls)) in enumerate(SIZES.items()):
    vals = [counts[size, kind][0] for kind in KINDS]
    bars = ax.bar(
        np.arange(len(KINDS)) + (i - 0.5) * 0.4, vals, 0.4, label=f"{size} (C={Cs}, H={Hs}, L={Ls})"
    )
    labels = [f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v / 1e3:.1f}k" if v else "" for v in vals]
    ax.bar_label(bars, labels=labels, fontsize=8, padding=2)
ax.text(KINDS.index("random_fixed"), 2e3, "0 trainable\n(R is a buffer)", ha="center", fontsize=9)
ax.set_yscale("log")
ax.set_ylim(1e3, 1e7)
ax.set_xticks(np.arange(len(KINDS)), KINDS, rotation=20, ha="right")
ax.set_ylabel("trainable parameters per layer (log scale)")
ax.set_title("what each attention kind adds to the shared value/output projections (2C² + 2C)")
ax.legend(loc="upper left", ncols=2)
path = OUT / "04_params.png"
fig.savefig(path, dpi=100)
print("saved", path)
fig  # noqa: B018  (a notebook displays a bare last expression: the figure)

# %% [markdown]
# ## Exercises
#
# 1. **Rank.** Print the singular values of a trained `factorized_random` R for
#    k = 2, 8, 32. How many are far from zero, and why can there be no more than k?
# 2. **Choose the factors.** For L = 128 list every (a, b) with a b = L for
#    `factorized_dense`, and plot parameters per layer against a. Which split is
#    cheapest?
# 3. **The tile and the repeat.** Build `full[j] = A[j mod a] * Bf[j div a]` for a
#    small a, b by hand and show which pairs of positions are forced to share a
#    factor.
