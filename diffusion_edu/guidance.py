r"""Guidance: steering a trained diffusion model with a classifier, a second output or a measurement.

Every function here takes :class:`~diffusion_edu.denoiser.Denoiser` objects and returns a
Denoiser, so a guided model drives every sampler of :mod:`diffusion_edu.samplers` on any
schedule. The whole chapter rests on Bayes' rule for scores: ``p(y)`` does not depend on ``x``, so

.. math::  \nabla_x \log p_t(x \mid y) = \nabla_x \log p_t(x) + \nabla_x \log p_t(y \mid x) ,

and with ``eps_hat = -sigma score`` the guided noise prediction is

.. math::  \tilde\varepsilon(x, t) = \hat\varepsilon(x, t) - w\, \sigma(t)\, \nabla_x \log p_t(y \mid x) .

**Classifier guidance** (:func:`classifier_guidance`; Dhariwal & Nichol, 2021; the idea goes back
to Sohl-Dickstein et al., 2015, and Song et al., 2021): ``log p_t(y | x)`` is a noise-conditional
classifier. ``w = 1`` is exactly the conditional model; at every noise level ``t``, ``w != 1`` uses the
score of the tilted density ``p_t(x) p_t(y | x)^w``, up-weighting where the classifier is confident
(sharper, less diverse). It does *not* sample ``p_0(x) p_0(y | x)^w``: the tilted densities at
different ``t`` are not the noised marginals of any one distribution, so ``w != 1`` is a heuristic.

**Classifier-free guidance** (:func:`cfg`; Ho & Salimans, 2022). One network trained with label
dropout predicts both ``eps(x, t, y)`` and ``eps(x, t, null)``; the guided prediction is

.. math::  \tilde\varepsilon = \varepsilon(x, t, \varnothing) + w\, \big(\varepsilon(x, t, y) - \varepsilon(x, t, \varnothing)\big),

so ``w = 1`` is the conditional model and ``w = 0`` the unconditional one (the convention of
diffusers' ``guidance_scale``). Ho & Salimans write ``(1 + w') eps(y) - w' eps(null)``: their
``w'`` is this ``w - 1``. At each ``t`` it uses the score of ``p_t(x | y)^w p_t(x)^{1-w}``, an
*implicit* classifier ``p_t(y | x)^{w - 1}`` on top of the conditional model (the same heuristic as
above for ``w != 1``). The combination is affine with weights summing to one, so it is the same in
every parameterisation (noise, data, score, or a flow's velocity); it is made on the networks' raw
outputs. Two refinements: ``interval=(lo, hi)`` guides only at noise levels ``lo < sigma/alpha <= hi``
and uses the conditional model elsewhere (Kynkäänniemi et al., 2024: guidance at high noise drops
modes, at low noise it does little); ``rescale=phi`` blends in the guided output rescaled to the
conditional output's standard deviation (Lin et al., 2024, Sec. 3.4). :func:`dynamic_threshold`
(Saharia et al., 2022) keeps a strongly guided ``x0_hat`` inside the data range.

**Loss guidance for inverse problems: diffusion posterior sampling** (:func:`dps`; Chung et al.,
2023, Algorithm 1). For a measurement ``y = A(x0) + sigma_y z`` the likelihood ``p(y | x_t)`` is
intractable; DPS replaces ``p(x0 | x_t)`` by a point mass at Tweedie's estimate ``x0_hat(x_t)``:

.. math::  \log p(y \mid x_t) \approx \log N\big(y;\ A(\hat x_0(x_t)),\ \sigma_y^2 I\big)
           = -\frac{\| y - A(\hat x_0(x_t)) \|^2}{2 \sigma_y^2} + \text{const},

differentiated *through the network*. That is classifier guidance with a measurement in place
of a classifier. With ``zeta`` given, the weight ``1 / (2 sigma_y^2)`` is replaced by the step size
``zeta / ||y - A(x0_hat)||`` that Chung et al. (2023) give with their Algorithm 1 (``zeta_i =
zeta' / ||y - A(x0_hat(x_i))||``; their code steps along the gradient of ``||y - A(x0_hat)||``). The
step then no longer sees ``sigma_y``: nothing stops it at a residual of about ``sigma_y`` per measured
entry, which is what an exact posterior sample has, and a large ``zeta`` drives the residual far below
the noise: the reconstruction then fits the noise, it over-fits.
:func:`gaussian_mixture_posterior` gives the exact posterior for a Gaussian-mixture prior and a
linear measurement, against which DPS can be measured.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .denoiser import Denoiser
from .schedules import Schedule
from .toy import GaussianMixture
from .utils import append_dims, check_finite

__all__ = [
    "cfg", "classifier_guidance", "dps", "dynamic_threshold", "classifier_log_prob", "classifier_log_prob_grad",
    "mixture_classifier", "gaussian_mixture_posterior", "mask_operator", "measure", "measurement_loss",
    "random_mask",
]

LogProb = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# -- classifier-free guidance ------------------------------------------------------------------
def cfg(
    cond: Denoiser, uncond: Denoiser, w: float, *, interval: tuple[float, float] | None = None,
    rescale: float = 0.0,
) -> Denoiser:
    r"""Classifier-free guidance (Ho & Salimans, 2022): ``uncond + w (cond - uncond)`` on the raw
    outputs of two Denoisers with the same schedule and prediction type (typically one network
    bound to the labels and to the null label).

    When both wrap the same network with tensor keyword arguments of the batch's length (e.g.
    ``den.bind(y=labels)`` and ``den.bind(y=null)``), the two predictions are made in one call on
    a doubled batch.

    Parameters
    ----------
    cond, uncond : the conditional and unconditional models (Denoisers)
    w : guidance weight ``>= 0``: ``1`` the conditional model, ``0`` the unconditional one
    interval : ``(lo, hi)`` with ``0 <= lo < hi <= inf``, or None (guide everywhere). Guidance is on
        only where the noise level ``sigma~ = sigma(t) / alpha(t)`` (Karras et al.'s ``sigma``) lies in
        ``(lo, hi]``, as in Kynkäänniemi et al. (2024); elsewhere the output is ``cond``'s (``w = 1``).
        Decided per example, so a batch may mix times.
    rescale : ``phi`` in ``[0, 1]``, rescaled CFG (Lin et al., 2024, Sec. 3.4): with ``g`` the guided
        output and ``s(.)`` the standard deviation of one example over all its entries,
        ``phi g s(cond) / s(g) + (1 - phi) g`` (diffusers' ``guidance_rescale``). ``0``: plain CFG.
        Applied to the raw outputs (Lin et al. use a v-prediction network); not affine, so unlike
        plain CFG it depends on the parameterisation.

    Examples
    --------
    >>> from diffusion_edu import VPSDE
    >>> net = lambda x, t, y: x * (y.to(x.dtype) + 1).view(-1, 1)  # toy: eps = (y + 1) x
    >>> den = Denoiser(net, VPSDE(), "eps")
    >>> guided = cfg(den.bind(y=torch.tensor([2])), den.bind(y=torch.tensor([0])), w=1.5)
    >>> guided.eps(torch.ones(1, 2), 0.5)   # 1 + 1.5 * (3 - 1)
    tensor([[4., 4.]])
    """
    _check_w(w)
    for name, d in (("cond", cond), ("uncond", uncond)):
        if not isinstance(d, Denoiser):
            raise ValueError(f"{name} must be a Denoiser, got {type(d).__name__}")
    if cond.prediction != uncond.prediction:
        raise ValueError(f"cond and uncond must predict the same thing, got {cond.prediction!r} and {uncond.prediction!r}")
    _check_same_schedule(cond.schedule, uncond.schedule)
    if interval is not None:
        try:
            lo, hi = (float(v) for v in interval)
        except (TypeError, ValueError):
            raise ValueError(f"interval must be a pair (lo, hi) of noise levels, got {interval!r}") from None
        if not (0 <= lo < hi) or math.isnan(hi):
            raise ValueError(f"interval must satisfy 0 <= lo < hi (noise levels sigma/alpha), got {interval!r}")
    if not (isinstance(rescale, (int, float)) and not isinstance(rescale, bool) and 0 <= rescale <= 1):
        raise ValueError(f"rescale must be a float in [0, 1], got {rescale!r}")
    batched = cond.net is uncond.net and cond.cond.keys() == uncond.cond.keys() and all(
        torch.is_tensor(v) and torch.is_tensor(uncond.cond[k]) for k, v in cond.cond.items())
    sched = cond.schedule

    def combined(x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # (guided, cond)
        if batched and all(len(v) == len(x) for v in cond.cond.values()):  # one call, doubled batch
            kw = {k: torch.cat([v, uncond.cond[k]]) for k, v in cond.cond.items()}
            c, u = cond.net(torch.cat([x, x]), torch.cat([t, t]), **kw).chunk(2)
        else:
            c, u = cond.predict(x, t), uncond.predict(x, t)
        g = u + w * (c - u)  # uncond + w (cond - uncond)
        if rescale > 0:  # Lin et al. (2024), Sec. 3.4: match the conditional output's std, per example
            dims = tuple(range(1, x.ndim))
            ratio = c.std(dim=dims, keepdim=True) / g.std(dim=dims, keepdim=True).clamp_min(1e-12)
            g = rescale * g * ratio + (1 - rescale) * g
        return g, c

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if w == 1:  # the conditional model (rescaling g = cond changes nothing)
            return cond.predict(x, t)
        if w == 0 and rescale == 0 and interval is None:
            return uncond.predict(x, t)
        if interval is None:
            return combined(x, t)[0]
        alpha, sigma = sched.marginal(t.detach().cpu().double())
        noise = sigma / alpha  # sigma~ = sigma / alpha; inf where alpha = 0
        on = ((noise > lo) & (noise <= hi)).to(x.device)  # (B,)
        if not on.any():
            return cond.predict(x, t)  # outside the interval: the conditional model
        g, c = combined(x, t)
        return torch.where(append_dims(on, x.ndim), g, c)

    guided.__name__ = f"cfg(w={w:g}" + (f", interval={interval}" if interval else "") + (
        f", rescale={rescale:g})" if rescale else ")")
    return Denoiser(guided, cond.schedule, cond.prediction)


def dynamic_threshold(denoiser: Denoiser, percentile: float = 0.995) -> Denoiser:
    r"""Dynamic thresholding (Saharia et al., 2022, Sec. 2.3): at every step, ``s`` is the
    ``percentile`` quantile of ``|x0_hat|`` over each example's entries; where ``s > 1``, ``x0_hat``
    is clipped to ``[-s, s]`` and divided by ``s``:

    .. math::  s = \max\big(1,\ \mathrm{quantile}_p |\hat x_0|\big), \qquad
               \hat x_0 \leftarrow \mathrm{clip}(\hat x_0, -s, s) / s ,

    and the noise estimate is the one that implies it (as for
    :func:`~diffusion_edu.denoiser.clip_x0`, which is the static threshold ``s = 1``). For data in
    ``[-1, 1]``: a strongly guided ``x0_hat`` leaves the range, and static clipping saturates it;
    dividing by ``s`` keeps the relative contrast. ``percentile`` is a hyper-parameter (diffusers'
    default ``dynamic_thresholding_ratio`` is 0.995).

    Examples
    --------
    >>> from diffusion_edu.schedules import DDPMSchedule
    >>> sched = DDPMSchedule(torch.tensor([0.9, 0.5, 0.01]))
    >>> den = Denoiser(lambda x, t: x, sched, "x0")          # x0_hat = x
    >>> dynamic_threshold(den, 1.0).x0(torch.tensor([[0.5, -2.0, 4.0]]), 1.0)   # s = 4
    tensor([[ 0.1250, -0.5000,  1.0000]])
    """
    if not isinstance(denoiser, Denoiser):
        raise ValueError(f"denoiser must be a Denoiser, got {type(denoiser).__name__}")
    if not (isinstance(percentile, (int, float)) and not isinstance(percentile, bool) and 0 < percentile <= 1):
        raise ValueError(f"percentile must be a float in (0, 1], got {percentile!r}")

    def thresholded_x0(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x0 = denoiser.x0(x, t)
        s = torch.quantile(x0.abs().flatten(1).double(), percentile, dim=1).clamp_min(1.0)  # (B,)
        s = append_dims(s.to(x0.dtype), x0.ndim)
        return torch.maximum(torch.minimum(x0, s), -s) / s  # clip to [-s, s], then divide by s

    thresholded_x0.__name__ = f"dynamic_threshold(p={percentile:g})"
    return Denoiser(thresholded_x0, denoiser.schedule, "x0")


# -- classifier guidance and DPS: one mechanism --------------------------------------------------
def classifier_guidance(denoiser: Denoiser, log_p_y: LogProb, w: float) -> Denoiser:
    r"""Classifier guidance: the Denoiser whose noise prediction is
    ``eps_hat(x, t) - w sigma(t) grad_x log_p_y(x, t)``, i.e. whose score is
    ``score(x, t) + w grad_x log p_t(y | x)``.

    Parameters
    ----------
    denoiser : the (unconditional) model
    log_p_y : ``log_p_y(x, t) -> (B,)``, the differentiable ``log p_t(y | x)`` of each example at
        schedule times ``t`` ``(B,)``, e.g. :func:`classifier_log_prob` of a noise-conditional
        classifier
    w : guidance weight ``>= 0``; ``1`` is Bayes' rule exactly, ``0`` no guidance

    Examples
    --------
    >>> from diffusion_edu.schedules import DDPMSchedule, alphas_cumprod, ddpm_betas
    >>> sched = DDPMSchedule(alphas_cumprod(ddpm_betas(100)))
    >>> gm = GaussianMixture([[-2.0, 0.0], [2.0, 0.0]], stds=0.5)
    >>> guided = classifier_guidance(gm.denoiser(sched), classifier_log_prob(mixture_classifier(gm, sched), 1), 1.0)
    >>> x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> exact = GaussianMixture([[2.0, 0.0]], stds=0.5).denoiser(sched)   # class 1 alone
    >>> torch.allclose(guided.eps(x, 30.0), exact.eps(x, 30.0), atol=1e-10)
    True
    """
    if not callable(log_p_y):
        raise ValueError(f"log_p_y must be callable as log_p_y(x, t), got {type(log_p_y).__name__}")
    return _guided(denoiser, log_p_y, w, through_x0=False, name=f"classifier guidance (w={w:g})")


def dps(
    denoiser: Denoiser, y: torch.Tensor, operator: Callable[[torch.Tensor], torch.Tensor], *,
    sigma_y: float, zeta: float | None = None,
) -> Denoiser:
    r"""Diffusion posterior sampling (Chung et al., 2023) as classifier guidance with the
    measurement likelihood ``log N(y; A(x0_hat(x_t)), sigma_y^2 I)`` of Tweedie's estimate,
    differentiated through the network (one network evaluation per call).

    - ``zeta=None``: guidance weight 1, the plain approximation of ``grad log p(y | x_t)`` with the
      measurement's own ``sigma_y`` in the likelihood.
    - ``zeta`` given: the step size Chung et al. (2023) give with their Algorithm 1, the weight
      ``1 / (2 sigma_y^2)`` replaced by ``zeta / ||y - A(x0_hat)||`` per example; since
      ``grad ||r||^2 / ||r|| = 2 grad ||r||`` this is guidance by the residual's norm, and ``sigma_y``
      no longer enters the update (it is still the noise the reconstruction should leave).

    A reconstruction whose residual ``||y - A(x0)||`` per measured entry is well below ``sigma_y``
    fits the noise, not the signal: it over-fits. Under the joint distribution the residual of an
    exact posterior sample is ``sigma_y`` per entry on average (``y - A x0 = sigma_y z``); for one ``y``
    :func:`gaussian_mixture_posterior` gives it in closed form on a mixture prior.

    The guidance acts on the score, so a sampler's step moves ``x`` by its step size times the
    guidance term (``beta / sqrt(1 - beta)`` for an ancestral step): strong where the noise is large
    and ``x0_hat`` least reliable. With a learned network guide the clipped model
    (:func:`~diffusion_edu.denoiser.clip_x0`), whose ``x0_hat`` stays in the data range; chapter 9
    measures why.

    Parameters
    ----------
    denoiser : the (unconditional) prior model
    y : ``(B, m)`` or ``(B, *dims)`` measurements, one row per example
    operator : ``A(x0) -> `` the shape of ``y``, differentiable (e.g. :func:`mask_operator`)
    sigma_y : the measurement noise's standard deviation ``> 0``
    zeta : step size of the normalised rule, or None

    Examples
    --------
    >>> from diffusion_edu import ddpm_ancestral
    >>> from diffusion_edu.schedules import DDPMSchedule, alphas_cumprod, ddpm_betas, time_grid
    >>> sched = DDPMSchedule(alphas_cumprod(ddpm_betas(100)))
    >>> prior = GaussianMixture([[0.0, 0.0]], stds=1.0).denoiser(sched)   # N(0, I)
    >>> g = torch.Generator().manual_seed(0)
    >>> post = dps(prior, torch.full((400, 1), 2.0), lambda x: x[:, :1], sigma_y=0.1)   # observe x_1 = 2
    >>> x = ddpm_ancestral(post, torch.randn(400, 2, generator=g), time_grid(sched, 100, "leading"), generator=g)
    >>> bool((x[:, 0] - 2).abs().mean() < 0.3), round(x[:, 1].std().item(), 1)   # x_2 stays N(0, 1)
    (True, 1.0)
    """
    if not (isinstance(sigma_y, (int, float)) and not isinstance(sigma_y, bool) and sigma_y > 0
            and math.isfinite(sigma_y)):
        raise ValueError(f"sigma_y must be a finite float > 0, got {sigma_y!r}")
    check_finite(y, "y")
    if y.ndim < 2:
        raise ValueError(f"y must have shape (B, m) or (B, *dims), one row per example, got {tuple(y.shape)}")
    if not callable(operator):
        raise ValueError(f"operator must be callable as A(x0), got {type(operator).__name__}")
    if zeta is not None:
        _check_w(zeta, "zeta")

    def log_likelihood(x0_hat: torch.Tensor) -> torch.Tensor:  # (B,)
        Ax = operator(x0_hat)
        if y.shape != Ax.shape:
            raise ValueError(f"y must have the shape of A(x0), {tuple(Ax.shape)} (one row per example), "
                             f"got {tuple(y.shape)}")
        r = y.to(x0_hat.device, x0_hat.dtype) - Ax
        sq = r.pow(2).flatten(1).sum(1)  # ||y - A(x0_hat)||^2
        if zeta is None:
            return -sq / (2 * sigma_y**2)  # log N(y; A(x0_hat), sigma_y^2 I) + const
        return -zeta * sq / sq.detach().sqrt().clamp_min(1e-12)  # step-size rule zeta / ||r||

    return _guided(denoiser, log_likelihood, 1.0, through_x0=True,
                   name="DPS" + (f" (zeta={zeta:g})" if zeta is not None else ""))


def _guided(denoiser: Denoiser, log_p, w: float, *, through_x0: bool, name: str) -> Denoiser:
    """``eps_hat - w sigma grad_x log p``: ``log_p(x, t)`` of the noisy input, or, with
    ``through_x0``, ``log_p(x0_hat)`` of the denoised estimate (the gradient then flows through
    the network, which is evaluated once)."""
    if not isinstance(denoiser, Denoiser):
        raise ValueError(f"denoiser must be a Denoiser, got {type(denoiser).__name__}")
    _check_w(w)
    sched = denoiser.schedule

    def guided_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if w == 0:
            return denoiser.eps(x, t)
        sigma = sched.marginal(t)[1].to(x.device)  # (B,)
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            if through_x0:
                x0_hat, eps = denoiser.x0_eps(x_in, t)
                log_prob = log_p(x0_hat)
            else:
                eps = denoiser.eps(x, t)
                log_prob = log_p(x_in, t)
            if log_prob.shape != (x.shape[0],):
                raise ValueError(f"the log-likelihood must return shape ({x.shape[0]},), got {tuple(log_prob.shape)}")
            (grad,) = torch.autograd.grad(log_prob.sum(), x_in)  # row b: grad of example b's log p
        return eps.detach() - w * append_dims(sigma, x.ndim).to(x.dtype) * grad  # eps - w sigma grad

    guided_eps.__name__ = name
    return Denoiser(guided_eps, sched, "eps")


# -- classifiers ---------------------------------------------------------------------------------
def classifier_log_prob(classifier, y) -> LogProb:
    """``log_p_y(x, t) = log softmax(classifier(x, t))[y]``, ``(B,)``, for a classifier
    returning logits ``(B, K)``; ``y`` an int or a ``(B,)`` long tensor of target classes.

    Examples
    --------
    >>> clf = lambda x, t: torch.stack([x[:, 0], -x[:, 0]], dim=1)   # logits (x, -x)
    >>> classifier_log_prob(clf, 0)(torch.zeros(2, 1), torch.zeros(2))   # log 1/2
    tensor([-0.6931, -0.6931])
    """
    if not callable(classifier):
        raise ValueError(f"classifier must be callable as classifier(x, t) -> logits, got {type(classifier).__name__}")
    if isinstance(y, bool) or not (isinstance(y, int) or torch.is_tensor(y)):
        raise ValueError(f"y must be an int or a (B,) long tensor of labels, got {type(y).__name__}")
    if isinstance(y, int) and y < 0:
        raise ValueError(f"y must be a non-negative label, got {y}")

    def log_p(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        labels = _labels(y, x)
        logits = classifier(x, t)
        if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
            raise ValueError(f"classifier must return logits of shape ({x.shape[0]}, K), got {tuple(logits.shape)}")
        if int(labels.max()) >= logits.shape[1]:
            raise ValueError(f"y must hold labels in 0..{logits.shape[1] - 1}, got max {int(labels.max())}")
        return torch.log_softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1)

    return log_p


def classifier_log_prob_grad(classifier, x: torch.Tensor, t: torch.Tensor, y) -> torch.Tensor:
    """``grad_x log p_phi(y | x, t)``, ``(B, *dims)``, for a classifier ``classifier(x, t)``
    returning logits ``(B, K)``. Row ``b`` is ``grad_{x_b} log p(y_b | x_b, t_b)``.

    Examples
    --------
    >>> clf = lambda x, t: torch.stack([x[:, 0], -x[:, 0]], dim=1)  # logits (x, -x)
    >>> classifier_log_prob_grad(clf, torch.zeros(1, 2), torch.zeros(1), 0)  # d/dx log sigmoid(2x) at 0
    tensor([[1., 0.]])
    """
    check_finite(x, "x")
    log_p = classifier_log_prob(classifier, y)
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(log_p(x_in, t).sum(), x_in)
    return grad.detach()


def mixture_classifier(gm: GaussianMixture, schedule: Schedule):
    r"""The *exact* noise-conditional classifier of a Gaussian mixture whose components are the
    classes: ``classifier(x, t)`` returns the logits ``log w_k + log N(x; alpha(t) mu_k, S_k(t))``,
    ``(B, K)``, whose softmax is the component posterior ``p_t(k | x)`` (the responsibilities of
    :mod:`diffusion_edu.toy`). Differentiable in ``x`` (computed in float64, returned in ``x``'s
    dtype); ``t`` are schedule times."""
    if not isinstance(gm, GaussianMixture):
        raise ValueError(f"gm must be a GaussianMixture, got {type(gm).__name__}")
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule must be a Schedule, got {type(schedule).__name__}")

    def classifier(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = schedule.marginal(schedule._time(torch.as_tensor(t).detach().cpu(), batch=x.shape[0]))
        return gm.log_joint(x, alpha.to(x.device), sigma.to(x.device)).to(x.dtype)  # log w_k N_k(x)

    return classifier


def gaussian_mixture_posterior(
    gm: GaussianMixture, A: torch.Tensor, y: torch.Tensor, sigma_y: float,
) -> GaussianMixture:
    r"""The exact posterior ``p(x | y)`` of the prior ``gm = sum_k w_k N(mu_k, S_k)`` under the linear
    Gaussian measurement ``y = A x + sigma_y z``, ``z ~ N(0, I_m)``: again a Gaussian mixture,

    .. math::  p(x \mid y) = \sum_k \tilde w_k\, N(x;\ \tilde\mu_k, \tilde S_k), \qquad
               \tilde w_k \propto w_k\, N(y;\ A\mu_k,\ A S_k A^\top + \sigma_y^2 I),

    .. math::  K_k = S_k A^\top (A S_k A^\top + \sigma_y^2 I)^{-1}, \quad
               \tilde\mu_k = \mu_k + K_k (y - A\mu_k), \quad \tilde S_k = S_k - K_k A S_k

    (Bayes' rule component by component: each component is a Gaussian prior with a linear-Gaussian
    likelihood, whose evidence ``N(y; A mu_k, A S_k A^T + sigma_y^2 I)`` reweights it).

    Parameters
    ----------
    gm : the prior, a :class:`~diffusion_edu.toy.GaussianMixture` in ``D`` dimensions
    A : ``(m, D)`` measurement matrix
    y : ``(m,)`` one measurement
    sigma_y : the measurement noise's standard deviation ``> 0``

    Returns
    -------
    GaussianMixture with full covariances ``S~_k`` (float64)

    Examples
    --------
    >>> prior = GaussianMixture([[0.0]], stds=1.0)                   # N(0, 1), observe y = x + z
    >>> post = gaussian_mixture_posterior(prior, torch.eye(1), torch.tensor([2.0]), 1.0)
    >>> post.means.tolist(), post.covs.tolist()                       # N(1, 1/2)
    ([[1.0]], [[[0.5]]])
    """
    if not isinstance(gm, GaussianMixture):
        raise ValueError(f"gm must be a GaussianMixture, got {type(gm).__name__}")
    if not torch.is_tensor(A) or A.ndim != 2 or A.shape[1] != gm.dim:
        got = tuple(A.shape) if torch.is_tensor(A) else type(A).__name__
        raise ValueError(f"A must be an (m, {gm.dim}) tensor, got {got}")
    check_finite(A, "A")
    check_finite(y, "y")
    if y.shape != (A.shape[0],):
        raise ValueError(f"y must have shape ({A.shape[0]},) (one measurement, A's rows), got {tuple(y.shape)}")
    if isinstance(sigma_y, bool) or not (isinstance(sigma_y, (int, float)) and sigma_y > 0 and math.isfinite(sigma_y)):
        raise ValueError(f"sigma_y must be a finite float > 0, got {sigma_y!r}")
    A, y = A.double(), y.double()
    S, mu = gm.component_covs().double(), gm.means  # (K, D, D), (K, D)
    S_y = A @ S @ A.T + sigma_y**2 * torch.eye(A.shape[0], dtype=torch.float64)  # (K, m, m): cov of y | k
    evidence = torch.distributions.MultivariateNormal(mu @ A.T, S_y).log_prob(y)  # log N(y; A mu_k, S_y)
    K = S @ A.T @ torch.linalg.inv(S_y)  # (K, D, m): the Kalman gains
    means = mu + (K @ (y - mu @ A.T)[..., None])[..., 0]  # mu_k + K_k (y - A mu_k)
    covs = S - K @ A @ S  # S_k - K_k A S_k
    covs = (covs + covs.transpose(1, 2)) / 2  # symmetric to round-off
    weights = torch.softmax(gm.weights.log() + evidence, 0)  # w~_k propto w_k N(y; A mu_k, S_y)
    return GaussianMixture(means, covs=covs, weights=weights)


# -- measurements ----------------------------------------------------------------------------------
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
    if isinstance(observed, bool) or not (isinstance(observed, (int, float)) and 0 < observed <= 1):
        raise ValueError(f"observed must lie in (0, 1], got {observed!r}")
    try:
        shape = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be a tuple of positive ints, got {shape!r}") from None
    if not shape or min(shape) < 1:
        raise ValueError(f"shape must be a tuple of positive ints, got {shape!r}")
    return torch.rand(shape, generator=generator) < observed


def measure(
    x0: torch.Tensor, operator: Callable[[torch.Tensor], torch.Tensor], sigma_y: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A noisy measurement ``y = A(x0) + sigma_y z``, ``z ~ N(0, I)`` of ``A(x0)``'s shape."""
    if isinstance(sigma_y, bool) or not (isinstance(sigma_y, (int, float)) and sigma_y >= 0 and math.isfinite(sigma_y)):
        raise ValueError(f"sigma_y must be a finite float >= 0, got {sigma_y!r}")
    if not callable(operator):
        raise ValueError(f"operator must be callable as A(x0), got {type(operator).__name__}")
    check_finite(x0, "x0")
    y = operator(x0)
    z = torch.randn(y.shape, generator=generator, dtype=y.dtype).to(y.device)
    return y + sigma_y * z


def measurement_loss(
    y: torch.Tensor, operator: Callable[[torch.Tensor], torch.Tensor],
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The squared residual ``L(x) = ||y - A(x)||^2`` per example, ``(B,)``.

    Examples
    --------
    >>> L = measurement_loss(torch.zeros(2, 3), lambda x: x)
    >>> L(torch.ones(2, 3))
    tensor([3., 3.])
    """
    check_finite(y, "y")
    if not callable(operator):
        raise ValueError(f"operator must be callable as A(x), got {type(operator).__name__}")

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


def _check_w(w, name: str = "w") -> None:
    if not (isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 and math.isfinite(w)):
        raise ValueError(f"{name} must be a finite float >= 0, got {w!r}")


def _check_same_schedule(a: Schedule, b: Schedule) -> None:
    """Two Denoisers are combined only on the same noising process (same class, same marginals)."""
    if type(a) is not type(b):
        raise ValueError(f"cond and uncond must share a schedule, got {type(a).__name__} and {type(b).__name__}")
    ts = torch.linspace(a.t_eps, a.T, 5, dtype=torch.float64)
    if not all(torch.allclose(p, q) for p, q in zip(a.marginal(ts), b.marginal(ts))):
        raise ValueError(f"cond and uncond must share a schedule, got {a!r} and {b!r}")
