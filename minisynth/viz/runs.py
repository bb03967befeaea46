"""Checkpoints and run folders to figures and numbers: what ``minisynth plot``,
``compare`` and ``curves`` do (the commands are thin wrappers).

:func:`plot_checkpoint` draws one model's maps and writes their statistics,
:func:`compare_checkpoints` several models on one input, :func:`curves_for_runs`
the training curves of run folders; :func:`attention_maps` and
:func:`read_metrics` are the readers underneath.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..data import decode
from ..run_folder import metrics_lines
from .figures import (
    FORMATS,
    _as_tokens,
    _finite,
    check_format,
    plot_alpha,
    plot_attention_grid,
    plot_compare,
    plot_curves,
)
from .stats import (
    STAT_UNITS,
    _stats_rows,
    attention_stats,
    format_stats_table,
    is_input_independent,
    js_divergence,
    mixture_weights,
)


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
    if not path.is_file():
        raise ValueError(f"{path} is not a regular file")
    records = []
    for line in metrics_lines(path):
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


def load_model(checkpoint):
    """(model, checkpoint dict) from a checkpoint file, or a run directory holding
    ``checkpoint.npz``; raises CheckpointError (a ValueError) naming any problem."""
    from ..checkpoint import load_checkpoint

    return load_checkpoint(checkpoint)


def attention_maps(model, tokens):
    """Attention probabilities of every layer of ``model`` on ``tokens``: list of (H,T,T)."""
    toks = _as_tokens(tokens)
    if toks.size == 0:
        raise ValueError("tokens must hold at least one byte")
    _, cache = model.forward_with_cache(toks[None])  # idx (1,T)
    return [np.asarray(b.attn.probs[0], dtype=np.float64) for b in cache.blocks]  # (H,T,T)


def _truncated_to_max_len(tokens, max_len, log, who):
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
    toks = _truncated_to_max_len(toks, cfg.max_len, log, "this model")
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
            "text": decode(toks),
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
    toks = _truncated_to_max_len(toks, models[shortest].config.max_len, log, names[shortest])
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
    js, pairs = _pairwise_divergences(maps, names)
    report = {
        "input": {
            "source": source or "tokens",
            "bytes": int(toks.size),
            "truncated_from": n_in if n_in > toks.size else None,
            "text": decode(toks),
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


def _pairwise_divergences(maps, names):
    """Mean JS divergence of every pair of models' maps: ({(i, j): nats}, report rows)."""
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
    return js, pairs


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
    if suffix and suffix not in FORMATS and not out.is_dir():
        raise ValueError(
            f"--out {out}: .{suffix} is not an image format minisynth writes; give a file "
            f"ending in {', '.join('.' + f for f in FORMATS)}, or a folder"
        )
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
