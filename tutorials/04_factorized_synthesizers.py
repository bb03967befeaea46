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
#   and $B$ of length $b$ with $a\,b = L$, and the row of L logits is built by
#   *tiling* $A$ and *repeating* $B$:
#   $\mathrm{full}[j] = A[j \bmod a] \cdot B[j \,\mathrm{div}\, a]$;
# * **factorized random**: $R = R_1 R_2^\top$ with $R_1, R_2$ of shape (L, k),
#   a rank-k matrix of logits ($k = 8$ in the paper).
#
# We build both by hand, derive and check their backward passes, then count
# parameters of every kind with `attention.count_params` next to the formulas
# in `minisynth/attention.py` and Table 1 of the paper, and save the table as
# Markdown and CSV plus a bar chart.
#
# Run as a script or as a notebook (jupytext); `MINISYNTH_TUTORIAL_TINY=1` for a
# quick run; files go to `tutorials/output/` or `$MINISYNTH_TUTORIAL_OUT`.

# %%
import csv
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
# $b$ times, repeating repeats each entry of $B$ $a$ times, and the row of
# logits is their elementwise product. Read as a b x a matrix (row $q$, column
# $r$, $j = q a + r$) the row is the outer product $B A^\top$, a rank-1 block
# pattern: entries in the same block of $a$ share a factor of $B$, entries $a$
# apart share a factor of $A$. That is why the paper composes the two rather
# than using one of them alone.

# %%
a_demo, b_demo = 3, 4
A_demo = np.array([1.0, 2.0, 3.0])
B_demo = np.array([10.0, 20.0, 30.0, 40.0])
print("tile(A, b)  :", np.tile(A_demo, b_demo))
print("repeat(B, a):", np.repeat(B_demo, a_demo))
full_demo = np.tile(A_demo, b_demo) * np.repeat(B_demo, a_demo)
print("full        :", full_demo)
print(
    "full as a (b, a) matrix equals the outer product B A^T:",
    np.array_equal(full_demo.reshape(b_demo, a_demo), np.outer(B_demo, A_demo)),
)

# %% [markdown]
# ### Its backward pass
#
# Given $d\mathrm{full}$ (length L), reshape it to $dF$ of shape (b, a). Since
# $F_{qr} = B_q A_r$, each $A_r$ appears in column $r$ and each $B_q$ in row $q$:
#
# $$dA_r = \sum_q dF_{qr}\, B_q, \qquad dB_q = \sum_r dF_{qr}\, A_r .$$
#
# The tiled vector collects its gradient from all $b$ copies, the repeated one
# from all $a$ copies. Checked against central differences:


# %%
def tile_repeat(A, Bv):
    return np.tile(A, Bv.size) * np.repeat(Bv, A.size)


def tile_repeat_backward(dfull, A, Bv):
    dF = dfull.reshape(Bv.size, A.size)  # (b, a)
    return dF.T @ Bv, dF @ A  # dA (a,), dB (b,)


A_t, B_t = rng.standard_normal(a_demo), rng.standard_normal(b_demo)
dfull = rng.standard_normal(a_demo * b_demo)
dA, dB = tile_repeat_backward(dfull, A_t, B_t)
err_A = rel_error(dA, numerical_gradient_array(lambda: tile_repeat(A_t, B_t), A_t, dfull))
err_B = rel_error(dB, numerical_gradient_array(lambda: tile_repeat(A_t, B_t), B_t, dfull))
print(f"dA rel_error = {err_A:.1e}, dB rel_error = {err_B:.1e}")
assert max(err_A, err_B) < 1e-9

# %% [markdown]
# ## 2. The factorized dense layer
#
# In minisynth (docstring of `attention.FactorizedDense`) the token first goes
# through the same hidden layer as the Dense Synthesizer,
# $\mathrm{hid} = \mathrm{relu}(x W_1 + b_1)$ split into heads, then head $h$
# computes $A = \mathrm{hid}\,W_a[h] + b_a[h]$ (length a) and
# $B = \mathrm{hid}\,W_b[h] + b_b[h]$ (length b). The option `factors=(a, b)`
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
full = np.tile(A, b) * np.repeat(Bf, a, axis=-1)  # (B, H, T, L): tile A, repeat B
S = full[..., :T]  # only T keys exist
Sm = np.where(np.tril(np.ones((T, T), dtype=bool)), S, -np.inf)  # causal mask
P = np.exp(Sm - Sm.max(axis=-1, keepdims=True))
P /= P.sum(axis=-1, keepdims=True)
print("rel_error(our P, cache.probs) =", rel_error(P, cache.probs))
assert rel_error(P, cache.probs) < 1e-13

# %% [markdown]
# The backward pass of the layer chains three pieces we already know: the
# attention core gives $dS$; padding it with zeros to length L gives
# $d\mathrm{full}$; tile/repeat gives $dA$, $dB$; and then the two small linear
# maps give $dW_a = \sum_{b,t} \mathrm{hid}^\top dA$ (per head),
# $db_a = \sum_{b,t} dA$, the same for $W_b$, $b_b$, and
# $d\mathrm{hid} = dA\, W_a^\top + dB\, W_b^\top$, which continues into the ReLU
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
# The backward pass is the matrix-product rule plus the batch sum:
#
# $$dR_1[:T] = \Big(\sum_b dS_b\Big) R_2[:T], \qquad
#   dR_2[:T] = \Big(\sum_b dS_b\Big)^\top R_1[:T],$$
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
# Left: for one token of head 0, the tiled $A$, the repeated $B$ and their
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
ax1.set_yticks([0, 1, 2], [f"tile(A), a={a}", f"repeat(B), b={b}", "product"])
ax1.set(title=f"one token's row of L={L} logits (head 0)", xlabel="key position j")
for j in range(a, L, a):  # block boundaries of the repeated factor
    ax1.axvline(j - 0.5, color="k", lw=0.5)
fig.colorbar(im, ax=ax1, shrink=0.8)
P_show = np.where(np.tril(np.ones((T, T), dtype=bool)), cache.probs[0, 0], np.nan)
im = ax2.imshow(P_show, cmap="viridis", vmin=0, vmax=1)
ax2.set(title="factorized dense P (b=0, head 0)", xlabel="key position j")
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

# %% [markdown]
# ## 5. Parameter counts: minisynth against the paper
#
# Every kind shares the value and output projections, $2C^2 + 2C$; we count
# what each kind adds on top of that. Three columns should agree:
#
# * `count_params`: `attention.count_params(kind, C, H, L)` minus $2C^2 + 2C$,
#   computed from the layer's shapes without allocating anything;
# * the formula in the kind's docstring in `minisynth/attention.py`;
# * Table 1 of the paper, which gives $|\theta|$ of each synthesizing function
#   **without biases**: dot product $2d^2$, Dense $d^2 + d\ell$, factorized
#   Dense $d^2 + d(k_1 + k_2)$, Random $\ell^2$, factorized Random $2\ell k$.
#   We evaluate it with $d = C$, $\ell = L$, $(k_1, k_2) = (a, b)$. The
#   projections ($W_q$, $W_k$, $W_1$) serve all heads at once, as here; a Random
#   R (or $R_1, R_2$) belongs to one head, so those terms are multiplied by H.
#
# The difference between minisynth and the paper's formula is then exactly
# the biases. A mixture adds its parts plus H mixture logits per component
# (tutorial 05). Two sizes: minisynth's default model and a base-Transformer
# width.


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
    return sum(per_kind[q] for q in parts) + alpha


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
    return sum(per_kind[q] for q in kind.split("+"))


PAPER_TEXT = {
    "vanilla": "2d²",
    "dense": "d² + dℓ",
    "factorized_dense": "d² + d(k₁+k₂)",
    "random": "ℓ² per head",
    "random_fixed": "ℓ² per head, frozen",
    "factorized_random": "2ℓk per head",
    "dense+vanilla": "sum of the parts",
    "random+vanilla": "sum of the parts",
}
SIZES = {"minisynth default": (128, 4, 128), "base width": (512, 8, 512)}
rows = []
for size_name, (Cs, Hs, Ls) in SIZES.items():
    for kind, paper_text in PAPER_TEXT.items():
        synth = attention.count_params(kind, Cs, Hs, Ls) - (2 * Cs * Cs + 2 * Cs)
        doc = docstring_formula(kind, Cs, Hs, Ls)
        assert synth == doc, (kind, synth, doc)  # the docstrings tell the truth
        paper = paper_formula(kind, Cs, Hs, Ls)
        rows.append(
            {
                "size": f"{size_name} (C={Cs}, H={Hs}, L={Ls})",
                "kind": kind,
                "count_params - (2C²+2C)": synth,
                "paper Table 1": paper_text,
                "paper value": paper,
                "difference (biases, alpha)": synth - paper,
                "whole layer": attention.count_params(kind, Cs, Hs, Ls),
            }
        )

columns = list(rows[0])
md = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
for r in rows:
    md.append(
        "| " + " | ".join(f"{r[c]:,}" if isinstance(r[c], int) else r[c] for c in columns) + " |"
    )
table_md = "\n".join(md) + "\n"
print(table_md)
(OUT / "04_params.md").write_text(table_md, encoding="utf-8")
with open(OUT / "04_params.csv", "w", newline="", encoding="utf-8") as fcsv:
    writer = csv.DictWriter(fcsv, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
print("saved", OUT / "04_params.md", "and", OUT / "04_params.csv")

# %% [markdown]
# Reading the table: at L = 512 one Random head costs $L^2 = 262{,}144$
# numbers, so eight heads cost twice an entire dot-product layer; $k = 8$ cuts
# that 32-fold ($L^2 / 2Lk = L / 2k$). Dense pays
# $C L$ for its second layer; factorizing with $a + b = 16 + 32$ instead of
# $L = 512$ leaves mostly the $C^2$ first layer.
#
# ## 6. Picture: the same counts as a bar chart

# %%
kinds = list(PAPER_TEXT)


def short(n):
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


fig = Figure(figsize=(12, 5.5), layout="constrained")
ax = fig.subplots()
width = 0.4
for i, (size_name, (Cs, Hs, Ls)) in enumerate(SIZES.items()):
    vals = [r["count_params - (2C²+2C)"] for r in rows if r["size"].startswith(size_name)]
    xs = np.arange(len(kinds)) + (i - 0.5) * width
    bars = ax.bar(xs, vals, width, label=f"{size_name} (C={Cs}, H={Hs}, L={Ls})")
    ax.bar_label(bars, labels=[short(v) for v in vals], fontsize=8, padding=2)
fixed = kinds.index("random_fixed")
ax.text(fixed, 2e3, "0 trainable\n(R is a buffer)", ha="center", fontsize=9)
ax.set_yscale("log")
ax.set_ylim(1e3, 1e7)
ax.set_xticks(np.arange(len(kinds)), kinds, rotation=20, ha="right")
ax.set_ylabel("trainable parameters per layer (log scale)")
ax.set_title("what each attention kind adds to the shared value/output projections (2C² + 2C)")
ax.legend(loc="upper left", ncols=2)
path = OUT / "04_params.png"
fig.savefig(path, dpi=100)
print("saved", path)
fig  # noqa: B018  (a notebook displays a bare last expression: the figure)
