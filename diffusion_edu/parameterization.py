r"""The five things a diffusion network can predict, and how they convert. Nowhere else.

Given ``x_t = alpha x0 + sigma eps`` (``alpha``, ``sigma`` broadcast per example; ``x0`` is the
data, ``eps ~ N(0, I)`` the noise), a network may output

- ``"eps"``: the noise ``eps`` (Ho et al., 2020);
- ``"x0"``: the clean data ``x0`` (the denoiser ``D`` of Karras et al., 2022);
- ``"v"``: ``v = alpha eps - sigma x0`` (Salimans & Ho, 2022);
- ``"score"``: ``grad log p(x_t | x0) = -eps / sigma`` (Song et al., 2021);
- ``"velocity"``: the path velocity ``u = d x_t / dt = alpha' x0 + sigma' eps`` that flow
  matching regresses (Lipman et al., 2023; Liu et al., 2023), with ``alpha' = d alpha / dt``
  and ``sigma' = d sigma / dt`` of the schedule.

Every conversion goes through the pair ``(x0, eps)``, each line with its formula:

- ``x0 = (x - sigma eps) / alpha``,  ``eps = (x - alpha x0) / sigma`` (0 at ``sigma = 0``, its limit
  ``-sigma grad log p_t`` for data with a density)
- ``x0 = (alpha x - sigma v) / (alpha^2 + sigma^2)``, ``eps = (sigma x + alpha v) / (alpha^2 + sigma^2)``
- ``eps = -sigma score``
- ``x0 = (sigma' x - sigma u) / det``, ``eps = (alpha u - alpha' x) / det``,
  ``det = alpha sigma' - sigma alpha'`` (solve ``x = alpha x0 + sigma eps`` and
  ``u = alpha' x0 + sigma' eps`` for the pair)

For an optimal network the same identities hold between *posterior means*:
``E[x0 | x_t] = (x_t + sigma^2 grad log p_t(x_t)) / alpha`` is Tweedie's formula, and the
marginal velocity ``E[u | x_t]`` is the probability-flow ODE's ``dx/dt``.

``alpha``, ``sigma``, ``dalpha``, ``dsigma`` are floats or ``(B,)`` tensors; results have ``x``'s
shape and the dtype of the promoted inputs.
"""

from __future__ import annotations

import torch

from .utils import append_dims

__all__ = [
    "PREDICTIONS", "eps_to_score", "score_to_eps", "eps_to_x0", "x0_to_eps", "v_to_x0", "v_to_eps",
    "x0_eps_to_v", "to_x0_eps", "from_x0_eps", "convert", "to_eps", "check_prediction",
]

PREDICTIONS = ("eps", "x0", "v", "score", "velocity")


def _b(c, x):
    """A float or ``(B,)`` coefficient broadcast against ``x`` (float64 coefficients keep their
    precision: the arithmetic promotes)."""
    if not torch.is_tensor(c) or not c.dtype.is_floating_point:
        c = torch.as_tensor(c, dtype=x.dtype)
    return append_dims(c.to(x.device), x.ndim)


def eps_to_score(eps, sigma):
    return -eps / _b(sigma, eps)  # score = -eps / sigma


def score_to_eps(score, sigma):
    return -_b(sigma, score) * score  # eps = -sigma score


def eps_to_x0(eps, x, alpha, sigma):
    return (x - _b(sigma, x) * eps) / _b(alpha, x)  # x0 = (x - sigma eps) / alpha


def x0_to_eps(x0, x, alpha, sigma):
    s = _b(sigma, x)
    eps = (x - _b(alpha, x) * x0) / s  # eps = (x - alpha x0) / sigma
    return torch.where(s == 0, torch.zeros_like(eps), eps)  # sigma = 0: E[eps | x] = -sigma score -> 0


def x0_eps_to_v(x0, eps, alpha, sigma):
    return _b(alpha, x0) * eps - _b(sigma, x0) * x0  # v = alpha eps - sigma x0


def v_to_x0(v, x, alpha, sigma):
    a, s = _b(alpha, x), _b(sigma, x)
    return (a * x - s * v) / (a**2 + s**2)  # x0 = (alpha x - sigma v) / (alpha^2 + sigma^2)


def v_to_eps(v, x, alpha, sigma):
    a, s = _b(alpha, x), _b(sigma, x)
    return (s * x + a * v) / (a**2 + s**2)  # eps = (sigma x + alpha v) / (alpha^2 + sigma^2)


def check_prediction(prediction: str) -> str:
    """Return ``prediction`` if it is one of :data:`PREDICTIONS`, else raise ``ValueError``."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    return prediction


def to_x0_eps(pred, prediction: str, x, alpha, sigma, dalpha=None, dsigma=None):
    """The pair ``(x0, eps)`` implied by a prediction of kind ``prediction`` at ``x``.

    ``dalpha``, ``dsigma`` (the schedule's time derivatives) are needed for ``"velocity"`` only.

    Examples
    --------
    >>> x, eps = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, -1.0]])
    >>> x0, e = to_x0_eps(eps, "eps", x, 0.8, 0.6)
    >>> x0, torch.equal(e, eps)   # x0 = (x - 0.6 eps) / 0.8
    (tensor([[0.8750, 3.2500]]), True)
    """
    check_prediction(prediction)
    if prediction == "eps":
        return eps_to_x0(pred, x, alpha, sigma), pred
    if prediction == "x0":
        return pred, x0_to_eps(pred, x, alpha, sigma)
    if prediction == "v":
        return v_to_x0(pred, x, alpha, sigma), v_to_eps(pred, x, alpha, sigma)
    if prediction == "score":
        eps = score_to_eps(pred, sigma)
        return eps_to_x0(eps, x, alpha, sigma), eps
    a, s, da, ds = _b(alpha, x), _b(sigma, x), _b(_need(dalpha), x), _b(_need(dsigma), x)
    det = a * ds - s * da  # determinant of [[alpha, sigma], [alpha', sigma']]
    x0 = (ds * x - s * pred) / det  # x0 = (sigma' x - sigma u) / det
    eps = (a * pred - da * x) / det  # eps = (alpha u - alpha' x) / det
    return x0, eps


def from_x0_eps(x0, eps, prediction: str, alpha, sigma, dalpha=None, dsigma=None):
    """The prediction of kind ``prediction`` that the pair ``(x0, eps)`` implies.

    Examples
    --------
    >>> x0, eps = torch.tensor([[1.0]]), torch.tensor([[2.0]])
    >>> from_x0_eps(x0, eps, "velocity", 0.5, 0.5, dalpha=-1.0, dsigma=1.0)  # u = alpha' x0 + sigma' eps
    tensor([[1.]])
    """
    check_prediction(prediction)
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return x0_eps_to_v(x0, eps, alpha, sigma)
    if prediction == "score":
        return eps_to_score(eps, sigma)
    return _b(_need(dalpha), x0) * x0 + _b(_need(dsigma), x0) * eps  # u = alpha' x0 + sigma' eps


def convert(pred, prediction: str, target: str, x, alpha, sigma, dalpha=None, dsigma=None):
    """Convert a prediction of kind ``prediction`` at ``x`` into one of kind ``target``.

    Examples
    --------
    >>> x, eps = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, -1.0]])
    >>> convert(eps, "eps", "score", x, 0.8, 0.5)   # -eps / sigma
    tensor([[-1.,  2.]])
    """
    check_prediction(target)
    if prediction == target:
        return pred
    x0, eps = to_x0_eps(pred, prediction, x, alpha, sigma, dalpha, dsigma)
    return from_x0_eps(x0, eps, target, alpha, sigma, dalpha, dsigma)


def to_eps(pred: torch.Tensor, prediction: str, x: torch.Tensor, alpha, sigma, dalpha=None, dsigma=None):
    """Convert a network output of kind ``prediction`` (one of :data:`PREDICTIONS`) to eps."""
    return convert(pred, prediction, "eps", x, alpha, sigma, dalpha, dsigma)


def _need(c):
    if c is None:
        raise ValueError("the 'velocity' prediction needs the schedule's derivatives dalpha and dsigma")
    return c
