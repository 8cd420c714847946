"""Sample-quality metrics against closed forms and independent implementations: the Fréchet
distance of samples converges to the Gaussian W2^2 of the true means and covariances; it is zero
on equal sets, symmetric, translation / rotation / scale covariant; it agrees with the original FID
recipe (``scipy.linalg.sqrtm`` of the product of the covariances) and with
``transport.gaussian_w2`` squared; in 1-D it is ``(m_a - m_b)^2 + (s_a - s_b)^2``. Confident
fraction and accuracy on hand-made probabilities and logits."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from diffusion_edu.metrics import classifier_accuracy, confident_fraction, frechet_distance, gaussian_stats
from diffusion_edu.transport import gaussian_w2


def _random_spd(D, gen, scale=1.0):
    B = torch.randn(D, D, generator=gen, dtype=torch.float64)
    return scale * (B @ B.T / D + 0.1 * torch.eye(D, dtype=torch.float64))


def _fid_recipe(a, b):
    """The original FID formula: scipy's (general, non-symmetric) sqrtm of S_a @ S_b."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    S_a, S_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(S_a @ S_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(S_a) + np.trace(S_b) - 2 * np.trace(covmean))


def test_sample_fd_converges_to_gaussian_closed_form(gen):
    """FD of samples -> W2^2(N(mu_a, S_a), N(mu_b, S_b)) of the TRUE parameters."""
    mu_a = torch.tensor([0.0, 1.0, -1.0], dtype=torch.float64)
    mu_b = torch.tensor([0.5, 0.0, -1.0], dtype=torch.float64)
    A = torch.tensor([[1.0, 0.3, 0.0], [0.0, 0.8, 0.2], [0.1, 0.0, 0.5]], dtype=torch.float64)
    B = torch.tensor([[0.7, 0.0, 0.0], [0.4, 1.2, 0.0], [0.0, -0.3, 0.9]], dtype=torch.float64)
    exact = gaussian_w2(mu_a, A @ A.T, mu_b, B @ B.T) ** 2  # 1.855
    N, R = 4000, 50
    fds = np.array([
        frechet_distance(mu_a + torch.randn(N, 3, generator=gen, dtype=torch.float64) @ A.T,
                         mu_b + torch.randn(N, 3, generator=gen, dtype=torch.float64) @ B.T)
        for _ in range(R)
    ])
    # Measured over 100 replicates: one estimate has std 0.051 at N = 4000 (3.1 / sqrt(N)) and
    # the O(D / N) bias is ~13 / N = 0.003. The mean of R = 50 has SE 0.0072: allow 5 SE + bias.
    assert abs(fds.mean() - exact) < 5 * 0.051 / math.sqrt(R) + 0.005, (fds.mean(), exact)
    assert 0.5 * 0.051 < fds.std() < 2 * 0.051  # the spread the threshold above assumes


def test_zero_on_equal_sets_and_symmetric(gen):
    a = torch.randn(300, 8, generator=gen, dtype=torch.float64) @ _random_spd(8, gen)
    b = 0.5 + torch.randn(200, 8, generator=gen, dtype=torch.float64)
    # round-off of eigendecompositions of 8x8 matrices with entries ~1: ~1e-14
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-10)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-10)
    assert frechet_distance(a, b) > 0.1


def test_translation_rotation_and_scaling(gen):
    a = torch.randn(400, 5, generator=gen, dtype=torch.float64) @ _random_spd(5, gen)
    b = torch.randn(300, 5, generator=gen, dtype=torch.float64)
    c = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0], dtype=torch.float64)
    # same covariance, means differ by c: only the mean term survives
    assert frechet_distance(a, a + c) == pytest.approx(c.pow(2).sum().item(), rel=1e-10)
    Q, _ = torch.linalg.qr(torch.randn(5, 5, generator=gen, dtype=torch.float64))
    fd = frechet_distance(a, b)
    assert frechet_distance(a @ Q, b @ Q) == pytest.approx(fd, rel=1e-9)  # rotations: invariant
    assert frechet_distance(3 * a, 3 * b) == pytest.approx(9 * fd, rel=1e-9)  # a squared distance


def test_one_dimension_closed_form(gen):
    """In 1-D the Gaussian W2^2 is (m_a - m_b)^2 + (s_a - s_b)^2 with the (ddof = 1) sample stds."""
    a = 2 * torch.randn(100, 1, generator=gen, dtype=torch.float64) + 1
    b = 0.5 * torch.randn(70, 1, generator=gen, dtype=torch.float64)
    expected = (a.mean() - b.mean()).item() ** 2 + (a.std() - b.std()).item() ** 2
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("D", [2, 10, 64])
def test_agrees_with_scipy_sqrtm_recipe_and_gaussian_w2(gen, D):
    a = torch.randn(500, D, generator=gen, dtype=torch.float64) @ _random_spd(D, gen)
    b = torch.randn(400, D, generator=gen, dtype=torch.float64) @ _random_spd(D, gen, 2.0) + 0.3
    fd = frechet_distance(a, b)
    # scipy's Schur-based sqrtm of a non-symmetric product: relative round-off ~1e-10 here
    assert fd == pytest.approx(_fid_recipe(a.numpy(), b.numpy()), rel=1e-7)
    mu_a, S_a = gaussian_stats(a)
    mu_b, S_b = gaussian_stats(b)
    assert fd == pytest.approx(gaussian_w2(mu_a, S_a, mu_b, S_b) ** 2, rel=1e-9)


def test_gaussian_stats_match_numpy(gen):
    x = torch.randn(50, 4, generator=gen)
    mu, S = gaussian_stats(x)
    assert mu.dtype == S.dtype == torch.float64
    np.testing.assert_allclose(mu.numpy(), x.double().numpy().mean(0), rtol=1e-12)
    np.testing.assert_allclose(S.numpy(), np.cov(x.double().numpy(), rowvar=False), rtol=1e-10)


def test_singular_covariances_are_handled(gen):
    """Fewer samples than dimensions: rank-deficient covariances, still a finite number >= 0."""
    a = torch.randn(10, 32, generator=gen)
    b = torch.randn(12, 32, generator=gen) + 0.1
    fd = frechet_distance(a, b)
    assert math.isfinite(fd) and fd > 0
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(a.numpy(), b.numpy()) == pytest.approx(fd, rel=1e-12)  # arrays too


def test_confident_fraction_probs_and_logits():
    probs = torch.tensor([[0.95, 0.05, 0.0], [0.5, 0.25, 0.25], [0.0, 0.91, 0.09], [0.2, 0.2, 0.6]])
    assert confident_fraction(probs) == 0.5
    assert confident_fraction(probs, threshold=0.55) == 0.75
    assert confident_fraction(probs, threshold=0.0) == 1.0
    logits = probs.log().clamp_min(-50)
    assert confident_fraction(logits) == 0.5  # detected as logits (negative entries)
    assert confident_fraction(logits, from_logits=True) == 0.5
    # all-positive rows that do not sum to 1 are logits: softmax([3, 0]) = (0.953, 0.047)
    assert confident_fraction(torch.tensor([[3.0, 0.0], [1.0, 0.5]])) == 0.5
    with pytest.raises(ValueError, match="logits_or_probs must hold probabilities"):
        confident_fraction(torch.tensor([[3.0, 0.0]]), from_logits=False)


def test_classifier_accuracy():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 5.0], [1.0, 2.0, 0.0]])
    assert classifier_accuracy(logits, torch.tensor([0, 1, 2, 0])) == 0.75
    assert classifier_accuracy(logits.softmax(1).numpy(), np.array([0, 1, 2, 1])) == 1.0


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="feats_b must have shape"):
        frechet_distance(torch.zeros(5, 2), torch.zeros(5))
    with pytest.raises(ValueError, match="feature dimension"):
        frechet_distance(torch.randn(5, 2), torch.randn(5, 3))
    with pytest.raises(ValueError, match="feats_a needs at least 2 rows"):
        frechet_distance(torch.zeros(1, 2), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="feats_a must be finite"):
        frechet_distance(torch.tensor([[0.0, float("nan")], [1.0, 1.0]]), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="feats_a must be a tensor or an array"):
        frechet_distance([[0.0, 1.0], [1.0, 0.0]], torch.zeros(5, 2))
    with pytest.raises(ValueError, match="threshold"):
        confident_fraction(torch.zeros(3, 2), threshold=1.0)
    with pytest.raises(ValueError, match="labels must be a"):
        classifier_accuracy(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_inputs(gen):
    a = torch.randn(100, 4, generator=gen)
    b = torch.randn(80, 4, generator=gen) + 1
    assert frechet_distance(a.cuda(), b.cuda()) == pytest.approx(frechet_distance(a, b), rel=1e-12)
    logits = torch.randn(10, 3, generator=gen)
    assert confident_fraction(logits.cuda(), 0.5) == confident_fraction(logits, 0.5)
    y = torch.randint(3, (10,), generator=gen)
    assert classifier_accuracy(logits.cuda(), y.cuda()) == classifier_accuracy(logits, y)
