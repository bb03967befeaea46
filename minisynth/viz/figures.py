"""Figures of attention maps, mixture weights and training curves.

Everything here draws on :class:`matplotlib.figure.Figure` objects directly and
never imports :mod:`matplotlib.pyplot`: no display, no GUI backend and no global
figure registry are involved (figures cannot leak between calls), and a user's
own pyplot backend (e.g. in a notebook) is left alone. PNG is rendered by Agg.

:func:`plot_attention_grid`, :func:`plot_compare`, :func:`plot_alpha` and
:func:`plot_curves` each write one figure and return its path. Figure sizes are
whole multiples of a quarter inch, so at :data:`DPI` (a multiple of 4) a PNG is
exactly ``figsize * DPI`` pixels; :func:`grid_figsize`, :func:`alpha_figsize` and
:data:`CURVES_FIGSIZE` give the sizes used.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib import colors as mcolors
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..data import decode
from .stats import LN2, _as_probs, _as_weights, is_input_independent

DPI = 100
FORMATS = ("png", "svg", "pdf")
# Above this length one tick label per byte no longer fits; numeric ticks are used instead.
MAX_TICK_LABELS = 48
CURVES_FIGSIZE = (9.0, 4.75)
CMAP = "viridis"


def _out_path(path):
    """``path`` as a Path whose suffix is a supported format; its folder is created."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or path, got {type(path).__name__}")
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise ValueError(
            f"cannot tell the image format of {str(path)!r}: the file name must end in "
            + ", ".join("." + f for f in FORMATS)
        )
    if path.exists() and path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; give a file name ending in .{fmt}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def check_format(fmt):
    """Lower-cased ``fmt`` if it is one of :data:`FORMATS`, else a ValueError."""
    if not isinstance(fmt, str):
        raise TypeError(f"format must be a string, got {type(fmt).__name__}")
    if fmt.lower() not in FORMATS:
        raise ValueError(f"unknown image format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return fmt.lower()


def _quarter(inches):
    """Round up to a quarter inch, so size * DPI is a whole number of pixels exactly."""
    return math.ceil(inches * 4 - 1e-9) / 4


def _save(fig, path):
    fig.savefig(path, dpi=DPI, facecolor="white")
    return path


def _as_tokens(tokens):
    if isinstance(tokens, str):
        raise TypeError("tokens must be bytes or integers 0..255, not str; encode the text first")
    if isinstance(tokens, (bytes, bytearray)):
        return np.frombuffer(bytes(tokens), dtype=np.uint8).astype(np.int64)
    arr = np.asarray(tokens)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"tokens must be bytes or a 1-D sequence of integers, got {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ValueError("tokens must be byte values in 0..255")
    return arr.astype(np.int64)


_NAMED_BYTES = {9: "\\t", 10: "\\n", 13: "\\r", 32: "\u2423"}  # U+2423 OPEN BOX for a space


def byte_labels(tokens):
    """One readable label per byte: printable ASCII as is, a space as ␣, '\\n' for a
    newline, and ``\\xNN`` for other control and non-ASCII bytes (the model sees bytes,
    so a multi-byte UTF-8 character shows as its bytes)."""
    out = []
    for t in _as_tokens(tokens).tolist():
        if t in _NAMED_BYTES:
            out.append(_NAMED_BYTES[t])
        elif 32 < t < 127:
            out.append("$" if t == 36 else chr(t))  # '$' would start mathtext; escaped below
        else:
            out.append(f"\\x{t:02x}")
    # matplotlib treats an odd number of '$' as mathtext; a literal dollar needs '\$'
    return [r"\$" if s == "$" else s for s in out]


def _short_repr(text, limit=60):
    """A one-line, escaped preview of an input for a title."""
    r = repr(text)[1:-1]
    r = r.replace("$", r"\$")
    return r if len(r) <= limit else r[: limit - 1] + "\u2026"


def _panel_inches(T):
    """Side of one heatmap: 0.1 inch (7.2 points) per labelled row, at least 2 inches."""
    return max(2.0, 0.1 * T) if T <= MAX_TICK_LABELS else 3.0


def grid_figsize(n_rows, n_cols, T):
    """(width, height) in inches of a heatmap grid of n_rows x n_cols maps of size T x T.

    Labelled maps (T <= MAX_TICK_LABELS) grow with T so one character fits per row.
    """
    for name, v in (("n_rows", n_rows), ("n_cols", n_cols), ("T", T)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    panel = _panel_inches(T)
    # row labels and ticks, panels with a small gap, colour bar
    width = 0.9 + n_cols * (panel + 0.15) + 0.8
    # figure title, panels under their titles, x tick labels and the x axis label
    height = 0.9 + n_rows * (panel + 0.45) + 0.65
    return _quarter(width), _quarter(height)


def _draw_grid(fig, maps, row_labels, col_titles, tokens, causal, scale):
    """Draw maps[r][c] (T,T) (None leaves a blank panel) with one shared colour scale."""
    n_rows, n_cols = len(maps), max(len(r) for r in maps)
    T = next(m for r in maps for m in r if m is not None).shape[-1]
    labels = byte_labels(tokens) if tokens is not None and T <= MAX_TICK_LABELS else None
    # about 3/4 of the space one row gets, between 6 and 8 points
    label_size = min(8.0, max(6.0, 0.75 * 72 * _panel_inches(T) / T))
    vmax = max(float(m.max()) for r in maps for m in r if m is not None)
    if scale == "sqrt":  # sqrt shows faint rows that a few near-one entries would wash out
        norm = mcolors.PowerNorm(gamma=0.5, vmin=0.0, vmax=vmax)
    else:
        norm = mcolors.Normalize(vmin=0.0, vmax=vmax)
    # masked (future) positions are drawn white: not allowed is not "zero attention"
    cmap = matplotlib.colormaps[CMAP].with_extremes(bad="white")
    hidden = np.triu(np.ones((T, T), dtype=bool), k=1) if causal else np.zeros((T, T), bool)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    present = [
        [c < len(maps[r]) and maps[r][c] is not None for c in range(n_cols)] for r in range(n_rows)
    ]
    image = None
    for r in range(n_rows):
        for c in range(n_cols):
            ax = axes[r][c]
            if not present[r][c]:
                ax.set_axis_off()
                continue
            image = ax.imshow(
                np.ma.masked_array(maps[r][c], hidden),
                cmap=cmap,
                norm=norm,
                interpolation="nearest",
            )
            ax.set_title(col_titles[r][c], fontsize=8)
            # Every panel shows the same input, so ticks go on the outer panels only (the
            # first column and the lowest panel of each column): less clutter, and far fewer
            # tick objects, which dominate the drawing time.
            left = c == 0
            bottom = not any(present[k][c] for k in range(r + 1, n_rows))
            if labels is not None:
                ticks = np.arange(T)
                rotate = 90 if any(len(s) > 1 for s in labels) else 0
                xt, xl = (ticks, labels) if bottom else ([], [])
                ax.set_xticks(xt, xl, fontsize=label_size, rotation=rotate)
                ax.set_yticks(ticks if left else [], labels if left else [], fontsize=label_size)
                ax.tick_params(length=1.5, pad=1)
            else:
                ax.tick_params(labelsize=7)
                if not bottom:
                    ax.set_xticks([])
                if not left:
                    ax.set_yticks([])
            if left:
                ax.set_ylabel(row_labels[r], fontsize=9)
    fig.colorbar(
        image,
        ax=axes.ravel().tolist(),
        shrink=min(0.9, 1.8 / n_rows),  # about two panels tall, however many rows
        pad=0.01,
        label="attention probability" + (" (sqrt scale)" if scale == "sqrt" else ""),
    )
    fig.supxlabel("key position j (attended to)", fontsize=9)
    return axes


def _check_scale(scale):
    if scale not in ("linear", "sqrt"):
        raise ValueError(f"scale must be 'linear' or 'sqrt', got {scale!r}")
    return scale


def _is_causal(arrays):
    return all(not np.triu(a, k=1).any() for a in arrays)


def _input_line(T, toks):
    """'input: T bytes "text"' for a figure title."""
    if toks is None:
        return f"input: {T} bytes"
    return f'input: {T} bytes "{_short_repr(decode(toks))}"'


def _check_tokens_len(tokens, T):
    if tokens is None:
        return None
    toks = _as_tokens(tokens)
    if toks.size != T:
        raise ValueError(f"tokens has {toks.size} entries but the maps have T = {T}")
    return toks


def plot_attention_grid(
    maps,
    path,
    *,
    tokens=None,
    title=None,
    kind=None,
    input_independent=None,
    mix_weights=None,
    components=None,
    scale="sqrt",
):
    """Heatmaps of every layer (rows) and head (columns) of one model on one input.

    ``maps``: per-layer attention probabilities, an array (n_layers,H,T,T) or a list
    of (H,T,T) arrays. ``path``: output file (.png, .svg or .pdf). ``tokens``: the T
    input bytes, used as tick labels when T <= MAX_TICK_LABELS. ``kind`` goes in the
    title; ``input_independent`` (default: from ``kind``) adds that the map is the
    same for every input. ``mix_weights`` (n_layers,H,N) with ``components`` names
    annotate each head of a mixture. ``scale``: 'sqrt' (default; shows weak,
    spread-out attention) or 'linear'. One shared colour scale. Returns the Path.
    """
    if isinstance(maps, (list, tuple)):
        if not maps:
            raise ValueError("maps must hold at least one layer")
        layers = [_as_probs(f"maps[{i}]", m, (3,)) for i, m in enumerate(maps)]
        if len({m.shape for m in layers}) != 1:
            raise ValueError(
                f"every layer must have the same (H,T,T); got {[m.shape for m in layers]}"
            )
        stack = np.stack(layers)
    else:
        stack = _as_probs("maps", maps, (4,))
    n_layers, H, T, _ = stack.shape
    toks = _check_tokens_len(tokens, T)
    _check_scale(scale)
    if input_independent is None:
        input_independent = kind is not None and is_input_independent(kind)
    head_notes = [["" for _ in range(H)] for _ in range(n_layers)]
    if mix_weights is not None:
        w = _as_weights(mix_weights, "mix_weights")
        if not isinstance(components, (list, tuple)) or w.shape != (n_layers, H, len(components)):
            raise ValueError(
                f"mix_weights must have shape (n_layers, H, N) = ({n_layers}, {H}, N) with "
                f"N = len(components); got {w.shape} and components {components!r}"
            )
        for i in range(n_layers):
            for h in range(H):
                head_notes[i][h] = "\n" + ", ".join(
                    f"{name} {w[i, h, n]:.2f}" for n, name in enumerate(components)
                )

    path = _out_path(path)
    fig = Figure(figsize=grid_figsize(n_layers, H, T), layout="constrained")
    col_titles = [[f"head {h}{head_notes[i][h]}" for h in range(H)] for i in range(n_layers)]
    row_labels = [f"layer {i}\nquery position i" for i in range(n_layers)]
    _draw_grid(
        fig, [list(s) for s in stack], row_labels, col_titles, toks, _is_causal(stack), scale
    )
    heading = title or f"{kind or 'attention'} attention maps ({n_layers} layers x {H} heads)"
    sub = _input_line(T, toks)
    if input_independent:
        sub += "\ninput-independent attention: the same map for every input"
    fig.suptitle(f"{heading}\n{sub}", fontsize=10)
    return _save(fig, path)


def plot_compare(maps, path, *, labels, tokens=None, title=None, scale="sqrt"):
    """One row per model: the heads of one layer of each model on the same input.

    ``maps``: a list with one (H_m,T,T) array per model (head counts may differ;
    missing panels stay blank). ``labels``: one row label per model (e.g. its
    attention kind). Shared colour scale and colour bar. Returns the Path.
    """
    if not isinstance(maps, (list, tuple)) or not maps:
        raise TypeError("maps must be a non-empty list of (H,T,T) arrays, one per model")
    arrays = [_as_probs(f"maps[{i}]", m, (3,)) for i, m in enumerate(maps)]
    Ts = {a.shape[-1] for a in arrays}
    if len(Ts) != 1:
        raise ValueError(f"every model's maps must have the same T (same input), got {sorted(Ts)}")
    if (
        not isinstance(labels, (list, tuple))
        or len(labels) != len(arrays)
        or not all(isinstance(lab, str) for lab in labels)
    ):
        raise ValueError(f"labels must be a list of {len(arrays)} strings, one per model")
    T = Ts.pop()
    toks = _check_tokens_len(tokens, T)
    _check_scale(scale)
    path = _out_path(path)
    n_cols = max(a.shape[0] for a in arrays)
    fig = Figure(figsize=grid_figsize(len(arrays), n_cols, T), layout="constrained")
    col_titles = [[f"head {h}" for h in range(a.shape[0])] for a in arrays]
    row_labels = [f"{lab}\nquery position i" for lab in labels]
    _draw_grid(
        fig, [list(a) for a in arrays], row_labels, col_titles, toks, _is_causal(arrays), scale
    )
    heading = title or f"{len(arrays)} models on the same input"
    sub = _input_line(T, toks)
    fig.suptitle(f"{heading}\n{sub}", fontsize=10)
    return _save(fig, path)


def alpha_figsize(n_layers, n_heads, n_components):
    """(width, height) in inches of :func:`plot_alpha`'s figure."""
    for name, v in (("n_layers", n_layers), ("n_heads", n_heads), ("n_components", n_components)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    panel = max(2.5, 0.8 + 0.3 * n_heads * n_components)
    return _quarter(0.8 + n_layers * (panel + 0.3)), 4.0


def plot_alpha(weights, path, *, components, title=None):
    """Bar groups of the learned mixture weights softmax(alpha): one panel per layer,
    one group per head, one bar per component; dashed line at the initial 1/N.

    ``weights``: (n_layers,H,N) with rows summing to 1 (see :func:`mixture_weights`);
    ``components``: the N component names. Returns the Path.
    """
    W = _as_weights(weights)
    n_layers, H, N = W.shape
    if (
        not isinstance(components, (list, tuple))
        or len(components) != N
        or not all(isinstance(c, str) for c in components)
    ):
        raise ValueError(f"components must be a list of {N} names, one per mixture component")
    path = _out_path(path)
    fig = Figure(figsize=alpha_figsize(n_layers, H, N), layout="constrained")
    axes = fig.subplots(1, n_layers, squeeze=False, sharey=True)[0]
    width = 0.8 / N
    x = np.arange(H)
    colours = matplotlib.colormaps["tab10"].colors
    for i, ax in enumerate(axes):
        for n, name in enumerate(components):
            ax.bar(
                x + (n - (N - 1) / 2) * width,
                W[i, :, n],
                width,
                label=name,
                color=colours[n % len(colours)],
            )
        ax.axhline(1.0 / N, color="0.3", lw=0.8, ls="--", label=f"initial 1/{N}")
        ax.set_xticks(x, [f"head {h}" for h in range(H)], fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(f"layer {i}", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("mixture weight softmax(alpha)")
    handles, names = axes[0].get_legend_handles_labels()
    order = list(range(1, N + 1)) + [0]  # components first, then the reference line
    fig.legend(
        [handles[k] for k in order],
        [names[k] for k in order],
        loc="outside lower center",
        ncols=N + 1,
        fontsize=8,
    )
    fig.suptitle(title or "learned mixture weights per layer and head", fontsize=10)
    return _save(fig, path)


def plot_curves(runs, path, *, title=None):
    """Training loss (as bits/char = nats / ln 2) and validation BPC against step.

    ``runs``: a dict run name -> list of metrics records (dicts with ``step``,
    ``loss`` in nats, and ``val_bpc`` on evaluation steps), all on one chart: a
    thin line for the training loss, markers for validation. Returns the Path.
    """
    if not isinstance(runs, dict) or not runs:
        raise TypeError("runs must be a non-empty dict: run name -> list of metrics records")
    for name, recs in runs.items():
        if not isinstance(recs, (list, tuple)) or not all(isinstance(r, dict) for r in recs):
            raise TypeError(f"run {name!r}: records must be a list of dicts")
        if not any("loss" in r or "val_bpc" in r for r in recs):
            raise ValueError(f"run {name!r} has no 'loss' or 'val_bpc' values to plot")
    path = _out_path(path)
    fig = Figure(figsize=CURVES_FIGSIZE, layout="constrained")
    ax = fig.subplots()
    colours = matplotlib.colormaps["tab10"].colors
    run_handles = []
    for k, (name, recs) in enumerate(runs.items()):
        colour = colours[k % len(colours)]
        train = sorted((r["step"], r["loss"] / LN2) for r in recs if _finite(r.get("loss")))
        val = sorted((r["step"], r["val_bpc"]) for r in recs if _finite(r.get("val_bpc")))
        if train:
            s, v = zip(*train, strict=True)
            ax.plot(s, v, color=colour, lw=1.0, alpha=0.5)
        if val:
            s, v = zip(*val, strict=True)
            ax.plot(s, v, color=colour, lw=1.8, marker="o", ms=4)
        run_handles.append(Line2D([], [], color=colour, lw=1.8, label=name))
    ax.set_xlabel("step")
    ax.set_ylabel("bits per character")
    ax.grid(alpha=0.3)
    # colour names the run, line style the quantity: two short legends instead of 2 x runs
    style_handles = [
        Line2D([], [], color="0.4", lw=1.0, alpha=0.6, label="train loss (batch, nats / ln 2)"),
        Line2D([], [], color="0.4", lw=1.8, marker="o", ms=4, label="validation BPC"),
    ]
    # outside the axes, so no curve is ever hidden behind a legend
    fig.legend(handles=run_handles, fontsize=8, loc="outside right upper", title="run")
    fig.legend(handles=style_handles, fontsize=8, loc="outside right lower")
    ax.set_title(title or "training curves", fontsize=10)
    return _save(fig, path)


def _finite(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def show_figure(path):
    """Display a saved figure file inline when running in Jupyter; elsewhere do nothing.

    The tutorials save every figure with the functions above and then show the file
    itself, so the notebook displays exactly what was written. Returns the Path.
    """
    path = Path(path)
    try:
        from IPython import get_ipython
        from IPython.display import Image, display
    except ImportError:  # IPython is not a dependency: no notebook here
        return path
    if get_ipython() is not None:
        display(Image(filename=str(path)))
    return path
