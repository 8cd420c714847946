r"""Denoising score matching (Vincent, 2011) and its eps / x0 / v forms.

Explicit score matching asks for ``E_t lambda(t) E_{x_t} ||s_theta(x_t, t) - grad log p_t(x_t)||^2``,
which needs the unknown ``p_t``. Denoising score matching replaces the marginal score by the
conditional one, ``grad log p(x_t | x_0) = -eps / sigma(t)``:

.. math::  L_{\text{DSM}} = E_{t, x_0, \varepsilon}\ \lambda(t)\,
           \big\| s_\theta(x_t, t) + \varepsilon / \sigma(t) \big\|^2 ,

which differs from the explicit objective by a constant independent of ``theta``
(Vincent, 2011), so both have the same minimiser, ``s_theta = grad log p_t``.

Every parameterisation (see :mod:`diffusion_edu.parameterization`) is turned into a noise
prediction ``eps_hat`` and the loss is written as ``w(t) ||eps_hat - eps||^2`` (mean over the
data dimensions). The weightings, each the "natural" loss of one parameterisation:

=============== ====================================== =========================================
``weighting``   ``w(t)`` on ``||eps_hat - eps||^2``     equals
=============== ====================================== =========================================
``"eps"``       ``1``                                   ``||eps_hat - eps||^2``; Ho et al. (2020)
                                                        ``L_simple``; ``lambda = sigma^2``
``"x0"``        ``sigma^2 / alpha^2``                   ``||x0_hat - x0||^2``
``"v"``         ``(alpha^2 + sigma^2)^2 / alpha^2``     ``||v_hat - v||^2``
``"score"``     ``1 / sigma^2``                         ``||s_hat + eps / sigma||^2``, ``lambda = 1``
``"likelihood"````g(t)^2 / sigma^2``                    ``lambda = g^2``: Song et al. (2021b),
                                                        the weighting that bounds the NLL
=============== ====================================== =========================================

By default the weighting is that of the prediction, i.e. plain MSE on the network's own target.
"""

from __future__ import annotations

import torch

from .parameterization import PREDICTIONS, to_eps
from .sde import SDE
from .utils import append_dims, check_finite

__all__ = ["dsm_loss", "loss_weight", "ddpm_loss", "drop_labels", "WEIGHTINGS"]

WEIGHTINGS = ("eps", "x0", "v", "score", "likelihood")


def loss_weight(weighting: str, sde: SDE, t: torch.Tensor) -> torch.Tensor:
    """``w(t)`` multiplying ``||eps_hat - eps||^2`` (table in the module docstring), ``(B,)``."""
    alpha, sigma = sde.marginal(t)
    if weighting == "eps":
        return torch.ones_like(sigma)
    if weighting == "x0":
        return sigma**2 / alpha**2
    if weighting == "v":
        return (alpha**2 + sigma**2) ** 2 / alpha**2
    if weighting == "score":
        return 1 / sigma**2
    if weighting == "likelihood":
        return sde.diffusion(t) ** 2 / sigma**2
    raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")


def dsm_loss(
    net, x0: torch.Tensor, sde: SDE, *, prediction: str = "eps", weighting: str | None = None,
    t: torch.Tensor | None = None, t_eps: float = 1e-5, generator: torch.Generator | None = None,
    reduce: bool = True,
) -> torch.Tensor:
    """Denoising score-matching loss of ``net(x_t, t)`` on a batch ``x0`` of shape ``(B, *dims)``.

    Parameters
    ----------
    net : callable ``net(x, t)`` returning a prediction of kind ``prediction``
    prediction : ``"eps"``, ``"x0"``, ``"v"`` or ``"score"``
    weighting : one of :data:`WEIGHTINGS`; ``None`` means the prediction's own MSE
    t : optional ``(B,)`` times; by default ``t ~ U(t_eps, T)``
    reduce : mean over the batch (scalar) if True, else the per-example losses ``(B,)``
    """
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    weighting = prediction if weighting is None else weighting
    check_finite(x0, "x0")
    B = x0.shape[0]
    if t is None:
        u = torch.rand(B, generator=generator, dtype=torch.float64)
        t = (t_eps + (sde.T - t_eps) * u).to(x0.device)
    t = sde._time(t, batch=B).to(x0.device)
    xt, eps = sde.perturb(x0, t, generator=generator)
    alpha, sigma = (c.to(x0.device) for c in sde.marginal(t))
    eps_hat = to_eps(net(xt, t.to(x0.dtype)), prediction, xt, alpha, sigma)
    err = (eps_hat - eps).pow(2).flatten(1).mean(1)  # (B,)
    loss = loss_weight(weighting, sde, t).to(err) * err
    return loss.mean() if reduce else loss


def ddpm_loss(
    net, x0: torch.Tensor, alphas_cumprod: torch.Tensor, *,
    generator: torch.Generator | None = None, reduce: bool = True,
    y: torch.Tensor | None = None, label_dropout: float = 0.0, null_label: int | None = None,
) -> torch.Tensor:
    """Ho et al. (2020) ``L_simple`` (Algorithm 1): ``n ~ U{0..N-1}``,
    ``x_n = sqrt(abar_n) x0 + sqrt(1 - abar_n) eps``, loss ``||net(x_n, n) - eps||^2``.
    The network is called with the integer indices ``n`` as a ``(B,)`` long tensor.

    With class labels ``y`` (``(B,)`` long) the network is called as ``net(x_n, n, y)``; with
    ``label_dropout = p > 0`` each label is replaced by ``null_label`` with probability ``p``
    (:func:`drop_labels`), which trains the conditional and the unconditional model at once, as
    classifier-free guidance needs (Ho & Salimans, 2022).
    """
    check_finite(x0, "x0")
    abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    B = x0.shape[0]
    n = torch.randint(len(abar), (B,), generator=generator)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    a = append_dims(abar[n], x0.ndim).to(x0)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
    n = n.to(x0.device)
    if y is None:
        if label_dropout:
            raise ValueError("label_dropout needs labels y")
        eps_hat = net(xt, n)
    else:
        if label_dropout:
            y = drop_labels(y, label_dropout, null_label, generator)
        eps_hat = net(xt, n, y)
    err = (eps_hat.float() - eps.float()).pow(2).flatten(1).mean(1)
    return err.mean() if reduce else err


def drop_labels(
    y: torch.Tensor, p: float, null_label: int | None, generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Replace each label by ``null_label`` with probability ``p`` (label dropout for
    classifier-free guidance). Returns a new ``(B,)`` tensor.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> y = drop_labels(torch.zeros(10_000, dtype=torch.long), 0.2, null_label=10, generator=g)
    >>> abs((y == 10).float().mean().item() - 0.2) < 0.02
    True
    """
    if not 0 <= p <= 1:
        raise ValueError(f"p must lie in [0, 1], got {p!r}")
    if not isinstance(null_label, int):
        raise ValueError(f"null_label must be the int label of the null class, got {null_label!r}")
    drop = (torch.rand(y.shape, generator=generator) < p).to(y.device)
    return torch.where(drop, torch.full_like(y, null_label), y)
