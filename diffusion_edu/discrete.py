r"""Discrete diffusion on tokens: the absorbing (mask) and uniform processes, the masked-diffusion
ELBO, an exact oracle for tiny distributions, and ancestral unmasking (chapter 13).

Tokens are ``0 .. V-1``; the **mask token** has id ``V``. A sequence is a ``(B, L)`` long tensor.

**Forward process as a continuous-time Markov chain.** Each position moves independently with a
rate matrix (generator) ``Q_t`` of shape ``(V+1, V+1)``, ``Q_t[i, j]`` the rate from ``i`` to
``j`` (rows sum to 0); the marginal ``P(t)[i, j] = q(x_t = j | x_0 = i)`` obeys the Kolmogorov
forward equation ``dP/dt = P Q_t``. With ``Q_t = beta(t) Q`` for a fixed ``Q`` and the rate
``beta(t) = -alpha'(t) / alpha(t)`` this integrates to ``P(t) = exp(-log(alpha(t)) Q)``, where
``alpha(t)`` (the schedule: :class:`DiscreteSchedule`) is the probability a token is still clean:

- **absorbing** (Austin et al. 2021, D3PM; Sahoo et al. 2024, MDLM; Shi et al. 2024, MD4):
  ``Q = 1 e_m^T - I`` on the tokens, the mask row 0 (every token jumps to the mask, never back);
  ``q(x_t | x_0) = alpha(t) onehot(x_0) + (1 - alpha(t)) onehot(m)``;
- **uniform**: ``Q = 1 1^T / V - I`` on the ``V`` tokens (the mask is never reached);
  ``q(x_t | x_0) = alpha(t) onehot(x_0) + (1 - alpha(t)) / V``.

**The masked-diffusion ELBO** (Eq. 10 of MDLM, Eq. 5 of MD4), in nats per sequence:

.. math::

    -\log p_\theta(x) \le \int_0^1 \frac{-\alpha'(t)}{1-\alpha(t)}\,
        \mathbb{E}_{x_t \sim q(\cdot|x)} \Big[\sum_{l:\, x_t^l = m} -\log p_\theta(x^l \mid x_t)\Big]\, dt

(derived in :func:`masked_nelbo`). For the absorbing process the clean-token posterior
``p(x_0^l | x_t)`` does not depend on ``t``: given which positions are masked, ``x_t`` carries
no other information about ``x_0`` (the mask pattern is independent of ``x_0``), so
``p(x_0 | x_t, t) = p(x_0^{masked} | x_0^{unmasked})`` — see :func:`exact_logits_fn`.

Every ``logits_fn`` is called as ``logits_fn(x_t, t)`` with ``x_t: (B, L)`` long and
``t: (B,)`` float, and returns ``(B, L, V)`` logits of the clean tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

__all__ = [
    "DiscreteSchedule", "absorbing_rate_matrix", "uniform_rate_matrix", "absorbing_transition",
    "uniform_transition", "perturb_absorbing", "perturb_uniform", "masked_nelbo",
    "exact_logits_fn", "sample",
]

LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class DiscreteSchedule:
    """``alpha(t)``: the probability a token is still clean at ``t in [0, 1]``, ``alpha(0) = 1``,
    ``alpha(1) = 0``, decreasing.

    - ``kind="linear"``: ``alpha(t) = 1 - t``, ``alpha'(t) = -1`` (MDLM's default);
    - ``kind="cosine"``: ``alpha(t) = cos(pi t / 2)``, ``alpha'(t) = -(pi/2) sin(pi t / 2)`` (MD4).

    :meth:`weight` is the ELBO weight ``-alpha'(t) / (1 - alpha(t))`` (``1 / t`` for linear) and
    :meth:`rate` the CTMC rate ``beta(t) = -alpha'(t) / alpha(t)``.

    Examples
    --------
    >>> s = DiscreteSchedule("linear")
    >>> s.alpha(torch.tensor([0.0, 0.25, 1.0])).tolist(), s.weight(torch.tensor([0.5])).tolist()
    ([1.0, 0.75, 0.0], [2.0])
    """

    kind: str = "linear"

    def __post_init__(self):
        if self.kind not in ("linear", "cosine"):
            raise ValueError(f"kind must be 'linear' or 'cosine', got {self.kind!r}")

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t)
        return 1 - t if self.kind == "linear" else torch.cos(math.pi / 2 * t)

    def alpha_prime(self, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t)
        return -torch.ones_like(t) if self.kind == "linear" else -math.pi / 2 * torch.sin(math.pi / 2 * t)

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """``-alpha'(t) / (1 - alpha(t))``, the weight of the masked cross-entropy at ``t``."""
        return -self.alpha_prime(t) / (1 - self.alpha(t))

    def rate(self, t: torch.Tensor) -> torch.Tensor:
        """``beta(t) = -alpha'(t) / alpha(t)``: ``Q_t = beta(t) Q``."""
        return -self.alpha_prime(t) / self.alpha(t)


LINEAR = DiscreteSchedule("linear")


def absorbing_rate_matrix(vocab_size: int, t: float, schedule: DiscreteSchedule = LINEAR) -> torch.Tensor:
    """Generator ``Q_t = beta(t) (1 e_m^T - I)`` of the absorbing process, ``(V+1, V+1)`` float64:
    each token jumps to the mask (id ``V``) at rate ``beta(t)``; the mask row is 0.

    Examples
    --------
    >>> absorbing_rate_matrix(2, 0.5).tolist()  # beta(0.5) = 1 / (1 - 0.5) = 2 for the linear schedule
    [[-2.0, 0.0, 2.0], [0.0, -2.0, 2.0], [0.0, 0.0, 0.0]]
    """
    V = _check_vocab(vocab_size)
    _check_time(t, "t", open_right=True)
    Q = torch.zeros(V + 1, V + 1, dtype=torch.float64)
    Q[:V, V] = 1.0
    Q[:V, :V] -= torch.eye(V, dtype=torch.float64)
    return float(schedule.rate(torch.tensor(float(t), dtype=torch.float64))) * Q


def uniform_rate_matrix(vocab_size: int, t: float, schedule: DiscreteSchedule = LINEAR) -> torch.Tensor:
    """Generator ``Q_t = beta(t) (1 1^T / V - I)`` of the uniform process on the ``V`` tokens,
    ``(V+1, V+1)`` float64 (the mask row and column are 0: the mask is never reached)."""
    V = _check_vocab(vocab_size)
    _check_time(t, "t", open_right=True)
    Q = torch.zeros(V + 1, V + 1, dtype=torch.float64)
    Q[:V, :V] = 1.0 / V - torch.eye(V, dtype=torch.float64)
    return float(schedule.rate(torch.tensor(float(t), dtype=torch.float64))) * Q


def absorbing_transition(vocab_size: int, t: float, schedule: DiscreteSchedule = LINEAR) -> torch.Tensor:
    """``P(t)[i, j] = q(x_t = j | x_0 = i) = alpha(t) [i = j] + (1 - alpha(t)) [j = m]`` for tokens
    ``i``; the mask row is ``e_m``. ``(V+1, V+1)`` float64, rows sum to 1."""
    V = _check_vocab(vocab_size)
    a = float(schedule.alpha(torch.tensor(float(_check_time(t, "t")), dtype=torch.float64)))
    P = a * torch.eye(V + 1, dtype=torch.float64)
    P[:, V] += 1 - a
    return P


def uniform_transition(vocab_size: int, t: float, schedule: DiscreteSchedule = LINEAR) -> torch.Tensor:
    """``P(t)[i, j] = alpha(t) [i = j] + (1 - alpha(t)) / V`` on the tokens; the mask row is
    ``e_m``. ``(V+1, V+1)`` float64, rows sum to 1."""
    V = _check_vocab(vocab_size)
    a = float(schedule.alpha(torch.tensor(float(_check_time(t, "t")), dtype=torch.float64)))
    P = torch.zeros(V + 1, V + 1, dtype=torch.float64)
    P[:V, :V] = a * torch.eye(V, dtype=torch.float64) + (1 - a) / V
    P[V, V] = 1.0
    return P


def perturb_absorbing(x0: torch.Tensor, t, vocab_size: int, schedule: DiscreteSchedule = LINEAR,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample ``x_t ~ q(x_t | x_0)`` of the absorbing process: each position becomes the mask
    ``V`` independently with probability ``1 - alpha(t)``. ``x0: (B, L)``, ``t`` a float or ``(B,)``.

    Examples
    --------
    >>> perturb_absorbing(torch.tensor([[0, 1, 2]]), 1.0, vocab_size=3).tolist()  # alpha(1) = 0
    [[3, 3, 3]]
    """
    V = _check_vocab(vocab_size)
    x0 = _check_tokens(x0, V, "x0")
    a = schedule.alpha(_batch_time(t, x0.shape[0], x0.device))[:, None]  # (B, 1)
    masked = torch.rand(x0.shape, generator=generator, device=x0.device, dtype=torch.float64) >= a
    return torch.where(masked, torch.full_like(x0, V), x0)  # (B, L)


def perturb_uniform(x0: torch.Tensor, t, vocab_size: int, schedule: DiscreteSchedule = LINEAR,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample ``x_t ~ q(x_t | x_0)`` of the uniform process: each position is resampled uniformly
    from the ``V`` tokens (possibly to itself) with probability ``1 - alpha(t)``."""
    V = _check_vocab(vocab_size)
    x0 = _check_tokens(x0, V, "x0")
    a = schedule.alpha(_batch_time(t, x0.shape[0], x0.device))[:, None]  # (B, 1)
    resample = torch.rand(x0.shape, generator=generator, device=x0.device, dtype=torch.float64) >= a
    noise = torch.randint(0, V, x0.shape, generator=generator, device=x0.device)
    return torch.where(resample, noise, x0)  # (B, L)


def masked_nelbo(logits_fn: LogitsFn, x: torch.Tensor, generator: torch.Generator | None = None,
                 samples: int = 1, *, schedule: DiscreteSchedule = LINEAR,
                 vocab_size: int | None = None) -> torch.Tensor:
    r"""Monte-Carlo estimate of the continuous-time masked-diffusion negative ELBO, nats per sequence.

    .. math::

        \mathcal{L}(x) = \mathbb{E}_{t \sim U(0,1)}\, \mathbb{E}_{x_t \sim q(\cdot|x)}
            \Big[\frac{-\alpha'(t)}{1-\alpha(t)} \sum_{l:\, x_t^l = m} -\log p_\theta(x^l \mid x_t)\Big]
            \;\ge\; -\log p_\theta(x)

    *Derivation* (Sec. 3 of Sahoo et al. 2024; Shi et al. 2024). Cut ``[0, 1]`` into steps
    ``s < t``. Between them a position masked at ``t`` was still clean at ``s`` with probability
    ``(alpha_s - alpha_t) / (1 - alpha_t)`` (the true posterior ``q(x_s | x_t, x_0)``); the model
    reverse step ``p_theta(x_s | x_t)`` unmasks it with the same probability, to a token drawn from
    ``p_theta(x^l | x_t)``. Their KL is therefore ``(alpha_s - alpha_t)/(1 - alpha_t) *
    (-log p_theta(x^l | x_t))`` for each masked position (0 for the unmasked ones, which the model
    copies). The prior term vanishes (``alpha(1) = 0``: everything is masked under both) and so
    does the reconstruction term (``alpha(0) = 1``). Summing the KLs over the steps is a Riemann
    sum; as the steps shrink, ``(alpha_s - alpha_t) -> -alpha'(t) dt`` and it becomes the integral
    above, estimated here with ``t ~ U(0, 1)``. With the exact posterior the bound is tight: every
    order in which the positions unmask gives the chain rule of ``p(x)`` (tested).

    Parameters
    ----------
    logits_fn : ``logits_fn(x_t, t) -> (B, L, V)`` logits of the clean tokens.
    x : ``(B, L)`` long tokens in ``0 .. V-1``.
    samples : draws of ``t`` per sequence, stratified: ``t = 1 - (s + u) / samples``,
        ``s = 0 .. samples-1``, ``u ~ U[0, 1)`` (unbiased, lower variance than independent draws).
    schedule : the :class:`DiscreteSchedule` (the value of the integral does not depend on it).
    vocab_size : ``V``; when ``None`` it is read from the last dimension of one call of
        ``logits_fn`` on ``x``.

    Returns
    -------
    ``(B,)`` float64: the estimate for each sequence (differentiable through ``logits_fn``).

    Examples
    --------
    >>> probs = torch.tensor([[0.5, 0.0], [0.0, 0.5]])  # x1 = x2, each uniform on {0, 1}
    >>> x = torch.tensor([[1, 1]]).repeat(4000, 1)
    >>> nelbo = masked_nelbo(exact_logits_fn(probs), x, torch.Generator().manual_seed(0), samples=8)
    >>> round(float(nelbo.mean()), 1)  # -log p(x) = log 2 = 0.693
    0.7
    """
    if not callable(logits_fn):
        raise ValueError(f"logits_fn must be callable, got {type(logits_fn).__name__}")
    if not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive int, got {samples!r}")
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.dtype != torch.long:
        raise ValueError(f"x must be a (B, L) long tensor of tokens, got "
                         f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}")
    B, L = x.shape
    V = vocab_size if vocab_size is not None else _probe_vocab(logits_fn, x)
    x = _check_tokens(x, _check_vocab(V), "x")
    u = torch.rand(samples, B, generator=generator, device=x.device, dtype=torch.float64)
    t_all = 1 - (torch.arange(samples, device=x.device, dtype=torch.float64)[:, None] + u) / samples  # (S, B)
    total = torch.zeros(B, dtype=torch.float64, device=x.device)
    for t in t_all:  # t: (B,) in (0, 1]
        # x_t ~ q(x_t | x): mask each position with probability 1 - alpha(t)
        masked = torch.rand(B, L, generator=generator, device=x.device, dtype=torch.float64) >= schedule.alpha(t)[:, None]
        x_t = torch.where(masked, torch.full_like(x, V), x)  # (B, L)
        logits = _call_logits(logits_fn, x_t, t, V)  # (B, L, V)
        # cross-entropy of the clean token, on the masked positions only
        logp = torch.log_softmax(logits.double(), dim=-1).gather(-1, x[..., None])[..., 0]  # (B, L)
        ce = torch.where(masked, -logp, torch.zeros_like(logp)).sum(-1)  # (B,)
        total = total + schedule.weight(t) * ce
    return total / samples


def exact_logits_fn(probs: torch.Tensor) -> LogitsFn:
    r"""The exact clean-token posterior of a data distribution given as a full table.

    ``probs`` has shape ``(V,) * L``: ``probs[x_1, .., x_L] = p(x)``. The returned
    ``logits_fn(x_t, t)`` gives, at each position ``l``,

    .. math::

        p(x_0^l = v \mid x_t) = \frac{\sum_{x:\, x^l = v,\ x \sim x_t} p(x)}{\sum_{x \sim x_t} p(x)},

    where ``x ~ x_t`` means ``x`` agrees with ``x_t`` on its unmasked positions (the other masked
    positions are marginalised). This is the posterior of the absorbing process at any ``t``:
    ``q(x_t | x_0) = alpha^{L-k} (1 - alpha)^k [x_0 ~ x_t]`` for ``k`` masked positions, so the
    factor depending on ``t`` cancels in Bayes' rule, and ``t`` is ignored. Unmasked positions get
    the one-hot of their token (``log 0 = -inf`` for the other tokens). A row whose unmasked tokens
    have probability 0 under the table has no posterior; it gets uniform logits (0).
    The discrete counterpart of :class:`~diffusion_edu.toy.GaussianMixture`'s exact score.

    Returns
    -------
    ``logits_fn(x_t: (B, L) long, t) -> (B, L, V)`` float64 log-probabilities.

    Examples
    --------
    >>> fn = exact_logits_fn(torch.tensor([[0.5, 0.0], [0.1, 0.4]]))  # V = 2, L = 2
    >>> fn(torch.tensor([[2, 2], [1, 2]]), None).exp()  # all masked; x1 = 1 given
    tensor([[[0.5000, 0.5000],
             [0.6000, 0.4000]],
    <BLANKLINE>
            [[0.0000, 1.0000],
             [0.2000, 0.8000]]], dtype=torch.float64)
    """
    if not isinstance(probs, torch.Tensor) or probs.ndim < 1 or len(set(probs.shape)) != 1 or probs.shape[0] < 1:
        raise ValueError(f"probs must be a tensor of shape (V,) * L, got "
                         f"{tuple(getattr(probs, 'shape', ())) or type(probs).__name__}")
    p = probs.detach().double().flatten()
    if not torch.isfinite(p).all() or (p < 0).any() or abs(float(p.sum()) - 1) > 1e-6:
        raise ValueError(f"probs must be a distribution (finite, >= 0, summing to 1), got sum "
                         f"{float(p.sum()):.6g}, min {float(p.min()):.3g}")
    V, L = probs.shape[0], probs.ndim
    # every sequence of the table, in the table's (row-major) order: (N, L), N = V**L
    seqs = torch.cartesian_prod(*[torch.arange(V)] * L).reshape(-1, L)
    onehot = torch.nn.functional.one_hot(seqs, V).double()  # (N, L, V)

    def logits_fn(x_t: torch.Tensor, t=None) -> torch.Tensor:
        if not isinstance(x_t, torch.Tensor) or x_t.ndim != 2 or x_t.shape[1] != L:
            raise ValueError(f"x_t must be a (B, {L}) long tensor, got {tuple(getattr(x_t, 'shape', ()))}")
        x_t = _check_tokens(x_t, V + 1, "x_t")
        xs = x_t.cpu()
        # x ~ x_t: x agrees with x_t wherever x_t is not the mask
        agree = ((xs[:, None, :] == V) | (xs[:, None, :] == seqs[None])).all(-1)  # (B, N)
        w = agree.double() * p[None]  # (B, N)
        num = torch.einsum("bn,nlv->blv", w, onehot)  # (B, L, V)
        den = w.sum(-1)[:, None, None]  # (B, 1, 1)
        post = torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(num, 1.0 / V))
        return post.log().to(x_t.device)

    return logits_fn


def sample(logits_fn: LogitsFn, batch: int, length: int, steps: int,
           generator: torch.Generator | None = None, order: str = "random",
           fixed: torch.Tensor | None = None, *, vocab_size: int | None = None,
           device=None) -> torch.Tensor:
    """Ancestral unmasking from the all-mask sequence (the reverse absorbing process).

    At each of ``steps`` steps: call ``logits_fn(x, t)`` with ``t`` the fraction of still-masked
    positions of each row (``(B,)``; for the linear schedule this is the time whose expected mask
    ratio it is), draw a candidate clean token at every masked position from its posterior, and
    commit ``k`` of them; the others stay masked. ``k`` spreads the ``n`` free positions over the
    steps as evenly as integers allow (step ``i`` commits ``floor((i+1) n / steps) - floor(i n /
    steps)``), ``k = n / steps`` when it divides.

    - ``order="random"``: commit ``k`` masked positions chosen uniformly at random. With one
      token a step and the exact posterior this samples the data exactly (a random-order chain
      rule); with several a step, the committed tokens are drawn independently given the rest, so
      ``steps=1`` samples the product of the marginals.
    - ``order="confidence"``: commit the ``k`` positions whose drawn token has the highest
      probability (MaskGIT, Chang et al. 2022; LLaDA's low-confidence remasking, Nie et al. 2025).
      Every sequence it returns has positive probability under an exact posterior, but it is
      biased towards the modes: it is not an exact sampler.

    ``fixed``: ``(batch, length)`` long, ``-1`` (or the mask id ``V``) at free positions and a token
    elsewhere: infilling, the fixed tokens are kept and the others sampled given them.

    Returns
    -------
    ``(batch, length)`` long tokens in ``0 .. V-1``.

    Examples
    --------
    >>> probs = torch.tensor([[0.5, 0.0], [0.0, 0.5]])  # x1 = x2
    >>> x = sample(exact_logits_fn(probs), 1000, 2, steps=2, generator=torch.Generator().manual_seed(0))
    >>> bool((x[:, 0] == x[:, 1]).all())
    True
    """
    if not callable(logits_fn):
        raise ValueError(f"logits_fn must be callable, got {type(logits_fn).__name__}")
    for name, val in (("batch", batch), ("length", length)):
        if not isinstance(val, int) or isinstance(val, bool) or val < 1:
            raise ValueError(f"{name} must be a positive int, got {val!r}")
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= length:
        raise ValueError(f"steps must be an int in 1..length={length}, got {steps!r}")
    if order not in ("random", "confidence"):
        raise ValueError(f"order must be 'random' or 'confidence', got {order!r}")
    if fixed is not None:
        if not isinstance(fixed, torch.Tensor) or fixed.shape != (batch, length) or fixed.dtype != torch.long:
            raise ValueError(f"fixed must be a ({batch}, {length}) long tensor, got "
                             f"{getattr(fixed, 'dtype', type(fixed).__name__)} {tuple(getattr(fixed, 'shape', ()))}")
        device = fixed.device
    probe = torch.zeros(batch, length, dtype=torch.long, device=device)
    V = _check_vocab(vocab_size if vocab_size is not None else _probe_vocab(logits_fn, probe))
    x = torch.full((batch, length), V, dtype=torch.long, device=device)  # all mask
    if fixed is not None:
        if ((fixed < -1) | (fixed > V)).any():
            raise ValueError(f"fixed must hold tokens in 0..{V - 1}, or -1 / {V} for free positions, "
                             f"got values in {int(fixed.min())}..{int(fixed.max())}")
        x = torch.where(fixed >= 0, fixed, x)
    n_free = (x == V).sum(-1)  # (B,)
    with torch.no_grad():
        for i in range(steps):
            masked = x == V  # (B, L)
            # tokens to commit this step, per row: k = floor((i+1) n / steps) - floor(i n / steps)
            k = (i + 1) * n_free // steps - i * n_free // steps  # (B,)
            t = masked.double().mean(-1)  # (B,) fraction still masked
            logits = _call_logits(logits_fn, x, t, V)  # (B, L, V)
            probs = torch.softmax(logits.double(), dim=-1)  # (B, L, V)
            # draw a candidate clean token at every position
            cand = torch.multinomial(probs.reshape(-1, V), 1, generator=generator).reshape(batch, length)
            if order == "random":
                score = torch.rand(batch, length, generator=generator, device=x.device, dtype=torch.float64)
            else:
                score = probs.gather(-1, cand[..., None])[..., 0]  # (B, L) probability of the drawn token
            score = torch.where(masked, score, torch.full_like(score, -math.inf))
            # commit the k highest-scoring masked positions of each row
            rank = torch.empty_like(x)
            rank.scatter_(1, score.argsort(dim=1, descending=True),
                          torch.arange(length, device=x.device).expand(batch, length))
            commit = masked & (rank < k[:, None])
            x = torch.where(commit, cand, x)
    return x


# --- small private helpers ---------------------------------------------------------------

def _check_vocab(vocab_size) -> int:
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive int (the number V of tokens, without the mask), "
                         f"got {vocab_size!r}")
    return vocab_size


def _check_time(t, name: str, open_right: bool = False) -> float:
    t = float(t)
    if not (0.0 <= t < 1.0 if open_right else 0.0 <= t <= 1.0):
        raise ValueError(f"{name} must be in [0, 1{')' if open_right else ']'}, got {t}")
    return t


def _batch_time(t, batch: int, device) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=torch.float64, device=device)
    t = t.expand(batch) if t.ndim == 0 else t
    if t.shape != (batch,) or not ((t >= 0) & (t <= 1)).all():
        raise ValueError(f"t must be a float or a ({batch},) tensor with values in [0, 1], got "
                         f"shape {tuple(t.shape)}")
    return t


def _check_tokens(x: torch.Tensor, n: int, name: str) -> torch.Tensor:
    """``x`` a 2-D long tensor with values in ``0 .. n-1``."""
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.dtype != torch.long:
        raise ValueError(f"{name} must be a (B, L) long tensor, got "
                         f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}")
    if x.numel() and (x.min() < 0 or x.max() >= n):
        raise ValueError(f"{name} must hold tokens in 0..{n - 1} (the vocabulary), got values in "
                         f"{int(x.min())}..{int(x.max())}")
    return x


def _call_logits(logits_fn: LogitsFn, x_t: torch.Tensor, t: torch.Tensor, V: int) -> torch.Tensor:
    out = logits_fn(x_t, t)
    if not isinstance(out, torch.Tensor) or out.shape != (*x_t.shape, V):
        raise ValueError(f"logits_fn must return logits of shape {(*x_t.shape, V)} (B, L, V), got "
                         f"{tuple(getattr(out, 'shape', ())) or type(out).__name__}")
    return out


def _probe_vocab(logits_fn: LogitsFn, x: torch.Tensor) -> int:
    """``V`` from the last dimension of ``logits_fn`` on clean tokens (token 0 is always valid)."""
    with torch.no_grad():
        out = logits_fn(torch.zeros_like(x), torch.ones(x.shape[0], dtype=torch.float64, device=x.device))
    if not isinstance(out, torch.Tensor) or out.ndim != 3 or out.shape[:2] != x.shape:
        raise ValueError(f"logits_fn must return logits of shape (B, L, V) = ({x.shape[0]}, {x.shape[1]}, V), "
                         f"got {tuple(getattr(out, 'shape', ())) or type(out).__name__}")
    return int(out.shape[-1])
