r"""The UNet of image diffusion models (Ronneberger et al., 2015; as used by Ho et al., 2020,
and improved by Nichol & Dhariwal, 2021, and Dhariwal & Nichol, 2021).

``net(x, t)`` or ``net(x, t, y=y)``: ``x`` is ``(B, C, H, W)``, ``t`` a float or a ``(B,)`` tensor,
``y`` an optional ``(B,)`` long tensor of class labels; the output is ``(B, out_channels, H, W)``.

The pieces, each a small module below:

- a sinusoidal embedding of ``t_scale * t`` (Vaswani et al., 2017) through a two-layer MLP gives
  a vector ``emb`` of size ``4 * base_channels``; a class embedding is added to it;
- :class:`ResBlock`: ``GroupNorm -> SiLU -> conv3x3``, then the embedding *scales and shifts*
  the normalised features, ``h <- GroupNorm(h) * (1 + scale(emb)) + shift(emb)``
  (adaptive group normalisation of Dhariwal & Nichol, 2021), ``SiLU -> dropout -> conv3x3``,
  added to the (1x1-projected) input;
- :class:`SelfAttention`: multi-head self-attention over the ``H * W`` positions through
  :func:`torch.nn.functional.scaled_dot_product_attention` (a fused kernel on GPUs);
- :class:`Downsample` (3x3 convolution with stride 2) and :class:`Upsample` (nearest-neighbour
  upsampling then a 3x3 convolution);
- the encoder halves the resolution ``len(channel_mults) - 1`` times and stores every
  activation; the decoder concatenates them back ("skip connections"), one more block per
  level than the encoder.

``attention_resolutions`` are *downsampling factors*, as in the improved-diffusion code:
``1`` means attention at the input resolution, ``2`` at half of it, ``4`` at a quarter. The same
configuration therefore serves 8x8 digits and 32x32 photographs.

Class conditioning (``num_classes=K``): labels ``0 .. K-1`` are the classes and the label ``K``
(:attr:`UNet.null_label`) is the *null class* of classifier-free guidance (Ho & Salimans, 2022):
``net(x, t)`` without labels means the null class, i.e. the unconditional model.

Text conditioning (``context_dim=d``, the latent-diffusion UNet of Rombach et al., 2022): every
attention level (and the middle block) also gets a :class:`CrossAttention` layer whose queries are
the image positions and whose keys and values are the prompt's token vectors,
``net(x, t, context=c, context_mask=m)`` with ``c`` of shape ``(B, tokens, d)`` and ``m`` a
``(B, tokens)`` bool tensor (True = a real token). Padded tokens get exactly zero attention weight;
a row without real tokens, and ``context=None``, is the *empty prompt*: the cross-attention adds
only its output bias, the same for every such row. With ``pooled_context=True`` the mean of the
real tokens' vectors, through a linear layer, is also added to the time embedding, as Imagen does
(Saharia et al., 2022, Sec. 2.5: "a pooled embedding vector, added to the diffusion timestep
embedding", beside cross-attention): a global path for what the whole prompt says (which digit),
next to the per-position path of cross-attention. The empty prompt pools to the zero vector.

Time (the rule of :mod:`diffusion_edu.nets`): with the default ``t_scale = 1`` the network expects
the DDPM training index ``n`` in ``0 .. N-1`` (the times of a
:class:`~diffusion_edu.schedules.DDPMSchedule`); for a continuous time ``t in [0, 1]`` pass
``t_scale=1000``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .embeddings import batch_times, class_labels, sinusoidal_embedding

__all__ = ["UNet", "ResBlock", "SelfAttention", "CrossAttention", "Downsample", "Upsample", "TimeEmbedding",
           "group_norm", "pool_context"]


def group_norm(channels: int, max_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with ``gcd(32, channels)`` groups (32 when ``channels`` is a multiple of 32)."""
    return nn.GroupNorm(math.gcd(max_groups, channels), channels)


def _zero(module: nn.Module) -> nn.Module:
    """Zero a layer's weights and bias: a residual branch then starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class TimeEmbedding(nn.Module):
    """``t (B,) -> sinusoidal_embedding(t_scale * t) -> Linear -> SiLU -> Linear -> (B, dim)``."""

    def __init__(self, channels: int, dim: int, t_scale: float = 1.0):
        super().__init__()
        self.channels, self.t_scale = channels, t_scale
        self.mlp = nn.Sequential(nn.Linear(channels, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = sinusoidal_embedding(self.t_scale * t.float(), self.channels)  # (B, channels)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))  # (B, dim)


class ResBlock(nn.Module):
    """Residual block whose normalised features are scaled and shifted by an embedding.

    ``emb_dim=None`` gives a plain (unconditioned) residual block.
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int | None, dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch) if emb_dim is not None else None
        self.norm2 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, out_ch, H, W)
        h = self.norm2(h)
        if self.emb is not None:
            scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)  # 2 x (B, out_ch, 1, 1)
            h = h * (1 + scale) + shift  # adaptive group norm
        h = self.conv2(self.dropout(F.silu(h)))  # (B, out_ch, H, W)
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over the ``H * W`` positions of a feature map, residual."""

    def __init__(self, channels: int, head_channels: int = 32):
        super().__init__()
        self.heads = max(1, channels // head_channels)
        if channels % self.heads:
            raise ValueError(f"channels ({channels}) must be divisible by the number of heads ({self.heads})")
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W)
        # contiguous: SDPA's fused kernels need stride 1 in the last dimension
        q, k, v = qkv.transpose(-1, -2).contiguous().unbind(1)  # 3 x (B, heads, H*W, C/heads)
        h = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v: (B, heads, H*W, C/heads)
        h = h.transpose(-1, -2).reshape(B, C, H, W)  # (B, C, H, W)
        return x + self.proj(h)


class CrossAttention(nn.Module):
    r"""Multi-head cross-attention from the ``H * W`` positions of a feature map to the tokens of
    a prompt, residual:

    .. math::  h_p = \sum_j \operatorname{softmax}_j\Big(\frac{q_p \cdot k_j}{\sqrt{d_h}} + \log m_j\Big) v_j,
               \qquad q = W_q\,\mathrm{GN}(x), \quad k = W_k c, \quad v = W_v c ,

    with ``m_j in {0, 1}`` the token mask (a padded token has weight exactly 0). A row with no
    real token (the empty prompt) gets ``h = 0``; the output ``x + W_o h`` then adds only
    ``W_o``'s bias. ``W_o`` starts at zero, so the layer starts as the identity.
    """

    def __init__(self, channels: int, context_dim: int, head_channels: int = 32):
        super().__init__()
        self.heads = max(1, channels // head_channels)
        if channels % self.heads:
            raise ValueError(f"channels ({channels}) must be divisible by the number of heads ({self.heads})")
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.kv = nn.Linear(context_dim, 2 * channels)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
        B, C, H, W = x.shape
        if context is None:  # the empty prompt for the whole batch
            return x + self.proj(torch.zeros_like(x))
        nh, dh = self.heads, C // self.heads
        q = self.q(self.norm(x)).reshape(B, nh, dh, H * W).transpose(-1, -2).contiguous()  # (B, nh, HW, dh)
        k, v = self.kv(context).reshape(B, -1, 2, nh, dh).permute(2, 0, 3, 1, 4).unbind(0)  # 2 x (B, nh, L, dh)
        has_token = mask.any(1)  # (B,)
        # rows without a real token attend to everything (finite, then zeroed), so no NaN reaches
        # the gradients
        attend = (mask | ~has_token[:, None])[:, None, None, :]  # (B, 1, 1, L)
        h = F.scaled_dot_product_attention(q, k.contiguous(), v.contiguous(), attn_mask=attend)  # (B, nh, HW, dh)
        h = h * has_token[:, None, None, None].to(h.dtype)
        h = h.transpose(-1, -2).reshape(B, C, H, W)  # (B, C, H, W)
        return x + self.proj(h)


class Downsample(nn.Module):
    """``(B, C, H, W) -> (B, C, H/2, W/2)`` by a 3x3 convolution with stride 2."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """``(B, C, H, W) -> (B, C, 2H, 2W)``: nearest-neighbour upsampling, then a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """A diffusion UNet; see the module docstring for the pieces and the conventions.

    Parameters
    ----------
    in_channels, out_channels : image channels in and out (``out_channels=None``: same as in)
    base_channels : channels at the input resolution; level ``i`` has
        ``base_channels * channel_mults[i]``
    channel_mults : one multiplier per resolution level; the image is halved between levels
    num_res_blocks : residual blocks per level in the encoder (the decoder has one more)
    attention_resolutions : downsampling factors at which self-attention is used
        (``1`` = input resolution, ``2`` = half, ...); the middle block always has attention
    dropout : dropout probability inside the residual blocks
    num_classes : ``None`` (unconditional) or the number of classes ``K``; label ``K`` is the
        null class, used when ``y`` is omitted
    head_channels : channels per attention head
    t_scale : the time is embedded as ``t_scale * t`` (1 for DDPM step indices, 1000 for
        ``t in [0, 1]``)
    context_dim : ``None``, or the size of the prompt's token vectors: adds a
        :class:`CrossAttention` layer after every self-attention layer
    pooled_context : with ``context_dim``, also add a linear map of the mean of the prompt's real
        token vectors (:func:`pool_context`) to the time embedding (Imagen's pooled text embedding)

    Examples
    --------
    >>> net = UNet(1, 1, 32, (1, 2), 1, attention_resolutions=(2,), num_classes=10)
    >>> x, t = torch.randn(4, 1, 8, 8), torch.randint(1000, (4,))
    >>> net(x, t).shape, net(x, t, torch.tensor([0, 1, 2, 3])).shape
    (torch.Size([4, 1, 8, 8]), torch.Size([4, 1, 8, 8]))
    """

    def __init__(
        self, in_channels: int = 1, out_channels: int | None = None, base_channels: int = 64,
        channel_mults: tuple[int, ...] = (1, 2, 2), num_res_blocks: int = 2,
        attention_resolutions: tuple[int, ...] = (2,), dropout: float = 0.0,
        num_classes: int | None = None, *, head_channels: int = 32, t_scale: float = 1.0,
        context_dim: int | None = None, pooled_context: bool = False,
    ):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        channel_mults, attention_resolutions = tuple(channel_mults), tuple(attention_resolutions)
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels),
                        ("base_channels", base_channels), ("num_res_blocks", num_res_blocks)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not channel_mults or any(not isinstance(m, int) or m < 1 for m in channel_mults):
            raise ValueError(f"channel_mults must be a non-empty tuple of positive ints, got {channel_mults!r}")
        factors = {2**i for i in range(len(channel_mults))}
        if not set(attention_resolutions) <= factors:
            raise ValueError(
                f"attention_resolutions must be downsampling factors among {sorted(factors)}, "
                f"got {attention_resolutions!r}"
            )
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
            raise ValueError(f"num_classes must be None or a positive int, got {num_classes!r}")
        if context_dim is not None and (not isinstance(context_dim, int) or context_dim < 1):
            raise ValueError(f"context_dim must be None or a positive int, got {context_dim!r}")
        if pooled_context not in (True, False):
            raise ValueError(f"pooled_context must be True or False, got {pooled_context!r}")
        if pooled_context and context_dim is None:
            raise ValueError("pooled_context=True needs a context_dim (the prompt's token width)")
        self.context_dim = context_dim
        self.config = dict(
            in_channels=in_channels, out_channels=out_channels, base_channels=base_channels,
            channel_mults=list(channel_mults), num_res_blocks=num_res_blocks,
            attention_resolutions=list(attention_resolutions), dropout=dropout,
            num_classes=num_classes, head_channels=head_channels, t_scale=t_scale,
        )
        if context_dim is not None:  # only when used, so older configs stay valid
            self.config["context_dim"] = context_dim
        if pooled_context:
            self.config["pooled_context"] = True
        self.in_channels, self.out_channels, self.num_classes = in_channels, out_channels, num_classes
        self.levels = len(channel_mults)
        emb_dim = 4 * base_channels

        self.time_embed = TimeEmbedding(base_channels, emb_dim, t_scale)
        # one extra row: the null class of classifier-free guidance
        self.class_embed = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        # the mean of the prompt's token vectors -> the time embedding (Imagen's pooled text embedding)
        self.context_pool = nn.Linear(context_dim, emb_dim) if pooled_context else None

        def block(cin, cout, ds):
            layers = nn.ModuleList([ResBlock(cin, cout, emb_dim, dropout)])
            if ds in attention_resolutions:
                layers.append(SelfAttention(cout, head_channels))
                if context_dim is not None:
                    layers.append(CrossAttention(cout, context_dim, head_channels))
            return layers

        # Encoder: remember the channels of every stored activation for the skips.
        self.input_conv = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        self.down = nn.ModuleList()
        skip_channels, ch, ds = [base_channels], base_channels, 1
        for level, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                self.down.append(block(ch, base_channels * mult, ds))
                ch = base_channels * mult
                skip_channels.append(ch)
            if level < self.levels - 1:
                self.down.append(nn.ModuleList([Downsample(ch)]))
                ds *= 2
                skip_channels.append(ch)

        self.middle = nn.ModuleList([
            ResBlock(ch, ch, emb_dim, dropout), SelfAttention(ch, head_channels),
            *([CrossAttention(ch, context_dim, head_channels)] if context_dim is not None else []),
            ResBlock(ch, ch, emb_dim, dropout),
        ])

        # Decoder: num_res_blocks + 1 blocks per level, each eating one stored activation.
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mults))):
            for i in range(num_res_blocks + 1):
                layers = block(ch + skip_channels.pop(), base_channels * mult, ds)
                ch = base_channels * mult
                if level > 0 and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.up.append(layers)

        self.out = nn.Sequential(group_norm(ch), nn.SiLU(), _zero(nn.Conv2d(ch, out_channels, 3, padding=1)))

    @property
    def null_label(self) -> int:
        """The label of the null class (``num_classes``); ``None`` for an unconditional net."""
        return self.num_classes

    def forward(self, x: torch.Tensor, t, y: torch.Tensor | None = None, *,
                context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        div = 2 ** (self.levels - 1)
        if x.shape[-1] % div or x.shape[-2] % div:
            raise ValueError(f"x's height and width must be divisible by {div}, got {tuple(x.shape[-2:])}")
        B = x.shape[0]
        t = batch_times(t, B, x.device)
        emb = self.time_embed(t)  # (B, 4 base)
        if self.class_embed is not None:
            y = class_labels(y, B, self.null_label, x.device)
            emb = emb + self.class_embed(y)  # (B, 4 base)
        elif y is not None:
            raise ValueError("y was given but this UNet is unconditional (num_classes=None)")
        ctx = self._check_context(context, context_mask, B)
        if self.context_pool is not None:
            pooled = emb.new_zeros(B, self.context_dim) if ctx[0] is None else pool_context(*ctx)  # (B, d)
            emb = emb + self.context_pool(pooled)  # (B, 4 base)

        h = self.input_conv(x)  # (B, base, H, W)
        skips = [h]
        for layers in self.down:
            h = _run(layers, h, emb, ctx)  # (B, C_level, H / ds, W / ds)
            skips.append(h)
        h = _run(self.middle, h, emb, ctx)  # (B, C_last, H / 2^(L-1), W / 2^(L-1))
        for layers in self.up:
            h = torch.cat([h, skips.pop()], dim=1)  # (B, C + C_skip, H / ds, W / ds)
            h = _run(layers, h, emb, ctx)
        return self.out(h)  # (B, out_channels, H, W)

    def _check_context(self, context, mask, B):
        """``(context, mask)`` checked, the mask all True when omitted; ``(None, None)`` without."""
        if context is None:
            if mask is not None:
                raise ValueError("context_mask was given without context")
            return None, None
        if self.context_dim is None:
            raise ValueError("context was given but this UNet has no cross-attention (context_dim=None)")
        if context.ndim != 3 or context.shape[0] != B or context.shape[2] != self.context_dim:
            raise ValueError(f"context must have shape ({B}, tokens, {self.context_dim}), got {tuple(context.shape)}")
        if mask is None:
            mask = torch.ones(context.shape[:2], dtype=torch.bool, device=context.device)
        elif mask.shape != context.shape[:2] or mask.dtype != torch.bool:
            raise ValueError(f"context_mask must be a {tuple(context.shape[:2])} bool tensor (True = a real token), "
                             f"got {mask.dtype} {tuple(mask.shape)}")
        return context, mask


def pool_context(context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of the real tokens' vectors, ``(B, d)``: ``sum_j m_j c_j / max(1, sum_j m_j)``.
    Padding is ignored exactly; a row without real tokens gives zeros (the empty prompt)."""
    m = mask.to(context.dtype)[..., None]  # (B, L, 1)
    return (context * m).sum(1) / m.sum(1).clamp(min=1.0)


def _run(layers: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor, ctx=(None, None)) -> torch.Tensor:
    """Apply a list of layers; residual blocks also receive the embedding, cross-attention the prompt."""
    for layer in layers:
        if isinstance(layer, ResBlock):
            h = layer(h, emb)
        elif isinstance(layer, CrossAttention):
            h = layer(h, *ctx)
        else:
            h = layer(h)
    return h
