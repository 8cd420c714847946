r"""Optimal transport between point clouds, through POT (Flamary et al., 2021).

For two empirical measures with ``n`` points each and equal weights ``1/n``, the squared
2-Wasserstein distance is the value of the assignment problem

.. math::  W_2^2(\mu, \nu) = \min_{P \in U(a, b)} \sum_{ij} P_{ij}\, \|x_i - y_j\|^2 ,

solved exactly by the network simplex (``ot.emd2``) in about ``O(n^3)`` time and ``O(n^2)``
memory (the cost matrix). The OT chapter (Peyré & Cuturi, 2019) extends this module.
"""

from __future__ import annotations

import numpy as np
import ot
import torch

__all__ = ["w2"]


def w2(x, y) -> float:
    """Exact 2-Wasserstein distance (not squared) between two equal-weight point clouds.

    Parameters
    ----------
    x : (n, D) tensor or array
    y : (m, D) tensor or array (``m`` may differ from ``n``; weights are ``1/n`` and ``1/m``)

    Returns
    -------
    float, ``W_2`` in the units of the data (``ot.emd2`` returns ``W_2^2``; we take its root).

    Examples
    --------
    >>> w2(torch.zeros(5, 2), torch.ones(5, 2))   # every point moves by sqrt(2)
    1.4142135623730951
    """
    xa, ya = _as_points(x, "x"), _as_points(y, "y")
    if xa.shape[1] != ya.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {xa.shape[1]} and {ya.shape[1]}")
    a = np.full(len(xa), 1.0 / len(xa))
    b = np.full(len(ya), 1.0 / len(ya))
    M = ot.dist(xa, ya, metric="sqeuclidean")
    w2sq = ot.emd2(a, b, M, numItermax=10_000_000)
    return float(np.sqrt(max(float(w2sq), 0.0)))


def _as_points(x, name) -> np.ndarray:
    if torch.is_tensor(x):
        x = x.detach().cpu().double().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape (n, D) with n >= 1, got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} must be finite, got NaN/inf entries")
    return x
