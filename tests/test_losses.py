"""Denoising score matching: weightings equal each prediction's own MSE; closed-form minima."""

import math

import pytest
import torch

from diffusion_edu import parameterization as P
from diffusion_edu.losses import WEIGHTINGS, ddpm_loss, dsm_loss, loss_weight
from diffusion_edu.schedules import alphas_cumprod, ddpm_betas
from diffusion_edu.sde import VESDE, VPSDE, SubVPSDE
from diffusion_edu.toy import GaussianMixture


def _fixed_net(seed):
    """A deterministic 'network': a fixed random linear map of x plus a function of t."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(2, 2, generator=g) * 0.5
    return lambda x, t: x @ W + torch.sin(3 * t)[:, None]


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE(0.05, 10.0)], ids=repr)
@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "score"])
def test_default_weighting_is_plain_mse_on_own_target(sde, prediction):
    """With the default weighting, dsm_loss equals ||net - target||^2 computed here from the
    same x_t, eps and the prediction's definition (x0, v = alpha eps - sigma x0, -eps/sigma)."""
    net = _fixed_net(0)
    x0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = torch.linspace(0.05, 0.95, 64, dtype=torch.float64)
    loss = dsm_loss(lambda x, tt: net(x.float(), tt.float()).double(), x0, sde, prediction=prediction, t=t,
                    generator=torch.Generator().manual_seed(2), reduce=False)
    xt, eps = sde.perturb(x0, t, generator=torch.Generator().manual_seed(2))
    a, s = (c[:, None] for c in sde.marginal(t))
    target = {"eps": eps, "x0": x0, "v": a * eps - s * x0, "score": -eps / s}[prediction]
    mine = (net(xt.float(), t.float()).double() - target).pow(2).mean(1)
    assert torch.allclose(loss, mine, rtol=1e-6, atol=1e-8)


def test_likelihood_weighting_is_g2_over_sigma2():
    sde = VPSDE()
    t = torch.tensor([0.1, 0.5, 0.9])
    _, s = sde.marginal(t)
    assert torch.allclose(loss_weight("likelihood", sde, t), sde.diffusion(t) ** 2 / s**2)
    with pytest.raises(ValueError, match="weighting must be one of"):
        loss_weight("snr", sde, t)


def test_exact_score_attains_the_closed_form_minimum():
    """Gaussian data N(0, s^2 I): E[eps | x_t] = sigma x_t / v with v = alpha^2 s^2 + sigma^2,
    so the minimal eps-loss at time t is 1 - sigma^2 / v. Monte Carlo with n = 200k: the
    per-example loss has std < 1.5 * mean, so 5 standard errors < 0.017 * mean."""
    sde, s0, n = VPSDE(), 0.5, 200_000
    gm = GaussianMixture([[0.0, 0.0]], stds=s0)
    gen = torch.Generator().manual_seed(0)
    x0 = gm.sample(n, generator=gen).double()
    for t in (0.1, 0.5):
        a, s = (c.item() for c in sde.marginal(t))
        eps_exact = lambda x, tt: P.score_to_eps(gm.score_fn(sde)(x, tt), sde.marginal(tt)[1])  # noqa: E731
        loss = dsm_loss(eps_exact, x0, sde, t=torch.full((n,), t, dtype=torch.float64), generator=gen)
        v = a**2 * s0**2 + s**2
        assert loss.item() == pytest.approx(1 - s**2 / v, rel=0.017)
        # any other predictor does worse, e.g. the exact score scaled by 0.8
        worse = dsm_loss(lambda x, tt: 0.8 * eps_exact(x, tt), x0, sde, t=torch.full((n,), t, dtype=torch.float64),
                         generator=torch.Generator().manual_seed(0))
        assert worse.item() > loss.item()


def test_ddpm_loss_minimum():
    """L_simple of the exact eps-predictor on N(0, s^2 I) equals the average over n of
    alpha_bar s^2 / (alpha_bar s^2 + 1 - alpha_bar), within 5 Monte Carlo standard errors."""
    s0, n = 0.5, 100_000
    gm = GaussianMixture([[0.0, 0.0]], stds=s0)
    abar = alphas_cumprod(ddpm_betas(100, "linear"))
    gen = torch.Generator().manual_seed(0)
    x0 = gm.sample(n, generator=gen).double()
    per = ddpm_loss(gm.eps_fn(abar), x0, abar, generator=gen, reduce=False)
    expected = (abar * s0**2 / (abar * s0**2 + 1 - abar)).mean().item()
    assert abs(per.mean().item() - expected) < 5 * per.std().item() / math.sqrt(n)


def test_bad_input():
    sde = VPSDE()
    with pytest.raises(ValueError, match="prediction must be one of"):
        dsm_loss(lambda x, t: x, torch.zeros(4, 2), sde, prediction="noise")
    with pytest.raises(ValueError, match="x0 must be finite"):
        dsm_loss(lambda x, t: x, torch.full((4, 2), float("inf")), sde)
    assert set(WEIGHTINGS) >= {"eps", "x0", "v", "score", "likelihood"}
