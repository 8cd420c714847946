r"""Text for text-to-image diffusion: a tokenizer, a small transformer text encoder, and captions
of the digits measured from the images themselves.

**Tokens.** A prompt is normalised (Unicode NFKC, lower case) and split: whitespace and
punctuation (Unicode categories ``P*``: ``, . - ' 、 ，``) separate tokens and are dropped; a run of
letters and digits is one token (an English word); every CJK character (Chinese hanzi, Japanese
kana) is a token of its own, since Chinese writes no spaces; any other symbol (an emoji, ``<``) is a
one-character token. So "a thick, right-slanted seven" gives ``a thick right slanted seven`` and
"一个粗笔画的数字七" gives ``一 个 粗 笔 画 的 数 字 七``: one vocabulary and one model take both
languages. Id 0 is ``<pad>``, id 1 is ``<unk>`` (a token outside the vocabulary; never an error).

**Encoder.** A pre-norm transformer (Vaswani et al., 2017; pre-norm as in GPT-2 and the text
encoder of CLIP, Radford et al., 2021) maps ``L`` token ids to ``L`` vectors, the ``context`` that
the denoiser reads through cross-attention. Self-attention over the real tokens only,

.. math::  \mathrm{Attn}(Q, K, V) = \mathrm{softmax}\!\big(Q K^\top / \sqrt{d} + M\big)\, V,
           \qquad M_{ij} = 0 \text{ if token } j \text{ is real, } -\infty \text{ if it is padding},

so a padded token has exactly no effect on a real one: a prompt alone and the same prompt padded
in a batch give the same vectors. The encoder has no loss of its own: it is trained jointly with
the denoiser, whose loss reaches it through cross-attention, as the transformer text encoder of the
text-to-image latent diffusion model of Rombach et al. (2022, Sec. 4.3) was.

**Captions.** :func:`digit_attributes` measures, on the ink ``p(u, v)`` of each image (``u`` the
column, rightwards, ``v`` the row, upwards, both in pixels; ``m = sum p``):

- ``size = sqrt(Var u + Var v) / side``, the RMS radius of the ink in image sides;
- ``slant = Cov(u, v) / Var v``, the horizontal shift per unit of height (the shear of the
  second moments): ``> 0`` leans right (its top is to the right), ``< 0`` leans left;
- ``thickness = m / (sqrt(12) * sqrt(Var u + Var v))``, the ink mass per unit of stroke length in
  image sides: for a straight bar of width ``w`` and length ``l >> w``, ``Var = l^2 / 12`` and this
  is exactly ``w / side``.

:func:`caption_digits` names the digit and the attributes that stand out: a word for the lowest
and the highest third of each attribute *within the digit's class* (thresholds at the class's
terciles, :func:`attribute_thresholds`), nothing for the middle third.
"""

from __future__ import annotations

import math
import re
import unicodedata
import warnings
from collections import Counter
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Tokenizer", "TextEncoder", "PAD", "UNK", "digit_attributes", "attribute_thresholds",
           "caption_digits", "DIGIT_WORDS", "ATTRIBUTE_WORDS"]

PAD, UNK = "<pad>", "<unk>"

# CJK unified ideographs (and extension A, compatibility ideographs), hiragana and katakana
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
# one CJK character | a run of letters and digits (no CJK, no "_") | any other single symbol
_TOKEN = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+|[^\w\s]|_")


class Tokenizer:
    r"""Words and CJK characters to ids: ``tok(texts, max_length) -> (ids (B, L), mask (B, L))``.

    Parameters
    ----------
    vocab : the tokens, a list of distinct non-empty strings. ``<pad>`` (id 0) and ``<unk>``
        (id 1) are put in front unless the list already starts with them, so
        ``Tokenizer(tok.vocab)`` rebuilds ``tok`` and the vocabulary can be stored in a model's
        config as a plain list of strings.

    Examples
    --------
    >>> tok = Tokenizer.from_texts(["a thick seven", "一个数字七"])
    >>> tok.split("A thick, right-slanted seven!")
    ['a', 'thick', 'right', 'slanted', 'seven']
    >>> ids, mask = tok(["a thick seven", "数字七", ""])
    >>> ids.shape, mask.sum(1).tolist()
    (torch.Size([3, 3]), [3, 3, 0])
    >>> tok.decode(ids)
    ['a thick seven', '数字七', '']
    >>> tok.decode(tok("a purple seven")[0][0])
    'a <unk> seven'
    """

    pad_id: int = 0
    unk_id: int = 1

    def __init__(self, vocab: Sequence[str]):
        if isinstance(vocab, str) or not isinstance(vocab, (list, tuple)) or not all(
                isinstance(w, str) and w for w in vocab):
            raise ValueError(f"vocab must be a list of non-empty strings, got {vocab!r:.80}")
        words = list(vocab)
        if words[:2] != [PAD, UNK]:
            if PAD in words or UNK in words:
                raise ValueError(f"vocab must hold {PAD!r} and {UNK!r} only as its first two entries "
                                 f"(ids 0 and 1), got them at {[i for i, w in enumerate(words) if w in (PAD, UNK)]}")
            words = [PAD, UNK] + words
        duplicates = sorted(w for w, n in Counter(words).items() if n > 1)
        if duplicates:
            raise ValueError(f"vocab must hold distinct tokens, got duplicates {duplicates[:5]}")
        self.vocab: list[str] = words
        self.index: dict[str, int] = {w: i for i, w in enumerate(words)}

    def __len__(self) -> int:
        return len(self.vocab)

    @staticmethod
    def split(text: str) -> list[str]:
        """The tokens of one text (see the module docstring for the rule)."""
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        pieces = _TOKEN.findall(unicodedata.normalize("NFKC", text).lower())
        return [p for p in pieces if not unicodedata.category(p[0]).startswith("P")]

    @classmethod
    def from_texts(cls, texts: Sequence[str], min_count: int = 1) -> Tokenizer:
        """The vocabulary of ``texts``: every token seen at least ``min_count`` times, the most
        frequent first (ties in alphabetical order), after ``<pad>`` and ``<unk>``."""
        texts = _as_texts(texts, "texts")
        if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
            raise ValueError(f"min_count must be an int >= 1, got {min_count!r}")
        counts = Counter(token for text in texts for token in cls.split(text))
        kept = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        return cls(kept)

    def encode(self, text: str) -> list[int]:
        """The ids of one text, unknown tokens as ``<unk>``, no padding and no truncation."""
        return [self.index.get(token, self.unk_id) for token in self.split(text)]

    def __call__(self, texts: str | Sequence[str], max_length: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids ``(B, L)`` (int64) and mask ``(B, L)`` (bool, True = a real token).

        ``L`` is the longest prompt's length, at most ``max_length`` and at least 1; shorter
        prompts are padded with ``<pad>`` (mask False). A longer prompt is **truncated** to its
        first ``max_length`` tokens with a ``UserWarning`` (not an error: a sampler should not stop
        over a long prompt). The empty prompt (``""``, or only punctuation) is a row of padding
        with its mask all False.
        """
        texts = _as_texts(texts, "texts")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length must be an int >= 1, got {max_length!r}")
        encoded = [self.encode(text) for text in texts]
        too_long = [i for i, ids in enumerate(encoded) if len(ids) > max_length]
        if too_long:
            warnings.warn(f"{len(too_long)} prompt(s) (indices {too_long[:5]}) have more than "
                          f"max_length={max_length} tokens and were truncated", UserWarning, stacklevel=2)
        length = max(1, min(max_length, max(len(ids) for ids in encoded)))
        ids = torch.full((len(texts), length), self.pad_id, dtype=torch.long)  # (B, L)
        mask = torch.zeros(len(texts), length, dtype=torch.bool)  # (B, L)
        for row, tokens in enumerate(encoded):
            tokens = tokens[:max_length]
            ids[row, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            mask[row, :len(tokens)] = True
        return ids, mask

    def decode(self, ids: torch.Tensor | Sequence[int]) -> str | list[str]:
        """Text of ``ids`` ``(L,)`` (a str) or ``(B, L)`` (a list), ``<pad>`` left out; tokens are
        joined by spaces, except two CJK characters in a row. ``Tokenizer.split`` of the text
        gives the tokens back (punctuation, dropped by ``split``, does not come back)."""
        if not torch.is_tensor(ids):  # a list of ints (an empty list is an empty prompt)
            ids = torch.tensor(ids, dtype=torch.long) if all(isinstance(i, int) for i in ids) else torch.as_tensor(ids)
        if ids.ndim not in (1, 2) or ids.is_floating_point() or ids.is_complex():
            raise ValueError(f"ids must be integer token ids of shape (L,) or (B, L), "
                             f"got {ids.dtype} {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= len(self)):
            raise ValueError(f"ids must lie in [0, {len(self)}), got values in [{int(ids.min())}, {int(ids.max())}]")
        if ids.ndim == 2:
            return [self.decode(row) for row in ids]
        text, previous_cjk = "", False
        for token in (self.vocab[i] for i in ids.tolist() if i != self.pad_id):
            cjk = re.fullmatch(f"[{_CJK}]", token) is not None
            text += token if not text or (cjk and previous_cjk) else " " + token
            previous_cjk = cjk
        return text


class TextEncoder(nn.Module):
    r"""A small transformer text encoder: token ids ``(B, L)`` to a context ``(B, L, dim)``.

    Token and learned position embeddings, ``depth`` pre-norm blocks
    (``h += Attn(LN(h))``, ``h += MLP(LN(h))``, self-attention masked to the real tokens), a final
    LayerNorm. Padded positions come out as zeros, and real ones never see them.

    Parameters
    ----------
    vocab : the tokenizer's vocabulary (:class:`Tokenizer`), stored in ``config``
    dim : width of the token vectors, the ``context_dim`` of the denoiser's cross-attention
    depth, heads : number of transformer blocks and of attention heads (``dim % heads == 0``)
    max_length : the most tokens a prompt keeps (longer ones are truncated with a warning)

    ``config`` holds the constructor arguments, so :func:`diffusion_edu.training.save_model`
    stores it. The encoder is meant to be trained jointly with the denoiser (module docstring).

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> enc = TextEncoder(Tokenizer.from_texts(["a thick seven", "一个数字七"]).vocab, dim=32)
    >>> context, mask = enc.encode(["a thick seven", "数字七", ""])
    >>> context.shape, mask.tolist()[2], float(context.detach()[2].abs().max())
    (torch.Size([3, 3, 32]), [False, False, False], 0.0)
    """

    def __init__(self, vocab: Sequence[str], dim: int = 64, depth: int = 2, heads: int = 4, max_length: int = 16):
        super().__init__()
        for name, value in (("dim", dim), ("depth", depth), ("heads", heads), ("max_length", max_length)):
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "depth" else 1):
                raise ValueError(f"{name} must be an int >= {0 if name == 'depth' else 1}, got {value!r}")
        if dim % heads:
            raise ValueError(f"dim must be a multiple of heads, got dim={dim}, heads={heads}")
        self.tokenizer = Tokenizer(vocab)
        self.dim, self.max_length = dim, max_length
        self.config = dict(vocab=list(self.tokenizer.vocab), dim=dim, depth=depth, heads=heads, max_length=max_length)
        self.token_embedding = nn.Embedding(len(self.tokenizer), dim)
        nn.init.normal_(self.token_embedding.weight, std=0.02)  # CLIP's initialisation
        self.position_embedding = nn.Parameter(0.01 * torch.randn(max_length, dim))
        self.blocks = nn.ModuleList(_Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``ids`` ``(B, L)`` integer, ``mask`` ``(B, L)`` bool (True = real; None: ``ids != 0``)
        -> context ``(B, L, dim)``, zero at padded positions."""
        if not torch.is_tensor(ids) or ids.ndim != 2 or ids.is_floating_point() or ids.dtype == torch.bool:
            raise ValueError(f"ids must be an integer tensor of shape (B, L), got "
                             f"{getattr(ids, 'dtype', type(ids).__name__)} {tuple(getattr(ids, 'shape', ()))}")
        B, L = ids.shape
        if not 1 <= L <= self.max_length:
            raise ValueError(f"ids must have 1 to max_length={self.max_length} tokens, got L={L}")
        if int(ids.min()) < 0 or int(ids.max()) >= len(self.tokenizer):
            raise ValueError(f"ids must lie in [0, {len(self.tokenizer)}), got [{int(ids.min())}, {int(ids.max())}]")
        if mask is None:
            mask = ids != self.tokenizer.pad_id
        if not torch.is_tensor(mask) or mask.dtype != torch.bool or mask.shape != ids.shape:
            raise ValueError(f"mask must be a bool tensor of the shape of ids {tuple(ids.shape)}, got "
                             f"{getattr(mask, 'dtype', type(mask).__name__)} {tuple(getattr(mask, 'shape', ()))}")
        mask = mask.to(ids.device)
        h = self.token_embedding(ids) + self.position_embedding[:L]  # (B, L, dim)
        # query i may attend to key j when j is real; each position also to itself, so that a row of
        # padding (the empty prompt) still has one key (older torch returns NaN for a row with none,
        # and NaN * 0 is NaN); a real token's keys are all real, so it never sees padding
        allowed = mask[:, None, None, :] | torch.eye(L, dtype=torch.bool, device=ids.device)  # (B, 1, L, L)
        for block in self.blocks:
            h = block(h, allowed)  # (B, L, dim)
        return self.norm(h) * mask[..., None]  # (B, L, dim), padded positions zero

    def encode(self, prompts: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenize ``prompts`` with this encoder's tokenizer and encode them:
        ``(context (B, L, dim), context_mask (B, L))``, on the encoder's device."""
        ids, mask = self.tokenizer(prompts, max_length=self.max_length)
        device = self.token_embedding.weight.device
        ids, mask = ids.to(device), mask.to(device)
        return self(ids, mask), mask


class _Block(nn.Module):
    """Pre-norm transformer block: masked multi-head self-attention, then a 4x GELU MLP."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, h: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        B, L, D = h.shape
        q, k, v = self.qkv(self.norm1(h)).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)  # (B, heads, L, D / heads)
        h = h + self.proj(a.transpose(1, 2).reshape(B, L, D))  # (B, L, dim)
        return h + self.mlp(self.norm2(h))  # (B, L, dim)


# ---------------------------------------------------------------------------------------------
# Captions of the digits

DIGIT_WORDS = {
    "en": ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
    "zh": ("零", "一", "二", "三", "四", "五", "六", "七", "八", "九"),
}
# words for the lowest and the highest third of each attribute; the middle third has none
ATTRIBUTE_WORDS = {
    "en": {"size": ("small", "large"), "thickness": ("thin", "thick"),
           "slant": ("left-slanted", "right-slanted")},
    "zh": {"size": ("较小", "较大"), "thickness": ("细笔画", "粗笔画"),
           "slant": ("向左倾斜", "向右倾斜")},
}
ATTRIBUTES = ("size", "thickness", "slant")  # the order in which a caption names them


def digit_attributes(images: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> dict[str, torch.Tensor]:
    r"""Size, slant and stroke thickness of single-channel images ``(N, 1, H, W)``, each ``(N,)``.

    The ink is ``p = clamp((x - lo) / (hi - lo), 0, 1)`` (``value_range = (lo, hi)``: background
    and full ink); with ``u`` the column (rightwards) and ``v`` the row (upwards), in pixels,

    - ``size = sqrt(Var u + Var v) / side`` (``side = max(H, W)``),
    - ``slant = Cov(u, v) / Var v`` (> 0: the top leans right),
    - ``thickness = sum p / (sqrt(12) sqrt(Var u + Var v) side)`` (``w / side`` for a bar of width ``w``),

    moments under the ink's weights. All three are unchanged by resampling the image to another
    resolution. An image without ink gets 0 for all three.

    Examples
    --------
    >>> x = -torch.ones(1, 1, 32, 32)
    >>> x[0, 0, 4:28, 15:18] = 1.0  # an upright bar 3 pixels wide
    >>> a = digit_attributes(x)
    >>> round(float(a["thickness"] * 32), 1), float(a["slant"])  # the width in pixels, no slant
    (3.0, 0.0)
    """
    if not torch.is_tensor(images) or images.ndim != 4 or images.shape[1] != 1 or not images.is_floating_point():
        raise ValueError(f"images must be a float tensor (N, 1, H, W), got "
                         f"{getattr(images, 'dtype', type(images).__name__)} {tuple(getattr(images, 'shape', ()))}")
    if images.shape[0] == 0 or min(images.shape[2:]) < 2:
        raise ValueError(f"images must hold at least one image of at least 2x2 pixels, got {tuple(images.shape)}")
    if not torch.isfinite(images).all():
        raise ValueError("images must be finite, got NaN or inf entries")
    lo, hi = (float(s) for s in value_range)
    if not lo < hi:
        raise ValueError(f"value_range must be (lo, hi) with lo < hi, got {value_range!r}")
    ink = ((images[:, 0].double() - lo) / (hi - lo)).clamp(0, 1)  # (N, H, W)
    H, W = ink.shape[1:]
    mass = ink.sum((1, 2))  # (N,)
    p = ink / mass.clamp_min(1e-12)[:, None, None]  # (N, H, W), sums to 1 (0 without ink)
    u = torch.arange(W, dtype=ink.dtype, device=ink.device)[None, None, :]  # column, rightwards
    v = -torch.arange(H, dtype=ink.dtype, device=ink.device)[None, :, None]  # row, upwards
    mu, mv = (p * u).sum((1, 2)), (p * v).sum((1, 2))  # (N,)
    du, dv = u - mu[:, None, None], v - mv[:, None, None]  # (N, H, W)
    var_u, var_v, cov = (p * du**2).sum((1, 2)), (p * dv**2).sum((1, 2)), (p * du * dv).sum((1, 2))
    side = max(H, W)
    spread = (var_u + var_v).sqrt()  # (N,), RMS radius in pixels
    return {  # float32 on the images' device
        "size": (spread / side).float(),
        "slant": (cov / var_v.clamp_min(1e-12)).float(),
        "thickness": (mass / (math.sqrt(12) * spread.clamp_min(1e-12) * side)).float(),
    }


def attribute_thresholds(images: torch.Tensor, labels: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)
                         ) -> dict[str, torch.Tensor]:
    """The terciles of each attribute of :func:`digit_attributes` within each digit class:
    ``{name: (10, 2)}`` (lower and upper tercile; NaN for a class absent from ``labels``).

    Compute them once on the training images and pass them to :func:`caption_digits`, so that the
    captions of generated images use the same words for the same measurements.
    """
    labels = _check_labels(labels, len(images) if torch.is_tensor(images) else None)
    attrs = {n: a.cpu() for n, a in digit_attributes(images, value_range).items()}
    out = {}
    for name in ATTRIBUTES:
        t = torch.full((10, 2), float("nan"))
        for digit in labels.unique().tolist():
            t[digit] = torch.quantile(attrs[name][labels == digit], torch.tensor([1 / 3, 2 / 3]))
        out[name] = t
    return out


def caption_digits(images: torch.Tensor, labels: torch.Tensor, lang: str = "en",
                   generator: torch.Generator | None = None, *, thresholds: dict[str, torch.Tensor] | None = None,
                   p_keep: float = 0.5, value_range: tuple[float, float] = (-1.0, 1.0)) -> list[str]:
    """Captions of digit images: the digit's name and the attributes that stand out.

    E.g. ``"a thick, right-slanted seven"`` / ``"一个粗笔画、向右倾斜的数字七"``. Each attribute
    (size, thickness, slant) of :func:`digit_attributes` gets a word when it lies in the lowest
    third (``small``, ``thin``, ``left-slanted``: below the lower tercile of its digit class) or
    the highest third (``large``, ``thick``, ``right-slanted``: above the upper tercile), none in
    the middle third. "Right-slanted" is relative to the class: a six leaning less to the left
    than most sixes is a right-slanted six.

    Parameters
    ----------
    images, labels : ``(N, 1, H, W)`` digits and their classes ``(N,)`` in ``0 .. 9``
    lang : ``"en"``, ``"zh"``, or ``"mix"`` (each caption's language a fair coin from
        ``generator``; without one, even indices English and odd Chinese)
    generator : None names every attribute that stands out (deterministic). With a generator each
        such word is kept with probability ``p_keep``, so that prompts naming fewer attributes
        ("a seven", "a thick seven") are captions the model has seen. The random draws do not
        depend on ``lang``: the same generator state gives captions of the same meaning in both
        languages.
    thresholds : from :func:`attribute_thresholds` (e.g. of the training set); default: the
        terciles of ``images`` themselves

    Examples
    --------
    >>> from diffusion_edu.data import load_digits
    >>> x, y = load_digits(split="test")
    >>> thresholds = attribute_thresholds(x, y)
    >>> caption_digits(x[:2], y[:2], thresholds=thresholds), y[:2].tolist()
    (['a left-slanted one', 'a large, thick, left-slanted zero'], [1, 0])
    >>> caption_digits(x[:2], y[:2], "zh", thresholds=thresholds)
    ['一个向左倾斜的数字一', '一个较大、粗笔画、向左倾斜的数字零']
    """
    labels = _check_labels(labels, len(images) if torch.is_tensor(images) else None)
    if lang not in ("en", "zh", "mix"):
        raise ValueError(f"lang must be 'en', 'zh' or 'mix', got {lang!r}")
    if not 0.0 <= float(p_keep) <= 1.0:
        raise ValueError(f"p_keep must lie in [0, 1], got {p_keep!r}")
    if thresholds is None:
        thresholds = attribute_thresholds(images, labels, value_range)
    if not isinstance(thresholds, dict) or any(
            not torch.is_tensor(thresholds.get(n)) or thresholds[n].shape != (10, 2) for n in ATTRIBUTES):
        raise ValueError(f"thresholds must be a dict {{name: (10, 2) tensor}} for {ATTRIBUTES} "
                         f"(attribute_thresholds), got {thresholds!r:.80}")
    missing = sorted(set(labels.tolist()) & {d for d in range(10) if thresholds["size"][d].isnan().any()})
    if missing:
        raise ValueError(f"thresholds have no terciles for digit(s) {missing} of labels")
    attrs = {n: a.cpu() for n, a in digit_attributes(images, value_range).items()}
    thresholds = {n: thresholds[n].cpu() for n in ATTRIBUTES}
    bins = {n: 1 - (attrs[n] < thresholds[n][labels, 0]).long() + (attrs[n] > thresholds[n][labels, 1]).long()
            for n in ATTRIBUTES}  # (N,) each: 0 lowest third, 1 middle (ties included), 2 highest
    N = len(labels)
    keep = (torch.rand(N, len(ATTRIBUTES), generator=generator) < p_keep if generator is not None
            else torch.ones(N, len(ATTRIBUTES), dtype=torch.bool))  # (N, 3)
    if lang == "mix":
        langs = (["en", "zh"][int(c)] for c in (torch.rand(N, generator=generator) < 0.5 if generator is not None
                                                 else torch.arange(N) % 2 == 1))
    else:
        langs = (lang for _ in range(N))
    captions = []
    for i, language in enumerate(langs):
        words = [ATTRIBUTE_WORDS[language][n][bins[n][i] // 2] for j, n in enumerate(ATTRIBUTES)
                 if bins[n][i] != 1 and keep[i, j]]
        digit = DIGIT_WORDS[language][labels[i]]
        if language == "en":
            phrase = " ".join(([", ".join(words)] if words else []) + [digit])
            captions.append(("an " if phrase[0] in "aeiou" else "a ") + phrase)
        else:
            captions.append("一个" + ("、".join(words) + "的" if words else "") + "数字" + digit)
    return captions


def _check_labels(labels, n) -> torch.Tensor:
    if not torch.is_tensor(labels) or labels.ndim != 1 or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor (N,), got "
                         f"{getattr(labels, 'dtype', type(labels).__name__)} {tuple(getattr(labels, 'shape', ()))}")
    if n is not None and len(labels) != n:
        raise ValueError(f"labels must have one entry per image ({n}), got {len(labels)}")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) > 9):
        raise ValueError(f"labels must be digits 0..9, got values in [{int(labels.min())}, {int(labels.max())}]")
    return labels.long().cpu()


def _as_texts(texts, name) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"{name} must be a str or a non-empty list of str, got {texts!r:.80}")
    return list(texts)
