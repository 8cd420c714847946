r"""Guidance: steering a trained diffusion model with a classifier, a second network or a loss.

Everything here wraps a noise prediction ``eps_fn(x, n)`` in the discrete DDPM convention of
:mod:`diffusion_edu.samplers` (``n`` a ``(B,)`` long tensor of indices into ``alphas_cumprod``,
``x_n = sqrt(abar_n) x_0 + sqrt(1 - abar_n) eps``), so that the existing samplers
(:func:`~diffusion_edu.samplers.ddpm_ancestral`, :func:`~diffusion_edu.samplers.ddim`) run
guided models unchanged. The noise prediction and the score of ``p_n`` are one line apart:

.. math::  \nabla_x \log p_n(x) = -\frac{\varepsilon(x, n)}{\sqrt{1 - \bar\alpha_n}} .

**Classifier guidance** (Dhariwal & Nichol, 2021; the idea goes back to Sohl-Dickstein et al.,
2015, and Song et al., 2021). Bayes' rule ``p(x | y) = p(y | x) p(x) / p(y)`` holds at every noise
level, and ``p(y)`` does not depend on ``x``, so the conditional score is the unconditional score
plus the gradient of a *noise-conditional* classifier:

.. math::  \nabla_x \log p_n(x \mid y) = \nabla_x \log p_n(x) + \nabla_x \log p_n(y \mid x) .

With a guidance scale ``w`` in front of the classifier term (``w = 1`` is exactly the
conditional model; ``w > 1`` samples ``p_n(x) p_n(y | x)^w``, sharper and less diverse), the
guided noise prediction is (:func:`classifier_guided_eps`)

.. math::  \tilde\varepsilon(x, n) = \varepsilon(x, n)
           - w \sqrt{1 - \bar\alpha_n}\; \nabla_x \log p_\phi(y \mid x, n) .

**Classifier-free guidance** (Ho & Salimans, 2022). One network trained with label dropout
predicts both ``eps(x, n, y)`` and ``eps(x, n, null)``; the guided prediction
(:func:`cfg_eps`) is

.. math::  \tilde\varepsilon = (1 + w)\, \varepsilon(x, n, y) - w\, \varepsilon(x, n, \varnothing),

i.e. the score of ``p(x | y)^{1+w} / p(x)^w = p(x) p(y | x)^{1+w}`` up to normalisation, an
*implicit* classifier. Convention here: ``w = 0`` is the plain conditional model (Ho &
Salimans's ``w``). Many codes write the guidance scale ``s = 1 + w``,
``eps(null) + s (eps(y) - eps(null))``, so that ``s = 1`` is the conditional model.

**Loss guidance for inverse problems: diffusion posterior sampling** (Chung et al., 2023,
Algorithm 1). To sample ``p(x_0 | y)`` for a measurement ``y = A(x_0) + sigma_y z`` we need
``grad log p_n(y | x_n)``, which is intractable; DPS approximates ``p(y | x_n)`` by
``p(y | x_0 = x0_hat(x_n))`` with Tweedie's estimate
``x0_hat = (x_n - sqrt(1 - abar_n) eps(x_n, n)) / sqrt(abar_n)`` and, after each ancestral step,
moves ``x`` down the gradient (through the network) of the measurement loss (:func:`dps`):

.. math::  x_{n-1} \leftarrow x'_{n-1} - \zeta_n\, \nabla_{x_n}
           \big\| y - A(\hat x_0(x_n)) \big\|^2, \qquad
           \zeta_n = \frac{\zeta}{\| y - A(\hat x_0(x_n)) \|} .

The step-size rule ``zeta_n = zeta / ||y - A(x0_hat)||`` is the paper's; it makes the step
independent of the noise level ``sigma_y`` and of the number of observed entries.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .samplers import _after_step, _check_abar
from .toy import GaussianMixture
from .utils import append_dims, check_finite

__all__ = [
    "classifier_log_prob_grad", "classifier_guided_eps", "cfg_eps", "mixture_classifier",
    "dps", "mask_operator", "measure", "measurement_loss", "random_mask",
]

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# -- classifier guidance ---------------------------------------------------------------------
def classifier_log_prob_grad(classifier, x: torch.Tensor, n: torch.Tensor, y) -> torch.Tensor:
    """``grad_x log p_phi(y | x, n)``, ``(B, *dims)``, for a classifier ``classifier(x, n)``
    returning logits ``(B, K)`` (log-probabilities up to a per-example constant).

    The gradient of the *sum* over the batch is taken: each example's log-probability depends
    on its own ``x`` only, so row ``b`` of the result is ``grad_{x_b} log p(y_b | x_b, n_b)``.

    Examples
    --------
    >>> clf = lambda x, n: torch.stack([x[:, 0], -x[:, 0]], dim=1)  # logits (x, -x)
    >>> g = classifier_log_prob_grad(clf, torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), 0)
    >>> g  # d/dx log sigmoid(2x) at 0 = 1
    tensor([[1., 0.]])
    """
    check_finite(x, "x")
    y = _labels(y, x)
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        logits = classifier(x_in, n)
        if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
            raise ValueError(f"classifier must return logits of shape ({x.shape[0]}, K), got {tuple(logits.shape)}")
        if int(y.max()) >= logits.shape[1]:
            raise ValueError(f"y must hold labels in 0..{logits.shape[1] - 1}, got max {int(y.max())}")
        log_p = torch.log_softmax(logits, dim=1).gather(1, y[:, None]).sum()
        (grad,) = torch.autograd.grad(log_p, x_in)
    return grad.detach()


def classifier_guided_eps(
    eps_fn: EpsFn, classifier, y, scale: float, alphas_cumprod: torch.Tensor,
) -> EpsFn:
    r"""Classifier guidance (Dhariwal & Nichol, 2021): the noise prediction of
    ``p_n(x) p_phi(y | x, n)^scale``,

    ``eps_tilde(x, n) = eps_fn(x, n) - scale * sqrt(1 - abar_n) * grad_x log p_phi(y | x, n)``.

    Parameters
    ----------
    eps_fn : the unconditional noise prediction ``eps_fn(x, n)``
    classifier : ``classifier(x, n) -> logits (B, K)``, trained on noised data ``x_n``
    y : an int or a ``(B,)`` long tensor of target classes
    scale : guidance scale ``w >= 0``; ``1`` is Bayes' rule exactly, ``0`` no guidance
    alphas_cumprod : the training schedule ``abar`` ``(N,)``

    Returns
    -------
    a callable ``eps_tilde(x, n) -> (B, *dims)`` for the discrete samplers

    Examples
    --------
    >>> from diffusion_edu.schedules import alphas_cumprod, ddpm_betas
    >>> abar = alphas_cumprod(ddpm_betas(100))
    >>> gm = GaussianMixture([[-2.0, 0.0], [2.0, 0.0]], stds=0.5)
    >>> eps = classifier_guided_eps(gm.eps_fn(abar), mixture_classifier(gm, abar), 1, 1.0, abar)
    >>> x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> n = torch.full((5,), 30)
    >>> exact = GaussianMixture([[2.0, 0.0]], stds=0.5).eps_fn(abar)(x, n)  # class 1 alone
    >>> torch.allclose(eps(x, n), exact, atol=1e-10)
    True
    """
    abar = _check_abar(alphas_cumprod)
    _check_scale(scale)

    def guided(x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        eps = eps_fn(x, n)
        if scale == 0:
            return eps
        sigma = torch.sqrt(1 - abar.to(x.device)[n.to(x.device)]).to(x.dtype)  # sqrt(1 - abar_n), (B,)
        grad = classifier_log_prob_grad(classifier, x, n, y)  # grad_x log p(y | x_n, n)
        return eps - scale * append_dims(sigma, x.ndim) * grad.to(eps.dtype)

    return guided


def mixture_classifier(gm: GaussianMixture, alphas_cumprod: torch.Tensor):
    r"""The *exact* noise-conditional classifier of a Gaussian mixture whose components are the
    classes: ``classifier(x, n)`` returns the logits
    ``log w_k + log N(x; sqrt(abar_n) mu_k, S_k)``, ``(B, K)``, whose softmax is the component
    posterior ``p(k | x_n)`` (the responsibilities of :mod:`diffusion_edu.toy`).

    Differentiable in ``x`` (computed in float64, returned in ``x``'s dtype).
    """
    if not isinstance(gm, GaussianMixture):
        raise ValueError(f"gm must be a GaussianMixture, got {type(gm).__name__}")
    abar = _check_abar(alphas_cumprod)

    def classifier(x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        n = torch.as_tensor(n).long().expand(x.shape[0])
        a = abar.to(x.device)[n.to(x.device)]  # (B,)
        log_joint = gm.log_joint(x, a.sqrt(), (1 - a).sqrt())  # log w_k N_k(x), (B, K)
        return log_joint.to(x.dtype)

    return classifier


# -- classifier-free guidance ------------------------------------------------------------------
def cfg_eps(net, y, scale: float, *, null_label: int | None = None) -> EpsFn:
    r"""Classifier-free guidance (Ho & Salimans, 2022):

    ``eps_tilde(x, n) = (1 + w) net(x, n, y) - w net(x, n, null_label)``, ``w = scale``.

    ``w = 0`` is the conditional model; the guidance scale ``s = 1 + w`` of other codes is the
    same rule written ``eps_null + s (eps_y - eps_null)``. The two predictions are made in one
    call on a doubled batch.

    Parameters
    ----------
    net : ``net(x, n, y) -> (B, *dims)``, trained with label dropout
    y : an int or a ``(B,)`` long tensor of classes
    scale : ``w >= 0``
    null_label : label of the null class; default ``net.null_label``

    Examples
    --------
    >>> net = lambda x, n, y: x * (y.to(x.dtype) + 1).view(-1, 1)  # toy: eps = (y + 1) x
    >>> eps = cfg_eps(net, 2, scale=0.5, null_label=0)
    >>> eps(torch.ones(1, 2), torch.zeros(1, dtype=torch.long))  # 1.5 * 3 - 0.5 * 1
    tensor([[4., 4.]])
    """
    _check_scale(scale)
    if null_label is None:
        null_label = getattr(net, "null_label", None)
        if null_label is None:
            raise ValueError("null_label must be given: net has no .null_label (is it class-conditional?)")
    if not isinstance(null_label, int):
        raise ValueError(f"null_label must be an int, got {null_label!r}")

    def guided(x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        labels = _labels(y, x)
        if scale == 0:
            return net(x, n, labels)
        null = torch.full_like(labels, null_label)
        both = net(torch.cat([x, x]), torch.cat([n, n]), torch.cat([labels, null]))
        eps_y, eps_null = both.chunk(2)  # conditional and unconditional predictions
        return (1 + scale) * eps_y - scale * eps_null

    return guided


# -- loss guidance: diffusion posterior sampling ---------------------------------------------
def dps(
    eps_fn: EpsFn, alphas_cumprod: torch.Tensor, x: torch.Tensor,
    measurement_loss: Callable[[torch.Tensor], torch.Tensor], step_size: float,
    generator: torch.Generator | None = None, *, timesteps=None, normalize: bool = True,
    variance: str = "beta_tilde", callback=None,
) -> torch.Tensor:
    r"""Diffusion posterior sampling (Chung et al., 2023, Algorithm 1): DDPM ancestral steps,
    each followed by a gradient step on the measurement loss of Tweedie's estimate.

    At index ``n`` (next index ``m``; ``abar_m = 1`` after the last):

    - ``x0_hat = (x - sqrt(1 - abar_n) eps(x, n)) / sqrt(abar_n)`` (gradient kept),
    - ``x' = (x - beta / sqrt(1 - abar_n) eps) / sqrt(1 - beta) + sigma z``,
      ``beta = 1 - abar_n / abar_m``, exactly the step of
      :func:`~diffusion_edu.samplers.ddpm_ancestral` (no noise at the last step),
    - ``x <- x' - zeta_n grad_x L(x0_hat(x))`` with ``L = measurement_loss``;
      ``zeta_n = step_size / sqrt(L)`` per example (``normalize=True``, the paper's rule for
      ``L = ||y - A(x0_hat)||^2``) or ``zeta_n = step_size`` (``normalize=False``).

    Parameters
    ----------
    eps_fn : the (unconditional) noise prediction ``eps_fn(x, n)``; it must be differentiable
    alphas_cumprod : training schedule ``(N,)``
    x : starting noise ``(B, *dims)``
    measurement_loss : ``L(x0_hat) -> (B,)``, e.g. :func:`measurement_loss` ``||y - A(x)||^2``
    step_size : ``zeta >= 0``; ``0`` gives ancestral sampling of the prior
    timesteps : decreasing indices to visit (default: all ``N - 1 .. 0``, i.e. the training
        chain); a shorter list runs the ancestral sampler of the respaced chain
    variance : ``"beta_tilde"`` (posterior variance, default) or ``"beta"``

    Returns
    -------
    samples ``(B, *dims)`` approximately from ``p(x_0 | y)``

    Examples
    --------
    >>> from diffusion_edu.schedules import alphas_cumprod, ddpm_betas
    >>> abar = alphas_cumprod(ddpm_betas(100))
    >>> eps_fn = GaussianMixture([[0.0, 0.0]], stds=1.0).eps_fn(abar)  # prior N(0, I)
    >>> loss = measurement_loss(torch.full((200, 1), 2.0), lambda x: x[:, :1])  # observe x_1 = 2
    >>> g = torch.Generator().manual_seed(0)
    >>> x = dps(eps_fn, abar, torch.randn(200, 2, generator=g), loss, 0.05, g)
    >>> bool((x[:, 0] - 2).abs().max() < 0.3), round(x[:, 1].std().item(), 1)  # x_1 ~ 2, x_2 ~ N(0, 1)
    (True, 0.9)
    """
    abar = _check_abar(alphas_cumprod)
    check_finite(x, "x")
    if not (isinstance(step_size, (int, float)) and step_size >= 0 and math.isfinite(step_size)):
        raise ValueError(f"step_size must be a finite float >= 0, got {step_size!r}")
    if variance not in ("beta", "beta_tilde"):
        raise ValueError(f"variance must be 'beta' or 'beta_tilde', got {variance!r}")
    ts = torch.arange(len(abar) - 1, -1, -1) if timesteps is None else torch.as_tensor(timesteps)
    if ts.ndim != 1 or len(ts) == 0 or ts.dtype.is_floating_point:
        raise ValueError(f"timesteps must be a non-empty 1-D sequence of ints, got {timesteps!r}")
    if (ts[1:] >= ts[:-1]).any() or ts.min() < 0 or ts.max() >= len(abar):
        raise ValueError(f"timesteps must decrease strictly within [0, {len(abar) - 1}], got {ts.tolist()}")
    B = x.shape[0]
    for i, n in enumerate(ts.tolist()):
        a = abar[n].item()
        a_prev = abar[ts[i + 1]].item() if i + 1 < len(ts) else 1.0
        beta = 1 - a / a_prev
        nb = torch.full((B,), n, dtype=torch.long, device=x.device)
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(step_size > 0)
            eps = eps_fn(x_in, nb)
            if step_size > 0:
                x0_hat = (x_in - math.sqrt(1 - a) * eps) / math.sqrt(a)  # Tweedie, through the net
                loss = measurement_loss(x0_hat)  # (B,)
                if loss.shape != (B,):
                    raise ValueError(f"measurement_loss must return shape ({B},), got {tuple(loss.shape)}")
                (grad,) = torch.autograd.grad(loss.sum(), x_in)
        eps = eps.detach()
        x_next = (x - beta / math.sqrt(1 - a) * eps) / math.sqrt(1 - beta)  # posterior mean
        if i + 1 < len(ts):
            var = beta if variance == "beta" else (1 - a_prev) / (1 - a) * beta
            z = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
            x_next = x_next + math.sqrt(var) * z
        if step_size > 0:
            zeta = step_size / loss.detach().clamp_min(1e-12).sqrt() if normalize else torch.full_like(loss, step_size)
            x_next = x_next - append_dims(zeta.to(x.dtype), x.ndim) * grad  # measurement step
        x = x_next.detach()
        _after_step(x, i, n, callback)
    return x


def mask_operator(mask: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Inpainting as a linear operator: ``A(x) = x[:, mask]`` flattened to ``(B, m)``, the ``m``
    observed entries, for a boolean (or 0/1) ``mask`` of shape ``dims`` shared by the batch.

    Examples
    --------
    >>> A = mask_operator(torch.tensor([[True, False], [False, True]]))
    >>> A(torch.arange(4.0).view(1, 2, 2))
    tensor([[0., 3.]])
    """
    if not torch.is_tensor(mask):
        raise ValueError(f"mask must be a tensor, got {type(mask).__name__}")
    keep = mask.bool().flatten()
    if not keep.any():
        raise ValueError("mask must observe at least one entry, got an all-False mask")

    def A(x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != tuple(mask.shape):
            raise ValueError(f"x must have shape (B, {', '.join(map(str, mask.shape))}), got {tuple(x.shape)}")
        return x.flatten(1)[:, keep.to(x.device)]  # (B, m)

    return A


def random_mask(shape, observed: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A boolean mask of ``shape`` with each entry observed (True) with probability ``observed``."""
    if not 0 < observed <= 1:
        raise ValueError(f"observed must lie in (0, 1], got {observed!r}")
    return torch.rand(tuple(shape), generator=generator) < observed


def measure(
    x0: torch.Tensor, operator: Callable[[torch.Tensor], torch.Tensor], sigma_y: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A noisy measurement ``y = A(x0) + sigma_y z``, ``z ~ N(0, I)`` of ``A(x0)``'s shape."""
    if not sigma_y >= 0:
        raise ValueError(f"sigma_y must be >= 0, got {sigma_y!r}")
    check_finite(x0, "x0")
    y = operator(x0)
    z = torch.randn(y.shape, generator=generator, dtype=y.dtype).to(y.device)
    return y + sigma_y * z


def measurement_loss(
    y: torch.Tensor, operator: Callable[[torch.Tensor], torch.Tensor],
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The squared residual ``L(x) = ||y - A(x)||^2`` per example, ``(B,)``, for :func:`dps`.

    Examples
    --------
    >>> L = measurement_loss(torch.zeros(2, 3), lambda x: x)
    >>> L(torch.ones(2, 3))
    tensor([3., 3.])
    """
    check_finite(y, "y")

    def loss(x: torch.Tensor) -> torch.Tensor:
        r = y.to(x.device, x.dtype) - operator(x)
        if r.shape[0] != x.shape[0]:
            raise ValueError(f"y must have one row per example ({x.shape[0]}), got {tuple(y.shape)}")
        return r.pow(2).flatten(1).sum(1)

    return loss


# -- helpers ---------------------------------------------------------------------------------
def _labels(y, x: torch.Tensor) -> torch.Tensor:
    """An int or a ``(B,)`` integer tensor -> a ``(B,)`` long tensor on ``x.device``."""
    B = x.shape[0]
    if isinstance(y, int) and not isinstance(y, bool):
        y = torch.full((B,), y, dtype=torch.long)
    if not torch.is_tensor(y) or y.dtype not in (torch.long, torch.int32, torch.int64) or y.shape != (B,):
        raise ValueError(f"y must be an int or a ({B},) long tensor of labels, got {y!r}")
    if int(y.min()) < 0:
        raise ValueError(f"y must hold non-negative labels, got min {int(y.min())}")
    return y.long().to(x.device)


def _check_scale(scale) -> None:
    if not (isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale >= 0
            and math.isfinite(scale)):
        raise ValueError(f"scale must be a finite float >= 0, got {scale!r}")
