"""Guidance against exact truth: Bayes' rule with the exact classifier of a Gaussian mixture,
the classifier-free combination on toy linear nets and on exact class-conditional models, and
DPS (classifier guidance with a measurement likelihood) against the ancestral sampler."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffusion_edu.denoiser import Denoiser
from diffusion_edu.flow_matching import StraightPath
from diffusion_edu.guidance import (cfg, classifier_guidance, classifier_log_prob, classifier_log_prob_grad,
                                    dps, dynamic_threshold, gaussian_mixture_posterior, mask_operator, measure,
                                    measurement_loss, mixture_classifier, random_mask)
from diffusion_edu.samplers import ddim, ddpm_ancestral, dpm_solver, heun
from diffusion_edu.schedules import DDPMSchedule, alphas_cumprod, ddpm_betas, time_grid
from diffusion_edu.sde import VPSDE
from diffusion_edu.toy import GaussianMixture

ABAR = alphas_cumprod(ddpm_betas(200, "cosine"))
SCHED = DDPMSchedule(ABAR)
ISO = GaussianMixture([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.0]], stds=[0.3, 0.5, 0.8], weights=[0.5, 0.3, 0.2])
FULL = GaussianMixture([[-1.5, 0.0], [1.5, 0.5]], covs=[[[1.0, 0.6], [0.6, 0.8]], [[0.3, -0.1], [-0.1, 0.5]]])


def component(gm, k):
    """Class ``k`` of the mixture alone: p(x | y = k)."""
    if gm.covs is not None:
        return GaussianMixture(gm.means[k:k + 1], covs=gm.covs[k:k + 1])
    return GaussianMixture(gm.means[k:k + 1], stds=gm.stds[k:k + 1])


def exact_conditional_net(gm, schedule):
    """A class-conditional eps "network" ``net(x, t, y)``: label k < K is the exact eps of
    component k, label K (the null class) the exact eps of the whole mixture."""
    models = [component(gm, k).denoiser(schedule) for k in range(len(gm.weights))] + [gm.denoiser(schedule)]

    def net(x, t, y):
        out = torch.stack([m.eps(x, t) for m in models])  # (K + 1, B, D)
        return out[y, torch.arange(len(x))]

    return net


@pytest.mark.parametrize("gm", [ISO, FULL], ids=["isotropic", "full"])
@pytest.mark.parametrize("n", [0, 50, 120, 199])
def test_classifier_guidance_with_exact_classifier_is_the_conditional_model(gm, n, gen):
    """Bayes' rule for scores: eps - sqrt(1 - abar) grad log p(k | x_n) is the exact eps of
    component k. In float64 both sides agree to round-off (~1e-12; allow 1e-8)."""
    x = 3 * torch.randn(64, 2, generator=gen, dtype=torch.float64)
    clf = mixture_classifier(gm, SCHED)
    for k in range(len(gm.weights)):
        guided = classifier_guidance(gm.denoiser(SCHED), classifier_log_prob(clf, k), 1.0)
        exact = component(gm, k).denoiser(SCHED)
        assert (guided.eps(x, float(n)) - exact.eps(x, float(n))).abs().max() < 1e-8


def test_classifier_guidance_with_exact_classifier_on_a_continuous_schedule(gen):
    """The same identity on the VP SDE, for the score (guidance is not tied to DDPM)."""
    sde = VPSDE()
    x = 2 * torch.randn(64, 2, generator=gen, dtype=torch.float64)
    t = torch.rand(64, generator=gen, dtype=torch.float64) * (1 - 1e-3) + 1e-3
    guided = classifier_guidance(ISO.denoiser(sde), classifier_log_prob(mixture_classifier(ISO, sde), 1), 1.0)
    exact = component(ISO, 1).denoiser(sde)
    assert (guided.score(x, t) - exact.score(x, t)).abs().max() < 1e-8 * (1 + exact.score(x, t).abs().max())


def test_classifier_guidance_in_float32_to_1e_5(gen):
    """The same identity in float32 (network precision): round-off ~1e-7 relative; allow 1e-5."""
    x = 2 * torch.randn(256, 2, generator=gen)
    nb = torch.randint(len(ABAR), (256,), generator=gen).double()
    y = torch.randint(3, (256,), generator=gen)
    guided = classifier_guidance(ISO.denoiser(SCHED), classifier_log_prob(mixture_classifier(ISO, SCHED), y), 1.0)
    out = guided.eps(x, nb)
    exact = torch.stack([component(ISO, int(k)).denoiser(SCHED).eps(x[i:i + 1], nb[i:i + 1])[0]
                         for i, k in enumerate(y)])
    assert out.dtype == torch.float32
    assert (out - exact).abs().max() < 1e-5


def test_classifier_gradient_matches_finite_differences(gen):
    """grad_x log p(y | x_n) against central differences (h = 1e-5, float64: error ~1e-9)."""
    clf = mixture_classifier(ISO, SCHED)
    x = torch.randn(8, 2, generator=gen, dtype=torch.float64)
    nb = torch.full((8,), 40.0, dtype=torch.float64)
    grad = classifier_log_prob_grad(clf, x, nb, 2)
    log_p = lambda z: torch.log_softmax(clf(z, nb), 1)[:, 2]  # noqa: E731
    h = 1e-5
    fd = torch.stack([(log_p(x + h * e) - log_p(x - h * e)) / (2 * h) for e in torch.eye(2, dtype=torch.float64)], 1)
    assert (grad - fd).abs().max() < 1e-6


def test_guidance_weight_zero_is_unguided_and_weight_is_linear(gen):
    """w = 0 returns eps unchanged; the correction is linear in w (exact up to round-off)."""
    x = torch.randn(16, 2, generator=gen, dtype=torch.float64)
    den = ISO.denoiser(SCHED)
    log_p = classifier_log_prob(mixture_classifier(ISO, SCHED), 1)
    e = [classifier_guidance(den, log_p, w).eps(x, 80.0) for w in (0.0, 1.0, 3.0)]
    assert torch.equal(e[0], den.eps(x, 80.0))
    assert torch.allclose(e[2] - e[0], 3 * (e[1] - e[0]), atol=1e-12)


def test_cfg_with_exact_models_is_classifier_guidance_with_the_same_weight(gen):
    """With eps(x, n, y) the exact class-conditional and eps(x, n, null) the exact mixture,
    eps_null + w (eps_y - eps_null) = eps_null - w sqrt(1 - abar) grad log p(y | x): CFG with
    weight w is classifier guidance with weight w and the implicit (Bayes) classifier, for every
    w >= 0 (Ho & Salimans' weight is w - 1). w = 1 is the conditional model exactly, w = 0 the
    unconditional one."""
    null = 3
    den = Denoiser(exact_conditional_net(ISO, SCHED), SCHED, "eps")
    x = 2 * torch.randn(32, 2, generator=gen, dtype=torch.float64)
    nb = torch.randint(len(ABAR), (32,), generator=gen).double()
    cond, uncond = den.bind(y=torch.zeros(32, dtype=torch.long)), den.bind(y=torch.full((32,), null))
    clf = mixture_classifier(ISO, SCHED)
    for w in (0.0, 0.5, 1.0, 2.0, 3.0):
        guided = cfg(cond, uncond, w).eps(x, nb)
        cg = classifier_guidance(ISO.denoiser(SCHED), classifier_log_prob(clf, 0), w).eps(x, nb)
        assert (guided - cg).abs().max() < 1e-8
    assert torch.equal(cfg(cond, uncond, 1.0).eps(x, nb), component(ISO, 0).denoiser(SCHED).eps(x, nb))
    assert torch.equal(cfg(cond, uncond, 0.0).eps(x, nb), ISO.denoiser(SCHED).eps(x, nb))


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
    x, nb = torch.randn(10, 3, generator=gen), torch.randint(100, (10,), generator=gen).double()
    y = torch.randint(4, (10,), generator=gen)
    null = torch.full((10,), net.null_label)
    den = Denoiser(net, SCHED, "eps")
    for w in (0.0, 0.5, 1.0, 4.0):
        expected = net(x, nb, null) + w * (net(x, nb, y) - net(x, nb, null))
        guided = cfg(den.bind(y=y), den.bind(y=null), w)
        assert torch.allclose(guided.eps(x, nb), expected, atol=1e-4)  # float32 round-off
        # two separate models (no doubled batch) give the same combination
        other = Denoiser(lambda x, t, y: net(x, t, y), SCHED, "eps")
        assert torch.allclose(cfg(den.bind(y=y), other.bind(y=null), w).eps(x, nb), expected, atol=1e-4)
    assert torch.equal(cfg(den.bind(y=y), den.bind(y=null), 1.0).eps(x, nb), net(x, nb, y))  # conditional
    assert torch.equal(cfg(den.bind(y=y), den.bind(y=null), 0.0).eps(x, nb), net(x, nb, null))  # unconditional


@pytest.mark.parametrize("sampler", ["ddim", "dpm_solver", "heun"])
def test_cfg_drives_a_sampler(sampler):
    """Guidance is a Denoiser, so every sampler takes it. Sampled with the exact class-conditional
    models: w = 1 gives exactly the conditional model's samples and w = 0 the unconditional
    model's; 0 < w != 1 equals classifier guidance with the exact classifier and weight w through
    the whole sampler (measured <= 3e-11; allow 1e-8); and the class-0 samples (w = 1) sit on
    component 0, N((-2, 0), 0.3^2 I): mean within 5 SE (0.3 / sqrt(2000) = 0.0067) plus 0.01 for
    the discretisation (measured 0.010-0.014, the same noise for the three samplers), std within
    0.03 of 0.3 (measured <= 0.016, DDIM-50). The mean posterior probability of class 0 grows with
    w (measured 0.75-0.79 at w = 0.5, 0.997 at w = 1, 0.9999 at w = 3): guidance sharpens."""
    run = {"ddim": lambda d, x: ddim(d, x, time_grid(SCHED, 50, "leading")),
           "dpm_solver": lambda d, x: dpm_solver(d, x, time_grid(SCHED, 20, "logsnr"), order=2),
           "heun": lambda d, x: heun(d, x, time_grid(SCHED, 40, "uniform"))}[sampler]
    B, null = 2000, 3
    den = Denoiser(exact_conditional_net(ISO, SCHED), SCHED, "eps")
    cond, uncond = den.bind(y=torch.zeros(B, dtype=torch.long)), den.bind(y=torch.full((B,), null))
    xT = torch.randn(B, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s1 = run(cfg(cond, uncond, 1.0), xT)
    assert torch.equal(s1, run(cond, xT))
    assert torch.equal(run(cfg(cond, uncond, 0.0), xT), run(uncond, xT))
    clf = mixture_classifier(ISO, SCHED)
    half = run(cfg(cond, uncond, 0.5), xT)
    guided_by_classifier = classifier_guidance(ISO.denoiser(SCHED), classifier_log_prob(clf, 0), 0.5)
    assert (half - run(guided_by_classifier, xT)).abs().max() < 1e-8
    assert (s1.mean(0) - ISO.means[0]).abs().max() < 5 * 0.3 / math.sqrt(B) + 0.01
    assert (s1.std(0) - 0.3).abs().max() < 0.03
    s3 = run(cfg(cond, uncond, 3.0), xT)
    p0 = lambda s: torch.softmax(ISO.log_joint(s), 1)[:, 0].mean().item()  # noqa: E731
    assert p0(s3) >= p0(s1) > p0(half)


def _exact_cfg_pair(gm, schedule, B, label=0, null=None):
    null = len(gm.weights) if null is None else null
    den = Denoiser(exact_conditional_net(gm, schedule), schedule, "eps")
    return den.bind(y=torch.full((B,), label)), den.bind(y=torch.full((B,), null))


def test_cfg_interval_guides_only_inside_the_interval(gen):
    """interval=(lo, hi): the guided output where lo < sigma/alpha <= hi, the conditional one elsewhere,
    decided per example (exact equality: the same arithmetic)."""
    B = 6
    cond, uncond = _exact_cfg_pair(ISO, SCHED, B)
    x = torch.randn(B, 2, generator=gen, dtype=torch.float64)
    n = torch.tensor([5.0, 40.0, 90.0, 120.0, 160.0, 199.0], dtype=torch.float64)
    alpha, sigma = SCHED.marginal(n)
    noise = sigma / alpha
    lo, hi = noise[1].item(), noise[3].item()  # on for the examples 2 and 3 (lo excluded, hi included)
    out = cfg(cond, uncond, 3.0, interval=(lo, hi)).eps(x, n)
    full, plain = cfg(cond, uncond, 3.0).eps(x, n), cond.eps(x, n)
    on = (noise > lo) & (noise <= hi)
    assert on.tolist() == [False, False, True, True, False, False]
    assert torch.equal(out[on], full[on]) and torch.equal(out[~on], plain[~on])
    assert (full[on] - plain[on]).abs().min() > 1e-6  # the two differ where it matters
    # a whole batch outside the interval is the conditional model; (0, inf) is plain CFG everywhere
    assert torch.equal(cfg(cond, uncond, 3.0, interval=(0.0, 1e-9)).eps(x, n), plain)
    assert torch.equal(cfg(cond, uncond, 3.0, interval=(0.0, math.inf)).eps(x, n), full)


def test_cfg_interval_keeps_the_modes_that_full_guidance_drops():
    """Kynkäänniemi et al. (2024), Fig. 2, on exact flow-matching oracles: class 0 has two sub-modes
    of weight 1/2 at -2 and 0.3 (x_1 axis), class 1 one at 2. Guiding with w = 4 at all noise levels
    pushes almost every sample to the sub-mode far from class 1 (measured 0.998-1.000 on the left,
    seeds 0-1); guiding only where sigma/alpha <= 1 (t <= 1/2 on the straight path) keeps the split
    (measured 0.529-0.535; conditional model 0.503-0.509; SE 0.011 with 2000 samples)."""
    fm, B = StraightPath(), 2000
    c0 = GaussianMixture([[-2.0, 0.0], [0.3, 0.0]], stds=0.3)
    everything = GaussianMixture([[-2.0, 0.0], [0.3, 0.0], [2.0, 0.0]], stds=0.3, weights=[0.25, 0.25, 0.5])
    cond, uncond = c0.denoiser(fm), everything.denoiser(fm)
    xT = torch.randn(B, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ts = time_grid(fm, 32, "karras")
    left = lambda x: (x[:, 0] < -0.85).double().mean().item()  # noqa: E731  (midway between the sub-modes)
    assert abs(left(heun(cond, xT, ts)) - 0.5) < 5 * 0.5 / math.sqrt(B)
    assert left(heun(cfg(cond, uncond, 4.0), xT, ts)) > 0.95
    assert abs(left(heun(cfg(cond, uncond, 4.0, interval=(0.0, 1.0)), xT, ts)) - 0.5) < 0.06  # 5 SE + 0.005


@pytest.mark.parametrize("phi", [0.0, 0.7, 1.0])
def test_rescaled_cfg_is_lin_et_al_equation(phi, gen):
    """rescale=phi: phi g std(c) / std(g) + (1 - phi) g per example, g = u + w (c - u) (float64
    round-off); phi = 1 gives each example the conditional output's standard deviation."""
    net = LinearNet()
    x, nb = torch.randn(10, 3, generator=gen), torch.randint(100, (10,), generator=gen).double()
    y, null = torch.randint(4, (10,), generator=gen), torch.full((10,), net.null_label)
    den = Denoiser(net, SCHED, "eps")
    c, u = net(x, nb, y), net(x, nb, null)
    g = u + 5.0 * (c - u)
    expected = phi * g * c.std(1, keepdim=True) / g.std(1, keepdim=True) + (1 - phi) * g
    out = cfg(den.bind(y=y), den.bind(y=null), 5.0, rescale=phi).eps(x, nb)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    if phi == 1.0:
        torch.testing.assert_close(out.std(1), c.std(1), rtol=1e-5, atol=1e-6)
    assert torch.equal(cfg(den.bind(y=y), den.bind(y=null), 1.0, rescale=phi).eps(x, nb), c)  # w = 1: cond


def test_dynamic_threshold_is_saharia_et_al_equation(gen):
    """s = max(1, quantile_p |x0_hat|) per example, x0_hat <- clip(x0_hat, -s, s) / s; examples already
    inside [-1, 1] are unchanged; the result always lies in [-1, 1]."""
    sched = DDPMSchedule(ABAR)
    x = torch.randn(8, 1, 4, 4, generator=gen, dtype=torch.float64) * torch.linspace(0.2, 3.0, 8).view(8, 1, 1, 1)
    den = Denoiser(lambda z, t: z, sched, "x0")  # x0_hat = x
    for p in (0.5, 0.9, 1.0):
        out = dynamic_threshold(den, p).x0(x, 50.0)
        s = torch.quantile(x.abs().flatten(1), p, dim=1).clamp_min(1).view(8, 1, 1, 1)
        torch.testing.assert_close(out, torch.clamp(x, -s, s) / s, rtol=0, atol=1e-12)
        assert out.abs().max() <= 1 + 1e-12
    small = x[:1] / x[:1].abs().max()  # inside [-1, 1]: nothing to do
    assert torch.equal(dynamic_threshold(den, 0.9).x0(small, 50.0), small)
    # the implied noise estimate is consistent: eps = (x - alpha x0) / sigma
    a, sg = sched.marginal(50.0)
    thr = dynamic_threshold(den, 0.9)
    torch.testing.assert_close(thr.eps(x, 50.0), (x - a * thr.x0(x, 50.0)) / sg)


def test_gaussian_mixture_posterior_is_bayes_rule_on_a_grid():
    """The closed form against Bayes' rule computed numerically: log p(x | y) = log p(x) +
    log N(y; A x, sigma_y^2 I) - log Z with Z by quadrature on a grid (error ~1e-6 from the grid)."""
    A, y, sy = torch.tensor([[1.0, 0.5]], dtype=torch.float64), torch.tensor([0.7], dtype=torch.float64), 0.4
    post = gaussian_mixture_posterior(FULL, A, y, sy)
    g1 = torch.linspace(-7, 7, 561, dtype=torch.float64)
    xx = torch.cartesian_prod(g1, g1)
    loglik = -((y - xx @ A.T) ** 2).sum(1) / (2 * sy**2) - 0.5 * math.log(2 * math.pi * sy**2)
    log_unnorm = FULL.log_prob(xx) + loglik
    logZ = torch.logsumexp(log_unnorm, 0) + 2 * math.log(g1[1] - g1[0])
    inside = log_unnorm > log_unnorm.max() - 20  # where the density is not negligible
    assert (post.log_prob(xx)[inside] - (log_unnorm - logZ)[inside]).abs().max() < 1e-5
    # a tiny sigma_y puts the posterior on the line A x = y; one component dominates when y is near it
    sharp = gaussian_mixture_posterior(FULL, A, torch.tensor([2.4], dtype=torch.float64), 1e-3)
    assert ((sharp.means @ A.T)[:, 0] - 2.4).abs().max() < 1e-4


@settings(max_examples=25, deadline=None)
@given(w=st.floats(0.0, 8.0), n=st.integers(0, 199))
def test_cfg_is_the_same_in_every_parameterisation(w, n):
    """The CFG combination is affine with weights summing to one, so combining x0 predictions, noise
    predictions or scores gives the same guided model (property test over w and the noise level)."""
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    nb = torch.full((8,), float(n), dtype=torch.float64)
    c, u = component(ISO, 0).denoiser(SCHED), ISO.denoiser(SCHED)  # "x0" Denoisers
    as_eps = lambda d: Denoiser(lambda z, t: d.eps(z, t), SCHED, "eps")  # noqa: E731
    as_score = lambda d: Denoiser(lambda z, t: d.score(z, t), SCHED, "score")  # noqa: E731
    ref = cfg(c, u, w).eps(x, nb)
    for conv in (as_eps, as_score):
        torch.testing.assert_close(cfg(conv(c), conv(u), w).eps(x, nb), ref, rtol=1e-9, atol=1e-9)


def test_dps_with_zero_step_is_ddpm_ancestral():
    """zeta = 0: the guidance term vanishes, the same ancestral chain with noise drawn in the
    same order: equal to round-off."""
    den = Denoiser(ISO.eps_fn(ABAR), SCHED, "eps")  # an eps model, like the book's DDPM networks
    ts = time_grid(SCHED, len(ABAR), "leading")
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(1))
    a = ddpm_ancestral(den, x, ts, generator=torch.Generator().manual_seed(7))
    guided = dps(den, torch.zeros(50, 1), lambda z: z[:, :1], sigma_y=1.0, zeta=0.0)
    b = ddpm_ancestral(guided, x, ts, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(a, b, atol=1e-6)


def test_dps_on_a_subsequence_is_the_respaced_ancestral_chain():
    """DPS sampled on the respaced grid t_0 > ... > t_k (then the data) is the full ancestral
    chain of the respaced schedule abar[t_k], ..., abar[t_0]."""
    ts = time_grid(SCHED, 20, "leading")  # 190, 180, ..., 0, -1
    idx = ts[:-1].flip(0).long()
    respaced = DDPMSchedule(ABAR[idx])
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(1))
    a = ddpm_ancestral(ISO.denoiser(respaced), x, time_grid(respaced, len(idx), "leading"),
                       generator=torch.Generator().manual_seed(3))
    guided = dps(ISO.denoiser(SCHED), torch.zeros(50, 2), lambda z: z, sigma_y=1.0, zeta=0.0)
    b = ddpm_ancestral(guided, x, ts, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("zeta, sigma_y, steps", [(10.0, 0.05, 200), (None, 0.1, 200), (10.0, 0.05, 50)],
                         ids=["normalized", "plain", "normalized-50-steps"])
def test_dps_moves_samples_to_the_measurement(zeta, sigma_y, steps):
    """Gaussian prior N(0, I) in 4-D, measurement y = A x0 + 0.05 z of two coordinates of
    x0 = (1.5, -1, *, *), a fresh y for each of 2000 samples, sampled by ddpm_ancestral on the
    200-step cosine chain (or its 50-step leading respacing). The exact posterior puts the observed
    coordinates at y +- 0.05, so the samples spread by sqrt(2) 0.05 = 0.071 around (1.5, -1), and
    leaves the other two N(0, 1). zeta is a weight on the score (the displacement per step scales
    with beta_n), so the old per-step zeta values do not carry over; measured over seeds 0-2:
    zeta = 3 spreads 0.14, zeta = 5 0.09, zeta = 10 0.060 (200 steps) and 0.058 (50 steps),
    zeta = 20 0.051. The plain approximation (weight 1 / (2 sigma_y^2)) diverges with
    sigma_y = 0.05 (spread ~1e6: the explicit step overshoots when beta_n alpha^2 / sigma_y^2 > 1)
    and spreads 0.078 with sigma_y = 0.1. Observed mean error <= 0.003 (SE 0.0016) in all three
    cases; unobserved |mean| <= 0.018 (SE 0.022) at 200 steps, 0.060 at 50, |std - 1| <= 0.027 at 200,
    0.054 at 50 (SE 0.016). Unguided samples lie ~1.8 from the measurement.
    Allow 0.02 on the observed mean, spread in (0.03, 0.1), 0.1 (4.5 SE) and 0.08 (5 SE) on the rest."""
    prior = GaussianMixture([[0.0] * 4], stds=1.0)
    g = torch.Generator().manual_seed(0)
    A = lambda x: x[:, :2]  # noqa: E731
    y = measure(torch.tensor([[1.5, -1.0, 0.0, 0.0]]).expand(2000, 4), A, 0.05, g)
    guided = dps(prior.denoiser(SCHED), y, A, sigma_y=sigma_y, zeta=zeta)
    x = ddpm_ancestral(guided, torch.randn(2000, 4, generator=g), time_grid(SCHED, steps, "leading"), generator=g)
    obs = x[:, :2]
    assert (obs.mean(0) - torch.tensor([1.5, -1.0])).abs().max() < 0.02
    assert 0.03 < obs.std(0).min() and obs.std(0).max() < 0.1
    assert x[:, 2:].mean(0).abs().max() < 0.1
    assert (x[:, 2:].std(0) - 1).abs().max() < 0.08


def test_dps_gradient_is_the_measurement_likelihood_through_x0_hat(gen):
    """Without zeta, DPS's score is score + grad_x log N(y; A(x0_hat(x)), sigma_y^2 I); for the
    N(0, I) prior x0_hat = alpha x exactly, so the added score is alpha A^T (y - alpha A x) / sigma_y^2
    in closed form (float64 round-off)."""
    prior = GaussianMixture([[0.0] * 3], stds=1.0)
    x = torch.randn(16, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(16, 2, generator=gen, dtype=torch.float64)
    n = 60.0
    alpha = SCHED.marginal(n)[0].item()
    guided = dps(prior.denoiser(SCHED), y, lambda z: z[:, :2], sigma_y=0.3)
    expected = -x + torch.cat([alpha * (y - alpha * x[:, :2]) / 0.3**2, torch.zeros(16, 1, dtype=torch.float64)], 1)
    torch.testing.assert_close(guided.score(x, n), expected, rtol=1e-9, atol=1e-9)


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


def test_dps_rejects_a_measurement_with_another_batch_size():
    den = ISO.denoiser(SCHED)
    with pytest.raises(ValueError, match=r"y must have the shape of A\(x0\)"):
        dps(den, torch.zeros(3, 1), lambda z: z[:, :1], sigma_y=0.1).eps(torch.zeros(2, 2), 10.0)


def test_bad_inputs_raise_value_errors():
    den, clf = ISO.denoiser(SCHED), mixture_classifier(ISO, SCHED)
    x, nb = torch.zeros(2, 2), torch.zeros(2, dtype=torch.float64)
    with pytest.raises(ValueError, match="w must"):
        classifier_guidance(den, classifier_log_prob(clf, 0), -1.0)
    with pytest.raises(ValueError, match="y must"):
        classifier_guidance(den, classifier_log_prob(clf, torch.zeros(3, dtype=torch.long)), 1.0).eps(x, nb)
    with pytest.raises(ValueError, match="y must"):
        classifier_guidance(den, classifier_log_prob(clf, 5), 1.0).eps(x, nb)
    with pytest.raises(ValueError, match="log-likelihood must return shape"):
        classifier_guidance(den, lambda z, t: z.sum(), 1.0).eps(x, nb)  # a scalar, not one per example
    with pytest.raises(ValueError, match="log_p_y must be callable"):
        classifier_guidance(den, "not a function", 1.0)
    with pytest.raises(ValueError, match="w must"):
        cfg(den, den, -0.5)
    with pytest.raises(ValueError, match="uncond must be a Denoiser"):
        cfg(den, ISO.eps_fn(ABAR), 2.0)
    with pytest.raises(ValueError, match="same thing"):
        cfg(den, Denoiser(lambda x, t: x, SCHED, "eps"), 2.0)
    with pytest.raises(ValueError, match="share a schedule"):
        cfg(den, ISO.denoiser(DDPMSchedule(alphas_cumprod(ddpm_betas(200, "linear")))), 2.0)
    with pytest.raises(ValueError, match="zeta"):
        dps(den, torch.zeros(2, 1), lambda z: z[:, :1], sigma_y=0.1, zeta=-0.1)
    with pytest.raises(ValueError, match="sigma_y"):
        dps(den, torch.zeros(2, 1), lambda z: z[:, :1], sigma_y=0.0)
    with pytest.raises(ValueError, match="ts must decrease"):
        ddpm_ancestral(dps(den, torch.zeros(2, 1), lambda z: z[:, :1], sigma_y=0.1), x, torch.tensor([3.0, 5.0]))
    with pytest.raises(ValueError, match="mask"):
        mask_operator(torch.zeros(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="x must"):
        mask_operator(torch.ones(2, 2, dtype=torch.bool))(torch.zeros(1, 3, 3))
    with pytest.raises(ValueError, match="gm"):
        mixture_classifier("not a mixture", SCHED)
    # cfg's refinements
    for bad in ((1.0,), (2.0, 1.0), (-1.0, 2.0), "ab", (0.0, float("nan"))):
        with pytest.raises(ValueError, match="interval"):
            cfg(den, den, 2.0, interval=bad)
    for bad in (-0.1, 1.5, True, None):
        with pytest.raises(ValueError, match="rescale"):
            cfg(den, den, 2.0, rescale=bad)
    with pytest.raises(ValueError, match="percentile"):
        dynamic_threshold(den, 0.0)
    with pytest.raises(ValueError, match="denoiser"):
        dynamic_threshold(ISO.eps_fn(ABAR), 0.9)
    # measurements and operators
    with pytest.raises(ValueError, match="operator must be callable"):
        dps(den, torch.zeros(2, 1), "A", sigma_y=0.1)
    with pytest.raises(ValueError, match="one row per example"):
        dps(den, torch.zeros(2), lambda z: z[:, 0], sigma_y=0.1)
    with pytest.raises(ValueError, match="y must be finite"):
        dps(den, torch.full((2, 1), float("nan")), lambda z: z[:, :1], sigma_y=0.1)
    with pytest.raises(ValueError, match="sigma_y"):
        measure(torch.zeros(2, 2), lambda z: z, float("inf"))
    with pytest.raises(ValueError, match="operator must be callable"):
        measure(torch.zeros(2, 2), None, 0.1)
    with pytest.raises(ValueError, match="operator must be callable"):
        measurement_loss(torch.zeros(2, 2), 3)
    with pytest.raises(ValueError, match="observed"):
        random_mask((2, 2), float("nan"))
    with pytest.raises(ValueError, match="shape"):
        random_mask((2, 0), 0.5)
    # classifiers
    with pytest.raises(ValueError, match="classifier must be callable"):
        classifier_log_prob("not a classifier", 0)
    with pytest.raises(ValueError, match="non-negative"):
        classifier_log_prob(clf, -1)
    with pytest.raises(ValueError, match="y must be an int"):
        classifier_log_prob(clf, 1.5)
    with pytest.raises(ValueError, match="x must be finite"):
        classifier_log_prob_grad(clf, torch.full((2, 2), float("inf")), nb, 0)
    # the exact posterior: A must fit the prior's dimension, y one measurement per row of A
    A = torch.eye(2, dtype=torch.float64)
    with pytest.raises(ValueError, match="A must be an"):
        gaussian_mixture_posterior(ISO, torch.eye(3), torch.zeros(3), 0.1)
    with pytest.raises(ValueError, match="y must have shape"):
        gaussian_mixture_posterior(ISO, A, torch.zeros(1, 2), 0.1)
    with pytest.raises(ValueError, match="sigma_y"):
        gaussian_mixture_posterior(ISO, A, torch.zeros(2), 0.0)
    with pytest.raises(ValueError, match="gm must be"):
        gaussian_mixture_posterior("prior", A, torch.zeros(2), 0.1)
