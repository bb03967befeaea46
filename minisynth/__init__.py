"""minisynth: a from-scratch, autograd-free reference for Synthesizer attention.

Tay et al., 2020, "Synthesizer: Rethinking Self-Attention in Transformer Models".
Shape letters used throughout the package are fixed in :mod:`minisynth.layers`.

Two paths compute the same numbers. The reference (``layers``, ``attention``,
``model``, ``optim``) is written as the paper's math and is what runs by default,
so that stepping into a model in a debugger lands in the equations. The fast path
(:mod:`minisynth.fast`: Numba kernels swapped in for reference functions, the batch
split over threads, a malloc setting) is behind one wall and selected with
``set_backend("numba")``; ``minisynth train`` and the benchmarks use it.
"""

__version__ = "0.1.0"

from .fast.backend import get_backend, set_backend, use_backend  # noqa: E402
from .model import ModelConfig, SynthesizerLM  # noqa: E402

__all__ = [
    "ModelConfig",
    "SynthesizerLM",
    "__version__",
    "get_backend",
    "set_backend",
    "use_backend",
]
