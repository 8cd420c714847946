"""Optimal transport through POT against closed forms, invariants and independent implementations:
exact W2 (sorted matching in 1-D, quantile formula with weights, brute-force plans), Sinkhorn
(the textbook iteration, the entropic bound, the Gaussian Schrödinger coupling), sliced W2 (sorted
projections, angle quadrature), Gaussian closed forms (POT's Bures-Wasserstein routines), the entropic
value and the Sinkhorn divergence (Janati et al.'s closed form on fine grids, limits, debiasing), and the
input checks (weights that are not probability vectors, matrices that are not covariances, bad reg)."""

import math

import numpy as np
import ot
import pytest
import torch

from diffusion_edu.transport import (
    entropic_ot, gaussian_entropic_ot, gaussian_map, gaussian_w2, ot_pairs, ot_plan, sinkhorn_divergence, sinkhorn_plan,
    sinkhorn_w2, sliced_w2, sqrtm_psd, transport_cost, w2,
)


def test_one_dimension_equals_sorted_matching(gen):
    """In 1-D the optimal coupling of equal-weight clouds matches the sorted points."""
    x = torch.randn(300, 1, generator=gen, dtype=torch.float64)
    y = 2 * torch.rand(300, 1, generator=gen, dtype=torch.float64) + 1
    expected = ((x.sort(0).values - y.sort(0).values) ** 2).mean().sqrt().item()
    assert w2(x, y) == pytest.approx(expected, rel=1e-9)


def test_translation_symmetry_and_identity(gen):
    x = torch.randn(200, 3, generator=gen)
    shift = torch.tensor([1.0, -2.0, 0.5])
    assert w2(x, x + shift) == pytest.approx(shift.norm().item(), rel=1e-5)  # translation is optimal
    # POT forms |x|^2 + |y|^2 - 2 x.y: round-off ~1e-16 on W2^2, hence ~1e-8 on its root
    assert w2(x, x) == pytest.approx(0.0, abs=1e-6)
    y = torch.randn(150, 3, generator=gen)
    assert w2(x, y) == pytest.approx(w2(y, x), rel=1e-9)


def test_unequal_sizes_and_numpy_input():
    x = np.array([[0.0], [2.0]])
    y = np.array([[1.0]])
    assert w2(x, y) == pytest.approx(1.0)


def test_bad_input():
    with pytest.raises(ValueError, match="same dimension"):
        w2(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"x must have shape \(n, D\)"):
        w2(torch.zeros(3), torch.zeros(3, 1))
    with pytest.raises(ValueError, match="y must be finite"):
        w2(torch.zeros(3, 1), torch.tensor([[0.0], [float("nan")]]))


# -- weights, plans, pairs -------------------------------------------------------------------
def _random_spd(D, gen, scale=1.0):
    B = torch.randn(D, D, generator=gen, dtype=torch.float64)
    return scale * (B @ B.T / D + 0.1 * torch.eye(D, dtype=torch.float64))


def test_weighted_w2_in_one_dimension_matches_quantile_formula(gen):
    """Weighted 1-D W2^2 against POT's independent quantile-function routine ot.wasserstein_1d."""
    x = torch.randn(40, 1, generator=gen, dtype=torch.float64)
    y = torch.rand(25, 1, generator=gen, dtype=torch.float64) * 3
    a = torch.rand(40, generator=gen, dtype=torch.float64)
    b = torch.rand(25, generator=gen, dtype=torch.float64)
    a, b = a / a.sum(), b / b.sum()
    expected = ot.wasserstein_1d(x[:, 0].numpy(), y[:, 0].numpy(), a.numpy(), b.numpy(), p=2)
    assert w2(x, y, a, b) ** 2 == pytest.approx(float(expected), rel=1e-9)


@pytest.mark.parametrize("method", ["exact", "sinkhorn"])
def test_plan_marginals_sum_to_the_weights(method, gen):
    x = torch.randn(30, 2, generator=gen)
    y = torch.randn(20, 2, generator=gen) + 1
    a = torch.rand(30, generator=gen, dtype=torch.float64)
    b = torch.rand(20, generator=gen, dtype=torch.float64)
    a, b = a / a.sum(), b / b.sum()
    P = ot_plan(x, y, method, reg=0.05, a=a, b=b)
    assert (P >= 0).all()
    # exact: the network simplex is exact up to float64 round-off; Sinkhorn's last update rescales
    # the rows (exact to round-off) and it stops when the column sums are within 1e-9 (L2)
    assert np.allclose(P.sum(1), a.numpy(), rtol=0, atol=1e-14)
    assert np.allclose(P.sum(0), b.numpy(), rtol=0, atol=1e-9)
    Pu = ot_plan(x, y, method, reg=0.05)  # uniform weights by default
    assert np.allclose(Pu.sum(1), 1 / 30, rtol=0, atol=1e-14) and np.allclose(Pu.sum(0), 1 / 20, rtol=0, atol=1e-9)


def test_exact_plan_is_a_permutation_and_its_cost_is_w2(gen):
    x, y = torch.randn(50, 3, generator=gen), torch.randn(50, 3, generator=gen)
    P = ot_plan(x, y)
    assert np.allclose(np.sort(P, axis=1)[:, -1], 1 / 50, rtol=0, atol=1e-15) and np.allclose(P.sum(1), 1 / 50, rtol=0, atol=1e-15)  # one 1/n per row
    cost = (P * ot.dist(x.double().numpy(), y.double().numpy())).sum()
    assert cost == pytest.approx(w2(x, y) ** 2, rel=1e-10)


def test_ot_pairs_lowers_the_pairing_cost_to_w2(gen):
    x0 = torch.randn(128, 2, generator=gen)
    x1 = 0.5 * torch.randn(128, 2, generator=gen) + torch.tensor([3.0, 0.0])
    y0, y1 = ot_pairs(x0, x1)
    assert y0 is x0
    assert torch.equal(y1.sort(0).values, x1.sort(0).values)  # a permutation of the same points
    before, after = transport_cost(x0, x1), transport_cost(y0, y1)
    assert after < before
    assert after == pytest.approx(w2(x0, x1) ** 2, rel=1e-5)  # float32 points, float64 sums
    imgs = torch.randn(16, 1, 4, 4, generator=gen)  # any (B, *dims)
    assert ot_pairs(imgs, imgs.flip(0))[1].equal(imgs)


def test_transport_cost_bounds_w2_from_above(gen):
    x, y = torch.randn(60, 2, generator=gen), torch.randn(60, 2, generator=gen)
    assert transport_cost(x, y) >= w2(x, y) ** 2 - 1e-12
    assert transport_cost(np.zeros((3, 2)), np.full((3, 2), 2.0)) == pytest.approx(8.0)


# -- Sinkhorn --------------------------------------------------------------------------------
def test_sinkhorn_tends_to_exact_as_reg_shrinks(gen):
    """0 <= <P_reg, M> - W2^2 <= reg * log n (entropy of a coupling of uniform marginals lies
    between log n and 2 log n), and the gap shrinks with reg."""
    n = 150
    x, y = torch.randn(n, 2, generator=gen), torch.randn(n, 2, generator=gen) + torch.tensor([1.0, 0.0])
    exact = w2(x, y) ** 2
    gaps = []
    for reg in [1.0, 0.3, 0.1, 0.03]:
        gap = sinkhorn_w2(x, y, reg) ** 2 - exact
        assert -1e-9 < gap <= reg * math.log(n), (reg, gap)
        gaps.append(gap)
    assert all(g1 > g2 for g1, g2 in zip(gaps, gaps[1:])), gaps
    assert gaps[-1] < 0.02 * exact


def test_sinkhorn_library_matches_the_textbook_iteration_and_relative_reg(gen):
    x, y = torch.randn(40, 2, generator=gen, dtype=torch.float64), torch.randn(30, 2, generator=gen, dtype=torch.float64)
    M = ot.dist(x.numpy(), y.numpy())
    reg = 0.5
    K = np.exp(-M / reg)
    a, b = np.full(40, 1 / 40), np.full(30, 1 / 30)
    v = np.ones(30)
    for _ in range(2000):  # u = a / K v, v = b / K^T u (Cuturi, 2013)
        u = a / (K @ v)
        v = b / (K.T @ u)
    P_hand = u[:, None] * K * v[None, :]
    # run the library to a marginal error of 1e-13 (the hand loop has converged to round-off)
    assert np.allclose(sinkhorn_plan(x, y, reg, tol=1e-13), P_hand, rtol=0, atol=1e-13)
    assert np.allclose(sinkhorn_plan(x, y, reg, method="sinkhorn_log", tol=1e-13), P_hand, rtol=0, atol=1e-13)
    # at POT's default tol=1e-9 the plan is within 1e-9 of the fixed point
    assert np.allclose(sinkhorn_plan(x, y, reg), P_hand, rtol=0, atol=1e-9)
    # ot_plan's reg is relative to the mean cost: the same plan as the absolute reg * mean(M)
    assert np.allclose(ot_plan(x, y, "sinkhorn", reg=0.2), sinkhorn_plan(x, y, 0.2 * M.mean()), rtol=0, atol=1e-12)


def test_sinkhorn_with_reg_two_s2_is_the_gaussian_schrodinger_coupling():
    """Static Schrödinger bridge between N(0, a^2) and N(m, b^2) for a Brownian reference with
    increment variance s^2: a Gaussian coupling whose cross-covariance c solves
    2 c^2 + eps c - 2 a^2 b^2 = 0 with eps = 2 s^2 (minimise E|X - Y|^2 - eps H). We discretise
    both Gaussians on uniform grids: the trapezoid rule is spectrally accurate for Gaussians,
    and we measured |c_plan - c| ~ 5e-11 at 200, 400 and 800 grid points; allow 1e-8."""
    a_, b_, m, s2 = 1.0, 0.5, 1.0, 0.25
    eps = 2 * s2
    xs = np.linspace(-7 * a_, 7 * a_, 400)[:, None]
    ys = m + np.linspace(-7 * b_, 7 * b_, 400)[:, None]
    wa = np.exp(-xs[:, 0] ** 2 / (2 * a_**2))
    wb = np.exp(-(ys[:, 0] - m) ** 2 / (2 * b_**2))
    wa, wb = wa / wa.sum(), wb / wb.sum()
    P = sinkhorn_plan(xs, ys, eps, wa, wb)
    mx, my = (P.sum(1) * xs[:, 0]).sum(), (P.sum(0) * ys[:, 0]).sum()
    c_plan = (P * (xs - mx) * (ys - my).T).sum()
    c_theory = (-eps + math.sqrt(eps**2 + 16 * a_**2 * b_**2)) / 4
    assert c_plan == pytest.approx(c_theory, abs=1e-8)


# -- sliced ----------------------------------------------------------------------------------
def test_sliced_w2_is_below_w2_and_matches_sorted_projections(gen):
    x, y = torch.randn(200, 3, generator=gen), 0.5 * torch.randn(200, 3, generator=gen) + 1
    sw = sliced_w2(x, y, 500, torch.Generator().manual_seed(0))
    assert sw <= w2(x, y) / math.sqrt(3) + 1e-12  # E (theta . v)^2 = |v|^2 / D
    # the same directions by hand: sort the projections and match them in order
    theta = torch.randn(3, 500, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    px, py = x.double() @ theta, y.double() @ theta
    by_hand = ((px.sort(0).values - py.sort(0).values) ** 2).mean().sqrt().item()
    assert sw == pytest.approx(by_hand, rel=1e-10)


def test_sliced_w2_converges_with_projections(gen):
    """In 2-D the exact sliced distance is an integral over one angle: a 4000-point midpoint
    rule is exact to ~1e-10. The Monte Carlo error with L directions is about sd / sqrt(L)
    (sd measured from the per-direction values); allow 5 of them, and check that 10,000
    directions do better than 100."""
    x, y = torch.randn(300, 2, generator=gen), torch.randn(300, 2, generator=gen) * torch.tensor([2.0, 0.3])
    phi = (torch.arange(4000, dtype=torch.float64) + 0.5) * math.pi / 4000
    theta = torch.stack([phi.cos(), phi.sin()])  # (2, 4000) directions on a half circle
    per_dir = ((x.double() @ theta).sort(0).values - (y.double() @ theta).sort(0).values).pow(2).mean(0)
    exact, sd = per_dir.mean().sqrt().item(), per_dir.std().item()
    errs = {}
    for L in (100, 10_000):
        est = sliced_w2(x, y, L, torch.Generator().manual_seed(L))
        se = sd / math.sqrt(L) / (2 * exact)  # delta method: SE of the root
        assert abs(est - exact) < 5 * se, (L, est, exact, se)
        errs[L] = abs(est - exact)
    assert errs[10_000] < 0.5 * errs[100] + 1e-3


# -- Gaussians -------------------------------------------------------------------------------
@pytest.mark.parametrize("D", [1, 2, 5])
def test_gaussian_w2_matches_pot_and_the_commuting_case(D, gen):
    m1, m2 = torch.randn(D, generator=gen, dtype=torch.float64), torch.randn(D, generator=gen, dtype=torch.float64)
    C1, C2 = _random_spd(D, gen), _random_spd(D, gen, 3.0)
    pot = float(ot.gaussian.bures_wasserstein_distance(m1.numpy(), m2.numpy(), C1.numpy(), C2.numpy()))
    assert gaussian_w2(m1, C1, m2, C2) == pytest.approx(pot, rel=1e-9)
    assert gaussian_w2(m1, C1, m2, C2) == pytest.approx(gaussian_w2(m2, C2, m1, C1), rel=1e-9)
    d1, d2 = torch.rand(D, generator=gen, dtype=torch.float64) + 0.1, torch.rand(D, generator=gen, dtype=torch.float64)
    closed = math.sqrt((m1 - m2).pow(2).sum() + (d1.sqrt() - d2.sqrt()).pow(2).sum())  # diagonal case
    assert gaussian_w2(m1, torch.diag(d1), m2, torch.diag(d2)) == pytest.approx(closed, rel=1e-12)
    assert gaussian_w2(m1.numpy(), C1.numpy(), m1.numpy(), C1.numpy()) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("D", [1, 2, 4])
def test_gaussian_map_pushes_forward_and_costs_w2(D, gen):
    m1, m2 = torch.randn(D, generator=gen, dtype=torch.float64), torch.randn(D, generator=gen, dtype=torch.float64)
    C1, C2 = _random_spd(D, gen), _random_spd(D, gen, 2.0)
    A, b = gaussian_map(m1, C1, m2, C2)
    assert torch.allclose(A, A.T) and (torch.linalg.eigvalsh(A) > 0).all()  # gradient of a convex map
    assert torch.allclose(A @ C1 @ A, C2, rtol=0, atol=1e-10) and torch.allclose(A @ m1 + b, m2, rtol=0, atol=1e-12)
    A_pot, b_pot = ot.gaussian.bures_wasserstein_mapping(m1.numpy(), m2.numpy(), C1.numpy(), C2.numpy())
    assert np.allclose(A.numpy(), A_pot, rtol=0, atol=1e-8) and np.allclose(b.numpy(), b_pot, rtol=0, atol=1e-8)
    # E|X - T X|^2 for X ~ N(m1, C1), in closed form, equals W2^2
    I = torch.eye(D, dtype=torch.float64)
    cost = ((I - A) @ m1 - b).pow(2).sum() + torch.trace((I - A) @ C1 @ (I - A).T)
    assert cost.item() == pytest.approx(gaussian_w2(m1, C1, m2, C2) ** 2, rel=1e-9)


def test_bad_input_of_the_new_functions(gen):
    x = torch.randn(5, 2, generator=gen)
    with pytest.raises(ValueError, match="a must be a vector of 5 weights"):
        w2(x, x, a=[1.0, 2.0])
    with pytest.raises(ValueError, match="reg must be a finite number > 0"):
        sinkhorn_plan(x, x, 0.0)
    with pytest.raises(ValueError, match="method must be"):
        sinkhorn_plan(x, x, 1.0, method="greenkhorn")
    with pytest.raises(ValueError, match="did not reach the marginals"):
        sinkhorn_plan(100 * x, -100 * x, 1e-3)  # exp(-M / reg) underflows to 0
    with pytest.raises(ValueError, match="n_projections"):
        sliced_w2(x, x, 0)
    with pytest.raises(ValueError, match="C1 must be positive definite"):
        gaussian_map([0.0, 0.0], torch.zeros(2, 2), [0.0, 0.0], torch.eye(2))
    with pytest.raises(ValueError, match="C2 must be symmetric"):
        gaussian_w2([0.0, 0.0], torch.eye(2), [0.0, 0.0], torch.tensor([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="same shape"):
        transport_cost(torch.zeros(3, 2), torch.zeros(4, 2))


def test_sqrtm_psd_squares_back_and_clips_round_off(gen):
    """The public symmetric square root: R R = C and R symmetric PSD for a random SPD matrix; a
    rank-deficient PSD matrix (round-off negative eigenvalues) still gives a real root."""
    C = _random_spd(6, gen)
    R = sqrtm_psd(C)
    torch.testing.assert_close(R @ R, C, rtol=1e-10, atol=1e-12)
    assert torch.equal(R, R.T) or torch.allclose(R, R.T, atol=1e-14)
    assert torch.linalg.eigvalsh(R).min() > 0
    v = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    P = v @ v.T  # rank 2
    R = sqrtm_psd(P)
    assert torch.isfinite(R).all()
    torch.testing.assert_close(R @ R, P, rtol=1e-7, atol=1e-7)


# -- input validation: what the equations assume --------------------------------------------
def test_weights_must_be_probability_vectors(gen):
    x, y = torch.randn(4, 2, generator=gen), torch.randn(3, 2, generator=gen)
    with pytest.raises(ValueError, match="a must be a probability vector summing to 1"):
        w2(x, y, a=[0.5, 0.5, 0.5, 0.5])  # mass 2 against mass 1: not a coupling problem
    with pytest.raises(ValueError, match="b must be a probability vector: finite and non-negative"):
        sinkhorn_plan(x, y, 1.0, b=[1.5, -0.25, -0.25])
    with pytest.raises(ValueError, match="b must be a probability vector"):
        ot_plan(x, y, b=[float("nan"), 0.5, 0.5])
    with pytest.raises(ValueError, match="a must be a probability vector"):
        sliced_w2(x, y, 10, a=torch.full((4,), 0.3))
    # float32 round-off in the sum is accepted and removed
    a32 = torch.full((4,), 0.25, dtype=torch.float32)
    assert w2(x, y, a=a32) == pytest.approx(w2(x, y), rel=1e-12)


@pytest.mark.parametrize("reg", [0.0, -1.0, float("inf"), float("nan"), True, "0.1"])
def test_reg_must_be_a_positive_finite_number(reg, gen):
    x = torch.randn(5, 2, generator=gen)
    for fn in (sinkhorn_plan, entropic_ot, sinkhorn_divergence):
        with pytest.raises(ValueError, match="reg must be a finite number > 0"):
            fn(x, x, reg)
    with pytest.raises(ValueError, match="reg must be a finite number > 0"):
        gaussian_entropic_ot([0.0], [[1.0]], [0.0], [[1.0]], reg)


def test_matrices_must_be_covariances():
    with pytest.raises(ValueError, match="C must be symmetric"):
        sqrtm_psd(torch.tensor([[1.0, 0.5], [0.0, 1.0]], dtype=torch.float64))
    with pytest.raises(ValueError, match="C must be positive semi-definite"):
        sqrtm_psd(torch.tensor([[1.0, 0.0], [0.0, -0.5]], dtype=torch.float64))
    with pytest.raises(ValueError, match="C must be a square"):
        sqrtm_psd(torch.ones(2, 3))
    with pytest.raises(ValueError, match="C1 must be positive semi-definite"):
        gaussian_w2([0.0, 0.0], torch.tensor([[1.0, 2.0], [2.0, 1.0]]), [0.0, 0.0], torch.eye(2))
    with pytest.raises(ValueError, match="C2 must be positive semi-definite"):
        gaussian_map([0.0], [[1.0]], [0.0], [[-1.0]])
    with pytest.raises(ValueError, match="C1 must be positive definite"):
        gaussian_entropic_ot([0.0, 0.0], torch.diag(torch.tensor([1.0, 0.0])), [0.0, 0.0], torch.eye(2), 1.0)
    with pytest.raises(ValueError, match="m1 must be"):
        gaussian_w2([0.0, 0.0, 0.0], torch.eye(2), [0.0, 0.0], torch.eye(2))


def test_ot_pairs_checks_its_batches():
    with pytest.raises(ValueError, match="x0 and x1 must be torch tensors"):
        ot_pairs(np.zeros((3, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="same shape"):
        ot_pairs(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="same shape"):
        ot_pairs(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="x0 and x1 must be finite"):
        ot_pairs(torch.zeros(3, 2), torch.full((3, 2), float("inf")))


# -- entropic value, Sinkhorn divergence, Gaussian closed form -------------------------------
def _grid_gaussians(a_, b_, m, n=400):
    xs = np.linspace(-7 * a_, 7 * a_, n)[:, None]
    ys = m + np.linspace(-7 * b_, 7 * b_, n)[:, None]
    wa, wb = np.exp(-xs[:, 0] ** 2 / (2 * a_**2)), np.exp(-(ys[:, 0] - m) ** 2 / (2 * b_**2))
    return xs, ys, wa / wa.sum(), wb / wb.sum()


@pytest.mark.parametrize("eps", [0.2, 1.0, 4.0])
def test_entropic_value_on_a_fine_grid_is_janati_closed_form(eps):
    """Discretised Gaussians: the plan's cost and KL(P | a b^T) are Riemann sums of smooth
    Gaussian integrands (spectrally accurate), so the discrete entropic value, plan cost and
    cross-covariance match the continuous closed form of Janati et al. (2020); measured < 1e-9."""
    a_, b_, m = 1.0, 0.5, 1.0
    xs, ys, wa, wb = _grid_gaussians(a_, b_, m)
    value, cost, cross = gaussian_entropic_ot([0.0], [[a_**2]], [m], [[b_**2]], eps)
    assert cross.item() == pytest.approx((-eps + math.sqrt(eps**2 + 16 * a_**2 * b_**2)) / 4, abs=1e-12)
    P = sinkhorn_plan(xs, ys, eps, wa, wb, tol=1e-12)
    assert float((P * ot.dist(xs, ys)).sum()) == pytest.approx(cost, abs=1e-7)
    assert entropic_ot(xs, ys, eps, wa, wb, tol=1e-12) == pytest.approx(value, abs=1e-7)


def test_gaussian_entropic_ot_limits_and_commuting_case(gen):
    D = 3
    m1, m2 = torch.randn(D, generator=gen, dtype=torch.float64), torch.randn(D, generator=gen, dtype=torch.float64)
    C1, C2 = _random_spd(D, gen), _random_spd(D, gen, 2.0)
    w2sq = gaussian_w2(m1, C1, m2, C2) ** 2
    value, cost, cross = gaussian_entropic_ot(m1, C1, m2, C2, 1e-6)
    assert value == pytest.approx(w2sq, abs=1e-4) and cost == pytest.approx(w2sq, abs=1e-5)  # eps -> 0: OT
    # the plan is a valid joint covariance, and its cost exceeds W2^2 for eps > 0
    value, cost, cross = gaussian_entropic_ot(m1, C1, m2, C2, 0.5)
    joint = torch.cat([torch.cat([C1, cross], 1), torch.cat([cross.T, C2], 1)])
    assert torch.linalg.eigvalsh(joint).min() > 0 and cost > w2sq
    # commuting (diagonal) covariances: D independent 1-D problems with the 1-D root
    d1, d2 = torch.rand(D, generator=gen, dtype=torch.float64) + 0.2, torch.rand(D, generator=gen, dtype=torch.float64) + 0.2
    _, _, cross = gaussian_entropic_ot(m1, torch.diag(d1), m2, torch.diag(d2), 0.7)
    c1d = (-0.7 + torch.sqrt(0.49 + 16 * d1 * d2)) / 4
    torch.testing.assert_close(cross, torch.diag(c1d), rtol=0, atol=1e-12)


def test_sinkhorn_divergence_is_debiased(gen):
    """Feydy et al. (2019): S_eps >= 0, = 0 iff equal measures, S_eps -> W2^2 as eps -> 0. The
    entropic value itself is biased: OT_eps(x, x) > 0."""
    x = torch.randn(60, 2, generator=gen, dtype=torch.float64)
    y = 0.5 * torch.randn(50, 2, generator=gen, dtype=torch.float64) + torch.tensor([1.0, 0.0], dtype=torch.float64)
    for eps in (0.05, 0.5, 5.0):
        assert abs(sinkhorn_divergence(x, x, eps)) < 1e-9
        assert entropic_ot(x, x, eps) > 1e-3 * eps
        s = sinkhorn_divergence(x, y, eps)
        assert s > 0 and s == pytest.approx(sinkhorn_divergence(y, x, eps), rel=1e-6)
        assert s < entropic_ot(x, y, eps)
    # Cuturi's objective <P, M> - eps H(P) differs from OT_eps by the constant eps (H(a) + H(b))
    eps = 0.5
    P = sinkhorn_plan(x, y, eps)
    cuturi = float((P * ot.dist(x.numpy(), y.numpy())).sum() + eps * (P[P > 0] * np.log(P[P > 0])).sum())
    assert entropic_ot(x, y, eps) == pytest.approx(cuturi + eps * (math.log(60) + math.log(50)), rel=1e-12)
    # eps -> 0: measured S_eps / W2^2 - 1 = -1.2%, -0.7%, -0.3% at eps = 0.1, 0.05, 0.02 (gap O(eps))
    assert sinkhorn_divergence(x, y, 0.02, max_iter=100_000) == pytest.approx(w2(x, y) ** 2, rel=0.01)


def test_gaussian_sinkhorn_divergence_limits():
    """Closed forms: S_eps -> W2^2 as eps -> 0 and -> |m1 - m2|^2 (the MMD with kernel -|x - y|^2,
    Feydy et al., 2019) as eps -> infinity."""
    m1, C1 = torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64)
    m2, C2 = torch.tensor([0.5, 0.0], dtype=torch.float64), torch.tensor([[1.5, 0.4], [0.4, 0.5]], dtype=torch.float64)

    def S(eps):
        v = lambda ma, Ca, mb, Cb: gaussian_entropic_ot(ma, Ca, mb, Cb, eps)[0]
        return v(m1, C1, m2, C2) - 0.5 * v(m1, C1, m1, C1) - 0.5 * v(m2, C2, m2, C2)

    assert S(1e-4) == pytest.approx(gaussian_w2(m1, C1, m2, C2) ** 2, abs=1e-6)
    assert S(1e6) == pytest.approx(0.25, abs=1e-4)
    assert 0.25 < S(10.0) < gaussian_w2(m1, C1, m2, C2) ** 2
