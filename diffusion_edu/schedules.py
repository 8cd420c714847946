r"""Noise schedules: every noising process as ``x_t = alpha(t) x0 + sigma(t) eps``, and the time
grids that samplers walk down.

**One time direction.** ``t`` grows with the noise: the data end of the time range is ``t_min``,
the noise end ``T``. A :class:`Schedule` knows ``alpha(t)``, ``sigma(t)`` and their derivatives;
from them follow the log signal-to-noise ratio

.. math::  \lambda(t) = \log \frac{\alpha(t)^2}{\sigma(t)^2},

which decreases in ``t``, and the coefficients of the linear SDE ``dx = f(t) x dt + g(t) dW``
with the same marginals (the moment equations ``alpha' = f alpha`` and
``(sigma^2)' = 2 f sigma^2 + g^2``):

.. math::  f = \frac{\alpha'}{\alpha}, \qquad g^2 = 2 \sigma \sigma' - 2 f \sigma^2 .

The schedules of the book: the SDEs of :mod:`diffusion_edu.sde` (``VPSDE``, ``VESDE``,
``SubVPSDE``, ``BrownianSDE``), the straight path ``alpha = 1 - t``, ``sigma = t`` of flow
matching (:class:`diffusion_edu.flow_matching.StraightPath`), and :class:`DDPMSchedule`, the
discrete chain of Ho et al. (2020), whose times are the training indices.

**Discrete DDPM** (Ho et al., 2020): ``q(x_n | x_{n-1}) = N(sqrt(1 - beta_n) x_{n-1}, beta_n I)``
for ``n = 1..N``, so ``x_n = sqrt(abar_n) x_0 + sqrt(1 - abar_n) eps`` with
``abar_n = prod_{i<=n} (1 - beta_i)`` (:func:`alphas_cumprod`). Arrays are indexed from 0:
entry ``n`` of ``betas`` is ``beta_{n+1}`` and entry ``n`` of ``alphas_cumprod`` belongs to the
0-based training index ``n`` that the network sees (diffusers' ``timesteps`` are these indices).

- ``linear``: ``beta`` from ``1e-4`` to ``0.02`` in ``N`` equal steps (Ho et al., 2020).
- ``cosine`` (Nichol & Dhariwal, 2021, Eq. 17): ``abar(t) = f(t) / f(0)`` with
  ``f(t) = cos^2( (t/N + s) / (1 + s) * pi/2 )``, ``s = 0.008`` -- note the *square*;
  ``beta_n = min(1 - abar(n) / abar(n-1), 0.999)``, the clip that keeps the last steps finite.

**Sampling grids** are a different object with a different name: :func:`time_grid` returns
``steps + 1`` decreasing times from the noise end ``T`` to the data end ``t_eps``; a sampler takes
one step between each pair of neighbours.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .utils import append_dims, check_finite

__all__ = [
    "Schedule", "DDPMSchedule", "time_grid", "SPACINGS", "ddpm_betas", "alphas_cumprod",
    "check_alphas_cumprod",
]

SPACINGS = ("uniform", "logsnr", "karras", "linspace", "leading", "trailing")


class Schedule:
    """Base class of a noising process ``x_t = alpha(t) x0 + sigma(t) eps`` on ``[t_min, T]``.

    Subclasses define :meth:`marginal` and :meth:`marginal_derivatives`, and set

    - ``T``: the noise end of the time range (where samplers start);
    - ``t_min``: the data end of the time range;
    - ``t_eps``: where sampling grids end, ``t_min <= t_eps``: the data itself where
      ``sigma(t_min) = 0`` is safe to step *to* (samplers never evaluate the model at the last
      time of a grid), or a small truncation where the score of the data is singular;
    - ``prior_std``: samplers start from ``N(0, prior_std^2 I)``, which stands in for ``p_T``.
    """

    T: float = 1.0
    t_min: float = 0.0
    t_eps: float = 1e-3
    prior_std: float = 1.0

    # -- to be defined by each schedule ------------------------------------------------------
    def marginal(self, t: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alpha(t), sigma(t))``, float64, each shaped like ``t``."""
        raise NotImplementedError

    def marginal_derivatives(self, t: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alpha'(t), sigma'(t))``, the time derivatives, float64, each shaped like ``t``."""
        raise NotImplementedError

    # -- shared by every schedule ------------------------------------------------------------
    def sde_coefficients(self, t: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(f(t), g(t)^2)`` of the linear SDE with these marginals: ``f = alpha' / alpha``,
        ``g^2 = 2 sigma sigma' - 2 f sigma^2`` (float64, shaped like ``t``)."""
        alpha, sigma = self.marginal(t)
        dalpha, dsigma = self.marginal_derivatives(t)
        f = dalpha / alpha
        return f, 2 * sigma * dsigma - 2 * f * sigma**2

    def log_snr(self, t: float | torch.Tensor) -> torch.Tensor:
        """``lambda(t) = log(alpha^2 / sigma^2)``, float64, decreasing in ``t``."""
        alpha, sigma = self.marginal(t)
        return 2 * (torch.log(alpha) - torch.log(sigma))

    def time_at_log_snr(self, lam: float | torch.Tensor) -> torch.Tensor:
        """The time ``t`` with ``lambda(t) = lam`` (float64, shaped like ``lam``), by bisection
        on ``[t_min, T]``: exact to round-off for any schedule whose log-SNR decreases."""
        lam = torch.as_tensor(lam, dtype=torch.float64)
        lo = torch.full_like(lam, self.t_min)  # lambda(lo) >= lam
        hi = torch.full_like(lam, self.T)  # lambda(hi) <= lam
        for _ in range(100):
            mid = 0.5 * (lo + hi)
            above = self.log_snr(mid) > lam  # still too little noise: move right
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        return 0.5 * (lo + hi)

    def snr_time_range(self) -> tuple[float, float]:
        """``(t_hi, t_lo)``: the noisiest and the least noisy times with a finite log-SNR that
        log-SNR and Karras grids span (:func:`time_grid`). Default ``(T, t_eps)``."""
        return self.T, self.t_eps

    def perturb(
        self, x0: torch.Tensor, t: float | torch.Tensor, generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample ``x_t = alpha(t) x0 + sigma(t) eps`` and return ``(x_t, eps)``; ``eps`` is
        drawn from ``generator`` unless ``noise`` is given.

        Examples
        --------
        >>> from diffusion_edu import BrownianSDE
        >>> xt, eps = BrownianSDE().perturb(torch.zeros(3, 2), 0.5, generator=torch.Generator().manual_seed(0))
        >>> torch.allclose(xt, eps)   # sigma(0.5) = sqrt(2 * 0.5) = 1
        True
        """
        if not torch.is_tensor(x0) or x0.ndim < 1:
            raise ValueError(f"x0 must be a tensor of shape (B, *dims), got {x0!r:.60}")
        check_finite(x0, "x0")
        t = self._time(t, batch=x0.shape[0])
        alpha, sigma = self.marginal(t)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        elif noise.shape != x0.shape:
            raise ValueError(f"noise must have the shape of x0 {tuple(x0.shape)}, got {tuple(noise.shape)}")
        a, s = (append_dims(c.to(x0.device), x0.ndim).to(x0.dtype) for c in (alpha, sigma))
        return a * x0 + s * noise, noise

    def prior_sample(
        self, shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Sample the reference distribution ``N(0, prior_std^2 I)`` that stands in for ``p_T``."""
        return self.prior_std * torch.randn(tuple(shape), generator=generator)

    def prior_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log N(x; 0, prior_std^2 I)`` per example, shape ``(B,)``."""
        prior = torch.distributions.Normal(torch.zeros((), dtype=x.dtype, device=x.device), self.prior_std,
                                           validate_args=False)  # a runaway NaN path gives NaN, not an error
        return prior.log_prob(x).flatten(1).sum(1)

    def _time(self, t: float | torch.Tensor, batch: int | None = None, name: str = "t") -> torch.Tensor:
        """Validate ``t`` in ``[t_min, T]``; return a float64 tensor (``(batch,)`` when given)."""
        t = t.double() if torch.is_tensor(t) else torch.as_tensor(t, dtype=torch.float64)  # floats stay exact
        if t.ndim > 1:
            raise ValueError(f"{name} must be a float or a (B,) tensor, got shape {tuple(t.shape)}")
        if torch.isnan(t).any():
            raise ValueError(f"{name} must not be NaN")
        tol = 1e-6 * (self.T - self.t_min)
        if t.numel() and ((t < self.t_min - tol).any() or (t > self.T + tol).any()):
            raise ValueError(
                f"{name} must lie in [{self.t_min}, {self.T}] for {type(self).__name__}, got values in "
                f"[{t.min().item():.6g}, {t.max().item():.6g}]"
            )
        if batch is not None:
            if t.ndim == 0:
                t = t.expand(batch)
            elif t.shape[0] != batch:
                raise ValueError(f"{name} must have shape ({batch},) to match x, got {tuple(t.shape)}")
        return t

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v}" for k, v in vars(self).items() if not k.startswith("_")
                           and not torch.is_tensor(v))
        return f"{type(self).__name__}({fields})"


class DDPMSchedule(Schedule):
    r"""The discrete DDPM chain as a schedule whose times are the 0-based training indices ``n``.

    ``marginal(n) = (sqrt(abar_n), sqrt(1 - abar_n))`` at the integers ``n = 0 .. N-1`` (the
    network was trained there). Between two integers the log-SNR is interpolated linearly, so
    that continuous solvers can call the schedule anywhere. Time ``-1`` is the **data**
    (``abar_{-1} = 1``, Ho et al.'s ``x_0``), the data end of every sampling grid; between ``-1``
    and ``0``, ``log abar`` is linear (``abar(t) = abar_0^{t + 1}``), the first step of the chain
    spread evenly. ``T = N - 1`` is the noise end, and samplers start from ``N(0, I)``.

    Examples
    --------
    >>> sched = DDPMSchedule(alphas_cumprod(ddpm_betas(1000)))
    >>> a, s = sched.marginal(torch.tensor([-1.0, 0.0, 999.0]))
    >>> a[0].item(), abs(s[0].item())   # the data
    (1.0, 0.0)
    >>> bool(torch.isclose(a[1] ** 2, sched.alphas_cumprod[0]))   # abar_0 = 1 - beta_1
    True
    """

    def __init__(self, alphas_cumprod: torch.Tensor):
        abar = check_alphas_cumprod(alphas_cumprod)
        if len(abar) < 2:
            raise ValueError(f"alphas_cumprod must hold at least 2 steps, got {len(abar)}")
        self.alphas_cumprod = abar  # (N,) float64
        self.num_steps = len(abar)
        self.T = float(len(abar) - 1)
        self.t_min = self.t_eps = -1.0
        self.prior_std = 1.0
        self._lam = torch.log(abar) - torch.log1p(-abar)  # log SNR_n, (N,)

    def snr_time_range(self) -> tuple[float, float]:
        return self.T, 0.0  # the least noisy trained index; the data follows

    def _pieces(self, t):
        """For ``t >= 0``: the left index ``i``, the weight ``w = t - i`` and the slope
        ``dlambda/dt`` of the piece that holds ``t`` (the last piece for ``t = N - 1``)."""
        i = t.clamp(0, self.T).floor().clamp(max=self.T - 1).long()
        lam = self._lam.to(t.device)
        return i, t - i, lam[i + 1] - lam[i], lam

    def log_snr(self, t):
        t = self._time(t)
        i, w, slope, lam = self._pieces(t)
        la0 = torch.log(self.alphas_cumprod[0]).to(t.device)
        before = (t + 1) * la0 - torch.log(-torch.expm1((t + 1) * la0))  # t in [-1, 0): abar_0^(t+1)
        return torch.where(t >= 0, lam[i] + w * slope, before)

    def marginal(self, t):
        t = self._time(t)
        i, w, _, _ = self._pieces(t)
        lam = self.log_snr(t)
        abar = torch.where(w == 0, self.alphas_cumprod.to(t.device)[i], torch.sigmoid(lam))  # exact at integers
        abar = torch.where(t >= 0, abar, torch.exp((t + 1) * torch.log(self.alphas_cumprod[0])))
        return abar.sqrt(), (-torch.expm1(torch.log(abar))).clamp_min(0).sqrt()

    def marginal_derivatives(self, t):
        t = self._time(t)
        _, _, slope, _ = self._pieces(t)
        alpha, sigma = self.marginal(t)
        la0 = torch.log(self.alphas_cumprod[0]).to(t.device)
        # t >= 0: alpha^2 = sigmoid(lambda): alpha' = alpha sigma^2 lambda' / 2, sigma' = -sigma alpha^2 lambda' / 2
        # t < 0: abar = abar_0^(t+1): alpha' = alpha log(abar_0) / 2, sigma' = -alpha^2 log(abar_0) / (2 sigma)
        dalpha = torch.where(t >= 0, 0.5 * alpha * sigma**2 * slope, 0.5 * alpha * la0)
        dsigma = torch.where(t >= 0, -0.5 * sigma * alpha**2 * slope, -0.5 * alpha**2 * la0 / sigma)
        return dalpha, dsigma


def time_grid(schedule: Schedule, steps: int, spacing: str = "uniform", *, rho: float = 7.0) -> torch.Tensor:
    r"""``steps + 1`` decreasing times from the noise end ``schedule.T`` to the data end
    ``schedule.t_eps`` (float64): the grid a sampler walks down, one step between neighbours.

    Spacings (where the intermediate times lie):

    - ``"uniform"``: equal steps in ``t``.
    - ``"logsnr"``: equal steps in ``lambda = log(alpha^2 / sigma^2)`` (Lu et al., 2022).
    - ``"karras"``: the noise levels ``sigma~ = sigma / alpha`` of Karras et al. (2022, Eq. 5),
      ``sigma~_i = (sigma~_max^{1/rho} + i / (n - 1) (sigma~_min^{1/rho} - sigma~_max^{1/rho}))^rho``,
      dense near the data for ``rho = 7``.
    - for a :class:`DDPMSchedule` only, integer indices as diffusers' schedulers space them
      (Lin et al., 2024, Table 2), then the data (``-1``): ``"linspace"``
      ``round(linspace(N - 1, 0, steps))``, ``"leading"`` ``k (steps - 1), ..., k, 0`` with
      ``k = N // steps``, ``"trailing"`` ``round(N - i N / steps) - 1`` for ``i = 0 .. steps - 1``
      (the only one of the three that starts at the noisiest index ``N - 1``).

    The ``"logsnr"`` and ``"karras"`` spacings span the finite log-SNRs of
    ``schedule.snr_time_range()``; where the grid's ends lie outside it (the data with
    ``sigma = 0``, or a pure-noise end with ``alpha = 0``), the ends are added as extra points.

    Examples
    --------
    >>> from diffusion_edu import VPSDE
    >>> time_grid(VPSDE(), 4).tolist()
    [1.0, 0.75025, 0.5005, 0.25075, 0.001]
    >>> sched = DDPMSchedule(alphas_cumprod(ddpm_betas(1000)))
    >>> time_grid(sched, 5, "leading").tolist()   # diffusers' DDIM "leading" timesteps, then the data
    [800.0, 600.0, 400.0, 200.0, 0.0, -1.0]
    >>> time_grid(sched, 5, "trailing").tolist()
    [999.0, 799.0, 599.0, 399.0, 199.0, -1.0]
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule must be a Schedule (an SDE, StraightPath or DDPMSchedule), got {type(schedule).__name__}")
    T, t_eps = float(schedule.T), float(schedule.t_eps)
    if spacing in ("linspace", "leading", "trailing"):
        if not isinstance(schedule, DDPMSchedule):
            raise ValueError(f"spacing={spacing!r} needs a DDPMSchedule (integer training indices), "
                             f"got {type(schedule).__name__}; use 'uniform', 'logsnr' or 'karras'")
        return _ddpm_indices(schedule.num_steps, steps, spacing)
    if spacing == "uniform":
        return torch.linspace(T, t_eps, steps + 1, dtype=torch.float64)
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho!r}")
    t_hi, t_lo = (float(v) for v in schedule.snr_time_range())
    head = [T] if t_hi != T else []
    tail = [t_eps] if t_lo != t_eps else []
    n = steps + 1 - len(head) - len(tail)  # points spaced between t_hi and t_lo
    if n < 1:
        return torch.tensor(head + tail, dtype=torch.float64)
    lam_hi, lam_lo = schedule.log_snr(t_hi).item(), schedule.log_snr(t_lo).item()
    u = torch.linspace(0, 1, n, dtype=torch.float64)
    if spacing == "logsnr":
        lam = lam_hi + u * (lam_lo - lam_hi)
    else:  # Karras et al. (2022), Eq. 5, on sigma~ = exp(-lambda / 2)
        s_max, s_min = math.exp(-lam_hi / 2), math.exp(-lam_lo / 2)
        sig = (s_max ** (1 / rho) + u * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
        lam = -2 * torch.log(sig)
    inner = schedule.time_at_log_snr(lam)
    inner[-1] = t_lo
    inner[0] = t_hi  # exact ends (one point: the noisy end)
    return torch.cat([torch.tensor(head, dtype=torch.float64), inner, torch.tensor(tail, dtype=torch.float64)])


def _ddpm_indices(N: int, steps: int, spacing: str) -> torch.Tensor:
    if steps > N:
        raise ValueError(f"steps must be at most the {N} training steps for spacing={spacing!r}, got {steps}")
    if spacing == "linspace":
        idx = np.linspace(0, N - 1, steps).round()[::-1]
    elif spacing == "leading":
        idx = (np.arange(0, steps) * (N // steps)).round()[::-1]
    else:  # trailing
        idx = np.round(np.arange(N, 0, -N / steps)) - 1
    idx = torch.tensor(idx.copy(), dtype=torch.float64)
    return torch.cat([idx, torch.tensor([-1.0], dtype=torch.float64)])  # then the data


def ddpm_betas(
    n: int, kind: str = "linear", *, beta_start: float = 1e-4, beta_end: float = 0.02,
    s: float = 0.008, max_beta: float = 0.999,
) -> torch.Tensor:
    """Training schedule ``beta_1..beta_N`` as a float64 tensor of shape ``(n,)``.

    Parameters
    ----------
    n : number of diffusion steps ``N``
    kind : ``"linear"`` (Ho et al., 2020) or ``"cosine"`` (Nichol & Dhariwal, 2021)

    Examples
    --------
    >>> b = ddpm_betas(1000, "linear"); float(b[0]), float(b[-1])
    (0.0001, 0.02)
    >>> bool((ddpm_betas(1000, "cosine") <= 0.999).all())
    True
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if kind == "linear":
        if not 0 < beta_start <= beta_end < 1:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
        return torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
    if kind == "cosine":
        def abar(i):  # i in [0, n]
            return math.cos((i / n + s) / (1 + s) * math.pi / 2) ** 2

        betas = [min(1 - abar(i + 1) / abar(i), max_beta) for i in range(n)]
        return torch.tensor(betas, dtype=torch.float64)
    raise ValueError(f"kind must be 'linear' or 'cosine', got {kind!r}")


def alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    """``abar_n = prod_{i<=n} (1 - beta_i)``, same shape as ``betas``."""
    betas = torch.as_tensor(betas, dtype=torch.float64)
    if betas.ndim != 1 or (betas <= 0).any() or (betas >= 1).any():
        raise ValueError("betas must be a 1-D tensor with entries in (0, 1)")
    return torch.cumprod(1 - betas, dim=0)


def check_alphas_cumprod(alphas_cumprod) -> torch.Tensor:
    """``alphas_cumprod`` as a float64 tensor, checked: 1-D, strictly decreasing, in ``(0, 1)``."""
    abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64).detach().cpu()
    if abar.ndim != 1 or len(abar) < 1 or not torch.isfinite(abar).all() or (abar <= 0).any() \
            or (abar >= 1).any() or (abar[1:] >= abar[:-1]).any():
        raise ValueError(
            "alphas_cumprod must be a 1-D strictly decreasing tensor with entries in (0, 1), got "
            f"shape {tuple(abar.shape)}" + (f" with values in [{abar.min().item():.3g}, {abar.max().item():.3g}]"
                                            if abar.numel() else "")
        )
    return abar
