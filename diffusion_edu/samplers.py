r"""Samplers: plain functions that turn noise into data, one signature for all of them,

    ``sampler(denoiser, x, ts, *, generator=None, callback=None, ...) -> samples``,

with ``denoiser`` a :class:`~diffusion_edu.denoiser.Denoiser` (any schedule, any prediction
type), ``x`` the starting noise ``(B, *dims)`` at time ``ts[0]``, and ``ts`` a decreasing 1-D
tensor of schedule times from the noise end to the data end
(:func:`~diffusion_edu.schedules.time_grid`); one step is taken between each pair of neighbours,
and ``callback(i, t, x)`` (optional) sees the state after step ``i``, at time ``t = ts[i + 1]``.
Where ``sigma(ts[-1]) = 0`` (the data itself), the last step of the ODE samplers and of DDIM,
DDPM, Heun and DPM-Solver returns the denoised estimate ``x0_hat`` (the limit of each of their
steps as ``sigma_next -> 0``; Euler-Maruyama takes its usual mean step); no sampler ever evaluates
the model at the last time of its grid.

In the notation ``x_t = alpha_t x0 + sigma_t eps`` of :mod:`diffusion_edu.schedules`, with
``x0_hat, eps_hat`` the denoiser's estimates at ``(x, t)``, the step to ``s < t`` is

- :func:`euler_maruyama` -- the reverse-time SDE (Anderson, 1982) ``dx = [f x - g^2 score] dt + g dW``,
  ``x <- x - (f x - g^2 score) h + g sqrt(h) z``, ``h = t - s`` (no noise in the last step).
- :func:`probability_flow` -- the probability-flow ODE ``dx/dt = alpha' x0_hat + sigma' eps_hat``
  (``= f x - g^2 score / 2``; Song et al., 2021) in the time ``t``, by Euler, Heun, RK4 or the
  adaptive Runge-Kutta-Fehlberg 4(5) of :func:`scipy.integrate.solve_ivp`; :func:`solve_ode` is the
  one integrator that this, the likelihoods and flow matching share.
- :func:`predictor_corrector` -- Langevin corrector + Euler-Maruyama predictor (Song et al., 2021,
  Algorithms 4-5).
- :func:`ddim` -- Song, Meng & Ermon (2021, Eq. 12):
  ``x <- alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z`` with ``c = eta`` times the
  posterior standard deviation of ``q(x_s | x_t, x0)``. ``eta = 0`` is the Euler method for the ODE
  in the variables ``y = x / alpha`` and ``sigma~ = sigma / alpha``, where
  ``dy / d sigma~ = eps_hat`` (Song et al., 2021a; Karras et al., 2022).
- :func:`ddpm_ancestral` -- Ho et al. (2020), Algorithm 2, on any grid: ``eta = 1`` of DDIM
  (posterior variance ``beta_tilde``) or the larger variance ``beta``.
- :func:`heun` -- Karras et al. (2022), Algorithms 1-2: Heun's method in ``(y, sigma~)``, with
  optional churn (noise added to raise ``sigma~`` before each step).
- :func:`dpm_solver` -- multistep DPM-Solver++ of order 1-3 in data prediction (Lu et al.,
  2022a, b), exponential integrators in ``lambda = log(alpha / sigma)``; order 1 is DDIM.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from .denoiser import Denoiser
from .utils import check_finite as _check_finite

__all__ = [
    "euler_maruyama", "probability_flow", "predictor_corrector", "ddim", "ddpm_ancestral", "heun",
    "dpm_solver", "solve_ode", "ODE_METHODS",
]

ODE_METHODS = ("euler", "heun", "rk4", "rk45")


# -- stochastic: the reverse SDE ------------------------------------------------------------
@torch.no_grad()
def euler_maruyama(
    denoiser: Denoiser, x: torch.Tensor, ts: torch.Tensor, *, generator: torch.Generator | None = None,
    callback=None,
) -> torch.Tensor:
    """Reverse-time SDE by Euler-Maruyama:

    ``x <- x - [f(t) x - g(t)^2 score(x, t)] h + g(t) sqrt(h) z``, ``h = t_i - t_{i+1} > 0``,
    ``(f, g^2)`` the SDE coefficients of the schedule. The last step adds no noise (it returns
    the step's mean, as Song et al.'s code does).

    Examples
    --------
    >>> from diffusion_edu import VPSDE, GaussianMixture, time_grid
    >>> sde, gm = VPSDE(), GaussianMixture([[0.0, 0.0]], stds=0.5)
    >>> g = torch.Generator().manual_seed(0)
    >>> x = euler_maruyama(gm.denoiser(sde), sde.prior_sample((4000, 2), g), time_grid(sde, 200), generator=g)
    >>> abs(x.std().item() - 0.5) < 0.03
    True
    """
    ts = _check_sde(denoiser, x, ts)
    for i in range(len(ts) - 1):
        x = _em_step(denoiser, x, ts[i], ts[i + 1], generator, noise=i < len(ts) - 2)
        _after_step(x, i, ts[i + 1], callback)
    return x


@torch.no_grad()
def predictor_corrector(
    denoiser: Denoiser, x: torch.Tensor, ts: torch.Tensor, *, generator: torch.Generator | None = None,
    snr: float = 0.16, corrector_steps: int = 1, callback=None,
) -> torch.Tensor:
    r"""Predictor-corrector sampling (Song et al., 2021, Algorithm 1 with the step rules of
    Algorithms 4 and 5).

    At each time ``t_i``: ``corrector_steps`` Langevin steps targeting ``p_{t_i}``,
    ``x <- x + e score + sqrt(2 e) z`` with ``e = 2 a_i (snr ||z|| / ||score||)^2`` (norms averaged
    over the batch) and ``a_i = alpha(t_i)^2 / alpha(t_{i+1})^2``, the ``alpha_i = 1 - beta_i`` of
    the VP corrector (Algorithm 5; ``a_i = 1`` for VE, Algorithm 4); then one Euler-Maruyama
    predictor step to ``t_{i+1}``.
    """
    if not (isinstance(snr, (int, float)) and snr > 0 and math.isfinite(snr)):
        raise ValueError(f"snr must be a finite float > 0, got {snr!r}")
    if not isinstance(corrector_steps, int) or corrector_steps < 0:
        raise ValueError(f"corrector_steps must be a non-negative int, got {corrector_steps!r}")
    ts = _check_sde(denoiser, x, ts)
    sched = denoiser.schedule
    for i in range(len(ts) - 1):
        a_ratio = (sched.marginal(ts[i])[0] / sched.marginal(ts[i + 1])[0]).item() ** 2  # alpha_i
        for _ in range(corrector_steps):  # Langevin corrector at time t_i
            s = denoiser.score(x, ts[i])
            z = _randn(x, generator)
            s_norm = s.flatten(1).norm(dim=1).mean()
            z_norm = z.flatten(1).norm(dim=1).mean()
            e = 2 * a_ratio * (snr * z_norm / s_norm.clamp_min(1e-12)) ** 2
            x = x + e * s + torch.sqrt(2 * e) * z
        x = _em_step(denoiser, x, ts[i], ts[i + 1], generator, noise=i < len(ts) - 2)  # predictor
        _after_step(x, i, ts[i + 1], callback)
    return x


# -- deterministic: the probability-flow ODE --------------------------------------------------
@torch.no_grad()
def probability_flow(
    denoiser: Denoiser, x: torch.Tensor, ts: torch.Tensor, *, method: str = "heun",
    rtol: float = 1e-5, atol: float = 1e-5, max_nfe: int = 10_000, callback=None,
    info: dict | None = None,
) -> torch.Tensor:
    r"""The probability-flow ODE ``dx/dt = alpha'(t) x0_hat + sigma'(t) eps_hat`` from ``ts[0]`` down
    to ``ts[-1]``, integrated in the schedule's time ``t`` by :func:`solve_ode`.

    Parameters
    ----------
    method : ``"euler"`` (1st order, one call a step), ``"heun"`` (Euler predictor, then the
        trapezoid, two calls a step), ``"rk4"`` (classical Runge-Kutta, four) or ``"rk45"``
        (adaptive, :func:`scipy.integrate.solve_ivp` as in Song et al.'s code; ``ts`` then only
        sets the end points and the times the callback sees; towards noise-free data it integrates
        down to the least noisy time of ``schedule.snr_time_range()`` and then denoises)
    rtol, atol : tolerances of ``"rk45"``
    max_nfe : ``"rk45"`` raises ``RuntimeError`` instead of returning a half-integrated sample when
        it would need more model calls than this
    info : a dict that receives ``info["nfe"]``, the number of model calls made

    Examples
    --------
    >>> from diffusion_edu import VPSDE, GaussianMixture, time_grid
    >>> sde, gm = VPSDE(), GaussianMixture([[0.0, 0.0]], stds=0.5)
    >>> x = sde.prior_sample((2000, 2), torch.Generator().manual_seed(0)).double()
    >>> info = {}
    >>> y = probability_flow(gm.denoiser(sde), x, time_grid(sde, 2), method="rk45", rtol=1e-6, atol=1e-6, info=info)
    >>> abs(y.std().item() - 0.5) < 0.02, info["nfe"] < 200
    (True, True)
    """
    ts = _check(denoiser, x, ts)
    to_data = denoiser.schedule.marginal(ts[-1])[1].item() == 0  # the last step returns x0_hat
    info = {} if info is None else info
    grid = ts[:-1] if to_data else ts
    if method == "rk45" and to_data:  # adaptive: integrate down to the least noisy time of the schedule
        t_lo = min(denoiser.schedule.snr_time_range()[1], grid[-1].item())
        grid = torch.cat([grid[grid > t_lo], torch.tensor([t_lo], dtype=torch.float64)])
    if len(grid) > 1:
        x = solve_ode(denoiser.velocity, x, grid, method=method, rtol=rtol, atol=atol, max_nfe=max_nfe,
                      callback=callback, info=info)
    else:
        info["nfe"] = 0
    if to_data:  # last step to sigma = 0: the denoised estimate
        x = denoiser.x0(x, grid[-1])
        info["nfe"] += 1
        _after_step(x, len(ts) - 2, ts[-1], callback)
    return x


def solve_ode(
    field: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, ts: torch.Tensor, *,
    method: str = "heun", rtol: float = 1e-5, atol: float = 1e-5, max_nfe: int = 10_000,
    callback=None, info: dict | None = None, check_finite: bool = True,
) -> torch.Tensor:
    r"""Integrate ``dx/dt = field(x, t)`` along the monotone grid ``ts`` (either direction): the one
    ODE integrator of the library (sampling, likelihoods, flow matching).

    ``"euler"``: ``x <- x + h d``, ``d = field(x, t)``. ``"heun"``: the Euler point
    ``x_e = x + h d``, then the trapezoid ``x <- x + h (d + field(x_e, t + h)) / 2``.
    ``"rk4"``: classical Runge-Kutta. ``"rk45"``: :func:`scipy.integrate.solve_ivp` (``RK45``,
    one shared step size for the whole batch, as in Song et al.'s code), reporting the state at
    every time of ``ts`` to the callback; it raises ``RuntimeError`` when it would need more than
    ``max_nfe`` evaluations of ``field``. ``field`` receives ``t`` as a 0-d float64 tensor.
    ``info["nfe"]`` receives the number of evaluations. ``check_finite=False`` lets a state
    that leaves the floating-point range continue (per-example integrals, e.g. likelihoods).

    Examples
    --------
    >>> x = solve_ode(lambda x, t: -x, torch.ones(1, 1), torch.linspace(0, 1, 101), method="heun")
    >>> abs(x.item() - math.exp(-1)) < 1e-5
    True
    """
    if method not in ODE_METHODS:
        raise ValueError(f"method must be one of {ODE_METHODS}, got {method!r}")
    ts = torch.as_tensor(ts, dtype=torch.float64).detach().cpu()
    d = ts.diff()
    if ts.ndim != 1 or len(ts) < 2 or not ((d > 0).all() or (d < 0).all()):
        raise ValueError(f"ts must be a strictly monotone 1-D tensor of at least 2 times, got {ts!r:.80}")
    info = {} if info is None else info
    after = _after_step if check_finite else _call_back
    if method == "rk45":
        return _rk45(field, x, ts, rtol, atol, max_nfe, callback, info, after)
    nfe = 0
    for i in range(len(ts) - 1):
        t, t_next = ts[i], ts[i + 1]
        h = (t_next - t).item()
        d1 = field(x, t)
        if method == "euler":
            x, nfe = x + h * d1, nfe + 1  # Euler step
        elif method == "heun":
            d2 = field(x + h * d1, t_next)
            x, nfe = x + 0.5 * h * (d1 + d2), nfe + 2  # 2nd-order correction (trapezoid)
        else:  # classical Runge-Kutta
            mid = t + 0.5 * h
            d2 = field(x + 0.5 * h * d1, mid)
            d3 = field(x + 0.5 * h * d2, mid)
            d4 = field(x + h * d3, t_next)
            x, nfe = x + h / 6 * (d1 + 2 * d2 + 2 * d3 + d4), nfe + 4
        after(x, i, t_next, callback)
    info["nfe"] = nfe
    return x


# -- DDIM, DDPM, EDM, DPM-Solver ---------------------------------------------------------------
@torch.no_grad()
def ddim(
    denoiser: Denoiser, x: torch.Tensor, ts: torch.Tensor, *, eta: float = 0.0,
    generator: torch.Generator | None = None, callback=None,
) -> torch.Tensor:
    r"""DDIM (Song, Meng & Ermon, 2021, Eq. 12) on any grid: from ``t`` to ``s``,

    ``x <- alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z``, with
    ``c = eta (sigma_s / sigma_t) sqrt(sigma_t^2 - (alpha_t / alpha_s)^2 sigma_s^2)``, ``eta`` times
    the standard deviation of the posterior ``q(x_s | x_t, x0)`` (for VP,
    ``sqrt((1 - abar_s) / (1 - abar_t)) sqrt(1 - abar_t / abar_s)``). ``eta = 0`` is deterministic;
    ``eta = 1`` is DDPM's ancestral step. The last step adds no noise.

    Examples
    --------
    >>> from diffusion_edu import GaussianMixture
    >>> from diffusion_edu.schedules import DDPMSchedule, alphas_cumprod, ddpm_betas, time_grid
    >>> sched = DDPMSchedule(alphas_cumprod(ddpm_betas(1000)))
    >>> gm = GaussianMixture([[0.0, 0.0]], stds=0.5)
    >>> x = ddim(gm.denoiser(sched), torch.randn(4000, 2, generator=torch.Generator().manual_seed(0)),
    ...          time_grid(sched, 200, "leading"))
    >>> abs(x.std().item() - 0.5) < 0.02   # 50 steps give 0.474: the few-step bias of chapter 10
    True
    """
    if not (isinstance(eta, (int, float)) and eta >= 0 and math.isfinite(eta)):
        raise ValueError(f"eta must be a finite float >= 0, got {eta!r}")
    return _ancestral(denoiser, x, ts, eta, None, generator, callback)


@torch.no_grad()
def ddpm_ancestral(
    denoiser: Denoiser, x: torch.Tensor, ts: torch.Tensor, *, variance: str = "beta_tilde",
    generator: torch.Generator | None = None, callback=None,
) -> torch.Tensor:
    r"""Ancestral sampling, Algorithm 2 of Ho et al. (2020), on any grid (the full chain
    ``time_grid(DDPMSchedule(abar), N, "leading")``, or a respaced one): from ``t`` to ``s``,

    ``x <- mu_tilde(x, x0_hat) + sigma z`` (no noise in the last step), with the posterior mean
    ``mu_tilde = alpha_s x0_hat + sqrt(sigma_s^2 - beta_tilde) eps_hat`` (which for VP is Ho et
    al.'s ``(x - beta / sqrt(1 - abar_t) eps_hat) / sqrt(1 - beta)``) and ``sigma^2`` the posterior
    variance ``beta_tilde = (sigma_s / sigma_t)^2 (sigma_t^2 - (alpha_t / alpha_s)^2 sigma_s^2)``
    (``variance="beta_tilde"``, the default; DDIM with ``eta = 1``) or the forward step's
    ``beta = sigma_t^2 - (alpha_t / alpha_s)^2 sigma_s^2`` (``"beta"``; ``1 - abar_t / abar_s``
    for VP).
    """
    if variance not in ("beta", "beta_tilde"):
        raise ValueError(f"variance must be 'beta' or 'beta_tilde', got {variance!r}")
    return _ancestral(denoiser, x, ts, 1.0, variance, generator, callback)


@torch.no_grad()
def heun(
    denoiser: Denoiser, x: torch.Tensor, ts: torch.Tensor, *, s_churn: float = 0.0, s_tmin: float = 0.0,
    s_tmax: float = math.inf, s_noise: float = 1.0, generator: torch.Generator | None = None,
    callback=None,
) -> torch.Tensor:
    r"""Karras et al. (2022), Algorithm 2 (Algorithm 1 when ``s_churn = 0``): Heun's method for the
    ODE ``dy / d sigma~ = eps_hat`` in the variables ``y = x / alpha``, ``sigma~ = sigma / alpha``.

    From ``sigma~_i`` to ``sigma~_{i+1}``:

    - churn: for ``s_tmin <= sigma~_i <= s_tmax``, ``gamma = min(s_churn / N, sqrt(2) - 1)``; raise the
      noise level to ``sigma^ = (1 + gamma) sigma~_i`` by adding
      ``sqrt(sigma^2 - sigma~_i^2) s_noise z`` to ``y``;
    - Euler step: ``y' = y + (sigma~_{i+1} - sigma^) eps_hat(y; sigma^)``;
    - 2nd-order correction (unless ``sigma~_{i+1} = 0``):
      ``y_{i+1} = y + (sigma~_{i+1} - sigma^) (eps_hat(y; sigma^) + eps_hat(y'; sigma~_{i+1})) / 2``.

    ``N - 1`` corrections for ``N`` steps to the data: ``2 N - 1`` model calls. (The first step
    from ``alpha = 0``, where ``sigma~`` is infinite, is taken without correction.)
    """
    for name, v in (("s_churn", s_churn), ("s_tmin", s_tmin), ("s_noise", s_noise)):
        if not (isinstance(v, (int, float)) and v >= 0 and math.isfinite(v)):
            raise ValueError(f"{name} must be a finite float >= 0, got {v!r}")
    ts = _check(denoiser, x, ts)
    sched, N = denoiser.schedule, len(ts) - 1
    for i in range(N):
        t, t_next = ts[i], ts[i + 1]
        a, s = (c.item() for c in sched.marginal(t))
        sig = s / a if a > 0 else math.inf
        gamma = min(s_churn / N, math.sqrt(2) - 1) if s_tmin <= sig <= s_tmax else 0.0
        if gamma > 0 and math.isfinite(sig):  # churn: raise the noise level to sigma^
            t = sched.time_at_log_snr(-2 * math.log(sig * (1 + gamma))).clamp(max=sched.T)
            a_hat, s_hat = (c.item() for c in sched.marginal(t))
            z = _randn(x, generator)
            x = a_hat * (x / a + math.sqrt(max((s_hat / a_hat) ** 2 - sig**2, 0.0)) * s_noise * z)
            a, s, sig = a_hat, s_hat, s_hat / a_hat
        a_n, s_n = (c.item() for c in sched.marginal(t_next))
        x0, eps = denoiser.x0_eps(x, t)
        x_next = a_n * x0 + s_n * eps  # Euler step: alpha_n (y + (sigma~_n - sigma~) eps_hat)
        if s_n > 0 and math.isfinite(sig):  # 2nd-order correction
            _, eps_next = denoiser.x0_eps(x_next, t_next)
            x_next = x_next + a_n * (s_n / a_n - sig) * 0.5 * (eps_next - eps)
        x = x_next
        _after_step(x, i, t_next, callback)
    return x


@torch.no_grad()
def dpm_solver(
    denoiser: Denoiser, x: torch.Tensor, ts: torch.Tensor, *, order: int = 2, callback=None,
) -> torch.Tensor:
    r"""Multistep DPM-Solver++ (Lu et al., 2022b, Algorithm 2 and its third-order form) in data
    prediction: exponential integrators in ``lambda = log(alpha / sigma)``, reusing the denoised
    estimates ``D_k = x0_hat`` of the previous steps. With ``h = lambda_s - lambda_t`` and
    ``r_k = h_k / h`` (``h_k`` the previous steps' lengths):

    - order 1 (= DDIM): ``x_s = (sigma_s / sigma_t) x - alpha_s (e^{-h} - 1) D_0``;
    - order 2: ``... - alpha_s (e^{-h} - 1) D_1 / 2`` with ``D_1 = (D_0 - D_{-1}) / r_0``;
    - order 3: ``... + alpha_s ((e^{-h} - 1) / h + 1) D_1 - alpha_s ((e^{-h} - 1 + h) / h^2 - 1/2) D_2``
      with the divided differences of the three latest estimates.

    The first steps use the orders that the history allows; as in Lu et al.'s code (and diffusers'
    ``DPMSolverMultistepScheduler``), the last step is first order when it ends at the data or
    the grid has fewer than 15 steps, and the step before at most second order on such short
    grids. ``N`` steps cost ``N`` model calls.
    """
    if order not in (1, 2, 3) or isinstance(order, bool):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    ts = _check(denoiser, x, ts)
    sched, N = denoiser.schedule, len(ts) - 1
    history: list[tuple[torch.Tensor, float]] = []  # (x0_hat, lambda) of the last steps
    for i in range(N):
        a, s = (c.item() for c in sched.marginal(ts[i]))
        a_n, s_n = (c.item() for c in sched.marginal(ts[i + 1]))
        lam, lam_n = _half_log_snr(a, s), _half_log_snr(a_n, s_n)
        x0 = denoiser.x0(x, ts[i])
        history = (history + [(x0, lam)])[-3:]
        k = min(order, len(history))  # what the history allows
        if i == N - 1 and (s_n == 0 or N < 15):
            k = 1  # lower-order final step
        elif i == N - 2 and N < 15:
            k = min(k, 2)
        if s_n == 0:
            x = a_n * x0  # the limit h -> infinity: the data estimate itself
        else:
            h = lam_n - lam
            em1 = math.expm1(-h)  # e^{-h} - 1
            x = (s_n / s) * x - a_n * em1 * x0  # first order (DDIM); s > 0 at every start of a step
            if k >= 2:
                (m1, l1), (m0, l0) = history[-2], history[-1]
                r0 = (l0 - l1) / h
                D1 = (m0 - m1) / r0
                if k == 2:
                    x = x - 0.5 * a_n * em1 * D1  # DPM-Solver++(2M)
                else:
                    m2, l2 = history[-3]
                    r1 = (l1 - l2) / h
                    D1_0, D1_1 = D1, (m1 - m2) / r1
                    D1 = D1_0 + r0 / (r0 + r1) * (D1_0 - D1_1)
                    D2 = (D1_0 - D1_1) / (r0 + r1)
                    x = x + a_n * (em1 / h + 1) * D1 - a_n * ((em1 + h) / h**2 - 0.5) * D2  # (3M)
        _after_step(x, i, ts[i + 1], callback)
    return x


# -- helpers -------------------------------------------------------------------------------
def _ancestral(denoiser, x, ts, eta, variance, generator, callback):
    """DDIM's step with ``c = eta * posterior std``; for ``variance="beta"`` the noise has the
    forward step's variance instead (the mean stays the posterior mean)."""
    ts = _check(denoiser, x, ts)
    sched = denoiser.schedule
    for i in range(len(ts) - 1):
        a, s = (c.item() for c in sched.marginal(ts[i]))
        a_n, s_n = (c.item() for c in sched.marginal(ts[i + 1]))
        x0, eps = denoiser.x0_eps(x, ts[i])
        beta = max(s**2 - (a / a_n) ** 2 * s_n**2, 0.0)  # variance of q(x_t | x_s)
        post = (s_n / s) ** 2 * beta  # variance of q(x_s | x_t, x0)
        c = eta * math.sqrt(post)
        x = a_n * x0 + math.sqrt(max(s_n**2 - c**2, 0.0)) * eps  # mean: alpha_s x0 + direction to x_t
        if i < len(ts) - 2:  # no noise in the last step
            noise_std = c if variance in (None, "beta_tilde") else math.sqrt(beta)
            if noise_std > 0:
                x = x + noise_std * _randn(x, generator)
        _after_step(x, i, ts[i + 1], callback)
    return x


def _em_step(denoiser, x, t, t_next, generator, noise=True):
    """One reverse Euler-Maruyama step from ``t`` down to ``t_next < t``."""
    h = (t - t_next).item()
    f, g2 = (c.item() for c in denoiser.schedule.sde_coefficients(t))
    mean = x - (f * x - g2 * denoiser.score(x, t)) * h  # Euler step backwards in time
    if not noise:
        return mean
    return mean + math.sqrt(g2 * h) * _randn(x, generator)  # Brownian increment


def _rk45(field, x, ts, rtol, atol, max_nfe, callback, info, after):
    from scipy.integrate import solve_ivp

    shape, dtype, device = x.shape, x.dtype, x.device
    calls = [0]

    class _Budget(Exception):
        pass

    def rhs(t, y):
        if calls[0] >= max_nfe:
            raise _Budget
        calls[0] += 1
        state = torch.from_numpy(y).reshape(shape).to(device=device, dtype=dtype)
        return field(state, torch.tensor(t, dtype=torch.float64)).double().cpu().numpy().ravel()

    y0 = x.detach().double().cpu().numpy().ravel()
    try:
        sol = solve_ivp(rhs, (ts[0].item(), ts[-1].item()), y0, method="RK45", t_eval=ts.numpy(),
                        rtol=rtol, atol=atol)
    except _Budget:
        raise RuntimeError(f"rk45 needed more than max_nfe={max_nfe} model calls from t={ts[0].item():.4g} "
                           f"to t={ts[-1].item():.4g} (rtol={rtol}, atol={atol}); raise max_nfe or the "
                           "tolerances") from None
    if sol.status != 0:
        raise RuntimeError(f"rk45 failed: {sol.message}")
    info["nfe"] = calls[0]
    states = torch.from_numpy(sol.y.T.copy()).reshape(len(ts), *shape).to(device=device, dtype=dtype)
    for i in range(1, len(ts)):
        after(states[i], i - 1, ts[i], callback)
    return states[-1]


def _half_log_snr(alpha: float, sigma: float) -> float:
    """``log(alpha / sigma)``, +-inf at the ends."""
    if sigma == 0:
        return math.inf
    if alpha == 0:
        return -math.inf
    return math.log(alpha) - math.log(sigma)


def _randn(x, generator):
    return torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)


def _check(denoiser, x, ts) -> torch.Tensor:
    """Validate the sampler's inputs; return ``ts`` as a float64 CPU tensor."""
    if not isinstance(denoiser, Denoiser):
        raise ValueError(f"denoiser must be a Denoiser (wrap a network with Denoiser(net, schedule, "
                         f"prediction)), got {type(denoiser).__name__}")
    if not torch.is_tensor(x) or x.ndim < 1:
        raise ValueError(f"x must be a tensor of shape (B, *dims), got {type(x).__name__}")
    _check_finite(x, "x")
    if not torch.is_tensor(ts) and not isinstance(ts, (list, tuple, np.ndarray)):
        raise ValueError(f"ts must be a decreasing 1-D tensor of times (see time_grid), got {type(ts).__name__}")
    ts = torch.as_tensor(ts, dtype=torch.float64).detach().cpu()
    if ts.ndim != 1 or len(ts) < 2:
        raise ValueError(f"ts must be a 1-D tensor of at least 2 times, got shape {tuple(ts.shape)}")
    if not torch.isfinite(ts).all() or (ts.diff() >= 0).any():
        raise ValueError(f"ts must decrease strictly (noise end first), got {ts.tolist()[:8]}...")
    denoiser.schedule._time(ts, name="ts")  # inside the schedule's time range
    if denoiser.prediction in ("eps", "score") and denoiser.schedule.marginal(ts[0])[0].item() == 0:
        raise ValueError(f"ts[0]={ts[0].item():.6g}: alpha = 0 there (pure noise), where a {denoiser.prediction!r} "
                         "prediction says nothing about x0; start the grid below it (e.g. ts[0] = 0.999) or "
                         "train a 'velocity', 'v' or 'x0' network")
    return ts


def _check_sde(denoiser, x, ts) -> torch.Tensor:
    """:func:`_check`, and the SDE's coefficients must be finite at every time a step starts from."""
    ts = _check(denoiser, x, ts)
    f, g2 = denoiser.schedule.sde_coefficients(ts[:-1])
    if not (torch.isfinite(f).all() and torch.isfinite(g2).all()):
        bad = ts[:-1][~(torch.isfinite(f) & torch.isfinite(g2))][0].item()
        raise ValueError(f"ts: the reverse SDE of {type(denoiser.schedule).__name__} is singular at t={bad:.6g} "
                         "(alpha = 0 there, so f = alpha'/alpha is infinite); start the grid below it, "
                         "e.g. ts[0] = 0.999, or use an ODE sampler")
    return ts


def _after_step(x, i, t, callback):
    if not torch.isfinite(x).all():
        raise FloatingPointError(f"sampler produced NaN/inf at step {i} (t={float(t):.4g})")
    _call_back(x, i, t, callback)


def _call_back(x, i, t, callback):
    if callback is not None:
        callback(i, float(t), x)
