r"""Sample-quality metrics computed on the features and the outputs of a classifier.

**Fréchet distance** (the recipe of FID, Heusel et al., 2017). Fit a Gaussian to each of two
feature sets ``a`` and ``b`` of shape ``(N, D)`` -- the sample mean ``mu`` and the (unbiased,
``N - 1``) sample covariance ``S`` -- and report

.. math::  \mathrm{FD}(a, b) = \|\mu_a - \mu_b\|^2
           + \operatorname{tr}\Big(S_a + S_b - 2\big(S_a^{1/2} S_b S_a^{1/2}\big)^{1/2}\Big).

This is the *squared* 2-Wasserstein distance between ``N(mu_a, S_a)`` and ``N(mu_b, S_b)``
(Dowson & Landau, 1982), i.e. ``diffusion_edu.transport.gaussian_w2(mu_a, S_a, mu_b, S_b) ** 2``
(:func:`~diffusion_edu.transport.gaussian_w2` returns the length ``W_2``, not its square). FID is
this number with the 2048 pool features of an Inception-v3 network; the book uses a small digit
classifier instead, so its values are *not* comparable with published FIDs.

:func:`frechet_distance` is exactly that: the sample means and covariances handed to
``gaussian_w2``, whose square roots are symmetric eigendecompositions in float64 (the original
FID code takes ``scipy.linalg.sqrtm(S_a @ S_b)`` of a non-symmetric product, which can return
complex round-off; ``S_a S_b`` and ``S_a^{1/2} S_b S_a^{1/2}`` have the same eigenvalues, so the
numbers agree).

The estimate is biased upwards by ``O(D / N)`` (Chong & Forsyth, 2020, study the bias): compare
Fréchet distances only at the same sample size ``N``, and next to a **floor**, the distance
between two independent real samples of that size.

**Confident fraction.** The fraction of samples whose most likely class, under a classifier,
has probability above a threshold -- a crude "does it look like *some* digit" score.
"""

from __future__ import annotations

import numpy as np
import torch

from .transport import gaussian_w2

__all__ = ["gaussian_stats", "frechet_distance", "confident_fraction", "classifier_accuracy"]


def gaussian_stats(feats, name: str = "feats") -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` of a feature set ``(N, D)``, float64 on CPU.

    Examples
    --------
    >>> mu, S = gaussian_stats(torch.tensor([[0.0, 1.0], [2.0, 3.0]]))
    >>> mu.tolist(), S.tolist()
    ([1.0, 2.0], [[2.0, 2.0], [2.0, 2.0]])
    """
    x = _features(feats, name)
    mu = x.mean(0)  # (D,)
    xc = x - mu  # (N, D)
    S = xc.T @ xc / (x.shape[0] - 1)  # (D, D), unbiased
    return mu, 0.5 * (S + S.T)


def frechet_distance(feats_a, feats_b) -> float:
    r"""Fréchet distance between Gaussians fitted to two feature sets (see the module docstring):
    ``||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a^{1/2} S_b S_a^{1/2})^{1/2})``, the squared
    ``W_2`` between the fitted Gaussians.

    Parameters
    ----------
    feats_a, feats_b : ``(N_a, D)`` and ``(N_b, D)`` tensors or arrays, ``N >= 2``, finite

    Returns
    -------
    float, ``>= 0`` (a squared distance: it scales as ``c^2`` when both sets are scaled by ``c``)

    Examples
    --------
    >>> a = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> round(frechet_distance(a, a + torch.tensor([3.0, 4.0])), 12)  # a shift by (3, 4): |shift|^2
    25.0
    >>> # 2a: the mean moves by (0.5, 0.5), each std doubles from 1/sqrt(3): 0.5 + 2 * (1/sqrt(3))^2
    >>> round(frechet_distance(a, 2 * a), 12)
    1.166666666667
    """
    mu_a, S_a = gaussian_stats(feats_a, "feats_a")
    mu_b, S_b = gaussian_stats(feats_b, "feats_b")
    if mu_a.shape != mu_b.shape:
        raise ValueError(
            f"feats_a and feats_b must have the same feature dimension D, got {mu_a.shape[0]} and {mu_b.shape[0]}"
        )
    return gaussian_w2(mu_a, S_a, mu_b, S_b) ** 2  # the squared W2 between the fitted Gaussians


def confident_fraction(logits_or_probs, threshold: float = 0.9, *, from_logits: bool | None = None) -> float:
    """Fraction of rows whose top class probability exceeds ``threshold``.

    Parameters
    ----------
    logits_or_probs : ``(B, K)`` logits or class probabilities
    threshold : in ``[0, 1)``
    from_logits : ``True`` (apply a softmax), ``False`` (rows are probabilities) or ``None``
        (probabilities if every row is non-negative and sums to 1 within ``1e-4``, else logits)

    Examples
    --------
    >>> confident_fraction(torch.tensor([[0.95, 0.05], [0.6, 0.4]]))
    0.5
    >>> confident_fraction(torch.tensor([[10.0, 0.0], [0.0, 0.0]]))  # logits: softmax first
    0.5
    """
    p = _probs(logits_or_probs, from_logits, "logits_or_probs")
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold must lie in [0, 1), got {threshold!r}")
    return (p.max(dim=1).values > threshold).double().mean().item()


def classifier_accuracy(logits_or_probs, labels) -> float:
    """Fraction of rows whose arg-max class equals ``labels`` (``(B,)`` ints).

    Examples
    --------
    >>> classifier_accuracy(torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]]), torch.tensor([0, 1, 1]))
    0.6666666666666666
    """
    scores = _matrix(logits_or_probs, "logits_or_probs")
    labels = torch.as_tensor(labels)
    if labels.shape != (scores.shape[0],) or labels.dtype.is_floating_point:
        raise ValueError(
            f"labels must be a ({scores.shape[0]},) integer tensor, got {labels.dtype} {tuple(labels.shape)}"
        )
    if len(labels) and not (0 <= int(labels.min()) and int(labels.max()) < scores.shape[1]):
        raise ValueError(f"labels must be class indices in [0, {scores.shape[1]}), got values in "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    return (scores.argmax(dim=1) == labels.to(scores.device)).double().mean().item()


# -- helpers -------------------------------------------------------------------------------
def _matrix(x, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not torch.is_tensor(x):
        raise ValueError(f"{name} must be a tensor or an array of shape (N, D), got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (N, D), got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} must be finite, got {int((~torch.isfinite(x)).sum())} NaN/inf entries")
    return x.detach()


def _features(x, name: str) -> torch.Tensor:
    x = _matrix(x, name).cpu().double()
    if x.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 rows to estimate a covariance, got {x.shape[0]}")
    return x


def _probs(x, from_logits: bool | None, name: str) -> torch.Tensor:
    x = _matrix(x, name).double()
    if from_logits is None:
        from_logits = not (bool((x >= 0).all()) and bool(((x.sum(1) - 1).abs() < 1e-4).all()))
    if from_logits:
        return x.softmax(dim=1)
    if (x < 0).any() or ((x.sum(1) - 1).abs() > 1e-4).any():
        raise ValueError(f"{name} must hold probabilities (non-negative rows summing to 1) when from_logits=False")
    return x
