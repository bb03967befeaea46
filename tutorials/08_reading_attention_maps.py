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
# # 08 · Reading attention maps
#
# An attention map is the matrix $P$ of one head: row $i$ is the distribution
# with which position $i$ (the *query*) averages the values of positions
# $j \le i$ (the *keys*). For dot-product attention $P$ depends on the tokens;
# the Synthesizer paper (Tay et al., 2020) asks how much of that matters, and
# calls the maps of its synthetic variants *synthetic alignments*.
#
# Here we train three small language models that differ only in how their
# attention logits are made, and read their maps:
#
# 1. train `dense`, `random` and `vanilla` (dot-product) models briefly with
#    `minisynth.train.train`;
# 2. plot the maps of all three on the same text with `minisynth.viz`;
# 3. put numbers on what we see: row entropy, mean attention distance, mass
#    on the diagonal and on the previous token (`attention_stats`), mass on
#    the spaces of the text (a statistic about content);
# 4. compare models with the Jensen-Shannon divergence of their maps
#    (`js_divergence`), and each model with the uniform map and with its own
#    maps before training;
# 5. feed a second text: the `random` maps do not change at all, the
#    `vanilla` maps do, and the `dense` maps change in a telling way.
#
# Run as a script or as a notebook (jupytext). At full size the three
# training runs take under a minute on two cores (each prints its time);
# `MINISYNTH_TUTORIAL_TINY=1` shrinks them to seconds (the models then learn
# next to nothing, so the maps are close to their initial state). Figures and
# tables go to `tutorials/output/` or `$MINISYNTH_TUTORIAL_OUT`. If training
# is far slower than that on a machine busy with other work, OpenBLAS's
# threads are fighting for the cores: start Python with
# `OPENBLAS_NUM_THREADS=1` (tutorial 09, section 7).

# %%
import os
import time
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib import colors as mcolors
from matplotlib.figure import Figure

from minisynth import ModelConfig, SynthesizerLM
from minisynth.train import TrainConfig, decode, train
from minisynth.viz import (
    CMAP,
    DPI,
    MAX_TICK_LABELS,
    STAT_UNITS,
    attention_maps,
    attention_stats,
    byte_labels,
    encode_text,
    format_stats_table,
    is_input_independent,
    js_divergence,
    load_model,
    plot_attention_grid,
    plot_compare,
    show_figure,
)

TINY = os.environ.get("MINISYNTH_TUTORIAL_TINY", "0") not in ("", "0")
try:
    HERE = Path(__file__).resolve().parent  # run as a script
except NameError:
    HERE = Path.cwd()  # run as a notebook: Jupyter starts in the notebook's folder
OUT = Path(os.environ.get("MINISYNTH_TUTORIAL_OUT", HERE / "output"))
OUT.mkdir(parents=True, exist_ok=True)
KINDS = ("dense", "random", "vanilla")
print(f"tiny={TINY}, output folder: {OUT}")


# %% [markdown]
# ## 1. Three models, one recipe
#
# The three models share everything (width, depth, heads, context, seed,
# optimiser, data and number of steps) except the attention logits $S$ of
# each head (tutorials 01 to 03 derive them):
#
# | kind | logits of row i | depends on |
# |---|---|---|
# | `vanilla` | $S_{ij} = q_i \cdot k_j / \sqrt{hs}$ | the query token *and* every key token |
# | `dense` | $S_{i,:} = \mathrm{relu}(x_i W_1 + b_1) W_2 + b_2$ | the query token only |
# | `random` | $S_{i,:} = R_{i,:}$, a learned matrix | nothing: the same for every input |
#
# A context of 32 bytes keeps each map small enough to label every byte.
# `train(model_config, train_config, out_dir)` builds the model from the
# config, trains it, evaluates the validation bits per character (BPC) at the
# end and writes a checkpoint into `out_dir` (tutorial 07 explains the loop).

# %%
if TINY:
    shape = dict(d_model=16, n_heads=2, n_layers=1, max_len=16)
    train_config = TrainConfig(
        steps=8, batch_size=4, warmup_steps=2, eval_interval=8, log_interval=4, sample_length=0
    )
else:
    shape = dict(d_model=64, n_heads=4, n_layers=2, max_len=32)
    train_config = TrainConfig(
        steps=1000,
        batch_size=32,
        lr=3e-3,
        min_lr=3e-4,
        warmup_steps=100,
        eval_interval=1000,  # one evaluation, at the end: it walks the whole validation split
        log_interval=50,
        sample_length=0,
    )
results = {}
for kind in KINDS:
    model_config = ModelConfig(attention=kind, **shape)
    t0 = time.perf_counter()
    results[kind] = train(
        model_config, train_config, OUT / "08_runs" / kind, force=True, progress=False
    )
    print(
        f"{kind:8s} validation BPC {results[kind]['val_bpc']:.3f} "
        f"after {results[kind]['steps']} steps, {time.perf_counter() - t0:.1f} s"
    )
bpc = {kind: results[kind]["val_bpc"] for kind in KINDS}
best, worst = min(bpc, key=bpc.get), max(bpc, key=bpc.get)
print(
    f"best {best} ({bpc[best]:.3f}), worst {worst} ({bpc[worst]:.3f}): "
    f"the three lie within {bpc[worst] - bpc[best]:.3f} bits per character"
)

# %% [markdown]
# The last line gives the spread of the three validation BPCs. Ranking the
# kinds is not the point here (that takes longer runs and several seeds of
# each); reading their maps is.
# We load each trained model back from its checkpoint with `viz.load_model`,
# which returns the model and the raw checkpoint contents. We also rebuild
# each model as it was **before** training: `train` builds its model with
# `SynthesizerLM(model_config, seed=train_config.seed)`, so the same call gives
# the initial parameters, and later we can measure how far training moved the
# maps.

# %%
models = {kind: load_model(results[kind]["checkpoint"])[0] for kind in KINDS}
initial = {
    kind: SynthesizerLM(ModelConfig(attention=kind, **shape), seed=train_config.seed)
    for kind in KINDS
}
T = shape["max_len"]
n_layers, H = shape["n_layers"], shape["n_heads"]
for kind, model in models.items():
    print(f"{kind:8s} {model.num_params():7,d} parameters")

# %% [markdown]
# ## 2. The maps on one text
#
# `attention_maps(model, tokens)` runs the model on one sequence of bytes and
# returns, for every layer, the attention probabilities of shape (H, T, T).
# `encode_text` turns a string into its UTF-8 bytes (the model reads bytes).
# We cut the text to the model's context of T bytes.
#
# `plot_compare` draws one row per model and one column per head, on a shared
# colour scale; the future (above the diagonal) is white because the causal
# mask forbids it, which is not the same as "zero attention". The colour scale
# is a square root by default, so that weak, spread-out attention is still
# visible.

# %%
TEXT_A = "the cat sat on the mat. the dog ran to the park. "
TEXT_B = "the dog ran to the car. the cat sat on the hat. "
tokens_a = encode_text(TEXT_A)[:T]
tokens_b = encode_text(TEXT_B)[:T]
print("text A:", repr(decode(tokens_a)))
print("text B:", repr(decode(tokens_b)))
maps_a = {kind: attention_maps(model, tokens_a) for kind, model in models.items()}
maps_b = {kind: attention_maps(model, tokens_b) for kind, model in models.items()}
print("per layer:", [m.shape for m in maps_a["vanilla"]])

for layer in range(n_layers):
    labels = [
        kind + (", input-independent" if is_input_independent(kind) else "") for kind in KINDS
    ]
    path = plot_compare(
        [maps_a[kind][layer] for kind in KINDS],
        OUT / f"08_compare_layer{layer}.png",
        labels=labels,
        tokens=tokens_a,
        title=f"layer {layer} of three models on the same text",
    )
    print("saved", path)
    show_figure(path)
path = plot_attention_grid(
    maps_a["vanilla"], OUT / "08_vanilla_all_layers.png", tokens=tokens_a, kind="vanilla"
)
print("saved", path)
show_figure(path)

# %% [markdown]
# What to look for in the figures:
#
# * row 0 can only attend to itself, so its one cell is always 1 (yellow);
#   the next rows have few choices, so they are bright too, for every kind.
# * a bright **diagonal** means a head mostly looks at the current byte;
#   a bright line **just below** the diagonal, at the previous byte. For
#   predicting the next byte the last one or two bytes carry most of the
#   information, so look for such local patterns in heads of every kind
#   (section 3 measures them).
# * a **first-column** stripe means attention parked on position 0, a common
#   "nothing to do" state: position 0 is visible from every row.
# * the `random` rows are fixed patterns over **positions**. They can still
#   be useful (e.g. "always look 1 back"), but they cannot say "look at the
#   last space" because they do not know where it is.
# * the `vanilla` rows vary with the **content**: a bright cell far from the
#   diagonal at a repeated byte (a space, the `t` of "the") is a head
#   matching tokens, something neither synthesizer can do.
#
# ## 3. Alignment statistics
#
# Looking is not measuring. `attention_stats(probs)` summarises the maps of a
# layer, per head, averaged over rows (query positions $i$):
#
# * **entropy** $-\sum_j P_{ij}\ln P_{ij}$ in nats: 0 for a row that puts all
#   its weight on one key, $\ln(i+1)$ for a row spread evenly over its $i+1$
#   visible keys. Low entropy = sharp, focused attention.
# * **distance** $\sum_j P_{ij}\,|i-j|$: how far back a head looks on average.
# * **diagonal** $P_{ii}$: mass on the current byte.
# * **previous** $P_{i,i-1}$, over rows $i \ge 1$: mass on the byte before.
#
# These numbers depend on T: early rows have few keys, so even uniform
# attention is sharp there. A fair reference is the **uniform causal map**,
# row $i$ equal to $1/(i+1)$ on its visible keys: a head with no preference
# at all. We compute its statistics with the same function.

# %%
uniform = np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None]  # (T, T) rows sum to 1
uniform_stats = attention_stats(uniform[None])  # one "head"
stats = {kind: [attention_stats(m) for m in maps_a[kind]] for kind in KINDS}  # per layer
blocks = [("uniform", uniform_stats)]
for kind in KINDS:
    blocks += [(f"{kind} L{layer}", s) for layer, s in enumerate(stats[kind])]
print(format_stats_table(blocks))
for key, meaning in STAT_UNITS.items():
    print(f"  {key}: {meaning}")

uniform_entropy = float(uniform_stats["entropy_nats"][0])
print(f"\nentropy against the uniform map's {uniform_entropy:.3f} nats, over all heads:")
below = {}  # kind -> mean over layers and heads of (uniform entropy - head entropy)
for kind in KINDS:
    entropy = np.stack([s["entropy_nats"] for s in stats[kind]])  # (n_layers, H)
    below[kind] = float(uniform_entropy - entropy.mean())
    layer, head = np.unravel_index(np.argmin(entropy), entropy.shape)
    print(
        f"  {kind:8s} mean {entropy.mean():.3f} ({below[kind]:.3f} below uniform); sharpest: "
        f"layer {layer} head {head} at {entropy[layer, head]:.3f} nats"
    )
order = sorted(KINDS, key=below.get, reverse=True)
print(
    f"on average the {order[0]} heads are the sharpest and the {order[-1]} heads the closest "
    f"to uniform ({below[order[-1]]:.3f} nats below it)"
)

# %% [markdown]
# Reading the table (every number is for text A):
#
# * heads whose entropy is well **below** the uniform reference have learned
#   to focus; a head close to it still spreads its weight evenly;
# * a **distance** much smaller than the uniform one, together with a large
#   **previous** or **diagonal** mass, is a local head: the bigram-like
#   pattern a byte-level model learns first;
# * the lines under the table rank the three models by how far their heads
#   have sharpened. `dense` heads can become local through the position
#   embedding inside $x_i$. Expect the `random` heads to move away from
#   uniform most slowly: every entry of R is a separate parameter that
#   learns only from the gradient of its own logit, and only when it is
#   visible, and Adam moves each entry by about the learning rate per step
#   (`TrainConfig.synthetic_lr_scale` raises the learning rate of R alone).
#   AdamW's default filter does not decay R: decay would pull R back towards
#   0, which *is* uniform attention.
#
# These four statistics are about **positions**: a `random` head could score
# anything on them. A statistic about **content** separates the kinds: how
# much attention goes to the spaces of the text? A head that tracks word
# boundaries puts a lot of its mass there, wherever the spaces happen to be.
# The uniform map puts on them just the fraction of visible keys that are
# spaces, and a `random` head cannot do systematically better, because it
# does not know where the spaces are. For every head we compute the mean over
# rows of $\sum_{j \le i,\ \text{byte}_j = \text{space}} P_{ij}$.

# %%
is_space = (tokens_a == ord(" ")).astype(np.float64)  # (T,) 1 at the key columns holding a space
uniform_space = np.array([(uniform @ is_space).mean()])  # (1,) the uniform map's value
space_mass = {}  # (kind, layer) -> (H,) per head
for kind in KINDS:
    for layer, m in enumerate(maps_a[kind]):
        space_mass[(kind, layer)] = (m @ is_space).mean(axis=-1)  # (H,) mean over rows
        values = " ".join(f"{v:.3f}" for v in space_mass[(kind, layer)])
        print(f"{kind:8s} layer {layer}: mass on spaces per head {values}")
print(f"uniform causal map: {uniform_space[0]:.3f}")

print("\nthe head with the most mass on spaces, per model:")
for kind in KINDS:
    per_layer = np.stack([space_mass[(kind, layer)] for layer in range(n_layers)])  # (n_layers, H)
    layer, head = np.unravel_index(np.argmax(per_layer), per_layer.shape)
    top = per_layer[layer, head]
    print(
        f"  {kind:8s} layer {layer} head {head}: {top:.3f}, {top / uniform_space[0]:.2f} times "
        f"the uniform map's {uniform_space[0]:.3f}; farthest of its heads from uniform: "
        f"{np.abs(per_layer - uniform_space[0]).max():.3f} away"
    )
heads = [(kind, layer, head) for kind in KINDS for layer in range(n_layers) for head in range(H)]
kind, layer, head = max(heads, key=lambda k: space_mass[k[:2]][k[2]])  # the top head overall
top = space_mass[(kind, layer)][head]
if top > 0.5:
    print(
        f"{kind} layer {layer} head {head} puts most of its weight ({top:.3f}) on spaces: "
        f"its vertical stripes at the space columns are in 08_compare_layer{layer}.png above, "
        "and drawn alone below"
    )
else:
    print(f"no head puts most of its weight on spaces in this run (the most is {top:.3f})")


def head_figure(probs, tokens, title):
    """One head's map (T, T) with the key columns that hold a space marked."""
    fig = Figure(figsize=(6.4, 5.6), layout="constrained")
    ax = fig.add_subplot()
    masked = np.where(np.tril(np.ones_like(probs)) > 0, probs, np.nan)  # the future: blank
    image = ax.imshow(masked, cmap=CMAP, norm=mcolors.PowerNorm(0.5, vmin=0, vmax=1))
    labels = byte_labels(tokens)
    ax.set_xticks(range(len(tokens)), labels, fontsize=6)
    ax.set_yticks(range(len(tokens)), labels, fontsize=6)
    for j in np.flatnonzero(tokens == ord(" ")):
        ax.axvline(j, color="tab:red", linewidth=0.4, alpha=0.5)
    ax.set_xlabel("key (red lines: spaces)")
    ax.set_ylabel("query")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, shrink=0.8, label="attention (sqrt scale)")
    return fig


fig = head_figure(
    maps_a[kind][layer][head],
    tokens_a,
    f"{kind}, layer {layer}, head {head}: {top:.3f} of its weight on spaces",
)
fig.savefig(OUT / "08_top_space_head.png", dpi=DPI)
fig  # noqa: B018  (a notebook displays a bare last expression: the figure)

# %% [markdown]
# Look for a head whose mass on spaces is several times the uniform value.
# The last line names the top head if it puts most of its weight there (above
# 0.5), and the figure draws it alone: such a head shows bright **vertical
# stripes** at the space columns (marked in red). Each of its rows looks back to the word
# boundaries, wherever they are, which is what a byte-level model needs to
# know where it is inside a word. Only `vanilla` can do that directly;
# `dense` heads can get there only indirectly (in the second layer $x_i$
# already carries some context), and a `random` head's value on text A is
# whatever its fixed pattern over positions happens to give: the last number
# of each model's line says how far from the uniform value its heads landed.
# The tiny run learns too little to show any of it.
#
# We save all the statistics, one row per model, layer and head, with the
# uniform reference first, as Markdown and CSV.

# %%
stat_keys = list(STAT_UNITS)
columns = stat_keys + ["spaces"]
md = ["| model | layer | head | " + " | ".join(columns) + " |"]
md.append("|---|---:|---:|" + "---:|" * len(columns))
csv = ["model,layer,head," + ",".join(columns)]
table_rows = [("uniform causal", "-", 0, uniform_stats, uniform_space)]
for kind in KINDS:
    for layer, s in enumerate(stats[kind]):
        for head in range(H):
            table_rows.append((kind, layer, head, s, space_mass[(kind, layer)]))
for name, layer, head, s, spaces in table_rows:
    values = [float(s[key][head]) for key in stat_keys] + [float(spaces[head])]
    md.append(f"| {name} | {layer} | {head} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    csv.append(f"{name},{layer},{head}," + ",".join(f"{v:.6f}" for v in values))
units = "\n".join(f"* `{k}`: {v}" for k, v in STAT_UNITS.items())
units += "\n* `spaces`: mean attention mass on the key positions that hold a space"
(OUT / "08_stats.md").write_text(
    f"Alignment statistics on {T} bytes of text A, {TEXT_A[:T]!r}.\n\n{units}\n\n"
    + "\n".join(md)
    + "\n",
    encoding="utf-8",
)
(OUT / "08_stats.csv").write_text("\n".join(csv) + "\n", encoding="utf-8")
print("saved", OUT / "08_stats.md", "and", OUT / "08_stats.csv")

# %% [markdown]
# ## 4. How different are two models' maps? Jensen-Shannon divergence
#
# To compare two maps row by row we need a distance between distributions.
# The Jensen-Shannon divergence
#
# $$\mathrm{JS}(p, q) = \tfrac12 \mathrm{KL}(p\,\|\,m) + \tfrac12 \mathrm{KL}(q\,\|\,m),
# \qquad m = \tfrac12 (p + q)$$
#
# is symmetric, finite even when one row puts zero weight where the other
# does not, 0 for identical rows and at most $\ln 2 = 0.693$ nats for rows
# with no key in common. `js_divergence(p, q)` averages it over all rows (and
# heads).
#
# One caveat: heads of two different models are **not paired**. Head 0 of one
# model has no reason to do what head 0 of another does; the order of heads
# is an accident of the initialisation. So besides the head-by-head value we
# also compare the **head-averaged** maps (the mean over heads is again a
# map), which does not depend on the order. Last, each model against the
# uniform map and against its own maps **before training** (the models
# rebuilt in section 1); there the heads are paired, head h before and
# after.

# %%
js_rows = []
layer = n_layers - 1  # the last layer: the one closest to the prediction
pairs = [(a, b) for i, a in enumerate(KINDS) for b in KINDS[i + 1 :]]
for a, b in pairs:
    js_rows.append(
        (
            f"{a} vs {b}",
            js_divergence(maps_a[a][layer], maps_a[b][layer]),
            js_divergence(maps_a[a][layer].mean(axis=0), maps_a[b][layer].mean(axis=0)),
        )
    )
moved = {}  # kind -> (JS from uniform, JS from the initial maps), head by head
for kind in KINDS:
    uniform_heads = np.broadcast_to(uniform, maps_a[kind][layer].shape)  # (H, T, T)
    start = attention_maps(initial[kind], tokens_a)[layer]  # (H, T, T) before training
    moved[kind] = (
        js_divergence(maps_a[kind][layer], uniform_heads),
        js_divergence(maps_a[kind][layer], start),
    )
    js_rows.append(
        (
            f"{kind} vs uniform",
            moved[kind][0],
            js_divergence(maps_a[kind][layer].mean(axis=0), uniform),
        )
    )
    js_rows.append(
        (
            f"{kind} vs its initial",
            moved[kind][1],
            js_divergence(maps_a[kind][layer].mean(0), start.mean(0)),
        )
    )
js_md = [
    f"| layer {layer}, text A | JS head by head (nats) | JS of head-averaged maps (nats) |",
    "|---|---:|---:|",
]
for name, per_head, averaged in js_rows:
    js_md.append(f"| {name} | {per_head:.4f} | {averaged:.4f} |")
    print(f"{name:24s} head by head {per_head:.4f}   head-averaged {averaged:.4f}")
(OUT / "08_js_divergence.md").write_text(
    "Mean Jensen-Shannon divergence (natural log; 0 = identical, ln 2 = 0.693 = disjoint).\n\n"
    + "\n".join(js_md)
    + "\n",
    encoding="utf-8",
)
far_u = max(KINDS, key=lambda k: moved[k][0])
far_i = max(KINDS, key=lambda k: moved[k][1])
near_i = min(KINDS, key=lambda k: moved[k][1])
print(
    f"\nlayer {layer}, head by head: furthest from uniform {far_u} ({moved[far_u][0]:.4f} nats); "
    f"furthest from its initial maps {far_i} ({moved[far_i][1]:.4f}), "
    f"closest to them {near_i} ({moved[near_i][1]:.4f}); "
    f"random: {moved['random'][0]:.4f} from uniform, {moved['random'][1]:.4f} from its start"
)

# %% [markdown]
# The head-averaged divergence is never larger than the head-by-head one for
# the same pair (JS is convex), and the gap says how much of the head-by-head
# value comes from heads that merely sit in a different order or split the
# work differently. The divergence from the uniform map measures how far
# each model is from "no preference at all", the divergence from its initial
# maps how far training moved it; the last line names the extremes. Compare
# them with the entropy ranking of section 3: a model whose heads stayed
# close to the uniform entropy should also sit close to the uniform map.
#
# ## 5. Input-independent maps: a second text
#
# Now the same three models read text B, a different sentence of the same
# length. For each model we take the first layer, average over heads, and
# draw text A, text B and the absolute difference of the two maps.
#
# * `random`: the logits are $R$, whatever the input. The maps must be
#   **identical**, bit for bit.
# * `vanilla`: every logit depends on the query *and* the key bytes, so the
#   maps change wherever the text does.
# * `dense`: in the first layer, row $i$ depends only on the layer's input at
#   position $i$, $x_i = \mathrm{wte}[\text{byte}_i] + \mathrm{wpe}[i]$ (after a
#   layer norm, which acts on each position alone): the byte at position $i$
#   and the position itself. Where both texts have the **same
#   byte at the same position** (the two texts were chosen to share many),
#   the first-layer rows must be identical too, even though the bytes before
#   differ. Dense attention decides where to look from the query alone and
#   never looks at the keys. (In later layers $x_i$ has already mixed in
#   earlier positions, so this no longer holds exactly.)

# %%
same_byte = tokens_a == tokens_b  # (T,) positions where the two texts agree
print(f"{same_byte.sum()} of {T} positions hold the same byte in both texts")
independence = {}
for kind in KINDS:
    pa, pb = maps_a[kind][0], maps_b[kind][0]  # layer 0, (H, T, T) each
    row_diff = np.abs(pa - pb).max(axis=(0, 2))  # (T,) largest change in each row, any head
    independence[kind] = {
        "identical": bool(np.array_equal(pa, pb)),
        "js": js_divergence(pa, pb),
        "same-byte rows": float(row_diff[same_byte].max()),
        "other rows": float(row_diff[~same_byte].max()),
    }
    r = independence[kind]
    print(
        f"{kind:8s} identical maps: {r['identical']!s:5}  JS(A, B) = {r['js']:.4f}  "
        f"largest change in rows with the same byte: {r['same-byte rows']:.1e}, "
        f"in the other rows: {r['other rows']:.1e}"
    )
assert independence["random"]["identical"]  # input-independent: the same map for every text
assert independence["dense"]["same-byte rows"] == 0.0  # layer-0 dense rows see the query only
assert not independence["vanilla"]["identical"]
for layer in range(1, n_layers):
    assert all(
        np.array_equal(a, b)
        for a, b in zip(maps_a["random"][layer], maps_b["random"][layer], strict=True)
    )

# %% [markdown]
# The figure: one row per model; text A, text B (each head-averaged, first
# layer, the square-root colour scale of `plot_compare`), then $|P_A - P_B|$ on
# its own scale; the byte labels beside each map are that map's text. Rows of
# the `dense` model whose query byte is the same in both texts are marked with
# a green triangle: their difference row is exactly 0 (black), as the check
# above established. The drawing code is this tutorial's own, on matplotlib's
# `Figure` objects (no pyplot), with `minisynth.viz`'s byte labels and colours.


# %%
def two_inputs_figure(maps_a, maps_b, *, labels, tokens_a, tokens_b, marked_rows, title):
    """One row per model: its (T, T) map on input A, on input B, and |A - B|."""
    n, T = len(maps_a), maps_a[0].shape[-1]
    diffs = [np.abs(a - b) for a, b in zip(maps_a, maps_b, strict=True)]  # n x (T, T)
    vmax = max(float(m.max()) for m in maps_a + maps_b)
    diff_max = max(float(d.max()) for d in diffs)
    map_norm = mcolors.PowerNorm(gamma=0.5, vmin=0.0, vmax=vmax)
    # input-independent maps give an all-zero difference, which must still draw
    diff_norm = mcolors.PowerNorm(gamma=0.5, vmin=0.0, vmax=max(diff_max, 1e-6))
    future = np.triu(np.ones((T, T), dtype=bool), k=1)  # (T, T) masked: drawn white
    labelled = T <= MAX_TICK_LABELS  # one tick label per byte, or numeric ticks
    columns = [  # (maps, tick labels, heading, colour map, norm)
        (maps_a, byte_labels(tokens_a), "input A", CMAP, map_norm),
        (maps_b, byte_labels(tokens_b), "input B", CMAP, map_norm),
        (diffs, [str(i) for i in range(T)], "|A - B|", "magma", diff_norm),
    ]
    panel = max(2.0, 0.1 * T) if labelled else 3.0  # inches per map
    fig = Figure(figsize=(3 * panel + 3.9, n * (panel + 0.45) + 1.75), layout="constrained")
    axes = fig.subplots(n, 3, squeeze=False)
    images = [None, None, None]
    for r in range(n):
        for c, (maps, ticks, heading, cmap, norm) in enumerate(columns):
            ax = axes[r, c]
            colours = matplotlib.colormaps[cmap].with_extremes(bad="white")
            shown = np.ma.masked_array(maps[r], future)
            images[c] = ax.imshow(shown, cmap=colours, norm=norm, interpolation="nearest")
            ax.set_title(f"{labels[r]}: {heading}", fontsize=9)
            if labelled:  # y labels on every panel: each column has its own text
                ax.set_yticks(np.arange(T), ticks, fontsize=7)
                bottom = ticks if r == n - 1 else []  # x labels once per column
                ax.set_xticks(np.arange(T), bottom, fontsize=7, rotation=90 if c < 2 else 0)
                ax.tick_params(length=1.5, pad=1)
            if c == 0:
                ax.set_ylabel(f"{labels[r]}\nquery position i", fontsize=9)
            if c == 2 and marked_rows[r] is not None:  # triangles just right of the map
                for i in np.flatnonzero(marked_rows[r]):
                    ax.plot(T - 0.5 + 0.7, i, marker="<", color="tab:green", ms=4, clip_on=False)
                ax.set_xlim(-0.5, T - 0.5)
    shrink = min(0.9, 1.8 / n)  # colour bars about two panels tall
    fig.colorbar(images[0], ax=axes[:, :2].ravel().tolist(), shrink=shrink, aspect=30,
                 label="attention probability (sqrt scale)")  # fmt: skip
    # ticks that still label small changes: 0, 5%, 25%, 100% of the largest
    diff_ticks = np.unique(np.floor(diff_max * np.array([0.0, 0.05, 0.25, 1.0]) * 1e3) / 1e3)
    fig.colorbar(images[2], ax=axes[:, 2].tolist(), shrink=shrink, aspect=30, ticks=diff_ticks,
                 label="|difference| (sqrt scale)")  # fmt: skip
    fig.supxlabel("key position j (attended to)", fontsize=9)
    fig.suptitle(f'{title}\nA: "{decode(tokens_a)}"   B: "{decode(tokens_b)}"', fontsize=10)
    return fig


fig = two_inputs_figure(
    [maps_a[kind][0].mean(axis=0) for kind in KINDS],  # (T, T) layer 0, mean over heads
    [maps_b[kind][0].mean(axis=0) for kind in KINDS],  # (T, T)
    labels=list(KINDS),
    tokens_a=tokens_a,
    tokens_b=tokens_b,
    marked_rows=[same_byte if kind == "dense" else None for kind in KINDS],
    title="layer 0, mean over heads: random maps ignore the input, vanilla maps follow it,\n"
    "dense rows change only where the query byte changes (green triangles: same byte)",
)
path = OUT / "08_input_independence.png"
fig.savefig(path, dpi=DPI)
print("saved", path)
fig  # noqa: B018  (a notebook displays a bare last expression: the figure)

# %% [markdown]
# ## 6. The statistics at a glance
#
# Last, the five statistics of the last layer as bars, one group per model
# and one bar per head, with the uniform map's value as a dashed line.


# %%
def stats_bars_figure(stats, *, labels, reference, reference_label, titles, title):
    """One panel per statistic, one bar group per model, one bar per head; the
    reference value dashed. ``stats``: per model, a dict name -> (H,) values."""
    keys, n_models = list(stats[0]), len(stats)
    H = max(len(values) for d in stats for values in d.values())  # the most heads of any model
    n_cols = 3
    n_rows = -(-(len(keys) + 1) // n_cols)  # one more panel: the legend
    width = 0.9 + n_cols * max(4.5, 0.5 + 0.25 * n_models * H)  # a quarter inch per bar
    fig = Figure(figsize=(width, 1.0 + 3.0 * n_rows), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    bar, x = 0.8 / H, np.arange(n_models)
    colours = matplotlib.colormaps["tab10"].colors
    for ax, key in zip(axes, keys, strict=False):
        for h in range(H):
            has = [m for m in range(n_models) if h < len(stats[m][key])]  # models with head h
            heights = [stats[m][key][h] for m in has]
            ax.bar(x[has] + (h - (H - 1) / 2) * bar, heights, bar, label=f"head {h}",
                   color=colours[h % len(colours)])  # fmt: skip
        ax.axhline(float(reference[key]), color="0.3", ls="--", lw=1, label=reference_label)
        ax.set_xticks(x, labels, fontsize=8)
        default = f"{key}: {STAT_UNITS[key].split(' (')[0]}" if key in STAT_UNITS else key
        ax.set_title(titles.get(key, default), fontsize=9, wrap=True)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[len(keys) :]:
        ax.set_axis_off()
    handles, names = axes[0].get_legend_handles_labels()  # the first panel has every head
    axes[-1].legend(handles, names, loc="center", fontsize=10)
    fig.suptitle(title, fontsize=11)
    return fig


layer = n_layers - 1
fig2 = stats_bars_figure(
    [{**stats[kind][layer], "spaces": space_mass[(kind, layer)]} for kind in KINDS],  # (H,) each
    labels=list(KINDS),
    reference={**{key: uniform_stats[key][0] for key in STAT_UNITS}, "spaces": uniform_space[0]},
    reference_label="uniform causal map",
    titles={"spaces": "spaces: mean attention mass on space keys"},
    title=f"alignment statistics of layer {layer} on text A ({T} bytes)",
)
path = OUT / "08_stats.png"
fig2.savefig(path, dpi=DPI)
print("saved", path)
fig2  # noqa: B018  (a notebook displays a bare last expression: the figure)

# %% [markdown]
# ## Exercises
#
# 1. **Another content statistic.** Measure each head's mass on the byte that
#    follows the previous occurrence of the current byte (an "induction" pattern).
#    Which kind could learn it?
# 2. **Heads are not paired.** Permute the heads of one model at random and show
#    that the head-by-head JS changes while the head-averaged JS does not.
# 3. **Train longer.** Double the steps for the three models and redo the space
#    statistic: does any dense head start to follow spaces?
