"""minisynth: a from-scratch, autograd-free reference for Synthesizer attention.

Tay et al., 2020, "Synthesizer: Rethinking Self-Attention in Transformer Models".
Shape letters used throughout the package are fixed in :mod:`minisynth.layers`.

Two paths compute the same numbers. The reference (``layers``, ``attention``,
``model``, ``optim``) is written as the paper's math and is what a model built in
Python runs, so that stepping into it in a debugger lands in the equations. The
fast path (:mod:`minisynth.fast`: Numba twins of reference functions, the batch
split over threads, a malloc setting) is behind one wall, and a model takes it
when built with ``backend="numba"`` (:mod:`minisynth.backend`); ``minisynth
train`` and the benchmarks do.
"""

__version__ = "0.1.0"

from .model import ModelConfig, SynthesizerLM  # noqa: E402

__all__ = ["ModelConfig", "SynthesizerLM", "__version__"]
