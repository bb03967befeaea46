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
# # 10 · Attention in tiles: long context without the T x T maps
#
# Tutorials 01-05 compute attention as the paper writes it: the logits S, the
# probabilities P = softmax(S) (each B x H x T x T) and then P v. The backward
# pass needs P again, so a training step keeps it, and dP and dS as large. At a
# fixed number of tokens per batch (B T fixed) that is B H T^2 = (B T) H T numbers
# per map: **linear in T**, and at T = 4096 gigabytes per layer. This tutorial:
#
# 1. derives the **online softmax**: softmax(s) v over a row computed one block of
#    keys at a time, keeping three running numbers per row instead of the row;
# 2. derives the **backward in tiles**: P recomputed tile by tile from one saved
#    number per row (its log-sum-exp), and dS without the whole of dP;
# 3. writes **every kind's logits as pieces** that give any tile: Dense and
#    factorized Random as dot products, Random as a table, factorized Dense from
#    its factors, mixtures by weighting the queries; and checks the library's
#    tiled layer (`minisynth.fast.tiled`) against the reference;
# 4. **measures** a step's memory against T at fixed tokens, tiled and full;
# 5. **reads the efficiency table** of `benchmarks/bench_length.py` (the Long Range
#    Arena table in miniature): where synthetic attention saves work, and where
#    it does not.
#
# `MINISYNTH_TUTORIAL_TINY=1` shrinks the sizes; figures go to `tutorials/output/`
# or `$MINISYNTH_TUTORIAL_OUT`.

# %%
import json
import os
import tracemalloc
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from minisynth import ModelConfig, SynthesizerLM, attention, layers
from minisynth.fast import tiled

TINY = os.environ.get("MINISYNTH_TUTORIAL_TINY", "0") not in ("", "0")
try:
    HERE = Path(__file__).resolve().parent  # run as a script
except NameError:
    HERE = Path.cwd()  # run as a notebook: Jupyter starts in the notebook's folder
OUT = Path(os.environ.get("MINISYNTH_TUTORIAL_OUT", HERE / "output"))
OUT.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
print(f"tiny={TINY}, tiles of {tiled.TILE} rows and columns in the library")

# %% [markdown]
# ## 1. The online softmax
#
# One row i of attention: logits s_j (j = 0..T-1), values v_j. The output is
#
#     o = sum_j exp(s_j - m) v_j / l,   m = max_j s_j,   l = sum_j exp(s_j - m)
#
# (subtracting the maximum m changes nothing, and keeps exp from overflowing).
# Now read the keys in blocks. After the blocks seen so far keep
#
#     m    the largest logit seen,
#     l    sum over seen j of exp(s_j - m),
#     acc  sum over seen j of exp(s_j - m) v_j.
#
# A new block with logits s_j, j in the block, has its own maximum; the new running
# maximum is m' = max(m, max of the block). Every term kept so far was computed
# against m, and exp(s_j - m') = exp(s_j - m) exp(m - m'): so multiply l and acc by
# exp(m - m') and add the block's own terms against m':
#
#     l'   = l exp(m - m') + sum_block exp(s_j - m')
#     acc' = acc exp(m - m') + sum_block exp(s_j - m') v_j
#
# After the last block o = acc / l, exactly the softmax's output; the first block
# starts from m = -inf, l = 0, acc = 0 (exp(-inf) = 0 makes the rescaling vanish).
# The row never exists whole: memory per row is one number m, one l and one acc
# of width hs. The log-sum-exp of the row, lse = m + log l, is the one number the
# backward pass will need.


# %%
def online_softmax_row(s, v, block):
    """o = softmax(s) @ v for one row, reading the keys ``block`` at a time; and its lse."""
    m, l, acc = -np.inf, 0.0, np.zeros(v.shape[1])
    for j0 in range(0, len(s), block):
        s_blk, v_blk = s[j0 : j0 + block], v[j0 : j0 + block]
        m_new = max(m, s_blk.max())
        rescale = np.exp(m - m_new)  # 0 on the first block
        e = np.exp(s_blk - m_new)
        l = l * rescale + e.sum()
        acc = acc * rescale + e @ v_blk
        m = m_new
    return acc / l, m + np.log(l)


T_row = 50
s = rng.normal(0, 3, T_row)
v = rng.normal(size=(T_row, 4))
p = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
for block in (1, 7, 16, T_row):
    o, lse = online_softmax_row(s, v, block)
    print(f"block {block:2d}: |o - softmax(s) v| = {np.abs(o - p @ v).max():.1e}, "
          f"|lse - log sum exp s| = {abs(lse - np.log(np.exp(s).sum())):.1e}")  # fmt: skip

# %% [markdown]
# Every block size gives the softmax's output to float64 rounding. The library's
# kernel does this for a whole strip of rows at once: S for up to 1,024 query rows
# against 128 keys (one BLAS product), the running maxima of those rows, the
# exponentials, and acc += P_tile v_tile (another product). Causal attention
# visits only the key tiles at or left of the diagonal: the tiles wholly above it
# are never computed, which halves the work.
#
# ## 2. The backward pass, tile by tile
#
# Tutorial 01 derived dS = P * (dP - rowsum(dP * P)) with dP = do v^T. Three
# things make it work in tiles:
#
# * **P from lse.** P_ij = exp(S_ij - lse_i): one saved number per row gives back
#   any entry of P, exactly the forward's probability. So the backward recomputes
#   S for each tile (one product again) and exponentiates; nothing of size T x T
#   was saved.
# * **The row sum without dP.** rowsum_j(dP_ij P_ij) = sum_j (do_i . v_j) P_ij =
#   do_i . (sum_j P_ij v_j) = do_i . o_i. Call it Delta_i: one dot product per row,
#   from the saved output, before any tile is visited.
# * **Accumulate.** With dS_ij = P_ij (dP_ij - Delta_i) for the tile: dv_j +=
#   P_ij do_i, dq_i += dS_ij k_j, dk_j += dS_ij q_i. Each tile adds its share; a
#   gradient of a parameter that *is* logits (Random's R) adds dS itself, summed
#   over the batch.
#
# Below, a causal layer of one head written both ways in NumPy on a small example:
# the reference (whole S and P) and tiles of 5 (T = 23, not a multiple of 5).


# %%
def tiled_attention(q, k, v, block):
    """Causal softmax(q k^T) v in tiles: (o, lse), and the backward from lse."""
    T = len(q)
    o, lse = np.zeros_like(v), np.zeros(T)
    for i0 in range(0, T, block):
        rows = slice(i0, min(i0 + block, T))
        m, l, acc = np.full(rows.stop - i0, -np.inf), np.zeros(rows.stop - i0), 0.0
        for j0 in range(0, rows.stop, block):  # key tiles up to the diagonal only
            cols = slice(j0, min(j0 + block, rows.stop))
            S = q[rows] @ k[cols].T  # (tile rows, tile cols)
            i, j = np.arange(rows.start, rows.stop)[:, None], np.arange(cols.start, cols.stop)
            S = np.where(j <= i, S, -np.inf)  # causal mask inside the diagonal tile
            m_new = np.maximum(m, S.max(axis=1))
            e = np.exp(S - m_new[:, None])
            rescale = np.exp(m - m_new)
            l = l * rescale + e.sum(axis=1)
            acc = acc * rescale[:, None] + e @ v[cols]
            m = m_new
        o[rows], lse[rows] = acc / l[:, None], m + np.log(l)
    return o, lse


def tiled_attention_backward(do, q, k, v, o, lse, block):
    T = len(q)
    delta = (do * o).sum(axis=1)  # (T,) Delta_i = do_i . o_i = rowsum(dP * P)
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    for i0 in range(0, T, block):
        rows = slice(i0, min(i0 + block, T))
        for j0 in range(0, rows.stop, block):
            cols = slice(j0, min(j0 + block, rows.stop))
            i, j = np.arange(rows.start, rows.stop)[:, None], np.arange(cols.start, cols.stop)
            S = np.where(j <= i, q[rows] @ k[cols].T, -np.inf)
            P = np.exp(S - lse[rows, None])  # the forward's probabilities, recomputed
            dP = do[rows] @ v[cols].T
            dS = P * (dP - delta[rows, None])
            dv[cols] += P.T @ do[rows]
            dq[rows] += dS @ k[cols]
            dk[cols] += dS.T @ q[rows]
    return dq, dk, dv


T_small, hs = (11, 3) if TINY else (23, 4)
q, k, v = (rng.normal(size=(T_small, hs)) for _ in range(3))
do = rng.normal(size=(T_small, hs))
# the reference, as tutorial 01 wrote it: the whole (T,T) maps
o_full, core = layers.attention_core_forward(q[None, None] @ k[None, None].swapaxes(-1, -2),
                                             v[None, None], True)  # fmt: skip
dS_full, dv_full = layers.attention_core_backward(do[None, None], core)
dq_full, dk_full = (dS_full @ k)[0, 0], (dS_full.swapaxes(-1, -2) @ q)[0, 0]

o_t, lse_t = tiled_attention(q, k, v, block=5)
dq_t, dk_t, dv_t = tiled_attention_backward(do, q, k, v, o_t, lse_t, block=5)
for name, a, b in [("o", o_t, o_full[0, 0]), ("dq", dq_t, dq_full), ("dk", dk_t, dk_full),
                   ("dv", dv_t, dv_full[0, 0])]:  # fmt: skip
    print(f"{name}: tiled - full = {np.abs(a - b).max():.1e}")

# %% [markdown]
# The tiled forward and backward are the full ones to float64 rounding, and the
# largest array either kept was a 5 x 5 tile plus one number per row (lse).
#
# ## 3. Every kind as pieces of a tile
#
# For the dot product the tile is q_rows k_cols^T. The Synthesizer's logits are no
# dot product of two tokens, but each kind can still give any tile from arrays of
# size O(T) (`minisynth.fast.tiled`, the module docstring):
#
# * **Dense**: S_ij = hid_i . W2[:, j] + b2[j] = [hid_i, 1] . [W2[:, j], b2[j]]:
#   a dot product of width hs + 1, whose "keys" are columns of a parameter,
#   shared by the batch. No token-token interaction, and still one product per tile.
# * **factorized Random**: S_ij = R1_i . R2_j, both parameters.
# * **Random**: S_ij = R[h, i, j]: the logits *are* the parameter, a table the
#   tile reads. It is as large as R itself: the tiled path stores no map, but
#   the Random Synthesizer's L^2 parameters per head stay, by the paper's design.
# * **factorized Dense**: S_ij = A_i[j mod a] * B_i[j div a], gathered per entry.
# * **mixtures**: S = sum_n w_n S_n. Weight each component's queries (w_n q_n) and
#   concatenate the features: [w_1 q_1, w_2 q_2] . [k_1, k_2] = w_1 q_1.k_1 +
#   w_2 q_2.k_2, one product for all; tables add with their weights. The weight's
#   gradient comes back from the feature gradients: dw_n = sum_i q_n,i . dq'_n,i.
#
# The library builds these pieces from a layer; the whole logits rebuilt from them
# equal the reference layer's own mixture of logits:

# %%
C, H, L = (8, 2, 40) if TINY else (16, 2, 300)
kind = "dense+random+vanilla"
ref = attention.build(kind, C, H, L, seed=1, dtype=np.float64)
fast = attention.build(kind, C, H, L, seed=1, dtype=np.float64, backend="numba", tiles="always")
for name in ref.params:  # random values everywhere (the mixture logits too)
    ref.params[name][...] = rng.uniform(-1, 1, ref.params[name].shape)
    fast.params[name][...] = ref.params[name]
x = rng.normal(size=(2, L - 3, C))  # T = L - 3: no multiple of the tile
y_ref, cache_ref = ref.forward(x)
y_fast, cache = fast.forward(x)
print(type(cache_ref).__name__, "vs", type(cache).__name__)
print(
    "pieces: q", cache.pieces.q.shape, "k", cache.pieces.k.shape, "table", cache.pieces.table.shape
)
mixed = sum(w[:, None, None] * S_n for w, S_n in zip(cache_ref.mix_weights.T, cache_ref.logits,
                                                     strict=True))  # fmt: skip
print(f"logits from the pieces - the reference's mixture: "
      f"{np.abs(tiled.full_logits(cache.pieces) - mixed).max():.1e}")  # fmt: skip
dy = rng.normal(size=y_ref.shape)
dx_ref, g_ref = ref.backward(dy, cache_ref)
dx_fast, g_fast = fast.backward(dy, cache)
worst = max(np.abs(g_fast[n] - g_ref[n]).max() for n in g_ref)
print(
    f"tiled layer - reference: y {np.abs(y_fast - y_ref).max():.1e}, "
    f"dx {np.abs(dx_fast - dx_ref).max():.1e}, worst parameter gradient {worst:.1e}"
)

# %% [markdown]
# q has 2 hs + 1 columns per head: vanilla's hs and Dense's hs + 1; the table is
# Random's R, weighted. The tiled layer gives the reference's output and every
# gradient (alpha's included) to float64 rounding. The test suite checks this for
# every kind and mixture, causal and not, in float32 and float64, for lengths across
# tile edges and T = 1 (`tests/test_tiled.py`).
#
# ## 4. Memory at a fixed number of tokens
#
# A training step of a small model, B T fixed, T growing: NumPy's allocations
# traced with `tracemalloc` (the peak of one `loss_and_grads`), the full path
# (`tiles="never"`) against tiles (`tiles="always"`). `minisynth train` chooses
# by itself: tiles from `attention.TILED_FROM` positions on (`--tiles` overrides).

# %%
TOKENS = 512 if TINY else 4096
lengths = [64, 128, 256] if TINY else [128, 256, 512, 1024, 2048]
peak_mb = {}
for tiles in ("never", "always"):
    for T in lengths:
        config = ModelConfig(d_model=32, n_heads=4, n_layers=2, max_len=T, attention="vanilla")
        model = SynthesizerLM(config, backend="numba", tiles=tiles)
        idx = rng.integers(0, 256, (TOKENS // T, T))
        model.loss_and_grads(idx, idx)  # compile, warm
        tracemalloc.start()
        model.loss_and_grads(idx, idx)
        peak_mb[tiles, T] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    print(f"{tiles:6s}: " + ", ".join(f"T={T}: {peak_mb[tiles, T]:.0f} MB" for T in lengths))
growth = {t: peak_mb[t, lengths[-1]] / peak_mb[t, lengths[0]] for t in ("never", "always")}
print(
    f"from T={lengths[0]} to T={lengths[-1]}: full x{growth['never']:.1f}, "
    f"tiled x{growth['always']:.2f}"
)

fig = Figure(figsize=(6, 4), layout="constrained")
ax = fig.add_subplot()
for tiles, label in (("never", "full maps"), ("always", "tiles")):
    ax.loglog(lengths, [peak_mb[tiles, T] for T in lengths], "o-", label=label)
ax.set_xlabel(f"T (B x T = {TOKENS} tokens)")
ax.set_ylabel("peak NumPy memory of a step, MB")
ax.set_title("10_step_memory.png: a step's memory against T")
ax.legend()
fig.savefig(OUT / "10_step_memory.png", dpi=100)
fig  # noqa: B018  (a notebook displays a bare last expression: the figure)

# %% [markdown]
# The full path's peak grows in proportion to T (its maps hold (B T) H T numbers);
# the tiled step's stays flat, since all it keeps per layer is O(B T) (q, k, v,
# o and one lse per row). The printed factors above are this run's.
#
# ## 5. Reading the efficiency table
#
# `benchmarks/bench_length.py` times a whole training step of the bench model
# (d_model 256, 8 heads, 4 layers) for every kind and T from 128 to 4096 at B T =
# 4096 tokens, minisynth (tiled and full) and PyTorch (vanilla through
# `scaled_dot_product_attention`), each in its own process, and writes the table of
# `BENCHMARKS.md`. Its raw numbers are committed in `benchmarks/length.json`:

# %%
saved = json.loads((HERE.parent / "benchmarks" / "length.json").read_text())
bench = saved["runs"]  # "path|kind|T" -> step_ms, step_mb, setup_mb
print(f"measured at minisynth {saved['meta']['commit']} on {saved['meta']['cpu']}")


def cell(path, kind, T, field="step_ms"):
    return bench.get(f"{path}|{kind}|{T}", {}).get(field)


bench_lengths = sorted({int(key.split("|")[2]) for key in bench})
bench_kinds = list(dict.fromkeys(key.split("|")[1] for key in bench))
print("step ms (tiled path) and its ratio to vanilla's at the same T:")
for kind in bench_kinds:
    row = []
    for T in bench_lengths:
        t, base = cell("tiled", kind, T), cell("tiled", "vanilla", T)
        row.append(f"{t:7.0f} ({t / base:.2f})" if t and base else "    n/a")
    print(f"  {kind:18s}" + " ".join(row))
for T in bench_lengths:
    fastest = min(bench_kinds, key=lambda kind: cell("tiled", kind, T) or np.inf)
    print(
        f"fastest kind at T={T}: {fastest}, "
        f"{cell('tiled', 'vanilla', T) / cell('tiled', fastest, T):.2f}x vanilla's speed"
    )
print("set-up memory (the weights), MB:")
for kind in ("vanilla", "random", "factorized_random"):
    print(f"  {kind:18s}" + " ".join(f"{cell('tiled', kind, T, 'setup_mb'):7.0f}"
                                     for T in bench_lengths))  # fmt: skip

fig2 = Figure(figsize=(11, 4), layout="constrained")
ax_t, ax_m = fig2.subplots(1, 2)
for kind in bench_kinds:
    ax_t.loglog(bench_lengths, [cell("tiled", kind, T) for T in bench_lengths], "o-", label=kind)
    ax_m.loglog(bench_lengths, [cell("tiled", kind, T, "setup_mb") for T in bench_lengths],
                "o-", label=kind)  # fmt: skip
ax_t.set_title("training step, ms (tiled)")
ax_m.set_title("set-up memory (the weights), MB")
for ax in (ax_t, ax_m):
    ax.set_xlabel("T (B x T = 4096)")
ax_t.legend(fontsize=7)
fig2.suptitle("10_efficiency.png: benchmarks/length.json")
fig2.savefig(OUT / "10_efficiency.png", dpi=100)
fig2  # noqa: B018

# %% [markdown]
# What to read in it (the printed lines above give this machine's numbers):
#
# * **Where synthetic attention saves work.** Random has no q k^T at all: its tile
#   is read from R, so its forward does one product per tile (P v) where vanilla's
#   does two, and its backward two (dP and P^T do; a frozen R only P^T do) where
#   vanilla's does five. Dense's tile is a
#   product like vanilla's (width hs + 1), but its first layer replaces two
#   projections (queries and keys) with one. In decoding (tutorial 11) the
#   synthetic kinds keep no keys at all.
# * **Where it does not.** Random's R is H L^2 numbers per layer, with its gradient
#   and two AdamW moments: its set-up memory grows as T^2 while every other kind's
#   stays flat, and at T = 4096 its weights alone are gigabytes. Its step time follows:
#   from T = 2048 on, the gradient of R and AdamW's update touch all H L^2 numbers of
#   every layer at every step, and Random falls from the fastest kind at short lengths
#   to the slowest (the ratios above). Tiles remove the maps, not this: it is the price
#   of logits that are parameters, and the reason the paper's factorized Random
#   (2 H L k numbers) exists: compare the fastest kind at each length, printed above.
# * **The quadratic term remains in time.** With tiles the memory is flat, but every
#   kind still computes B H T^2 logits per layer: at fixed tokens the step time
#   grows with T. The table's slopes say how fast.
#
# ## Exercises
#
# 1. In `online_softmax_row`, start from m = 0 instead of -inf. For which logits
#    does the result go wrong, and why does the first block's rescaling then matter?
# 2. The backward uses Delta_i = do_i . o_i. Show that with the causal mask the same
#    identity holds (which j enter the sum?).
# 3. Write factorized Dense's tile as a dot product (hint: a one-hot of width L):
#    why does the library gather A[i, j mod a] B[i, j div a] instead?
# 4. At which T does Random's R (with gradient and two moments, float32) alone
#    take more memory than vanilla's whole step at B T = 4096? Compare with the
#    set-up column of the table.
