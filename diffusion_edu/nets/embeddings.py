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
