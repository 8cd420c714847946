"""Schedules and the Denoiser against independent truth: central finite differences of the
closed-form marginals, the moment equations of the linear SDE, diffusers' timesteps, Karras et
al.'s Eq. 5 recomputed from the returned times, and the Gaussian-mixture formulas of ``toy``
(the score is computed there from the responsibilities, not through ``x0``)."""

import math

import numpy as np
import pytest
import torch

from diffusion_edu import GaussianMixture
from diffusion_edu.denoiser import Denoiser, clip_x0
from diffusion_edu.flow_matching import StraightPath
from diffusion_edu.parameterization import PREDICTIONS, from_x0_eps
from diffusion_edu.schedules import DDPMSchedule, alphas_cumprod, ddpm_betas, time_grid
from diffusion_edu.sde import VESDE, VPSDE, BrownianSDE, SubVPSDE

DDPM_LINEAR = DDPMSchedule(alphas_cumprod(ddpm_betas(1000, "linear")))
DDPM_COSINE = DDPMSchedule(alphas_cumprod(ddpm_betas(1000, "cosine")))
SDES = [VPSDE(), VESDE(), VESDE(0.01, 10.0, T=2.0), SubVPSDE(), BrownianSDE(T=2.0)]
SCHEDULES = SDES + [StraightPath(), DDPM_LINEAR, DDPM_COSINE]


def ids(v):
    """Short test ids: the class name, the DDPM betas' kind, the VE parameters."""
    if v is DDPM_LINEAR or v is DDPM_COSINE:
        return "DDPM-" + ("linear" if v is DDPM_LINEAR else "cosine")
    if isinstance(v, VESDE):
        return f"VESDE-{v.sigma_max:g}-T{v.T:g}"
    return type(v).__name__ if not isinstance(v, (int, float)) else repr(v)

# A two-component mixture with unequal weights and widths, so that the posterior mean is nonlinear.
GM = GaussianMixture([[-1.5, 0.5], [1.0, -0.25]], stds=[0.4, 0.7], weights=[0.3, 0.7])


def interior_times(sched):
    """Times inside the schedule's range where every coefficient is finite (sigma > 0, alpha > 0)."""
    if isinstance(sched, DDPMSchedule):
        return [-0.9, -0.5, -0.01, 0.5, 10.25, 500.7, 998.5]
    lo, span = sched.t_eps, sched.T - sched.t_eps
    return [lo + span * u for u in (0.01, 0.2, 0.5, 0.83, 0.97)]


def fd(fun, t, h, side="central"):
    """Second-order finite difference of ``fun`` (a tuple-valued function of a float64 tensor):
    central, or one-sided ``(-3 f(t) + 4 f(t + h) - f(t + 2h)) / (2h)`` (``side="right"``,
    ``h < 0`` for the left side). Truncation error ``O(h^2)``; the step is the one actually
    represented in floating point (``t + h - t``, not ``h``)."""
    t = torch.tensor(t, dtype=torch.float64)
    if side == "central":
        tp, tm = t + h, t - h
        return tuple((p - m) / (tp - tm) for p, m in zip(fun(tp), fun(tm)))
    t1, t2 = t + h, t + 2 * h
    step = (t2 - t) / 2
    return tuple((-3 * a + 4 * b - c) / (2 * step) for a, b, c in zip(fun(t), fun(t1), fun(t2)))


def fd_step(sched, t):
    """h = 1e-5 min(t - t_min, 1): below 1e-5 of the distance to the data end (where
    sigma ~ sqrt(t - t_min) is singular for Brownian and DDPM's [-1, 0) piece) and of the time
    scale of every schedule here (DDPM's steepest piece changes log-SNR by ~7 per index), so the
    relative truncation error is below ~1e-8."""
    return 1e-5 * min(t - sched.t_min, 1.0)


def roundoff(values, h):
    """What round-off alone can do to a difference quotient with step h: ~100 eps |f| / h."""
    return 100 * 2.2e-16 * max(abs(v.item()) for v in values) / abs(h)


# -- schedules -----------------------------------------------------------------------------------
@pytest.mark.parametrize("sched", SCHEDULES, ids=ids)
def test_marginal_derivatives_match_central_differences(sched):
    """alpha', sigma' against central differences of the closed-form marginal at interior times.
    The differences are accurate to ~1e-8 relative (see fd_step) plus round-off; 1e-6 leaves room."""
    for t in interior_times(sched):
        got = sched.marginal_derivatives(torch.tensor(t, dtype=torch.float64))
        h = fd_step(sched, t)
        ref = fd(sched.marginal, t, h)
        for g, r in zip(got, ref):
            tol = roundoff(sched.marginal(torch.tensor(t, dtype=torch.float64)), h)
            assert g.item() == pytest.approx(r.item(), rel=1e-6, abs=tol), (t, got, ref)


@pytest.mark.parametrize("sched", [DDPM_LINEAR, DDPM_COSINE], ids=["linear", "cosine"])
def test_ddpm_derivatives_at_integers_are_the_right_pieces(sched):
    """Between integers the log-SNR is linear, so at an integer n the derivative is that of the
    piece [n, n + 1] (the last piece at T): compare with one-sided second-order differences from
    that side. At 0 the right piece is the first interpolated one, not the [-1, 0) extension.
    sigma is close to 1 at the noisy end, where round-off bounds what a difference can resolve,
    so sigma' is also checked through the exact identity alpha alpha' + sigma sigma' = 0
    (alpha^2 + sigma^2 = 1)."""
    h = 1e-5  # inside one smooth piece; truncation ~ (7 h)^2 ~ 5e-9 relative
    for n in (0, 1, 17, 500, 998, sched.T):
        tn = torch.tensor(float(n), dtype=torch.float64)
        got = sched.marginal_derivatives(tn)
        step = h if n < sched.T else -h  # from the left at the noise end
        ref = fd(sched.marginal, float(n), step, side="right")
        for g, r in zip(got, ref):
            assert g.item() == pytest.approx(r.item(), rel=1e-6, abs=roundoff(sched.marginal(tn), h)), (n, got, ref)
        (a, s), (da, ds) = sched.marginal(tn), got
        assert (s * ds).item() == pytest.approx(-(a * da).item(), rel=1e-12)


@pytest.mark.parametrize("sched", SCHEDULES, ids=ids)
def test_sde_coefficients_satisfy_the_moment_equations(sched):
    """f and g^2 (closed forms for the SDE classes, derived for the others) against finite
    differences of the closed-form marginal: alpha' = f alpha and (sigma^2)' = 2 f sigma^2 + g^2.
    Same finite-difference accuracy as above."""
    sq = lambda t: (sched.marginal(t)[0], sched.marginal(t)[1] ** 2)  # noqa: E731
    for t in interior_times(sched):
        f, g2 = sched.sde_coefficients(torch.tensor(t, dtype=torch.float64))
        alpha, sigma = sched.marginal(torch.tensor(t, dtype=torch.float64))
        h = fd_step(sched, t)
        d_alpha, d_var = fd(sq, t, h)
        tol = roundoff(sq(torch.tensor(t, dtype=torch.float64)), h)
        assert (f * alpha).item() == pytest.approx(d_alpha.item(), rel=1e-6, abs=tol)
        assert (2 * f * sigma**2 + g2).item() == pytest.approx(d_var.item(), rel=1e-6, abs=tol)
        assert g2.item() >= 0


@pytest.mark.parametrize("sched", SCHEDULES, ids=ids)
def test_time_at_log_snr_inverts_log_snr(sched):
    """Bisection to round-off: |t' - t| / (T - t_min) < 1e-9 (a log-SNR round-off of ~1e-14
    divided by the smallest slope, ~0.02 per index for DDPM, is ~1e-12 of the range)."""
    lo = 0.0 if isinstance(sched, DDPMSchedule) else sched.t_eps  # DDPM: the trained indices
    t = torch.cat([torch.linspace(lo, sched.T, 37, dtype=torch.float64),
                   torch.tensor(interior_times(sched), dtype=torch.float64)])
    if isinstance(sched, StraightPath):
        t = t[(t > 0) & (t < 1)]  # log-SNR is +-inf at the ends
    t = t.unique()  # sorted
    lam = sched.log_snr(t)
    assert (lam.diff() < 0).all()  # decreasing in t
    back = sched.time_at_log_snr(lam)
    assert (back - t).abs().max().item() < 1e-9 * (sched.T - sched.t_min)
    assert torch.allclose(sched.log_snr(back), lam, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sched", [DDPM_LINEAR, DDPM_COSINE], ids=["linear", "cosine"])
def test_ddpm_schedule_is_exact_at_integers_and_minus_one_is_the_data(sched):
    n = torch.arange(sched.num_steps, dtype=torch.float64)
    alpha, sigma = sched.marginal(n)
    abar = sched.alphas_cumprod
    assert torch.equal(alpha[:-1], abar[:-1].sqrt())  # the stored value itself, no interpolation
    # at T = N - 1 the last piece's interpolation with weight 1 is used: equal to round-off
    assert alpha[-1].item() == pytest.approx(abar[-1].sqrt().item(), rel=1e-14)
    assert torch.allclose(sigma, (1 - abar).sqrt(), rtol=1e-12, atol=0)
    assert sched.T == sched.num_steps - 1 and sched.t_min == sched.t_eps == -1
    a, s = sched.marginal(-1.0)
    assert a.item() == 1.0 and s.item() == 0.0
    # [-1, 0): abar(t) = abar_0^(t + 1), continuous at 0
    a, s = sched.marginal(torch.tensor([-0.5, -1e-12], dtype=torch.float64))
    assert a[0].item() ** 2 == pytest.approx(abar[0].item() ** 0.5, rel=1e-12)
    assert a[1].item() ** 2 == pytest.approx(abar[0].item(), rel=1e-10)
    # between integers: the log-SNR is the linear interpolation of the neighbours'
    lam = torch.log(abar / (1 - abar))
    t = torch.tensor([3.25, 700.5], dtype=torch.float64)
    ref = torch.stack([0.75 * lam[3] + 0.25 * lam[4], 0.5 * lam[700] + 0.5 * lam[701]])
    assert torch.allclose(sched.log_snr(t), ref, rtol=1e-12)
    a, s = sched.marginal(t)
    assert torch.allclose(a**2 + s**2, torch.ones(2, dtype=torch.float64), atol=1e-14)  # variance preserving


# -- time grids ----------------------------------------------------------------------------------

@pytest.mark.parametrize("sched", SCHEDULES, ids=ids)
@pytest.mark.parametrize("spacing", ["uniform", "logsnr", "karras"])
@pytest.mark.parametrize("steps", [1, 2, 3, 10, 57])
def test_time_grid_shape_and_ends(sched, spacing, steps):
    ts = time_grid(sched, steps, spacing)
    assert ts.dtype == torch.float64 and ts.shape == (steps + 1,)
    assert ts[0].item() == sched.T and ts[-1].item() == sched.t_eps, ts
    assert (ts.diff() < 0).all(), ts


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_ddpm_spacings_equal_diffusers_ddim_timesteps(spacing):
    """The integer spacings are diffusers' DDIMScheduler timesteps (steps_offset=0), then -1."""
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing, steps_offset=0)
    for steps in (1, 3, 10, 37, 50, 999, 1000):
        ref.set_timesteps(steps)
        ts = time_grid(DDPM_LINEAR, steps, spacing)
        assert ts.dtype == torch.float64 and ts.shape == (steps + 1,) and (ts.diff() < 0).all()
        assert ts[:-1].tolist() == [float(v) for v in ref.timesteps.tolist()] and ts[-1].item() == -1.0
        # "trailing" starts at the noise end T, "linspace" too for steps > 1 (numpy's linspace with
        # one point gives 0), "leading" at (N // steps) (steps - 1)
        start = {"trailing": DDPM_LINEAR.T, "linspace": DDPM_LINEAR.T if steps > 1 else 0.0,
                 "leading": (1000 // steps) * (steps - 1)}[spacing]
        assert ts[0].item() == start
    assert time_grid(DDPM_LINEAR, 1000, "leading").tolist() == list(range(999, -2, -1))  # the full chain


@pytest.mark.parametrize("sched", SCHEDULES, ids=ids)
@pytest.mark.parametrize("rho", [7.0, 3.0])
def test_karras_grid_follows_eq5(sched, rho):
    """Recompute sigma~ = sigma / alpha from the returned times and compare with Karras et al.
    (2022), Eq. 5, between the grid's finite end noise levels. Inverting the log-SNR is exact
    to round-off: measured <= 4e-13 relative (DDPM cosine), 1e-10 here."""
    steps = 18
    ts = time_grid(sched, steps, "karras", rho=rho)
    alpha, sigma = sched.marginal(ts)
    inner = (alpha > 0) & (sigma > 0)  # StraightPath adds t = 1 and t = 0; DDPM adds -1
    sig = (sigma / alpha)[inner]
    n = len(sig)
    added = {StraightPath: 2, DDPMSchedule: 1}.get(type(sched), 0)  # the ends outside the log-SNR range
    assert n == steps + 1 - added
    if isinstance(sched, StraightPath):  # Karras et al.'s sigma_max = 80, sigma_min = 0.002
        ends = (80.0, 0.002)
    else:  # the noise end T and the least noisy time with a finite log-SNR (DDPM: index 0)
        lo = 0.0 if isinstance(sched, DDPMSchedule) else sched.t_eps
        ends = tuple((sched.marginal(t)[1] / sched.marginal(t)[0]).item() for t in (sched.T, lo))
    s_max, s_min = sig[0].item(), sig[-1].item()
    assert (s_max, s_min) == pytest.approx(ends, rel=1e-12)
    i = torch.arange(n, dtype=torch.float64)
    eq5 = (s_max ** (1 / rho) + i / (n - 1) * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    assert torch.allclose(sig, eq5, rtol=1e-10, atol=0)


@pytest.mark.parametrize("sched", SCHEDULES, ids=ids)
def test_logsnr_grid_has_equal_log_snr_steps(sched):
    ts = time_grid(sched, 25, "logsnr")
    lam = sched.log_snr(ts)
    finite = torch.isfinite(lam)
    d = lam[finite].diff()
    # round-off of the bisection and of log: measured <= 7.4e-13 relative (DDPM cosine)
    assert (d > 0).all() and torch.allclose(d, d.mean().expand_as(d), rtol=1e-10)


@pytest.mark.parametrize("sched,t", [(VPSDE(), 0.3), (StraightPath(), 0.3), (VESDE(), 0.1),
                                     (DDPM_LINEAR, 500.7)], ids=ids)
def test_float_times_keep_float64_precision(sched, t):
    """A float time is the same time as the float64 tensor holding it (not rounded to float32
    on the way, which moved Karras grids by 6e-7 before the library was fixed)."""
    x = torch.ones(2, 2, dtype=torch.float64)
    as_tensor = torch.tensor(t, dtype=torch.float64)
    assert all(torch.equal(a, b) for a, b in zip(sched.marginal(t), sched.marginal(as_tensor)))
    den = GM.denoiser(sched)
    assert torch.equal(den.x0(x, t), den.x0(x, as_tensor))


def test_time_grid_rejects_bad_input():
    with pytest.raises(ValueError, match="spacing"):
        time_grid(VPSDE(), 10, "cosine")
    with pytest.raises(ValueError, match="spacing"):
        time_grid(StraightPath(), 10, "trailing")  # integer spacings need a DDPMSchedule
    with pytest.raises(ValueError, match="steps"):
        time_grid(VPSDE(), 0)
    with pytest.raises(ValueError, match="steps"):
        time_grid(VPSDE(), 2.0)
    with pytest.raises(ValueError, match="steps"):
        time_grid(DDPM_LINEAR, 1001, "leading")
    with pytest.raises(ValueError, match="rho"):
        time_grid(VPSDE(), 10, "karras", rho=0.0)
    with pytest.raises(ValueError, match="schedule"):
        time_grid("vp", 10)


# -- the Denoiser --------------------------------------------------------------------------------
def exact_net(oracle, prediction):
    """A 'network' that outputs the exact prediction of kind ``prediction``, converted from the
    oracle's (x0, eps) with the schedule's coefficients."""
    sched = oracle.schedule

    def net(x, t):
        assert t.dtype == torch.float64 and t.shape == (x.shape[0],)
        x0, eps = oracle.x0_eps(x, t)
        a, s = sched.marginal(t)
        da, ds = sched.marginal_derivatives(t)
        return from_x0_eps(x0, eps, prediction, a, s, da, ds)

    return net


def batch(sched, n=64, seed=0):
    """Points x_t ~ p_t of GM and per-example interior times."""
    g = torch.Generator().manual_seed(seed)
    times = torch.tensor(interior_times(sched), dtype=torch.float64)
    t = times[torch.randint(len(times), (n,), generator=g)]
    x0 = GM.sample(n, generator=g).double()
    xt, _ = sched.perturb(x0, t, generator=g)
    return xt, t


def reference(sched, x, t):
    """x0, eps, score, velocity from the closed forms of ``toy`` (score from the responsibilities,
    Tweedie for x0) and the schedule's (finite-difference-checked) derivatives."""
    a, s = sched.marginal(t)
    da, ds = sched.marginal_derivatives(t)
    a, s, da, ds = (c[:, None] for c in (a, s, da, ds))
    score = GM.score(x, a[:, 0], s[:, 0])
    eps = -s * score
    x0 = (x + s**2 * score) / a  # Tweedie
    return {"x0": x0, "eps": eps, "score": score, "velocity": da * x0 + ds * eps}


@pytest.mark.parametrize("sched", SCHEDULES, ids=ids)
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_every_prediction_type_gives_the_exact_answers(sched, prediction):
    """An exact network of each kind gives the oracle's x0/eps/score/velocity (float64 round-off:
    the conversions divide by alpha or sigma, at worst ~1e3 here, so 1e-9 relative)."""
    oracle = GM.denoiser(sched)
    den = Denoiser(exact_net(oracle, prediction), sched, prediction)
    x, t = batch(sched)
    ref = reference(sched, x, t)
    for what in ("x0", "eps", "score", "velocity"):
        got = getattr(den, what)(x, t)
        assert got.dtype == torch.float64 and got.shape == x.shape
        scale = ref[what].abs().max().item()
        assert torch.allclose(got, ref[what], rtol=1e-9, atol=1e-9 * scale), (what, (got - ref[what]).abs().max())
        assert torch.allclose(getattr(oracle, what)(x, t), ref[what], rtol=1e-9, atol=1e-9 * scale)
    x0, eps = den.x0_eps(x, t)
    assert torch.allclose(x0, ref["x0"], rtol=1e-9, atol=1e-9) and torch.allclose(eps, ref["eps"], rtol=1e-9, atol=1e-9)
    assert torch.allclose(den.predict(x, t), exact_net(oracle, prediction)(x, t), rtol=0, atol=0)


@pytest.mark.parametrize("sde", SDES, ids=ids)
def test_velocity_is_the_probability_flow_drift(sde):
    """alpha' x0_hat + sigma' eps_hat = f x - g^2 score / 2 (Song et al., 2021, Eq. 13)."""
    den = GM.denoiser(sde)
    x, t = batch(sde)
    pf = sde.ode_drift(x, t, den.score(x, t))
    assert torch.allclose(den.velocity(x, t), pf, rtol=1e-10, atol=1e-10 * pf.abs().max().item())


@pytest.mark.parametrize("sched", SCHEDULES, ids=ids)
def test_tweedie(sched):
    """x0_hat = (x + sigma^2 score) / alpha with the score of ``toy`` (independent code path)."""
    den = GM.denoiser(sched)
    x, t = batch(sched, seed=3)
    a, s = (c[:, None] for c in sched.marginal(t))
    tweedie = (x + s**2 * GM.score(x, a[:, 0], s[:, 0])) / a
    assert torch.allclose(den.x0(x, t), tweedie, rtol=1e-9, atol=1e-9)


def test_bind_passes_keyword_arguments_and_nfe_counts_calls():
    seen = []

    def net(x, t, y=None, scale=1.0):
        seen.append((y, scale))
        return scale * x if y is None else scale * x + y[:, None].to(x.dtype)

    den = Denoiser(net, VPSDE(), "eps", scale=2.0)
    x = torch.ones(3, 2)
    labels = torch.tensor([0, 1, 2])
    bound = den.bind(y=labels)
    assert torch.equal(bound.eps(x, 0.5), 2 * x + labels[:, None])
    assert seen[-1][0] is labels and seen[-1][1] == 2.0  # both the old and the new keyword
    assert den.cond == {"scale": 2.0}  # the original is unchanged
    assert torch.equal(den.eps(x, 0.5), 2 * x) and seen[-1] == (None, 2.0)
    assert torch.equal(bound.bind(scale=3.0).eps(x, 0.5), 3 * x + labels[:, None])  # overrides
    # nfe: one network call per method call, x0_eps included
    fresh = Denoiser(net, VPSDE(), "eps")
    calls = len(seen)
    for method in ("x0", "eps", "score", "velocity", "x0_eps", "predict"):
        getattr(fresh, method)(x, 0.5)
    assert fresh.nfe == 6 == len(seen) - calls
    fresh.nfe = 0
    fresh.score(x, torch.full((3,), 0.2))
    assert fresh.nfe == 1


def test_denoiser_rejects_bad_input():
    sched = VPSDE()
    with pytest.raises(ValueError, match="prediction"):
        Denoiser(lambda x, t: x, sched, "noise")
    with pytest.raises(ValueError, match="net"):
        Denoiser("not a net", sched, "eps")
    with pytest.raises(ValueError, match="schedule"):
        Denoiser(lambda x, t: x, "vp", "eps")
    wrong = Denoiser(lambda x, t: x[:, :1], sched, "eps")
    with pytest.raises(ValueError, match="shape"):
        wrong.eps(torch.zeros(4, 2), 0.5)
    den = GM.denoiser(sched)
    x = torch.zeros(4, 2, dtype=torch.float64)
    for bad in (1.5, -0.1, torch.tensor([0.5, 0.5, 0.5, 2.0])):
        with pytest.raises(ValueError, match=r"\bt\b"):
            den.x0(x, bad)
    with pytest.raises(ValueError, match=r"\bt\b"):
        den.x0(x, torch.full((3,), 0.5))  # wrong batch size
    with pytest.raises(ValueError, match=r"\bt\b"):
        den.x0(x, torch.full((4, 1), 0.5))  # not (B,)
    with pytest.raises(ValueError, match=r"\bt\b"):
        GM.denoiser(DDPM_LINEAR).eps(x, -1.5)
    with pytest.raises(ValueError, match=r"\bt\b"):
        GM.denoiser(DDPM_LINEAR).eps(x, 999.5)


@pytest.mark.parametrize("sched", [DDPM_LINEAR, VPSDE(), StraightPath()], ids=ids)
def test_clip_x0_clips_and_is_consistent(sched):
    """clip_x0: x0_hat = clip(D, lo, hi), eps_hat = (x - alpha x0_hat) / sigma, and nothing
    changes where D is inside the range."""
    wide = GaussianMixture([[-3.0, 0.0], [3.0, 0.5]], stds=0.3)  # x0_hat often outside [-1, 1]
    den = wide.denoiser(sched)
    clipped = clip_x0(den, (-1.0, 1.0))
    x, t = batch(sched, n=256, seed=5)
    x = 3 * x
    d, c = den.x0(x, t), clipped.x0(x, t)
    assert torch.equal(c, d.clamp(-1, 1))
    outside = (d.abs() > 1).any(1)
    assert 10 < outside.sum() < 246  # both cases occur
    a, s = (v[:, None] for v in sched.marginal(t))
    assert torch.allclose(clipped.eps(x, t), (x - a * c) / s, rtol=1e-10, atol=1e-10)
    assert torch.allclose(clipped.eps(x, t)[~outside], den.eps(x, t)[~outside], rtol=1e-10, atol=1e-10)
    assert torch.allclose(clipped.score(x, t), -clipped.eps(x, t) / s, rtol=1e-12)
    with pytest.raises(ValueError, match="value_range"):
        clip_x0(den, (1.0, -1.0))
    with pytest.raises(ValueError, match="denoiser"):
        clip_x0(lambda x, t: x)


def test_perturb_and_prior():
    """perturb draws alpha x0 + sigma eps and returns eps; the prior's log-density is Normal's."""
    sched = DDPM_LINEAR
    x0 = torch.randn(5, 3, dtype=torch.float64)
    noise = torch.randn(5, 3, dtype=torch.float64)
    xt, eps = sched.perturb(x0, torch.tensor([-1.0, 0.0, 3.5, 500.0, 999.0]), noise=noise)
    a, s = sched.marginal(torch.tensor([-1.0, 0.0, 3.5, 500.0, 999.0]))
    assert eps is noise and torch.allclose(xt, a[:, None] * x0 + s[:, None] * noise)
    assert torch.equal(xt[0], x0[0])  # time -1 is the data
    ve = VESDE(0.01, 10.0)
    x = torch.randn(4, 2, dtype=torch.float64)
    ref = (-0.5 * (x / 10.0) ** 2 - math.log(10.0) - 0.5 * math.log(2 * math.pi)).sum(1)
    assert torch.allclose(ve.prior_log_prob(x), ref)
    assert np.isclose(ve.prior_sample((20000, 1), torch.Generator().manual_seed(0)).std().item(), 10.0, rtol=0.03)
