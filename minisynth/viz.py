"""Pictures and numbers of what a Synthesizer learns: attention maps, mixture weights, curves.

Everything here draws on :class:`matplotlib.figure.Figure` objects directly and
never imports :mod:`matplotlib.pyplot`: no display, no GUI backend and no global
figure registry are involved (figures cannot leak between calls), and a user's
own pyplot backend (e.g. in a notebook) is left alone. PNG is rendered by Agg.

Pure functions (arrays in, numbers or written paths out):

* :func:`attention_stats` -- per-head row entropy (nats), mean attention
  distance, mass on the diagonal and on the previous token;
* :func:`js_divergence` -- mean Jensen-Shannon divergence of two sets of maps;
* :func:`plot_attention_grid`, :func:`plot_compare`, :func:`plot_alpha`,
  :func:`plot_curves`, :func:`plot_two_inputs` -- each writes one figure and returns
  its path; :func:`two_inputs_figure` and :func:`stats_bars_figure` return the
  figure itself.

Checkpoint-level helpers (:func:`plot_checkpoint`, :func:`compare_checkpoints`,
:func:`curves_for_runs`) glue these to models and run directories; the
``minisynth plot``, ``compare`` and ``curves`` commands are thin wrappers.

Figure sizes are whole multiples of a quarter inch, so at :data:`DPI` (a
multiple of 4) a PNG is exactly ``figsize * DPI`` pixels; :func:`grid_figsize`,
:func:`alpha_figsize`, :func:`two_inputs_figsize` and :data:`CURVES_FIGSIZE` give the
sizes used.
"""

from __future__ import annotations

import json
import math
import os
import textwrap
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib import colors as mcolors
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ._validate import FLOAT_DTYPES

LN2 = math.log(2.0)
DPI = 100
FORMATS = ("png", "svg", "pdf")
# Kinds whose logits ignore x: the map is the same for every input (prefix-consistent in T).
INPUT_INDEPENDENT_KINDS = frozenset({"random", "random_fixed", "factorized_random"})
# Above this length one tick label per byte no longer fits; numeric ticks are used instead.
MAX_TICK_LABELS = 48
CURVES_FIGSIZE = (9.0, 4.75)
CMAP = "viridis"
ROW_SUM_TOL = 1e-3  # float32 softmax rows sum to 1 within ~1e-6; this only catches non-maps
STAT_UNITS = {
    "entropy_nats": "mean row entropy in nats (natural log; a uniform row over n keys has ln n)",
    "distance": "mean over rows of the expected |i - j| in positions",
    "diagonal": "mean attention mass on j = i",
    "previous": "mean attention mass on j = i - 1, over rows i >= 1 (null when T = 1)",
}

# --------------------------------------------------------------------------- validation


def _as_probs(name, x, ndims):
    """A float64 copy of a stack of attention maps, checked to be row-stochastic."""
    if isinstance(x, (list, tuple)):
        x = np.asarray(x)
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {x.dtype}")
    if x.ndim not in ndims:
        dims = " or ".join(str(d) for d in ndims)
        raise ValueError(f"{name} must have {dims} dimensions, got shape {x.shape}")
    if x.ndim >= 2 and x.shape[-1] != x.shape[-2]:
        raise ValueError(f"{name} maps must be square (..., T, T), got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {x.shape}")
    x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if x.min() < 0:
        raise ValueError(f"{name} has negative entries (min {x.min():.3g}); expected probabilities")
    sums = x.sum(axis=-1)
    worst = float(np.abs(sums - 1.0).max())
    if worst > ROW_SUM_TOL:
        raise ValueError(
            f"{name} rows must be probability distributions summing to 1 over the last axis; "
            f"the worst row sums to {1.0 + worst:.4g} or {1.0 - worst:.4g}"
        )
    return x


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


# ------------------------------------------------------------------------------ labels


def is_input_independent(kind):
    """True if every component of ``kind`` ('random', 'dense+vanilla', ...) ignores the input."""
    if not isinstance(kind, str) or not kind:
        raise TypeError(f"kind must be a non-empty string, got {kind!r}")
    return all(part.strip() in INPUT_INDEPENDENT_KINDS for part in kind.split("+"))


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


# ------------------------------------------------------------------------------ statistics


def attention_stats(probs):
    """Alignment statistics per head of attention maps ``probs`` (H,T,T) or (B,H,T,T).

    Rows are queries i, columns keys j; each row must be a distribution. Returns a
    dict of float64 arrays of shape (H,), each averaged over rows (and the batch):

    * ``entropy_nats``: row entropy -sum_j p log p in nats (0 for one-hot rows);
    * ``distance``: expected |i - j| under the row's distribution;
    * ``diagonal``: mass on j = i;
    * ``previous``: mass on j = i - 1, over rows i >= 1 (NaN if T = 1).
    """
    P = _as_probs("probs", probs, (3, 4))
    if P.ndim == 3:
        P = P[None]  # (1,H,T,T)
    T = P.shape[-1]
    # 0 log 0 = 0: take the log of 1 where p = 0 so no warning or NaN appears
    entropy = -(P * np.log(np.where(P > 0, P, 1.0))).sum(axis=-1)  # (B,H,T)
    pos = np.arange(T)
    gap = np.abs(pos[:, None] - pos[None, :])  # (T,T) |i - j|
    distance = (P * gap).sum(axis=-1)  # (B,H,T)
    diagonal = np.diagonal(P, axis1=-2, axis2=-1)  # (B,H,T) P[i, i]
    if T > 1:
        previous = np.diagonal(P, offset=-1, axis1=-2, axis2=-1).mean(axis=(0, 2))  # P[i, i-1]
    else:
        previous = np.full(P.shape[1], np.nan)
    return {
        "entropy_nats": entropy.mean(axis=(0, 2)),
        "distance": distance.mean(axis=(0, 2)),
        "diagonal": diagonal.mean(axis=(0, 2)),
        "previous": previous,
    }


def js_divergence(p, q):
    """Mean Jensen-Shannon divergence (natural log, in [0, ln 2]) between two sets of maps.

    ``p`` and ``q`` have the same shape (..., T) with distributions along the last
    axis (e.g. (H,T,T) attention maps, whose rows are the distributions);
    JS(p, q) = KL(p || m)/2 + KL(q || m)/2 with m = (p + q)/2 is computed per row
    and averaged over all rows (and heads). 0 for identical maps, ln 2 for disjoint ones.
    """
    P = _as_probs("p", p, (1, 2, 3, 4))
    Q = _as_probs("q", q, (1, 2, 3, 4))
    if P.shape != Q.shape:
        raise ValueError(f"p and q must have the same shape, got {P.shape} and {Q.shape}")
    M = 0.5 * (P + Q)

    def kl_to_m(A):  # sum_j a log(a / m); a > 0 implies m > 0
        safe = A > 0
        return (A * np.log(np.where(safe, A, 1.0) / np.where(safe, M, 1.0))).sum(axis=-1)

    js = 0.5 * kl_to_m(P) + 0.5 * kl_to_m(Q)  # (...,) one value per row
    return float(np.clip(js, 0.0, LN2).mean())


def _stats_rows(stats):
    """attention_stats output -> a list of per-head dicts (JSON-ready, NaN -> None)."""
    H = len(stats["entropy_nats"])
    rows = []
    for h in range(H):
        row = {"head": h}
        for key in STAT_UNITS:
            v = float(stats[key][h])
            row[key] = None if math.isnan(v) else v
        rows.append(row)
    return rows


def format_stats_table(blocks):
    """A text table of ``[(label, attention_stats dict), ...]`` for the terminal."""
    w = max([len(label) for label, _ in blocks] + [7]) + 1
    lines = [f"{'':<{w}}{'head':>5}{'entropy':>10}{'distance':>10}{'diag':>8}{'prev':>8}"]
    for label, stats in blocks:
        for h in range(len(stats["entropy_nats"])):
            prev = stats["previous"][h]
            prev_s = "-" if math.isnan(prev) else f"{prev:.3f}"
            lines.append(
                f"{(label if h == 0 else ''):<{w}}{h:>5}{stats['entropy_nats'][h]:>10.3f}"
                f"{stats['distance'][h]:>10.2f}{stats['diagonal'][h]:>8.3f}{prev_s:>8}"
            )
    return "\n".join(lines)


# ------------------------------------------------------------------------- heatmap grids


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
    return f'input: {T} bytes "{_short_repr(_decode(toks))}"'


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


def two_inputs_figsize(n_models, T):
    """(width, height) in inches of :func:`two_inputs_figure`: ``n_models`` rows of T x T maps."""
    for name, v in (("n_models", n_models), ("T", T)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    panel = _panel_inches(T)
    # every panel has its own row labels (the columns hold different texts), two colour bars
    width = 0.5 + 3 * (panel + 0.6) + 1.6
    height = 1.0 + n_models * (panel + 0.45) + 0.7
    return _quarter(width), _quarter(height)


def two_inputs_figure(
    maps_a, maps_b, *, labels, tokens_a, tokens_b, marked_rows=None, title=None, scale="sqrt"
):
    """One row per model: its map on input A, its map on input B, and ``|A - B|``.

    Shows what an attention map depends on: an input-independent map (``random``)
    gives an all-zero difference, a map that follows the content changes wherever
    the text does. ``maps_a``, ``maps_b``: lists with one (T,T) map per model (for
    example one layer averaged over heads, ``maps.mean(axis=0)``), all with the same
    T. ``labels``: one name per model. ``tokens_a``, ``tokens_b``: the two inputs of
    T bytes each, the tick labels of the A and B columns. ``marked_rows``: optional
    list with, per model, None or a (T,) bool mask of query rows to mark with a green
    triangle beside the difference panel. The two maps share one colour scale
    (``scale``: 'sqrt' or 'linear'); the difference has its own (sqrt, so small
    changes stay visible). Returns the :class:`~matplotlib.figure.Figure`, not saved
    (see :func:`plot_two_inputs`).
    """
    for name, maps in (("maps_a", maps_a), ("maps_b", maps_b)):
        if not isinstance(maps, (list, tuple)) or not maps:
            raise TypeError(f"{name} must be a non-empty list of (T,T) maps, one per model")
    if len(maps_a) != len(maps_b):
        raise ValueError(
            f"maps_a and maps_b must hold one map per model each, got {len(maps_a)} and "
            f"{len(maps_b)}"
        )
    n = len(maps_a)
    hint = " (average a layer over its heads first: maps.mean(axis=0))"
    try:
        A = [_as_probs(f"maps_a[{k}]", m, (2,)) for k, m in enumerate(maps_a)]  # n x (T,T)
        B = [_as_probs(f"maps_b[{k}]", m, (2,)) for k, m in enumerate(maps_b)]  # n x (T,T)
    except ValueError as e:
        raise ValueError(str(e) + (hint if "dimensions" in str(e) else "")) from None
    Ts = {m.shape[-1] for m in A + B}
    if len(Ts) != 1:
        raise ValueError(
            f"every map must have the same T (inputs of equal length), got {sorted(Ts)}"
        )
    T = Ts.pop()
    if (
        not isinstance(labels, (list, tuple))
        or len(labels) != n
        or not all(isinstance(lab, str) for lab in labels)
    ):
        raise ValueError(f"labels must be a list of {n} strings, one per model")
    if tokens_a is None or tokens_b is None:
        raise ValueError("tokens_a and tokens_b are required: the A and B columns are labelled")
    toks_a = _check_tokens_len(tokens_a, T)  # (T,)
    toks_b = _check_tokens_len(tokens_b, T)  # (T,)
    if marked_rows is None:
        marked_rows = [None] * n
    if not isinstance(marked_rows, (list, tuple)) or len(marked_rows) != n:
        raise ValueError(f"marked_rows must be a list of {n} entries (None or a (T,) bool mask)")
    marks = []
    for k, rows in enumerate(marked_rows):
        if rows is None:
            marks.append(np.zeros(T, dtype=bool))
            continue
        rows = np.asarray(rows)
        if rows.dtype != bool or rows.shape != (T,):
            raise ValueError(
                f"marked_rows[{k}] must be None or a bool mask of shape ({T},), "
                f"got {rows.dtype} {rows.shape}"
            )
        marks.append(rows)
    _check_scale(scale)

    diffs = [np.abs(a - b) for a, b in zip(A, B, strict=True)]  # n x (T,T)
    vmax = max(float(m.max()) for m in A + B)
    diff_max = max(float(d.max()) for d in diffs)
    if scale == "sqrt":
        map_norm = mcolors.PowerNorm(gamma=0.5, vmin=0.0, vmax=vmax)
    else:
        map_norm = mcolors.Normalize(vmin=0.0, vmax=vmax)
    # identical inputs or input-independent maps only: an all-zero difference still draws
    diff_norm = mcolors.PowerNorm(gamma=0.5, vmin=0.0, vmax=max(diff_max, 1e-6))
    # masked (future) positions are drawn white: not allowed is not "zero attention"
    map_cmap = matplotlib.colormaps[CMAP].with_extremes(bad="white")
    diff_cmap = matplotlib.colormaps["magma"].with_extremes(bad="white")
    hidden = (
        np.triu(np.ones((T, T), dtype=bool), k=1)  # (T,T) the future, if every map is causal
        if _is_causal(A + B)
        else np.zeros((T, T), dtype=bool)
    )
    labelled = T <= MAX_TICK_LABELS
    columns = [  # (maps, tick labels, column title, colour map, norm)
        (A, byte_labels(toks_a) if labelled else None, "input A", map_cmap, map_norm),
        (B, byte_labels(toks_b) if labelled else None, "input B", map_cmap, map_norm),
        (diffs, [str(i) for i in range(T)] if labelled else None, "|A - B|", diff_cmap, diff_norm),
    ]
    label_size = min(8.0, max(6.0, 0.75 * 72 * _panel_inches(T) / T))

    fig = Figure(figsize=two_inputs_figsize(n, T), layout="constrained")
    axes = fig.subplots(n, 3, squeeze=False)
    images = [None, None, None]
    for r in range(n):
        for c, (maps, ticks, heading, cmap, norm) in enumerate(columns):
            ax = axes[r, c]
            images[c] = ax.imshow(
                np.ma.masked_array(maps[r], hidden), cmap=cmap, norm=norm, interpolation="nearest"
            )
            ax.set_title(f"{labels[r]}: {heading}", fontsize=9)
            bottom = r == n - 1  # x labels once per column: every row shows the same input
            if ticks is not None:  # y labels on every panel: each column has its own text
                ax.set_yticks(np.arange(T), ticks, fontsize=label_size)
                rotate = 90 if any(len(s) > 1 for s in ticks) else 0
                ax.set_xticks(
                    np.arange(T), ticks if bottom else [], fontsize=label_size, rotation=rotate
                )
                ax.tick_params(length=1.5, pad=1)
            else:
                ax.tick_params(labelsize=7)
                if not bottom:
                    ax.set_xticks([])
            if c == 0:
                ax.set_ylabel(f"{labels[r]}\nquery position i", fontsize=9)
            if c == 2 and marks[r].any():  # triangles just right of the map, pointing at rows
                for i in np.flatnonzero(marks[r]):
                    ax.plot(T - 0.5 + 0.7, i, marker="<", color="tab:green", ms=4, clip_on=False)
                ax.set_xlim(-0.5, T - 0.5)  # the markers sit outside the map, not inside it
    fig.colorbar(
        images[0],
        ax=axes[:, :2].ravel().tolist(),
        location="right",
        shrink=min(0.9, 1.8 / n),  # about two panels tall, however many rows
        aspect=30,
        label="attention probability" + (" (sqrt scale)" if scale == "sqrt" else ""),
    )
    # ticks inside the scale that still label small changes: 0, 5%, 25%, 100% of the largest
    diff_ticks = np.unique(np.floor(diff_max * np.array([0.0, 0.05, 0.25, 1.0]) * 1e3) / 1e3)
    fig.colorbar(
        images[2],
        ax=axes[:, 2].tolist(),
        location="right",
        shrink=min(0.9, 1.8 / n),
        aspect=30,
        ticks=diff_ticks,
        label="|difference| (sqrt scale)",
    )
    fig.supxlabel("key position j (attended to)", fontsize=9)
    heading = title or f"{n} model{'s' if n > 1 else ''} on two inputs, and the difference"
    sub = f'A: "{_short_repr(_decode(toks_a))}"   B: "{_short_repr(_decode(toks_b))}"'
    fig.suptitle(f"{heading}\n{sub}", fontsize=10)
    return fig


def plot_two_inputs(maps_a, maps_b, path, **kwargs):
    """:func:`two_inputs_figure` (same arguments) written to ``path`` (.png, .svg or .pdf).

    Returns the Path; nothing is written if an argument is invalid.
    """
    fig = two_inputs_figure(maps_a, maps_b, **kwargs)  # checks every argument first
    return _save(fig, _out_path(path))


STATS_BARS_COLS = 3  # panels per row of stats_bars_figure


def stats_bars_figure(
    stats, *, labels, reference=None, reference_label="reference", titles=None, title=None
):
    """Bar charts of per-head statistics: one panel per statistic, one bar group per
    model, one bar per head, and the reference value (e.g. the uniform map's) dashed.

    ``stats``: a list with one dict per model mapping a statistic's name to its
    per-head values, shape (H,) (an :func:`attention_stats` dict, possibly with
    extra keys of your own; head counts may differ between models). Every dict
    must hold the keys of the first, which set the panels and their order.
    ``labels``: one name per model. ``reference``: optional dict name -> float,
    drawn as a dashed line named ``reference_label`` in the legend.
    ``titles``: optional dict name -> panel title (default: the name and, for the
    keys of :data:`STAT_UNITS`, its meaning). The last panel holds the legend.
    Returns the :class:`~matplotlib.figure.Figure`, not saved.
    """
    if not isinstance(stats, (list, tuple)) or not stats:
        raise TypeError("stats must be a non-empty list of dicts, one per model")
    if not all(isinstance(d, dict) and d for d in stats):
        raise TypeError("every entry of stats must be a non-empty dict: name -> (H,) values")
    if (
        not isinstance(labels, (list, tuple))
        or len(labels) != len(stats)
        or not all(isinstance(lab, str) for lab in labels)
    ):
        raise ValueError(f"labels must be a list of {len(stats)} strings, one per model")
    keys = list(stats[0])
    values = []  # per model: dict name -> (H_m,) float64
    for m, d in enumerate(stats):
        missing = [k for k in keys if k not in d]
        if missing:
            raise ValueError(f"stats[{m}] ({labels[m]}) lacks {missing}; every model needs {keys}")
        row = {k: np.asarray(d[k], dtype=np.float64) for k in keys}  # (H_m,) each
        heads = {v.shape for v in row.values()}
        if len(heads) != 1 or len(next(iter(heads))) != 1 or not next(iter(heads))[0]:
            raise ValueError(
                f"stats[{m}] ({labels[m]}) must hold 1-D per-head arrays of one length, "
                f"got shapes { {k: v.shape for k, v in row.items()} }"
            )
        values.append(row)
    reference = {} if reference is None else reference
    titles = {} if titles is None else titles
    if not isinstance(reference, dict) or not isinstance(titles, dict):
        raise TypeError("reference and titles must be dicts keyed by statistic name")
    unknown = (set(reference) | set(titles)) - set(keys)
    if unknown:
        raise ValueError(f"reference or titles name statistics not in stats: {sorted(unknown)}")

    n_models = len(values)
    H = max(len(v[keys[0]]) for v in values)  # the most heads of any model
    n_rows = math.ceil((len(keys) + 1) / STATS_BARS_COLS)  # one more panel: the legend
    # a panel fits a title line of 64 characters, and a quarter inch per bar
    width = 0.9 + STATS_BARS_COLS * max(4.5, 0.5 + 0.25 * n_models * H)
    fig = Figure(figsize=(_quarter(width), _quarter(1.0 + 3.0 * n_rows)), layout="constrained")
    axes = fig.subplots(n_rows, STATS_BARS_COLS, squeeze=False).ravel()
    bar = 0.8 / H
    x = np.arange(n_models)
    colours = matplotlib.colormaps["tab10"].colors
    for ax, key in zip(axes, keys, strict=False):
        for h in range(H):
            has = [k for k in range(n_models) if h < len(values[k][key])]  # models with head h
            ax.bar(
                x[has] + (h - (H - 1) / 2) * bar,
                [values[k][key][h] for k in has],
                bar,
                label=f"head {h}",
                color=colours[h % len(colours)],
            )
        if key in reference:
            ax.axhline(float(reference[key]), color="0.3", ls="--", lw=1, label=reference_label)
        ax.set_xticks(x, labels, fontsize=8)
        default = f"{key}: {STAT_UNITS[key].split(' (')[0]}" if key in STAT_UNITS else key
        ax.set_title("\n".join(textwrap.wrap(titles.get(key, default), 64)), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[len(keys) :]:
        ax.set_axis_off()
    legend = {}  # name -> handle, in order: the reference line (if any), then the heads
    for ax in axes[: len(keys)]:
        for handle, name in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(name, handle)
    if reference_label in legend:
        legend = {reference_label: legend.pop(reference_label), **legend}
    axes[-1].legend(list(legend.values()), list(legend), loc="center", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


# ------------------------------------------------------------------------- mixture weights


def mixture_weights(model):
    """softmax(alpha) per layer: (n_layers,H,N) float64, or None if the model is no mixture."""
    if not model.attn[0].mixture:
        return None
    out = []
    for i in range(len(model.attn)):
        a = np.asarray(model.params[f"blocks.{i}.attn.alpha"], dtype=np.float64)  # (H,N)
        e = np.exp(a - a.max(axis=-1, keepdims=True))
        out.append(e / e.sum(axis=-1, keepdims=True))
    return np.stack(out)


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


def _as_weights(weights, name="weights"):
    """Mixture weights (n_layers,H,N) as float64, checked to sum to 1 over the components."""
    w = np.asarray(weights) if isinstance(weights, (list, tuple)) else weights
    if not isinstance(w, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(w).__name__}")
    if w.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {w.dtype}")
    if w.ndim != 3 or w.size == 0:
        raise ValueError(f"{name} must have shape (n_layers, H, N), got {w.shape}")
    w = w.astype(np.float64)
    if not np.isfinite(w).all() or w.min() < 0 or np.abs(w.sum(-1) - 1).max() > ROW_SUM_TOL:
        raise ValueError(
            f"{name} must be finite, non-negative, and sum to 1 over the components "
            "(softmax(alpha), see mixture_weights)"
        )
    return w


# ------------------------------------------------------------------------------- curves


def read_metrics(path):
    """Records of a run's ``metrics.jsonl`` (``path`` is the file or the run directory).

    Lines that are not JSON objects with an integer ``step`` (e.g. a torn last line
    of a killed run) are skipped; a file with no usable line is a ValueError.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"no metrics file at {path}")
    records = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int):
            records.append(rec)
    if not records:
        raise ValueError(f"{path} holds no metrics records (expected JSON lines with 'step')")
    return records


def run_name(path):
    """A short label for a run: its directory's name (also for a metrics or checkpoint file)."""
    p = Path(path).resolve()
    if p.is_file() or p.suffix in (".jsonl", ".npz"):
        return p.parent.name if p.stem in ("metrics", "checkpoint") else p.stem
    return p.name


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


# ------------------------------------------------------------------ checkpoints and runs


def encode_text(text):
    """UTF-8 bytes of ``text`` as an int64 array (the model is byte-level); never empty."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    # surrogateescape keeps undecodable command-line bytes as the bytes they were
    tokens = np.frombuffer(text.encode("utf-8", errors="surrogateescape"), dtype=np.uint8)
    if tokens.size == 0:
        raise ValueError("the input text is empty; give at least one character")
    return tokens.astype(np.int64)


def _decode(tokens):
    return bytes(np.asarray(tokens, dtype=np.uint8).tolist()).decode("utf-8", errors="replace")


def load_model(checkpoint):
    """(model, checkpoint dict) from a checkpoint file, or a run directory holding
    ``checkpoint.npz``; raises CheckpointError (a ValueError) naming any problem."""
    from .checkpoint import load_checkpoint

    return load_checkpoint(checkpoint)


def attention_maps(model, tokens):
    """Attention probabilities of every layer of ``model`` on ``tokens``: list of (H,T,T)."""
    toks = _as_tokens(tokens)
    if toks.size == 0:
        raise ValueError("tokens must hold at least one byte")
    _, cache = model.forward_with_cache(toks[None])  # idx (1,T)
    return [np.asarray(b.attn.probs[0], dtype=np.float64) for b in cache.blocks]  # (H,T,T)


def _fit(tokens, max_len, log, who):
    """Truncate to ``max_len`` bytes, saying so: the model cannot attend further."""
    if tokens.size > max_len:
        log(
            f"truncated the input from {tokens.size} to {max_len} bytes "
            f"(the max_len of {who}); only those are plotted"
        )
        return tokens[:max_len]
    return tokens


def _write_json(path, obj):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")
    return path


def _out_dir(out_dir):
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    return out


def plot_checkpoint(
    checkpoint, tokens, out_dir, *, fmt="png", source=None, scale="sqrt", log=print
):
    """Attention grid (and mixture weights) of one checkpoint on one input, plus statistics.

    Writes ``attention.<fmt>``, ``alpha.<fmt>`` for mixtures, and ``stats.json`` into
    ``out_dir``; prints (through ``log``) any truncation, the paths and a statistics
    table. Returns a dict with ``paths``, ``stats`` (one attention_stats dict per
    layer) and the ``tokens`` used.
    """
    fmt = check_format(fmt)
    toks = _as_tokens(tokens)
    if toks.size == 0:
        raise ValueError("the input is empty; give at least one byte")
    model, data = load_model(checkpoint)
    cfg = model.config
    n_in = int(toks.size)
    toks = _fit(toks, cfg.max_len, log, "this model")
    maps = attention_maps(model, toks)  # n_layers x (H,T,T)
    weights = mixture_weights(model)
    parts = model.attn[0].parts
    out = _out_dir(out_dir)
    name = run_name(checkpoint)
    paths = {
        "attention": plot_attention_grid(
            maps,
            out / f"attention.{fmt}",
            tokens=toks,
            kind=cfg.attention,
            title=f"{cfg.attention} attention of {name} (step {int(data['step'])}), "
            f"{cfg.n_layers} layers x {cfg.n_heads} heads",
            mix_weights=weights,
            components=parts if weights is not None else None,
            scale=scale,
        )
    }
    if weights is not None:
        paths["alpha"] = plot_alpha(
            weights,
            out / f"alpha.{fmt}",
            components=parts,
            title=f"learned mixture weights softmax(alpha) of {name} ({cfg.attention})",
        )
    stats = [attention_stats(m) for m in maps]
    report = {
        "checkpoint": str(checkpoint),
        "attention": cfg.attention,
        "step": int(data["step"]),
        "input_independent": is_input_independent(cfg.attention),
        "input": {
            "source": source or "tokens",
            "bytes": int(toks.size),
            "truncated_from": n_in if n_in > toks.size else None,
            "text": _decode(toks),
        },
        "units": STAT_UNITS,
        "layers": [{"layer": i, "heads": _stats_rows(s)} for i, s in enumerate(stats)],
    }
    if weights is not None:
        report["mixture_weights"] = {
            "components": list(parts),
            "layers": weights.tolist(),  # (n_layers, H, N) softmax(alpha)
        }
    paths["stats"] = _write_json(out / "stats.json", report)
    log(f"attention maps: {paths['attention']}")
    if "alpha" in paths:
        log(f"mixture weights: {paths['alpha']}")
    log(
        "alignment statistics per head (entropy in nats; distance = expected |i - j|; "
        "diag = mass on j = i; prev = mass on j = i - 1):"
    )
    log(format_stats_table([(f"layer {i}", s) for i, s in enumerate(stats)]))
    log(f"statistics: {paths['stats']}")
    return {"paths": paths, "stats": stats, "tokens": toks}


def _resolve_layer(layer, n_layers, checkpoint):
    if layer is None:
        return n_layers - 1
    if not -n_layers <= layer < n_layers:
        raise ValueError(f"--layer {layer} is out of range for {checkpoint} ({n_layers} layers)")
    return layer % n_layers


def _unique(names):
    seen, out = {}, []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n} ({seen[n]})")
    return out


def compare_checkpoints(
    checkpoints, tokens, out_dir, *, layer=None, fmt="png", source=None, scale="sqrt", log=print
):
    """The same input through several models: one row per model (heads of ``layer``,
    default each model's last), pairwise mean JS divergence, and statistics.

    Writes ``compare.<fmt>`` and ``stats.json`` into ``out_dir``. Returns a dict with
    ``paths``, ``stats`` (per model), ``js`` (dict (i, j) -> mean JS in nats).
    """
    fmt = check_format(fmt)
    if isinstance(checkpoints, (str, os.PathLike)) or len(checkpoints) < 2:
        raise ValueError("compare needs at least two checkpoints")
    toks = _as_tokens(tokens)
    if toks.size == 0:
        raise ValueError("the input is empty; give at least one byte")
    models = [load_model(c)[0] for c in checkpoints]
    names = _unique([run_name(c) for c in checkpoints])
    n_in = int(toks.size)
    shortest = min(range(len(models)), key=lambda k: models[k].config.max_len)
    toks = _fit(toks, models[shortest].config.max_len, log, names[shortest])
    layers_used = [
        _resolve_layer(layer, m.config.n_layers, c)
        for m, c in zip(models, checkpoints, strict=True)
    ]
    maps = [attention_maps(m, toks)[k] for m, k in zip(models, layers_used, strict=True)]
    labels = []
    for m, name, k in zip(models, names, layers_used, strict=True):
        kind = m.config.attention
        note = ", input-independent" if is_input_independent(kind) else ""
        labels.append(f"{kind}{note}\n{name}, layer {k}")
    out = _out_dir(out_dir)
    same_layer = len(set(layers_used)) == 1
    path = plot_compare(
        maps,
        out / f"compare.{fmt}",
        labels=labels,
        tokens=toks,
        title=f"{len(models)} models on the same input, "
        + (f"layer {layers_used[0]}" if same_layer else "layer as labelled"),
        scale=scale,
    )
    stats = [attention_stats(m) for m in maps]
    js, pairs = {}, []
    for a in range(len(maps)):
        for b in range(a + 1, len(maps)):
            if maps[a].shape == maps[b].shape:
                value, how = js_divergence(maps[a], maps[b]), "head by head"
            else:  # different head counts: no head-to-head pairing exists
                value = js_divergence(maps[a].mean(axis=0), maps[b].mean(axis=0))
                how = "head-averaged maps (the head counts differ)"
            js[(a, b)] = value
            pairs.append({"a": names[a], "b": names[b], "js_divergence": value, "compared": how})
    report = {
        "input": {
            "source": source or "tokens",
            "bytes": int(toks.size),
            "truncated_from": n_in if n_in > toks.size else None,
            "text": _decode(toks),
        },
        "units": {
            **STAT_UNITS,
            "js_divergence": "mean over rows and heads of the per-row Jensen-Shannon "
            "divergence, natural log (0 = identical, ln 2 = 0.693 = disjoint)",
        },
        "models": [
            {
                "name": n,
                "checkpoint": str(c),
                "attention": m.config.attention,
                "layer": k,
                "heads": _stats_rows(s),
            }
            for n, c, m, k, s in zip(names, checkpoints, models, layers_used, stats, strict=True)
        ],
        "pairs": pairs,
    }
    stats_path = _write_json(out / "stats.json", report)
    log(f"comparison: {path}")
    log("alignment statistics of the compared layer (entropy in nats):")
    log(format_stats_table(list(zip(names, stats, strict=True))))
    log("mean Jensen-Shannon divergence between models (nats, at most ln 2 = 0.693):")
    for p in pairs:
        log(f"  {p['a']} vs {p['b']}: {p['js_divergence']:.4f} ({p['compared']})")
    log(f"statistics: {stats_path}")
    return {"paths": {"compare": path, "stats": stats_path}, "stats": stats, "js": js}


def curves_for_runs(runs, out, *, fmt=None, log=print):
    """Plot the curves of run directories (or metrics files) ``runs`` into ``out``.

    ``out`` is a file if it ends in .png/.svg/.pdf, else a directory receiving
    ``curves.<fmt>`` (default png). Returns the written Path.
    """
    if isinstance(runs, (str, os.PathLike)):
        runs = [runs]
    if not runs:
        raise ValueError("give at least one run directory or metrics.jsonl file")
    out = Path(out)
    suffix = out.suffix.lower().lstrip(".")
    if suffix in FORMATS:
        if fmt is not None and check_format(fmt) != suffix:
            raise ValueError(f"--format {fmt} conflicts with the file name {out}")
        path = out
    else:
        path = _out_dir(out) / f"curves.{check_format(fmt or 'png')}"
    names = _unique([run_name(r) for r in runs])
    data = {n: read_metrics(r) for n, r in zip(names, runs, strict=True)}
    path = plot_curves(data, path)
    log(f"training curves: {path}")
    for n, recs in data.items():
        vals = [r["val_bpc"] for r in recs if _finite(r.get("val_bpc"))]
        last = f", last val BPC {vals[-1]:.4f}" if vals else ", no validation yet"
        log(f"  {n}: {len(recs)} records up to step {max(r['step'] for r in recs)}{last}")
    return path
