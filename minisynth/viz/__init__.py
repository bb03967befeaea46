"""Pictures and numbers of what a Synthesizer learns: attention maps, mixture weights, curves.

Three modules, one job each:

* :mod:`minisynth.viz.stats` -- numbers of maps (alignment statistics, divergence,
  mixture weights), nothing drawn;
* :mod:`minisynth.viz.figures` -- figures (map grids, model comparisons, mixture
  weights, training curves), drawn on :class:`matplotlib.figure.Figure` objects
  without pyplot;
* :mod:`minisynth.viz.runs` -- checkpoints and run folders to those figures and
  numbers: what ``minisynth plot``, ``compare`` and ``curves`` do.

Their public names are all available from :mod:`minisynth.viz` itself.
"""

from ..data import encode_text
from .figures import (
    CMAP,
    CURVES_FIGSIZE,
    DPI,
    FORMATS,
    MAX_TICK_LABELS,
    alpha_figsize,
    byte_labels,
    check_format,
    grid_figsize,
    plot_alpha,
    plot_attention_grid,
    plot_compare,
    plot_curves,
    show_figure,
)
from .runs import (
    attention_maps,
    compare_checkpoints,
    curves_for_runs,
    load_model,
    plot_checkpoint,
    read_metrics,
    run_name,
)
from .stats import (
    ROW_SUM_TOL,
    STAT_UNITS,
    attention_stats,
    format_stats_table,
    is_input_independent,
    js_divergence,
    mixture_weights,
)

__all__ = [
    "CMAP",
    "CURVES_FIGSIZE",
    "DPI",
    "FORMATS",
    "MAX_TICK_LABELS",
    "ROW_SUM_TOL",
    "STAT_UNITS",
    "alpha_figsize",
    "attention_maps",
    "attention_stats",
    "byte_labels",
    "check_format",
    "compare_checkpoints",
    "curves_for_runs",
    "encode_text",
    "format_stats_table",
    "grid_figsize",
    "is_input_independent",
    "js_divergence",
    "load_model",
    "mixture_weights",
    "plot_alpha",
    "plot_attention_grid",
    "plot_checkpoint",
    "plot_compare",
    "plot_curves",
    "read_metrics",
    "run_name",
    "show_figure",
]
