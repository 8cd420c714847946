"""Gaussian mixtures: exact scores against autograd, Tweedie's formula, moments, data sets."""

import math

import pytest
import torch

from diffusion_edu.schedules import DDPMSchedule
from diffusion_edu.sde import VPSDE, BrownianSDE
from diffusion_edu.toy import (
    GaussianMixture, checkerboard, eight_gaussians, eight_gaussians_mixture, swiss_roll, two_moons,
)


@pytest.fixture
def gm():
    return GaussianMixture([[-2.0, 0.0], [1.0, 1.5], [1.0, -1.0]], stds=[0.3, 0.6, 0.45], weights=[0.5, 0.3, 0.2])


@pytest.mark.parametrize("alpha,sigma", [(1.0, 0.0), (1.0, 0.5), (0.8, 0.6), (0.05, 0.999)])
def test_score_is_gradient_of_log_prob(gm, alpha, sigma, gen):
    """Analytic score == autograd of log p_t, to float64 round-off."""
    x = 3 * torch.randn(200, 2, generator=gen, dtype=torch.float64)
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(gm.log_prob(x, alpha, sigma).sum(), x)
    assert torch.allclose(gm.score(x.detach(), alpha, sigma), grad, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("alpha,sigma", [(1.0, 0.3), (0.6, 0.8), (0.1, 0.995)])
def test_tweedie_denoiser(gm, alpha, sigma, gen):
    """E[x0 | xt] computed per component equals (x + sigma^2 score) / alpha."""
    x = 2 * torch.randn(300, 2, generator=gen, dtype=torch.float64)
    tweedie = (x + sigma**2 * gm.score(x, alpha, sigma)) / alpha
    assert torch.allclose(gm.denoise(x, alpha, sigma), tweedie, atol=1e-9)


def test_single_gaussian_closed_form():
    g = GaussianMixture([[1.0, -2.0]], stds=0.5)
    x = torch.randn(10, 2, dtype=torch.float64)
    a, s = 0.7, 0.4
    v = a**2 * 0.25 + s**2
    assert torch.allclose(g.score(x, a, s), -(x - a * torch.tensor([1.0, -2.0], dtype=torch.float64)) / v)
    lp = -0.5 * ((x - a * torch.tensor([1.0, -2.0], dtype=torch.float64)) ** 2).sum(1) / v - math.log(2 * math.pi * v)
    assert torch.allclose(g.log_prob(x, a, s), lp)


def test_density_integrates_to_one(gm):
    """Riemann sum on [-6, 6]^2 with spacing 0.02; the tails beyond hold < 1e-10 and the
    midpoint-rule error for these smooth densities is < 1e-6."""
    xs = torch.linspace(-6, 6, 601, dtype=torch.float64)
    X, Y = torch.meshgrid(xs, xs, indexing="xy")
    pts = torch.stack([X.ravel(), Y.ravel()], 1)
    h = (xs[1] - xs[0]).item()
    for a, s in [(1.0, 0.0), (0.8, 0.6)]:
        total = gm.log_prob(pts, a, s).exp().sum().item() * h * h
        assert total == pytest.approx(1.0, abs=1e-5)


def test_sample_moments(gm, gen):
    """Sample mean and covariance within 5 standard errors (n = 100k; the largest variance
    is about 2.4, so SE(mean) < 0.005 and SE(cov entry) < 0.015)."""
    x = gm.sample(100_000, generator=gen).double()
    assert (x.mean(0) - gm.mean()).abs().max() < 5 * 0.005
    assert (torch.cov(x.T) - gm.cov()).abs().max() < 5 * 0.015


def test_score_fn_and_denoiser_use_the_sde(gm):
    sde = VPSDE()
    x = torch.randn(7, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.full((7,), 0.4, dtype=torch.float64)  # float64 throughout: the same alpha, sigma bit for bit
    a, s = sde.marginal(t)
    assert torch.allclose(gm.score_fn(sde)(x, t), gm.score(x, a, s))
    assert torch.allclose(gm.denoiser(sde).score(x, t), gm.score(x, a, s))
    assert torch.allclose(gm.denoiser(sde).x0(x, t), gm.denoise(x, a, s))
    assert gm.denoiser(sde).prediction == "x0" and gm.denoiser(sde).schedule is sde
    assert torch.allclose(gm.log_prob_fn(BrownianSDE())(x, 0.5), gm.log_prob(x, 1.0, 1.0))


def test_eps_fn_is_scaled_score(gm):
    abar = torch.linspace(0.99, 0.01, 10, dtype=torch.float64)
    x = torch.randn(5, 2, dtype=torch.float64)
    n = torch.full((5,), 3)
    a = abar[3]
    expected = -(1 - a).sqrt() * gm.score(x, a.sqrt(), (1 - a).sqrt())
    assert torch.allclose(gm.eps_fn(abar)(x, n), expected)
    assert torch.allclose(gm.denoiser(DDPMSchedule(abar)).eps(x, n), expected)


def test_data_sets_shapes_and_reproducibility():
    for fn in (two_moons, swiss_roll, checkerboard, eight_gaussians):
        a = fn(500, generator=torch.Generator().manual_seed(0))
        b = fn(500, generator=torch.Generator().manual_seed(0))
        assert a.shape == (500, 2) and torch.equal(a, b) and torch.isfinite(a).all()
    c = checkerboard(2000, generator=torch.Generator().manual_seed(1))
    cells = torch.floor((c + 2) / 1.0).long()  # 4x4 board of unit cells
    assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all()  # only one colour of squares
    m = eight_gaussians_mixture(radius=2.0)
    assert torch.allclose(m.means.norm(dim=1), torch.full((8,), 2.0, dtype=torch.float64))


def test_bad_input_raises():
    with pytest.raises(ValueError, match=r"means must have shape \(K, D\)"):
        GaussianMixture([0.0, 1.0], stds=1.0)
    with pytest.raises(ValueError, match="stds must be > 0"):
        GaussianMixture([[0.0]], stds=0.0)
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture([[0.0], [1.0]], stds=1.0, weights=[1.0, -1.0])
    g = GaussianMixture([[0.0, 0.0]], stds=1.0)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 2\)"):
        g.score(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="x must be finite"):
        g.log_prob(torch.tensor([[float("nan"), 0.0]]))
    with pytest.raises(ValueError, match="n must be a positive int"):
        g.sample(0)
    with pytest.raises(ValueError, match="schedule must be a Schedule"):
        g.denoiser("vp")


# -- full covariances ------------------------------------------------------------------------
@pytest.fixture
def gm_full():
    covs = [[[0.5, 0.3], [0.3, 0.25]], [[0.05, 0.0], [0.0, 0.6]], [[0.2, -0.15], [-0.15, 0.2]]]
    return GaussianMixture([[-1.5, 0.0], [1.0, 1.0], [1.0, -1.0]], covs=covs, weights=[0.5, 0.3, 0.2])


@pytest.mark.parametrize("alpha,sigma", [(1.0, 0.0), (1.0, 0.5), (0.8, 0.6), (0.05, 0.999)])
def test_full_covariance_score_is_gradient_of_log_prob(gm_full, alpha, sigma, gen):
    x = 3 * torch.randn(200, 2, generator=gen, dtype=torch.float64)
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(gm_full.log_prob(x, alpha, sigma).sum(), x)
    assert torch.allclose(gm_full.score(x.detach(), alpha, sigma), grad, atol=1e-10, rtol=1e-9)


def test_full_covariance_per_example_levels(gm_full, gen):
    """(B,) alpha and sigma: each row equals the scalar evaluation at its own level."""
    x = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    alpha = torch.linspace(0.1, 1.0, 6, dtype=torch.float64)
    sigma = torch.sqrt(1 - alpha**2)
    batched = gm_full.score(x, alpha, sigma)
    for i in range(6):
        assert torch.allclose(batched[i], gm_full.score(x[i : i + 1], alpha[i], sigma[i])[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("alpha,sigma", [(1.0, 0.3), (0.6, 0.8), (0.1, 0.995)])
def test_full_covariance_tweedie_denoiser(gm_full, alpha, sigma, gen):
    """Per-component posterior means mu_k + alpha C_k S_k^{-1} (x - alpha mu_k), averaged with the
    responsibilities, equal Tweedie's (x + sigma^2 score) / alpha."""
    x = 2 * torch.randn(300, 2, generator=gen, dtype=torch.float64)
    tweedie = (x + sigma**2 * gm_full.score(x, alpha, sigma)) / alpha
    assert torch.allclose(gm_full.denoise(x, alpha, sigma), tweedie, rtol=0, atol=1e-9)


def test_full_covariance_single_gaussian_closed_form(gen):
    """One component: log_prob against torch's MultivariateNormal with S = alpha^2 C + sigma^2 I,
    score -S^{-1}(x - alpha mu) and posterior mean by a linear solve."""
    mu = torch.tensor([1.0, -2.0], dtype=torch.float64)
    C = torch.tensor([[1.0, 0.8], [0.8, 0.9]], dtype=torch.float64)
    g = GaussianMixture(mu[None], covs=C)
    x = torch.randn(10, 2, generator=gen, dtype=torch.float64)
    a, s = 0.7, 0.4
    S = a**2 * C + s**2 * torch.eye(2, dtype=torch.float64)
    mvn = torch.distributions.MultivariateNormal(a * mu, covariance_matrix=S)
    assert torch.allclose(g.log_prob(x, a, s), mvn.log_prob(x), rtol=0, atol=1e-12)
    assert torch.allclose(g.score(x, a, s), -torch.linalg.solve(S, (x - a * mu).T).T, rtol=0, atol=1e-12)
    post = mu + (a * C @ torch.linalg.solve(S, (x - a * mu).T)).T
    assert torch.allclose(g.denoise(x, a, s), post, rtol=0, atol=1e-12)


def test_isotropic_covs_reproduce_stds(gm, gen):
    """covs = s_k^2 I gives the isotropic mixture's densities, scores, denoisers and moments."""
    full = GaussianMixture(gm.means, covs=gm.component_covs(), weights=gm.weights)
    x = 2 * torch.randn(100, 2, generator=gen, dtype=torch.float64)
    for a, s in [(1.0, 0.0), (0.8, 0.6)]:
        assert torch.allclose(full.log_prob(x, a, s), gm.log_prob(x, a, s), rtol=0, atol=1e-12)
        assert torch.allclose(full.score(x, a, s), gm.score(x, a, s), rtol=0, atol=1e-12)
        assert torch.allclose(full.denoise(x, a, s), gm.denoise(x, a, s), rtol=0, atol=1e-12)
    assert torch.allclose(full.cov(), gm.cov(), rtol=0, atol=1e-14)
    assert gm.covs is None and full.stds is None


def test_full_covariance_density_and_moments(gm_full, gen):
    """Riemann sum on [-6, 6]^2 as above; sample moments within 5 SE (n = 100k; the largest
    variance is about 1.6: SE(mean) < 0.004, SE(cov entry) < 0.01)."""
    xs = torch.linspace(-6, 6, 601, dtype=torch.float64)
    X, Y = torch.meshgrid(xs, xs, indexing="xy")
    pts = torch.stack([X.ravel(), Y.ravel()], 1)
    h = (xs[1] - xs[0]).item()
    for a, s in [(1.0, 0.0), (0.8, 0.6)]:
        assert gm_full.log_prob(pts, a, s).exp().sum().item() * h * h == pytest.approx(1.0, abs=1e-5)
    x = gm_full.sample(100_000, generator=gen).double()
    assert (x.mean(0) - gm_full.mean()).abs().max() < 5 * 0.004
    assert (torch.cov(x.T) - gm_full.cov()).abs().max() < 5 * 0.01


def test_full_covariance_bad_input():
    with pytest.raises(ValueError, match="exactly one of stds"):
        GaussianMixture([[0.0, 0.0]])
    with pytest.raises(ValueError, match="exactly one of stds"):
        GaussianMixture([[0.0, 0.0]], stds=1.0, covs=torch.eye(2))
    with pytest.raises(ValueError, match="covs must have shape"):
        GaussianMixture([[0.0, 0.0]], covs=torch.eye(3))
    with pytest.raises(ValueError, match="covs must be symmetric"):
        GaussianMixture([[0.0, 0.0]], covs=[[1.0, 0.5], [0.0, 1.0]])
    with pytest.raises(ValueError, match="covs must be positive definite"):
        GaussianMixture([[0.0, 0.0]], covs=[[1.0, 1.0], [1.0, 1.0]])
