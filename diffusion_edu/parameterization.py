r"""The four things a diffusion network can predict, and how they convert.

Given ``x_t = alpha x_0 + sigma eps`` (``alpha``, ``sigma`` broadcast per example), a network
may output the noise ``eps``, the clean data ``x_0``, the velocity
``v = alpha eps - sigma x_0`` (Salimans & Ho, 2022) or the score
``grad log p(x_t | x_0) = -eps / sigma``. Each conversion is one line:

- ``score = -eps / sigma``                          (and ``eps = -sigma score``)
- ``x0    = (x - sigma eps) / alpha``               (and ``eps = (x - alpha x0) / sigma``)
- ``v     = alpha eps - sigma x0``
- ``x0    = (alpha x - sigma v) / (alpha^2 + sigma^2)``,
  ``eps   = (sigma x + alpha v) / (alpha^2 + sigma^2)``  (for VP, ``alpha^2 + sigma^2 = 1``)

For an optimal network the same identities hold between the *posterior means*:
``E[x_0 | x_t] = (x_t + sigma^2 grad log p_t(x_t)) / alpha`` is Tweedie's formula.
``alpha`` and ``sigma`` are floats or ``(B,)`` tensors; the results have ``x``'s shape.
"""

from __future__ import annotations

import torch

from .utils import append_dims

__all__ = [
    "eps_to_score", "score_to_eps", "eps_to_x0", "x0_to_eps", "v_to_x0", "v_to_eps",
    "x0_eps_to_v", "to_eps", "PREDICTIONS",
]

PREDICTIONS = ("eps", "x0", "v", "score")


def _b(c, x):
    return append_dims(torch.as_tensor(c, dtype=x.dtype, device=x.device), x.ndim)


def eps_to_score(eps, sigma):
    return -eps / _b(sigma, eps)  # score = -eps / sigma


def score_to_eps(score, sigma):
    return -_b(sigma, score) * score  # eps = -sigma score


def eps_to_x0(eps, x, alpha, sigma):
    return (x - _b(sigma, x) * eps) / _b(alpha, x)  # x0 = (x - sigma eps) / alpha


def x0_to_eps(x0, x, alpha, sigma):
    return (x - _b(alpha, x) * x0) / _b(sigma, x)  # eps = (x - alpha x0) / sigma


def x0_eps_to_v(x0, eps, alpha, sigma):
    return _b(alpha, x0) * eps - _b(sigma, x0) * x0  # v = alpha eps - sigma x0


def v_to_x0(v, x, alpha, sigma):
    a, s = _b(alpha, x), _b(sigma, x)
    return (a * x - s * v) / (a**2 + s**2)  # x0 = (alpha x - sigma v) / (alpha^2 + sigma^2)


def v_to_eps(v, x, alpha, sigma):
    a, s = _b(alpha, x), _b(sigma, x)
    return (s * x + a * v) / (a**2 + s**2)  # eps = (sigma x + alpha v) / (alpha^2 + sigma^2)


def to_eps(pred: torch.Tensor, prediction: str, x: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """Convert a network output of kind ``prediction`` (one of :data:`PREDICTIONS`) to eps."""
    if prediction == "eps":
        return pred
    if prediction == "x0":
        return x0_to_eps(pred, x, alpha, sigma)
    if prediction == "v":
        return v_to_eps(pred, x, alpha, sigma)
    if prediction == "score":
        return score_to_eps(pred, sigma)
    raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
