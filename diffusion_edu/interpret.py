r"""What a denoiser does near one input: its Jacobian and the eigen-decomposition of it.

For a denoiser :math:`D_\theta(x, t) = \hat x_0 \approx E[x_0 \mid x_t = x]` on the schedule
:math:`x_t = \alpha_t x_0 + \sigma_t \varepsilon` and an input ``x`` with ``D = x[0].numel()``
numbers, the Jacobian is the ``D x D`` matrix

.. math::  J(x, t) = \frac{\partial \hat x_0(x, t)}{\partial x}, \qquad
           J_{ij} = \frac{\partial \hat x_{0,i}}{\partial x_j} .

By Tweedie's formula :math:`\hat x_0 = (x + \sigma_t^2 \nabla \log p_t(x)) / \alpha_t`, so for the exact
denoiser :math:`J = (I + \sigma_t^2 \nabla^2 \log p_t(x)) / \alpha_t` is **symmetric** (a Hessian), and
:math:`\alpha_t J = (\alpha_t^2 / \sigma_t^2) \mathrm{Cov}[x_0 \mid x_t = x]` is positive semi-definite: its
eigenvalues are :math:`\ge 0`, and :math:`\le 1` where :math:`p_t` is log-concave (Gaussian data; between
the modes of a mixture they can exceed 1). In the variance-exploding variables :math:`y = x / \alpha_t` the denoiser is
:math:`\hat x_0(\alpha_t y)` and its Jacobian is :math:`\alpha_t J`: each eigenvector is a direction of
the image that the denoiser keeps with the factor given by its eigenvalue (a **shrinkage factor**),
and the sum of the factors, :math:`\alpha_t \operatorname{tr} J`, counts the dimensions it keeps (the
degrees of freedom of the denoiser seen as a local linear smoother). The eigen-decomposition of the
Jacobian as a window on what a trained denoiser has learned is the tool of Kadkhodaie, Guth,
Simoncelli & Mallat (2024, ICLR), "Generalization in diffusion models arises from geometry-adaptive
harmonic representations".

Gaussian data :math:`x_0 \sim N(\mu, \Sigma)` make it exact: the optimal denoiser is linear (the
Wiener filter),

.. math::  \hat x_0 = \mu + \alpha_t \Sigma (\alpha_t^2 \Sigma + \sigma_t^2 I)^{-1} (x - \alpha_t \mu), \qquad
           J = \alpha_t \Sigma (\alpha_t^2 \Sigma + \sigma_t^2 I)^{-1},

whose eigenvectors are those of :math:`\Sigma` (its principal components, the same at every ``x``)
and whose shrinkage factors are :math:`\alpha_t^2 \lambda_k / (\alpha_t^2 \lambda_k + \sigma_t^2)` for the
eigenvalues :math:`\lambda_k` of :math:`\Sigma`. A trained network is not linear: its eigenvectors move
with ``x`` (Kadkhodaie et al. find them adapted to the geometry of the image, "geometry-adaptive
harmonic bases"), and the exact denoiser of a finite training set keeps almost no direction at low
noise (it returns the nearest training image whatever the small change of ``x``).
"""

from __future__ import annotations

import math
import warnings

import torch
from torch.func import jacrev

from .denoiser import Denoiser
from .utils import as_batch_time

__all__ = ["denoiser_jacobian", "shrinkage_spectrum", "effective_dimension", "asymmetry", "MAX_DIM"]

MAX_DIM = 4096  # a D x D Jacobian of more than 4096 numbers per image (16.8 M entries) is refused


def denoiser_jacobian(denoiser: Denoiser, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    r"""The Jacobian :math:`J_{ij} = \partial \hat x_{0,i} / \partial x_j` of ``denoiser.x0`` at every
    input of a batch, by reverse-mode automatic differentiation (:func:`torch.func.jacrev`, one
    network call per input: the ``D`` vector-Jacobian products are batched by ``vmap``).

    Parameters
    ----------
    denoiser : a :class:`~diffusion_edu.denoiser.Denoiser` (a network or an exact oracle) that treats
        the inputs of a batch independently (no batch normalisation)
    x : ``(B, *dims)`` floating tensor, ``D = prod(dims) <= MAX_DIM``
    t : a float or a ``(B,)`` tensor of schedule times

    Returns
    -------
    ``(B, D, D)`` tensor of ``x``'s dtype and device; row ``i`` is the gradient of output pixel ``i``.

    Examples
    --------
    >>> from diffusion_edu import VPSDE, GaussianMixture
    >>> sde = VPSDE()
    >>> den = GaussianMixture([[0.0, 0.0]], covs=[[[1.0, 0.0], [0.0, 4.0]]]).denoiser(sde)
    >>> J = denoiser_jacobian(den, torch.zeros(1, 2, dtype=torch.float64), 0.5)   # (1, 2, 2)
    >>> a, s = (c.item() for c in sde.marginal(0.5))
    >>> [round(v, 6) for v in J[0].diagonal().tolist()] == [round(a * l / (a * a * l + s * s), 6) for l in (1, 4)]
    True
    """
    if not isinstance(denoiser, Denoiser):
        raise ValueError(f"denoiser must be a Denoiser, got {type(denoiser).__name__}")
    if not torch.is_tensor(x) or x.ndim < 2 or not x.is_floating_point():
        raise ValueError(f"x must be a floating tensor of shape (B, *dims), got "
                         f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}"
                         f"{'' if not torch.is_tensor(x) else ' of dtype ' + str(x.dtype)}")
    if len(x) == 0:
        raise ValueError("x must hold at least one input, got an empty batch")
    dims = tuple(x.shape[1:])
    D = math.prod(dims)
    if D > MAX_DIM:
        raise ValueError(f"x must have at most MAX_DIM = {MAX_DIM} numbers per input (a D x D Jacobian), "
                         f"got D = {D} for dims {dims}")
    if not torch.isfinite(x).all():
        raise ValueError("x must be finite, got NaN or inf")
    ts = _per_input(t, len(x), "t")  # (B,) float64 on the CPU

    def x0_flat(x_flat: torch.Tensor, tb: torch.Tensor) -> torch.Tensor:  # (D,) -> (D,)
        return denoiser.x0(x_flat.reshape(1, *dims), tb.reshape(1)).reshape(D)

    with warnings.catch_warnings():  # vmap falls back to a loop for the backward of CPU attention: correct, slower
        warnings.filterwarnings("ignore", message="There is a performance drop")
        rows = [jacrev(x0_flat)(x[b].detach().reshape(D), ts[b]) for b in range(len(x))]  # B x (D, D)
    return torch.stack(rows).detach()  # (B, D, D)


def shrinkage_spectrum(J: torch.Tensor, alpha: float | torch.Tensor = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Eigenvalues and eigenvectors of the symmetric part of :math:`\alpha_t J`,
    :math:`\tfrac{\alpha_t}{2}(J + J^\top) = V \operatorname{diag}(\ell) V^\top`, largest first.

    With ``alpha`` the signal scale :math:`\alpha_t` at the time ``J`` was taken, the eigenvalues are
    the shrinkage factors of the denoiser in ``y = x / alpha`` (``>= 0`` for an exact denoiser,
    ``alpha^2 lambda / (alpha^2 lambda + sigma^2)`` in ``[0, 1)`` for Gaussian data).
    The exact denoiser's ``J`` is symmetric; a network's nearly so (:func:`asymmetry`), and only
    its symmetric part has an orthogonal eigenbasis.

    Parameters
    ----------
    J : ``(B, D, D)`` or ``(D, D)`` finite Jacobians (:func:`denoiser_jacobian`)
    alpha : positive float, or a ``(B,)`` tensor of positive values

    Returns
    -------
    ``(values, vectors)``: ``(B, D)`` in decreasing order and ``(B, D, D)`` whose column ``k``
    (``vectors[b, :, k]``) belongs to ``values[b, k]``; float64 (no batch axis when ``J`` had none).

    Examples
    --------
    >>> vals, vecs = shrinkage_spectrum(torch.tensor([[0.25, 0.0], [0.0, 0.75]]), alpha=0.5)
    >>> vals.tolist(), vecs[:, 0].abs().tolist()
    ([0.375, 0.125], [0.0, 1.0])
    """
    Jb, single = _check_jacobian(J)
    a = _per_input(alpha, len(Jb), "alpha", positive=True)  # (B,)
    sym = 0.5 * (Jb + Jb.transpose(1, 2)) * a[:, None, None]  # (B, D, D)
    values, vectors = torch.linalg.eigh(sym)  # increasing
    values, vectors = values.flip(-1), vectors.flip(-1)  # largest first
    return (values[0], vectors[0]) if single else (values, vectors)


def effective_dimension(J: torch.Tensor, alpha: float | torch.Tensor = 1.0) -> torch.Tensor:
    r"""The sum of the shrinkage factors, :math:`\alpha_t \operatorname{tr} J` (the divergence of
    the denoiser in ``y = x / alpha``): how many of the ``D`` dimensions the denoiser keeps.
    For Gaussian data it is :math:`\sum_k \alpha_t^2 \lambda_k / (\alpha_t^2 \lambda_k + \sigma_t^2)`.

    Parameters
    ----------
    J : ``(B, D, D)`` or ``(D, D)``; alpha : positive float or ``(B,)`` tensor

    Returns ``(B,)`` float64 (a 0-d tensor when ``J`` had no batch axis).

    Examples
    --------
    >>> effective_dimension(torch.eye(3) * 2.0, alpha=0.25)
    tensor(1.5000, dtype=torch.float64)
    """
    Jb, single = _check_jacobian(J)
    d = _per_input(alpha, len(Jb), "alpha", positive=True) * Jb.diagonal(dim1=1, dim2=2).sum(-1)  # (B,)
    return d[0] if single else d


def asymmetry(J: torch.Tensor) -> torch.Tensor:
    r"""How far ``J`` is from symmetric: :math:`\|J - J^\top\|_F / \|J + J^\top\|_F`
    (0 for a symmetric matrix, 1 for an antisymmetric one). The exact denoiser's Jacobian is
    symmetric (Tweedie: a Hessian), so this measures how far a network is from being the posterior
    mean of *any* distribution at this point.

    Parameters
    ----------
    J : ``(B, D, D)`` or ``(D, D)`` finite, not zero

    Returns ``(B,)`` float64 (0-d when ``J`` had no batch axis).

    Examples
    --------
    >>> asymmetry(torch.tensor([[1.0, 1.0], [0.0, 1.0]]))   # |(0 1; -1 0)| / |(2 1; 1 2)| = sqrt(2 / 10)
    tensor(0.4472, dtype=torch.float64)
    """
    Jb, single = _check_jacobian(J)
    den = (Jb + Jb.transpose(1, 2)).flatten(1).norm(dim=1)  # (B,)
    if (den == 0).any():
        raise ValueError("J must have a non-zero symmetric part, got J + J^T = 0")
    r = (Jb - Jb.transpose(1, 2)).flatten(1).norm(dim=1) / den
    return r[0] if single else r


# -- helpers ---------------------------------------------------------------------------------
def _per_input(v, batch: int, name: str, *, positive: bool = False) -> torch.Tensor:
    """``v`` (a number, a 0-d or a ``(B,)`` tensor) as a ``(B,)`` float64 CPU tensor
    (:func:`~diffusion_edu.utils.as_batch_time`), finite and, with ``positive``, above zero."""
    if isinstance(v, bool) or not (isinstance(v, (int, float)) or torch.is_tensor(v)):
        raise ValueError(f"{name} must be a float or a ({batch},) tensor, got {type(v).__name__}")
    v = as_batch_time(v.detach() if torch.is_tensor(v) else v, batch, device="cpu", dtype=torch.float64, name=name)
    if positive and not (v > 0).all():
        raise ValueError(f"{name} must be positive, got {v.tolist()[:4]}")
    return v


def _check_jacobian(J) -> tuple[torch.Tensor, bool]:
    """``J`` as a ``(B, D, D)`` float64 tensor, and whether it came without a batch axis."""
    if not torch.is_tensor(J) or J.ndim not in (2, 3) or J.shape[-1] != J.shape[-2] or J.shape[-1] == 0:
        raise ValueError(f"J must be a (B, D, D) or (D, D) tensor of square Jacobians, got "
                         f"{tuple(J.shape) if torch.is_tensor(J) else type(J).__name__}")
    if not torch.isfinite(J).all():
        raise ValueError("J must be finite, got NaN or inf")
    single = J.ndim == 2
    Jb = (J[None] if single else J).detach().to(torch.float64)
    return Jb, single
