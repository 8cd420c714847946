"""Set-based sample-quality metrics: KID, precision/recall, density/coverage, the extrapolated
Fréchet distance and the memorisation measures, each against an independent few-line
implementation written here with plain loops (numpy), on known cases, and on bad input."""

import itertools
import math

import numpy as np
import pytest
import torch

from diffusion_edu.metrics import (copy_fraction, density_coverage, frechet_distance, frechet_distance_extrapolated,
                                   kid, nearest_neighbours, precision_recall)


def _pts(n, d, seed, shift=0.0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + shift


# -- independent implementations ---------------------------------------------------------------
def _kid_loops(a, b):
    a, b = np.asarray(a), np.asarray(b)
    d = a.shape[1]
    k = lambda x, y: (x @ y / d + 1) ** 3  # noqa: E731
    m, n = len(a), len(b)
    xx = sum(k(a[i], a[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    yy = sum(k(b[i], b[j]) for i, j in itertools.permutations(range(n), 2)) / (n * (n - 1))
    xy = sum(k(a[i], b[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def _radius(x, i, k):
    return sorted(np.linalg.norm(x[i] - x[j]) for j in range(len(x)) if j != i)[k - 1]


def _pr_loops(real, fake, k):
    r, f = np.asarray(real), np.asarray(fake)
    rr = [_radius(r, i, k) for i in range(len(r))]
    rf = [_radius(f, j, k) for j in range(len(f))]
    prec = np.mean([any(np.linalg.norm(f[j] - r[i]) <= rr[i] for i in range(len(r))) for j in range(len(f))])
    rec = np.mean([any(np.linalg.norm(r[i] - f[j]) <= rf[j] for j in range(len(f))) for i in range(len(r))])
    return prec, rec


def _dc_loops(real, fake, k):
    r, f = np.asarray(real), np.asarray(fake)
    rr = [_radius(r, i, k) for i in range(len(r))]
    inside = [[np.linalg.norm(f[j] - r[i]) <= rr[i] for j in range(len(f))] for i in range(len(r))]
    density = sum(map(sum, inside)) / (k * len(f))
    coverage = np.mean([any(row) for row in inside])
    return density, coverage


# -- KID -----------------------------------------------------------------------------------------
def test_kid_equals_the_double_sums():
    a, b = _pts(30, 5, 0), _pts(25, 5, 1, shift=0.3)
    mean, std = kid(a, b)
    assert std == 0.0 and mean == pytest.approx(_kid_loops(a, b), rel=1e-10, abs=1e-12)


def test_kid_is_unbiased_and_the_frechet_distance_is_not():
    """Equal distributions, 400 independent pairs of 50-point sets: KID's mean is 0 within 4
    standard errors (it is unbiased), while the plug-in Fréchet distance's mean sits many
    standard errors above its population value 0 (its O(D/N) bias)."""
    kids, fds = [], []
    for r in range(400):
        a, b = _pts(50, 4, 2 * r + 10), _pts(50, 4, 2 * r + 11)
        kids.append(kid(a, b)[0])
        fds.append(frechet_distance(a, b))
    kids, fds = np.array(kids), np.array(fds)
    se = kids.std(ddof=1) / math.sqrt(len(kids))
    assert abs(kids.mean()) < 4 * se, (kids.mean(), se)
    assert fds.mean() > 20 * fds.std(ddof=1) / math.sqrt(len(fds))


def test_kid_separates_and_subsets_spread():
    a, b = _pts(400, 8, 3), _pts(400, 8, 4, shift=0.5)
    same = kid(a, _pts(400, 8, 5))[0]
    far, _ = kid(a, b)
    sub_mean, sub_std = kid(a, b, subset_size=100, subsets=20, generator=torch.Generator().manual_seed(0))
    assert far > 20 * abs(same)
    # subsets estimate the same MMD^2 (unbiased at every size): within 4 standard errors of the full one
    assert abs(sub_mean - far) < 4 * sub_std / math.sqrt(20) + 1e-12 and sub_std > 0


# -- precision / recall, density / coverage --------------------------------------------------------
@pytest.mark.parametrize("k", [1, 3, 5])
def test_precision_recall_and_density_coverage_equal_the_loops(k):
    real, fake = _pts(40, 3, 6), _pts(35, 3, 7, shift=0.7)
    assert precision_recall(real, fake, k=k) == pytest.approx(_pr_loops(real, fake, k), abs=1e-12)
    assert density_coverage(real, fake, k=k) == pytest.approx(_dc_loops(real, fake, k), abs=1e-12)


def test_known_values():
    x = _pts(200, 4, 8)
    assert precision_recall(x, x) == (1.0, 1.0)
    assert precision_recall(x, x + 1e3) == (0.0, 0.0)
    assert density_coverage(x, x + 1e3) == (0.0, 0.0)
    assert density_coverage(x, x)[1] == 1.0  # every real ball holds its own centre
    # mode dropping: fake covers half of a two-mode real set -> recall and coverage about 1/2,
    # precision about 1
    real = torch.cat([_pts(300, 2, 9), _pts(300, 2, 10, shift=20.0)])
    fake = _pts(300, 2, 11)
    p, r = precision_recall(real, fake)
    d, c = density_coverage(real, fake)
    assert p > 0.9 and 0.4 < r <= 0.5 and 0.4 < c <= 0.5 and d > 0.5


# -- memorisation ---------------------------------------------------------------------------------
def test_nearest_neighbours_match_a_full_sort():
    s, t = _pts(50, 6, 12), _pts(80, 6, 13)
    d, i = nearest_neighbours(s, t, k=3)
    full = torch.cdist(s, t)
    order = full.argsort(dim=1)[:, :3]
    assert torch.equal(i, order) and torch.allclose(d, full.gather(1, order))
    d2, i2 = nearest_neighbours(s.reshape(50, 2, 3), t.reshape(80, 2, 3), k=3)  # images are flattened
    assert torch.equal(i2, i)


def test_copy_fraction_finds_copies_and_not_fresh_samples():
    train = _pts(100, 16, 14)
    copies = train[:40] + 0.01 * _pts(40, 16, 15)
    fresh = _pts(60, 16, 16)
    assert copy_fraction(copies, train) == 1.0
    assert copy_fraction(fresh, train) == 0.0  # in 16-D a fresh draw is never 3x closer to one point
    assert copy_fraction(torch.cat([copies, fresh]), train) == pytest.approx(0.4)


# -- the extrapolated Fréchet distance ----------------------------------------------------------
def test_fd_extrapolation_removes_the_bias():
    """N(0, I) against N(0, 1.3^2 I) in 32-D: the population FD is 32 * 0.3^2 = 2.88; the plug-in
    FD_N exceeds it by about k / N (k about 400 here); the intercept of the 1/N fit lands closer
    to 2.88 than the largest-N estimate (0.02-0.08 away over five seeds, against 0.13-0.17 for
    N = 4000: the threshold 0.15 sits between the two measured ranges)."""
    D = 32
    real, fake = _pts(20000, D, 17), 1.3 * _pts(4000, D, 18)
    fit = frechet_distance_extrapolated(real, fake, [250, 500, 1000, 2000, 4000], repeats=4,
                                        generator=torch.Generator().manual_seed(0))
    true = D * 0.3**2
    assert fit.slope > 0 and fit.fds[0] > fit.fds[-1] > true
    assert abs(fit.fd_inf - true) < abs(fit.fds[-1] - true)
    assert abs(fit.fd_inf - true) < 0.15


# -- bad input --------------------------------------------------------------------------------------
BAD = {
    "kid: NaN": (lambda: kid(torch.full((5, 2), float("nan")), _pts(5, 2, 0)), "feats_a must be finite"),
    "kid: dimensions": (lambda: kid(_pts(5, 2, 0), _pts(5, 3, 1)), "same feature dimension"),
    "kid: one row": (lambda: kid(_pts(1, 2, 0), _pts(5, 2, 1)), "at least 2 rows"),
    "kid: subset too big": (lambda: kid(_pts(5, 2, 0), _pts(5, 2, 1), subset_size=6), "subset_size must be at most"),
    "kid: subsets 0": (lambda: kid(_pts(5, 2, 0), _pts(5, 2, 1), subset_size=2, subsets=0), "subsets must be"),
    "precision_recall: too few": (lambda: precision_recall(_pts(3, 2, 0), _pts(10, 2, 1)), "at least 4 rows"),
    "precision_recall: k 0": (lambda: precision_recall(_pts(9, 2, 0), _pts(9, 2, 1), k=0), "k must be an int >= 1"),
    "density_coverage: dims": (lambda: density_coverage(_pts(9, 2, 0), _pts(9, 3, 1)), "same feature dimension"),
    "nearest_neighbours: k > N": (lambda: nearest_neighbours(_pts(3, 2, 0), _pts(1, 2, 1)), "at least k = 2 rows"),
    "nearest_neighbours: 1-D": (lambda: nearest_neighbours(torch.zeros(3), _pts(4, 2, 1)), r"shape \(N, \*dims\)"),
    "copy_fraction: threshold": (lambda: copy_fraction(_pts(3, 2, 0), _pts(4, 2, 1), threshold=0.0), "threshold"),
    "copy_fraction: inf": (lambda: copy_fraction(torch.full((3, 2), float("inf")), _pts(4, 2, 1)), "samples must be finite"),
    "fd_extrapolated: one size": (lambda: frechet_distance_extrapolated(_pts(9, 2, 0), _pts(9, 2, 1), [4, 4]),
                                  "at least two distinct sizes"),
    "fd_extrapolated: size > N": (lambda: frechet_distance_extrapolated(_pts(9, 2, 0), _pts(9, 2, 1), [4, 20]),
                                  "at least two distinct sizes"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input(case):
    call, message = BAD[case]
    with pytest.raises(ValueError, match=message):
        call()
