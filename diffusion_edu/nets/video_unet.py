r"""A video denoiser that factorises space and time (Ho et al., 2022, "Video Diffusion Models").

``net(x, t)`` or ``net(x, t, y=y)`` with ``x`` of shape ``(B, C, T, H, W)`` (``T`` frames), ``t`` a
float or a ``(B,)`` tensor of schedule times, ``y`` optional class labels; the output has ``x``'s
shape (``out_channels`` channels).

Ho et al. turn the image UNet into a video UNet by two changes, and so does this module:

- every 2-D layer of :class:`~diffusion_edu.nets.unet.UNet` (convolutions, residual blocks, spatial
  self-attention, down- and upsampling) runs on each frame separately: the frames are folded into
  the batch, ``(B, C, T, H, W) -> (B T, C, H, W)``; the time embedding is shared by the frames;
- after every residual block (and after its spatial attention, if any) come the **temporal**
  layers, which mix information across frames at each pixel and nowhere else:

  * :class:`TemporalConv`: ``h <- h + Conv1d_k(SiLU(GN(h)))`` along the frame axis, a
    ``k x 1 x 1`` convolution (zero padding at the clip's ends);
  * :class:`TemporalAttention`: multi-head self-attention over the ``T`` frames of each pixel,
    ``softmax(q k^T / sqrt(d) + b_{i - j}) v``, with a learned bias ``b`` per head and per frame
    offset ``i - j`` (a relative position embedding, as in Ho et al.; without it attention
    could not tell the order of the frames).

  Both end in a zero-initialised layer, so at initialisation they are the identity.

``temporal=False`` leaves the temporal layers out: the same spatial layers, each frame denoised
on its own, i.e. an image model applied frame by frame. Its parameters then carry exactly the
names of a :class:`~diffusion_edu.nets.unet.UNet` of the same configuration, and the two compute
the same function (the tests load one's weights into the other).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .embeddings import batch_times, class_labels
from .unet import ResBlock, SelfAttention, UNet, _zero, group_norm

__all__ = ["VideoUNet", "TemporalConv", "TemporalAttention"]


class TemporalConv(nn.Module):
    """``(B T, C, H, W) -> (B T, C, H, W)``: ``h + Conv1d(SiLU(GroupNorm(h)))`` along the frames at
    every pixel; the convolution has ``kernel`` taps and starts at zero."""

    def __init__(self, channels: int, kernel: int = 3):
        super().__init__()
        if isinstance(kernel, bool) or not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel must be an odd positive int, got {kernel!r}")
        self.norm = group_norm(channels)
        self.conv = _zero(nn.Conv1d(channels, channels, kernel, padding=kernel // 2))

    def forward(self, h: torch.Tensor, frames: int) -> torch.Tensor:
        BT, C, H, W = h.shape
        k = self.conv.kernel_size[0]
        z = F.silu(self.norm(h)).reshape(BT // frames, frames, C, H * W)  # (B, T, C, HW): a view, no copy
        z = F.pad(z, (0, 0, 0, 0, k // 2, k // 2))  # (B, T + k - 1, C, HW): zeros beyond the clip
        w = self.conv.weight  # (C_out, C_in, k)
        # out[t] = bias + sum_s W_s z[t + s - k//2]: the Conv1d along the frames, as k matrix products
        out = sum(torch.einsum("oc,btcp->btop", w[:, :, s], z[:, s:s + frames]) for s in range(k))
        out = out + self.conv.bias[:, None]  # (B, T, C, HW)
        return h + out.reshape(BT, C, H, W)


class TemporalAttention(nn.Module):
    r"""Self-attention over the frames of every pixel, residual, with a relative position bias:

    .. math::  h_i \leftarrow h_i + W_o \sum_j \operatorname{softmax}_j\Big(\frac{q_i \cdot k_j}{\sqrt{d_h}}
               + b_{i - j}\Big) v_j ,

    ``i, j`` frame indices, one learned ``b`` per head and offset ``-(max_frames - 1) .. max_frames - 1``
    (zero at initialisation), ``W_o`` zero at initialisation.
    """

    def __init__(self, channels: int, head_channels: int = 32, max_frames: int = 32):
        super().__init__()
        self.heads = max(1, channels // head_channels)
        if channels % self.heads:
            raise ValueError(f"channels ({channels}) must be divisible by the number of heads ({self.heads})")
        self.max_frames = max_frames
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.rel_bias = nn.Parameter(torch.zeros(self.heads, 2 * max_frames - 1))
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def bias(self, frames: int) -> torch.Tensor:
        """``(heads, T, T)`` with entry ``[h, i, j] = b[h, i - j]``."""
        i = torch.arange(frames, device=self.rel_bias.device)
        return self.rel_bias[:, i[:, None] - i[None, :] + self.max_frames - 1]  # (heads, T, T)

    def forward(self, h: torch.Tensor, frames: int) -> torch.Tensor:
        BT, C, H, W = h.shape
        B, nh, dh = BT // frames, self.heads, C // self.heads
        qkv = self.qkv(self.norm(h)).reshape(B, frames, 3, nh, dh, H * W)  # (B, T, 3, nh, dh, HW): a view
        q, k, v = qkv.unbind(2)  # 3 x (B, T, nh, dh, HW)
        scores = torch.einsum("bindp,bjndp->bnpij", q, k) / dh ** 0.5  # (B, nh, HW, T, T)
        weights = torch.softmax(scores + self.bias(frames)[None, :, None], dim=-1)  # bias (1, nh, 1, T, T)
        z = torch.einsum("bnpij,bjndp->bindp", weights, v).reshape(BT, C, H, W)  # (B T, C, H, W)
        return h + self.proj(z)


class VideoUNet(UNet):
    """A space-time factorised video UNet; see the module docstring.

    Parameters
    ----------
    in_channels, out_channels, base_channels, channel_mults, num_res_blocks, attention_resolutions,
    dropout, num_classes, head_channels, t_scale : as for :class:`~diffusion_edu.nets.unet.UNet`
        (they configure the per-frame 2-D layers; ``attention_resolutions`` is spatial attention)
    temporal : add the temporal layers (``False``: the per-frame image model)
    temporal_kernel : taps of each :class:`TemporalConv` (odd); ``0``: no temporal convolutions
    temporal_attention : add a :class:`TemporalAttention` after each temporal convolution position
    max_frames : the longest clip the relative position bias of temporal attention covers

    Examples
    --------
    >>> net = VideoUNet(1, 1, 16, (1, 2), 1, attention_resolutions=())
    >>> x, t = torch.randn(2, 1, 8, 16, 16), torch.tensor([10, 900])
    >>> net(x, t).shape
    torch.Size([2, 1, 8, 16, 16])
    >>> image_model = VideoUNet(1, 1, 16, (1, 2), 1, attention_resolutions=(), temporal=False)
    >>> sum(p.numel() for p in net.parameters()) > sum(p.numel() for p in image_model.parameters())
    True
    """

    def __init__(
        self, in_channels: int = 1, out_channels: int | None = None, base_channels: int = 32,
        channel_mults: tuple[int, ...] = (1, 2), num_res_blocks: int = 1,
        attention_resolutions: tuple[int, ...] = (), dropout: float = 0.0,
        num_classes: int | None = None, *, head_channels: int = 32, t_scale: float = 1.0,
        temporal: bool = True, temporal_kernel: int = 3, temporal_attention: bool = True,
        max_frames: int = 32,
    ):
        super().__init__(in_channels, out_channels, base_channels, channel_mults, num_res_blocks,
                         attention_resolutions, dropout, num_classes, head_channels=head_channels,
                         t_scale=t_scale)
        if not isinstance(temporal, bool):
            raise ValueError(f"temporal must be a bool, got {temporal!r}")
        if not isinstance(temporal_attention, bool):
            raise ValueError(f"temporal_attention must be a bool, got {temporal_attention!r}")
        if isinstance(temporal_kernel, bool) or not isinstance(temporal_kernel, int) or temporal_kernel < 0 or (
                temporal_kernel and temporal_kernel % 2 == 0):
            raise ValueError(f"temporal_kernel must be 0 or an odd positive int, got {temporal_kernel!r}")
        if isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1:
            raise ValueError(f"max_frames must be a positive int, got {max_frames!r}")
        if temporal and not temporal_kernel and not temporal_attention:
            raise ValueError("temporal=True needs temporal_kernel > 0 or temporal_attention=True")
        self.config.update(temporal=temporal, temporal_kernel=temporal_kernel,
                           temporal_attention=temporal_attention, max_frames=max_frames)
        self.temporal, self.max_frames = temporal, max_frames
        self.uses_temporal_attention = temporal and temporal_attention
        if temporal:  # insert the temporal layers after each residual block (and its spatial attention)
            for stage in (self.down, self.up):
                for i, layers in enumerate(stage):
                    stage[i] = self._with_temporal(layers, temporal_kernel, temporal_attention, head_channels)
            self.middle = self._with_temporal(self.middle, temporal_kernel, temporal_attention, head_channels)

    def _with_temporal(self, layers: nn.ModuleList, kernel: int, attention: bool, head_channels: int) -> nn.ModuleList:
        out = []
        for j, layer in enumerate(layers):
            out.append(layer)
            nxt = layers[j + 1] if j + 1 < len(layers) else None
            if isinstance(layer, (ResBlock, SelfAttention)) and not isinstance(nxt, SelfAttention):
                ch = layer.conv1.out_channels if isinstance(layer, ResBlock) else layer.qkv.in_channels
                if kernel:
                    out.append(TemporalConv(ch, kernel))
                if attention:
                    out.append(TemporalAttention(ch, head_channels, self.max_frames))
        return nn.ModuleList(out)

    def forward(self, x: torch.Tensor, t, y: torch.Tensor | None = None) -> torch.Tensor:
        if not torch.is_tensor(x) or x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (B, {self.in_channels}, T, H, W), got "
                             f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
        B, C, T, H, W = x.shape
        div = 2 ** (self.levels - 1)
        if H % div or W % div:
            raise ValueError(f"x's height and width must be divisible by {div}, got {(H, W)}")
        if self.uses_temporal_attention and T > self.max_frames:
            raise ValueError(f"x has {T} frames, more than max_frames={self.max_frames}")
        t = batch_times(t, B, x.device)
        emb = self.time_embed(t)  # (B, 4 base)
        if self.class_embed is not None:
            emb = emb + self.class_embed(class_labels(y, B, self.null_label, x.device))
        elif y is not None:
            raise ValueError("y was given but this VideoUNet is unconditional (num_classes=None)")
        emb = emb.repeat_interleave(T, dim=0)  # (B T, 4 base): one time for all frames of a clip

        h = self.input_conv(x.transpose(1, 2).reshape(B * T, C, H, W))  # frames folded: (B T, base, H, W)
        skips = [h]
        for layers in self.down:
            h = _run(layers, h, emb, T)  # (B T, C_level, H / ds, W / ds)
            skips.append(h)
        h = _run(self.middle, h, emb, T)
        for layers in self.up:
            h = _run(layers, torch.cat([h, skips.pop()], dim=1), emb, T)
        out = self.out(h)  # (B T, out_channels, H, W)
        return out.reshape(B, T, self.out_channels, H, W).transpose(1, 2)  # (B, out_channels, T, H, W)


def _run(layers: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor, frames: int) -> torch.Tensor:
    """Apply a list of layers to frames folded into the batch ``(B T, C, H, W)``."""
    for layer in layers:
        if isinstance(layer, ResBlock):
            h = layer(h, emb)
        elif isinstance(layer, (TemporalConv, TemporalAttention)):
            h = layer(h, frames)
        else:
            h = layer(h)
    return h
