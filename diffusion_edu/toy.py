r"""Toy data: Gaussian mixtures with exact scores at every noise level, and 2-D point clouds.

A mixture of isotropic Gaussians ``p_0 = sum_k w_k N(mu_k, s_k^2 I)`` stays a mixture under
the forward process ``x_t = alpha x_0 + sigma eps``:

.. math::  p_t(x) = \sum_k w_k\, N\!\big(x;\ \alpha \mu_k,\ v_k I\big), \qquad
           v_k = \alpha^2 s_k^2 + \sigma^2 .

With responsibilities ``r_k(x) = w_k N_k(x) / p_t(x)`` the exact score and the exact denoiser
(posterior mean, Tweedie's formula) are

.. math::  \nabla \log p_t(x) = -\sum_k r_k(x)\, \frac{x - \alpha \mu_k}{v_k}, \qquad
           E[x_0 \mid x_t = x] = \sum_k r_k(x) \Big(\mu_k + \frac{\alpha s_k^2}{v_k}(x - \alpha\mu_k)\Big)
           = \frac{x + \sigma^2 \nabla \log p_t(x)}{\alpha}.

With full covariances ``p_0 = sum_k w_k N(mu_k, C_k)`` (``covs=`` instead of ``stds=``) the
same holds with matrices: component ``k`` of ``p_t`` is ``N(alpha mu_k, S_k)``,
``S_k = alpha^2 C_k + sigma^2 I``, and

.. math::  \nabla \log p_t(x) = -\sum_k r_k(x)\, S_k^{-1} (x - \alpha \mu_k), \qquad
           E[x_0 \mid x_t = x] = \sum_k r_k(x) \big(\mu_k + \alpha C_k S_k^{-1} (x - \alpha\mu_k)\big).

We diagonalise ``C_k = U_k diag(lambda_k) U_k^T`` once; then ``S_k = U_k diag(alpha^2 lambda_k +
sigma^2) U_k^T``, and each component is the isotropic formula per coordinate in its own
eigenbasis, for any per-example ``alpha`` and ``sigma`` at ``O(B K D^2)`` cost.

These are the ground truth that learned scores and samplers are measured against.
The 2-D data sets (two moons, swiss roll, checkerboard, eight Gaussians) are generated from an
explicit ``torch.Generator``; nothing is downloaded.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .denoiser import Denoiser
from .schedules import DDPMSchedule, Schedule
from .utils import check_finite

__all__ = [
    "GaussianMixture",
    "eight_gaussians_mixture",
    "two_moons",
    "swiss_roll",
    "checkerboard",
    "eight_gaussians",
]


class GaussianMixture:
    """Mixture of Gaussians ``sum_k w_k N(mu_k, s_k^2 I)`` (isotropic, ``stds``) or
    ``sum_k w_k N(mu_k, C_k)`` (full covariances, ``covs``) in ``D`` dimensions.

    Parameters
    ----------
    means : (K, D) tensor-like
    stds : float or (K,) tensor-like, the per-component standard deviations ``s_k > 0``;
        or None when ``covs`` is given
    weights : (K,) tensor-like or None (uniform); normalised to sum to one
    covs : (K, D, D) or (D, D) tensor-like (shared by every component), symmetric positive
        definite covariances ``C_k``, keyword only, instead of ``stds``

    Exactly one of ``stds`` and ``covs`` is given; the other attribute is None.

    Examples
    --------
    >>> gm = GaussianMixture([[-2.0, 0.0], [2.0, 0.0]], stds=0.5)
    >>> x = gm.sample(1000, generator=torch.Generator().manual_seed(0))
    >>> x.shape
    torch.Size([1000, 2])
    >>> ellipses = GaussianMixture([[0.0, 0.0]], covs=[[[1.0, 0.9], [0.9, 1.0]]])
    >>> ellipses.score(torch.tensor([[1.0, 1.0]]), alpha=1.0, sigma=0.0)  # -C^{-1} x
    tensor([[-0.5263, -0.5263]])
    """

    def __init__(self, means, stds=None, weights=None, *, covs=None):
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim != 2:
            raise ValueError(f"means must have shape (K, D), got {tuple(means.shape)}")
        K, D = means.shape
        if (stds is None) == (covs is None):
            raise ValueError("give exactly one of stds (isotropic) and covs (full covariances)")
        if weights is None:
            weights = torch.full((K,), 1.0 / K, dtype=torch.float64)
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (K,) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(
                f"weights must be non-negative of shape ({K},), got {weights.tolist()}"
            )
        self.stds = self.covs = None
        if stds is not None:
            stds = torch.as_tensor(stds, dtype=torch.float64)
            if stds.ndim == 0:
                stds = stds.expand(K).clone()
            if stds.shape != (K,):
                raise ValueError(f"stds must be a float or shape ({K},), got {tuple(stds.shape)}")
            if not (stds > 0).all():
                raise ValueError(f"stds must be > 0, got {stds.tolist()}")
            check_finite(stds, "stds")
            self.stds = stds
        else:
            covs = torch.as_tensor(covs, dtype=torch.float64)
            if covs.shape == (D, D):
                covs = covs.expand(K, D, D).clone()
            if covs.shape != (K, D, D):
                raise ValueError(f"covs must have shape ({K}, {D}, {D}) or ({D}, {D}), got {tuple(covs.shape)}")
            check_finite(covs, "covs")
            if not torch.allclose(covs, covs.transpose(1, 2), atol=1e-12 * (1 + covs.abs().max().item())):
                raise ValueError("covs must be symmetric")
            lam, U = torch.linalg.eigh(covs)  # C_k = U_k diag(lam_k) U_k^T
            if not (lam > 0).all():
                raise ValueError(f"covs must be positive definite, got eigenvalues down to {lam.min().item():.3g}")
            self.covs, self._eigvals, self._eigvecs = covs, lam, U  # (K, D, D), (K, D), (K, D, D)
        for name, v in (("means", means), ("weights", weights)):
            check_finite(v, name)
        self.means, self.weights = means, weights / weights.sum()

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def mean(self) -> torch.Tensor:
        """Mean of the mixture, ``(D,)``."""
        return self.weights @ self.means

    def cov(self) -> torch.Tensor:
        """Covariance of the mixture, ``(D, D)``: ``sum_k w_k (C_k + mu_k mu_k^T) - m m^T``
        with ``C_k = s_k^2 I`` in the isotropic case."""
        m = self.mean()
        second = (self.weights[:, None, None] * self.means[:, :, None] * self.means[:, None, :]).sum(0)
        if self.covs is not None:
            return second + (self.weights[:, None, None] * self.covs).sum(0) - torch.outer(m, m)
        return second + (self.weights * self.stds**2).sum() * torch.eye(self.dim, dtype=torch.float64) - torch.outer(m, m)

    def component_covs(self) -> torch.Tensor:
        """The component covariances ``C_k`` as ``(K, D, D)`` float64 (``s_k^2 I`` if isotropic)."""
        if self.covs is not None:
            return self.covs.clone()
        return self.stds[:, None, None] ** 2 * torch.eye(self.dim, dtype=torch.float64)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` points, ``(n, D)`` float32."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        if self.covs is not None:  # x = mu_k + U_k diag(sqrt(lam_k)) z
            root = self._eigvecs * self._eigvals.sqrt()[:, None, :]  # (K, D, D)
            return (self.means[k] + (root[k] @ z[:, :, None]).squeeze(-1)).float()
        return (self.means[k] + self.stds[k, None] * z).float()

    # -- densities and scores of the noised mixture ------------------------------------------
    def _components(self, x: torch.Tensor, alpha, sigma):
        """Log of ``w_k N(x; alpha mu_k, v_k I)`` as ``(B, K)``, plus ``v`` ``(B, K)`` and
        the centred points ``x - alpha mu_k`` as ``(B, K, D)``, all in float64."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}), got {tuple(x.shape)}")
        check_finite(x, "x")
        if self.covs is not None:
            return self._components_full(x.double(), alpha, sigma)
        x = x.double()
        B, dev = x.shape[0], x.device
        means, stds, weights = self.means.to(dev), self.stds.to(dev), self.weights.to(dev)
        alpha = torch.as_tensor(alpha, dtype=torch.float64, device=dev).expand(B)[:, None]  # (B, 1)
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=dev).expand(B)[:, None]  # (B, 1)
        v = alpha**2 * stds**2 + sigma**2  # (B, K)
        diff = x[:, None, :] - alpha[:, :, None] * means  # (B, K, D)
        normal = torch.distributions.Normal(torch.zeros_like(v[:, :, None]), v.sqrt()[:, :, None])
        logc = torch.log(weights) + normal.log_prob(diff).sum(-1)  # log w_k N(x; alpha mu_k, v_k I)
        return logc, v, diff, alpha

    def _components_full(self, x: torch.Tensor, alpha, sigma):
        """Full covariances, in each component's eigenbasis: log of ``w_k N(x; alpha mu_k, S_k)``
        ``(B, K)``, the variances ``v = alpha^2 lam_k + sigma^2`` ``(B, K, D)``, the rotated
        centred points ``y = U_k^T (x - alpha mu_k)`` ``(B, K, D)`` and ``alpha`` ``(B, 1)``."""
        B, dev = x.shape[0], x.device
        means, weights = self.means.to(dev), self.weights.to(dev)
        lam, U = self._eigvals.to(dev), self._eigvecs.to(dev)
        alpha = torch.as_tensor(alpha, dtype=torch.float64, device=dev).expand(B)[:, None]  # (B, 1)
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=dev).expand(B)[:, None]  # (B, 1)
        v = alpha[:, :, None] ** 2 * lam + sigma[:, :, None] ** 2  # (B, K, D) eigenvalues of S_k
        diff = x[:, None, :] - alpha[:, :, None] * means  # (B, K, D)
        y = torch.einsum("kde,bkd->bke", U, diff)  # (B, K, D) coordinates in the eigenbasis
        normal = torch.distributions.Normal(torch.zeros_like(v), v.sqrt())  # independent in the eigenbasis
        logc = torch.log(weights) + normal.log_prob(y).sum(-1)  # log w_k N(x; alpha mu_k, S_k)
        return logc, v, y, alpha

    def log_joint(self, x: torch.Tensor, alpha=1.0, sigma=0.0) -> torch.Tensor:
        """``log w_k + log N_k(x)`` of each component of the noised mixture, ``(B, K)`` float64;
        ``softmax`` over ``k`` is the posterior ``p(k | x_t)``, ``logsumexp`` is ``log p_t(x)``."""
        return self._components(x, alpha, sigma)[0]

    def log_prob(self, x: torch.Tensor, alpha=1.0, sigma=0.0) -> torch.Tensor:
        """``log p(x)`` of the mixture noised to ``alpha x_0 + sigma eps`` (default: the data),
        shape ``(B,)`` float64."""
        logc, *_ = self._components(x, alpha, sigma)
        return torch.logsumexp(logc, dim=1)

    def score(self, x: torch.Tensor, alpha=1.0, sigma=0.0) -> torch.Tensor:
        """Exact ``grad_x log p_t(x)`` of the noised mixture, ``(B, D)`` in ``x``'s dtype."""
        logc, v, diff, _ = self._components(x, alpha, sigma)
        r = torch.softmax(logc, dim=1)  # responsibilities (B, K)
        if self.covs is not None:  # -S_k^{-1} (x - alpha mu_k) = -U_k (y / v)
            comp = torch.einsum("kde,bke->bkd", self._eigvecs.to(x.device), diff / v)
            return -(r[:, :, None] * comp).sum(1).to(x.dtype)
        return -(r[:, :, None] * diff / v[:, :, None]).sum(1).to(x.dtype)

    def denoise(self, x: torch.Tensor, alpha=1.0, sigma=0.0) -> torch.Tensor:
        """Exact posterior mean ``E[x_0 | x_t = x]``, ``(B, D)`` in ``x``'s dtype."""
        return self._posterior_mean(x, alpha, sigma).to(x.dtype)

    def _posterior_mean(self, x: torch.Tensor, alpha, sigma) -> torch.Tensor:
        """``E[x_0 | x_t = x]`` in float64, computed per component."""
        logc, v, diff, alpha_ = self._components(x, alpha, sigma)
        r = torch.softmax(logc, dim=1)  # (B, K)
        if self.covs is not None:  # mu_k + alpha C_k S_k^{-1} (x - alpha mu_k) = mu_k + U_k (alpha lam y / v)
            lam, U = self._eigvals.to(x.device), self._eigvecs.to(x.device)
            shrink = alpha_[:, :, None] * lam * diff / v  # (B, K, D) in the eigenbasis
            post = self.means.to(x.device) + torch.einsum("kde,bke->bkd", U, shrink)  # (B, K, D)
            return (r[:, :, None] * post).sum(1)
        means, stds = self.means.to(x.device), self.stds.to(x.device)
        post = means + (alpha_ * stds**2 / v)[:, :, None] * diff  # (B, K, D)
        return (r[:, :, None] * post).sum(1)

    # -- the exact model on a schedule ------------------------------------------------------
    def denoiser(self, schedule: Schedule) -> Denoiser:
        """The exact posterior mean ``E[x0 | x_t]`` of this mixture noised by ``schedule``, as a
        :class:`~diffusion_edu.denoiser.Denoiser` (prediction ``"x0"``, computed in float64): the
        perfect network, against which learned models and samplers are measured.

        Examples
        --------
        >>> from diffusion_edu import VPSDE
        >>> gm = GaussianMixture([[0.0, 0.0]], stds=1.0)   # N(0, I) stays N(0, I) under VP
        >>> x = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
        >>> torch.allclose(gm.denoiser(VPSDE()).score(x, 0.5), -x)
        True
        """
        if not isinstance(schedule, Schedule):
            raise ValueError(f"schedule must be a Schedule, got {type(schedule).__name__}")

        def posterior_mean(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            one_time = t.ndim == 0 or bool((t == t[0]).all())  # samplers: one time for the batch
            alpha, sigma = schedule.marginal(t.reshape(-1)[:1] if one_time else t)
            return self._posterior_mean(x, alpha, sigma)  # float64

        posterior_mean.__name__ = "exact posterior mean"
        return Denoiser(posterior_mean, schedule, "x0")

    def score_fn(self, schedule: Schedule) -> Callable[[torch.Tensor, float | torch.Tensor], torch.Tensor]:
        """The exact score of ``p_t`` as a callable ``score(x, t)``, in closed form (finite also at
        ``sigma = 0``, where ``self.denoiser(schedule).score`` divides 0 by 0)."""

        def score(x, t):
            alpha, sigma = schedule.marginal(schedule._time(t, batch=x.shape[0]).to(x.device))
            return self.score(x, alpha, sigma)

        return score

    def eps_fn(self, alphas_cumprod: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The exact noise prediction ``eps(x, n) = -sqrt(1 - abar_n) score`` of the discrete chain
        ``alphas_cumprod`` at training indices ``n``: ``self.denoiser(DDPMSchedule(abar)).eps``."""
        return self.denoiser(DDPMSchedule(alphas_cumprod)).eps

    def log_prob_fn(self, schedule: Schedule) -> Callable[[torch.Tensor, float | torch.Tensor], torch.Tensor]:
        """``log p_t(x)`` under ``schedule`` as a callable ``log_p(x, t)``."""

        def log_p(x, t):
            alpha, sigma = schedule.marginal(schedule._time(t, batch=x.shape[0]).to(x.device))
            return self.log_prob(x, alpha, sigma)

        return log_p

    def __repr__(self) -> str:
        full = ", full covariances" if self.covs is not None else ""
        return f"GaussianMixture(K={len(self.weights)}, D={self.dim}{full})"


def eight_gaussians_mixture(radius: float = 2.0, std: float = 0.2) -> GaussianMixture:
    """Eight equal-weight Gaussians on a circle of ``radius``: a standard 2-D test bed."""
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    return GaussianMixture(means, std)


def eight_gaussians(n: int, generator: torch.Generator | None = None, radius=2.0, std=0.2):
    """``n`` points from :func:`eight_gaussians_mixture`, ``(n, 2)``."""
    return eight_gaussians_mixture(radius, std).sample(n, generator=generator)


def two_moons(n: int, generator: torch.Generator | None = None, noise: float = 0.05) -> torch.Tensor:
    """Two interleaved half circles (as scikit-learn's ``make_moons``), centred, ``(n, 2)``."""
    _check_n(n)
    upper = torch.rand(n, generator=generator) < 0.5
    theta = math.pi * torch.rand(n, generator=generator)
    x = torch.where(upper, torch.cos(theta), 1 - torch.cos(theta))
    y = torch.where(upper, torch.sin(theta), 0.5 - torch.sin(theta))
    pts = torch.stack([x - 0.5, y - 0.25], dim=1)
    return pts + noise * torch.randn(n, 2, generator=generator)


def swiss_roll(n: int, generator: torch.Generator | None = None, noise: float = 0.05) -> torch.Tensor:
    """A 2-D swiss roll ``r(theta) (cos theta, sin theta)``, scaled to about unit spread."""
    _check_n(n)
    theta = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=generator))
    pts = torch.stack([theta * torch.cos(theta), theta * torch.sin(theta)], dim=1) / 5.0
    return pts + noise * torch.randn(n, 2, generator=generator)


def checkerboard(n: int, generator: torch.Generator | None = None, size: int = 4) -> torch.Tensor:
    """Uniform on the dark squares of a ``size x size`` checkerboard on ``[-2, 2]^2``."""
    _check_n(n)
    if not isinstance(size, int) or size < 2 or size % 2:
        raise ValueError(f"size must be an even int >= 2 (squares per side), got {size!r}")
    cell = 4.0 / size
    i = torch.randint(size, (n,), generator=generator)
    j = torch.randint(size // 2, (n,), generator=generator) * 2 + (i % 2)
    u = torch.rand(n, 2, generator=generator)
    return torch.stack([i, j], dim=1).float() * cell - 2.0 + u * cell


def _check_n(n):
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
