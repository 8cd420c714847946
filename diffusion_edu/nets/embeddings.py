r"""Sinusoidal time embedding (Vaswani et al., 2017; used for diffusion by Ho et al., 2020).

``emb(t)_i = sin(t w_i)`` and ``emb(t)_{i + d/2} = cos(t w_i)``, with frequencies
``w_i = max_period^(-i / (d/2))`` for ``i = 0 .. d/2 - 1``.
"""

from __future__ import annotations

import math

import torch


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Embed ``t`` of shape ``(B,)`` as ``(B, dim)`` sines and cosines (``dim`` even)."""
    if dim % 2:
        raise ValueError(f"dim must be even, got {dim}")
    if t.ndim != 1:
        raise ValueError(f"t must have shape (B,), got {tuple(t.shape)}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)  # (half,)
    args = t.float()[:, None] * freqs[None, :]  # (B, half)
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)  # (B, dim)


def batch_times(t, batch: int, device) -> torch.Tensor:
    """A float or 0-d time broadcast to ``(batch,)``, or a ``(batch,)`` tensor, on ``device``."""
    t = torch.as_tensor(t, device=device)
    t = t.expand(batch) if t.ndim == 0 else t
    if t.shape != (batch,):
        raise ValueError(f"t must be a float or have shape ({batch},), got {tuple(t.shape)}")
    return t


def class_labels(y, batch: int, null_label: int, device) -> torch.Tensor:
    """Checked class labels ``(batch,)`` in ``0 .. null_label``; ``None`` is the null class (the
    unconditional model of classifier-free guidance)."""
    if y is None:
        return torch.full((batch,), null_label, dtype=torch.long, device=device)
    if not isinstance(y, torch.Tensor) or y.shape != (batch,) or y.dtype != torch.long or (
        not torch.compiler.is_compiling() and (y.min() < 0 or y.max() > null_label)
    ):
        raise ValueError(
            f"y must be a ({batch},) long tensor of labels in 0..{null_label} ({null_label} = null class), "
            f"got {getattr(y, 'dtype', type(y).__name__)} {tuple(getattr(y, 'shape', ()))}"
        )
    return y
