"""DDPM schedules against their formulas and against diffusers on the same inputs."""

import math

import pytest
import torch

from diffusion_edu.schedules import DDPMSchedule, alphas_cumprod, ddpm_betas, time_grid
from diffusion_edu.sde import VPSDE


def test_linear_betas():
    b = ddpm_betas(1000, "linear")
    assert b.shape == (1000,) and b[0].item() == 1e-4 and b[-1].item() == pytest.approx(0.02)
    assert torch.allclose(b.diff(), torch.full((999,), (0.02 - 1e-4) / 999, dtype=torch.float64))


def test_cosine_betas_follow_nichol_dhariwal():
    """abar_n / abar_0-style check: prod (1 - beta) equals f(n)/f(0) with
    f(t) = cos^2(((t/N + s)/(1 + s)) pi/2) wherever the 0.999 clip is inactive."""
    N, s = 1000, 0.008
    b = ddpm_betas(N, "cosine")
    f = lambda t: math.cos((t / N + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    abar = alphas_cumprod(b)
    unclipped = b < 0.999
    assert unclipped[:-1].all() and b[-1].item() == 0.999  # only the last step is clipped
    ref = torch.tensor([f(n + 1) / f(0) for n in range(N)], dtype=torch.float64)
    assert torch.allclose(abar[:-1], ref[:-1], rtol=1e-10)
    # Without the square the schedule would be a different one (a known error in write-ups).
    no_square = torch.tensor([math.cos((n / N + s) / (1 + s) * math.pi / 2) / math.cos(s / (1 + s) * math.pi / 2) for n in range(1, N)])
    assert (abar[:-1].float() - no_square).abs().max() > 0.1


def test_alphas_cumprod():
    b = torch.tensor([0.1, 0.2, 0.5], dtype=torch.float64)
    assert torch.allclose(alphas_cumprod(b), torch.tensor([0.9, 0.72, 0.36], dtype=torch.float64))
    with pytest.raises(ValueError, match="betas"):
        alphas_cumprod(torch.tensor([0.1, 1.0]))


def test_sampling_grids():
    t = time_grid(VPSDE(), 10)  # uniform from T = 1 to t_eps = 1e-3 (the old uniform_times(10, 1, 1e-3))
    assert len(t) == 11 and t[0] == 1.0 and t[-1].item() == pytest.approx(1e-3) and (t.diff() < 0).all()
    assert torch.allclose(t.diff(), torch.full((10,), -(1 - 1e-3) / 10, dtype=torch.float64))  # equal steps
    sched = DDPMSchedule(alphas_cumprod(ddpm_betas(1000)))
    leading = time_grid(sched, 50, "leading")  # the 50 DDIM indices, then the data (-1)
    assert leading.tolist() == list(range(980, -1, -20)) + [-1]
    full = time_grid(sched, 1000, "leading")  # the whole DDPM chain N-1, ..., 0, then the data
    assert full.tolist() == list(range(999, -1, -1)) + [-1]
    with pytest.raises(ValueError, match="steps"):
        time_grid(DDPMSchedule(alphas_cumprod(ddpm_betas(10))), 11, "leading")
    with pytest.raises(ValueError, match="steps"):
        time_grid(VPSDE(), 0)
    with pytest.raises(ValueError, match="kind"):
        ddpm_betas(10, "quadratic")
    with pytest.raises(ValueError, match="spacing"):
        time_grid(VPSDE(), 10, "quadratic")
    with pytest.raises(ValueError, match="spacing"):
        time_grid(VPSDE(), 10, "leading")  # integer spacings need a DDPMSchedule


@pytest.mark.parametrize("kind,name", [("linear", "linear"), ("cosine", "squaredcos_cap_v2")])
def test_betas_match_diffusers(kind, name):
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=name)
    assert torch.allclose(ddpm_betas(1000, kind).float(), sched.betas, rtol=1e-5, atol=1e-7)
    assert torch.allclose(alphas_cumprod(ddpm_betas(1000, kind)).float(), sched.alphas_cumprod, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
def test_ddpm_grids_match_diffusers_timesteps(spacing):
    """time_grid(DDPMSchedule(abar), k, spacing) without its last point (-1, the data) is
    diffusers' DDIMScheduler timesteps for the same spacing (the old ddim_timesteps was the
    "leading" case)."""
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing, steps_offset=0)
    ours = DDPMSchedule(alphas_cumprod(ddpm_betas(1000)))
    for k in (7, 50, 333):
        sched.set_timesteps(k)
        grid = time_grid(ours, k, spacing)
        assert grid[:-1].tolist() == sched.timesteps.tolist() and grid[-1] == -1
