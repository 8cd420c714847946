r"""Denoising score matching (Vincent, 2011) in every parameterisation, on every schedule.

Explicit score matching asks for ``E_t lambda(t) E_{x_t} ||s_theta(x_t, t) - grad log p_t(x_t)||^2``,
which needs the unknown ``p_t``. Denoising score matching replaces the marginal score by the
conditional one, ``grad log p(x_t | x_0) = -eps / sigma(t)``:

.. math::  L_{\text{DSM}} = E_{t, x_0, \varepsilon}\ \lambda(t)\,
           \big\| s_\theta(x_t, t) + \varepsilon / \sigma(t) \big\|^2 ,

which differs from the explicit objective by a constant independent of ``theta``
(Vincent, 2011), so both have the same minimiser, ``s_theta = grad log p_t``.

A network predicting any of :data:`~diffusion_edu.parameterization.PREDICTIONS` is trained by
plain MSE on its own target (``eps``, ``x0``, ``v = alpha eps - sigma x0``, ``-eps / sigma`` or
the path velocity ``alpha' x0 + sigma' eps``); all of them are the same loss up to a weight
``w(t)`` on ``||eps_hat - eps||^2`` (mean over the data dimensions):

=============== ============================================ =========================================
``weighting``   ``w(t)`` on ``||eps_hat - eps||^2``           equals
=============== ============================================ =========================================
``"eps"``       ``1``                                         ``||eps_hat - eps||^2``; Ho et al. (2020)
                                                              ``L_simple``; ``lambda = sigma^2``
``"x0"``        ``sigma^2 / alpha^2``                         ``||x0_hat - x0||^2``
``"v"``         ``(alpha^2 + sigma^2)^2 / alpha^2``           ``||v_hat - v||^2``
``"score"``     ``1 / sigma^2``                               ``||s_hat + eps / sigma||^2``, ``lambda = 1``
``"velocity"``  ``(sigma' - alpha' sigma / alpha)^2``         ``||u_hat - u||^2``, the flow-matching loss
``"likelihood"````g(t)^2 / sigma^2``                          ``lambda = g^2``: Song et al. (2021b),
                                                              the weighting that bounds the NLL
=============== ============================================ =========================================

By default the weighting is that of the prediction, i.e. plain MSE on the network's own target;
another weighting multiplies that MSE by the ratio of the two weights.

Times: for a :class:`~diffusion_edu.schedules.DDPMSchedule`, ``n ~ U{0, ..., N-1}`` (Ho et al.,
2020, Algorithm 1); otherwise ``t ~ U(max(t_eps, t_min), T)``.
"""

from __future__ import annotations

import torch

from .parameterization import check_prediction, from_x0_eps
from .schedules import DDPMSchedule, Schedule, check_alphas_cumprod
from .utils import check_finite

__all__ = ["dsm_loss", "get_loss", "loss_weight", "ddpm_loss", "drop_labels", "sample_times", "WEIGHTINGS"]

WEIGHTINGS = ("eps", "x0", "v", "score", "velocity", "likelihood")


def loss_weight(weighting: str, schedule: Schedule, t: torch.Tensor) -> torch.Tensor:
    """``w(t)`` multiplying ``||eps_hat - eps||^2`` (table in the module docstring), ``(B,)`` float64."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    alpha, sigma = schedule.marginal(t)
    if weighting == "eps":
        return torch.ones_like(sigma)
    if weighting == "x0":
        return sigma**2 / alpha**2
    if weighting == "v":
        return (alpha**2 + sigma**2) ** 2 / alpha**2
    if weighting == "score":
        return 1 / sigma**2
    if weighting == "velocity":
        dalpha, dsigma = schedule.marginal_derivatives(t)
        return (dsigma - dalpha * sigma / alpha) ** 2
    return schedule.sde_coefficients(t)[1] / sigma**2  # likelihood: g^2 / sigma^2


def sample_times(schedule: Schedule, batch: int, generator: torch.Generator | None = None,
                 t_eps: float = 1e-5) -> torch.Tensor:
    """Training times ``(batch,)`` float64: ``n ~ U{0..N-1}`` for a DDPM schedule, else
    ``t ~ U(max(t_eps, t_min), T)``."""
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an int >= 1, got {batch!r}")
    if isinstance(schedule, DDPMSchedule):
        return torch.randint(schedule.num_steps, (batch,), generator=generator).double()
    if not 0 <= float(t_eps) < schedule.T:
        raise ValueError(f"t_eps must be in [0, T) = [0, {schedule.T:g}), got {t_eps!r}")
    lo = max(float(t_eps), schedule.t_min)
    u = torch.rand(batch, generator=generator, dtype=torch.float64)
    return lo + (schedule.T - lo) * u


def dsm_loss(
    net, x0: torch.Tensor, schedule: Schedule, *, prediction: str = "eps", weighting: str | None = None,
    t: torch.Tensor | None = None, t_eps: float = 1e-5, noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None, reduce: bool = True, y: torch.Tensor | None = None,
    label_dropout: float = 0.0, null_label: int | None = None,
) -> torch.Tensor:
    """Denoising score-matching loss of ``net(x_t, t)`` on a batch ``x0`` of shape ``(B, *dims)``.

    Parameters
    ----------
    net : callable ``net(x, t)`` (``net(x, t, y=y)`` with labels) returning a prediction of kind
        ``prediction``, called with ``t`` the ``(B,)`` schedule times in ``x0``'s dtype
    schedule : any :class:`~diffusion_edu.schedules.Schedule`
    prediction : ``"eps"``, ``"x0"``, ``"v"``, ``"score"`` or ``"velocity"``
    weighting : one of :data:`WEIGHTINGS`; ``None`` means the prediction's own MSE
    t : optional ``(B,)`` times; by default drawn by :func:`sample_times`
    noise : optional ``(B, *dims)`` noise ``eps``; by default drawn from ``generator``
    reduce : mean over the batch (scalar) if True, else the per-example losses ``(B,)``
    y, label_dropout, null_label : class labels ``(B,)``; each replaced by ``null_label`` with
        probability ``label_dropout`` (:func:`drop_labels`), which trains the conditional and the
        unconditional model at once, as classifier-free guidance needs (Ho & Salimans, 2022)

    Examples
    --------
    >>> from diffusion_edu import VPSDE
    >>> zero = lambda x, t: torch.zeros_like(x)   # eps_hat = 0 scores E||eps||^2 / D = 1
    >>> loss = dsm_loss(zero, torch.zeros(4096, 2), VPSDE(), generator=torch.Generator().manual_seed(0))
    >>> abs(loss.item() - 1) < 0.05
    True
    """
    check_prediction(prediction)
    weighting = prediction if weighting is None else weighting
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule must be a Schedule, got {type(schedule).__name__}")
    if not torch.is_tensor(x0) or x0.ndim < 1:
        raise ValueError(f"x0 must be a tensor of shape (B, *dims), got {x0!r:.60}")
    check_finite(x0, "x0")
    B = x0.shape[0]
    if t is None:
        t = sample_times(schedule, B, generator, t_eps)
    t = schedule._time(t, batch=B)
    xt, eps = schedule.perturb(x0, t, generator=generator, noise=noise)
    coef = [c.to(x0.device) for c in schedule.marginal(t)]
    if prediction == "velocity":
        coef += [c.to(x0.device) for c in schedule.marginal_derivatives(t)]
    target = from_x0_eps(x0, eps, prediction, *coef)  # the network's own target
    t_net = t.to(x0.device, x0.dtype)
    if y is None:
        if label_dropout:
            raise ValueError("label_dropout needs labels y")
        pred = net(xt, t_net)
    else:
        if label_dropout:
            y = drop_labels(y, label_dropout, null_label, generator)
        pred = net(xt, t_net, y=y)
    if pred.shape != xt.shape:
        raise ValueError(f"net(x, t) must return the shape of x {tuple(xt.shape)}, got {tuple(pred.shape)}")
    # the loss in the data's precision (the schedule's float64 coefficients do not promote a
    # float32 batch), and at least float32 (bf16 under autocast)
    dtype = torch.promote_types(torch.promote_types(pred.dtype, x0.dtype), torch.float32)
    err = (pred.to(dtype) - target.to(dtype)).pow(2).flatten(1).mean(1)  # (B,) MSE on the own target
    if weighting != prediction:
        ratio = loss_weight(weighting, schedule, t) / loss_weight(prediction, schedule, t)
        err = ratio.to(err) * err
    return err.mean() if reduce else err


def get_loss(prediction: str = "eps", weighting: str | None = None):
    """The training loss by name: ``loss(net, x0, schedule, **kw)`` is :func:`dsm_loss` with this
    ``prediction`` and ``weighting`` fixed (the seed text's ``get_loss``, with the loss it should
    have: a denoising regression, not a difference of log densities). The names are checked here,
    not at the first training step.

    Examples
    --------
    >>> from diffusion_edu import VPSDE
    >>> loss = get_loss("v", weighting="likelihood")
    >>> zero = lambda x, t: torch.zeros_like(x)
    >>> x0, g = torch.zeros(8, 2), torch.Generator().manual_seed(0)
    >>> bool(loss(zero, x0, VPSDE(), generator=g) >= 0), loss.prediction, loss.weighting
    (True, 'v', 'likelihood')
    """
    check_prediction(prediction)
    if weighting is not None and weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS} or None, got {weighting!r}")

    def loss(net, x0: torch.Tensor, schedule: Schedule, **kwargs) -> torch.Tensor:
        for name, value in (("prediction", prediction), ("weighting", weighting)):
            if name in kwargs:
                raise ValueError(f"{name} is fixed by get_loss ({name}={value!r}); got {name}={kwargs[name]!r} again")
        return dsm_loss(net, x0, schedule, prediction=prediction, weighting=weighting, **kwargs)

    loss.prediction, loss.weighting = prediction, weighting
    loss.__name__ = f"dsm_loss[{prediction}, {weighting or prediction}]"
    return loss


def ddpm_loss(
    net, x0: torch.Tensor, schedule: DDPMSchedule | torch.Tensor, *, prediction: str = "eps",
    generator: torch.Generator | None = None, reduce: bool = True,
    y: torch.Tensor | None = None, label_dropout: float = 0.0, null_label: int | None = None,
) -> torch.Tensor:
    """Ho et al. (2020) ``L_simple`` (Algorithm 1): ``n ~ U{0..N-1}``,
    ``x_n = sqrt(abar_n) x0 + sqrt(1 - abar_n) eps``, loss ``||net(x_n, n) - eps||^2``:
    :func:`dsm_loss` on a :class:`~diffusion_edu.schedules.DDPMSchedule` (or its
    ``alphas_cumprod``). The network sees the training indices ``n``. Other ``prediction`` types
    train by MSE on their own target.
    """
    if not isinstance(schedule, DDPMSchedule):
        schedule = DDPMSchedule(check_alphas_cumprod(schedule))
    return dsm_loss(net, x0, schedule, prediction=prediction, generator=generator, reduce=reduce,
                    y=y, label_dropout=label_dropout, null_label=null_label)


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
