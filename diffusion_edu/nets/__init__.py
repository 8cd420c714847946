"""Networks. Every network is called as ``net(x, t)`` with ``x: (B, *dims)`` and ``t: (B,)``."""

from .embeddings import sinusoidal_embedding
from .mlp import TimeMLP

__all__ = ["TimeMLP", "sinusoidal_embedding"]
