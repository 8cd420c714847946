"""The one sampler interface: every sampler on every schedule with every prediction type, checked
on Gaussian data N(m, s^2 I), where the exact posterior mean is a closed form written here
(independent of ``toy``) and the probability-flow map is known exactly; bad input; model-call
counts; callbacks; and property tests (hypothesis) of shapes, dtypes, broadcasting and the
parameterisation round trips."""

import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from diffusion_edu.denoiser import Denoiser
from diffusion_edu.flow_matching import StraightPath
from diffusion_edu.parameterization import PREDICTIONS, from_x0_eps, to_x0_eps
from diffusion_edu.samplers import (ddim, ddpm_ancestral, dpm_solver, euler_maruyama, heun, predictor_corrector,
                                    probability_flow)
from diffusion_edu.schedules import DDPMSchedule, alphas_cumprod, ddpm_betas, time_grid
from diffusion_edu.sde import VESDE, VPSDE, BrownianSDE, SubVPSDE

M, S = torch.tensor([1.0, -0.5], dtype=torch.float64), 0.5  # the data: N(M, S^2 I)

SCHEDULES = {
    "VP": VPSDE(), "VE": VESDE(0.01, 10.0), "SubVP": SubVPSDE(), "Brownian": BrownianSDE(T=2.0),
    "DDPM": DDPMSchedule(alphas_cumprod(ddpm_betas(1000))), "Straight": StraightPath(),
}
SDE_BASED = ("euler_maruyama", "predictor_corrector")  # need finite f, g^2: not at alpha = 0

SAMPLERS = {
    "euler_maruyama": lambda d, x, ts, g: euler_maruyama(d, x, ts, generator=g),
    "pf_euler": lambda d, x, ts, g: probability_flow(d, x, ts, method="euler"),
    "pf_heun": lambda d, x, ts, g: probability_flow(d, x, ts, method="heun"),
    "pf_rk4": lambda d, x, ts, g: probability_flow(d, x, ts, method="rk4"),
    "pf_rk45": lambda d, x, ts, g: probability_flow(d, x, ts, method="rk45", rtol=1e-5, atol=1e-5),
    "predictor_corrector": lambda d, x, ts, g: predictor_corrector(d, x, ts, generator=g),
    "ddim_eta0": lambda d, x, ts, g: ddim(d, x, ts, eta=0.0, generator=g),
    "ddim_eta1": lambda d, x, ts, g: ddim(d, x, ts, eta=1.0, generator=g),
    "ddpm_beta_tilde": lambda d, x, ts, g: ddpm_ancestral(d, x, ts, variance="beta_tilde", generator=g),
    "ddpm_beta": lambda d, x, ts, g: ddpm_ancestral(d, x, ts, variance="beta", generator=g),
    "heun": lambda d, x, ts, g: heun(d, x, ts, generator=g),
    # churn where sigma / alpha is in [0.05, 2] (EDM's S_tmin, S_tmax), as in Karras et al.'s settings
    "heun_churn": lambda d, x, ts, g: heun(d, x, ts, s_churn=10.0, s_tmin=0.05, s_tmax=2.0, generator=g),
    "dpm_solver1": lambda d, x, ts, g: dpm_solver(d, x, ts, order=1),
    "dpm_solver2": lambda d, x, ts, g: dpm_solver(d, x, ts, order=2),
    "dpm_solver3": lambda d, x, ts, g: dpm_solver(d, x, ts, order=3),
}


def gaussian_net(sched, prediction="x0", mean=M, std=S):
    """The exact network of kind ``prediction`` for N(mean, std^2 I) data, written from the
    closed forms: E[x0 | x_t] = mean + alpha std^2 / (alpha^2 std^2 + sigma^2) (x_t - alpha mean),
    eps = (x - alpha x0) / sigma, v = alpha eps - sigma x0, score = -eps / sigma,
    velocity = alpha' x0 + sigma' eps. Works for any (B, *dims) with ``mean`` broadcasting."""

    def net(x, t):
        shape = (-1,) + (1,) * (x.ndim - 1)
        a, s = (c.view(shape).to(x.dtype) for c in sched.marginal(t))
        x0 = mean.to(x.dtype) + a * std**2 / (a**2 * std**2 + s**2) * (x - a * mean.to(x.dtype))
        if prediction == "x0":
            return x0
        eps = (x - a * x0) / s
        if prediction == "eps":
            return eps
        if prediction == "v":
            return a * eps - s * x0
        if prediction == "score":
            return -eps / s
        da, ds = (c.view(shape).to(x.dtype) for c in sched.marginal_derivatives(t))
        return da * x0 + ds * eps

    return net


def exact_denoiser(sched, prediction="x0"):
    return Denoiser(gaussian_net(sched, prediction), sched, prediction)


def grid(sampler, sched, steps):
    """A log-SNR grid; the SDE samplers on StraightPath start below t = 1 (alpha(1) = 0 makes
    f = alpha'/alpha infinite), at the grid's second time sigma/alpha = 80."""
    ts = time_grid(sched, steps, "logsnr")
    return ts[1:] if sampler in SDE_BASED and isinstance(sched, StraightPath) else ts


def start(sched, t, n, seed=0, dtype=torch.float64):
    """n draws from the exact p_t = N(alpha M, (alpha^2 S^2 + sigma^2) I): no prior mismatch."""
    a, s = (c.item() for c in sched.marginal(t))
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (a * M + math.sqrt(a**2 * S**2 + s**2) * z).to(dtype)


def exact_flow_map(sched, x, t_from, t_to):
    """The probability-flow ODE for N(M, S^2 I) keeps each point's standardised position:
    x_s = alpha_s M + sqrt(v_s / v_t) (x_t - alpha_t M), v = alpha^2 S^2 + sigma^2 (any schedule)."""
    a, s = (c.item() for c in sched.marginal(t_from))
    a2, s2 = (c.item() for c in sched.marginal(t_to))
    return a2 * M + math.sqrt((a2**2 * S**2 + s2**2) / (a**2 * S**2 + s**2)) * (x - a * M)


# -- every sampler samples N(M, S^2 I) on every schedule -------------------------------------------
# Deterministic samplers: steps, and a bound 1.5x the worst pointwise error against the exact flow
# map measured over the six schedules (log-SNR grids, exact start). Euler in t on VE is the worst
# first-order case (sigma grows exponentially in t).
DETERMINISTIC = {  # name: (steps, bound)
    "pf_euler": (50, 0.4),  # measured 0.27 (VE), <= 0.062 elsewhere
    "pf_heun": (40, 0.025),  # 0.014 (VE)
    "pf_rk4": (20, 2e-3),  # 1.4e-3 (DDPM: kinks of its piecewise-linear log-SNR; last step x0_hat)
    "pf_rk45": (20, 7e-4),  # 4.3e-4 (DDPM: the last step to the data returns x0_hat), 1.7e-5 elsewhere
    "ddim_eta0": (50, 0.12),  # 0.079 (SubVP)
    "heun": (40, 0.03),  # 0.020 (SubVP)
    "dpm_solver1": (50, 0.12),  # = DDIM
    "dpm_solver2": (40, 0.013),  # 0.0086 (SubVP)
    "dpm_solver3": (20, 0.04),  # 0.025 (SubVP)
}


@pytest.mark.parametrize("sched_name", SCHEDULES)
@pytest.mark.parametrize("sampler", DETERMINISTIC)
def test_deterministic_samplers_follow_the_exact_flow_map(sampler, sched_name):
    """From the exact p_T, each deterministic sampler maps x_T to within ``bound`` of the exact
    probability-flow map. With the exact affine posterior mean every step is affine, so the
    sampler's output law is exactly N(F(mu_T), c^2 v_T): its mean and std, read off the images
    of mu_T and mu_T + sqrt(v_T) e_j, are within the same bound of those of p at the grid's end,
    alpha M and sqrt(alpha^2 S^2 + sigma^2) (M and S where the grid ends at the data)."""
    sched = SCHEDULES[sched_name]
    steps, bound = DETERMINISTIC[sampler]
    ts = grid(sampler, sched, steps)
    a, s = (c.item() for c in sched.marginal(ts[0]))
    sd = math.sqrt(a**2 * S**2 + s**2)
    probes = torch.stack([a * M, a * M + sd * torch.tensor([1.0, 0.0], dtype=torch.float64),
                          a * M + sd * torch.tensor([0.0, 1.0], dtype=torch.float64)])
    x = torch.cat([probes, start(sched, ts[0], 16)])
    y = SAMPLERS[sampler](exact_denoiser(sched), x, ts, None)
    assert y.shape == x.shape and y.dtype == x.dtype
    err = (y - exact_flow_map(sched, x, ts[0], ts[-1])).abs().max().item()
    assert err < bound, err
    mean, std = y[0], torch.stack([y[1, 0] - y[0, 0], y[2, 1] - y[0, 1]])
    a_end, s_end = (c.item() for c in sched.marginal(ts[-1]))
    assert (mean - a_end * M).abs().max() < bound and (std - math.sqrt(a_end**2 * S**2 + s_end**2)).abs().max() < bound


# Stochastic samplers, B = 2000 samples of dimension 2 from the exact p_T. Sampling error: the mean
# of each coordinate has standard error S / sqrt(B) = 0.011, the pooled std S / sqrt(2 * 2 B) =
# 0.0056; the tolerances are 4 standard errors plus the discretisation bias measured with 1e5
# samples over the six schedules (worst case quoted), rounded up.
STOCHASTIC = {  # name: (steps, mean bias, std bias); measured worst case over the schedules
    "euler_maruyama": (100, 0.01, 0.02),  # measured 0.005 (VP, SubVP, DDPM), 0.013 (Brownian)
    "predictor_corrector": (50, 0.01, 0.015),  # 0.006, 0.008: Langevin with snr = 0.16 keeps a small bias
    "ddim_eta1": (100, 0.01, 0.045),  # 0.003, 0.033 (SubVP): ancestral steps shrink the std at few steps
    "ddpm_beta_tilde": (100, 0.01, 0.045),  # = ddim_eta1
    "ddpm_beta": (100, 0.01, 0.025),  # 0.003, 0.019 (VE)
    "heun_churn": (40, 0.01, 0.025),  # 0.004, 0.017 (SubVP)
}
B_STOCH = 2000


@pytest.mark.parametrize("sched_name", SCHEDULES)
@pytest.mark.parametrize("sampler", STOCHASTIC)
def test_stochastic_samplers_sample_the_gaussian(sampler, sched_name):
    sched = SCHEDULES[sched_name]
    steps, bias_m, bias_s = STOCHASTIC[sampler]
    ts = grid(sampler, sched, steps)
    x = start(sched, ts[0], B_STOCH, seed=1)
    y = SAMPLERS[sampler](exact_denoiser(sched), x, ts, torch.Generator().manual_seed(2))
    assert y.shape == x.shape and y.dtype == x.dtype
    se_mean, se_std = S / math.sqrt(B_STOCH), S / math.sqrt(4 * B_STOCH)
    assert (y.mean(0) - M).abs().max() < 4 * se_mean + bias_m, y.mean(0)
    assert abs(y.std(0).pow(2).mean().sqrt().item() - S) < 4 * se_std + bias_s, y.std(0)


@pytest.mark.parametrize("sched_name", ["VP", "VE", "Brownian"])
@pytest.mark.parametrize("sampler,order", [("pf_euler", 1), ("pf_heun", 2), ("pf_rk4", 4), ("ddim_eta0", 1),
                                           ("heun", 2), ("dpm_solver1", 1), ("dpm_solver2", 2)])
def test_deterministic_samplers_converge_with_their_order(sampler, order, sched_name):
    """Doubling the steps divides the error against the exact flow map by ~2^order (log-SNR
    grids ending at t_eps, sigma > 0, so no step returns x0_hat). Measured orders at 20 -> 40
    steps: 1.87-2.2 / 1.85-2.2 / 3.87-4.15 for orders 1 / 2 / 4; accepted: [order - 0.3, order + 0.6].
    (DPM-Solver-3 is left out: its first-order warm-up step makes it globally second order on a
    uniform log-SNR grid.)"""
    sched = SCHEDULES[sched_name]
    x = start(sched, sched.T, 8, seed=3)
    errs = []
    for steps in (20, 40):
        ts = time_grid(sched, steps, "logsnr")
        y = SAMPLERS[sampler](exact_denoiser(sched), x, ts, None)
        errs.append((y - exact_flow_map(sched, x, ts[0], ts[-1])).abs().max().item())
    observed = math.log2(errs[0] / errs[1])
    assert order - 0.3 < observed < order + 0.6, (errs, observed)


@pytest.mark.parametrize("sched_name", SCHEDULES)
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_prediction_type_gives_the_same_samples(sampler, sched_name):
    """The same sampler with the same noise gives the same samples whatever the network predicts
    (float64; the conversions divide by alpha >= 1/81 and sigma, so 1e-9 relative; rk45, run at
    rtol = 1e-3 here to keep DDPM's kinks cheap, chooses its steps from error estimates that
    round-off could tip, so its tolerance is its rtol; measured 3e-12).
    eps and score networks cannot give x0 at alpha = 0, so on StraightPath every grid starts
    at t = 80/81 here (test_eps_prediction_at_pure_noise_raises)."""
    sched = SCHEDULES[sched_name]
    ts = time_grid(sched, 4, "logsnr")
    if isinstance(sched, StraightPath):
        ts = ts[1:]
    x = start(sched, ts[0], 6, seed=4)
    run = SAMPLERS[sampler]
    if sampler == "pf_rk45":
        run = lambda d, x, ts, g: probability_flow(d, x, ts, method="rk45", rtol=1e-3, atol=1e-3)  # noqa: E731
    ref = run(exact_denoiser(sched, "x0"), x, ts, torch.Generator().manual_seed(5))
    tol = 1e-3 if sampler == "pf_rk45" else 1e-9
    for prediction in ("eps", "v", "score", "velocity"):
        y = run(exact_denoiser(sched, prediction), x, ts, torch.Generator().manual_seed(5))
        assert torch.allclose(y, ref, rtol=tol, atol=tol * ref.abs().max().item()), (prediction, (y - ref).abs().max())


@pytest.mark.parametrize("sampler", [s for s in SAMPLERS if s not in SDE_BASED])
@pytest.mark.parametrize("prediction", ["eps", "score"])
def test_eps_prediction_at_pure_noise_raises(sampler, prediction):
    """At StraightPath's t = 1, alpha = 0 and x = eps: an eps (or score) prediction carries no
    information about x0, so x0_hat = (x - sigma eps_hat) / alpha is 0/0. The sampler must not
    return NaN samples; today it raises FloatingPointError ("sampler produced NaN/inf")."""
    sched = StraightPath()
    ts = time_grid(sched, 4, "logsnr")
    with pytest.raises((ValueError, FloatingPointError)):
        SAMPLERS[sampler](exact_denoiser(sched, prediction), start(sched, 1.0, 4), ts, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("sampler", SDE_BASED)
def test_sde_samplers_on_the_straight_path_must_start_below_one(sampler):
    sched = StraightPath()
    x = start(sched, 1.0, 4)
    with pytest.raises(ValueError, match=r"\bts\b"):
        SAMPLERS[sampler](exact_denoiser(sched), x, time_grid(sched, 5), torch.Generator().manual_seed(0))
    y = SAMPLERS[sampler](exact_denoiser(sched), x, torch.linspace(0.99, 0.0, 6, dtype=torch.float64),
                          torch.Generator().manual_seed(0))
    assert torch.isfinite(y).all()


# -- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_samplers_reject_bad_input(sampler):
    run = SAMPLERS[sampler]
    sched = VPSDE()
    den, g = exact_denoiser(sched), torch.Generator().manual_seed(0)
    x = start(sched, 1.0, 4)
    f64 = dict(dtype=torch.float64)
    bad_ts = {
        "increasing": torch.tensor([0.1, 0.5, 0.9], **f64),
        "not strictly decreasing": torch.tensor([0.9, 0.5, 0.5, 0.1], **f64),
        "non-monotone": torch.tensor([0.9, 0.3, 0.5, 0.1], **f64),
        "2-D": time_grid(sched, 4)[None],
        "a single time": torch.tensor([0.5], **f64),
        "empty": torch.tensor([], **f64),
        "above T": torch.tensor([1.5, 0.5, 0.1], **f64),
        "below t_min": torch.tensor([0.5, 0.1, -0.1], **f64),
        "NaN": torch.tensor([0.9, float("nan"), 0.1], **f64),
        "not times": "uniform",
    }
    for why, ts in bad_ts.items():
        with pytest.raises(ValueError, match=r"\bts\b"):
            run(den, x, ts, g)
            pytest.fail(f"accepted ts {why}")
    for bad in (float("nan"), float("inf")):
        x_bad = x.clone()
        x_bad[1, 0] = bad
        with pytest.raises(ValueError, match=r"\bx\b"):
            run(den, x_bad, time_grid(sched, 4), g)
    with pytest.raises(ValueError, match="denoiser"):
        run(gaussian_net(sched), x, time_grid(sched, 4), g)  # a bare network, not a Denoiser
    ddpm = SCHEDULES["DDPM"]
    with pytest.raises(ValueError, match=r"\bts\b"):  # DDPM times lie in [-1, N - 1]
        run(exact_denoiser(ddpm), x, torch.tensor([1000.0, 500.0, -1.0], **f64), g)


def test_sampler_options_are_checked():
    sched = VPSDE()
    den, x, ts = exact_denoiser(sched), start(sched, 1.0, 4), time_grid(sched, 4)
    for order in (0, 4, 2.5, True, "2"):
        with pytest.raises(ValueError, match="order"):
            dpm_solver(den, x, ts, order=order)
    with pytest.raises(ValueError, match="method"):
        probability_flow(den, x, ts, method="midpoint")
    with pytest.raises(ValueError, match="eta"):
        ddim(den, x, ts, eta=-0.5)
    with pytest.raises(ValueError, match="variance"):
        ddpm_ancestral(den, x, ts, variance="fixed_large")
    with pytest.raises(ValueError, match="s_churn"):
        heun(den, x, ts, s_churn=-1.0)
    with pytest.raises(ValueError, match="snr"):
        predictor_corrector(den, x, ts, snr=0.0)
    with pytest.raises(ValueError, match="corrector_steps"):
        predictor_corrector(den, x, ts, corrector_steps=-1)
    with pytest.raises(ValueError, match="prediction"):
        Denoiser(gaussian_net(sched), sched, "epsilon")
    with pytest.raises(ValueError, match="spacing"):
        time_grid(sched, 10, "quadratic")


def test_rk45_over_budget_raises():
    sched = VPSDE()
    den = exact_denoiser(sched)
    x = start(sched, 1.0, 8)
    with pytest.raises(RuntimeError, match="max_nfe"):
        probability_flow(den, x, time_grid(sched, 2), method="rk45", rtol=1e-10, atol=1e-10, max_nfe=20)
    assert den.nfe <= 20  # it stopped at the budget


# -- model calls and callbacks ----------------------------------------------------------------------
class Counting:
    """A network that counts its own calls (independently of Denoiser.nfe)."""

    def __init__(self, net):
        self.net, self.calls = net, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.net(x, t)


@pytest.mark.parametrize("sched_name,to_data", [("VP", False), ("Straight", True), ("DDPM", True)])
@pytest.mark.parametrize("method,per_step", [("euler", 1), ("heun", 2), ("rk4", 4)])
def test_probability_flow_reports_model_calls(method, per_step, sched_name, to_data):
    """N steps cost per_step * N calls; where the grid ends at the data (sigma = 0) the last step
    is the single call x0_hat: Euler N, Heun 2N - 1, RK4 4N - 3."""
    sched, N = SCHEDULES[sched_name], 7
    net = Counting(gaussian_net(sched))
    den = Denoiser(net, sched, "x0")
    info = {}
    probability_flow(den, start(sched, sched.T, 4), time_grid(sched, N), method=method, info=info)
    expected = per_step * (N - 1) + 1 if to_data else per_step * N
    assert info["nfe"] == net.calls == den.nfe == expected


def test_rk45_reports_its_model_calls():
    sched = VPSDE()
    net = Counting(gaussian_net(sched))
    info = {}
    probability_flow(Denoiser(net, sched, "x0"), start(sched, 1.0, 4), time_grid(sched, 3), method="rk45", info=info)
    assert info["nfe"] == net.calls and 6 <= net.calls < 500  # RK45: six stages per attempted step


@pytest.mark.parametrize("sched_name", ["VP", "Straight"])
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_callback_sees_every_step_and_calls_are_counted(sampler, sched_name):
    """callback(i, t, x) once per step, i = 0..N-1, t = ts[i + 1], the last x is the result;
    the number of model calls is the one each docstring states."""
    sched, N = SCHEDULES[sched_name], 5
    ts = grid(sampler, sched, N)
    N = len(ts) - 1
    seen = []
    net = Counting(gaussian_net(sched))
    den = Denoiser(net, sched, "x0")
    def callback(i, t, x):
        seen.append((i, t, x.clone()))

    y = _with_callback(sampler, den, start(sched, ts[0], 4), ts, callback)
    assert [i for i, _, _ in seen] == list(range(N))
    assert [t for _, t, _ in seen] == pytest.approx(ts[1:].tolist(), abs=0)
    assert torch.equal(seen[-1][2], y) and all(isinstance(t, float) for _, t, _ in seen)
    to_data = sched.marginal(ts[-1])[1].item() == 0
    from_noise = sched.marginal(ts[0])[0].item() == 0
    expected = {
        "euler_maruyama": N, "predictor_corrector": 2 * N, "pf_euler": N, "pf_heun": 2 * N - to_data,
        "pf_rk4": 4 * N - 3 * to_data, "ddim_eta0": N, "ddim_eta1": N, "ddpm_beta_tilde": N, "ddpm_beta": N,
        "heun": 2 * N - to_data - from_noise, "heun_churn": 2 * N - to_data - from_noise,
        "dpm_solver1": N, "dpm_solver2": N, "dpm_solver3": N,
    }
    if sampler != "pf_rk45":
        assert net.calls == den.nfe == expected[sampler]


def _with_callback(sampler, den, x, ts, callback):
    g = torch.Generator().manual_seed(0)
    calls = {
        "euler_maruyama": lambda: euler_maruyama(den, x, ts, generator=g, callback=callback),
        "pf_euler": lambda: probability_flow(den, x, ts, method="euler", callback=callback),
        "pf_heun": lambda: probability_flow(den, x, ts, method="heun", callback=callback),
        "pf_rk4": lambda: probability_flow(den, x, ts, method="rk4", callback=callback),
        "pf_rk45": lambda: probability_flow(den, x, ts, method="rk45", callback=callback),
        "predictor_corrector": lambda: predictor_corrector(den, x, ts, generator=g, callback=callback),
        "ddim_eta0": lambda: ddim(den, x, ts, eta=0.0, callback=callback),
        "ddim_eta1": lambda: ddim(den, x, ts, eta=1.0, generator=g, callback=callback),
        "ddpm_beta_tilde": lambda: ddpm_ancestral(den, x, ts, generator=g, callback=callback),
        "ddpm_beta": lambda: ddpm_ancestral(den, x, ts, variance="beta", generator=g, callback=callback),
        "heun": lambda: heun(den, x, ts, callback=callback),
        "heun_churn": lambda: heun(den, x, ts, s_churn=10.0, s_tmin=0.05, s_tmax=2.0, generator=g, callback=callback),
        "dpm_solver1": lambda: dpm_solver(den, x, ts, order=1, callback=callback),
        "dpm_solver2": lambda: dpm_solver(den, x, ts, order=2, callback=callback),
        "dpm_solver3": lambda: dpm_solver(den, x, ts, order=3, callback=callback),
    }
    return calls[sampler]()


def test_generator_makes_stochastic_samplers_reproducible():
    sched = VPSDE()
    x, ts = start(sched, 1.0, 8), time_grid(sched, 10)
    for sampler in ("euler_maruyama", "predictor_corrector", "ddim_eta1", "ddpm_beta", "heun_churn"):
        a = SAMPLERS[sampler](exact_denoiser(sched), x, ts, torch.Generator().manual_seed(7))
        b = SAMPLERS[sampler](exact_denoiser(sched), x, ts, torch.Generator().manual_seed(7))
        c = SAMPLERS[sampler](exact_denoiser(sched), x, ts, torch.Generator().manual_seed(8))
        assert torch.equal(a, b) and not torch.equal(a, c), sampler


# -- property tests ---------------------------------------------------------------------------------
PROPERTY = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
shapes = st.sampled_from([(3,), (2, 4), (1, 3, 3), (2, 2, 3)])
schedule_names = st.sampled_from(sorted(SCHEDULES))


def interior_time(sched, u):
    """A time inside the range with alpha > 0 and sigma > 0, u in [0, 1]."""
    lo = 0.0 if isinstance(sched, DDPMSchedule) else sched.t_eps
    hi = sched.T * 0.999 if isinstance(sched, StraightPath) else sched.T
    return lo + (hi - lo) * (0.01 + 0.98 * u)


@PROPERTY
@given(name=schedule_names, prediction=st.sampled_from(PREDICTIONS), batch=st.integers(1, 5), dims=shapes,
       dtype=st.sampled_from([torch.float32, torch.float64]), u=st.floats(0, 1), seed=st.integers(0, 2**16))
def test_denoiser_shapes_dtypes_and_time_broadcasting(name, prediction, batch, dims, dtype, u, seed):
    """Every method returns x's shape and dtype; t as a float, a 0-d tensor or a (B,) tensor
    is the same time (round-off: 1e-12 in float64, 1e-6 in float32); a (B,) tensor of
    different times equals example-by-example calls."""
    sched = SCHEDULES[name]
    mean = torch.zeros(dims, dtype=torch.float64) + 0.3
    den = Denoiser(gaussian_net(sched, prediction, mean=mean), sched, prediction)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((batch,) + dims, generator=g, dtype=torch.float64).to(dtype)
    t = interior_time(sched, u)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-6, atol=1e-6)
    for method in ("x0", "eps", "score", "velocity", "predict"):
        outs = [getattr(den, method)(x, tt) for tt in
                (t, torch.tensor(t, dtype=torch.float64), torch.full((batch,), t, dtype=torch.float64))]
        for out in outs:
            assert out.shape == x.shape and out.dtype == x.dtype
            assert torch.allclose(out, outs[-1], **tol)
    x0, eps = den.x0_eps(x, t)
    assert x0.shape == eps.shape == x.shape and x0.dtype == eps.dtype == dtype
    times = torch.tensor([interior_time(sched, (u + k / batch) % 1) for k in range(batch)], dtype=torch.float64)
    together = den.x0(x, times)
    one_by_one = torch.cat([den.x0(x[b:b + 1], times[b:b + 1]) for b in range(batch)])
    assert torch.allclose(together, one_by_one, rtol=1e-12 if dtype == torch.float64 else 1e-5, atol=0)


@PROPERTY
@given(name=schedule_names, sampler=st.sampled_from(sorted(SAMPLERS)), dims=shapes,
       dtype=st.sampled_from([torch.float32, torch.float64]), steps=st.integers(1, 4))
def test_samplers_keep_shape_and_dtype(name, sampler, dims, dtype, steps):
    """Any (B, *dims) in float32 or float64 comes back with the same shape and dtype, finite."""
    sched = SCHEDULES[name]
    den = Denoiser(gaussian_net(sched, "x0", mean=torch.zeros(dims, dtype=torch.float64)), sched, "x0")
    ts = time_grid(sched, steps + 1)
    if sampler in SDE_BASED and isinstance(sched, StraightPath):
        ts = ts[1:]
    x = sched.prior_sample((3,) + dims, torch.Generator().manual_seed(0)).to(dtype)
    y = SAMPLERS[sampler](den, x, ts, torch.Generator().manual_seed(1))
    assert y.shape == x.shape and y.dtype == dtype and torch.isfinite(y).all()


finite = dict(allow_nan=False, allow_infinity=False)


@PROPERTY
@given(alpha=st.floats(0.05, 5, **finite), sigma=st.floats(0.05, 5, **finite),
       dalpha=st.floats(-5, 5, **finite), dsigma=st.floats(-5, 5, **finite),
       prediction=st.sampled_from(PREDICTIONS), seed=st.integers(0, 2**16), per_example=st.booleans())
def test_parameterisation_round_trips(alpha, sigma, dalpha, dsigma, prediction, seed, per_example):
    """to_x0_eps inverts from_x0_eps at x = alpha x0 + sigma eps for every prediction type, and
    from_x0_eps is the textbook formula. Coefficients as floats or (B,) tensors. The inverse
    divides by alpha, sigma or det = alpha sigma' - sigma alpha' (>= 0.05 here): a round-off
    amplification below ~1e3, so 1e-10 relative."""
    assume(abs(alpha * dsigma - sigma * dalpha) >= 0.05)  # the velocity's (x0, eps) are determined
    g = torch.Generator().manual_seed(seed)
    x0, eps = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    coef = (alpha, sigma, dalpha, dsigma)
    if per_example:
        coef = tuple(torch.full((4,), c, dtype=torch.float64) for c in coef)
    x = alpha * x0 + sigma * eps
    pred = from_x0_eps(x0, eps, prediction, *coef)
    textbook = {"x0": x0, "eps": eps, "v": alpha * eps - sigma * x0, "score": -eps / sigma,
                "velocity": dalpha * x0 + dsigma * eps}[prediction]
    assert torch.allclose(pred, textbook, rtol=1e-12, atol=1e-12)
    back_x0, back_eps = to_x0_eps(pred, prediction, x, *coef)
    scale = 1 + x0.abs().max().item() + eps.abs().max().item()
    assert torch.allclose(back_x0, x0, rtol=0, atol=1e-10 * scale)
    assert torch.allclose(back_eps, eps, rtol=0, atol=1e-10 * scale)
