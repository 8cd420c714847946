r"""A small transformer over tokens: the masked-diffusion denoiser and, with a causal mask, the
autoregressive baseline (chapter 13).

``net(x, t=None)``: ``x`` is ``(B, L)`` long tokens in ``0 .. vocab_size-1``, where the last id
``vocab_size - 1 = V`` is the mask token of :mod:`diffusion_edu.discrete`; the output is
``(B, L, V)`` logits of the clean tokens (no logit for the mask: a denoiser never predicts it).

The pieces (a pre-norm transformer encoder, as in GPT-2 / DiT without adaLN):

- token embedding (``vocab_size`` rows, the mask included) + a learned position embedding;
- optional time conditioning: ``MLP(sinusoidal(1000 t))`` added to every token, ``t in [0, 1]``
  (the masked-diffusion time, or the mask ratio). For the absorbing process the clean-token
  posterior does not depend on ``t`` (:func:`diffusion_edu.discrete.exact_logits_fn`), so the
  default is ``time_conditioning=False`` (MDLM and MD4 make the same choice) and ``t`` is ignored;
- ``depth`` blocks ``h <- h + Attn(LN(h))``, ``h <- h + MLP(LN(h))`` with
  ``softmax(q k^T / sqrt(d)) v`` from ``F.scaled_dot_product_attention``, ``heads`` heads;
- a final ``LN`` and ``Linear(dim, V)``.

**Causal (autoregressive) mode**, ``causal=True``: attention only looks back, and the input is
shifted right inside the network, with the mask id ``V`` as the begin-of-sequence token:
the network reads ``[BOS, x_1, .., x_{L-1}]``, so ``logits[:, l]`` is the distribution of
``x[:, l]`` given ``x[:, :l]`` — aligned with ``x``, exactly like the denoiser's output. Then
``log p(x) = sum_l log softmax(logits[:, l])[x_l]`` (:func:`ar_log_prob`) and
:func:`ar_sample` draws one token a step. ``logits[:, l]`` never depends on ``x[:, l:]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .embeddings import sinusoidal_embedding

__all__ = ["Transformer", "ar_log_prob", "ar_sample"]


class Block(nn.Module):
    """Pre-norm transformer block: ``h + Attn(LN(h))`` then ``h + MLP(LN(h))``."""

    def __init__(self, dim: int, heads: int, causal: bool):
        super().__init__()
        self.heads, self.causal = heads, causal
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        B, L, D = h.shape
        q, k, v = self.qkv(self.norm1(h)).reshape(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # (B, heads, L, D / heads)
        h = h + self.proj(a.transpose(1, 2).reshape(B, L, D))  # (B, L, D)
        return h + self.mlp(self.norm2(h))  # (B, L, D)


class Transformer(nn.Module):
    """Bidirectional (or causal) transformer over ``length`` tokens; ``vocab_size = V + 1``
    input tokens (the last is the mask), ``V`` output logits.

    Examples
    --------
    >>> net = Transformer(vocab_size=5, length=6, dim=32, heads=4)
    >>> net(torch.randint(0, 5, (2, 6))).shape  # (B, L, V), V = 4
    torch.Size([2, 6, 4])
    """

    def __init__(self, vocab_size: int, length: int, dim: int = 64, depth: int = 2, heads: int = 4,
                 causal: bool = False, time_conditioning: bool = False):
        super().__init__()
        for name, val, low in (("vocab_size", vocab_size, 2), ("length", length, 1), ("dim", dim, 1),
                               ("depth", depth, 1), ("heads", heads, 1)):
            if not isinstance(val, int) or isinstance(val, bool) or val < low:
                raise ValueError(f"{name} must be an int >= {low}, got {val!r}")
        if dim % heads or dim % 2:
            raise ValueError(f"dim must be even and divisible by heads={heads}, got {dim}")
        for name, val in (("causal", causal), ("time_conditioning", time_conditioning)):
            if not isinstance(val, bool):
                raise ValueError(f"{name} must be a bool, got {val!r}")
        self.config = dict(vocab_size=vocab_size, length=length, dim=dim, depth=depth, heads=heads,
                           causal=causal, time_conditioning=time_conditioning)
        self.vocab_size, self.length, self.causal = vocab_size, length, causal
        self.mask_id = vocab_size - 1  # also the begin-of-sequence token in causal mode
        self.tok = nn.Embedding(vocab_size, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(length, dim))
        self.time = (nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
                     if time_conditioning else None)
        self.blocks = nn.ModuleList(Block(dim, heads, causal) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, vocab_size - 1)

    def forward(self, x: torch.Tensor, t=None) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[1] != self.length or x.dtype != torch.long:
            raise ValueError(f"x must be a (B, {self.length}) long tensor, got "
                             f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}")
        if not torch.compiler.is_compiling() and x.numel() and (x.min() < 0 or x.max() >= self.vocab_size):
            raise ValueError(f"x must hold tokens in 0..{self.vocab_size - 1}, got values in "
                             f"{int(x.min())}..{int(x.max())}")
        B = x.shape[0]
        if self.causal:  # shift right: position l reads x[:, :l] only
            x = torch.cat([torch.full((B, 1), self.mask_id, dtype=x.dtype, device=x.device), x[:, :-1]], dim=1)
        h = self.tok(x) + self.pos  # (B, L, D)
        if self.time is not None:
            if t is None:
                raise ValueError("t must be given (a float or a (B,) tensor in [0, 1]) when time_conditioning=True")
            t = torch.as_tensor(t, dtype=torch.float32, device=x.device)
            t = t.expand(B) if t.ndim == 0 else t
            if t.shape != (B,):
                raise ValueError(f"t must be a float or have shape ({B},), got {tuple(t.shape)}")
            h = h + self.time(sinusoidal_embedding(1000 * t, h.shape[-1]))[:, None]  # (B, 1, D)
        for block in self.blocks:
            h = block(h)  # (B, L, D)
        return self.out(self.norm(h))  # (B, L, V)


def ar_log_prob(model: Transformer, x: torch.Tensor) -> torch.Tensor:
    """Exact ``log p(x) = sum_l log p(x_l | x_{<l})`` of a causal :class:`Transformer`, nats,
    ``(B,)``. ``x``: ``(B, L)`` long tokens in ``0 .. V-1``.

    Examples
    --------
    >>> net = Transformer(vocab_size=3, length=4, dim=16, heads=2, causal=True)
    >>> x = torch.cartesian_prod(*[torch.arange(2)] * 4)  # all 16 sequences over V = 2 tokens
    >>> round(float(ar_log_prob(net, x).detach().exp().sum()), 6)  # a distribution: sums to 1
    1.0
    """
    if not isinstance(model, Transformer) or not model.causal:
        raise ValueError(f"model must be a causal Transformer, got {type(model).__name__}"
                         f"{'' if not isinstance(model, Transformer) else ' with causal=False'}")
    V = model.vocab_size - 1
    if isinstance(x, torch.Tensor) and x.numel() and x.max() >= V:
        raise ValueError(f"x must hold tokens in 0..{V - 1} (no mask token), got max {int(x.max())}")
    logp = torch.log_softmax(model(x).double(), dim=-1)  # (B, L, V)
    return logp.gather(-1, x[..., None])[..., 0].sum(-1)  # (B,)


@torch.no_grad()
def ar_sample(model: Transformer, batch: int, generator: torch.Generator | None = None,
              fixed_prefix: torch.Tensor | None = None) -> torch.Tensor:
    """Draw ``(batch, L)`` sequences from a causal :class:`Transformer`, left to right, one token
    a step; ``fixed_prefix`` ``(batch, P)`` keeps the first ``P`` tokens (a prompt)."""
    if not isinstance(model, Transformer) or not model.causal:
        raise ValueError(f"model must be a causal Transformer, got {type(model).__name__}")
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    device = next(model.parameters()).device
    x = torch.zeros(batch, model.length, dtype=torch.long, device=device)
    start = 0
    if fixed_prefix is not None:
        if (not isinstance(fixed_prefix, torch.Tensor) or fixed_prefix.ndim != 2 or fixed_prefix.shape[0] != batch
                or fixed_prefix.shape[1] > model.length or fixed_prefix.dtype != torch.long):
            raise ValueError(f"fixed_prefix must be a ({batch}, P <= {model.length}) long tensor, got "
                             f"{tuple(getattr(fixed_prefix, 'shape', ()))}")
        start = fixed_prefix.shape[1]
        x[:, :start] = fixed_prefix
    for l in range(start, model.length):
        probs = torch.softmax(model(x)[:, l].double(), dim=-1)  # (B, V): p(x_l | x_{<l})
        x[:, l] = torch.multinomial(probs, 1, generator=generator)[:, 0]
    return x
