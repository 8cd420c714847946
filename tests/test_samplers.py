"""Samplers against closed forms (Gaussian data, where every map is linear) and against
diffusers' DDPM / DDIM schedulers on the same inputs."""

import math

import pytest
import torch

from diffusion_edu.denoiser import Denoiser, clip_x0
from diffusion_edu.samplers import ddim, ddpm_ancestral, euler_maruyama, predictor_corrector, probability_flow
from diffusion_edu.schedules import DDPMSchedule, alphas_cumprod, ddpm_betas, time_grid
from diffusion_edu.sde import VESDE, VPSDE, BrownianSDE, SubVPSDE
from diffusion_edu.toy import GaussianMixture

M, S0 = torch.tensor([1.0, -0.5], dtype=torch.float64), 0.5
GAUSS = GaussianMixture(M[None], stds=S0)


def exact_flow_map(sde, xT, t_end):
    """Probability-flow map for N(m, s0^2 I) data: the ODE is linear and keeps each point's
    standardised position, x_t = alpha_t m + sqrt(v_t / v_T) (x_T - alpha_T m)."""
    aT, sT = (c.item() for c in sde.marginal(sde.T))
    a, s = (c.item() for c in sde.marginal(t_end))
    vT, v = aT**2 * S0**2 + sT**2, a**2 * S0**2 + s**2
    return a * M + math.sqrt(v / vT) * (xT - aT * M)


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE(0.01, 10.0), BrownianSDE(T=2.0)], ids=repr)
def test_probability_flow_heun_matches_exact_map(sde):
    """Heun with 200 steps vs the exact linear map; Heun's global error is O(h^2), measured
    below 1e-3 here (the check fails if the ODE drift loses its 1/2 or its sign)."""
    xT = torch.randn(100, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    t_end = 0.01 * sde.T
    times = torch.linspace(sde.T, t_end, 201, dtype=torch.float64)
    x = probability_flow(GAUSS.denoiser(sde), xT, times, method="heun")
    assert (x - exact_flow_map(sde, xT, t_end)).abs().max() < 1e-3


def test_heun_is_second_order_and_euler_first():
    """Halving the step divides the error by ~4 for Heun and ~2 for Euler."""
    sde = VPSDE()
    xT = torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = exact_flow_map(sde, xT, 0.05)
    err = {}
    for method in ("euler", "heun"):
        err[method] = [
            (probability_flow(GAUSS.denoiser(sde), xT, torch.linspace(1, 0.05, n + 1, dtype=torch.float64),
                              method=method) - ref).abs().max().item()
            for n in (40, 80)
        ]
    assert 1.7 < err["euler"][0] / err["euler"][1] < 2.3
    assert 3.4 < err["heun"][0] / err["heun"][1] < 4.6


@pytest.mark.parametrize("sampler", ["em", "pc"])
def test_stochastic_samplers_recover_gaussian(sampler):
    """Sample N(m, 0.25 I) from the VP prior with the exact score; mean within 5 SE and std
    within 5 SE plus the measured discretisation bias (< 0.01 at 500 steps)."""
    sde, n = VPSDE(), 20_000
    gen = torch.Generator().manual_seed(0)
    x = sde.prior_sample((n, 2), generator=gen).double()
    if sampler == "em":
        x = euler_maruyama(GAUSS.denoiser(sde), x, time_grid(sde, 500), generator=gen)
    else:
        x = predictor_corrector(GAUSS.denoiser(sde), x, time_grid(sde, 250), generator=gen)
    assert (x.mean(0) - M).abs().max() < 5 * S0 / math.sqrt(n)
    assert (x.std(0) - S0).abs().max() < 5 * S0 / math.sqrt(2 * n) + 0.01


def test_ddpm_and_ddim_recover_gaussian():
    sched = DDPMSchedule(alphas_cumprod(ddpm_betas(1000, "linear")))
    den = GAUSS.denoiser(sched)
    n = 20_000
    gen = torch.Generator().manual_seed(0)
    xT = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    for x in (ddpm_ancestral(den, xT, time_grid(sched, 1000, "leading"), generator=gen),
              ddim(den, xT, time_grid(sched, 100, "leading"))):
        assert (x.mean(0) - M).abs().max() < 5 * S0 / math.sqrt(n) + 0.005
        assert (x.std(0) - S0).abs().max() < 5 * S0 / math.sqrt(2 * n) + 0.01


def test_ddim_eta0_is_deterministic_and_converges_to_the_flow():
    """DDIM with eta = 0 is a first-order discretisation of the probability-flow ODE: against
    the exact Gaussian flow map between the schedule's endpoints, its error halves each time
    the number of steps doubles (measured ratios 1.97-1.99), and is < 1e-2 at 1000 steps."""
    abar = alphas_cumprod(ddpm_betas(1000, "linear"))
    den = GAUSS.denoiser(DDPMSchedule(abar))
    xT = torch.randn(200, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    vT = abar[-1] * S0**2 + 1 - abar[-1]
    exact = M + S0 / vT.sqrt() * (xT - abar[-1].sqrt() * M)

    def grid(k):  # indices 999, 999 - k, ..., then the data (time -1)
        return torch.cat([torch.arange(999, -1, -k), torch.tensor([-1])]).double()

    errs = [(ddim(den, xT, grid(k)) - exact).abs().max().item() for k in (4, 2, 1)]
    assert errs[-1] < 1e-2
    assert all(1.8 < a / b < 2.2 for a, b in zip(errs, errs[1:]))
    x = ddim(den, xT, grid(4))
    assert torch.equal(x, ddim(den, xT, grid(4)))


def test_callbacks_and_reproducibility():
    sde = VPSDE()
    seen = []
    x = sde.prior_sample((8, 2), generator=torch.Generator().manual_seed(0))
    a = euler_maruyama(GAUSS.denoiser(sde), x, time_grid(sde, 10), generator=torch.Generator().manual_seed(1),
                       callback=lambda i, t, xi: seen.append((i, t)))
    b = euler_maruyama(GAUSS.denoiser(sde), x, time_grid(sde, 10), generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and [i for i, _ in seen] == list(range(10))
    assert seen[-1][1] == pytest.approx(sde.t_eps)


# -- equivalence with an independent implementation -----------------------------------------
def _gm():
    return GaussianMixture([[-1.0, 0.5], [1.0, -0.5]], stds=[0.3, 0.5])


def test_ddpm_ancestral_matches_diffusers():
    diffusers = pytest.importorskip("diffusers")
    N = 50
    sched = diffusers.DDPMScheduler(num_train_timesteps=N, beta_schedule="linear", beta_start=1e-4 * 20,
                                    beta_end=0.02 * 20, clip_sample=False, variance_type="fixed_small")
    sched.set_timesteps(N)
    ours_sched = DDPMSchedule(sched.alphas_cumprod.double())
    den = _gm().denoiser(ours_sched)
    xT = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    x = xT.clone()
    g = torch.Generator().manual_seed(5)
    for t in sched.timesteps:
        x = sched.step(den.eps(x, float(t)), t, x, generator=g).prev_sample
    ours = ddpm_ancestral(den, xT.clone(), time_grid(ours_sched, N, "leading"),
                          generator=torch.Generator().manual_seed(5))
    assert torch.allclose(ours, x, atol=1e-4)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_matches_diffusers(eta):
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False,
                                    set_alpha_to_one=True, timestep_spacing="leading", steps_offset=0)
    sched.set_timesteps(25)
    ours_sched = DDPMSchedule(sched.alphas_cumprod.double())
    den = _gm().denoiser(ours_sched)
    xT = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    x = xT.clone()
    g = torch.Generator().manual_seed(5)
    for t in sched.timesteps:
        x = sched.step(den.eps(x, float(t)), t, x, eta=eta, generator=g).prev_sample
    ts = time_grid(ours_sched, 25, "leading")
    assert ts[:-1].tolist() == sched.timesteps.tolist()  # the same timesteps, then the data
    ours = ddim(den, xT.clone(), ts, eta=eta, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(ours, x, atol=1e-4)


def test_bad_input():
    sde = VPSDE()
    den = GAUSS.denoiser(sde)
    grid = time_grid(sde, 5)
    with pytest.raises(ValueError, match="method must be"):
        probability_flow(den, torch.zeros(2, 2), grid, method="rk5")
    with pytest.raises(ValueError, match="x must be finite"):
        euler_maruyama(den, torch.full((2, 2), float("nan")), grid)
    sched = DDPMSchedule(alphas_cumprod(ddpm_betas(10, "linear")))
    ddpm_den = GAUSS.denoiser(sched)
    with pytest.raises(ValueError, match="ts must decrease"):
        ddim(ddpm_den, torch.zeros(2, 2), torch.tensor([0.0, 5.0]))
    with pytest.raises(ValueError, match="ts must decrease"):
        ddim(ddpm_den, torch.zeros(2, 2), torch.tensor([5.0, 5.0, -1.0]))
    with pytest.raises(ValueError, match=r"ts must lie in \[-1.0, 9.0\]"):
        ddim(ddpm_den, torch.zeros(2, 2), torch.tensor([10.0, 5.0]))  # index 10 of a 10-step chain
    with pytest.raises(ValueError, match="ts must be a 1-D"):
        ddpm_ancestral(ddpm_den, torch.zeros(2, 2), torch.tensor([[5.0, -1.0]]))
    with pytest.raises(ValueError, match="alphas_cumprod"):
        DDPMSchedule(torch.tensor([0.5, 0.9]))  # increasing
    with pytest.raises(ValueError, match="steps must be a positive int"):
        time_grid(sde, 0)
    with pytest.raises(ValueError, match=r"ts must lie in \[0.0, 1.0\]"):
        euler_maruyama(den, torch.zeros(2, 2), torch.tensor([2.0, 0.5]))
    with pytest.raises(ValueError, match="snr"):
        predictor_corrector(den, torch.zeros(2, 2), grid, snr=0)
    with pytest.raises(ValueError, match="denoiser must be a Denoiser"):
        euler_maruyama(GAUSS.score_fn(sde), torch.zeros(2, 2), grid)  # a bare function is not a model


def test_clip_x0_keeps_the_implied_clean_image_in_range(gen):
    sched = DDPMSchedule(alphas_cumprod(ddpm_betas(100, "cosine")))
    abar = sched.alphas_cumprod
    net = lambda x, n: 3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))  # noqa: E731
    den = Denoiser(net, sched, "eps")
    x, n = torch.randn(64, 1, 4, 4, generator=gen), torch.randint(100, (64,), generator=gen)
    a = abar[n].float().view(-1, 1, 1, 1)
    plain, clipped = den.eps(x, n.double()), clip_x0(den).eps(x, n.double())
    x0_plain = (x - (1 - a).sqrt() * plain) / a.sqrt()
    x0_clip = (x - (1 - a).sqrt() * clipped) / a.sqrt()
    assert x0_clip.abs().max() <= 1 + 1e-4  # float32 rounding of the round trip
    torch.testing.assert_close(x0_clip, x0_plain.clamp(-1, 1), rtol=1e-4, atol=1e-4)
    inside = x0_plain.abs() < 1
    torch.testing.assert_close(clipped[inside], plain[inside], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(clip_x0(den).x0(x, n.double()), den.x0(x, n.double()).clamp(-1, 1))
    with pytest.raises(ValueError, match="value_range"):
        clip_x0(den, (1.0, -1.0))
