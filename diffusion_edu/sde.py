r"""Forward noising processes as Itô SDEs (Song et al., 2021).

Every process here is a linear SDE

.. math::  dx = f(t)\, x\, dt + g(t)\, dW, \qquad x(0) = x_0 \sim p_{\text{data}},

whose transition kernel is Gaussian, so the marginal given the data point is

.. math::  x_t = \alpha(t)\, x_0 + \sigma(t)\, \varepsilon, \qquad \varepsilon \sim N(0, I).

``alpha`` and ``sigma`` follow from the two moment equations
``alpha' = f alpha`` and ``d(sigma^2)/dt = 2 f sigma^2 + g^2``; each class states its closed
form and the unit tests check both equations numerically.

- :class:`BrownianSDE` -- ``dx = sqrt(2) dW``: ``alpha = 1``, ``sigma^2 = 2 t``. The density of
  ``x_t`` solves the heat equation ``dp/dt = Laplacian p``: the book's seed example.
- :class:`VESDE` -- variance exploding, ``sigma(t) = sigma_min (sigma_max / sigma_min)^t``
  (Song et al.'s convention; see the class docstring for the ``sigma_min^2`` it ignores).
- :class:`VPSDE` -- variance preserving, ``dx = -beta(t)/2 x dt + sqrt(beta(t)) dW``, the
  continuous limit of DDPM (Ho et al., 2020).
- :class:`SubVPSDE` -- same drift, ``g^2 = beta(t) (1 - exp(-2 int_0^t beta))``: its variance
  ``(1 - alpha^2)^2`` stays below the VP one.

Calling convention: ``x`` is ``(B, *dims)``; ``t`` is a float or a ``(B,)`` tensor in ``[0, T]``.
"""

from __future__ import annotations

import math

import torch

from .schedules import Schedule
from .utils import append_dims

__all__ = ["SDE", "BrownianSDE", "VESDE", "VPSDE", "SubVPSDE"]


class SDE(Schedule):
    """Base class of a linear forward SDE ``dx = f(t) x dt + g(t) dW`` on ``[0, T]``.

    Subclasses define :meth:`drift_coef` (``f(t)``), :meth:`diffusion` (``g(t)``),
    :meth:`marginal` (``alpha(t), sigma(t)``) and ``prior_std``; the time derivatives of the
    marginal follow from the moment equations, ``alpha' = f alpha`` and
    ``sigma' = (2 f sigma^2 + g^2) / (2 sigma)``.
    ``t_eps`` is the smallest time a sampler stops at: where ``sigma(0) = 0`` the score is
    singular at ``t = 0``.
    """

    T: float = 1.0
    t_min: float = 0.0
    t_eps: float = 1e-3
    prior_std: float = 1.0

    # -- to be defined by each process -------------------------------------------------------
    def drift_coef(self, t: torch.Tensor) -> torch.Tensor:
        """``f(t)``, float64, shaped like ``t``."""
        raise NotImplementedError

    def diffusion(self, t: float | torch.Tensor) -> torch.Tensor:
        """``g(t)``, float64, shaped like ``t``."""
        raise NotImplementedError

    # -- shared by every process -------------------------------------------------------------
    def sde_coefficients(self, t):
        """``(f(t), g(t)^2)`` from the closed forms of the process."""
        t = self._time(t)
        return torch.as_tensor(self.drift_coef(t), dtype=torch.float64), self.diffusion(t).double() ** 2

    def marginal_derivatives(self, t):
        """``alpha' = f alpha`` and ``sigma' = (2 f sigma^2 + g^2) / (2 sigma)``, the moment equations."""
        alpha, sigma = self.marginal(t)
        f, g2 = self.sde_coefficients(t)
        return f * alpha, (2 * f * sigma**2 + g2) / (2 * sigma)

    def drift(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        """``f(x, t) = f(t) x``, same shape as ``x``."""
        t = self._time(t, batch=x.shape[0])
        return append_dims(torch.as_tensor(self.drift_coef(t)).to(x.device), x.ndim).to(x) * x

    def reverse_drift(self, x: torch.Tensor, t: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
        """Drift of the reverse-time SDE (Anderson, 1982): ``f(x, t) - g(t)^2 score``."""
        g = append_dims(self._g(t, x), x.ndim)
        return self.drift(x, t) - g**2 * score

    def ode_drift(self, x: torch.Tensor, t: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
        """Velocity of the probability-flow ODE (Song et al., 2021, Eq. 13):
        ``f(x, t) - g(t)^2 score / 2``."""
        g = append_dims(self._g(t, x), x.ndim)
        return self.drift(x, t) - 0.5 * g**2 * score

    def _g(self, t, x):
        return self.diffusion(self._time(t, batch=x.shape[0])).to(x.device).to(x.dtype)


class BrownianSDE(SDE):
    r"""Brownian noising ``dx = sqrt(2) dW``: ``x_t = x_0 + sqrt(2 t) eps``.

    The noised density ``p_t = p_0 * N(0, 2t I)`` solves the heat equation
    ``dp/dt = Laplacian p`` (the Fokker-Planck equation with zero drift and ``g^2 / 2 = 1``).

    ``prior_sample`` draws ``N(0, 2T I)``, the law of ``x_T`` for ``x_0 = 0``; for data of
    variance ``v`` the true ``p_T`` has variance ``2T + v``, so choose ``T`` with ``2T >> v``.
    """

    def __init__(self, T: float = 1.0):
        _check_T(T)
        self.T = float(T)
        self.t_eps = 5e-5  # sigma(t_eps) = 0.01
        self.prior_std = math.sqrt(2 * self.T)

    def drift_coef(self, t):
        return torch.zeros_like(torch.as_tensor(t, dtype=torch.float64))

    def diffusion(self, t):
        t = self._time(t)
        return torch.full_like(t, math.sqrt(2.0), dtype=torch.float64)

    def marginal(self, t):
        t = self._time(t).double()
        return torch.ones_like(t), torch.sqrt(2 * t)


class VESDE(SDE):
    r"""Variance-exploding SDE (Song et al., 2021; the continuous NCSN of Song & Ermon, 2019).

    ``sigma(t) = sigma_min (sigma_max / sigma_min)^t`` and
    ``g(t) = sigma(t) sqrt(2 log(sigma_max / sigma_min))``, so ``d(sigma^2)/dt = g^2``.

    Convention: the SDE started from ``x_0`` at ``t = 0`` has variance
    ``sigma(t)^2 - sigma_min^2``; like Song et al.'s code, :meth:`marginal` returns
    ``sigma(t)``, i.e. the data are taken as already smoothed by ``sigma_min``.
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, T: float = 1.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(
                f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}"
            )
        _check_T(T)
        self.sigma_min, self.sigma_max, self.T = float(sigma_min), float(sigma_max), float(T)
        self.t_eps = 1e-5
        self.prior_std = self.sigma_max

    def _sigma(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** (t / self.T)

    def drift_coef(self, t):
        return torch.zeros_like(torch.as_tensor(t, dtype=torch.float64))

    def diffusion(self, t):
        t = self._time(t).double()
        return self._sigma(t) * math.sqrt(2 * math.log(self.sigma_max / self.sigma_min) / self.T)

    def marginal(self, t):
        t = self._time(t).double()
        return torch.ones_like(t), self._sigma(t)


class VPSDE(SDE):
    r"""Variance-preserving SDE, the continuous-time DDPM (Song et al., 2021, Eq. 11).

    ``beta(t) = beta_min + t (beta_max - beta_min)``, ``dx = -beta(t) x / 2 dt + sqrt(beta(t)) dW``,
    ``log alpha(t) = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2`` and
    ``sigma(t)^2 = 1 - alpha(t)^2``: with unit-variance data, ``x_t`` keeps unit variance.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0):
        if not 0 < beta_min <= beta_max:
            raise ValueError(
                f"need 0 < beta_min <= beta_max, got beta_min={beta_min}, beta_max={beta_max}"
            )
        _check_T(T)
        self.beta_min, self.beta_max, self.T = float(beta_min), float(beta_max), float(T)
        self.t_eps = 1e-3
        self.prior_std = 1.0

    def beta(self, t: float | torch.Tensor) -> torch.Tensor:
        t = self._time(t).double() / self.T
        return (self.beta_min + t * (self.beta_max - self.beta_min)) / self.T

    def log_alpha(self, t: float | torch.Tensor) -> torch.Tensor:
        """``log alpha(t) = -1/2 int_0^t beta(s) ds``."""
        t = self._time(t).double() / self.T
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def drift_coef(self, t):
        return -0.5 * self.beta(t)

    def diffusion(self, t):
        return torch.sqrt(self.beta(t))

    def marginal(self, t):
        la = self.log_alpha(t)
        return torch.exp(la), torch.sqrt(-torch.expm1(2 * la))


class SubVPSDE(VPSDE):
    r"""Sub-VP SDE (Song et al., 2021, Eq. 12): the VP drift with
    ``g(t)^2 = beta(t) (1 - exp(-2 int_0^t beta))``, so that ``sigma(t) = 1 - alpha(t)^2``,
    below the VP ``sqrt(1 - alpha^2)`` at every ``t``."""

    def diffusion(self, t):
        la = self.log_alpha(t)  # int_0^t beta = -2 log alpha
        return torch.sqrt(self.beta(t) * -torch.expm1(4 * la))

    def marginal(self, t):
        la = self.log_alpha(t)
        return torch.exp(la), -torch.expm1(2 * la)


def _check_T(T) -> None:
    if not (isinstance(T, (int, float)) and math.isfinite(T) and T > 0):
        raise ValueError(f"T must be a finite number > 0, got {T!r}")
