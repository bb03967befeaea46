"""Numbers of attention maps: alignment statistics, divergence, mixture weights.

Pure functions, arrays in and numbers out (nothing is drawn here):

* :func:`attention_stats` -- per-head row entropy (nats), mean attention
  distance, mass on the diagonal and on the previous token (:data:`STAT_UNITS`);
* :func:`js_divergence` -- mean Jensen-Shannon divergence of two sets of maps;
* :func:`format_stats_table` -- those statistics as a Markdown table;
* :func:`mixture_weights` -- softmax(alpha) of every layer of a mixture model;
* :func:`is_input_independent` -- whether a kind's maps ignore the input.
"""

from __future__ import annotations

import math

import numpy as np

from .._validate import FLOAT_DTYPES
from ..attention import KINDS

LN2 = math.log(2.0)
ROW_SUM_TOL = 1e-3  # float32 softmax rows sum to 1 within ~1e-6; this only catches non-maps
STAT_UNITS = {
    "entropy_nats": "mean row entropy in nats (natural log; a uniform row over n keys has ln n)",
    "distance": "mean over rows of the expected |i - j| in positions",
    "diagonal": "mean attention mass on j = i",
    "previous": "mean attention mass on j = i - 1, over rows i >= 1 (null when T = 1)",
}


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


def is_input_independent(kind):
    """True if every component of ``kind`` ('random', 'dense+vanilla', ...) ignores the input."""
    if not isinstance(kind, str) or not kind:
        raise TypeError(f"kind must be a non-empty string, got {kind!r}")
    parts = [part.strip() for part in kind.split("+")]
    return all(part in KINDS and KINDS[part].input_independent for part in parts)


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
