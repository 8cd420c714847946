"""Networks. Every network is called as ``net(x, t)`` with ``x: (B, *dims)`` and ``t: (B,)``
(optionally ``net(x, t, y)`` with class labels ``y: (B,)``)."""

from .classifier import Classifier
from .embeddings import sinusoidal_embedding
from .mlp import TimeMLP
from .unet import UNet

__all__ = ["TimeMLP", "UNet", "Classifier", "sinusoidal_embedding"]
