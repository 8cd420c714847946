"""Each forward SDE against its closed form: moment ODEs, marginals, simulation."""

import math

import pytest
import torch
from scipy.integrate import quad

from diffusion_edu.sde import VESDE, VPSDE, BrownianSDE, SubVPSDE
from diffusion_edu.toy import GaussianMixture

ALL = [BrownianSDE(), BrownianSDE(T=3.0), VESDE(0.01, 50.0), VPSDE(), SubVPSDE(), VPSDE(0.5, 5.0, T=2.0)]


@pytest.mark.parametrize("sde", ALL, ids=repr)
def test_moment_equations(sde):
    """alpha' = f alpha and (sigma^2)' = 2 f sigma^2 + g^2, by central differences.
    Step h = 1e-5 in float64: truncation O(h^2) ~ 1e-10, round-off ~1e-16/h ~ 1e-11."""
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64) * sde.T
    h = 1e-5
    a, s = sde.marginal(t)
    ap, sp = sde.marginal(t + h)
    am, sm = sde.marginal(t - h)
    f = sde.drift_coef(t)
    g = sde.diffusion(t)
    dalpha = (ap - am) / (2 * h)
    dvar = (sp**2 - sm**2) / (2 * h)
    scale = 1 + (2 * f * s**2 + g**2).abs()
    assert torch.allclose(dalpha, f * a, atol=1e-7, rtol=1e-7)
    assert ((dvar - (2 * f * s**2 + g**2)).abs() / scale).max() < 1e-7


def test_brownian_closed_form():
    sde = BrownianSDE()
    t = torch.tensor([0.0, 0.1, 0.5, 1.0])
    a, s = sde.marginal(t)
    assert torch.equal(a, torch.ones(4, dtype=torch.float64))
    assert torch.allclose(s**2, 2 * t.double())
    assert torch.allclose(sde.diffusion(t), torch.full((4,), math.sqrt(2), dtype=torch.float64))
    assert sde.prior_std == pytest.approx(math.sqrt(2))


def test_ve_follows_song_convention():
    sde = VESDE(0.01, 50.0)
    for t in (0.0, 0.3, 1.0):
        assert sde.marginal(t)[1].item() == pytest.approx(0.01 * 5000**t, rel=1e-12)
    assert sde.prior_std == 50.0


def test_vp_log_alpha_is_half_integral_of_beta():
    sde = VPSDE(0.1, 20.0)
    for t in (0.1, 0.5, 0.9):
        integral, _ = quad(lambda s: sde.beta(s).item(), 0, t)
        assert sde.log_alpha(t).item() == pytest.approx(-0.5 * integral, rel=1e-10)
        a, s = sde.marginal(t)
        assert (a**2 + s**2).item() == pytest.approx(1.0, abs=1e-12)  # variance preserving


def test_python_float_times_are_taken_in_float64():
    """A Python float time is the float64 number it denotes (not float32(0.1) = 0.10000000149)."""
    sde = VPSDE(0.1, 20.0)
    assert sde.log_alpha(0.1).item() == sde.log_alpha(torch.tensor(0.1, dtype=torch.float64)).item()
    assert sde.marginal(0.1)[0].item() == sde.marginal(torch.tensor(0.1, dtype=torch.float64))[0].item()
    assert VESDE(0.01, 50.0).marginal(0.3)[1].item() == pytest.approx(0.01 * 5000**0.3, rel=1e-12)


def test_subvp_variance_below_vp():
    t = torch.linspace(0.01, 1.0, 50)
    _, s_vp = VPSDE().marginal(t)
    _, s_sub = SubVPSDE().marginal(t)
    assert (s_sub < s_vp).all()
    assert torch.allclose(s_sub, s_vp**2)  # sigma_sub = 1 - alpha^2 = sigma_vp^2


@pytest.mark.parametrize("sde", [BrownianSDE(), VESDE(0.1, 5.0), VPSDE(), SubVPSDE()], ids=repr)
def test_perturb_statistics(sde, gen):
    """x_t | x_0 ~ N(alpha x_0, sigma^2): per-coordinate mean within 5 standard errors and the
    sample variance within 5 of its standard errors (sigma^2 sqrt(2/n))."""
    n, t = 40_000, 0.4
    x0 = torch.full((n, 2), 1.5)
    xt, eps = sde.perturb(x0, t, generator=gen)
    a, s = (c.item() for c in sde.marginal(t))
    assert torch.allclose(xt, a * x0 + s * eps, atol=1e-5)
    se = s / math.sqrt(n)
    assert (xt.mean(0) - a * 1.5).abs().max() < 5 * se
    var = xt.var(0)
    assert (var - s**2).abs().max() < 5 * s**2 * math.sqrt(2 / n)


def test_perturb_batch_times_and_reproducibility():
    sde = VPSDE()
    x0 = torch.randn(4, 3, 8, 8)
    t = torch.tensor([0.0, 0.25, 0.5, 1.0])
    xt1, e1 = sde.perturb(x0, t, generator=torch.Generator().manual_seed(3))
    xt2, e2 = sde.perturb(x0, t, generator=torch.Generator().manual_seed(3))
    assert torch.equal(xt1, xt2) and xt1.shape == x0.shape
    assert torch.allclose(xt1[0], x0[0])  # t = 0: no noise for VP


def test_euler_maruyama_forward_matches_marginal(gen):
    """Simulate dx = f x dt + g dW forward from x_0 = 2 and compare mean and variance of x_1
    with alpha x_0 and sigma^2. Threshold: 5 Monte Carlo standard errors plus the O(dt) bias
    of Euler-Maruyama on the mean, which at dt = 1/400 is below 1e-2 here."""
    sde = VPSDE()
    n, steps = 40_000, 400
    x = torch.full((n, 1), 2.0, dtype=torch.float64)
    dt = 1.0 / steps
    for i in range(steps):
        t = torch.full((n,), i * dt, dtype=torch.float64)
        z = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        x = x + sde.drift(x, t) * dt + sde.diffusion(t[:1]).item() * math.sqrt(dt) * z
    a, s = (c.item() for c in sde.marginal(1.0))
    assert abs(x.mean().item() - 2 * a) < 5 * s / math.sqrt(n) + 1e-2
    assert abs(x.var().item() - s**2) < 5 * s**2 * math.sqrt(2 / n) + 1e-2


def test_prior_sample_and_log_prob(gen):
    sde = VESDE(0.01, 10.0)
    x = sde.prior_sample((20_000, 2), generator=gen)
    assert x.shape == (20_000, 2)
    assert abs(x.std().item() - 10.0) < 5 * 10.0 / math.sqrt(2 * 40_000)
    lp = sde.prior_log_prob(torch.zeros(1, 2))
    assert lp.item() == pytest.approx(-math.log(2 * math.pi * 100.0))


def _fokker_planck_terms(sde, gm, x, t, h=1e-5):
    """For the exact marginal density p_t of a Gaussian mixture noised by ``sde`` (closed form),
    return dp/dt by a central difference in t, and functions giving div(F p) and the Laplacian
    of p by autograd: the pieces of the Fokker-Planck equation, none of them from sde.py's drifts."""
    tb = torch.full((len(x),), t, dtype=torch.float64)

    def density(y, tt):
        a, s = sde.marginal(tt)
        return gm.log_prob(y, a, s).exp()

    dp_dt = (density(x, tb + h) - density(x, tb - h)) / (2 * h)
    y = x.clone().requires_grad_(True)
    p = density(y, tb)
    (grad_p,) = torch.autograd.grad(p.sum(), y, create_graph=True)
    laplacian = sum(torch.autograd.grad(grad_p[:, i].sum(), y, retain_graph=True)[0][:, i] for i in range(x.shape[1]))

    def div(field):  # div(F p), F = field(y) (B, D) built on y
        flux = field(y) * p[:, None]
        return sum(torch.autograd.grad(flux[:, i].sum(), y, retain_graph=True)[0][:, i] for i in range(x.shape[1]))

    return tb, y, dp_dt, div, laplacian.detach()


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE(0.05, 5.0), BrownianSDE()], ids=repr)
@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
def test_reverse_and_ode_drift_satisfy_the_fokker_planck_equation(sde, t):
    """Against an independent truth, the closed-form density p_t of a two-component mixture:
    - forward SDE: dp/dt = -div(f x p) + g^2 / 2 Laplacian(p);
    - probability-flow ODE with v = ode_drift(x, t, score): dp/dt = -div(v p) (continuity);
    - reverse SDE with b = reverse_drift(x, t, score), run backwards in time:
      -dp/dt = div(b p) + g^2 / 2 Laplacian(p).
    dp/dt by a central difference (h = 1e-5, float64): truncation ~1e-10 and round-off ~1e-11
    relative to max |dp/dt| (measured <= 1e-8); allow 1e-6 (a lost factor 1/2 or sign is an O(1)
    error: measured >= 1.0)."""
    gm = GaussianMixture([[-1.0, 0.5], [1.0, -0.5]], stds=[0.4, 0.6], weights=[0.3, 0.7])
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1.5
    tb, y, dp_dt, div, lap = _fokker_planck_terms(sde, gm, x, t * sde.T)
    g2 = sde.diffusion(tb) ** 2
    score = lambda z: gm.score(z, *sde.marginal(tb))  # noqa: E731  (exact, differentiable)
    scale = dp_dt.abs().max()
    forward = -div(lambda z: sde.drift(z, tb)) + 0.5 * g2 * lap
    pf = -div(lambda z: sde.ode_drift(z, tb, score(z)))
    reverse = -div(lambda z: sde.reverse_drift(z, tb, score(z))) - 0.5 * g2 * lap
    for name, rhs in (("forward", forward), ("probability flow", pf), ("reverse", reverse)):
        assert ((rhs.detach() - dp_dt).abs().max() / scale).item() < 1e-6, name
    # a drift with the wrong factor on the score fails the same check
    wrong = -div(lambda z: sde.drift(z, tb) - g2[:, None] * score(z))
    assert ((wrong.detach() - dp_dt).abs().max() / scale).item() > 1e-2


def test_bad_input_raises():
    sde = VPSDE()
    with pytest.raises(ValueError, match=r"t must lie in \[0.0, 1.0\] for VPSDE"):
        sde.marginal(1.5)
    with pytest.raises(ValueError, match=r"t must lie in \[0.0, 1.0\]"):
        sde.perturb(torch.zeros(2, 2), torch.tensor([0.5, -0.1]))
    with pytest.raises(ValueError, match=r"t must have shape \(3,\)"):
        sde.perturb(torch.zeros(3, 2), torch.tensor([0.5, 0.1]))
    with pytest.raises(ValueError, match="x0 must be finite"):
        sde.perturb(torch.tensor([[float("nan"), 0.0]]), 0.5)
    with pytest.raises(ValueError, match="t must not be NaN"):
        sde.marginal(float("nan"))
    with pytest.raises(ValueError, match="sigma_min"):
        VESDE(sigma_min=0.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="beta_min"):
        VPSDE(beta_min=-1.0)
    with pytest.raises(ValueError, match="T must be a finite number > 0"):
        BrownianSDE(T=0)
