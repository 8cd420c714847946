r"""A DiffWave-style waveform denoiser (Kong et al., 2021): a stack of residual layers of dilated
1-D convolutions with a gated activation, as in WaveNet, made non-causal and conditioned on the
noise level and a class label.

``net(x, t)`` or ``net(x, t, y=y)``: ``x`` is ``(B, 1, L)`` (any length ``L``), ``t`` a float or a
``(B,)`` tensor of schedule times, ``y`` an optional ``(B,)`` long tensor of labels; the output has
``x``'s shape.

The pieces:

- the input ``Conv1x1 -> ReLU`` lifts the wave to ``C`` residual channels;
- the noise level: a sinusoidal embedding of ``t_scale * t`` through two ``Linear -> SiLU``
  layers gives ``emb`` ``(B, E)``; each residual layer maps it to ``C`` channels and adds it to
  its input, the same number at every position;
- the label: an embedding table with one extra row, the *null label* ``K`` of classifier-free
  guidance (Ho & Salimans, 2022), as in :class:`~diffusion_edu.nets.unet.UNet`; each residual
  layer maps it to ``2 C`` channels and adds it after the dilated convolution (a per-layer bias,
  the same at every position);
- residual layer ``i`` (:class:`ResidualLayer`): with ``h`` its input,

  .. math::  z = \mathrm{DilatedConv}_{d_i}(h + W_t\,\mathrm{emb}) + W_y\,\mathrm{emb}_y, \qquad
             a = \tanh(z_{\text{filter}}) \odot \sigma(z_{\text{gate}}),

  a ``Conv1x1`` of ``a`` splits into a residual part, returned as ``(h + res) / sqrt 2``, and a
  skip part; the dilation ``d_i = 2^(i mod cycle)`` doubles from layer to layer, so ``n`` layers of
  kernel 3 see ``1 + 2 (2^n - 1)`` samples (one cycle);
- the output: the skips summed and scaled by ``1 / sqrt(layers)``, then
  ``ReLU -> Conv1x1 -> ReLU -> Conv1x1``, the last one initialised to zero.

Time (the rule of :mod:`diffusion_edu.nets`): ``t_scale = 1`` for DDPM indices ``0 .. N-1`` with
``N`` near 1000; pass ``t_scale=1000`` for ``t in [0, 1]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .embeddings import batch_times, class_labels, sinusoidal_embedding

__all__ = ["DiffWave", "ResidualLayer"]


class ResidualLayer(nn.Module):
    """One DiffWave residual layer: ``(h (B, C, L), emb (B, E), label (B, E) | None) -> (h', skip)``,
    both ``(B, C, L)`` (module docstring for the equations)."""

    def __init__(self, channels: int, emb_dim: int, dilation: int, kernel_size: int = 3, conditional: bool = False):
        super().__init__()
        self.t_proj = nn.Linear(emb_dim, channels)
        self.dilated = nn.Conv1d(channels, 2 * channels, kernel_size, dilation=dilation,
                                 padding=dilation * (kernel_size - 1) // 2)  # keeps the length L
        self.y_proj = nn.Linear(emb_dim, 2 * channels) if conditional else None
        self.out = nn.Conv1d(channels, 2 * channels, 1)

    def forward(self, h: torch.Tensor, emb: torch.Tensor, label: torch.Tensor | None = None):
        z = self.dilated(h + self.t_proj(emb)[:, :, None])  # (B, 2C, L)
        if self.y_proj is not None:
            z = z + self.y_proj(label)[:, :, None]  # the label as a bias, (B, 2C, 1)
        filt, gate = z.chunk(2, dim=1)  # 2 x (B, C, L)
        a = torch.tanh(filt) * torch.sigmoid(gate)  # the gated activation unit
        res, skip = self.out(a).chunk(2, dim=1)  # 2 x (B, C, L)
        return (h + res) / math.sqrt(2), skip


class DiffWave(nn.Module):
    """A DiffWave-style denoiser for waves ``(B, in_channels, L)``; see the module docstring.

    Parameters
    ----------
    in_channels : channels of the wave (1 for mono)
    channels : residual channels ``C``
    layers : number of residual layers
    dilation_cycle : the dilation of layer ``i`` is ``2^(i mod dilation_cycle)``
    kernel_size : odd kernel size of the dilated convolutions
    num_classes : ``None`` (unconditional) or the number of classes ``K``; label ``K`` is the null
        class, used when ``y`` is omitted
    emb_dim : size ``E`` of the noise-level and label embeddings (default ``4 C``)
    t_scale : the time is embedded as ``t_scale * t``

    Examples
    --------
    >>> net = DiffWave(channels=16, layers=4, num_classes=8)
    >>> x, t = torch.randn(3, 1, 100), torch.randint(1000, (3,))
    >>> net(x, t).shape, net(x, t, torch.tensor([0, 3, 8])).shape, net.receptive_field
    (torch.Size([3, 1, 100]), torch.Size([3, 1, 100]), 31)
    >>> DiffWave(**net.config).config == net.config
    True
    """

    def __init__(
        self, in_channels: int = 1, channels: int = 32, layers: int = 8, dilation_cycle: int = 8,
        kernel_size: int = 3, num_classes: int | None = None, emb_dim: int | None = None, *, t_scale: float = 1.0,
    ):
        super().__init__()
        for name, v in (("in_channels", in_channels), ("channels", channels), ("layers", layers),
                        ("dilation_cycle", dilation_cycle), ("kernel_size", kernel_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (the output keeps the input's length), got {kernel_size}")
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                        or num_classes < 1):
            raise ValueError(f"num_classes must be None or a positive int, got {num_classes!r}")
        emb_dim = 4 * channels if emb_dim is None else emb_dim
        if isinstance(emb_dim, bool) or not isinstance(emb_dim, int) or emb_dim < 2 or emb_dim % 2:
            raise ValueError(f"emb_dim must be an even int >= 2, got {emb_dim!r}")
        if not (isinstance(t_scale, (int, float)) and math.isfinite(t_scale) and t_scale > 0):
            raise ValueError(f"t_scale must be a positive number, got {t_scale!r}")
        self.config = dict(in_channels=in_channels, channels=channels, layers=layers, dilation_cycle=dilation_cycle,
                           kernel_size=kernel_size, num_classes=num_classes, emb_dim=emb_dim, t_scale=float(t_scale))
        self.in_channels, self.num_classes, self.emb_dim = in_channels, num_classes, emb_dim
        self.t_scale = float(t_scale)
        self.dilations = [2 ** (i % dilation_cycle) for i in range(layers)]
        self.receptive_field = 1 + (kernel_size - 1) * sum(self.dilations)

        self.input = nn.Conv1d(in_channels, channels, 1)
        self.time_mlp = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim), nn.SiLU())
        # one extra row: the null label of classifier-free guidance
        self.class_embed = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        self.layers = nn.ModuleList([ResidualLayer(channels, emb_dim, d, kernel_size, conditional=bool(num_classes))
                                     for d in self.dilations])
        self.skip_out = nn.Conv1d(channels, channels, 1)
        self.final = nn.Conv1d(channels, in_channels, 1)
        nn.init.zeros_(self.final.weight)
        nn.init.zeros_(self.final.bias)  # the network starts by predicting 0

    @property
    def null_label(self) -> int | None:
        """The label of the null class (``num_classes``); ``None`` for an unconditional net."""
        return self.num_classes

    def forward(self, x: torch.Tensor, t, y: torch.Tensor | None = None) -> torch.Tensor:
        if not torch.is_tensor(x) or x.ndim != 3 or x.shape[1] != self.in_channels:
            got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"x must have shape (B, {self.in_channels}, L), got {got}")
        B = x.shape[0]
        t = batch_times(t, B, x.device)
        emb = self.time_mlp(sinusoidal_embedding(self.t_scale * t.float(), self.emb_dim).to(x.dtype))  # (B, E)
        label = None
        if self.class_embed is not None:
            label = self.class_embed(class_labels(y, B, self.null_label, x.device))  # (B, E)
        elif y is not None:
            raise ValueError("y was given but this DiffWave is unconditional (num_classes=None)")

        h = F.relu(self.input(x))  # (B, C, L)
        skip = torch.zeros_like(h)
        for layer in self.layers:
            h, s = layer(h, emb, label)  # (B, C, L) each
            skip = skip + s
        h = F.relu(self.skip_out(F.relu(skip / math.sqrt(len(self.layers)))))  # (B, C, L)
        return self.final(h)  # (B, in_channels, L)
