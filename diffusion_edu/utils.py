"""Small helpers shared by every module: broadcasting, devices, seeds, budgets, input checks.

Broadcasting follows one rule: a per-example quantity of shape ``(B,)`` is
lifted to ``(B, 1, ..., 1)`` with :func:`append_dims` so that the same line of code serves
2-D toy points ``(B, 2)``, images ``(B, C, H, W)``, audio and latents.

Budgets: every experiment in a notebook is sized with ``budget(quick=..., full=...)``; the
environment variable ``DIFFUSION_EDU_QUICK=1`` (set by ``make test``) selects the quick value.
"""

from __future__ import annotations

import os
import random
from typing import TypeVar

import numpy as np
import torch

T = TypeVar("T")

__all__ = [
    "append_dims",
    "default_device",
    "seed",
    "budget",
    "is_quick",
    "as_batch_time",
    "check_finite",
]


def append_dims(x: torch.Tensor, target_ndim: int) -> torch.Tensor:
    """Append trailing singleton dimensions to ``x`` until it has ``target_ndim`` dimensions.

    Examples
    --------
    >>> append_dims(torch.ones(4), 4).shape
    torch.Size([4, 1, 1, 1])
    >>> append_dims(torch.tensor(2.0), 2).shape
    torch.Size([1, 1])
    """
    missing = target_ndim - x.ndim
    if missing < 0:
        raise ValueError(
            f"append_dims: x has {x.ndim} dimensions, more than target_ndim={target_ndim}"
        )
    return x[(...,) + (None,) * missing]


def default_device() -> torch.device:
    """CUDA when a GPU is present, else CPU. Nothing in the library assumes CUDA."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed(n: int) -> torch.Generator:
    """Seed Python, NumPy and PyTorch with ``n`` and return a fresh ``torch.Generator`` seeded
    with ``n`` (CPU), the explicit source of randomness for the library's functions.

    Examples
    --------
    >>> g = seed(0); a = torch.randn(2, generator=g)
    >>> g = seed(0); torch.equal(a, torch.randn(2, generator=g))
    True
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"seed: n must be a non-negative int, got {n!r}")
    random.seed(n)
    np.random.seed(n % 2**32)
    torch.manual_seed(n)
    return torch.Generator().manual_seed(n)


def is_quick() -> bool:
    """True when ``DIFFUSION_EDU_QUICK`` is set to a true value (``1``, ``true``, ``yes``)."""
    return os.environ.get("DIFFUSION_EDU_QUICK", "").strip().lower() in {"1", "true", "yes", "on"}


def budget(*, quick: T, full: T) -> T:
    """Size an experiment: ``quick`` under ``DIFFUSION_EDU_QUICK=1`` (tests), else ``full``.

    Examples
    --------
    >>> steps = budget(quick=300, full=20_000)
    """
    return quick if is_quick() else full


def as_batch_time(
    t: float | torch.Tensor, batch: int, *, device=None, dtype=torch.float32, name: str = "t"
) -> torch.Tensor:
    """Turn a float, 0-d tensor or ``(B,)`` tensor into a ``(batch,)`` tensor on ``device``."""
    t = torch.as_tensor(t, dtype=dtype, device=device)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite, got {t.flatten()[:4].tolist()}")
    if t.ndim == 0:
        return t.expand(batch)
    if t.ndim != 1 or t.shape[0] != batch:
        raise ValueError(
            f"{name} must be a float or a tensor of shape ({batch},), got shape {tuple(t.shape)}"
        )
    return t


def check_finite(x: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` when ``x`` holds a NaN or an infinity."""
    if not torch.is_tensor(x):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} must be finite, got {bad} NaN/inf entries")
