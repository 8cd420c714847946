r"""Variational diffusion models: the continuous-time ELBO and a learned noise schedule
(Kingma et al., 2021) -- the book's answer to "adaptive diffusion models".

The variance-preserving forward process is written through ``gamma(t) = -log SNR(t)``,
increasing on ``t in [0, 1]`` from ``gamma_min`` to ``gamma_max``:

.. math::  x_t = \alpha_t x + \sigma_t \varepsilon, \qquad
           \alpha_t^2 = \operatorname{sigmoid}(-\gamma(t)), \quad \sigma_t^2 = \operatorname{sigmoid}(\gamma(t)),
           \quad \mathrm{SNR}(t) = \alpha_t^2 / \sigma_t^2 = e^{-\gamma(t)} .

(Kingma et al. write the latent ``z_t``; the book writes ``x_t`` as everywhere else, with ``x`` the
data. Since ``sigma_0 > 0`` here, the latent at ``t = 0`` is still noisy: it is written ``x_{t=0}``,
never ``x_0``, which is the data.)

In the limit of infinitely many steps the negative ELBO of the diffusion model is

.. math::  -\text{ELBO}(x) = \underbrace{KL(q(x_{t=1}|x) \| N(0, I))}_{\text{prior}}
           + \underbrace{E_{q(x_{t=0}|x)}[-\log p(x|x_{t=0})]}_{\text{reconstruction}}
           + \underbrace{\tfrac12\, E_{t \sim U(0,1),\, \varepsilon}\big[\gamma'(t)\,
             \|\varepsilon - \hat\varepsilon(x_t; \gamma_t)\|^2\big]}_{L_\infty\ \text{(diffusion)}} .

**The schedule's shape does not change the bound.** Substituting ``v = gamma(t)``,
``L_inf = 1/2 int_{gamma_min}^{gamma_max} E||eps - eps_hat(z_v; v)||^2 dv`` depends on the
endpoints only -- provided the network is told the noise level ``gamma`` rather than the time
``t``, which is why :func:`vdm_loss` calls ``net(z, s)`` with ``s`` a fixed affine function of
``gamma``. What the shape does change is the **variance** of the one-sample Monte Carlo
estimate. Kingma et al. therefore learn the endpoints and the network on the ELBO and the shape on
``E[L^2]``: with the mean fixed, minimising the second moment minimises the variance, and
``d E[L^2] / d eta = E[2 L dL / d eta]`` is obtained from the ordinary backward pass by scaling
the gradient that reaches the shape by ``2 L`` (:func:`vdm_loss`, ``variance_reduction``).

- :class:`FixedLinearSchedule` -- ``gamma`` linear in ``t`` (linear in log-SNR).
- :class:`LearnedSchedule` -- a monotone network: positive weights and increasing activations.
- :func:`vdm_loss`, :func:`train_vdm`, and :func:`to_ddpm` (the same model as a discrete DDPM,
  for :func:`diffusion_edu.likelihood.ddpm_elbo` and the DDPM samplers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .denoiser import Denoiser
from .schedules import DDPMSchedule
from .training import train
from .utils import append_dims, check_finite

__all__ = [
    "NoiseSchedule", "FixedLinearSchedule", "LearnedSchedule", "VDMLoss", "vdm_loss",
    "VDMTrainResult", "train_vdm", "to_ddpm",
]


class NoiseSchedule(nn.Module):
    """``gamma(t) = gamma_min + (gamma_max - gamma_min) h(t)``: endpoints times a *shape*
    ``h`` that increases from ``h(0) = 0`` to ``h(1) = 1``. Subclasses define
    :meth:`shape_and_derivative`. Called as ``schedule(t)`` with ``t`` a ``(B,)`` tensor in
    ``[0, 1]``, it returns ``gamma(t)``, ``(B,)``.

    ``learn_endpoints=True`` makes ``gamma_min`` and ``gamma_max`` parameters. The network's
    noise-level input is ``(gamma - ref_min) / (ref_max - ref_min)`` with the *initial*
    endpoints as fixed references (:meth:`net_input`), so that its meaning never drifts.
    """

    def __init__(self, gamma_min: float = -10.0, gamma_max: float = 5.0, learn_endpoints: bool = False):
        super().__init__()
        if not gamma_min < gamma_max:
            raise ValueError(f"need gamma_min < gamma_max, got gamma_min={gamma_min}, gamma_max={gamma_max}")
        g = torch.tensor([float(gamma_min), float(gamma_max)])
        if learn_endpoints:
            self.endpoints = nn.Parameter(g)
        else:
            self.register_buffer("endpoints", g)
        self.register_buffer("ref", g.clone())  # (ref_min, ref_max) for the network's input
        self.config = dict(gamma_min=float(gamma_min), gamma_max=float(gamma_max), learn_endpoints=learn_endpoints)

    @property
    def gamma_min(self) -> torch.Tensor:
        return self.endpoints[0]

    @property
    def gamma_max(self) -> torch.Tensor:
        return self.endpoints[1]

    def shape_and_derivative(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(h(t), h'(t))``, each ``(B,)``."""
        raise NotImplementedError

    def shape_parameters(self) -> list[nn.Parameter]:
        """The parameters of ``h`` (trained on the variance), not the endpoints."""
        return [p for name, p in self.named_parameters() if name != "endpoints"]

    def endpoint_parameters(self) -> list[nn.Parameter]:
        """``[endpoints]`` when they are learned (trained on the ELBO), else ``[]``."""
        return [self.endpoints] if isinstance(self.endpoints, nn.Parameter) else []

    def gamma_and_derivative(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(gamma(t), gamma'(t))``, each ``(B,)``."""
        h, dh = self.shape_and_derivative(self._check_t(t))
        g0, g1 = self._endpoints()
        return g0 + (g1 - g0) * h, (g1 - g0) * dh

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.gamma_and_derivative(t)[0]

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alpha_t, sigma_t)`` with ``alpha^2 = sigmoid(-gamma)``, ``sigma^2 = sigmoid(gamma)``."""
        gamma = self(t)
        return torch.sigmoid(-gamma).sqrt(), torch.sigmoid(gamma).sqrt()

    def net_input(self, gamma: torch.Tensor) -> torch.Tensor:
        """The network's noise-level input ``(gamma - ref_min) / (ref_max - ref_min)`` (in
        ``[0, 1]`` for fixed endpoints)."""
        return (gamma - self.ref[0]) / (self.ref[1] - self.ref[0])

    def _endpoints(self):
        g0, g1 = self.endpoints[0], self.endpoints[1]
        if not g0 < g1:
            raise ValueError(f"the learned endpoints crossed: gamma_min={g0.item():.4g} >= gamma_max={g1.item():.4g}")
        return g0, g1

    @staticmethod
    def _check_t(t):
        if not torch.is_tensor(t) or t.ndim != 1:
            raise ValueError(f"t must be a (B,) tensor, got {t!r:.60}")
        if (t < 0).any() or (t > 1).any():
            raise ValueError(f"t must lie in [0, 1], got values in [{t.min().item():.4g}, {t.max().item():.4g}]")
        return t


class FixedLinearSchedule(NoiseSchedule):
    """``gamma(t) = gamma_min + (gamma_max - gamma_min) t``: log-SNR linear in time.

    Examples
    --------
    >>> s = FixedLinearSchedule(-10.0, 5.0)
    >>> s(torch.tensor([0.0, 0.5, 1.0])).tolist()
    [-10.0, -2.5, 5.0]
    """

    def shape_and_derivative(self, t):
        return t, torch.ones_like(t)


class LearnedSchedule(NoiseSchedule):
    r"""A monotone network for the shape, after Kingma et al. (2021):

    .. math:: \tilde h(t) = w_1 t + \frac{1}{n} \sum_{j=1}^{n} w_{3,j}\,
              \operatorname{sigmoid}\big(w_{2,j} (2t - 1) + b_j\big), \qquad
              h(t) = \frac{\tilde h(t) - \tilde h(0)}{\tilde h(1) - \tilde h(0)} ,

    every weight kept positive by a softplus (the VDM code takes absolute values) and every
    activation increasing, so ``h`` increases; the normalisation pins ``h(0) = 0``, ``h(1) = 1``,
    i.e. ``gamma`` has exactly the chosen endpoints. ``h'(t)`` is written out by the chain rule.
    Initialised close to the linear schedule (small ``w_3``).

    Examples
    --------
    >>> s = LearnedSchedule(-10.0, 5.0, generator=torch.Generator().manual_seed(0))
    >>> g = s(torch.linspace(0, 1, 11))
    >>> round(g[0].item(), 4), round(g[-1].item(), 4), bool((g[1:] > g[:-1]).all())
    (-10.0, 5.0, True)
    """

    def __init__(self, gamma_min: float = -10.0, gamma_max: float = 5.0, learn_endpoints: bool = False,
                 n_features: int = 1024, generator: torch.Generator | None = None):
        super().__init__(gamma_min, gamma_max, learn_endpoints)
        if n_features < 1:
            raise ValueError(f"n_features must be positive, got {n_features}")
        self.config["n_features"] = n_features
        inv_softplus_1 = math.log(math.e - 1)
        self.w1 = nn.Parameter(torch.tensor(inv_softplus_1))  # softplus = 1
        self.w2 = nn.Parameter(torch.randn(n_features, generator=generator) + 1.0)
        self.b2 = nn.Parameter(2 * torch.randn(n_features, generator=generator))
        self.w3 = nn.Parameter(torch.randn(n_features, generator=generator) - 4.0)  # softplus ~ 0.02

    def shape_and_derivative(self, t):
        w1, w2, w3 = F.softplus(self.w1), F.softplus(self.w2), F.softplus(self.w3)
        n = w3.shape[0]

        def h_tilde(s):  # (B,) -> value and derivative, (B,) each
            u = torch.sigmoid(w2 * (2 * s[:, None] - 1) + self.b2)  # (B, n)
            value = w1 * s + (u * w3).sum(1) / n
            slope = w1 + (u * (1 - u) * 2 * w2 * w3).sum(1) / n  # chain rule
            return value, slope

        value, slope = h_tilde(t.to(w1.dtype))
        ends, _ = h_tilde(torch.tensor([0.0, 1.0], dtype=w1.dtype, device=w1.device))
        span = ends[1] - ends[0]
        return (value - ends[0]) / span, slope / span


@dataclass
class VDMLoss:
    """Terms of the negative continuous-time ELBO per example (nats, ``(B,)`` each), and the
    times ``t`` ``(B,)`` at which the diffusion term was sampled. ``total`` is their sum."""

    diffusion: torch.Tensor
    prior: torch.Tensor
    reconstruction: torch.Tensor
    t: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return self.diffusion + self.prior + self.reconstruction


def vdm_loss(
    net, schedule: NoiseSchedule, x: torch.Tensor, *, levels: int | None = None,
    value_range: tuple[float, float] = (-1.0, 1.0), generator: torch.Generator | None = None,
    antithetic: bool = True, variance_reduction: bool = True, t: torch.Tensor | None = None,
) -> VDMLoss:
    r"""One-sample estimate of the VDM negative ELBO for a batch ``x`` ``(B, *dims)``.

    - diffusion ``1/2 gamma'(t) ||eps - net(x_t, s_t)||^2`` with ``t ~ U(0, 1)`` (antithetic:
      ``t_i = (u + i / B) mod 1``, one ``u`` per batch, which lowers the variance of the batch mean)
      and ``s_t = schedule.net_input(gamma(t))``;
    - prior ``KL(N(alpha_1 x, sigma_1^2 I) || N(0, I))``, exact;
    - reconstruction ``-log p(x | x_{t=0})``, ``x_{t=0} = alpha_0 x + sigma_0 eps``, with
      ``p(x | x_{t=0})`` proportional to ``q(x_{t=0} | x)`` as a function of ``x``: for discrete data
      (``levels=K`` equally spaced values spanning ``value_range``) a softmax over the ``K`` values per
      dimension with logits ``-(x_{t=0} - alpha_0 v_k)^2 / (2 sigma_0^2)``, a probability; for
      continuous data (``levels=None``) the density ``N(x; x_{t=0} / alpha_0, sigma_0^2 / alpha_0^2)``.

    ``variance_reduction=True`` (when the graph is being recorded) registers hooks that scale the
    gradient reaching the schedule's *shape* by ``L_i / mean(L)`` (``L`` the diffusion terms,
    detached): after ``loss.total.mean().backward()`` the network and the endpoints hold the
    gradient of the ELBO and the shape parameters that of ``E[L^2] / (2 E[L])``, the
    variance-minimising direction of Kingma et al. (2021) (their ``2 L`` divided by the batch's
    ``2 E[L]``, a positive constant that keeps its size comparable to an ELBO gradient).

    Examples
    --------
    >>> net = lambda z, s: torch.zeros_like(z)
    >>> out = vdm_loss(net, FixedLinearSchedule(), torch.zeros(8, 2), generator=torch.Generator().manual_seed(0))
    >>> out.total.shape, out.diffusion.shape
    (torch.Size([8]), torch.Size([8]))
    """
    if not torch.is_tensor(x) or x.ndim < 2:
        raise ValueError(f"x must be a tensor of shape (B, *dims), got {x!r:.60}")
    check_finite(x, "x")
    B, dev = x.shape[0], x.device
    if t is None:
        if antithetic:
            u = torch.rand((), generator=generator, dtype=torch.float64)
            t = torch.remainder(u + torch.arange(B, dtype=torch.float64) / B, 1.0)
        else:
            t = torch.rand(B, generator=generator, dtype=torch.float64)
    t = t.to(device=dev, dtype=x.dtype)
    h, dh = schedule.shape_and_derivative(schedule._check_t(t))  # the shape, (B,) each
    g0, g1 = schedule._endpoints()
    gamma, dgamma = g0 + (g1 - g0) * h, (g1 - g0) * dh  # gamma(t), gamma'(t)

    # diffusion term: 1/2 gamma'(t) ||eps - eps_hat(x_t; gamma_t)||^2
    eps = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(dev)
    alpha, sigma = torch.sigmoid(-gamma).sqrt(), torch.sigmoid(gamma).sqrt()
    z = append_dims(alpha, x.ndim) * x + append_dims(sigma, x.ndim) * eps
    eps_hat = net(z, schedule.net_input(gamma))
    diffusion = 0.5 * dgamma * (eps - eps_hat).pow(2).flatten(1).sum(1)

    # prior term: KL(q(x_{t=1} | x) || N(0, I)), alpha_1^2 = sigmoid(-gamma_max)
    a1, s1 = torch.sigmoid(-g1), torch.sigmoid(g1)  # squares
    xf = x.flatten(1)
    prior = 0.5 * (s1 + a1 * xf.pow(2) - 1 - torch.log(s1)).sum(1)

    # reconstruction term: -log p(x | x_{t=0}), x_{t=0} = alpha_0 x + sigma_0 eps_0
    a0, s0 = torch.sigmoid(-g0).sqrt(), torch.sigmoid(g0).sqrt()
    eps0 = torch.randn(xf.shape, generator=generator, dtype=x.dtype).to(dev)
    z0 = a0 * xf + s0 * eps0  # (B, D)
    if levels is None:  # N(x; x_{t=0} / alpha_0, sigma_0^2 / alpha_0^2)
        reconstruction = -torch.distributions.Normal(z0 / a0, s0 / a0).log_prob(xf).sum(1)
    else:  # softmax over the K values of q(x_{t=0} | x = v_k)
        lo, hi = (float(s) for s in value_range)
        values = torch.linspace(lo, hi, levels, dtype=x.dtype, device=dev)  # (K,)
        k = ((xf - lo) / (hi - lo) * (levels - 1)).round().long()  # (B, D) index of x
        off_grid = (values[k.clamp(0, levels - 1)] - xf).abs() > 1e-3 * (hi - lo) / (levels - 1)
        if (k < 0).any() or (k >= levels).any() or off_grid.any():
            raise ValueError(f"x must lie on the {levels} levels spanning {value_range} when levels is given, "
                             f"got values in [{xf.min().item():.4g}, {xf.max().item():.4g}]")
        logits = -0.5 * ((z0[..., None] - a0 * values) / s0) ** 2  # (B, D, K)
        log_p = logits.gather(-1, k[..., None]).squeeze(-1) - torch.logsumexp(logits, -1)
        reconstruction = -log_p.sum(1)

    if variance_reduction and torch.is_grad_enabled() and h.requires_grad:
        weight = (diffusion / diffusion.mean()).detach()  # 2 L_i / (2 mean L)
        h.register_hook(lambda grad: grad * weight)
        dh.register_hook(lambda grad: grad * weight)
    return VDMLoss(diffusion=diffusion, prior=prior, reconstruction=reconstruction, t=t.detach())


@dataclass
class VDMTrainResult:
    net: nn.Module
    schedule: NoiseSchedule
    ema: nn.ModuleDict  # {"net": ..., "schedule": ...}, the averaged weights
    losses: list[float] = field(default_factory=list)  # batch mean of the negative ELBO
    diffusion_var: list[float] = field(default_factory=list)  # batch variance of the diffusion term


def train_vdm(
    net: nn.Module, schedule: NoiseSchedule, data: torch.Tensor, steps: int, *,
    batch_size: int = 128, lr: float = 1e-3, schedule_lr: float = 1e-2, levels: int | None = None,
    value_range: tuple[float, float] = (-1.0, 1.0), ema_decay: float = 0.999, grad_clip: float | None = 1.0,
    generator: torch.Generator | None = None, device: torch.device | str | None = None,
    progress: bool = True,
) -> VDMTrainResult:
    """Train ``net`` and ``schedule`` on :func:`vdm_loss` with :func:`diffusion_edu.training.train`:
    one Adam with two parameter groups, the network (and learned endpoints) at ``lr`` on the ELBO,
    the schedule's shape at ``schedule_lr`` on the variance (see :func:`vdm_loss`). ``data`` is an
    ``(N, *dims)`` tensor sampled with replacement; ``grad_clip`` clips the first group's gradient
    norm only. The EMA averages both."""
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    both = nn.ModuleDict({"net": net, "schedule": schedule})
    diffusion_var: list[float] = []

    def loss_fn(model, x, gen):
        out = vdm_loss(model["net"], model["schedule"], x, levels=levels, value_range=value_range, generator=gen)
        diffusion_var.append(out.diffusion.detach().var().item())
        return out.total.mean()

    def param_groups(model):  # the ELBO's parameters, then the shape's (variance gradient, no clip)
        sched = model["schedule"]
        groups = [{"params": list(model["net"].parameters()) + sched.endpoint_parameters()}]
        if sched.shape_parameters():
            groups.append({"params": sched.shape_parameters(), "lr": schedule_lr, "grad_clip": None})
        return groups

    res = train(both, loss_fn, data, steps, batch_size=batch_size, lr=lr, ema_decay=ema_decay,
                grad_clip=grad_clip, generator=generator, device=device, progress=progress,
                param_groups=param_groups)
    return VDMTrainResult(net, schedule, res.ema_model, res.losses, diffusion_var)


def to_ddpm(net, schedule: NoiseSchedule, n_steps: int) -> Denoiser:
    """The same model as a discrete DDPM of ``n_steps`` steps: a
    :class:`~diffusion_edu.denoiser.Denoiser` on the ``DDPMSchedule`` with
    ``abar_n = sigmoid(-gamma((n + 1) / N))`` whose network is ``net(x, s(gamma_n))`` at index ``n``,
    for :func:`diffusion_edu.likelihood.ddpm_elbo` and the samplers."""
    if not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive int, got {n_steps!r}")
    with torch.no_grad():
        p = schedule.endpoints
        t = torch.arange(1, n_steps + 1, dtype=p.dtype, device=p.device) / n_steps
        gamma = schedule(t)  # (N,)
        s = schedule.net_input(gamma)
    abar = torch.sigmoid(-gamma.double()).cpu()

    def eps_net(x, n):  # n: float training indices (integers on the DDPM grid)
        return net(x, s.to(x.device)[n.round().long().to(s.device)].to(x.dtype))

    return Denoiser(eps_net, DDPMSchedule(abar), "eps")
