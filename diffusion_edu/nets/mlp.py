r"""A small time-conditioned MLP for scores and noise predictions on low-dimensional data.

``net(x, t)``: ``x`` is ``(B, D)``, ``t`` a float or ``(B,)`` tensor. The time is embedded
with sinusoids of ``t_scale * t`` (``t_scale = 1000`` maps ``t in [0, 1]`` to the range the
embedding's frequencies were designed for), passed through a small MLP, and added to every
hidden layer; the output has the shape of ``x``.
"""

from __future__ import annotations

import torch
from torch import nn

from .embeddings import sinusoidal_embedding


class TimeMLP(nn.Module):
    """``dim -> hidden x depth -> dim`` with SiLU and an additive time embedding per layer.

    Examples
    --------
    >>> net = TimeMLP(dim=2)
    >>> net(torch.zeros(5, 2), torch.rand(5)).shape
    torch.Size([5, 2])
    """

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, time_dim: int = 64,
                 t_scale: float = 1000.0):
        super().__init__()
        if min(dim, hidden, depth, time_dim) < 1:
            raise ValueError("dim, hidden, depth and time_dim must be positive")
        self.config = dict(dim=dim, hidden=hidden, depth=depth, time_dim=time_dim, t_scale=t_scale)
        self.dim, self.time_dim, self.t_scale = dim, time_dim, t_scale
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.inp = nn.Linear(dim, hidden)
        self.layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.time_proj = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.out = nn.Linear(hidden, dim)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}), got {tuple(x.shape)}")
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        emb = self.time_mlp(sinusoidal_embedding(self.t_scale * t, self.time_dim).to(x.dtype))  # (B, H)
        h = self.inp(x)  # (B, H)
        for layer, proj in zip(self.layers, self.time_proj):
            h = h + layer(self.act(h + proj(emb)))  # residual block conditioned on t
        return self.out(self.act(h))  # (B, D)
