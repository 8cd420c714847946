r"""One model interface for every sampler, guidance method and likelihood: :class:`Denoiser`.

A network is trained to predict one thing -- the noise ``eps``, the data ``x0``, ``v``, the
score, or the path velocity of flow matching (:mod:`diffusion_edu.parameterization`) -- on one
schedule ``x_t = alpha(t) x0 + sigma(t) eps`` (:mod:`diffusion_edu.schedules`). A sampler should
know neither. ``Denoiser(net, schedule, prediction)`` adapts the network once (as k-diffusion's
denoiser wrappers do) and answers four questions at any ``(x, t)``:

- ``x0(x, t)``: the denoised estimate ``E[x0 | x_t = x]`` (Tweedie);
- ``eps(x, t)``: the noise estimate ``(x - alpha x0_hat) / sigma``;
- ``score(x, t)``: ``grad log p_t(x) = -eps_hat / sigma``;
- ``velocity(x, t)``: the probability-flow ODE's ``dx/dt = alpha' x0_hat + sigma' eps_hat``, which
  for an SDE schedule equals ``f(t) x - g(t)^2 score / 2`` (Song et al., 2021, Eq. 13).

The network is called as ``net(x, t, **cond)`` with ``t`` a ``(B,)`` float64 tensor of *schedule
times* on ``x``'s device (the time variable it was trained with: the training indices for a
:class:`~diffusion_edu.schedules.DDPMSchedule`; the library's networks cast it themselves);
``cond`` holds keyword arguments bound at construction, e.g. class labels ``y=``. Exact oracles
(:meth:`diffusion_edu.toy.GaussianMixture.denoiser`) and guided models
(:mod:`diffusion_edu.guidance`) are Denoisers too: their ``net`` is a function.
"""

from __future__ import annotations

from typing import Callable

import torch

from .parameterization import check_prediction, from_x0_eps, to_x0_eps
from .schedules import Schedule

__all__ = ["Denoiser", "clip_x0"]


class Denoiser:
    """A network (or any function) ``net(x, t, **cond)`` that predicts ``prediction`` on
    ``schedule``, seen as a denoiser.

    Parameters
    ----------
    net : callable ``net(x, t, **cond) -> (B, *dims)`` with ``x: (B, *dims)``, ``t: (B,)``
    schedule : the :class:`~diffusion_edu.schedules.Schedule` the network was trained on
    prediction : ``"eps"``, ``"x0"``, ``"v"``, ``"score"`` or ``"velocity"``
    **cond : keyword arguments passed to every call of ``net`` (e.g. ``y=labels``)

    Attributes
    ----------
    nfe : the number of network evaluations so far (samplers' cost; reset it with ``nfe = 0``)

    Every method takes ``x`` ``(B, *dims)`` and ``t`` a float or a ``(B,)`` tensor of schedule
    times and returns a tensor of ``x``'s shape and dtype.

    Examples
    --------
    >>> from diffusion_edu import VPSDE, GaussianMixture
    >>> sde, gm = VPSDE(), GaussianMixture([[1.0, -1.0]], stds=0.5)
    >>> den = gm.denoiser(sde)                      # the exact posterior mean, prediction "x0"
    >>> x, t = torch.randn(4, 2, dtype=torch.float64), torch.full((4,), 0.3, dtype=torch.float64)
    >>> pf = sde.ode_drift(x, t, den.score(x, t))   # f x - g^2 score / 2
    >>> bool(torch.allclose(den.velocity(x, t), pf))
    True
    """

    def __init__(self, net: Callable, schedule: Schedule, prediction: str = "eps", **cond):
        if not callable(net):
            raise ValueError(f"net must be callable as net(x, t), got {type(net).__name__}")
        if not isinstance(schedule, Schedule):
            raise ValueError(f"schedule must be a Schedule (an SDE, StraightPath or DDPMSchedule), "
                             f"got {type(schedule).__name__}")
        self.net, self.schedule, self.prediction = net, schedule, check_prediction(prediction)
        self.cond = cond
        self.nfe = 0

    def bind(self, **cond) -> Denoiser:
        """The same model with more (or other) keyword arguments for the network, e.g.
        ``den.bind(y=labels)``."""
        return Denoiser(self.net, self.schedule, self.prediction, **{**self.cond, **cond})

    # -- the four answers --------------------------------------------------------------------
    def predict(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        """The raw network output (of kind ``self.prediction``)."""
        tb = self._times(x, t)
        out = self.net(x, tb.to(x.device), **self.cond)
        self.nfe += 1
        if out.shape != x.shape:
            raise ValueError(f"net(x, t) must return the shape of x {tuple(x.shape)}, got {tuple(out.shape)}")
        return out

    def x0_eps(self, x: torch.Tensor, t: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x0_hat, eps_hat)`` from one network evaluation."""
        coef = self._coefficients(x, t, self.prediction == "velocity")
        x0, eps = to_x0_eps(self.predict(x, t), self.prediction, x, *coef)
        return x0.to(x.dtype), eps.to(x.dtype)

    def x0(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        """``E[x0 | x_t = x]``: the denoised estimate."""
        return self._as("x0", x, t)

    def eps(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        """``E[eps | x_t = x] = (x - alpha x0_hat) / sigma``: the noise estimate."""
        return self._as("eps", x, t)

    def score(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        """``grad_x log p_t(x) = -eps_hat / sigma``."""
        return self._as("score", x, t)

    def velocity(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        """The probability-flow ODE's ``dx/dt = alpha'(t) x0_hat + sigma'(t) eps_hat``."""
        return self._as("velocity", x, t)

    # -- helpers -----------------------------------------------------------------------------
    def _as(self, target, x, t):
        pred = self.predict(x, t)
        if target == self.prediction:
            return pred.to(x.dtype)
        coef = self._coefficients(x, t, "velocity" in (target, self.prediction))
        x0, eps = to_x0_eps(pred, self.prediction, x, *coef)
        return from_x0_eps(x0, eps, target, *coef).to(x.dtype)

    def _times(self, x, t, batch: bool = True) -> torch.Tensor:
        """``t`` checked against the schedule, float64: ``(B,)``, or as given (0-d or ``(B,)``)
        when ``batch`` is False."""
        if not torch.is_tensor(x) or x.ndim < 1:
            raise ValueError(f"x must be a tensor of shape (B, *dims), got {type(x).__name__}")
        t = t if not torch.is_tensor(t) else t.detach().cpu()
        return self.schedule._time(t, batch=x.shape[0] if batch else None)

    def _coefficients(self, x, t, derivatives: bool):
        """``alpha, sigma`` and (if ``derivatives``, else None) ``alpha', sigma'`` at ``t``, each
        0-d or ``(B,)`` float64 on ``x``'s device (0-d when one time serves the whole batch)."""
        tb = self._times(x, t, batch=False)
        if tb.ndim == 1 and x.shape[0] != tb.shape[0]:
            raise ValueError(f"t must have shape ({x.shape[0]},) to match x, got {tuple(tb.shape)}")
        coef = self.schedule.marginal(tb)
        if derivatives:
            coef = coef + self.schedule.marginal_derivatives(tb)
        return tuple(c.to(x.device) for c in coef) + (() if derivatives else (None, None))

    def __repr__(self) -> str:
        net = getattr(self.net, "__name__", type(self.net).__name__)
        cond = f", cond={sorted(self.cond)}" if self.cond else ""
        return f"Denoiser({net}, {self.schedule!r}, prediction={self.prediction!r}{cond})"


def clip_x0(denoiser: Denoiser, value_range: tuple[float, float] = (-1.0, 1.0)) -> Denoiser:
    r"""The same model with its clean-data estimate clipped to the data range:
    ``x0_hat = clip(D(x, t), lo, hi)``; the noise estimate is the one that implies it,
    ``(x - alpha x0_hat) / sigma`` (``clip_sample=True`` in diffusers' schedulers; Ho et al.'s code
    clips the same way). Where ``x0_hat`` is inside the range nothing changes. Why it matters: at
    the first steps ``alpha`` is tiny (the cosine schedule's last ``beta`` is clipped to 0.999), and
    ``x0_hat = (x - sigma eps_hat) / alpha`` magnifies the network's error many times over.

    Examples
    --------
    >>> from diffusion_edu.schedules import DDPMSchedule
    >>> sched = DDPMSchedule(torch.tensor([0.9, 0.5, 0.01]))
    >>> den = clip_x0(Denoiser(lambda x, t: torch.zeros_like(x), sched, "eps"))  # x0_hat = x / sqrt(abar)
    >>> den.x0(torch.full((1, 2), 0.5), 2.0)   # 0.5 / 0.1 = 5, clipped to 1
    tensor([[1., 1.]])
    """
    if not isinstance(denoiser, Denoiser):
        raise ValueError(f"denoiser must be a Denoiser, got {type(denoiser).__name__}")
    lo, hi = (float(v) for v in value_range)
    if not lo < hi:
        raise ValueError(f"value_range must be (lo, hi) with lo < hi, got {value_range!r}")

    def clipped_x0(x, t):
        return denoiser.x0(x, t).clamp(lo, hi)

    return Denoiser(clipped_x0, denoiser.schedule, "x0")

