r"""Likelihoods of diffusion models: the probability-flow ODE, the DDPM variational bound, bits/dim.

**Exact log-likelihood through the probability-flow ODE** (Chen et al., 2018; Song et al., 2021).
Along a solution of ``dx/dt = v(x, t) = f(t) x - g(t)^2 s(x, t) / 2`` the log-density of the
marginals obeys the instantaneous change of variables

.. math::  \frac{d}{dt} \log p_t(x(t)) = -\nabla \cdot v(x(t), t),
           \qquad \log p_{t_\epsilon}(x) = \log p_T(x(T)) + \int_{t_\epsilon}^T \nabla \cdot v(x(t), t)\, dt ,

solved forward in time from ``x(t_eps) = x``. The divergence is exact (``D`` autograd passes) or
Hutchinson's unbiased estimate ``E_z[z^T (dv/dx) z]`` with ``E[z z^T] = I`` (one pass).

**The discrete-time variational bound** (Sohl-Dickstein et al., 2015; Ho et al., 2020, Eq. 5):

.. math::  -\log p_\theta(x_0) \le \underbrace{KL(q(x_N|x_0) \| p(x_N))}_{L_N\ \text{(prior)}}
           + \sum_{n=2}^{N} \underbrace{E_q\, KL(q(x_{n-1}|x_n, x_0) \| p_\theta(x_{n-1}|x_n))}_{L_{n-1}}
           \underbrace{- E_q \log p_\theta(x_0 | x_1)}_{L_0\ \text{(decoder)}} ,

with ``p_theta(x_{n-1} | x_n) = N(mu_theta, v_n I)``; each KL is between two Gaussians and
reduces to a weighted noise-prediction error, ``w_n ||eps - eps_theta||^2 + const``, with
``w_n = beta_n^2 / (2 v_n (1 - beta_n) (1 - abar_n))`` (:func:`elbo_weights`).

**Bits per dimension.** ``nll / (D log 2)``; for a density on dequantised continuous data the
offset ``log(1 / bin width)`` per dimension converts it into a bound on the probability of the
discrete data (:func:`bits_per_dim`).

Indexing follows :mod:`diffusion_edu.schedules`: entry ``n`` of ``alphas_cumprod`` is Ho et al.'s
``abar_{n+1}`` and the network is called with 0-based indices; Ho's ``L_{n}`` is the term
that trains the network at index ``n``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .denoiser import Denoiser
from .schedules import DDPMSchedule, Schedule, check_alphas_cumprod, time_grid
from .utils import check_finite

__all__ = [
    "log_likelihood", "divergence", "ddpm_elbo", "ELBOTerms", "elbo_weights", "normal_kl",
    "discretized_gaussian_log_likelihood", "bits_per_dim", "dequantize",
]


# -- the probability-flow ODE ----------------------------------------------------------------
def divergence(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, t: float | torch.Tensor,
    probe: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(v, div v)`` of the field ``v = fn(x, t)`` at ``x`` of shape ``(B, *dims)``.

    ``probe=None``: the exact divergence ``sum_i dv_i/dx_i``, one autograd pass per dimension.
    Otherwise Hutchinson's estimator ``z^T (dv/dx) z`` with ``z = probe`` (shape of ``x``;
    Rademacher or standard normal entries make it unbiased because ``E[z z^T] = I``), one pass.
    Returns ``v`` (detached, shape of ``x``) and the divergence ``(B,)`` in float64.

    Examples
    --------
    >>> A = torch.tensor([[1.0, 2.0], [0.5, -3.0]])
    >>> v, div = divergence(lambda x, t: x @ A.T, torch.randn(4, 2), torch.zeros(4))
    >>> div.tolist()   # the trace of A at every point
    [-2.0, -2.0, -2.0, -2.0]
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        v = fn(x, t)
        if v.shape != x.shape:
            raise ValueError(f"fn(x, t) must have the shape of x {tuple(x.shape)}, got {tuple(v.shape)}")
        if probe is None:  # exact: d v_i / d x_i for each i
            flat_v, div = v.flatten(1), torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
            for i in range(flat_v.shape[1]):
                (grad_i,) = torch.autograd.grad(flat_v[:, i].sum(), x, retain_graph=True)
                div = div + grad_i.flatten(1)[:, i].double()
        else:  # Hutchinson: z^T J z = (J^T z) . z, one vector-Jacobian product
            if probe.shape != x.shape:
                raise ValueError(f"probe must have the shape of x {tuple(x.shape)}, got {tuple(probe.shape)}")
            (vjp,) = torch.autograd.grad((v * probe).sum(), x)
            div = (vjp * probe).flatten(1).sum(1).double()
    return v.detach(), div.detach()


def log_likelihood(
    denoiser: Denoiser, x: torch.Tensor, ts: int | torch.Tensor = 100, *, exact_divergence: bool = False,
    generator: torch.Generator | None = None, method: str = "heun", probe: str = "rademacher",
    t_eps: float | None = None, grid: str = "logsnr", rtol: float = 1e-5, atol: float = 1e-5,
    max_nfe: int = 100_000, info: dict | None = None,
) -> torch.Tensor:
    r"""Log-density of ``x`` (nats per example) under the probability-flow ODE of ``denoiser``.

    Integrates ``x`` and ``int div v dt`` forward in time, from the data end of the grid to ``T``,
    with :func:`~diffusion_edu.samplers.solve_ode` (the samplers' integrator) on the velocity
    ``v = denoiser.velocity``, and returns ``log p_T(x_T) + int div v(x_t, t) dt``, where ``p_T``
    is the schedule's reference ``N(0, prior_std^2 I)`` (the prior mismatch ``p_T != N(0, .)`` is part
    of the model).

    **The grid.** Near the data the ODE is stiff: ``dv/dx ~ g^2 / (2 sigma^2)``, which is
    ``~1 / (2 t)`` for the VP and Brownian processes, so a uniform grid in ``t`` makes an explicit
    method unstable at its first steps once the score is sharp (a well-trained network on data
    with hard edges). With ``ts`` an int, the default ``grid="logsnr"`` spaces the times uniformly
    in the log signal-to-noise ratio (:func:`~diffusion_edu.schedules.time_grid`): geometric in
    ``t`` near 0 for VP (steps proportional to ``t``), uniform in ``t`` for VE. ``grid="uniform"``:
    uniform in ``t``. ``ts`` may also be a monotone tensor of times (either order).

    **The t_eps truncation.** The integral starts at ``t_eps`` (default ``schedule.t_eps``, or, where
    that is the noise-free data, the least noisy time of the log-SNR grid), not at 0, because the
    score of data with atoms or narrow modes is singular at ``t = 0``. The result is therefore the
    log-density of the model's ``p_{t_eps}``, the data slightly noised (``sigma(t_eps) = 0.01`` for
    the default ``VPSDE``), evaluated at ``x`` -- what Song et al. (2021) report. For a smooth data
    density the difference is ``O(sigma(t_eps)^2)``; for discrete data the answer is a density, not
    a probability: dequantise first (:func:`dequantize`, :func:`bits_per_dim`).

    Parameters
    ----------
    denoiser : the model (any schedule, any prediction type)
    x : ``(B, *dims)`` the points whose log-density is wanted
    ts : number of integration steps, or a grid of times
    exact_divergence : exact trace (``D`` autograd passes per evaluation, for small ``D``);
        else Hutchinson's estimator ``z^T (dv/dx) z`` with one probe per example, drawn once from
        ``generator`` and kept for the whole path. Fresh probes at every evaluation would be
        unbiased too; a fixed probe makes the integrand a smooth deterministic function of ``t``,
        which adaptive solvers need (the choice of FFJORD, Grathwohl et al., 2019)
    method : ``"euler"``, ``"heun"`` (default), ``"rk4"`` or ``"rk45"`` (adaptive, ``rtol``/``atol``)
    probe : ``"rademacher"`` (lower variance) or ``"gaussian"``
    info : a dict that receives ``info["nfe"]``, the number of velocity evaluations

    Returns
    -------
    ``(B,)`` float64 tensor: ``log p(x)`` in nats per example. An example whose path leaves the
    floating-point range (the flow of a learned score can run away far from the data) gets
    ``-inf``; the examples are integrated independently, so the others are unaffected.

    Examples
    --------
    >>> from diffusion_edu import VPSDE, GaussianMixture
    >>> sde, gm = VPSDE(), GaussianMixture([[0.5, -0.5]], stds=0.5)
    >>> x = gm.sample(5, generator=torch.Generator().manual_seed(0)).double()
    >>> lp = log_likelihood(gm.denoiser(sde), x, 100, exact_divergence=True)
    >>> bool((lp - gm.log_prob(x)).abs().max() < 0.01)
    True
    """
    from .samplers import ODE_METHODS, solve_ode

    if not isinstance(denoiser, Denoiser):
        raise ValueError(f"denoiser must be a Denoiser, got {type(denoiser).__name__}")
    if method not in ODE_METHODS:
        raise ValueError(f"method must be one of {ODE_METHODS}, got {method!r}")
    if grid not in ("logsnr", "uniform"):
        raise ValueError(f"grid must be 'logsnr' or 'uniform', got {grid!r}")
    if probe not in ("rademacher", "gaussian"):
        raise ValueError(f"probe must be 'rademacher' or 'gaussian', got {probe!r}")
    if not torch.is_tensor(x) or x.ndim < 2:
        raise ValueError(f"x must be a tensor of shape (B, *dims), got {x!r:.60}")
    check_finite(x, "x")
    times = _likelihood_grid(denoiser.schedule, ts, grid, t_eps)
    B, shape = x.shape[0], x.shape
    z = None
    if not exact_divergence:  # one probe per example for the whole path
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        if probe == "rademacher":
            z = torch.sign(z)  # +-1 with probability 1/2 each

    def field(state, t):  # d/dt of (x_t, int div v dt): (v, div v), packed as (B, D + 1)
        v, div = divergence(denoiser.velocity, state[:, :-1].reshape(shape), t, probe=z)
        return torch.cat([v.flatten(1), div[:, None].to(v.dtype)], dim=1)

    state = torch.cat([x.detach().flatten(1), torch.zeros(B, 1, dtype=x.dtype, device=x.device)], dim=1)
    state = solve_ode(field, state, times, method=method, rtol=rtol, atol=atol, max_nfe=max_nfe,
                      info=info, check_finite=False)
    y, delta = state[:, :-1].reshape(shape), state[:, -1].double()
    log_p = denoiser.schedule.prior_log_prob(y).double() + delta
    return torch.where(torch.isfinite(log_p), log_p, torch.full_like(log_p, -math.inf))  # ran away


def _likelihood_grid(schedule: Schedule, ts, grid: str, t_eps: float | None) -> torch.Tensor:
    """Increasing times from the data end (``sigma > 0``) to ``T`` for :func:`log_likelihood`."""
    if torch.is_tensor(ts):
        times = ts.detach().double().cpu()
        if times.ndim != 1 or len(times) < 2:
            raise ValueError(f"ts must be an int or a 1-D tensor of at least 2 times, got {ts!r:.60}")
        times = times.flip(0) if times[0] > times[-1] else times
    else:
        if not isinstance(ts, int) or isinstance(ts, bool) or ts < 1:
            raise ValueError(f"ts must be a positive int (steps) or a 1-D tensor of times, got {ts!r}")
        if t_eps is not None:
            t_eps = float(t_eps)
            if not schedule.t_min <= t_eps < schedule.T:
                raise ValueError(f"t_eps must lie in [{schedule.t_min}, {schedule.T}), got {t_eps}")
            if grid == "uniform":
                times = torch.linspace(t_eps, schedule.T, ts + 1, dtype=torch.float64)
            else:
                lam = torch.linspace(schedule.log_snr(t_eps).item(), schedule.log_snr(schedule.T).item(), ts + 1,
                                     dtype=torch.float64)
                if not torch.isfinite(lam).all():
                    raise ValueError(f"grid='logsnr' needs a finite log-SNR at t_eps={t_eps} and T; use t_eps > "
                                     f"{schedule.t_min} or grid='uniform'")
                times = schedule.time_at_log_snr(lam)
                times[0], times[-1] = t_eps, schedule.T
        else:
            times = time_grid(schedule, ts, grid).flip(0)
    if schedule.marginal(times[0])[1].item() == 0:
        times = times[1:]  # start where there is noise: the density of the noise-free data is singular
    if len(times) < 2:
        raise ValueError("the likelihood grid needs at least one step above the noise-free data end")
    return times


# -- the DDPM variational bound --------------------------------------------------------------
@dataclass
class ELBOTerms:
    """Terms of the negative ELBO of a DDPM (Ho et al., 2020, Eq. 5), nats per example.

    ``prior`` ``(B,)``: ``L_N = KL(q(x_N | x_0) || N(0, I))``; ``diffusion`` ``(B,)``: the sum of
    the KL terms ``L_1 .. L_{N-1}``; ``decoder`` ``(B,)``: ``L_0 = -log p(x_0 | x_1)``;
    ``per_step`` ``(B, N)``: column ``n`` is ``L_n``, the term that trains the network at index
    ``n`` (column 0 is the decoder term); ``mse`` ``(B, N)``: ``||eps - eps_theta||^2`` (summed
    over dimensions) at each index. ``total`` is their sum, ``-ELBO >= -log p_theta(x_0)``.
    """

    prior: torch.Tensor
    diffusion: torch.Tensor
    decoder: torch.Tensor
    per_step: torch.Tensor
    mse: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return self.prior + self.diffusion + self.decoder


def ddpm_elbo(
    denoiser: Denoiser, x0: torch.Tensor, *, decoder: str = "discrete", levels: int = 256,
    value_range: tuple[float, float] = (-1.0, 1.0), variance: str = "beta_tilde",
    generator: torch.Generator | None = None,
) -> ELBOTerms:
    r"""The variational bound of a DDPM, every term separately, in nats per example.

    ``denoiser`` is a model on a :class:`~diffusion_edu.schedules.DDPMSchedule` (``abar_n``).
    For each index ``n = 0, 1, ..., N - 1`` in turn, one ``eps`` of ``x0``'s shape is drawn from
    ``generator`` (float64), ``x_n = sqrt(abar_n) x_0 + sqrt(1 - abar_n) eps``, and the denoiser
    is evaluated once at ``(x_n, n)``: ``N`` network calls in all. Call it under ``torch.no_grad()`` unless the bound is to be differentiated.

    - ``L_N`` (prior): ``KL(N(sqrt(abar_N) x_0, (1 - abar_N) I) || N(0, I))``, exact.
    - ``L_n``, ``n >= 1``: ``q(x_{n-1} | x_n, x_0) = N(mu_tilde, beta_tilde_n I)`` with
      ``mu_tilde = (x_n - beta_n / sqrt(1 - abar_n) eps) / sqrt(1 - beta_n)`` and
      ``beta_tilde_n = (1 - abar_{n-1}) / (1 - abar_n) beta_n``; the model has the same form with
      ``eps_theta`` and variance ``v_n = beta_tilde_n`` or ``beta_n`` (``variance``;
      Ho et al. note that ``beta_n`` is the optimal fixed choice for ``x_0 ~ N(0, I)`` and
      ``beta_tilde_n`` for ``x_0`` a single point, so ``"beta"`` suits continuous data and
      ``"beta_tilde"`` concentrated, e.g. discrete, data). Their KL:

      .. math:: \tfrac{D}{2}\big(\tfrac{\tilde\beta_n}{v_n} - 1 - \log\tfrac{\tilde\beta_n}{v_n}\big)
                + \frac{\beta_n^2}{2 v_n (1 - \beta_n) (1 - \bar\alpha_n)} \|\varepsilon - \varepsilon_\theta\|^2 .

    - ``L_0`` (decoder) ``-log p(x_0 | x_1)`` with mean the denoised estimate ``x0_hat`` at index 0
      and variance ``sigma_1^2 = beta_1`` (``variance="beta"``) or
      ``beta_tilde_2`` (``"beta_tilde"``: ``beta_tilde_1 = 0``, so it is clipped to the next value,
      as in Ho et al.'s released code). ``decoder="discrete"``: the discretised Gaussian of
      Ho et al. (2020, Eq. 13) for data on ``levels`` equally spaced values spanning ``value_range``
      (8-bit data in ``[-1, 1]``: ``levels=256``, bins of half-width ``1/255``), a probability;
      ``decoder="gaussian"``: the density ``N(x_0; x0_hat, sigma_1^2 I)``, for continuous data.

    Parameters
    ----------
    denoiser : the model, on a ``DDPMSchedule`` whose ``alphas_cumprod`` are ``abar_1 .. abar_N``
        (Ho et al.'s 1-based indices; 0-based in the arrays, see :mod:`diffusion_edu.schedules`)
    x0 : ``(B, *dims)`` data; on the grid of ``levels`` values when ``decoder="discrete"``

    Returns
    -------
    :class:`ELBOTerms` (float64); ``.total`` is the bound on ``-log p_theta(x_0)``.

    Examples
    --------
    >>> from diffusion_edu import DDPMSchedule, GaussianMixture, ddpm_betas, alphas_cumprod
    >>> sched = DDPMSchedule(alphas_cumprod(ddpm_betas(100)))
    >>> gm = GaussianMixture([[0.0, 0.0]], stds=0.5)
    >>> x0 = gm.sample(4, generator=torch.Generator().manual_seed(0)).double()
    >>> terms = ddpm_elbo(gm.denoiser(sched), x0, decoder="gaussian", variance="beta")
    >>> terms.per_step.shape, terms.total.shape
    (torch.Size([4, 100]), torch.Size([4]))
    """
    if decoder not in ("discrete", "gaussian"):
        raise ValueError(f"decoder must be 'discrete' or 'gaussian', got {decoder!r}")
    if variance not in ("beta", "beta_tilde"):
        raise ValueError(f"variance must be 'beta' or 'beta_tilde', got {variance!r}")
    if not torch.is_tensor(x0) or x0.ndim < 2:
        raise ValueError(f"x0 must be a tensor of shape (B, *dims), got {x0!r:.60}")
    check_finite(x0, "x0")
    if not isinstance(denoiser, Denoiser) or not isinstance(denoiser.schedule, DDPMSchedule):
        raise ValueError("denoiser must be a Denoiser on a DDPMSchedule, got "
                         f"{type(denoiser).__name__} on {type(getattr(denoiser, 'schedule', None)).__name__}")
    abar = denoiser.schedule.alphas_cumprod.to(x0.device)
    N, B, D = len(abar), x0.shape[0], x0[0].numel()
    if decoder == "discrete":
        _check_on_grid(x0, levels, value_range)
    sigma2 = _model_variances(abar, variance)  # (N,) v_n, index 0 the decoder's
    x0_64 = x0.double()

    a_N = abar[-1]  # prior: KL(N(sqrt(abar_N) x0, 1 - abar_N) || N(0, 1)), summed over dims
    prior = normal_kl(a_N.sqrt() * x0_64, 1 - a_N, 0.0, 1.0).flatten(1).sum(1)

    per_step = torch.zeros(B, N, dtype=torch.float64, device=x0.device)
    mse = torch.zeros(B, N, dtype=torch.float64, device=x0.device)
    for n in range(N):
        a = abar[n]
        eps = torch.randn(x0.shape, generator=generator, dtype=torch.float64).to(x0.device)
        xn = a.sqrt() * x0_64 + (1 - a).sqrt() * eps  # x_n ~ q(x_n | x_0)
        x0_hat, eps_hat = (e.double() for e in denoiser.x0_eps(xn.to(x0.dtype), float(n)))
        mse[:, n] = (eps - eps_hat).pow(2).flatten(1).sum(1)
        if n == 0:  # L_0: the decoder p(x_0 | x_1), mean x0_hat
            std = sigma2[0].sqrt()
            if decoder == "discrete":
                per_step[:, 0] = -discretized_gaussian_log_likelihood(x0_64, x0_hat, std, levels, value_range)
            else:
                per_step[:, 0] = -torch.distributions.Normal(x0_hat, std).log_prob(x0_64).flatten(1).sum(1)
            continue
        a_prev = abar[n - 1]
        beta = 1 - a / a_prev  # beta_n
        beta_tilde = (1 - a_prev) / (1 - a) * beta  # posterior variance
        r = beta_tilde / sigma2[n]
        weight = beta**2 / (2 * sigma2[n] * (1 - beta) * (1 - a))  # beta^2 / (2 sigma^2 alpha (1 - abar))
        per_step[:, n] = 0.5 * D * (r - 1 - torch.log(r)) + weight * mse[:, n]
    return ELBOTerms(prior=prior, diffusion=per_step[:, 1:].sum(1), decoder=per_step[:, 0],
                     per_step=per_step, mse=mse)


def elbo_weights(alphas_cumprod: torch.Tensor | DDPMSchedule, variance: str = "beta_tilde") -> torch.Tensor:
    """``w_n = beta_n^2 / (2 v_n (1 - beta_n) (1 - abar_n))``, ``(N,)`` float64: the weight of
    ``||eps - eps_theta||^2`` in the ELBO term ``L_n``, with ``v_n`` the variance of the reverse
    step (``variance="beta"``: ``beta_n``; ``"beta_tilde"``: the posterior's ``beta~_n``). At
    ``n = 0`` it is the weight in the Gaussian decoder, ``(1 - abar_1) / (2 v_1 abar_1)`` (the same
    formula, with ``beta_1 = 1 - abar_1``). ``L_simple`` (Ho et al., 2020) sets every ``w_n`` to 1.

    Examples
    --------
    >>> from diffusion_edu import ddpm_betas, alphas_cumprod
    >>> w = elbo_weights(alphas_cumprod(ddpm_betas(1000)))
    >>> bool(w[1] > 100 * w[500])   # the bound weights the small noise levels heavily
    True
    """
    abar = alphas_cumprod.alphas_cumprod if isinstance(alphas_cumprod, DDPMSchedule) else \
        check_alphas_cumprod(alphas_cumprod)
    sigma2 = _model_variances(abar, variance)
    abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
    beta = 1 - abar / abar_prev
    return beta**2 / (2 * sigma2 * (1 - beta) * (1 - abar))


def normal_kl(mean1, var1, mean2, var2) -> torch.Tensor:
    """Elementwise ``KL(N(mean1, var1) || N(mean2, var2))`` between scalar Gaussians:
    ``(log(var2 / var1) + (var1 + (mean1 - mean2)^2) / var2 - 1) / 2`` (broadcasts).

    Examples
    --------
    >>> float(normal_kl(torch.tensor(1.0), 1.0, 0.0, 1.0))
    0.5
    """
    mean1, var1, mean2, var2 = (torch.as_tensor(v, dtype=torch.float64) for v in (mean1, var1, mean2, var2))
    for name, var in (("var1", var1), ("var2", var2)):
        if not (var > 0).all():
            raise ValueError(f"{name} must be a variance > 0 everywhere, got minimum {var.min().item():.3g}")
    return 0.5 * (torch.log(var2 / var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1)


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, mean: torch.Tensor, std, levels: int = 256,
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> torch.Tensor:
    r"""``log P(x | mean, std)`` of the discretised Gaussian (Ho et al., 2020, Eq. 13), ``(B,)``.

    Data take ``levels`` equally spaced values from ``lo`` to ``hi``; with half-spacing
    ``delta = (hi - lo) / (2 (levels - 1))`` each value owns the bin ``[x - delta, x + delta]``,
    the two end bins stretched to ``-inf`` and ``+inf``, and its probability is the Gaussian mass
    of its bin: ``Phi((x + delta - mean) / std) - Phi((x - delta - mean) / std)`` per dimension.
    Computed from ``log Phi`` in float64 without cancellation in either tail.
    """
    lo, hi = _check_levels_range(levels, value_range)
    if x.ndim < 2 or mean.shape != x.shape:
        raise ValueError(f"x must be (B, *dims) and mean of the same shape, got x {tuple(x.shape)}, "
                         f"mean {tuple(mean.shape)}")
    x, mean = x.double(), mean.double()
    if not ((x >= lo - 1e-6) & (x <= hi + 1e-6)).all():
        raise ValueError(f"x must lie in value_range {value_range} (the discrete data), got values in "
                         f"[{x.min().item():.3g}, {x.max().item():.3g}]")
    std = torch.as_tensor(std, dtype=torch.float64, device=x.device)
    if not (std > 0).all():
        raise ValueError(f"std must be > 0, got minimum {std.min().item():.3g}")
    delta = (hi - lo) / (2 * (levels - 1))
    u, l = (x + delta - mean) / std, (x - delta - mean) / std  # standardised bin edges, u > l
    log_cdf_u, log_sf_l = torch.special.log_ndtr(u), torch.special.log_ndtr(-l)
    mid = torch.where(  # log(Phi(u) - Phi(l)); mirror the upper tail to avoid 1 - 1
        l > 0,
        _log_diff_exp(log_sf_l, torch.special.log_ndtr(-u)),
        _log_diff_exp(log_cdf_u, torch.special.log_ndtr(l)),
    )
    logp = torch.where(x < lo + delta, log_cdf_u, torch.where(x > hi - delta, log_sf_l, mid))
    return logp.flatten(1).sum(1)


# -- bits per dimension ----------------------------------------------------------------------
def bits_per_dim(
    nll_nats: torch.Tensor, x: torch.Tensor, *, levels: int | None = 256,
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> torch.Tensor:
    r"""Convert a negative log-likelihood in nats per example into bits per dimension.

    ``D = x[0].numel()`` is the number of dimensions (pixels times channels).

    - ``levels=None``: ``nll_nats`` is already ``-log P`` of the **discrete** data (a
      probability), e.g. ``ddpm_elbo(..., decoder="discrete").total`` or a VDM loss with a
      discrete decoder: ``bits/dim = nll / (D log 2)``.
    - ``levels=K`` (default 256): ``nll_nats`` is ``-log p`` of a **density** over the data
      rescaled to ``value_range = (lo, hi)``, evaluated at **uniformly dequantised** points
      ``x + Delta u``, ``u ~ U[-1/2, 1/2)^D`` (:func:`dequantize`), with the bin width
      ``Delta = (hi - lo) / (K - 1)``. Since ``P(x) = int_bin p = Delta^D E_u[p(x + Delta u)]``,
      Jensen gives ``-log P(x) <= E_u[-log p(x + Delta u)] + D log(1 / Delta)``, so

      .. math:: \text{bits/dim} = \Big(\frac{\text{nll}}{D} + \log \frac{K - 1}{hi - lo}\Big) / \log 2 ,

      ``(nll / D + log 127.5) / log 2`` for 8-bit data in ``[-1, 1]``: an upper bound on the
      discrete NLL. Uniform dequantisation is the device of Uria, Murray & Larochelle (2013) and
      Theis, van den Oord & Bethge (2016), used for the probability-flow likelihoods of Song et al.
      (2021b, "Score-based generative modeling through SDEs"). (Ho et al. 2020's 3.70 bits/dim is
      not of this kind: it is ``-log P`` of a discrete decoder, the ``levels=None`` case.) (A density evaluated at the grid points themselves, without dequantisation, is
      not a bound on anything.) For the 17-level digits in ``[-1, 1]`` the offset is
      ``log2(8) = 3`` bits and the uniform distribution scores ``log2(17) = 4.09``.

    Examples
    --------
    >>> x = torch.zeros(2, 3, 32, 32)
    >>> D = 3 * 32 * 32
    >>> bits_per_dim(torch.full((2,), D * math.log(256.0), dtype=torch.float64), x, levels=None).tolist()
    [8.0, 8.0]
    >>> round(float(bits_per_dim(torch.zeros(1), x[:1])[0]), 4)   # log2(127.5)
    6.9944
    """
    nll = torch.as_tensor(nll_nats, dtype=torch.float64)
    D = x[0].numel()
    if levels is None:
        return nll / (D * math.log(2))
    lo, hi = _check_levels_range(levels, value_range)
    return (nll / D + math.log((levels - 1) / (hi - lo))) / math.log(2)


def dequantize(
    x: torch.Tensor, levels: int = 256, value_range: tuple[float, float] = (-1.0, 1.0),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Uniform dequantisation: ``x + Delta u`` with ``u ~ U[-1/2, 1/2)`` per entry and
    ``Delta = (hi - lo) / (levels - 1)``, the bin centred on each of the ``levels`` values.

    Examples
    --------
    >>> x = torch.tensor([[-1.0, 0.0, 1.0]])
    >>> y = dequantize(x, levels=17, generator=torch.Generator().manual_seed(0))
    >>> bool(((y - x).abs() <= 1 / 16).all())
    True
    """
    lo, hi = _check_levels_range(levels, value_range)
    if not ((x >= lo - 1e-6) & (x <= hi + 1e-6)).all():
        raise ValueError(f"x must lie in value_range {value_range} (the discrete data), got values in "
                         f"[{x.min().item():.3g}, {x.max().item():.3g}]")
    delta = (hi - lo) / (levels - 1)
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device) - 0.5
    return x + delta * u


# -- helpers ---------------------------------------------------------------------------------
def _check_levels_range(levels, value_range) -> tuple[float, float]:
    """``(lo, hi)`` after checking ``levels`` (an int >= 2) and ``value_range`` (lo < hi)."""
    try:
        lo, hi = (float(s) for s in value_range)
    except (TypeError, ValueError):
        raise ValueError(f"value_range must be a pair (lo, hi), got {value_range!r}") from None
    if not (isinstance(levels, int) and not isinstance(levels, bool) and levels >= 2 and lo < hi):
        raise ValueError(f"levels must be an int >= 2 and value_range (lo, hi) with lo < hi, "
                         f"got levels={levels!r}, value_range={value_range!r}")
    return lo, hi


def _model_variances(abar: torch.Tensor, variance: str) -> torch.Tensor:
    """``v_n``, the variance of ``p_theta(x_{n-1} | x_n)``: ``beta_n``, or ``beta_tilde_n`` with index 0
    (the decoder) given ``beta_tilde`` of index 1, since ``beta_tilde_1 = 0``."""
    if variance not in ("beta", "beta_tilde"):
        raise ValueError(f"variance must be 'beta' or 'beta_tilde', got {variance!r}")
    abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
    beta = 1 - abar / abar_prev
    beta_tilde = (1 - abar_prev) / (1 - abar) * beta
    if variance == "beta":
        return beta.clone()
    sigma2 = beta_tilde.clone()
    sigma2[0] = beta_tilde[1] if len(abar) > 1 else beta[0]
    return sigma2


def _log_diff_exp(a, b):
    """``log(exp(a) - exp(b))`` for ``a > b``."""
    return a + torch.log(-torch.expm1(b - a))


def _check_on_grid(x, levels, value_range):
    lo, hi = (float(s) for s in value_range)
    if not isinstance(levels, int) or levels < 2:
        raise ValueError(f"levels must be an int >= 2, got {levels!r}")
    k = (x.double() - lo) / (hi - lo) * (levels - 1)
    off = (k - k.round()).abs().max().item()
    if off > 1e-3 or k.min() < -1e-3 or k.max() > levels - 1 + 1e-3:
        raise ValueError(
            f"x0 must lie on the {levels} levels spanning {value_range} for decoder='discrete' "
            f"(off the grid by up to {off:.3g} bins, range [{x.min().item():.3g}, {x.max().item():.3g}]); "
            "use decoder='gaussian' for continuous data"
        )
