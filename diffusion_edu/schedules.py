r"""Noise schedules: discrete DDPM betas for training, and time grids for sampling.

Discrete DDPM (Ho et al., 2020): ``q(x_n | x_{n-1}) = N(sqrt(1 - beta_n) x_{n-1}, beta_n I)``
for ``n = 1..N``, so ``x_n = sqrt(abar_n) x_0 + sqrt(1 - abar_n) eps`` with
``abar_n = prod_{i<=n} (1 - beta_i)`` (:func:`alphas_cumprod`). Arrays are indexed from 0:
entry ``n`` of ``betas`` is ``beta_{n+1}``.

- ``linear``: ``beta`` from ``1e-4`` to ``0.02`` in ``N`` equal steps (Ho et al., 2020).
- ``cosine`` (Nichol & Dhariwal, 2021, Eq. 17): ``abar(t) = f(t) / f(0)`` with
  ``f(t) = cos^2( (t/N + s) / (1 + s) * pi/2 )``, ``s = 0.008`` -- note the *square*;
  ``beta_n = min(1 - abar(n) / abar(n-1), 0.999)``, the clip that keeps the last steps finite.

Sampling-time grids are different objects with different names: they return ``N + 1`` points
running from the noise end to the data end (see :func:`uniform_times`, :func:`ddim_timesteps`).
"""

from __future__ import annotations

import math

import torch

__all__ = ["ddpm_betas", "alphas_cumprod", "uniform_times", "ddim_timesteps"]


def ddpm_betas(
    n: int, kind: str = "linear", *, beta_start: float = 1e-4, beta_end: float = 0.02,
    s: float = 0.008, max_beta: float = 0.999,
) -> torch.Tensor:
    """Training schedule ``beta_1..beta_N`` as a float64 tensor of shape ``(n,)``.

    Parameters
    ----------
    n : number of diffusion steps ``N``
    kind : ``"linear"`` (Ho et al., 2020) or ``"cosine"`` (Nichol & Dhariwal, 2021)

    Examples
    --------
    >>> b = ddpm_betas(1000, "linear"); float(b[0]), float(b[-1])
    (0.0001, 0.02)
    >>> bool((ddpm_betas(1000, "cosine") <= 0.999).all())
    True
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if kind == "linear":
        return torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
    if kind == "cosine":
        def abar(i):  # i in [0, n]
            return math.cos((i / n + s) / (1 + s) * math.pi / 2) ** 2

        betas = [min(1 - abar(i + 1) / abar(i), max_beta) for i in range(n)]
        return torch.tensor(betas, dtype=torch.float64)
    raise ValueError(f"kind must be 'linear' or 'cosine', got {kind!r}")


def alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    """``abar_n = prod_{i<=n} (1 - beta_i)``, same shape as ``betas``."""
    betas = torch.as_tensor(betas, dtype=torch.float64)
    if betas.ndim != 1 or (betas <= 0).any() or (betas >= 1).any():
        raise ValueError("betas must be a 1-D tensor with entries in (0, 1)")
    return torch.cumprod(1 - betas, dim=0)


def uniform_times(steps: int, T: float = 1.0, t_eps: float = 1e-3) -> torch.Tensor:
    """Sampling grid of ``steps + 1`` times decreasing uniformly from ``T`` to ``t_eps``
    (the data end), float64."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if not 0 <= t_eps < T:
        raise ValueError(f"need 0 <= t_eps < T, got t_eps={t_eps}, T={T}")
    return torch.linspace(T, t_eps, steps + 1, dtype=torch.float64)


def ddim_timesteps(num_train: int, steps: int) -> torch.Tensor:
    """``steps`` decreasing integer indices into a training schedule of length ``num_train``,
    evenly spaced and ending at index 0 (``[.., 2k, k, 0]`` with ``k = num_train // steps``;
    the "leading" spacing of Song et al., 2021a). The sampler's last step goes from index 0 to
    the data (``abar = 1``)."""
    if not (isinstance(steps, int) and 1 <= steps <= num_train):
        raise ValueError(f"steps must be an int in [1, {num_train}], got {steps!r}")
    k = num_train // steps
    return torch.arange(steps - 1, -1, -1, dtype=torch.long) * k
