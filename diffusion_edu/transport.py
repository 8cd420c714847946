r"""Optimal transport between point clouds and between Gaussians: a thin layer over POT
(Flamary et al., 2021), following the notation of Peyré & Cuturi (2019).

For two discrete measures ``mu = sum_i a_i delta_{x_i}`` and ``nu = sum_j b_j delta_{y_j}``
(weights ``1/n`` and ``1/m`` unless given), the squared 2-Wasserstein distance is the value of
the Kantorovich linear programme over couplings ``U(a, b)`` (matrices with row sums ``a`` and
column sums ``b``):

.. math::  W_2^2(\mu, \nu) = \min_{P \in U(a, b)} \sum_{ij} P_{ij}\, \|x_i - y_j\|^2 .

Units: ``W_2`` is a length, in the units of the data; ``W_2^2`` is a squared length (a mean
squared displacement). Every function below says which of the two it returns.

- :func:`w2`, :func:`ot_plan` -- the exact programme (network simplex, ``ot.emd``).
- :func:`sinkhorn_plan`, :func:`sinkhorn_w2` -- entropic OT (Cuturi, 2013):
  ``min_P <P, M> - reg H(P)`` with ``H(P) = -sum P log P``; its plan is
  ``diag(u) exp(-M / reg) diag(v)``. The plan's cost exceeds ``W_2^2`` by at most
  ``reg log(min(n, m))``; with ``reg = 2 s^2`` the plan is the static Schrödinger bridge for a
  Brownian reference whose increment has variance ``s^2`` (Léonard, 2014).
- :func:`entropic_ot`, :func:`sinkhorn_divergence` -- the entropic objective
  ``OT_reg = <P, M> + reg KL(P | a b^T)`` at the entropic plan (non-negative, but not zero
  between equal measures) and its debiased version
  ``S_reg(mu, nu) = OT_reg(mu, nu) - OT_reg(mu, mu) / 2 - OT_reg(nu, nu) / 2``
  (Genevay et al., 2018; Feydy et al., 2019), which is zero for equal measures and positive
  otherwise.
- :func:`sliced_w2` -- the mean of one-dimensional ``W_2^2`` over random directions
  (Rabin et al., 2011; Bonneel et al., 2015), a different and smaller distance.
- :func:`gaussian_w2`, :func:`gaussian_map` -- the closed form between Gaussians
  (Dowson & Landau, 1982; the Bures-Wasserstein distance) and the linear optimal map;
  :func:`gaussian_entropic_ot` -- the entropic problem between Gaussians in closed form
  (Janati et al., 2020).
- :func:`ot_pairs`, :func:`transport_cost` -- re-pair a minibatch optimally; the cost of a map
  given as pairs.

Inputs are ``(n, D)`` torch tensors or NumPy arrays; POT works on CPU float64 copies, so every
function accepts CUDA tensors and returns Python floats or CPU NumPy plans (except
:func:`ot_pairs` and :func:`gaussian_map`, which return tensors on the input's device).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import ot
import torch

__all__ = [
    "w2",
    "ot_plan",
    "sinkhorn_plan",
    "sinkhorn_w2",
    "entropic_ot",
    "sinkhorn_divergence",
    "sliced_w2",
    "gaussian_w2",
    "gaussian_map",
    "gaussian_entropic_ot",
    "ot_pairs",
    "transport_cost",
    "sqrtm_psd",
]


def w2(x, y, a=None, b=None) -> float:
    """Exact 2-Wasserstein distance ``W_2`` (not squared) between two point clouds.

    POT's ``ot.emd2`` solves the Kantorovich programme by the network simplex and returns
    ``W_2^2``; we return its square root. Time about ``O(n^3)`` in the worst case (in practice
    ~0.05 s at ``n = 500`` and ~1 s at ``n = 2000`` on one CPU core), memory ``O(n m)`` for the
    cost matrix.

    Parameters
    ----------
    x : (n, D) tensor or array
    y : (m, D) tensor or array (``m`` may differ from ``n``)
    a, b : (n,) and (m,) probability vectors (non-negative, summing to one within ``1e-6``),
        or None for ``1/n`` and ``1/m``; anything else raises a ``ValueError`` naming ``a`` or
        ``b`` (the programme couples two probability measures: unnormalised weights would
        silently change the problem).

    Returns
    -------
    float, ``W_2`` in the units of the data.

    Examples
    --------
    >>> w2(torch.zeros(5, 2), torch.ones(5, 2))   # every point moves by sqrt(2)
    1.4142135623730951
    >>> w2([[0.0], [2.0]], [[1.0]], a=[0.25, 0.75])  # W2^2 = 0.25 * 1 + 0.75 * 1
    1.0
    """
    xa, ya, a, b = _problem(x, y, a, b)
    M = ot.dist(xa, ya, metric="sqeuclidean")
    w2sq = ot.emd2(a, b, M, numItermax=10_000_000)
    return float(np.sqrt(max(float(w2sq), 0.0)))


def ot_plan(x, y, method: str = "exact", reg: float = 0.05, a=None, b=None) -> np.ndarray:
    """Optimal coupling of two clouds for the squared Euclidean cost, an ``(n, m)`` matrix whose
    rows sum to ``a`` (default ``1/n``) and columns to ``b`` (default ``1/m``).

    ``method="exact"``: network simplex (``ot.emd``), about ``O(n^3)`` time, ``O(n m)`` memory;
    for equal sizes and uniform weights the plan is a permutation matrix divided by ``n``.
    ``method="sinkhorn"``: entropic OT with ``reg`` **relative to the mean cost**: the same plan
    as :func:`sinkhorn_plan` with the absolute regularisation ``reg * mean(M)``,
    ``O(n m)`` time per iteration.

    Parameters
    ----------
    x, y : (n, D) and (m, D) tensors or arrays
    method : ``"exact"`` or ``"sinkhorn"``
    reg : float > 0, used by ``"sinkhorn"`` only, in units of the mean squared distance
    a, b : optional weights, as in :func:`w2`

    Returns
    -------
    (n, m) float64 NumPy array.
    """
    xa, ya, a, b = _problem(x, y, a, b)
    M = ot.dist(xa, ya, metric="sqeuclidean")
    if method == "exact":
        return ot.emd(a, b, M, numItermax=10_000_000)
    if method == "sinkhorn":
        _check_reg(reg)
        scale = M.mean() if M.mean() > 0 else 1.0
        return _sinkhorn(a, b, M, reg * scale, "sinkhorn", 10_000, 1e-9)
    raise ValueError(f"method must be 'exact' or 'sinkhorn', got {method!r}")


def sinkhorn_plan(
    x, y, reg: float, a=None, b=None, *, method: str = "sinkhorn", max_iter: int = 10_000,
    tol: float = 1e-9,
) -> np.ndarray:
    r"""Entropic optimal plan ``argmin_P <P, M> - reg H(P)`` over ``U(a, b)``, ``M_ij = |x_i - y_j|^2``.

    ``reg`` is absolute, in the units of ``M`` (squared length). POT's ``ot.sinkhorn``
    alternates ``u = a / (K v)``, ``v = b / (K^T u)`` with ``K = exp(-M / reg)`` (Cuturi, 2013)
    until the L2 error of the column sums is below ``tol`` (checked every 10 iterations):
    ``O(n m)`` time per iteration and ``O(n m)`` memory; the number of iterations grows roughly
    like ``1 / reg``, and the last digits can be slow: ``tol=1e-6`` often needs ten times fewer
    iterations than POT's default ``1e-9``. ``method="sinkhorn"`` is that matrix scaling (fast;
    a row of ``K`` underflows to zero when ``min_j M_ij / reg`` exceeds ~745).
    ``method="sinkhorn_log"`` iterates on ``log u, log v``: immune to underflow and to constants
    added to rows or columns of ``M``, but POT's NumPy log-sum-exp is slow (~16 s at
    ``n = 500``, ``reg = 0.1``, against 0.1 s for the matrix scaling).

    With ``reg = 2 s^2`` the plan is the static Schrödinger bridge between the two clouds for
    a Brownian reference whose increment over the bridge has variance ``s^2`` per coordinate
    (its transition density is proportional to ``exp(-|x - y|^2 / (2 s^2)) = K_ij``).

    Returns
    -------
    (n, m) float64 NumPy array whose row sums are ``a`` (the last update rescales the rows) and
    whose column sums are ``b`` to ``tol`` (or to wherever ``max_iter`` iterations got).

    Raises
    ------
    ValueError when the plan is not finite or its marginals are off by more than ``1e-4`` in
    total (a too small ``reg`` for ``method="sinkhorn"``, or too few iterations).

    Examples
    --------
    >>> x = torch.tensor([[0.0], [1.0]]); y = torch.tensor([[0.0], [1.0]])
    >>> P = sinkhorn_plan(x, y, reg=0.1)
    >>> bool(abs(P.sum() - 1) < 1e-9 and P[0, 0] > 0.49)  # almost the identity pairing
    True
    """
    _check_reg(reg)
    if method not in ("sinkhorn", "sinkhorn_log"):
        raise ValueError(f"method must be 'sinkhorn' or 'sinkhorn_log', got {method!r}")
    if not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")
    if not (tol > 0 and math.isfinite(tol)):
        raise ValueError(f"tol must be a finite number > 0, got {tol!r}")
    xa, ya, a, b = _problem(x, y, a, b)
    M = ot.dist(xa, ya, metric="sqeuclidean")
    return _sinkhorn(a, b, M, float(reg), method, max_iter, tol)


def sinkhorn_w2(x, y, reg: float, a=None, b=None, **kwargs) -> float:
    """Square root of the transport cost of the entropic plan, ``sqrt(<P_reg, M>)``: a length,
    comparable with :func:`w2`, which it exceeds; its square exceeds ``W_2^2`` by at most
    ``reg * log(min(n, m))`` (because ``H(P_reg) - H(P_exact) <= log min(n, m)``) and tends to
    ``W_2^2`` as ``reg -> 0``. Not the entropic objective (which subtracts ``reg H(P)``) and
    not the debiased Sinkhorn divergence. Same cost as :func:`sinkhorn_plan`, whose keyword
    arguments it accepts.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> x, y = torch.randn(200, 2, generator=g), torch.randn(200, 2, generator=g) + 1.0
    >>> exact, entropic = w2(x, y), sinkhorn_w2(x, y, reg=0.1)
    >>> exact < entropic < (exact**2 + 0.1 * math.log(200)) ** 0.5
    True
    """
    xa, ya, a, b = _problem(x, y, a, b)
    P = sinkhorn_plan(xa, ya, reg, a, b, **kwargs)
    cost = float((P * ot.dist(xa, ya, metric="sqeuclidean")).sum())
    return math.sqrt(max(cost, 0.0))


def entropic_ot(x, y, reg: float, a=None, b=None, **kwargs) -> float:
    r"""The entropic optimal-transport value (a squared length)

    .. math::  \mathrm{OT}_\varepsilon(\mu, \nu) = \min_{P \in U(a, b)} \langle P, M \rangle
               + \varepsilon\, \mathrm{KL}(P \,\|\, a b^\top), \qquad \varepsilon = \text{reg},

    evaluated at the plan of :func:`sinkhorn_plan` (whose keyword arguments it accepts). The
    relative entropy to the independent coupling ``a b^T`` is the convention of Genevay et al.
    (2018), Feydy et al. (2019) and Janati et al. (2020); it differs from Cuturi's
    ``<P, M> - reg H(P)`` by the constant ``reg (H(a) + H(b))`` and makes the value
    non-negative. It is **not** zero for ``mu = nu``: the plan spreads mass between
    neighbours, which is why :func:`sinkhorn_divergence` subtracts the self-terms.
    Same cost as :func:`sinkhorn_plan`.

    Examples
    --------
    >>> x = torch.tensor([[0.0], [1.0]])
    >>> round(entropic_ot(x, x, reg=1e-2), 6)   # identity plan: cost 0, KL(P | a b^T) = log 2
    0.006931
    """
    xa, ya, a, b = _problem(x, y, a, b)
    P = sinkhorn_plan(xa, ya, reg, a, b, **kwargs)
    M = ot.dist(xa, ya, metric="sqeuclidean")
    ab = a[:, None] * b[None, :]
    pos = P > 0  # 0 log 0 = 0
    kl = float((P[pos] * np.log(P[pos] / ab[pos])).sum())
    return float((P * M).sum()) + float(reg) * kl


def sinkhorn_divergence(x, y, reg: float, a=None, b=None, **kwargs) -> float:
    r"""Debiased Sinkhorn divergence (a squared length; Genevay et al., 2018; Feydy et al., 2019):

    .. math::  S_\varepsilon(\mu, \nu) = \mathrm{OT}_\varepsilon(\mu, \nu)
               - \tfrac12 \mathrm{OT}_\varepsilon(\mu, \mu) - \tfrac12 \mathrm{OT}_\varepsilon(\nu, \nu)

    with :func:`entropic_ot`. Feydy et al. prove ``S_eps >= 0`` with equality iff
    ``mu = nu``, and that ``S_eps`` tends to ``W_2^2`` as ``eps -> 0`` and to a kernel
    distance (an MMD with kernel ``-|x - y|^2``, which only compares the means) as
    ``eps -> infinity``. Three Sinkhorn problems, so three times the
    cost of :func:`sinkhorn_plan`, whose keyword arguments it accepts.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(100, 2, generator=g)
    >>> abs(sinkhorn_divergence(x, x, reg=0.5)) < 1e-9     # zero for equal measures
    True
    >>> sinkhorn_divergence(x, x + 1.0, reg=0.5) > 0
    True
    """
    xa, ya, a, b = _problem(x, y, a, b)
    return (entropic_ot(xa, ya, reg, a, b, **kwargs) - 0.5 * entropic_ot(xa, xa, reg, a, a, **kwargs)
            - 0.5 * entropic_ot(ya, ya, reg, b, b, **kwargs))


def sliced_w2(
    x, y, n_projections: int = 200, generator: torch.Generator | None = None, a=None, b=None,
) -> float:
    r"""Monte Carlo sliced 2-Wasserstein distance (a length):

    .. math::  SW_2(\mu, \nu) = \Big( E_{\theta \sim U(S^{D-1})}\, W_2^2(\theta^\top \mu, \theta^\top \nu) \Big)^{1/2},

    estimated with ``n_projections`` directions drawn from ``generator`` (Gaussian vectors,
    normalised). Each one-dimensional ``W_2^2`` is the sorted (quantile) matching, computed by
    POT's ``ot.sliced_wasserstein_distance`` with these directions. Time
    ``O(L (n + m) log(n + m))`` and memory ``O(L (n + m))`` for ``L`` projections: no cost
    matrix. Since ``E (theta . v)^2 = |v|^2 / D``, ``SW_2 <= W_2 / sqrt(D)``: sliced and exact
    ``W_2`` are different distances, not an estimate and its target. The Monte Carlo error
    falls like ``1 / sqrt(L)``.

    Examples
    --------
    >>> x = torch.zeros(10, 2); y = x + torch.tensor([3.0, 0.0])
    >>> round(sliced_w2(x, y, 20_000, torch.Generator().manual_seed(0)), 1)  # 3 / sqrt(2)
    2.1
    """
    if not isinstance(n_projections, int) or n_projections < 1:
        raise ValueError(f"n_projections must be a positive int, got {n_projections!r}")
    xa, ya, a, b = _problem(x, y, a, b)
    theta = torch.randn(xa.shape[1], n_projections, generator=generator, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)  # (D, L) unit directions
    sw = ot.sliced_wasserstein_distance(xa, ya, a, b, p=2, projections=theta.numpy())
    return float(sw)


def gaussian_w2(m1, C1, m2, C2) -> float:
    r"""Closed-form ``W_2`` (a length) between ``N(m1, C1)`` and ``N(m2, C2)`` (Dowson & Landau,
    1982); ``C2`` may be singular, ``C1`` too:

    .. math::  W_2^2 = \|m_1 - m_2\|^2 + \operatorname{tr}\Big(C_1 + C_2
               - 2 \big(C_1^{1/2} C_2 C_1^{1/2}\big)^{1/2}\Big).

    The trace term is the squared Bures distance between the covariances. Matrix square roots
    by symmetric eigendecomposition in float64: ``O(D^3)`` time, ``O(D^2)`` memory, independent
    of any sample size. POT's ``ot.gaussian.bures_wasserstein_distance`` computes the same
    number (the unit tests compare them).

    Parameters
    ----------
    m1, m2 : (D,) means; C1, C2 : (D, D) symmetric positive semi-definite covariances

    Examples
    --------
    >>> gaussian_w2([0.0, 0.0], torch.eye(2), [3.0, 4.0], 4 * torch.eye(2))  # sqrt(25 + 2 * 1)
    5.196152422706632
    """
    m1, C1 = _gaussian(m1, C1, "m1", "C1")
    m2, C2 = _gaussian(m2, C2, "m2", "C2")
    if m1.shape != m2.shape:
        raise ValueError(f"the two Gaussians must have the same dimension, got {m1.shape[0]} and {m2.shape[0]}")
    r1 = sqrtm_psd(C1)
    cross = sqrtm_psd(r1 @ C2 @ r1)
    w2sq = (m1 - m2).pow(2).sum() + torch.trace(C1 + C2 - 2 * cross)
    return math.sqrt(max(w2sq.item(), 0.0))


def gaussian_map(m1, C1, m2, C2) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The optimal map from ``N(m1, C1)`` to ``N(m2, C2)``, ``T(x) = A x + b`` with

    .. math::  A = C_1^{-1/2} \big(C_1^{1/2} C_2 C_1^{1/2}\big)^{1/2} C_1^{-1/2}, \qquad b = m_2 - A m_1 .

    ``A`` is symmetric positive semi-definite, so ``T`` is the gradient of the convex function
    ``x^T A x / 2 + b^T x``: by Brenier's theorem it is the optimal map, and
    ``A C1 A = C2``. ``C1`` must be positive definite. ``O(D^3)`` time. POT's
    ``ot.gaussian.bures_wasserstein_mapping`` returns the same ``(A, b)``.

    Returns
    -------
    ``(A, b)``: ``(D, D)`` and ``(D,)`` float64 tensors on ``m1``'s device (CPU for arrays);
    apply to a batch ``x`` of shape ``(B, D)`` as ``x @ A.T + b``.

    Examples
    --------
    >>> A, b = gaussian_map([0.0], [[1.0]], [2.0], [[9.0]])   # x -> 3 x + 2
    >>> A.item(), b.item()
    (3.0, 2.0)
    """
    device = m1.device if torch.is_tensor(m1) else torch.device("cpu")
    m1, C1, m2, C2, r1, r1_inv = _two_gaussians(m1, C1, m2, C2)
    A = r1_inv @ sqrtm_psd(r1 @ C2 @ r1) @ r1_inv
    A = 0.5 * (A + A.T)  # symmetric up to round-off; make it exactly so
    return A.to(device), (m2 - A @ m1).to(device)


def gaussian_entropic_ot(m1, C1, m2, C2, reg: float) -> tuple[float, float, torch.Tensor]:
    r"""Entropic OT between ``N(m1, C1)`` and ``N(m2, C2)`` in closed form (Janati et al., 2020,
    Theorem 1), for the problem of :func:`entropic_ot`,
    ``min_pi E|X - Y|^2 + reg KL(pi | mu x nu)``. With Janati et al.'s ``sigma^2 = reg / 2``:

    .. math::  D_\sigma = \big(4 C_1^{1/2} C_2 C_1^{1/2} + \sigma^4 I\big)^{1/2}, \qquad
               C_\sigma = \tfrac12 C_1^{1/2} D_\sigma C_1^{-1/2} - \tfrac{\sigma^2}{2} I,

    the optimal plan is the Gaussian with cross-covariance ``Cov(X, Y) = C_sigma``, its transport
    cost is ``|m1 - m2|^2 + tr C1 + tr C2 - 2 tr C_sigma``, and the value is

    .. math::  \|m_1 - m_2\|^2 + \operatorname{tr}(C_1 + C_2 - D_\sigma)
               + D \sigma^2 (1 - \log 2\sigma^2) + \sigma^2 \log\det(D_\sigma + \sigma^2 I).

    As ``reg -> 0`` both tend to ``W_2^2`` (:func:`gaussian_w2` squared); the plan's cost
    exceeds ``W_2^2`` by about ``reg D / 2`` for small ``reg``. ``C1`` must be positive definite.
    ``O(D^3)``.

    Returns
    -------
    ``(value, plan_cost, cross_cov)``: two floats (squared lengths) and the ``(D, D)`` float64
    CPU tensor ``C_sigma``.

    Examples
    --------
    >>> value, cost, c = gaussian_entropic_ot([0.0], [[1.0]], [0.0], [[1.0]], reg=1.0)
    >>> round(c.item(), 6)   # (-eps + sqrt(eps^2 + 16)) / 4 for unit variances
    0.780776
    """
    _check_reg(reg)
    m1, C1, m2, C2, r1, r1_inv = _two_gaussians(m1, C1, m2, C2)
    D, s2 = m1.shape[0], float(reg) / 2
    I = torch.eye(D, dtype=torch.float64)
    D_s = sqrtm_psd(4 * r1 @ C2 @ r1 + s2**2 * I)
    cross = 0.5 * r1 @ D_s @ r1_inv - 0.5 * s2 * I
    mean_sq = (m1 - m2).pow(2).sum().item()
    plan_cost = mean_sq + torch.trace(C1 + C2 - 2 * cross).item()
    value = (mean_sq + torch.trace(C1 + C2 - D_s).item() + D * s2 * (1 - math.log(2 * s2))
             + s2 * torch.linalg.slogdet(D_s + s2 * I)[1].item())
    return value, plan_cost, cross


def ot_pairs(x0: torch.Tensor, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-pair a minibatch by the exact optimal assignment: returns ``(x0, x1[perm])`` where
    ``perm`` minimises ``sum_i ||x0_i - x1_perm(i)||^2`` (equal batch sizes, any ``(B, *dims)``).
    Used by minibatch-OT flow matching (Tong et al., 2024). Cost of :func:`ot_plan`
    (``O(B^3)`` time, ``O(B^2)`` memory); the result is on ``x1``'s device.

    Examples
    --------
    >>> x0 = torch.tensor([[0.0], [1.0]]); x1 = torch.tensor([[1.1], [-0.1]])
    >>> ot_pairs(x0, x1)[1].flatten().tolist()
    [-0.10000000149011612, 1.100000023841858]
    """
    if not (torch.is_tensor(x0) and torch.is_tensor(x1)):
        raise ValueError(f"x0 and x1 must be torch tensors, got {type(x0).__name__} and {type(x1).__name__}")
    if x0.shape != x1.shape or x0.ndim < 2 or len(x0) == 0:
        raise ValueError(f"x0 and x1 must have the same shape (B, *dims) with B >= 1, got {tuple(x0.shape)} and {tuple(x1.shape)}")
    if not (torch.isfinite(x0).all() and torch.isfinite(x1).all()):
        raise ValueError("x0 and x1 must be finite, got NaN/inf entries")
    plan = ot_plan(x0.flatten(1), x1.flatten(1), method="exact")
    perm = torch.from_numpy(plan.argmax(axis=1)).to(x1.device)  # a permutation for equal weights
    return x0, x1[perm]


def transport_cost(x_start, x_end) -> float:
    """Mean squared displacement ``(1/n) sum_i |x_end_i - x_start_i|^2`` of a map given as
    pairs ``x_start_i -> x_end_i`` (a squared length, the units of ``W_2^2``).

    The pairs are one coupling of the two point clouds, so the result is at least
    ``w2(x_start, x_end)**2``, with equality exactly when the pairing is optimal. ``O(n D)``.

    Parameters
    ----------
    x_start, x_end : (n, *dims) tensors or arrays of the same shape

    Examples
    --------
    >>> transport_cost(torch.zeros(4, 2), torch.ones(4, 2))
    2.0
    """
    xs = _as_tensor(x_start, "x_start")
    xe = _as_tensor(x_end, "x_end")
    if xs.shape != xe.shape:
        raise ValueError(f"x_start and x_end must have the same shape, got {tuple(xs.shape)} and {tuple(xe.shape)}")
    return float((xe - xs.to(xe.device)).flatten(1).pow(2).sum(1).mean())


# -- helpers -------------------------------------------------------------------------------
def _check_reg(reg) -> None:
    if isinstance(reg, bool) or not isinstance(reg, (int, float, np.floating, np.integer)) \
            or not (reg > 0 and math.isfinite(reg)):
        raise ValueError(f"reg must be a finite number > 0 (a squared length), got {reg!r}")


def _sinkhorn(a, b, M, reg, method, max_iter, tol) -> np.ndarray:
    with warnings.catch_warnings(), np.errstate(all="ignore"):  # we check the result below
        warnings.simplefilter("ignore")
        P = ot.sinkhorn(a, b, M, reg, method=method, numItermax=max_iter, stopThr=tol, warn=False)
    err = max(np.abs(P.sum(1) - a).sum(), np.abs(P.sum(0) - b).sum()) if np.isfinite(P).all() else np.inf
    if not err < 1e-4:  # an O(1) error means underflow (NaN/inf) or far too few iterations
        raise ValueError(
            f"Sinkhorn with reg={reg:.3g} ({method}) did not reach the marginals (L1 error {err:.2g} "
            f"after at most {max_iter} iterations); increase reg or max_iter, or use method='sinkhorn_log'"
        )
    return P


def _problem(x, y, a, b):
    xa, ya = _as_points(x, "x"), _as_points(y, "y")
    if xa.shape[1] != ya.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {xa.shape[1]} and {ya.shape[1]}")
    return xa, ya, _as_weights(a, len(xa), "a"), _as_weights(b, len(ya), "b")


def _as_points(x, name) -> np.ndarray:
    if torch.is_tensor(x):
        x = x.detach().cpu().double().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape (n, D) with n >= 1, got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} must be finite, got NaN/inf entries")
    return x


def _as_weights(w, n, name) -> np.ndarray:
    if w is None:
        return np.full(n, 1.0 / n)
    if torch.is_tensor(w):
        w = w.detach().cpu().double().numpy()
    w = np.asarray(w, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"{name} must be a vector of {n} weights (one per point), got shape {w.shape}")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"{name} must be a probability vector: finite and non-negative, got min {np.min(w):.3g}")
    if abs(w.sum() - 1.0) > 1e-6:
        raise ValueError(f"{name} must be a probability vector summing to 1, got sum {w.sum():.6g}; divide by its sum")
    return w / w.sum()  # remove the round-off of the sum exactly


def _as_tensor(x, name) -> torch.Tensor:
    x = x.detach().double() if torch.is_tensor(x) else torch.as_tensor(np.asarray(x, dtype=np.float64))
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape (n, *dims) with n >= 1, got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} must be finite, got NaN/inf entries")
    return x


def _two_gaussians(m1, C1, m2, C2):
    """Checked float64 ``m1, C1, m2, C2`` of one dimension, with ``C1^{1/2}`` and ``C1^{-1/2}``
    (``C1`` must be positive definite)."""
    m1, C1 = _gaussian(m1, C1, "m1", "C1")
    m2, C2 = _gaussian(m2, C2, "m2", "C2")
    if m1.shape != m2.shape:
        raise ValueError(f"the two Gaussians must have the same dimension, got {m1.shape[0]} and {m2.shape[0]}")
    lam, U = torch.linalg.eigh(C1)
    if not (lam > 0).all():
        raise ValueError(f"C1 must be positive definite, got eigenvalues {lam.tolist()}")
    return m1, C1, m2, C2, (U * lam.sqrt()) @ U.T, (U / lam.sqrt()) @ U.T


def _gaussian(m, C, mname, cname) -> tuple[torch.Tensor, torch.Tensor]:
    m = torch.as_tensor(np.asarray(m.detach().cpu() if torch.is_tensor(m) else m, dtype=np.float64))
    C = torch.as_tensor(np.asarray(C.detach().cpu() if torch.is_tensor(C) else C, dtype=np.float64))
    if m.ndim != 1 or C.shape != (m.shape[0], m.shape[0]):
        raise ValueError(f"{mname} must be (D,) and {cname} (D, D), got {tuple(m.shape)} and {tuple(C.shape)}")
    if not (torch.isfinite(m).all() and torch.isfinite(C).all()):
        raise ValueError(f"{mname} and {cname} must be finite")
    if not torch.allclose(C, C.T, atol=1e-10 * (1 + C.abs().max().item())):
        raise ValueError(f"{cname} must be symmetric")
    lam_min = torch.linalg.eigvalsh(0.5 * (C + C.T)).min().item() if C.numel() else 0.0
    if lam_min < -1e-8 * (1 + C.abs().max().item()):
        raise ValueError(f"{cname} must be positive semi-definite (a covariance), got an eigenvalue {lam_min:.3g}")
    return m, C


def sqrtm_psd(C: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix (symmetric
    eigendecomposition; round-off negative eigenvalues, above ``-1e-6 (1 + max |C|)``, set to
    0), ``O(D^3)``. A non-square, non-symmetric or indefinite ``C`` raises a ``ValueError``:
    clipping a genuinely negative eigenvalue would return the root of a different matrix.

    Examples
    --------
    >>> sqrtm_psd(torch.tensor([[4.0, 0.0], [0.0, 9.0]], dtype=torch.float64))
    tensor([[2., 0.],
            [0., 3.]], dtype=torch.float64)
    """
    if not torch.is_tensor(C) or C.ndim != 2 or C.shape[0] != C.shape[1]:
        raise ValueError(f"C must be a square (D, D) tensor, got {type(C).__name__} of shape {tuple(getattr(C, 'shape', ()))}")
    if not torch.isfinite(C).all():
        raise ValueError("C must be finite, got NaN/inf entries")
    scale = 1 + C.abs().max().item() if C.numel() else 1.0
    if not torch.allclose(C, C.T, rtol=0, atol=1e-6 * scale):
        raise ValueError(f"C must be symmetric, got max |C - C^T| = {(C - C.T).abs().max().item():.3g}")
    C = 0.5 * (C + C.T)
    lam, U = torch.linalg.eigh(C)
    if C.numel() and lam.min().item() < -1e-6 * scale:  # round-off negatives are clipped, not these
        raise ValueError(f"C must be positive semi-definite (a covariance), got an eigenvalue {lam.min().item():.3g}")
    return (U * lam.clamp_min(0).sqrt()) @ U.T
