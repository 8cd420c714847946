r"""A small Diffusion Transformer (DiT; Peebles & Xie, 2023, "Scalable diffusion models with
transformers", ICCV), with cross-attention to prompt tokens as in PixArt-alpha (Chen et al., 2024).

``net(x, t, y=None, context=None, context_mask=None)``: ``x`` is ``(B, C, H, W)`` with
``H = W = input_size``, ``t`` a float or a ``(B,)`` tensor of schedule times, ``y`` optional
``(B,)`` class labels, ``context`` optional ``(B, T, context_dim)`` prompt tokens and
``context_mask`` an optional ``(B, T)`` bool tensor (``True`` = a real token); the output is
``(B, out_channels, H, W)``.

The pieces:

- **patchify**: a ``p x p`` convolution with stride ``p`` cuts the image into
  ``N = (H / p)^2`` patches and embeds each as a token of width ``dim``; a *fixed* 2-D sin-cos
  position embedding is added (the first half of the channels encodes the row, the second half
  the column, each as the 1-D embedding ``[sin(pos w_i), cos(pos w_i)]``, ``w_i = 10000^(-i/(dim/4))``);
- **conditioning vector** ``c = MLP(sinusoidal(t_scale * t)) + Embed(y)`` of width ``dim`` (the
  :class:`~diffusion_edu.nets.unet.TimeEmbedding` of the UNet; label ``num_classes`` is the
  null class of classifier-free guidance, :attr:`DiT.null_label`);
- **adaLN-Zero blocks** (Sec. 3.2 of the paper). ``c`` gives six vectors per block,
  ``(shift_a, scale_a, gate_a, shift_m, scale_m, gate_m) = Linear(SiLU(c))``, and with
  ``mod(h, shift, scale) = LayerNorm(h) * (1 + scale) + shift``

  .. math::

      h &\leftarrow h + \mathrm{gate}_a \odot \mathrm{SelfAttn}(\mathrm{mod}(h, \mathrm{shift}_a, \mathrm{scale}_a)) \\
      h &\leftarrow h + \mathrm{CrossAttn}(\mathrm{LayerNorm}(h), \mathrm{context}) \quad\text{(when context\_dim is set)} \\
      h &\leftarrow h + \mathrm{gate}_m \odot \mathrm{MLP}(\mathrm{mod}(h, \mathrm{shift}_m, \mathrm{scale}_m))

  The modulation ``Linear`` and the cross-attention's output projection are zero-initialised,
  so every block starts as the identity ("Zero" in adaLN-Zero);
- **final layer**: ``mod(h, shift, scale)`` from ``Linear(SiLU(c))``, then a zero-initialised
  ``Linear(dim, p * p * out_channels)``, so the whole network outputs exactly 0 at
  initialisation; **unpatchify** puts the patches back into ``(B, out_channels, H, W)``.

Cross-attention: ``softmax(q k^T / sqrt(d) + mask) v`` with queries from the image tokens and
keys/values from ``[null token, context]``. The *null token* is a learned vector of width
``context_dim`` that is always present and never masked. Padded tokens get ``-inf`` before the
softmax, so their weight is exactly 0 and their values have exactly no effect. The empty prompt
(``context=None``, or a row whose mask is all ``False``) therefore attends only to the null
token: a well-defined, learned "no prompt" signal for classifier-free guidance, never a
softmax over nothing (which would give NaN).

Time follows the rule of :mod:`diffusion_edu.nets`: ``t_scale=1`` for DDPM indices ``0 .. N-1``,
``t_scale=1000`` for ``t in [0, 1]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .embeddings import batch_times, class_labels
from .unet import TimeEmbedding

__all__ = ["DiT", "DiTBlock", "CrossAttention", "sincos_position_embedding_2d"]


def sincos_position_embedding_2d(grid_size: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding of a ``grid_size x grid_size`` grid of patches.

    Token ``n = row * grid_size + col`` gets ``[e(row), e(col)]`` with the 1-D embedding
    ``e(pos) = [sin(pos w_0), .., sin(pos w_{k-1}), cos(pos w_0), .., cos(pos w_{k-1})]``,
    ``w_i = 10000^(-i/k)``, ``k = dim / 4`` (as in MAE and DiT).

    Returns
    -------
    ``(grid_size**2, dim)`` float tensor.

    Examples
    --------
    >>> pe = sincos_position_embedding_2d(4, 8)
    >>> pe.shape, pe[0].tolist()  # row 0, column 0: sin 0 = 0, cos 0 = 1
    (torch.Size([16, 8]), [0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0])
    """
    if not isinstance(grid_size, int) or grid_size < 1:
        raise ValueError(f"grid_size must be a positive int, got {grid_size!r}")
    if not isinstance(dim, int) or dim < 4 or dim % 4:
        raise ValueError(f"dim must be a positive multiple of 4, got {dim!r}")
    k = dim // 4
    omega = 10_000.0 ** (-torch.arange(k, dtype=torch.float64) / k)  # (k,)
    pos = torch.arange(grid_size, dtype=torch.float64)[:, None] * omega[None, :]  # (G, k)
    e = torch.cat([torch.sin(pos), torch.cos(pos)], dim=1)  # (G, dim/2): the 1-D embedding
    rows = e[:, None, :].expand(grid_size, grid_size, dim // 2)  # (G, G, dim/2), varies with row
    cols = e[None, :, :].expand(grid_size, grid_size, dim // 2)  # (G, G, dim/2), varies with column
    return torch.cat([rows, cols], dim=-1).reshape(grid_size * grid_size, dim).float()  # (N, dim)


def _modulate(h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``h * (1 + scale) + shift`` for tokens ``h: (B, N, D)`` and per-sample ``shift, scale: (B, D)``."""
    return h * (1 + scale[:, None, :]) + shift[:, None, :]


def _heads(h: torch.Tensor, heads: int) -> torch.Tensor:
    """``(B, L, D) -> (B, heads, L, D / heads)``."""
    B, L, D = h.shape
    return h.reshape(B, L, heads, D // heads).transpose(1, 2)


class CrossAttention(nn.Module):
    """Multi-head attention from image tokens ``(B, N, dim)`` to context tokens ``(B, T, context_dim)``.

    ``out = proj(softmax(q k^T / sqrt(d) + mask) v)`` with ``q = W_q LayerNorm(h)``,
    ``k = W_k c``, ``v = W_v c``; ``mask`` is 0 for real tokens and ``-inf`` for padding.
    The caller supplies at least one real token per row (the DiT prepends its null token).
    ``proj`` is zero-initialised, so the sublayer starts by adding 0.
    """

    def __init__(self, dim: int, context_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q = _heads(self.q(self.norm(h)), self.heads)  # (B, heads, N, d)
        k, v = (_heads(a, self.heads) for a in self.kv(context).chunk(2, dim=-1))  # 2 x (B, heads, T, d)
        # bool attn_mask: True = take part; padded keys get -inf, i.e. weight exactly 0
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])  # (B, heads, N, d)
        return self.proj(a.transpose(1, 2).reshape(h.shape))  # (B, N, dim)


class DiTBlock(nn.Module):
    """One adaLN-Zero transformer block (Fig. 3 of Peebles & Xie), optionally with cross-attention.

    ``forward(h, c, context=None, mask=None)``: tokens ``h: (B, N, dim)``, conditioning vector
    ``c: (B, dim)``, context ``(B, T, context_dim)`` and its bool mask ``(B, T)``.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, context_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_proj = nn.Linear(dim, dim)
        self.cross = CrossAttention(dim, context_dim, heads) if context_dim is not None else None
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.adaLN[1].weight)  # adaLN-Zero: every gate starts at 0
        nn.init.zeros_(self.adaLN[1].bias)

    def forward(self, h: torch.Tensor, c: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN(c).chunk(6, dim=1)  # 6 x (B, dim)
        # self-attention sublayer
        q, k, v = (_heads(a, self.heads) for a in self.qkv(_modulate(self.norm1(h), shift_a, scale_a)).chunk(3, -1))
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(h.shape)  # (B, N, dim)
        h = h + gate_a[:, None, :] * self.attn_proj(a)
        # cross-attention sublayer (not gated: PixArt-alpha's choice; its projection starts at 0)
        if self.cross is not None:
            h = h + self.cross(h, context, mask)  # (B, N, dim)
        # MLP sublayer
        return h + gate_m[:, None, :] * self.mlp(_modulate(self.norm2(h), shift_m, scale_m))  # (B, N, dim)


class DiT(nn.Module):
    """A Diffusion Transformer; see the module docstring for the pieces and the conventions.

    Parameters
    ----------
    in_channels, out_channels : channels of ``x`` and of the output
    input_size : height and width of ``x`` (square), a multiple of ``patch_size``
    patch_size : side ``p`` of the square patches; there are ``(input_size / p)^2`` tokens
    dim : token width; a multiple of 4 (position embedding) and of ``heads``
    depth : number of blocks
    heads : attention heads
    context_dim : width of the prompt tokens (``None``: no cross-attention)
    num_classes : ``None`` or the number of classes ``K``; label ``K`` is the null class
    mlp_ratio : the MLP's hidden width is ``int(dim * mlp_ratio)``
    t_scale : the time is embedded as ``t_scale * t``

    Examples
    --------
    >>> net = DiT(4, 4, input_size=8, patch_size=2, dim=32, depth=2, heads=2, context_dim=16)
    >>> x, ctx, mask = torch.randn(3, 4, 8, 8), torch.randn(3, 5, 16), torch.ones(3, 5, dtype=torch.bool)
    >>> net(x, torch.tensor([1, 500, 999]), context=ctx, context_mask=mask).shape
    torch.Size([3, 4, 8, 8])
    >>> net(x, 10.0).abs().max().item()  # adaLN-Zero: exactly 0 at initialisation
    0.0
    """

    def __init__(
        self, in_channels: int = 4, out_channels: int = 4, input_size: int = 8, patch_size: int = 2,
        dim: int = 128, depth: int = 4, heads: int = 4, context_dim: int | None = None,
        num_classes: int | None = None, mlp_ratio: float = 4.0, t_scale: float = 1.0,
    ):
        super().__init__()
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels),
                        ("input_size", input_size), ("patch_size", patch_size), ("dim", dim),
                        ("depth", depth), ("heads", heads)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if input_size % patch_size:
            raise ValueError(f"input_size must be divisible by patch_size ({patch_size}), got {input_size}")
        if dim % 4 or dim % heads:
            raise ValueError(f"dim must be a multiple of 4 and of heads ({heads}), got {dim}")
        for name, v in (("context_dim", context_dim), ("num_classes", num_classes)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be None or a positive int, got {v!r}")
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or int(dim * mlp_ratio) < 1:
            raise ValueError(f"mlp_ratio must be a positive number with int(dim * mlp_ratio) >= 1, got {mlp_ratio!r}")
        if isinstance(t_scale, bool) or not isinstance(t_scale, (int, float)) or not t_scale > 0:
            raise ValueError(f"t_scale must be a positive number, got {t_scale!r}")
        self.config = dict(
            in_channels=in_channels, out_channels=out_channels, input_size=input_size,
            patch_size=patch_size, dim=dim, depth=depth, heads=heads, context_dim=context_dim,
            num_classes=num_classes, mlp_ratio=mlp_ratio, t_scale=t_scale,
        )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.input_size, self.patch_size = input_size, patch_size
        self.context_dim, self.num_classes = context_dim, num_classes
        self.grid = input_size // patch_size

        self.patchify = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.register_buffer("pos_embed", sincos_position_embedding_2d(self.grid, dim), persistent=False)
        self.time_embed = TimeEmbedding(dim, dim, t_scale)
        # one extra row: the null class of classifier-free guidance
        self.class_embed = nn.Embedding(num_classes + 1, dim) if num_classes else None
        # the learned null token, always among the keys of cross-attention (see module docstring)
        self.null_context = nn.Parameter(0.02 * torch.randn(1, 1, context_dim)) if context_dim else None
        self.blocks = nn.ModuleList([DiTBlock(dim, heads, mlp_ratio, context_dim) for _ in range(depth)])
        self.final_norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.final_adaLN = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.final_linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        for layer in (self.final_adaLN[1], self.final_linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @property
    def null_label(self) -> int | None:
        """The label of the null class (``num_classes``); ``None`` without class conditioning."""
        return self.num_classes

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, N, p * p * C) -> (B, C, H, W)``: token ``row * G + col`` fills the patch at
        rows ``row*p .. row*p + p - 1`` and columns ``col*p .. col*p + p - 1``."""
        B, p, G, C = tokens.shape[0], self.patch_size, self.grid, self.out_channels
        h = tokens.reshape(B, G, G, p, p, C)  # (B, row, col, i, j, C)
        return h.permute(0, 5, 1, 3, 2, 4).reshape(B, C, G * p, G * p)  # (B, C, row*p + i, col*p + j)

    def forward(self, x: torch.Tensor, t, y: torch.Tensor | None = None, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        S = self.input_size
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or tuple(x.shape[1:]) != (self.in_channels, S, S):
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (B, {self.in_channels}, {S}, {S}) (input_size={S}), got {got}")
        B = x.shape[0]
        t = batch_times(t, B, x.device)
        c = self.time_embed(t).to(x.dtype)  # (B, dim)
        if self.class_embed is not None:
            y = class_labels(y, B, self.null_label, x.device)
            c = c + self.class_embed(y)  # (B, dim)
        elif y is not None:
            raise ValueError("y was given but this DiT has no class conditioning (num_classes=None)")
        context, mask = self._context(context, context_mask, B, x)

        h = self.patchify(x).flatten(2).transpose(1, 2) + self.pos_embed  # (B, N, dim), N = (S/p)^2
        for block in self.blocks:
            h = block(h, c, context, mask)  # (B, N, dim)
        shift, scale = self.final_adaLN(c).chunk(2, dim=1)  # 2 x (B, dim)
        h = self.final_linear(_modulate(self.final_norm(h), shift, scale))  # (B, N, p*p*out)
        return self.unpatchify(h)  # (B, out_channels, S, S)

    def _context(self, context, context_mask, B, x):
        """Validate the prompt tokens and prepend the null token: ``(B, 1 + T, context_dim)``
        and its mask ``(B, 1 + T)``; ``(None, None)`` without cross-attention."""
        if self.context_dim is None:
            if context is not None or context_mask is not None:
                raise ValueError("context was given but this DiT has no cross-attention (context_dim=None)")
            return None, None
        if context is None:
            if context_mask is not None:
                raise ValueError("context_mask was given without context")
            context = x.new_zeros(B, 0, self.context_dim)  # the empty prompt: no tokens
        if (not isinstance(context, torch.Tensor) or not context.is_floating_point() or context.ndim != 3
                or context.shape[0] != B or context.shape[2] != self.context_dim):
            got = (f"{context.dtype} {tuple(context.shape)}" if isinstance(context, torch.Tensor)
                   else type(context).__name__)
            raise ValueError(f"context must be a float tensor of shape ({B}, tokens, {self.context_dim}), got {got}")
        T = context.shape[1]
        if context_mask is None:
            context_mask = torch.ones(B, T, dtype=torch.bool, device=x.device)
        elif (not isinstance(context_mask, torch.Tensor) or context_mask.dtype != torch.bool
              or context_mask.shape != (B, T)):
            got = (f"{context_mask.dtype} {tuple(context_mask.shape)}" if isinstance(context_mask, torch.Tensor)
                   else type(context_mask).__name__)
            raise ValueError(f"context_mask must be a bool tensor of shape ({B}, {T}) (True = real token), got {got}")
        # zero the padded tokens: then even NaN or inf there has no effect (0 * NaN would be NaN)
        context = context.to(x.dtype).masked_fill(~context_mask.to(x.device)[:, :, None], 0.0)  # (B, T, context_dim)
        null = self.null_context.to(x.dtype).expand(B, 1, self.context_dim)  # (B, 1, context_dim)
        context = torch.cat([null, context], dim=1)  # (B, 1 + T, context_dim)
        mask = torch.cat([context_mask.new_ones(B, 1), context_mask.to(x.device)], dim=1)  # (B, 1 + T)
        return context, mask
