"""Flow matching against closed forms: Gaussian-to-Gaussian paths (linear marginal velocity),
the VP path against the probability-flow ODE of sde.py, linear ODEs for the integrator's order,
rotation fields for straightness, and the optimality of the minibatch OT assignment.

Convention (the library's): t = 0 is the data x0, t = 1 the noise eps, x_t = alpha(t) x0 + sigma(t) eps;
the straight path has alpha = 1 - t, sigma = t and velocity u = eps - x0."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffusion_edu.denoiser import Denoiser
from diffusion_edu.flow_matching import COUPLINGS, StraightPath, cfm_loss, reflow, straightness
from diffusion_edu.nets import TimeMLP
from diffusion_edu.samplers import probability_flow, solve_ode
from diffusion_edu.schedules import time_grid
from diffusion_edu.sde import VESDE, VPSDE, SubVPSDE
from diffusion_edu.toy import GaussianMixture, eight_gaussians
from diffusion_edu.transport import ot_pairs

M, S1 = torch.tensor([2.0, -1.0], dtype=torch.float64), 0.5  # data N(M, S1^2 I) at t = 0, noise N(0, I) at t = 1


def gauss_velocity(x, t):
    """Exact marginal velocity of the straight path from the data N(M, S1^2 I) (t = 0) to the noise
    N(0, I) (t = 1): with u = eps - x0 and x_t = (1 - t) x0 + t eps,
    v = E[u | x_t] = -M + (t - (1 - t) S1^2) / var_t (x - (1 - t) M), var_t = (1 - t)^2 S1^2 + t^2."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(len(x))[:, None]
    var = (1 - t) ** 2 * S1**2 + t**2
    return -M.to(x) + (t - (1 - t) * S1**2) / var * (x - (1 - t) * M.to(x))


# -- paths -----------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [StraightPath(), VPSDE(), SubVPSDE(), VESDE(0.05, 10.0)], ids=repr)
def test_path_velocity_is_the_time_derivative(path, gen):
    """u_t = alpha'(t) x0 + sigma'(t) eps (the target of cfm_loss) equals a central difference of
    x_t = perturb(x0, t, noise=eps) in t; the error of a central difference with h = 1e-5 in
    float64 is O(h^2 x''') + O(1e-16 / h) ~ 1e-10 relative (measured < 1e-7)."""
    x0 = torch.randn(50, 3, generator=gen, dtype=torch.float64)
    eps = torch.randn(50, 3, generator=gen, dtype=torch.float64) + 1.0
    h = 1e-5
    lo = max(path.t_eps, 1e-3)  # the VP velocity is singular at t = 0, where sigma = 0
    t = lo + h + (path.T - lo - 2 * h) * torch.rand(50, generator=gen, dtype=torch.float64)
    da, ds = path.marginal_derivatives(t)
    ut = da[:, None] * x0 + ds[:, None] * eps
    fd = (path.perturb(x0, t + h, noise=eps)[0] - path.perturb(x0, t - h, noise=eps)[0]) / (2 * h)
    assert torch.allclose(fd, ut, rtol=1e-6, atol=1e-6), (fd - ut).abs().max()
    # cfm_loss regresses on exactly this u_t: a "network" returning it has zero loss
    target = lambda x, tt: da[:, None].to(x) * x0.to(x) + ds[:, None].to(x) * eps.to(x)  # noqa: E731
    assert cfm_loss(target, x0, eps, schedule=path, t=t).item() < 1e-12


def test_straight_path_endpoints_and_velocity(gen):
    x0, eps = torch.randn(10, 2, generator=gen), torch.randn(10, 2, generator=gen)
    path = StraightPath()
    assert torch.equal(path.perturb(x0, 0.0, noise=eps)[0], x0)  # t = 0: the data
    assert torch.equal(path.perturb(x0, 1.0, noise=eps)[0], eps)  # t = 1: the noise
    assert torch.allclose(path.perturb(x0, 0.3, noise=eps)[0], 0.7 * x0 + 0.3 * eps)
    da, ds = path.marginal_derivatives(0.3)
    assert torch.allclose(da * x0 + ds * eps, eps - x0)  # u = eps - x0
    t = torch.full((10,), 0.3)
    assert cfm_loss(lambda x, tt: eps - x0, x0, eps, t=t).item() < 1e-12  # float32 inputs


def test_vp_path_is_the_vp_sde(gen):
    """The VP path of flow matching is the VPSDE schedule itself: the data end is exact, the noise
    end is alpha(1) = exp(-5.025) ~ 6.6e-3 away from pure noise; cfm_loss draws its times on
    [1e-5, 1] (the velocity sigma' ~ 1 / sqrt(t) diverges at t = 0)."""
    sde = VPSDE()
    x0 = torch.randn(10, 2, generator=gen, dtype=torch.float64)
    eps = torch.randn(10, 2, generator=gen, dtype=torch.float64)
    a1, s1 = sde.marginal(1.0)
    assert torch.allclose(sde.perturb(x0, 1.0, noise=eps)[0], a1 * x0 + s1 * eps)
    assert a1.item() == pytest.approx(math.exp(-5.025), rel=1e-9)
    assert torch.equal(sde.perturb(x0, 0.0, noise=eps)[0], x0)
    seen = []

    def record(x, t):
        seen.append(t)
        return torch.zeros_like(x)

    cfm_loss(record, torch.randn(4096, 2, generator=gen), torch.randn(4096, 2, generator=gen), schedule=sde,
             generator=gen)
    assert seen[0].min().item() >= 1e-5 and seen[0].max().item() <= 1.0
    assert seen[0].min().item() < 0.01 and seen[0].max().item() > 0.99  # uniform over the range
    with pytest.raises(ValueError, match="t must lie in"):
        sde.marginal(1.5)


def test_vp_marginal_velocity_is_the_probability_flow_drift(gen):
    """E[u_t | x_t] for the VP path, alpha' E[x0 | x_t] + sigma' E[eps | x_t], equals the
    probability-flow ODE velocity of the VP SDE, f - g^2 score / 2 (Song et al., 2021): diffusion
    is one member of the flow-matching family. Both sides are exact closed forms (float64 round-off)."""
    gm = GaussianMixture([[-1.0, 0.0], [1.5, 1.0]], stds=[0.3, 0.5], weights=[0.3, 0.7])
    sde = VPSDE()
    den = gm.denoiser(sde)
    x = 1.5 * torch.randn(200, 2, generator=gen, dtype=torch.float64)
    for t in [0.01, 0.2, 0.6, 0.95]:
        tb = torch.full((200,), t, dtype=torch.float64)
        ode = sde.ode_drift(x, tb, gm.score_fn(sde)(x, tb))
        assert torch.allclose(den.velocity(x, tb), ode, rtol=1e-9, atol=1e-9), t


@pytest.mark.parametrize("t", [1.0, 0.7, 0.1])
def test_mixture_velocity_matches_the_gaussian_closed_form(t, gen):
    den = GaussianMixture(M[None], stds=S1).denoiser(StraightPath())
    x = torch.randn(100, 2, generator=gen, dtype=torch.float64)
    tb = torch.full((100,), t, dtype=torch.float64)
    assert torch.allclose(den.velocity(x, tb), gauss_velocity(x, tb), rtol=1e-10, atol=1e-10), t


def test_mixture_velocity_at_the_data_end(gen):
    """At t = 0, v(x, 0) = E[eps] - x = -x (the old mixture_velocity was finite there)."""
    den = GaussianMixture(M[None], stds=S1).denoiser(StraightPath())
    x = torch.randn(100, 2, generator=gen, dtype=torch.float64)
    assert torch.allclose(den.velocity(x, 0.0), gauss_velocity(x, 0.0), rtol=1e-10, atol=1e-10)


# -- the loss --------------------------------------------------------------------------------
def test_exact_marginal_velocity_minimises_cfm_loss():
    """Gaussian to Gaussian. With common random numbers, L(v + d) - L(v) = E||d||^2 + 2 E[(v - u).d]
    and the second term has mean zero (E[u | x_t] = v): the difference must be E||d||^2 within
    5 SE. Also L(v) itself = int_0^1 E Var(u | x_t) dt, a 1-D integral done by quadrature."""
    n = 40_000
    g = torch.Generator().manual_seed(0)
    eps = torch.randn(n, 2, generator=g, dtype=torch.float64)
    x0 = M + S1 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    t = torch.rand(n, generator=g, dtype=torch.float64)

    def loss(net):
        return cfm_loss(net, x0, eps, t=t, reduce=False)  # per example, mean over the 2 dims

    base = loss(gauss_velocity)
    # closed form: per dimension Var(eps - x0 | x_t) = (1 + S1^2) - (t - (1 - t) S1^2)^2 / var_t
    tq = torch.linspace(0, 1, 20_001, dtype=torch.float64)
    var_t = (1 - tq) ** 2 * S1**2 + tq**2
    expected = torch.trapezoid((1 + S1**2) - (tq - (1 - tq) * S1**2) ** 2 / var_t, tq).item()
    se = base.std().item() / math.sqrt(n)
    assert abs(base.mean().item() - expected) < 5 * se, (base.mean().item(), expected, se)

    perturbations = {
        "shift": lambda x, t: gauss_velocity(x, t) + 0.1,
        "scale": lambda x, t: 1.1 * gauss_velocity(x, t),
        "rotate": lambda x, t: gauss_velocity(x, t) + 0.1 * x.flip(1) * torch.tensor([1.0, -1.0], dtype=x.dtype),
    }
    xt = StraightPath().perturb(x0, t, noise=eps)[0]
    for name, net in perturbations.items():
        diff = loss(net) - base  # per example
        d2 = (net(xt, t) - gauss_velocity(xt, t)).pow(2).mean(1)  # ||d||^2 / D
        se = diff.std().item() / math.sqrt(n)
        assert diff.mean().item() > 0, name
        assert abs(diff.mean().item() - d2.mean().item()) < 5 * se, (name, diff.mean().item(), d2.mean().item(), se)


def test_ot_coupling_lowers_the_pairing_cost(gen):
    """The exact assignment is optimal among permutations, the identity included, so its mean
    cost is never above the independent pairing; for 256 Gaussian points it is far below."""
    noise = torch.randn(256, 2, generator=gen)
    x0 = eight_gaussians(256, generator=gen)
    a, b = ot_pairs(noise, x0)
    cost_ind = (x0 - noise).pow(2).sum(1).mean().item()
    cost_ot = (b - a).pow(2).sum(1).mean().item()
    assert torch.equal(a, noise)
    assert torch.equal(b.sort(0).values, x0.sort(0).values)  # a permutation of the data
    # measured: independent ~5.0 (= E||eps||^2 + E||x0||^2 = 2 + 4.04), OT ~1.6
    assert cost_ot < 0.5 * cost_ind, (cost_ot, cost_ind)


def test_cfm_loss_ot_coupling_is_the_loss_on_the_repaired_batch(gen):
    net = TimeMLP(dim=2, hidden=16, depth=1)
    x0, noise = torch.randn(64, 2, generator=gen) + 2, torch.randn(64, 2, generator=gen)
    t = torch.rand(64, generator=gen)
    a, b = ot_pairs(noise, x0)  # the noise kept in order, the data re-ordered
    assert torch.equal(cfm_loss(net, x0, noise, "ot", t=t), cfm_loss(net, b, a, "independent", t=t))
    assert not torch.equal(cfm_loss(net, x0, noise, "ot", t=t), cfm_loss(net, x0, noise, t=t))


def test_cfm_loss_is_generator_driven_and_draws_t_in_range(gen):
    net = TimeMLP(dim=2, hidden=16, depth=1)
    x0, noise = torch.randn(32, 2, generator=gen), torch.randn(32, 2, generator=gen)
    l1 = cfm_loss(net, x0, noise, schedule=VPSDE(), generator=torch.Generator().manual_seed(3))
    l2 = cfm_loss(net, x0, noise, schedule=VPSDE(), generator=torch.Generator().manual_seed(3))
    l3 = cfm_loss(net, x0, noise, schedule=VPSDE(), generator=torch.Generator().manual_seed(4))
    assert torch.equal(l1, l2) and torch.isfinite(l1) and not torch.equal(l1, l3)
    seen = []
    cfm_loss(lambda x, t: seen.append(t) or torch.zeros_like(x), x0, noise, generator=gen)
    assert 1e-5 <= seen[0].min().item() and seen[0].max().item() <= 1  # StraightPath: t ~ U(1e-5, 1)


def test_errors_name_the_argument(gen):
    x = torch.randn(8, 2, generator=gen)
    v = lambda x, t: x  # noqa: E731
    den = Denoiser(v, StraightPath(), "velocity")
    with pytest.raises(ValueError, match="coupling"):
        cfm_loss(v, x, x, "sinkhorn")
    with pytest.raises(ValueError, match="same shape"):
        cfm_loss(v, x, x[:4])
    with pytest.raises(ValueError, match="finite"):
        cfm_loss(v, x, x * float("nan"))
    with pytest.raises(ValueError, match="shape of x"):
        cfm_loss(lambda x, t: x[:, :1], x, x)
    with pytest.raises(ValueError, match="method"):
        probability_flow(den, x, time_grid(StraightPath(), 4), method="rk5")
    with pytest.raises(ValueError, match="steps"):
        time_grid(StraightPath(), 0)
    with pytest.raises(ValueError, match="monotone"):
        solve_ode(v, x, torch.tensor([0.0, 0.5, 0.2]))
    with pytest.raises(ValueError, match="ts must decrease"):
        probability_flow(den, x, torch.linspace(0, 1, 5))  # samplers run from noise (t = 1) to data
    with pytest.raises(ValueError, match="t must lie in"):
        StraightPath().perturb(x, 1.5)
    with pytest.raises(ValueError, match="denoiser must be a Denoiser"):
        straightness(v, x)
    with pytest.raises(ValueError, match="new_net"):
        reflow(GaussianMixture(M[None], stds=S1).denoiser(StraightPath()), x, 1)  # no velocity net to copy


@pytest.mark.parametrize("call, match", [
    (lambda x, net, den: cfm_loss("not a net", x, x), "net must be a callable"),
    (lambda x, net, den: cfm_loss(net, x, x, ["ot"]), "coupling must be one of"),
    (lambda x, net, den: cfm_loss(net, x, x, schedule="straight"), "schedule must be a Schedule"),
    (lambda x, net, den: cfm_loss(net, x, x, reduce="no"), "reduce must be True or False"),
    (lambda x, net, den: cfm_loss(net, x[0], x[0]), "x0 must be a tensor of shape"),
    (lambda x, net, den: cfm_loss(net, x, x.numpy()), "noise must be a tensor of shape"),
    (lambda x, net, den: cfm_loss(net, x, x, t=torch.full((8,), 2.0)), "t must lie in"),
    (lambda x, net, den: cfm_loss(net, x, x, t=torch.rand(3)), r"t must have shape \(8,\)"),
    (lambda x, net, den: straightness(den, x, 0), "steps must be a positive int"),
    (lambda x, net, den: straightness(den, x, True), "steps must be a positive int"),
    (lambda x, net, den: straightness(den, x[0]), "noise must be a tensor of shape"),
    (lambda x, net, den: straightness(den, x * float("inf")), "noise.*finite"),
    (lambda x, net, den: reflow(den, x * float("nan"), 1), "noise.*finite"),
    (lambda x, net, den: reflow(den, x, 0), "train_steps must be a positive int"),
    (lambda x, net, den: reflow(den, x, 1, ode_steps=2.5), "ode_steps must be a positive int"),
    (lambda x, net, den: reflow(den, x, 1, batch_size=0), "batch_size must be a positive int"),
    (lambda x, net, den: reflow(den, x, 1, lr=-1e-3), "lr must be a finite float > 0"),
    (lambda x, net, den: reflow(den, x, 1, lr=float("nan")), "lr must be a finite float > 0"),
    (lambda x, net, den: reflow(den, x, 1, ema_decay=1.0), r"ema_decay must be a float in \[0, 1\)"),
    (lambda x, net, den: reflow(den, x, 1, new_net=lambda x, t: x), "new_net must be a torch.nn.Module"),
    (lambda x, net, den: reflow(den, x, 1, ode_steps=2, method="rk5"), "method"),
])
def test_public_functions_reject_bad_input(call, match, gen):
    """Each public function checks what its equation assumes and names the argument in a ValueError,
    before any work is done (no torch-internal message, no silent wrong answer)."""
    x = torch.randn(8, 2, generator=gen)
    net = TimeMLP(dim=2, hidden=8, depth=1)
    with pytest.raises(ValueError, match=match):
        call(x, net, velocity_model(net))


@settings(max_examples=40, deadline=None)
@given(B=st.integers(1, 9), dims=st.lists(st.integers(1, 4), min_size=1, max_size=3),
       dtype=st.sampled_from([torch.float32, torch.float64]), t=st.one_of(st.none(), st.floats(0.0, 1.0)),
       coupling=st.sampled_from(COUPLINGS), seed=st.integers(0, 2**16))
def test_cfm_loss_properties(B, dims, dtype, t, coupling, seed):
    """For any batch size, data shape, dtype, coupling and t (None, or a float broadcast over the batch):
    per-example losses have shape (B,), reduce=True is their mean, a zero network's loss
    is the mean square of u = eps - x0 over the (re-paired) pairs, the OT pairing never costs more than the
    pairs as given, and a network returning u exactly has zero loss."""
    g = torch.Generator().manual_seed(seed)
    x0, noise = torch.randn(B, *dims, generator=g, dtype=dtype), torch.randn(B, *dims, generator=g, dtype=dtype)
    zero = lambda x, tt: torch.zeros_like(x)  # noqa: E731
    per = cfm_loss(zero, x0, noise, coupling, t=t, generator=torch.Generator().manual_seed(1), reduce=False)
    assert per.shape == (B,) and torch.isfinite(per).all()  # (dtype: dsm_loss returns float64 for float32 data)
    mean = cfm_loss(zero, x0, noise, coupling, t=t, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(mean, per.mean())
    independent = (noise - x0).pow(2).flatten(1).mean(1)  # |u|^2 / D per pair, as given
    if coupling == "independent":
        torch.testing.assert_close(per, independent.to(per.dtype), rtol=1e-5, atol=1e-6)
        exact = lambda x, tt: noise - x0  # noqa: E731
        assert cfm_loss(exact, x0, noise, t=t, generator=g).item() < 1e-10
    else:  # a permutation of the data: optimal, hence never above the identity pairing
        assert per.sum().item() <= independent.sum().item() * (1 + 1e-5) + 1e-6


# -- integration -----------------------------------------------------------------------------
def test_solve_ode_orders_on_a_linear_field():
    """dx/dt = A x with A a rotation plus contraction: x(1) = expm(A) x(0). Halving the step
    divides the error by ~2 (Euler, 1st order), ~4 (Heun, 2nd order) and ~16 (RK4, 4th order)."""
    A = torch.tensor([[-0.5, -2.0], [2.0, -0.5]], dtype=torch.float64)
    x0 = torch.randn(20, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = x0 @ torch.linalg.matrix_exp(A).T
    field = lambda x, t: x @ A.T  # noqa: E731
    for method, order in [("euler", 1), ("heun", 2), ("rk4", 4)]:
        err = [(solve_ode(field, x0, torch.linspace(0, 1, n + 1, dtype=torch.float64), method=method) - exact)
               .abs().max().item() for n in (64, 128, 256)]
        ratios = [err[0] / err[1], err[1] / err[2]]
        # the asymptotic ratio is 2^order; at 64+ steps the next term is < 10% (measured 2.05, 4.0, 16.0)
        assert all(abs(r - 2**order) < 0.15 * 2**order for r in ratios), (method, err, ratios)


def test_solve_ode_uses_the_time_grid():
    """dx/dt = 2 t c: x(1) = x(0) + c. Euler's left sums give c (1 - 1/N) exactly; Heun's
    trapezoid is exact for a velocity linear in t. Backwards (from t = 1 to 0) Heun returns to x(0)."""
    c = torch.tensor([1.0, -3.0], dtype=torch.float64)
    field = lambda x, t: 2 * t * c.expand_as(x)  # noqa: E731
    x0 = torch.zeros(5, 2, dtype=torch.float64)
    assert torch.allclose(solve_ode(field, x0, torch.linspace(0, 1, 11), method="euler"), x0 + c * (1 - 1 / 10))
    x1 = solve_ode(field, x0, torch.linspace(0, 1, 4), method="heun")
    assert torch.allclose(x1, x0 + c)
    assert torch.allclose(solve_ode(field, x1, torch.linspace(1, 0, 4), method="heun"), x0)
    seen = []
    solve_ode(field, x0, torch.tensor([0.0, 0.1, 0.5, 1.0]), callback=lambda i, t, x: seen.append((i, t)))
    assert seen == [(0, pytest.approx(0.1)), (1, 0.5), (2, 1.0)]


def test_flow_of_the_exact_velocity_transports_the_marginals():
    """Integrating the exact marginal velocity from N(0, I) at t = 1 down to t = 0 gives
    N(M, S1^2 I) (the point of flow matching). For Gaussians the flow is linear: x(0) = M + S1 x(1)
    exactly, so Heun with 200 steps must match it to its O(h^2) error (measured 2.1e-5 with
    solve_ode over the whole grid, as the old integrate_flow; 7.2e-5 with probability_flow, whose
    last step to t = 0 returns x0_hat = x - t u instead of a Heun step)."""
    noise = torch.randn(500, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    den = Denoiser(gauss_velocity, StraightPath(), "velocity")
    ts = time_grid(StraightPath(), 200)
    assert (probability_flow(den, noise, ts, method="heun") - (M + S1 * noise)).abs().max() < 1e-4
    assert (solve_ode(den.velocity, noise, ts, method="heun") - (M + S1 * noise)).abs().max() < 1e-4
    # the exact oracle of the same mixture gives the same flow
    oracle = GaussianMixture(M[None], stds=S1).denoiser(StraightPath())
    assert (probability_flow(oracle, noise, ts, method="heun") - (M + S1 * noise)).abs().max() < 1e-4


# -- straightness ----------------------------------------------------------------------------
def velocity_model(fn):
    return Denoiser(fn, StraightPath(), "velocity")


def test_straightness_is_zero_for_straight_paths(gen):
    """A constant field, and the straight lines x_t = t eps + (1 - t) x0 to the linear map
    x0 = M + S1 eps run at constant speed, give S = 0 up to round-off (the computation is the
    variance of the velocity along each path)."""
    noise = torch.randn(100, 2, generator=gen, dtype=torch.float64)
    assert straightness(velocity_model(lambda x, t: torch.ones_like(x) * M), noise) < 1e-20
    # along x_t = t eps + (1 - t)(M + S1 eps), u = eps - x0 = (1 - S1) eps - M with
    # eps = (x - (1 - t) M) / (t + (1 - t) S1)
    def v_ot(x, t):
        t = t[:, None]
        return (1 - S1) * (x - (1 - t) * M) / (t + (1 - t) * S1) - M

    assert straightness(velocity_model(v_ot), noise, 50) < 1e-20


def test_straightness_of_a_rotation_matches_the_closed_form(gen):
    """v = w J x rotates at constant speed w r: S = int ||c - v||^2 = w^2 r^2 - ||c||^2 with
    ||c||^2 = 2 r^2 (1 - cos w) the chord. Euler with N steps has O(1/N) error (spiral-out)."""
    w = math.pi / 2
    J = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    noise = torch.randn(100, 2, generator=gen, dtype=torch.float64)
    r2 = noise.pow(2).sum(1).mean().item()
    expected = w**2 * r2 - 2 * r2 * (1 - math.cos(w))
    S = straightness(velocity_model(lambda x, t: w * x @ J.T), noise, 2000)
    assert S == pytest.approx(expected, rel=5e-3), (S, expected)


# -- reflow ----------------------------------------------------------------------------------
def test_reflow_straightens_a_rotation():
    """The rotation by 90 degrees is a curved flow (S = (pi^2/4 - 2 + 2 cos(pi/2)) r^2 ~ 0.47 r^2
    with E r^2 = 2). Its coupling x0 = R^T eps is linear, the straight lines between the pairs
    never cross (det((1-t) I + t R) > 0), so the rectified flow is exactly straight: a small
    net trained on the pairs must have S far below the rotation's (4 seeds: 0.0020-0.0032
    against 0.94-1.05; we require 20 times below, a margin of ~15 on the measured values)."""
    torch.manual_seed(0)
    w = math.pi / 2
    J = torch.tensor([[0.0, -1.0], [1.0, 0.0]])

    class Rotation(torch.nn.Module):
        def forward(self, x, t):
            return w * x @ J.T

    g = torch.Generator().manual_seed(0)
    noise = torch.randn(2000, 2, generator=g)
    new = TimeMLP(dim=2, hidden=32, depth=2)
    res = reflow(velocity_model(Rotation()), noise, 200, new_net=new, ode_steps=200, batch_size=128, lr=3e-3,
                 ema_decay=0.95, generator=g)
    # from t = 1 down to 0 the field turns eps by -90 degrees: x0 = exp(-w J) eps = J^T eps
    assert torch.allclose(res.x0, noise @ J, atol=1e-3)  # Heun, 200 steps: measured 1.4e-4
    assert torch.equal(res.noise, noise)
    assert len(res.losses) == 200 and res.model is new
    probe = torch.randn(500, 2, generator=g)
    S_old = straightness(velocity_model(Rotation()), probe, 100)
    S_new = straightness(velocity_model(res.ema_model), probe, 100)
    assert S_old > 0.8 and S_new < 0.05 * S_old, (S_old, S_new)


def test_reflow_default_is_a_warm_start_copy(gen):
    net = TimeMLP(dim=2, hidden=16, depth=1)
    before = [p.clone() for p in net.parameters()]
    res = reflow(velocity_model(net), torch.randn(64, 2, generator=gen), 3, ode_steps=4, batch_size=16, generator=gen)
    assert res.model is not net and res.x0.shape == (64, 2)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))  # the old flow is untouched


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda():
    """Every entry point runs on the GPU and agrees with the CPU on the same inputs (float32
    round-off; the OT assignment is the same permutation)."""
    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(0)
    net = TimeMLP(dim=2, hidden=16, depth=1)
    net_gpu = TimeMLP(dim=2, hidden=16, depth=1).to(dev)
    net_gpu.load_state_dict(net.state_dict())
    x0, noise = torch.randn(64, 2, generator=g), torch.randn(64, 2, generator=g)
    t = torch.rand(64, generator=g)
    for coupling in ("independent", "ot"):
        for path in (StraightPath(), VPSDE()):
            tt = t * (1 - 1e-3) + 1e-3
            cpu = cfm_loss(net, x0, noise, coupling, path, t=tt)
            gpu = cfm_loss(net_gpu, x0.to(dev), noise.to(dev), coupling, path, t=tt)
            assert gpu.device.type == "cuda"
            torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-5)
    ts = time_grid(StraightPath(), 4)
    x = probability_flow(velocity_model(net_gpu), noise.to(dev), ts, method="heun")
    assert x.device.type == "cuda"
    torch.testing.assert_close(x.cpu(), probability_flow(velocity_model(net), noise, ts, method="heun"),
                               rtol=1e-4, atol=1e-5)
    oracle = GaussianMixture([[0.0, 1.0]], stds=0.5).denoiser(VPSDE())
    v = oracle.velocity(x0.to(dev).double(), torch.full((64,), 0.5, dtype=torch.float64))
    assert v.device.type == "cuda"
    torch.testing.assert_close(v.cpu(), oracle.velocity(x0.double(), 0.5))
    S_gpu, S_cpu = straightness(velocity_model(net_gpu), noise.to(dev), 4), straightness(velocity_model(net), noise, 4)
    assert math.isfinite(S_gpu) and S_gpu == pytest.approx(S_cpu, rel=1e-4, abs=1e-7)
    # reflow: the same generator seed draws the same batches and times on both devices (the generator lives on
    # the CPU), so the pairs, the losses and the trained weights must agree up to float32 round-off
    kw = dict(ode_steps=2, batch_size=16, ema_decay=0.5)
    res = reflow(velocity_model(net_gpu), noise.to(dev), 3, generator=torch.Generator().manual_seed(1), device=dev, **kw)
    ref = reflow(velocity_model(net), noise, 3, generator=torch.Generator().manual_seed(1), device="cpu", **kw)
    assert res.x0.device.type == "cuda" and next(res.model.parameters()).device.type == "cuda"
    torch.testing.assert_close(res.x0.cpu(), ref.x0, rtol=1e-4, atol=1e-5)
    assert len(res.losses) == 3 and res.losses == pytest.approx(ref.losses, rel=1e-4, abs=1e-6)
    assert ref.losses[0] != ref.losses[1]  # the steps saw different batches: the comparison is not vacuous
    for p_gpu, p_cpu in zip(res.ema_model.parameters(), ref.ema_model.parameters()):
        torch.testing.assert_close(p_gpu.detach().cpu(), p_cpu.detach(), rtol=1e-4, atol=1e-5)
    assert any(not torch.equal(p, q) for p, q in zip(ref.model.parameters(), net.parameters()))  # it trained
