"""minisynth: a from-scratch, autograd-free reference for Synthesizer attention.

Tay et al., 2020, "Synthesizer: Rethinking Self-Attention in Transformer Models".
Shape letters used throughout the package are fixed in :mod:`minisynth.layers`.
"""

__version__ = "0.1.0"

from .backend import get_backend, set_backend, use_backend  # noqa: E402
from .model import ModelConfig, SynthesizerLM  # noqa: E402

__all__ = [
    "ModelConfig",
    "SynthesizerLM",
    "__version__",
    "get_backend",
    "set_backend",
    "use_backend",
]
