"""Denoising score matching: weightings equal each prediction's own MSE; closed-form minima."""

import math

import pytest
import torch

from diffusion_edu import parameterization as P
from diffusion_edu.denoiser import Denoiser
from diffusion_edu.flow_matching import StraightPath
from diffusion_edu.losses import WEIGHTINGS, ddpm_loss, dsm_loss, loss_weight
from diffusion_edu.schedules import DDPMSchedule, alphas_cumprod, ddpm_betas
from diffusion_edu.sde import VESDE, VPSDE, SubVPSDE
from diffusion_edu.toy import GaussianMixture


def _fixed_net(seed):
    """A deterministic 'network': a fixed random linear map of x plus a function of t."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(2, 2, generator=g) * 0.5
    return lambda x, t: x @ W + torch.sin(3 * t)[:, None]


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE(0.05, 10.0), StraightPath()], ids=repr)
@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "score", "velocity"])
def test_default_weighting_is_plain_mse_on_own_target(sde, prediction):
    """With the default weighting, dsm_loss equals ||net - target||^2 computed here from the
    same x_t, eps and the prediction's definition (x0, v = alpha eps - sigma x0, -eps/sigma, the
    path velocity alpha' x0 + sigma' eps by a central difference of x_t). A float64 model keeps a
    float64 loss (float32 is the floor, for bf16 autocast)."""
    net = _fixed_net(0)
    x0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = torch.linspace(0.05, 0.95, 64, dtype=torch.float64)
    loss = dsm_loss(lambda x, tt: net(x.float(), tt.float()).double(), x0, sde, prediction=prediction, t=t,
                    generator=torch.Generator().manual_seed(2), reduce=False)
    xt, eps = sde.perturb(x0, t, generator=torch.Generator().manual_seed(2))
    a, s = (c[:, None] for c in sde.marginal(t))
    h = 1e-6  # the path velocity by a central difference of x_t in t (not the library's derivatives)
    u = (sde.perturb(x0, t + h, noise=eps)[0] - sde.perturb(x0, t - h, noise=eps)[0]) / (2 * h)
    target = {"eps": eps, "x0": x0, "v": a * eps - s * x0, "score": -eps / s, "velocity": u}[prediction]
    mine = (net(xt.float(), t.float()).double() - target).pow(2).mean(1)
    assert loss.dtype == torch.float64
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
    expected = (abar * s0**2 / (abar * s0**2 + 1 - abar)).mean().item()
    per = ddpm_loss(gm.eps_fn(abar), x0, abar, generator=gen, reduce=False)  # the schedule as alphas_cumprod
    per_sched = ddpm_loss(gm.eps_fn(abar), x0, DDPMSchedule(abar), generator=torch.Generator().manual_seed(7),
                          reduce=False)  # or as a DDPMSchedule
    for p in (per, per_sched):
        assert abs(p.mean().item() - expected) < 5 * p.std().item() / math.sqrt(n)


@pytest.mark.parametrize("sde", [VPSDE(), VESDE(0.05, 10.0), StraightPath()], ids=repr)
def test_weightings_are_the_mse_of_each_prediction(sde):
    """The table of the module docstring, checked through the networks rather than through
    loss_weight: an eps network and the x0 / v / score / velocity networks that make exactly its
    predictions (converted by a Denoiser) have own-target MSEs equal to the eps network's loss
    under the weighting of the same name; "likelihood" is g(t)^2 times the score MSE (lambda = g^2)."""
    eps_net = _fixed_net(3)
    eps_den = Denoiser(lambda x, t: eps_net(x.float(), t.float()).double(), sde, "eps")
    x0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = torch.linspace(0.05, 0.95, 64, dtype=torch.float64)
    kw = dict(t=t, reduce=False)

    def loss_of(prediction, net, weighting=None):
        return dsm_loss(net, x0, sde, prediction=prediction, weighting=weighting,
                        generator=torch.Generator().manual_seed(2), **kw)

    as_net = {"eps": eps_den.eps, "x0": eps_den.x0, "v": lambda x, tt: P.x0_eps_to_v(*eps_den.x0_eps(x, tt),
                                                                                   *sde.marginal(tt)),
              "score": eps_den.score, "velocity": eps_den.velocity}
    # both sides in float64 from different targets: round-off, rtol 1e-10 (measured < 3e-15)
    for prediction, net in as_net.items():
        own = loss_of(prediction, net)  # plain MSE on the prediction's own target
        assert torch.allclose(own, loss_of("eps", eps_den.eps, weighting=prediction), rtol=1e-10, atol=0), prediction
    if hasattr(sde, "diffusion"):
        g2 = sde.diffusion(t) ** 2
        assert torch.allclose(loss_of("eps", eps_den.eps, weighting="likelihood"), g2 * loss_of("score", eps_den.score),
                              rtol=1e-10, atol=0)
    assert set(WEIGHTINGS) == set(as_net) | {"likelihood"}  # every weighting of the table is checked above


def test_bad_input():
    sde = VPSDE()
    with pytest.raises(ValueError, match="prediction must be one of"):
        dsm_loss(lambda x, t: x, torch.zeros(4, 2), sde, prediction="noise")
    with pytest.raises(ValueError, match="x0 must be finite"):
        dsm_loss(lambda x, t: x, torch.full((4, 2), float("inf")), sde)
    with pytest.raises(ValueError, match="weighting must be one of"):
        dsm_loss(lambda x, t: x, torch.zeros(4, 2), sde, weighting="snr")
    with pytest.raises(ValueError, match="schedule must be a Schedule"):
        dsm_loss(lambda x, t: x, torch.zeros(4, 2), "vp")
    with pytest.raises(ValueError, match="shape of x"):
        dsm_loss(lambda x, t: x[:, :1], torch.zeros(4, 2), sde)
    with pytest.raises(ValueError, match="label_dropout needs labels"):
        dsm_loss(lambda x, t: x, torch.zeros(4, 2), sde, label_dropout=0.1)
    with pytest.raises(ValueError, match="alphas_cumprod"):
        ddpm_loss(lambda x, t: x, torch.zeros(4, 2), torch.tensor([0.5, 0.9]))  # increasing
