"""Guidance against exact truth: Bayes' rule with the exact classifier of a Gaussian mixture,
the classifier-free combination on toy linear nets, and DPS against the ancestral sampler."""

import math

import pytest
import torch

from diffusion_edu.guidance import (cfg_eps, classifier_guided_eps, classifier_log_prob_grad, dps,
                                    mask_operator, measure, measurement_loss, mixture_classifier,
                                    random_mask)
from diffusion_edu.samplers import ddim, ddpm_ancestral
from diffusion_edu.schedules import alphas_cumprod, ddim_timesteps, ddpm_betas
from diffusion_edu.toy import GaussianMixture

ABAR = alphas_cumprod(ddpm_betas(200, "cosine"))
ISO = GaussianMixture([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.0]], stds=[0.3, 0.5, 0.8], weights=[0.5, 0.3, 0.2])
FULL = GaussianMixture([[-1.5, 0.0], [1.5, 0.5]], covs=[[[1.0, 0.6], [0.6, 0.8]], [[0.3, -0.1], [-0.1, 0.5]]])


def component(gm, k):
    """Class ``k`` of the mixture alone: p(x | y = k)."""
    if gm.covs is not None:
        return GaussianMixture(gm.means[k:k + 1], covs=gm.covs[k:k + 1])
    return GaussianMixture(gm.means[k:k + 1], stds=gm.stds[k:k + 1])


@pytest.mark.parametrize("gm", [ISO, FULL], ids=["isotropic", "full"])
@pytest.mark.parametrize("n", [0, 50, 120, 199])
def test_classifier_guidance_with_exact_classifier_is_the_conditional_model(gm, n, gen):
    """Bayes' rule for scores: eps - sqrt(1 - abar) grad log p(k | x_n) is the exact eps of
    component k. In float64 both sides agree to round-off (~1e-12; allow 1e-8)."""
    x = 3 * torch.randn(64, 2, generator=gen, dtype=torch.float64)
    nb = torch.full((64,), n)
    for k in range(len(gm.weights)):
        guided = classifier_guided_eps(gm.eps_fn(ABAR), mixture_classifier(gm, ABAR), k, 1.0, ABAR)
        exact = component(gm, k).eps_fn(ABAR)(x, nb)
        assert (guided(x, nb) - exact).abs().max() < 1e-8


def test_classifier_guidance_in_float32_to_1e_5(gen):
    """The same identity in float32 (network precision): round-off ~1e-7 relative; allow 1e-5."""
    x = 2 * torch.randn(256, 2, generator=gen)
    nb = torch.randint(len(ABAR), (256,), generator=gen)
    y = torch.randint(3, (256,), generator=gen)
    guided = classifier_guided_eps(ISO.eps_fn(ABAR), mixture_classifier(ISO, ABAR), y, 1.0, ABAR)(x, nb)
    exact = torch.stack([component(ISO, int(k)).eps_fn(ABAR)(x[i:i + 1], nb[i:i + 1])[0]
                         for i, k in enumerate(y)])
    assert guided.dtype == torch.float32
    assert (guided - exact).abs().max() < 1e-5


def test_classifier_gradient_matches_finite_differences(gen):
    """grad_x log p(y | x_n) against central differences (h = 1e-5, float64: error ~1e-9)."""
    clf = mixture_classifier(ISO, ABAR)
    x = torch.randn(8, 2, generator=gen, dtype=torch.float64)
    nb = torch.full((8,), 40)
    grad = classifier_log_prob_grad(clf, x, nb, 2)
    log_p = lambda z: torch.log_softmax(clf(z, nb), 1)[:, 2]
    h = 1e-5
    fd = torch.stack([(log_p(x + h * e) - log_p(x - h * e)) / (2 * h) for e in torch.eye(2, dtype=torch.float64)], 1)
    assert (grad - fd).abs().max() < 1e-6


def test_guidance_scale_zero_is_unguided_and_scale_is_linear(gen):
    """scale 0 returns eps unchanged; the correction is linear in the scale (exact up to round-off)."""
    x = torch.randn(16, 2, generator=gen, dtype=torch.float64)
    nb = torch.full((16,), 80)
    clf, eps_fn = mixture_classifier(ISO, ABAR), ISO.eps_fn(ABAR)
    e = [classifier_guided_eps(eps_fn, clf, 1, w, ABAR)(x, nb) for w in (0.0, 1.0, 3.0)]
    assert torch.equal(e[0], eps_fn(x, nb))
    assert torch.allclose(e[2] - e[0], 3 * (e[1] - e[0]), atol=1e-12)


def test_cfg_with_exact_models_is_classifier_guidance_with_scale_one_plus_w(gen):
    """With eps(x, n, y) the exact class-conditional and eps(x, n, null) the exact mixture,
    (1 + w) eps_y - w eps_null = eps_null - (1 + w) sqrt(1 - abar) grad log p(y | x): CFG with
    weight w is classifier guidance with scale 1 + w and the implicit (Bayes) classifier."""
    null = 3
    conds = [component(ISO, k).eps_fn(ABAR) for k in range(3)] + [ISO.eps_fn(ABAR)]

    def net(x, n, y):
        return torch.stack([conds[int(k)](x[i:i + 1], n[i:i + 1])[0] for i, k in enumerate(y)])

    x = 2 * torch.randn(32, 2, generator=gen, dtype=torch.float64)
    nb = torch.randint(len(ABAR), (32,), generator=gen)
    for w in (0.0, 0.5, 2.0):
        cfg = cfg_eps(net, 0, w, null_label=null)(x, nb)
        cg = classifier_guided_eps(ISO.eps_fn(ABAR), mixture_classifier(ISO, ABAR), 0, 1 + w, ABAR)(x, nb)
        assert (cfg - cg).abs().max() < 1e-8
    assert torch.allclose(cfg_eps(net, 0, 0.0, null_label=null)(x, nb), conds[0](x, nb), atol=0)


class LinearNet(torch.nn.Module):
    """A toy class-conditional eps net: eps = W_y x + b n (one matrix per label, null included)."""

    def __init__(self, dim=3, classes=4, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(classes + 1, dim, dim, generator=g)
        self.b = torch.randn(dim, generator=g)
        self.null_label = classes

    def forward(self, x, n, y=None):
        y = torch.full((len(x),), self.null_label) if y is None else y
        return torch.einsum("bij,bj->bi", self.W[y], x) + self.b * n[:, None].float()


def test_cfg_is_the_stated_linear_combination(gen):
    net = LinearNet()
    x, nb = torch.randn(10, 3, generator=gen), torch.randint(100, (10,), generator=gen)
    y = torch.randint(4, (10,), generator=gen)
    null = torch.full((10,), net.null_label)
    for w in (0.0, 1.0, 4.0):
        expected = (1 + w) * net(x, nb, y) - w * net(x, nb, null)
        assert torch.allclose(cfg_eps(net, y, w)(x, nb), expected, atol=1e-4)  # float32 round-off
    assert torch.equal(cfg_eps(net, y, 0.0)(x, nb), net(x, nb, y))  # w = 0: the conditional model


def test_cfg_drives_a_sampler():
    """cfg_eps plugs into ddim unchanged (shape and finiteness)."""
    net = LinearNet(dim=2, classes=2)
    net.W.mul_(0.1)
    out = ddim(cfg_eps(net, 1, 2.0), ABAR, torch.randn(5, 2), ddim_timesteps(len(ABAR), 10))
    assert out.shape == (5, 2) and torch.isfinite(out).all()


def test_dps_with_zero_step_is_ddpm_ancestral():
    """step_size = 0: the same ancestral chain, noise drawn in the same order: equal to round-off."""
    eps_fn = ISO.eps_fn(ABAR)
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(1))
    a = ddpm_ancestral(eps_fn, ABAR, x, torch.Generator().manual_seed(7))
    b = dps(eps_fn, ABAR, x, measurement_loss(torch.zeros(50, 1), lambda z: z[:, :1]), 0.0,
            torch.Generator().manual_seed(7))
    assert torch.allclose(a, b, atol=1e-6)


def test_dps_on_a_subsequence_is_the_respaced_ancestral_chain():
    """timesteps = t_0 > ... > t_k runs ddpm_ancestral on abar[timesteps]."""
    eps_fn = ISO.eps_fn(ABAR)
    ts = ddim_timesteps(len(ABAR), 20)
    respaced = lambda x, i: eps_fn(x, ts.flip(0)[i])  # index i of the respaced chain -> ts
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(1))
    a = ddpm_ancestral(respaced, ABAR[ts.flip(0)], x, torch.Generator().manual_seed(3))
    b = dps(eps_fn, ABAR, x, lambda z: z.pow(2).sum(1), 0.0, torch.Generator().manual_seed(3), timesteps=ts)
    assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("normalize, step", [(True, 0.05), (False, 0.5)])
def test_dps_moves_samples_to_the_measurement(normalize, step):
    """Gaussian prior N(0, I) in 4-D, measurement y = A x0 + 0.05 z of two coordinates of
    x0 = (1.5, -1, *, *), a fresh y for each of 2000 samples. The exact posterior puts the observed
    coordinates at y +- 0.05, so the samples spread by sqrt(2) 0.05 = 0.071 around (1.5, -1), and
    leaves the other two N(0, 1). Measured over seeds 0-2: observed mean error <= 0.002 (SE 0.0016),
    spread 0.063 (normalized, zeta = 0.05) and 0.051 (constant step 0.5); unobserved |mean| <= 0.018
    (SE 0.022), |std - 1| <= 0.027 (SE 0.016). Unguided samples lie ~1.8 from the measurement.
    Allow 0.02 on the observed mean, spread in (0.03, 0.1), 0.1 (4.5 SE) and 0.08 (5 SE) on the rest."""
    prior = GaussianMixture([[0.0] * 4], stds=1.0)
    g = torch.Generator().manual_seed(0)
    A = lambda x: x[:, :2]
    y = measure(torch.tensor([[1.5, -1.0, 0.0, 0.0]]).expand(2000, 4), A, 0.05, g)
    x = dps(prior.eps_fn(ABAR), ABAR, torch.randn(2000, 4, generator=g), measurement_loss(y, A), step, g,
            normalize=normalize)
    obs = x[:, :2]
    assert (obs.mean(0) - torch.tensor([1.5, -1.0])).abs().max() < 0.02
    assert 0.03 < obs.std(0).min() and obs.std(0).max() < 0.1
    assert x[:, 2:].mean(0).abs().max() < 0.1
    assert (x[:, 2:].std(0) - 1).abs().max() < 0.08


def test_mask_operator_measure_and_loss(gen):
    mask = random_mask((1, 4, 4), 0.5, gen)
    A = mask_operator(mask)
    x = torch.randn(3, 1, 4, 4, generator=gen)
    assert A(x).shape == (3, int(mask.sum()))
    assert torch.equal(A(x), x[:, mask])
    y = measure(x, A, 0.0)
    assert torch.equal(measurement_loss(y, A)(x), torch.zeros(3))
    z = measure(torch.zeros(20_000, 1, 4, 4), A, 0.3, gen)  # noise std: SE 0.3/sqrt(2*20000m)
    assert abs(z.std().item() - 0.3) < 0.01


def test_bad_inputs_raise_value_errors():
    eps_fn, clf = ISO.eps_fn(ABAR), mixture_classifier(ISO, ABAR)
    x, nb = torch.zeros(2, 2), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="scale"):
        classifier_guided_eps(eps_fn, clf, 0, -1.0, ABAR)
    with pytest.raises(ValueError, match="y must"):
        classifier_guided_eps(eps_fn, clf, torch.zeros(3, dtype=torch.long), 1.0, ABAR)(x, nb)
    with pytest.raises(ValueError, match="y must"):
        classifier_guided_eps(eps_fn, clf, 5, 1.0, ABAR)(x, nb)
    with pytest.raises(ValueError, match="null_label"):
        cfg_eps(lambda x, n, y: x, 0, 1.0)
    with pytest.raises(ValueError, match="step_size"):
        dps(eps_fn, ABAR, x, lambda z: z.sum(1), -0.1)
    with pytest.raises(ValueError, match="timesteps"):
        dps(eps_fn, ABAR, x, lambda z: z.sum(1), 0.1, timesteps=[3, 5])
    with pytest.raises(ValueError, match="measurement_loss"):
        dps(eps_fn, ABAR, x, lambda z: z.sum(), 0.1, timesteps=[3, 0])
    with pytest.raises(ValueError, match="mask"):
        mask_operator(torch.zeros(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="x must"):
        mask_operator(torch.ones(2, 2, dtype=torch.bool))(torch.zeros(1, 3, 3))
    with pytest.raises(ValueError, match="gm"):
        mixture_classifier("not a mixture", ABAR)
