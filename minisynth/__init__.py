"""minisynth: a from-scratch, autograd-free reference for Synthesizer attention.

Tay et al., 2020, "Synthesizer: Rethinking Self-Attention in Transformer Models".
Shape letters used throughout the package are fixed in :mod:`minisynth.layers`.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
