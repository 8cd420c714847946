"""Flow matching against closed forms: Gaussian-to-Gaussian paths (linear marginal velocity),
the VP path against the probability-flow ODE of sde.py, linear ODEs for the integrator's order,
rotation fields for straightness, and the optimality of the minibatch OT assignment."""

import math

import pytest
import torch

from diffusion_edu.flow_matching import (
    DiffusionPath,
    StraightPath,
    cfm_loss,
    integrate_flow,
    mixture_velocity,
    reflow,
    straightness,
)
from diffusion_edu.nets import TimeMLP
from diffusion_edu.sde import VPSDE, SubVPSDE
from diffusion_edu.toy import GaussianMixture, eight_gaussians
from diffusion_edu.transport import ot_pairs

M, S1 = torch.tensor([2.0, -1.0], dtype=torch.float64), 0.5  # data N(M, S1^2 I), noise N(0, I)


def gauss_velocity(x, t):
    """Exact marginal velocity of the straight path from N(0, I) to N(M, S1^2 I):
    v = E[x1 - x0 | x_t] = M + (t S1^2 - (1 - t)) / var_t (x - t M), var_t = (1-t)^2 + t^2 S1^2."""
    t = t.to(x.dtype)[:, None]
    var = (1 - t) ** 2 + t**2 * S1**2
    return M.to(x) + (t * S1**2 - (1 - t)) / var * (x - t * M.to(x))


# -- paths -----------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [StraightPath(), DiffusionPath(), DiffusionPath(SubVPSDE())], ids=repr)
def test_path_velocity_is_the_time_derivative(path, gen):
    """u_t equals a central difference of x_t in t; the error of a central difference with
    h = 1e-5 in float64 is O(h^2 x''') + O(1e-16 / h) ~ 1e-10 relative (measured < 1e-7)."""
    x0 = torch.randn(50, 3, generator=gen, dtype=torch.float64)
    x1 = torch.randn(50, 3, generator=gen, dtype=torch.float64) + 1.0
    h = 1e-5
    t = path.t_min + h + (path.t_max - path.t_min - 2 * h) * torch.rand(50, generator=gen, dtype=torch.float64)
    _, ut = path(x0, x1, t)
    fd = (path(x0, x1, t + h)[0] - path(x0, x1, t - h)[0]) / (2 * h)
    assert torch.allclose(fd, ut, rtol=1e-6, atol=1e-6), (fd - ut).abs().max()


def test_straight_path_endpoints_and_velocity(gen):
    x0, x1 = torch.randn(10, 2, generator=gen), torch.randn(10, 2, generator=gen)
    path = StraightPath()
    assert torch.equal(path(x0, x1, 0.0)[0], x0)
    assert torch.equal(path(x0, x1, 1.0)[0], x1)
    assert torch.allclose(path(x0, x1, 0.3)[1], x1 - x0)


def test_vp_path_is_the_vp_marginal_read_backwards(gen):
    """x_t = alpha(s) x1 + sigma(s) x0 with s = 1 - t: the data end is exact, the noise end is
    alpha(1) = exp(-5.025) ~ 6.6e-3 away from pure noise (stated in the module docstring)."""
    sde, path = VPSDE(), DiffusionPath()
    x0, x1 = torch.randn(10, 2, generator=gen, dtype=torch.float64), torch.randn(10, 2, generator=gen, dtype=torch.float64)
    a1, s1 = sde.marginal(1.0)
    assert torch.allclose(path(x0, x1, 0.0)[0], a1 * x1 + s1 * x0)
    assert a1.item() == pytest.approx(math.exp(-5.025), rel=1e-9)
    a, s, _, _ = path.coefficients(torch.tensor([path.t_max]))  # float32 t_max: SDE time ~t_eps
    assert a.item() == pytest.approx(1.0, abs=1e-4)
    assert s.item() == pytest.approx(sde.marginal(sde.t_eps)[1].item(), rel=1e-4)  # ~0.0105
    with pytest.raises(ValueError, match="t must lie in"):
        path.coefficients(torch.tensor([1.0]))  # beyond t_max = 1 - t_eps: sigma = 0, ds/dt infinite


def test_vp_marginal_velocity_is_minus_the_probability_flow_drift(gen):
    """E[u_t | x_t] for the VP path equals the probability-flow ODE velocity of the VP SDE,
    f - g^2 score / 2 (Song et al., 2021), with time reversed (d/dt = -d/ds): diffusion is one
    member of the flow-matching family. Both sides are exact closed forms (float64 round-off)."""
    gm = GaussianMixture([[-1.0, 0.0], [1.5, 1.0]], stds=[0.3, 0.5], weights=[0.3, 0.7])
    sde, path = VPSDE(), DiffusionPath()
    v = mixture_velocity(gm, path)
    x = 1.5 * torch.randn(200, 2, generator=gen, dtype=torch.float64)
    for t in [0.05, 0.4, 0.8, 0.99]:
        tb = torch.full((200,), t, dtype=torch.float64)
        s = 1.0 - tb
        ode = sde.ode_drift(x, s, gm.score_fn(sde)(x, s))
        assert torch.allclose(v(x, tb), -ode, rtol=1e-9, atol=1e-9), t


def test_mixture_velocity_matches_the_gaussian_closed_form(gen):
    gm = GaussianMixture(M[None], stds=S1)
    v = mixture_velocity(gm, StraightPath())
    x = torch.randn(100, 2, generator=gen, dtype=torch.float64)
    for t in [0.0, 0.3, 0.9, 1.0]:
        tb = torch.full((100,), t, dtype=torch.float64)
        assert torch.allclose(v(x, tb), gauss_velocity(x, tb), rtol=1e-10, atol=1e-10), t


# -- the loss --------------------------------------------------------------------------------
def test_exact_marginal_velocity_minimises_cfm_loss():
    """Gaussian to Gaussian. With common random numbers, L(v + d) - L(v) = E||d||^2 + 2 E[(v - u).d]
    and the second term has mean zero (E[u | x_t] = v): the difference must be E||d||^2 within
    5 SE. Also L(v) itself = int_0^1 E Var(u | x_t) dt, a 1-D integral done by quadrature."""
    n = 40_000
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(n, 2, generator=g, dtype=torch.float64)
    x1 = M + S1 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    t = torch.rand(n, generator=g, dtype=torch.float64)

    def loss(net):
        return cfm_loss(net, x0, x1, t=t, reduce=False)  # per example, mean over the 2 dims

    base = loss(gauss_velocity)
    # closed form: per dimension Var(x1 - x0 | x_t) = (1 + S1^2) - (t S1^2 - (1 - t))^2 / var_t
    tq = torch.linspace(0, 1, 20_001, dtype=torch.float64)
    var_t = (1 - tq) ** 2 + tq**2 * S1**2
    expected = torch.trapezoid((1 + S1**2) - (tq * S1**2 - (1 - tq)) ** 2 / var_t, tq).item()
    se = base.std().item() / math.sqrt(n)
    assert abs(base.mean().item() - expected) < 5 * se, (base.mean().item(), expected, se)

    perturbations = {
        "shift": lambda x, t: gauss_velocity(x, t) + 0.1,
        "scale": lambda x, t: 1.1 * gauss_velocity(x, t),
        "rotate": lambda x, t: gauss_velocity(x, t) + 0.1 * x.flip(1) * torch.tensor([1.0, -1.0], dtype=x.dtype),
    }
    for name, net in perturbations.items():
        diff = loss(net) - base  # per example
        d2 = (net(*_xt(x0, x1, t)) - gauss_velocity(*_xt(x0, x1, t))).pow(2).mean(1)  # ||d||^2 / D
        se = diff.std().item() / math.sqrt(n)
        assert diff.mean().item() > 0, name
        assert abs(diff.mean().item() - d2.mean().item()) < 5 * se, (name, diff.mean().item(), d2.mean().item(), se)


def _xt(x0, x1, t):
    return StraightPath()(x0, x1, t)[0], t


def test_ot_coupling_lowers_the_pairing_cost(gen):
    """The exact assignment is optimal among permutations, the identity included, so its mean
    cost is never above the independent pairing; for 256 Gaussian points it is far below."""
    x0 = torch.randn(256, 2, generator=gen)
    x1 = eight_gaussians(256, generator=gen)
    a, b = ot_pairs(x0, x1)
    cost_ind = (x1 - x0).pow(2).sum(1).mean().item()
    cost_ot = (b - a).pow(2).sum(1).mean().item()
    assert torch.equal(a, x0)
    assert torch.equal(b.sort(0).values, x1.sort(0).values)  # a permutation of the data
    # measured: independent ~5.0 (= E||x0||^2 + E||x1||^2 = 2 + 4.04), OT ~1.6
    assert cost_ot < 0.5 * cost_ind, (cost_ot, cost_ind)


def test_cfm_loss_ot_coupling_is_the_loss_on_the_repaired_batch(gen):
    net = TimeMLP(dim=2, hidden=16, depth=1)
    x0, x1 = torch.randn(64, 2, generator=gen), torch.randn(64, 2, generator=gen) + 2
    t = torch.rand(64, generator=gen)
    a, b = ot_pairs(x0, x1)
    assert torch.equal(cfm_loss(net, x0, x1, "ot", t=t), cfm_loss(net, a, b, "independent", t=t))
    assert not torch.equal(cfm_loss(net, x0, x1, "ot", t=t), cfm_loss(net, x0, x1, t=t))


def test_cfm_loss_is_generator_driven_and_draws_t_in_range(gen):
    net = TimeMLP(dim=2, hidden=16, depth=1)
    x0, x1 = torch.randn(32, 2, generator=gen), torch.randn(32, 2, generator=gen)
    l1 = cfm_loss(net, x0, x1, path=DiffusionPath(), generator=torch.Generator().manual_seed(3))
    l2 = cfm_loss(net, x0, x1, path=DiffusionPath(), generator=torch.Generator().manual_seed(3))
    assert torch.equal(l1, l2) and torch.isfinite(l1)


def test_errors_name_the_argument(gen):
    x = torch.randn(8, 2, generator=gen)
    v = lambda x, t: x  # noqa: E731
    with pytest.raises(ValueError, match="coupling"):
        cfm_loss(v, x, x, "sinkhorn")
    with pytest.raises(ValueError, match="same shape"):
        cfm_loss(v, x, x[:4])
    with pytest.raises(ValueError, match="finite"):
        cfm_loss(v, x, x * float("nan"))
    with pytest.raises(ValueError, match="shape of x"):
        cfm_loss(lambda x, t: x[:, :1], x, x)
    with pytest.raises(ValueError, match="method"):
        integrate_flow(v, x, 4, method="rk4")
    with pytest.raises(ValueError, match="steps"):
        integrate_flow(v, x, 0)
    with pytest.raises(ValueError, match="not both"):
        integrate_flow(v, x, torch.linspace(0, 1, 5), t0=0.0)
    with pytest.raises(ValueError, match="monotone"):
        integrate_flow(v, x, torch.tensor([0.0, 0.5, 0.2]))
    with pytest.raises(ValueError, match="t must lie in"):
        StraightPath()(x, x, 1.5)


# -- integration -----------------------------------------------------------------------------
def test_integrate_flow_orders_on_a_linear_field():
    """dx/dt = A x with A a rotation plus contraction: x(1) = expm(A) x(0). Halving the step
    divides the error by ~2 (Euler, 1st order) and ~4 (Heun, 2nd order)."""
    A = torch.tensor([[-0.5, -2.0], [2.0, -0.5]], dtype=torch.float64)
    x0 = torch.randn(20, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = x0 @ torch.linalg.matrix_exp(A).T
    field = lambda x, t: x @ A.T  # noqa: E731
    for method, order in [("euler", 1), ("heun", 2)]:
        err = [(integrate_flow(field, x0, n, method) - exact).abs().max().item() for n in (64, 128, 256)]
        ratios = [err[0] / err[1], err[1] / err[2]]
        # the asymptotic ratio is 2^order; at 64+ steps the next term is < 10% (measured 2.05, 4.0)
        assert all(abs(r - 2**order) < 0.15 * 2**order for r in ratios), (method, err, ratios)


def test_integrate_flow_uses_the_time_grid():
    """dx/dt = 2 t c: x(1) = x(0) + c. Euler's left sums give c (1 - 1/N) exactly; Heun's
    trapezoid is exact for a velocity linear in t. Backwards (t0=1, t1=0) Heun returns to x(0)."""
    c = torch.tensor([1.0, -3.0], dtype=torch.float64)
    field = lambda x, t: 2 * t[:, None] * c  # noqa: E731
    x0 = torch.zeros(5, 2, dtype=torch.float64)
    assert torch.allclose(integrate_flow(field, x0, 10, "euler"), x0 + c * (1 - 1 / 10))
    x1 = integrate_flow(field, x0, 3, "heun")
    assert torch.allclose(x1, x0 + c)
    assert torch.allclose(integrate_flow(field, x1, 3, "heun", t0=1.0, t1=0.0), x0)
    seen = []
    integrate_flow(field, x0, torch.tensor([0.0, 0.1, 0.5, 1.0]), callback=lambda i, t, x: seen.append((i, t)))
    assert seen == [(0, pytest.approx(0.1)), (1, 0.5), (2, 1.0)]


def test_flow_of_the_exact_velocity_transports_the_marginals():
    """Integrating the exact marginal velocity from N(0, I) gives N(M, S1^2 I) (the point of
    flow matching). For Gaussians the flow is linear: x(1) = M + S1 x(0) exactly, so Heun with
    200 steps must match it to its O(h^2) error (measured ~1e-6)."""
    x0 = torch.randn(500, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x1 = integrate_flow(gauss_velocity, x0, 200, "heun")
    assert (x1 - (M + S1 * x0)).abs().max() < 1e-4


# -- straightness ----------------------------------------------------------------------------
def test_straightness_is_zero_for_straight_paths(gen):
    """A constant field, and the straight lines x_t = x0 + t (x1 - x0) to the linear map
    x1 = M + S1 x0 run at constant speed, give S = 0 up to round-off (the computation is the
    variance of the velocity along each path)."""
    x0 = torch.randn(100, 2, generator=gen, dtype=torch.float64)
    assert straightness(lambda x, t: torch.ones_like(x) * M, x0) < 1e-20
    # the straight-line interpolation from x0 to x1 = M + S1 x0 run at constant speed:
    # x_t = x0 + t (x1 - x0), v(x, t) = (M + (S1 - 1) x0) with x0 = (x - t M) / (1 + t (S1 - 1))
    v_ot = lambda x, t: M + (S1 - 1) * (x - t[:, None] * M) / (1 + t[:, None] * (S1 - 1))  # noqa: E731
    assert straightness(v_ot, x0, 50) < 1e-20


def test_straightness_of_a_rotation_matches_the_closed_form(gen):
    """v = w J x rotates at constant speed w r: S = int ||c - v||^2 = w^2 r^2 - ||c||^2 with
    ||c||^2 = 2 r^2 (1 - cos w) the chord. Euler with N steps has O(1/N) error (spiral-out)."""
    w = math.pi / 2
    J = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    x0 = torch.randn(100, 2, generator=gen, dtype=torch.float64)
    r2 = x0.pow(2).sum(1).mean().item()
    expected = w**2 * r2 - 2 * r2 * (1 - math.cos(w))
    S = straightness(lambda x, t: w * x @ J.T, x0, 2000)
    assert S == pytest.approx(expected, rel=5e-3), (S, expected)


# -- reflow ----------------------------------------------------------------------------------
def test_reflow_straightens_a_rotation():
    """The rotation by 90 degrees is a curved flow (S = (pi^2/4 - 2 + 2 cos(pi/2)) r^2 ~ 0.47 r^2
    with E r^2 = 2). Its coupling x1 = R x0 is linear, the straight lines between the pairs
    never cross (det((1-t) I + t R) > 0), so the rectified flow is exactly straight: a small
    net trained on the pairs must have S far below the rotation's (4 seeds: 0.0019-0.0030
    against 0.94-1.05; we require 20 times below, a margin of ~15 on the measured values)."""
    torch.manual_seed(0)
    w = math.pi / 2
    J = torch.tensor([[0.0, -1.0], [1.0, 0.0]])

    class Rotation(torch.nn.Module):
        def forward(self, x, t):
            return w * x @ J.T

    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2000, 2, generator=g)
    new = TimeMLP(dim=2, hidden=32, depth=2)
    res = reflow(Rotation(), x0, 200, new_net=new, ode_steps=200, batch_size=128, lr=3e-3,
                 ema_decay=0.95, generator=g)
    assert torch.allclose(res.x1, x0 @ J.T, atol=1e-3)  # x1 = R x0 (Heun, 200 steps)
    assert len(res.losses) == 200 and res.model is new
    probe = torch.randn(500, 2, generator=g)
    S_old = straightness(Rotation(), probe, 100)
    S_new = straightness(res.ema_model, probe, 100)
    assert S_old > 0.8 and S_new < 0.05 * S_old, (S_old, S_new)


def test_reflow_default_is_a_warm_start_copy(gen):
    net = TimeMLP(dim=2, hidden=16, depth=1)
    before = [p.clone() for p in net.parameters()]
    res = reflow(net, torch.randn(64, 2, generator=gen), 3, ode_steps=4, batch_size=16, generator=gen)
    assert res.model is not net and res.x1.shape == (64, 2)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))  # the old flow is untouched


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda():
    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(0)
    net = TimeMLP(dim=2, hidden=16, depth=1).to(dev)
    x0, x1 = torch.randn(64, 2, generator=g).to(dev), torch.randn(64, 2, generator=g).to(dev)
    for coupling in ("independent", "ot"):
        for path in (StraightPath(), DiffusionPath()):
            assert torch.isfinite(cfm_loss(net, x0, x1, coupling, path, generator=g))
    x = integrate_flow(net, x0, 4, "heun")
    assert x.device.type == "cuda"
    gm = GaussianMixture([[0.0, 1.0]], stds=0.5)
    assert mixture_velocity(gm, DiffusionPath())(x0, torch.full((64,), 0.5, device=dev)).device.type == "cuda"
    straightness(net, x0, 4)
    res = reflow(net, x0, 2, ode_steps=2, batch_size=16, generator=g, device=dev)
    assert res.x1.device.type == "cuda"
