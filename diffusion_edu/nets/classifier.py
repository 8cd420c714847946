r"""An image classifier built from the UNet's encoder, optionally noise-conditional.

Two chapters need a classifier of digits:

- chapter 8 measures sample quality with a classifier of *clean* images: the fraction of
  samples it labels confidently, and the Fréchet distance between its penultimate features on
  generated and on real images (the recipe of FID, Heusel et al., 2017, with a digit
  classifier in place of Inception);
- chapter 9 guides sampling with a *noise-conditional* classifier ``p(y | x_t, t)``
  (Dhariwal & Nichol, 2021): its gradient ``grad_x log p(y | x_t, t)`` is added to the score.

Both are the downsampling half of :class:`~diffusion_edu.nets.unet.UNet` (residual blocks,
optional attention), followed by ``GroupNorm -> SiLU -> global average pool`` (the features,
``(B, C)``) and a linear layer (the logits, ``(B, num_classes)``). With ``time_conditional=True``
the blocks are scaled and shifted by a time embedding exactly as in the UNet, and the network is
called as ``net(x, t)``; otherwise ``net(x)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .unet import Downsample, ResBlock, SelfAttention, TimeEmbedding, _run, group_norm

__all__ = ["Classifier"]


class Classifier(nn.Module):
    """Encoder-half-of-a-UNet classifier: ``net(x[, t]) -> logits (B, num_classes)``.

    Examples
    --------
    >>> net = Classifier(1, 10, base_channels=16, channel_mults=(1, 2))
    >>> net(torch.randn(3, 1, 8, 8)).shape, net.features(torch.randn(3, 1, 8, 8)).shape
    (torch.Size([3, 10]), torch.Size([3, 32]))
    >>> noisy = Classifier(1, 10, base_channels=16, time_conditional=True)
    >>> noisy(torch.randn(3, 1, 8, 8), torch.tensor([0, 500, 999])).shape
    torch.Size([3, 10])
    """

    def __init__(
        self, in_channels: int = 1, num_classes: int = 10, base_channels: int = 32,
        channel_mults: tuple[int, ...] = (1, 2), num_res_blocks: int = 1,
        attention_resolutions: tuple[int, ...] = (), dropout: float = 0.0,
        time_conditional: bool = False, *, t_scale: float = 1.0,
    ):
        super().__init__()
        if min(in_channels, num_classes, base_channels, num_res_blocks) < 1:
            raise ValueError("in_channels, num_classes, base_channels and num_res_blocks must be positive")
        channel_mults, attention_resolutions = tuple(channel_mults), tuple(attention_resolutions)
        self.config = dict(
            in_channels=in_channels, num_classes=num_classes, base_channels=base_channels,
            channel_mults=list(channel_mults), num_res_blocks=num_res_blocks,
            attention_resolutions=list(attention_resolutions), dropout=dropout,
            time_conditional=time_conditional, t_scale=t_scale,
        )
        self.in_channels, self.time_conditional = in_channels, time_conditional
        self.levels = len(channel_mults)
        emb_dim = 4 * base_channels if time_conditional else None
        self.time_embed = TimeEmbedding(base_channels, emb_dim, t_scale) if time_conditional else None
        self.input_conv = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        self.blocks = nn.ModuleList()
        ch, ds = base_channels, 1
        for level, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                self.blocks.append(ResBlock(ch, base_channels * mult, emb_dim, dropout))
                ch = base_channels * mult
                if ds in attention_resolutions:
                    self.blocks.append(SelfAttention(ch))
            if level < self.levels - 1:
                self.blocks.append(Downsample(ch))
                ds *= 2
        self.norm = group_norm(ch)
        self.head = nn.Linear(ch, num_classes)
        self.feature_dim = ch

    def features(self, x: torch.Tensor, t=None) -> torch.Tensor:
        """Penultimate features ``(B, C)``: the pooled output of the encoder."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        emb = None
        if self.time_conditional:
            if t is None:
                raise ValueError("t is required: this classifier is noise-conditional")
            t = torch.as_tensor(t, device=x.device)
            emb = self.time_embed(t.expand(x.shape[0]) if t.ndim == 0 else t)  # (B, 4 base)
        elif t is not None:
            raise ValueError("t was given but this classifier is not time-conditional")
        h = _run(self.blocks, self.input_conv(x), emb)  # (B, C, H / 2^(L-1), W / 2^(L-1))
        return F.silu(self.norm(h)).mean(dim=(2, 3))  # (B, C)

    def forward(self, x: torch.Tensor, t=None) -> torch.Tensor:
        return self.head(self.features(x, t))  # (B, num_classes)
