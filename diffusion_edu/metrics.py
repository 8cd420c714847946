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

**Sets of samples.** :func:`kid` (the unbiased MMD^2 of Bińkowski et al., 2018),
:func:`frechet_distance_extrapolated` (``FD_infinity`` of Chong & Forsyth, 2020),
:func:`precision_recall` (Kynkäänniemi et al., 2019) and :func:`density_coverage` (Naeem et al.,
2020) on k-nearest-neighbour balls; :func:`nearest_neighbours` and :func:`copy_fraction` for
memorisation. All take ``(N, D)`` tensors or arrays and use exact distances.

**Confident fraction.** The fraction of samples whose most likely class, under a classifier,
has probability above a threshold -- a crude "does it look like *some* digit" score.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from .transport import gaussian_w2

__all__ = [
    "gaussian_stats", "frechet_distance", "frechet_distance_extrapolated", "FDExtrapolation", "kid",
    "precision_recall", "density_coverage", "nearest_neighbours", "copy_fraction", "confident_fraction",
    "classifier_accuracy",
]


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


class FDExtrapolation(NamedTuple):
    """What :func:`frechet_distance_extrapolated` returns."""

    fd_inf: float  #: the intercept of the fit ``FD_N = fd_inf + slope / N``
    slope: float  #: the fitted ``slope`` (the bias is ``slope / N``)
    sizes: list[int]  #: the sample sizes ``N``
    fds: list[float]  #: the Fréchet distance at each size (mean over ``repeats`` draws)


def frechet_distance_extrapolated(
    feats_real, feats_fake, sizes=None, *, repeats: int = 1, generator: torch.Generator | None = None,
) -> FDExtrapolation:
    r"""``FD_infinity``: the Fréchet distance extrapolated to infinitely many generated samples.

    The plug-in Fréchet distance is biased upwards by a term that falls like ``1/N`` in the number
    ``N`` of generated samples (Chong & Forsyth, 2020). Following them: compute ``FD_N`` between all
    of ``feats_real`` and ``N`` rows of ``feats_fake`` drawn without replacement, for each ``N`` in
    ``sizes`` (mean of ``repeats`` draws), fit ``FD_N = FD_inf + k / N`` by least squares, and report
    the intercept ``FD_inf``.

    Parameters
    ----------
    feats_real, feats_fake : ``(N_r, D)``, ``(N_f, D)`` tensors or arrays, finite
    sizes : increasing sample sizes, each in ``[2, N_f]``, at least two distinct; default 8 sizes
        spaced evenly in ``1/N`` from ``N_f / 4`` to ``N_f``
    repeats : draws per size (the draw at ``N = N_f`` is the whole set)

    Cost: ``len(sizes) * repeats`` Fréchet distances, each ``O(N D^2 + D^3)``.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> a, b = torch.randn(4000, 2, generator=g), torch.randn(4000, 2, generator=g) + 1.0
    >>> fit = frechet_distance_extrapolated(a, b, [500, 1000, 2000, 4000], generator=g)
    >>> abs(fit.fd_inf - 2.0) < 0.1   # the two Gaussians are N(0, I) and N(1, I): FD = |1|^2 * 2
    True
    """
    real = _features(feats_real, "feats_real")
    fake = _features(feats_fake, "feats_fake")
    _same_dim(real, fake, "feats_real", "feats_fake")
    n = fake.shape[0]
    if sizes is None:
        inv = np.linspace(4.0 / n, 1.0 / n, 8)
        sizes = sorted({int(round(1 / v)) for v in inv})
    sizes = [int(k) for k in sizes]
    if len(set(sizes)) < 2 or min(sizes) < 2 or max(sizes) > n:
        raise ValueError(f"sizes must hold at least two distinct sizes in [2, {n}] (the rows of feats_fake), "
                         f"got {sizes}")
    _check_int(repeats, "repeats", 1)
    fds = []
    for k in sizes:
        vals = []
        for _ in range(repeats if k < n else 1):
            idx = torch.randperm(n, generator=generator)[:k]
            vals.append(frechet_distance(real, fake[idx]))
        fds.append(float(np.mean(vals)))
    x = 1.0 / np.asarray(sizes, dtype=np.float64)
    slope, intercept = np.polyfit(x, np.asarray(fds), 1)
    return FDExtrapolation(float(intercept), float(slope), sizes, fds)


def kid(feats_a, feats_b, subset_size: int | None = None, subsets: int = 100,
        generator: torch.Generator | None = None) -> tuple[float, float]:
    r"""Kernel Inception Distance (Bińkowski et al., 2018) on any features: the **unbiased**
    estimate of the squared maximum mean discrepancy with the cubic polynomial kernel
    ``k(x, y) = (x . y / D + 1)^3``,

    .. math::  \widehat{\mathrm{MMD}}^2 = \frac{1}{m(m-1)} \sum_{i \ne j} k(a_i, a_j)
               + \frac{1}{n(n-1)} \sum_{i \ne j} k(b_i, b_j) - \frac{2}{mn} \sum_{i, j} k(a_i, b_j) .

    Its expectation is the population MMD^2 at every sample size (unlike the Fréchet distance,
    whose plug-in estimate is biased upwards by ``O(1/N)``), so it can be negative when the two
    distributions are equal.

    Parameters
    ----------
    feats_a, feats_b : ``(m, D)`` and ``(n, D)`` tensors or arrays, ``m, n >= 2``, finite
    subset_size : ``None`` computes the estimate once on all points (``std`` is then 0); else the
        mean over ``subsets`` pairs of random subsets of this size (without replacement within a
        subset), as the reference implementations do for large sets
    subsets : number of subset pairs

    Returns
    -------
    ``(mean, std)``: floats; ``std`` is the standard deviation over the subsets (``ddof=1``).

    Cost: ``O((m + n)^2 D)`` time and ``O((m + n)^2)`` memory per estimate.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> a = torch.randn(500, 4, generator=g)
    >>> same, s = kid(a, torch.randn(500, 4, generator=g))          # the same distribution
    >>> shifted, _ = kid(a, torch.randn(500, 4, generator=g) + 0.5)  # the mean moved by 0.5
    >>> round(same, 3), round(shifted, 2), s
    (0.019, 1.05, 0.0)
    """
    a = _features(feats_a, "feats_a")
    b = _features(feats_b, "feats_b")
    _same_dim(a, b, "feats_a", "feats_b")
    if subset_size is None:
        return _mmd2_unbiased(a, b), 0.0
    _check_int(subset_size, "subset_size", 2)
    _check_int(subsets, "subsets", 1)
    if subset_size > min(len(a), len(b)):
        raise ValueError(f"subset_size must be at most the smaller set's {min(len(a), len(b))} rows, "
                         f"got {subset_size}")
    vals = [_mmd2_unbiased(a[torch.randperm(len(a), generator=generator)[:subset_size]],
                           b[torch.randperm(len(b), generator=generator)[:subset_size]]) for _ in range(subsets)]
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if subsets > 1 else 0.0


def precision_recall(real, fake, k: int = 3) -> tuple[float, float]:
    r"""Improved precision and recall (Kynkäänniemi et al., 2019) on k-nearest-neighbour balls.

    Each real point ``r_i`` owns the ball of radius ``d_k(r_i)``, its distance to its ``k``-th
    nearest *other* real point; the union of these balls estimates the support of the real data,
    and likewise for the generated points. **Precision** is the fraction of generated points inside
    the real support; **recall** the fraction of real points inside the generated support. Exact
    Euclidean distances (no approximate neighbours).

    Parameters
    ----------
    real, fake : ``(N, D)``, ``(M, D)`` tensors or arrays, finite, each with more than ``k`` rows
    k : the neighbour that sets the radius (the paper uses 3)

    Returns ``(precision, recall)``, floats in ``[0, 1]``.

    Cost: ``O((N + M)^2 D)`` time, ``O(chunk (N + M))`` memory.

    Examples
    --------
    >>> x = torch.randn(200, 3, generator=torch.Generator().manual_seed(0))
    >>> precision_recall(x, x)
    (1.0, 1.0)
    >>> precision_recall(x, x + 100.0)   # disjoint supports
    (0.0, 0.0)
    """
    r, f = _pair_for_knn(real, fake, k, "real", "fake")
    r_radii, f_radii = _knn_radius(r, k), _knn_radius(f, k)
    precision = _in_any_ball(f, r, r_radii).double().mean().item()
    recall = _in_any_ball(r, f, f_radii).double().mean().item()
    return precision, recall


def density_coverage(real, fake, k: int = 5) -> tuple[float, float]:
    r"""Density and coverage (Naeem et al., 2020) on the real points' k-nearest-neighbour balls
    ``B(r_i, d_k(r_i))``:

    .. math::  \text{density} = \frac{1}{k M} \sum_{j=1}^{M} \sum_{i=1}^{N} 1[f_j \in B(r_i, d_k(r_i))],
               \qquad
               \text{coverage} = \frac1N \sum_{i=1}^{N} 1[\exists j:\ f_j \in B(r_i, d_k(r_i))] .

    Density counts how many real balls hold each generated point (about 1 for a perfect model, so
    it is not bounded by 1); coverage is the fraction of real balls that hold at least one generated
    point. Both use only the real balls, so outliers among the generated points cannot inflate
    them. Exact distances.

    Parameters
    ----------
    real, fake : ``(N, D)``, ``(M, D)`` tensors or arrays, finite, ``N > k``, ``M >= 1``
    k : neighbours (the paper uses 5)

    Returns ``(density, coverage)``, floats.

    Cost: ``O(N (N + M) D)`` time, ``O(chunk (N + M))`` memory.

    Examples
    --------
    >>> x = torch.randn(300, 2, generator=torch.Generator().manual_seed(0))
    >>> d, c = density_coverage(x, x + 50.0)
    >>> d, c
    (0.0, 0.0)
    """
    r, f = _pair_for_knn(real, fake, k, "real", "fake", need_fake=1)
    radii = _knn_radius(r, k)  # (N,)
    counts = torch.zeros(len(f), dtype=torch.float64)
    covered = torch.zeros(len(r), dtype=torch.bool)
    for i0 in range(0, len(r), _CHUNK):
        inside = torch.cdist(r[i0:i0 + _CHUNK], f) <= radii[i0:i0 + _CHUNK, None]  # (chunk, M)
        counts += inside.sum(0)
        covered[i0:i0 + _CHUNK] = inside.any(1)
    return (counts.sum() / (k * len(f))).item(), covered.double().mean().item()


def nearest_neighbours(samples, train, k: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest training points of every sample, by exact Euclidean distance.

    Parameters
    ----------
    samples : ``(M, *dims)`` tensor or array (flattened to ``(M, D)``), finite
    train : ``(N, *dims)``, finite, ``N >= k``
    k : number of neighbours

    Returns ``(distances, indices)``, both ``(M, k)``, sorted by increasing distance (float64 and
    int64, on the CPU).

    Cost: ``O(M N D)`` time, ``O(chunk N)`` memory.

    Examples
    --------
    >>> train = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]])
    >>> d, i = nearest_neighbours(torch.tensor([[0.9, 0.0]]), train)
    >>> i.tolist(), [round(v, 6) for v in d[0].tolist()]
    ([[1, 0]], [0.1, 0.9])
    """
    s = _flat(samples, "samples")
    t = _flat(train, "train")
    _same_dim(s, t, "samples", "train")
    _check_int(k, "k", 1)
    if len(t) < k:
        raise ValueError(f"train must have at least k = {k} rows, got {len(t)}")
    ds, js = [], []
    for i0 in range(0, len(s), _CHUNK):
        d, j = torch.cdist(s[i0:i0 + _CHUNK], t).topk(k, dim=1, largest=False)
        ds.append(d)
        js.append(j)
    return torch.cat(ds), torch.cat(js)


def copy_fraction(samples, train, threshold: float = 1 / 3) -> float:
    r"""Fraction of samples that are copies of a training point: the ratio of the distance to the
    nearest training point over the distance to the second nearest is below ``threshold``,

    .. math::  \frac{\|x - t_{(1)}(x)\|}{\|x - t_{(2)}(x)\|} < \text{threshold} .

    The ratio is scale-free: a sample far closer to one training point than to any other counts as
    a copy of it, however dense the data. The default ``1/3`` counts a sample as a copy when it is
    at least three times closer to its nearest training point than to the second nearest: a
    convention, not a derived constant, so report the fraction over a range of thresholds when a
    conclusion depends on it. Exact distances (:func:`nearest_neighbours`).

    Parameters
    ----------
    samples : ``(M, *dims)``; train : ``(N, *dims)`` with ``N >= 2``; threshold in ``(0, 1]``

    Cost: that of :func:`nearest_neighbours` with ``k = 2``.

    Examples
    --------
    >>> train = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> copy_fraction(torch.tensor([[0.01, 0.0], [0.5, 0.5]]), train)   # a near copy, a blend
    0.5
    """
    if not (isinstance(threshold, (int, float)) and 0 < threshold <= 1):
        raise ValueError(f"threshold must lie in (0, 1], got {threshold!r}")
    d, _ = nearest_neighbours(samples, train, k=2)
    ratio = d[:, 0] / d[:, 1].clamp_min(torch.finfo(d.dtype).tiny)
    return (ratio < threshold).double().mean().item()


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

_CHUNK = 1024  # rows per block of pairwise distances


def _same_dim(a: torch.Tensor, b: torch.Tensor, na: str, nb: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{na} and {nb} must have the same feature dimension D, got {a.shape[1]} and {b.shape[1]}")


def _check_int(v, name: str, lo: int) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")


def _flat(x, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not torch.is_tensor(x) or x.ndim < 2:
        raise ValueError(f"{name} must be a tensor or an array of shape (N, *dims), got "
                         f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
    return _matrix(x.reshape(x.shape[0], -1), name).cpu().double()


def _pair_for_knn(real, fake, k, nr, nf, need_fake=None):
    _check_int(k, "k", 1)
    r, f = _flat(real, nr), _flat(fake, nf)
    _same_dim(r, f, nr, nf)
    for x, name, need in ((r, nr, k + 1), (f, nf, need_fake or k + 1)):
        if len(x) < need:
            raise ValueError(f"{name} must have at least {need} rows for k = {k}, got {len(x)}")
    return r, f


def _knn_radius(x: torch.Tensor, k: int) -> torch.Tensor:
    """``(N,)`` distance of each row to its k-th nearest other row (the row itself excluded)."""
    out = []
    for i0 in range(0, len(x), _CHUNK):
        d = torch.cdist(x[i0:i0 + _CHUNK], x)  # (chunk, N), the row's own 0 among them
        out.append(d.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(out)


def _in_any_ball(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """``(P,)`` bool: is each point within ``radii[i]`` of some ``centres[i]``."""
    out = []
    for i0 in range(0, len(points), _CHUNK):
        out.append((torch.cdist(points[i0:i0 + _CHUNK], centres) <= radii[None, :]).any(1))
    return torch.cat(out)


def _mmd2_unbiased(a: torch.Tensor, b: torch.Tensor) -> float:
    d = a.shape[1]
    kaa, kbb, kab = ((x @ y.T / d + 1) ** 3 for x, y in ((a, a), (b, b), (a, b)))
    m, n = len(a), len(b)
    return ((kaa.sum() - kaa.diagonal().sum()) / (m * (m - 1)) + (kbb.sum() - kbb.diagonal().sum()) / (n * (n - 1))
            - 2 * kab.mean()).item()
