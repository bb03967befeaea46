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
#    (`js_divergence`);
# 5. feed a second text: the `random` maps do not change at all, the
#    `vanilla` maps do, and the `dense` maps change in a telling way.
#
# Run as a script or as a notebook (jupytext). At full size the three
# training runs take a minute or two on two cores;
# `MINISYNTH_TUTORIAL_TINY=1` shrinks them to seconds (the models then learn
# next to nothing, so the maps are close to their initial state). Figures and
# tables go to `tutorials/output/` or `$MINISYNTH_TUTORIAL_OUT`. If training
# is far slower than that on a machine busy with other work, OpenBLAS's
# threads are fighting for the cores: start Python with
# `OPENBLAS_NUM_THREADS=1` (tutorial 06, section 7).

# %%
import os
import time
from pathlib import Path

import numpy as np
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure

from minisynth import ModelConfig, get_backend
from minisynth.train import TrainConfig, decode, train
from minisynth.viz import (
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
)

TINY = os.environ.get("MINISYNTH_TUTORIAL_TINY", "0") not in ("", "0")
try:
    HERE = Path(__file__).resolve().parent  # run as a script
except NameError:
    HERE = Path.cwd()  # run as a notebook: Jupyter starts in the notebook's folder
OUT = Path(os.environ.get("MINISYNTH_TUTORIAL_OUT", HERE / "output"))
OUT.mkdir(parents=True, exist_ok=True)
KINDS = ("dense", "random", "vanilla")
print(f"tiny={TINY}, backend={get_backend()}, output folder: {OUT}")

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

# %% [markdown]
# With so little training the three land close together (far above what
# longer runs reach); that is expected, and not the point here. We load each
# trained model back from its checkpoint with `viz.load_model`, which returns
# the model and the raw checkpoint contents.

# %%
models = {kind: load_model(results[kind]["checkpoint"])[0] for kind in KINDS}
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
path = plot_attention_grid(
    maps_a["vanilla"], OUT / "08_vanilla_all_layers.png", tokens=tokens_a, kind="vanilla"
)
print("saved", path)

# %% [markdown]
# What to look for in the figures:
#
# * row 0 can only attend to itself, so its one cell is always 1 (yellow);
#   the next rows have few choices, so they are bright too, for every kind.
# * a bright **diagonal** means a head mostly looks at the current byte;
#   a bright line **just below** the diagonal, at the previous byte. For
#   predicting the next byte the last one or two bytes carry most of the
#   information, so many heads of all kinds learn such local patterns.
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
# row $i$ equal to $1/(i+1)$ on its visible keys, which is what a head that
# has learned nothing does. We compute its statistics with the same function.

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

# %% [markdown]
# Reading the table (every number is for text A):
#
# * heads whose entropy is well **below** the uniform reference have learned
#   to focus; a head close to it still spreads its weight evenly;
# * a **distance** much smaller than the uniform one, together with a large
#   **previous** or **diagonal** mass, is a local head: the bigram-like
#   pattern a byte-level model learns first;
# * `vanilla` heads usually sharpen fastest; `dense` heads become local
#   through the position embedding inside $x_i$; the `random` heads move
#   away from uniform most slowly (in our run they are still close to it).
#   Every entry of R is a separate parameter that learns only from the
#   gradient of its own logit, and only when it is visible. (AdamW's default
#   filter does not decay R: decay would pull R back towards 0, which *is*
#   uniform attention.)
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

# %% [markdown]
# In our full-size run, one head in the second layer of the `vanilla` model
# put most of its weight on spaces, several times the uniform value: in the
# maps of section 2 it shows up as bright **vertical stripes** at the space
# columns. Each row looks back to the word boundaries, wherever they are,
# which is what a byte-level model needs to know where it is inside a word.
# The `random` heads stay near the uniform value, as they must; `dense` heads
# can only get there indirectly (in the second layer $x_i$ already carries
# some context). Your numbers may differ, and the tiny run learns too little
# to show any of it.
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
# map), which does not depend on the order, and each model against the
# uniform map.

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
for kind in KINDS:
    uniform_heads = np.broadcast_to(uniform, maps_a[kind][layer].shape)  # (H, T, T)
    js_rows.append(
        (
            f"{kind} vs uniform",
            js_divergence(maps_a[kind][layer], uniform_heads),
            js_divergence(maps_a[kind][layer].mean(axis=0), uniform),
        )
    )
js_md = [
    f"| layer {layer}, text A | JS head by head (nats) | JS of head-averaged maps (nats) |",
    "|---|---:|---:|",
]
for name, per_head, averaged in js_rows:
    js_md.append(f"| {name} | {per_head:.4f} | {averaged:.4f} |")
    print(f"{name:20s} head by head {per_head:.4f}   head-averaged {averaged:.4f}")
(OUT / "08_js_divergence.md").write_text(
    "Mean Jensen-Shannon divergence (natural log; 0 = identical, ln 2 = 0.693 = disjoint).\n\n"
    + "\n".join(js_md)
    + "\n",
    encoding="utf-8",
)

# %% [markdown]
# The head-averaged divergence is never larger than the head-by-head one for
# the same pair (JS is convex), and the gap says how much of the head-by-head
# value comes from heads that merely sit in a different order or split the
# work differently. The divergence from the uniform map measures how far
# each model has moved from "no preference at all"; in our run `vanilla` had
# moved furthest and `random` hardly at all, as the statistics above suggest.
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
# layer, the square-root colour scale of `plot_compare`), then
# $|P_A - P_B|$ on its own scale; the byte labels under each column are that
# column's text. Rows of the `dense` model whose query byte is the same in both
# texts are marked with a green triangle: their difference row is exactly 0 (black).

# %%
labels_a, labels_b = byte_labels(tokens_a), byte_labels(tokens_b)  # one label per byte
positions = [str(i) for i in range(T)]
mean_a = {k: maps_a[k][0].mean(axis=0) for k in KINDS}  # (T, T) layer 0, mean over heads
mean_b = {k: maps_b[k][0].mean(axis=0) for k in KINDS}  # (T, T)
vmax = max(max(float(mean_a[k].max()), float(mean_b[k].max())) for k in KINDS)
diff_max = max(float(np.abs(mean_a[k] - mean_b[k]).max()) for k in KINDS)
map_norm = PowerNorm(gamma=0.5, vmin=0.0, vmax=vmax)  # square root, as plot_compare
diff_norm = PowerNorm(gamma=0.5, vmin=0.0, vmax=max(diff_max, 1e-6))  # random: all zeros
future = np.ma.make_mask(np.triu(np.ones((T, T)), 1))  # masked cells: drawn white
panel = max(2.6, 0.13 * T)  # inches per map: room for one label per byte
fig = Figure(figsize=(3 * panel + 3.0, len(KINDS) * (panel + 0.4) + 1.0), layout="constrained")
axes = fig.subplots(len(KINDS), 3)
for r, kind in enumerate(KINDS):
    panels = [
        (mean_a[kind], labels_a, "text A", "viridis", map_norm),
        (mean_b[kind], labels_b, "text B", "viridis", map_norm),
        (np.abs(mean_a[kind] - mean_b[kind]), positions, "|A - B|", "magma", diff_norm),
    ]
    for c, (m, labels, title, cmap, norm) in enumerate(panels):
        ax = axes[r, c]
        image = ax.imshow(
            np.ma.masked_array(m, future), cmap=cmap, norm=norm, interpolation="nearest"
        )
        ax.set_title(f"{kind}: {title}", fontsize=9)
        ax.set_yticks(np.arange(T), labels, fontsize=6.5)
        bottom = r == len(KINDS) - 1  # x labels once per column: every row shows the same text
        ax.set_xticks(
            np.arange(T), labels if bottom else [], fontsize=6.5, rotation=90 if c == 2 else 0
        )
        ax.tick_params(length=1.5, pad=1)
        if c == 0:
            ax.set_ylabel(f"{kind}\nquery position i", fontsize=9)
        if c == 2 and kind == "dense":  # rows whose query byte is the same in both texts
            for i in np.flatnonzero(same_byte):
                ax.plot(T - 0.5 + 0.7, i, marker="<", color="tab:green", ms=4, clip_on=False)
            ax.set_xlim(-0.5, T - 0.5)  # the markers sit outside the map, not inside the axes
        if c == 0:
            map_image = image
        if c == 2:
            diff_image = image
fig.colorbar(
    map_image,
    ax=axes[:, :2],
    location="right",
    shrink=0.5,
    aspect=30,
    ticks=[0, 0.05, 0.2, 0.5, 1.0],
    label="attention probability (sqrt scale)",
)
fig.colorbar(
    diff_image,
    ax=axes[:, 2],
    location="right",
    shrink=0.5,
    aspect=30,
    ticks=np.floor(diff_max * np.array([0.0, 0.05, 0.25, 1.0]) * 1e3) / 1e3,  # inside the scale
    label="|difference| (sqrt scale)",
)
fig.suptitle(
    "layer 0, mean over heads: random maps ignore the input, vanilla maps follow it,\n"
    "dense rows change only where the query byte changes (green triangles: same byte)",
    fontsize=10,
)
path = OUT / "08_input_independence.png"
fig.savefig(path, dpi=100)
print("saved", path)

# %% [markdown]
# ## 6. The statistics at a glance
#
# Last, the five statistics of the last layer as bars, one group per model
# and one bar per head, with the uniform map's value as a dashed line.

# %%
layer = n_layers - 1
per_head = {key: {kind: stats[kind][layer][key] for kind in KINDS} for key in stat_keys}
per_head["spaces"] = {kind: space_mass[(kind, layer)] for kind in KINDS}
reference = {key: float(uniform_stats[key][0]) for key in stat_keys}
reference["spaces"] = float(uniform_space[0])
titles = {key: f"{key}: {STAT_UNITS[key].split(' (')[0]}" for key in stat_keys}
titles["spaces"] = "spaces: mean attention mass on space keys"

fig2 = Figure(figsize=(14, 7), layout="constrained")
axes2 = fig2.subplots(2, 3).ravel()
width = 0.8 / H
for ax, key in zip(axes2, columns, strict=False):  # five panels; the sixth holds the legend
    for head in range(H):
        values = [per_head[key][kind][head] for kind in KINDS]
        offsets = np.arange(len(KINDS)) + (head - (H - 1) / 2) * width
        ax.bar(offsets, values, width, label=f"head {head}")
    ax.axhline(reference[key], color="0.3", ls="--", lw=1, label="uniform causal map")
    ax.set_xticks(np.arange(len(KINDS)), KINDS)
    ax.set_title(titles[key], fontsize=9)
    ax.grid(axis="y", alpha=0.3)
handles, names = axes2[0].get_legend_handles_labels()
axes2[-1].set_axis_off()
axes2[-1].legend(handles, names, loc="center", fontsize=10, title=f"layer {layer}")
fig2.suptitle(f"alignment statistics of layer {layer} on text A ({T} bytes)", fontsize=11)
path = OUT / "08_stats.png"
fig2.savefig(path, dpi=100)
print("saved", path)
fig2  # noqa: B018  (a notebook displays a bare last expression: the figure)
