r"""Samplers: plain functions that turn noise into data.

Continuous time (Song et al., 2021). The forward SDE ``dx = f(x, t) dt + g(t) dW`` has the
reverse-time SDE (Anderson, 1982)

.. math::  dx = \big[f(x, t) - g(t)^2 \nabla_x \log p_t(x)\big]\, dt + g(t)\, d\bar W,

run from ``t = T`` down to ``t = 0``, and the probability-flow ODE with the same marginals

.. math::  \frac{dx}{dt} = f(x, t) - \tfrac12 g(t)^2 \nabla_x \log p_t(x).

- :func:`euler_maruyama` -- the reverse SDE with Euler-Maruyama steps.
- :func:`probability_flow` -- the ODE with Euler or Heun (2nd order) steps.
- :func:`predictor_corrector` -- Euler-Maruyama predictor + Langevin corrector
  (Song et al., 2021, Algorithms 1-2 with the signal-to-noise step rule).

Discrete time (a DDPM training schedule ``abar_0 > ... > abar_{N-1}``):

- :func:`ddpm_ancestral` -- Algorithm 2 of Ho et al. (2020).
- :func:`ddim` -- Song, Meng & Ermon (2021), Eq. (12); ``eta = 0`` is deterministic.

Calling conventions: ``score_fn(x, t)`` with ``t`` a ``(B,)`` float tensor of times;
``eps_fn(x, n)`` with ``n`` a ``(B,)`` long tensor of indices into ``alphas_cumprod``.
``x`` is the starting noise ``(B, *dims)``. ``steps`` is a number of steps (uniform grid from
``T`` to ``t_eps``) or a decreasing 1-D tensor of ``steps + 1`` times. Each sampler returns the
final samples; ``callback(i, t, x)`` (optional) sees the state after step ``i`` at time ``t``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .schedules import uniform_times
from .sde import SDE
from .utils import append_dims, check_finite

__all__ = ["euler_maruyama", "probability_flow", "predictor_corrector", "ddpm_ancestral", "ddim", "clip_x0"]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def euler_maruyama(
    score_fn: ScoreFn, sde: SDE, x: torch.Tensor, steps: int | torch.Tensor, generator=None, *,
    t_eps: float | None = None, callback=None,
) -> torch.Tensor:
    """Reverse-time SDE by Euler-Maruyama, from ``T`` down to ``t_eps``:

    ``x <- x - [f(x, t) - g^2 score(x, t)] h + g sqrt(h) z``, ``h = t_i - t_{i+1} > 0``.

    The last step adds no noise (it returns the step's mean, as Song et al.'s code does).

    Examples
    --------
    >>> from diffusion_edu import VPSDE, GaussianMixture
    >>> sde, gm = VPSDE(), GaussianMixture([[0.0, 0.0]], stds=0.5)
    >>> g = torch.Generator().manual_seed(0)
    >>> x = euler_maruyama(gm.score_fn(sde), sde, sde.prior_sample((4000, 2), g), 200, g)
    >>> abs(x.std().item() - 0.5) < 0.03
    True
    """
    times = _grid(sde, steps, t_eps, x)
    for i in range(len(times) - 1):
        last = i == len(times) - 2
        x = _em_step(score_fn, sde, x, times[i], times[i + 1], generator, noise=not last)
        _after_step(x, i, times[i + 1], callback)
    return x


def probability_flow(
    score_fn: ScoreFn, sde: SDE, x: torch.Tensor, steps: int | torch.Tensor, method: str = "heun",
    *, t_eps: float | None = None, callback=None,
) -> torch.Tensor:
    """Probability-flow ODE ``dx/dt = f - g^2 score / 2`` from ``T`` down to ``t_eps``,
    with ``method="euler"`` (1st order) or ``"heun"`` (2nd order, two score calls a step)."""
    if method not in ("euler", "heun"):
        raise ValueError(f"method must be 'euler' or 'heun', got {method!r}")
    times = _grid(sde, steps, t_eps, x)
    B = x.shape[0]
    for i in range(len(times) - 1):
        t, t_next = (s.expand(B).to(x) for s in (times[i], times[i + 1]))
        dt = (times[i + 1] - times[i]).item()  # negative
        d = sde.ode_drift(x, t, score_fn(x, t))
        x_euler = x + d * dt  # Euler step
        if method == "heun":
            d_next = sde.ode_drift(x_euler, t_next, score_fn(x_euler, t_next))
            x = x + 0.5 * (d + d_next) * dt  # 2nd-order correction (trapezoid)
        else:
            x = x_euler
        _after_step(x, i, times[i + 1], callback)
    return x


def predictor_corrector(
    score_fn: ScoreFn, sde: SDE, x: torch.Tensor, steps: int | torch.Tensor, generator=None, *,
    snr: float = 0.16, corrector_steps: int = 1, t_eps: float | None = None, callback=None,
) -> torch.Tensor:
    """Predictor-corrector sampling (Song et al., 2021, Algorithm 1 with Algorithm 4's step rule).

    At each time: ``corrector_steps`` Langevin steps targeting ``p_t``,
    ``x <- x + e score + sqrt(2 e) z`` with ``e = 2 (snr ||z|| / ||score||)^2`` (norms averaged
    over the batch), then one Euler-Maruyama predictor step to the next time.
    """
    if snr <= 0:
        raise ValueError(f"snr must be > 0, got {snr}")
    times = _grid(sde, steps, t_eps, x)
    for i in range(len(times) - 1):
        tb = times[i].expand(x.shape[0]).to(x)
        for _ in range(corrector_steps):  # Langevin corrector at time t
            s = score_fn(x, tb)
            z = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
            s_norm = s.flatten(1).norm(dim=1).mean()
            z_norm = z.flatten(1).norm(dim=1).mean()
            e = 2 * (snr * z_norm / s_norm.clamp_min(1e-12)) ** 2
            x = x + e * s + torch.sqrt(2 * e) * z
        last = i == len(times) - 2  # Euler-Maruyama predictor from t_i to t_{i+1}
        x = _em_step(score_fn, sde, x, times[i], times[i + 1], generator, noise=not last)
        _after_step(x, i, times[i + 1], callback)
    return x


def ddpm_ancestral(
    eps_fn, alphas_cumprod: torch.Tensor, x: torch.Tensor, generator=None, *,
    variance: str = "beta_tilde", callback=None,
) -> torch.Tensor:
    r"""Ancestral sampling, Algorithm 2 of Ho et al. (2020), over every index ``n = N-1 .. 0``:

    ``x <- (x - beta_n / sqrt(1 - abar_n) eps(x, n)) / sqrt(1 - beta_n) + sigma_n z``
    (no noise at ``n = 0``), with ``beta_n = 1 - abar_n / abar_{n-1}`` (``abar_{-1} = 1``) and
    ``sigma_n^2 = beta_n`` (``variance="beta"``) or the posterior variance
    ``(1 - abar_{n-1}) / (1 - abar_n) beta_n`` (``"beta_tilde"``, the default).
    """
    if variance not in ("beta", "beta_tilde"):
        raise ValueError(f"variance must be 'beta' or 'beta_tilde', got {variance!r}")
    abar = _check_abar(alphas_cumprod)
    check_finite(x, "x")
    B = x.shape[0]
    for n in range(len(abar) - 1, -1, -1):
        a = abar[n].item()
        a_prev = abar[n - 1].item() if n > 0 else 1.0
        beta = 1 - a / a_prev
        eps = eps_fn(x, torch.full((B,), n, dtype=torch.long, device=x.device))
        x = (x - beta / math.sqrt(1 - a) * eps) / math.sqrt(1 - beta)  # posterior mean
        if n > 0:
            var = beta if variance == "beta" else (1 - a_prev) / (1 - a) * beta
            z = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
            x = x + math.sqrt(var) * z
        _after_step(x, len(abar) - 1 - n, n, callback)
    return x


def ddim(
    eps_fn, alphas_cumprod: torch.Tensor, x: torch.Tensor, timesteps, eta: float = 0.0,
    generator=None, *, callback=None,
) -> torch.Tensor:
    r"""DDIM (Song, Meng & Ermon, 2021, Eq. 12) over decreasing integer ``timesteps``.

    From index ``n`` to the next index ``m`` (``abar_m = 1`` after the last, i.e. the data):

    ``x0_hat = (x - sqrt(1 - abar_n) eps) / sqrt(abar_n)``,
    ``x <- sqrt(abar_m) x0_hat + sqrt(1 - abar_m - s^2) eps + s z``, with
    ``s = eta sqrt((1 - abar_m) / (1 - abar_n)) sqrt(1 - abar_n / abar_m)``.
    ``eta = 0`` is the deterministic DDIM; ``eta = 1`` matches DDPM's posterior variance.
    """
    abar = _check_abar(alphas_cumprod)
    check_finite(x, "x")
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    ts = torch.as_tensor(timesteps)
    if ts.ndim != 1 or len(ts) == 0 or ts.dtype.is_floating_point:
        raise ValueError(f"timesteps must be a non-empty 1-D sequence of ints, got {timesteps!r}")
    if (ts[1:] >= ts[:-1]).any() or ts.min() < 0 or ts.max() >= len(abar):
        raise ValueError(
            f"timesteps must decrease strictly within [0, {len(abar) - 1}], got {ts.tolist()}"
        )
    B = x.shape[0]
    for i, n in enumerate(ts.tolist()):
        a = abar[n].item()
        a_prev = abar[ts[i + 1]].item() if i + 1 < len(ts) else 1.0
        eps = eps_fn(x, torch.full((B,), n, dtype=torch.long, device=x.device))
        x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)  # predicted x_0
        s = eta * math.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
        x = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - s**2, 0.0)) * eps  # direction to x_t
        if eta > 0:
            x = x + s * torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        _after_step(x, i, n, callback)
    return x


def clip_x0(eps_fn, alphas_cumprod: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)):
    r"""Wrap ``eps_fn`` so that the clean image it implies lies in the data range.

    ``x0_hat = clip((x - sqrt(1 - abar_n) eps) / sqrt(abar_n), lo, hi)`` and the returned noise
    prediction is the one that implies it, ``(x - sqrt(abar_n) x0_hat) / sqrt(1 - abar_n)``
    (``clip_sample=True`` in the diffusers schedulers; Ho et al.'s code clips the same way).
    Where ``x0_hat`` is already inside the range nothing changes. Why it matters: at the first
    steps ``abar_n`` is tiny (the cosine schedule's last ``beta`` is clipped to 0.999), and
    dividing by ``sqrt(abar_n)`` magnifies the network's error many times over.

    Examples
    --------
    >>> abar = torch.tensor([0.9, 0.5, 0.01])
    >>> eps = clip_x0(lambda x, n: torch.zeros_like(x), abar)  # implies x0_hat = x / sqrt(abar)
    >>> x, n = torch.full((1, 2), 0.5), torch.tensor([2])
    >>> x0 = (x - (1 - abar[2]).sqrt() * eps(x, n)) / abar[2].sqrt()
    >>> x0  # 0.5 / 0.1 = 5, clipped to 1 (up to float32 rounding)
    tensor([[1.0000, 1.0000]])
    """
    lo, hi = (float(v) for v in value_range)
    if not lo < hi:
        raise ValueError(f"value_range must be (lo, hi) with lo < hi, got {value_range!r}")
    abar = _check_abar(alphas_cumprod)

    def eps_clipped(x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        a = append_dims(abar.to(x.device)[n], x.ndim).to(x.dtype)  # abar_n, (B, 1, ...)
        x0 = ((x - (1 - a).sqrt() * eps_fn(x, n)) / a.sqrt()).clamp(lo, hi)  # clipped x0_hat
        return (x - a.sqrt() * x0) / (1 - a).sqrt()  # the noise that implies it

    return eps_clipped


# -- helpers -------------------------------------------------------------------------------
def _em_step(score_fn, sde, x, t, t_next, generator, noise=True):
    """One reverse Euler-Maruyama step from ``t`` down to ``t_next < t``."""
    tb = t.expand(x.shape[0]).to(x)
    h = (t - t_next).item()
    g = append_dims(sde.diffusion(tb), x.ndim).to(x)  # g(t), one value for drift and noise
    mean = x - (sde.drift(x, tb) - g**2 * score_fn(x, tb)) * h  # Euler step backwards in time
    if not noise:
        return mean
    z = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return mean + g * math.sqrt(h) * z  # Brownian increment


def _grid(sde: SDE, steps, t_eps, x) -> torch.Tensor:
    if not torch.is_tensor(x) or x.ndim < 1:
        raise ValueError(f"x must be a tensor of shape (B, *dims), got {type(x).__name__}")
    check_finite(x, "x")
    if torch.is_tensor(steps):
        times = steps.double()
        if times.ndim != 1 or len(times) < 2 or (times[1:] >= times[:-1]).any():
            raise ValueError("steps as a tensor must be a decreasing 1-D grid of at least 2 times")
        sde._time(times)  # inside [0, T]
        return times
    return uniform_times(steps, sde.T, sde.t_eps if t_eps is None else t_eps)


def _check_abar(alphas_cumprod) -> torch.Tensor:
    abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    if abar.ndim != 1 or (abar <= 0).any() or (abar > 1).any() or (abar[1:] > abar[:-1]).any():
        raise ValueError("alphas_cumprod must be a 1-D non-increasing tensor with entries in (0, 1]")
    return abar


def _after_step(x, i, t, callback):
    if not torch.isfinite(x).all():
        raise FloatingPointError(f"sampler produced NaN/inf at step {i} (t={float(t):.4g})")
    if callback is not None:
        callback(i, float(t), x)
