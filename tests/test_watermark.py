"""Watermarks in the initial noise (diffusion_edu.watermark): the key and its planting checked
against the DFT written out here, the distribution of watermarked noise (exactly N(0, I) over
random "rand" keys; for one fixed key, the mean and variance of the projection), DDIM inversion
against the closed form for Gaussian data N(0, v I) (whose exact denoiser is linear), the
detector's separation and p-values, the detection rates against scikit-learn, and bad input."""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import roc_auc_score

from diffusion_edu.denoiser import Denoiser
from diffusion_edu.samplers import ddim
from diffusion_edu.schedules import DDPMSchedule, alphas_cumprod, ddpm_betas, time_grid
from diffusion_edu.sde import VPSDE
from diffusion_edu.watermark import (WatermarkKey, ddim_invert, make_key, p_value, plant, ring_mask, roc_auc,
                                     spectrum, tpr_at_fpr, watermark_distance)

SHAPE = (1, 8, 8)
D = 64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def dft_matrix(n):
    """The orthonormal 1-D DFT matrix F[k, j] = exp(-2 pi i k j / n) / sqrt(n), written out."""
    k = np.arange(n)
    return np.exp(-2j * np.pi * np.outer(k, k) / n) / math.sqrt(n)


# -- the mask and the key -------------------------------------------------------------------------
@pytest.mark.parametrize("size,radius", [((8, 8), 2.0), ((7, 9), 2.5), ((16, 16), 4.0), ((8, 8), 0.0)])
def test_ring_mask_against_a_loop(size, radius):
    H, W = size
    mask = ring_mask(size, radius)
    for a in range(H):
        for b in range(W):
            k1 = a if a < H - a else a - H  # the integer frequency of index a (fftfreq: -H/2 for a = H/2)
            k2 = b if b < W - b else b - W
            if H % 2 == 0 and a == H // 2:
                k1 = -H // 2
            if W % 2 == 0 and b == W // 2:
                k2 = -W // 2
            assert bool(mask[a, b]) == (k1 * k1 + k2 * k2 <= radius**2), (a, b)
            assert bool(mask[a, b]) == bool(mask[(-a) % H, (-b) % W])  # symmetric under k -> -k


@pytest.mark.parametrize("pattern", ["rings", "rand"])
def test_key_is_hermitian_and_the_planted_noise_real(pattern):
    key = make_key((2, 8, 8), 2.5, pattern=pattern, channel=1, generator=gen(1))
    K = key.values.numpy()
    flipped = np.conj(np.roll(np.flip(K, axis=(1, 2)), 1, axis=(1, 2)))  # conj K[-k]
    assert np.allclose(K, flipped, atol=1e-12)
    assert not key.mask[0].any() and key.mask[1].sum() == ring_mask((8, 8), 2.5).sum()
    assert (key.values[~key.mask] == 0).all()
    # the inverse transform of the planted spectrum, by the DFT matrices written above: imaginary part 0
    z = torch.randn(3, 2, 8, 8, generator=gen(2), dtype=torch.float64)
    X = spectrum(z).numpy()
    X = np.where(key.mask.numpy(), K, X)
    F = dft_matrix(8)
    Fi = F.conj().T  # the inverse DFT (F is unitary)
    x = np.einsum("ka,ncab,lb->nckl", Fi, X, Fi)  # rows, then columns
    assert np.abs(x.imag).max() < 1e-12
    assert np.allclose(plant(z, key).numpy(), x.real, atol=1e-12)


def test_rings_key_is_constant_on_rings():
    key = make_key(SHAPE, 3.0, generator=gen(3))
    k = torch.fft.fftfreq(8, 1 / 8, dtype=torch.float64)
    r = (k[:, None] ** 2 + k[None, :] ** 2).sqrt()
    ring = r.ceil().clamp_min(1)
    vals = key.values[0].real
    for j in (1, 2, 3):
        on = (ring == j) & key.mask[0]
        assert on.any() and vals[on].unique().numel() == 1, j  # one value per ring
    assert vals[key.mask[0]].unique().numel() == 3  # three different rings: three values (a.s.)
    assert (key.values.imag == 0).all()


def test_plant_sets_the_mask_and_keeps_the_rest():
    key = make_key(SHAPE, 2.0, pattern="rand", generator=gen(4))
    z = torch.randn(5, *SHAPE, generator=gen(5), dtype=torch.float64)
    X, Xw = spectrum(z), spectrum(plant(z, key))
    m = key.mask
    assert torch.allclose(Xw[:, m], key.values[m].expand(5, -1), atol=1e-12)
    assert torch.allclose(Xw[:, ~m], X[:, ~m], atol=1e-12)
    assert plant(z.float(), key).dtype == torch.float32


# -- the distribution of the watermarked noise --------------------------------------------------------
def test_rand_keys_keep_the_noise_exactly_gaussian():
    # over random "rand" keys and noise, the watermarked x_T is N(0, I): the empirical covariance of n draws
    # has entries with SE 1/sqrt(n) (off the diagonal) and sqrt(2/n) (variances). Max over 4,032 off-diagonal
    # entries of |N(0, 1/n)| is ~4.1 SE; allow 5.5 SE. The means: SE 1/sqrt(n), allow 5 SE over 64.
    n = 3000
    g = gen(6)
    keys = [make_key(SHAPE, 2.0, pattern="rand", generator=g) for _ in range(n)]
    z = torch.randn(n, *SHAPE, generator=g, dtype=torch.float64)
    x = torch.cat([plant(z[i:i + 1], k) for i, k in enumerate(keys)]).view(n, D)
    cov = torch.cov(x.T)
    off = cov - torch.diag(cov.diagonal())
    assert x.mean(0).abs().max() < 5 / math.sqrt(n)
    assert off.abs().max() < 5.5 / math.sqrt(n), off.abs().max()
    assert (cov.diagonal() - 1).abs().max() < 5.5 * math.sqrt(2 / n), cov.diagonal()


def test_one_fixed_key_shifts_the_mean_and_projects_the_variance():
    # for one key K: x = F^-1 K + P z with P the projection on the unmasked frequencies, so the mean is the
    # key's image and every pixel has variance diag(P) = 1 - |M| / D (|F_kn|^2 = 1/D). This is what a
    # detector sees, and it can fail: a mean of 0 or unit variances would contradict it.
    key = make_key(SHAPE, 2.0, generator=gen(7))
    n = 20_000
    x = plant(torch.randn(n, *SHAPE, generator=gen(8), dtype=torch.float64), key)
    m_K = torch.fft.ifft2(key.values, norm="ortho").real  # (1, 8, 8)
    M = key.mask.sum().item()
    var = 1 - M / D
    se_mean, se_var = math.sqrt(var / n), var * math.sqrt(2 / n)
    assert (x.mean(0) - m_K).abs().max() < 5 * se_mean
    assert (x.var(0) - var).abs().max() < 5 * se_var, x.var(0)
    assert m_K.abs().max() > 20 * se_mean  # the shift is real (M = 13 coefficients of unit size)


def test_rings_keys_keep_mean_zero_and_the_energy():
    # over random "rings" keys: mean 0 and E ||x||^2 / D = 1 (each masked coefficient keeps E|X_k|^2 = 1);
    # ||x||^2 / D per draw has SD about sqrt(2 / D) plus the key's share; allow 5 SE of the mean of n draws.
    n = 1500
    g = gen(9)
    x = torch.cat([plant(torch.randn(1, *SHAPE, generator=g, dtype=torch.float64),
                         make_key(SHAPE, 2.0, generator=g)) for _ in range(n)])
    energy = x.pow(2).flatten(1).mean(1)  # ||x||^2 / D per draw
    assert abs(energy.mean().item() - 1) < 5 * energy.std().item() / math.sqrt(n)
    assert x.mean().abs() < 5 * x.flatten(1).mean(1).std().item() / math.sqrt(n)


# -- DDIM inversion against the closed form -------------------------------------------------------------
V = 0.3  # the data: N(0, V I); its exact denoiser is x0_hat = alpha V / (alpha^2 V + sigma^2) x


def linear_denoiser(sched, calls=None):
    def net(x, t):  # x0 prediction of N(0, V I) data, written from the closed form
        a, s = (c.view(-1, *([1] * (x.ndim - 1))).to(x.dtype) for c in sched.marginal(t))
        if calls is not None:
            calls.append(s.min().item())
        return a * V / (a**2 * V + s**2) * x

    return Denoiser(net, sched, "x0")


def inversion_factors(sched, ts):
    """The scalar that each inversion step multiplies x by, for the linear denoiser, from t up to s:
    eps_hat(x, s) = sigma_s x / (alpha_s^2 V + sigma_s^2) (Tweedie), then
    x_s = alpha_s (x_t - sigma_t eps_hat) / alpha_t + sigma_s eps_hat."""
    f = 1.0
    for i in range(len(ts) - 1, 0, -1):
        (a_t, s_t), (a_s, s_s) = ([c.item() for c in sched.marginal(ts[j])] for j in (i, i - 1))
        e = s_s / (a_s**2 * V + s_s**2)
        f *= a_s * (1 - s_t * e) / a_t + s_s * e
    return f


SCHEDS = {"DDPM cosine": (DDPMSchedule(alphas_cumprod(ddpm_betas(1000, "cosine"))), "trailing"),
          "VP SDE": (VPSDE(), "uniform")}


@pytest.mark.parametrize("name", list(SCHEDS))
def test_ddim_invert_equals_the_closed_form_steps(name):
    sched, spacing = SCHEDS[name]
    ts = time_grid(sched, 25, spacing)
    x0 = torch.randn(4, 3, generator=gen(10), dtype=torch.float64) * math.sqrt(V)
    calls = []
    out = ddim_invert(linear_denoiser(sched, calls), x0, ts)
    assert torch.allclose(out, inversion_factors(sched, ts) * x0, rtol=1e-10, atol=1e-12)
    assert len(calls) == 25 and min(calls) > 0  # one call a step, never at the data (sigma = 0)


@pytest.mark.parametrize("name", list(SCHEDS))
def test_ddim_invert_converges_to_the_probability_flow_map(name):
    # For N(0, V I) data the probability-flow ODE maps x0 to x_T = alpha_T sqrt(V + sigma~_T^2) / sqrt(V) x0
    # (y = x / alpha has std sqrt(V + sigma~^2) along the flow). Inversion is a first-order method: the
    # error must shrink with the steps, by about 2x per doubling (measured 1.8-2.2x; require 1.6x), and be
    # small at 200 steps (measured 0.0003 on the cosine DDPM chain, 0.002 on the VP SDE; require 0.005).
    sched, spacing = SCHEDS[name]
    x0 = torch.randn(6, 2, generator=gen(11), dtype=torch.float64) * math.sqrt(V)
    den = linear_denoiser(sched)
    errors = []
    for steps in (50, 100, 200):
        ts = time_grid(sched, steps, spacing)
        a_T, s_T = (c.item() for c in sched.marginal(ts[0]))
        exact = a_T * math.sqrt(V + (s_T / a_T) ** 2) / math.sqrt(V) * x0
        errors.append(((ddim_invert(den, x0, ts) - exact).abs().max() / exact.abs().max()).item())
    assert all(e2 < e1 / 1.6 for e1, e2 in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.005, errors


def test_round_trip_recovers_the_noise():
    # generate with DDIM, invert: the two first-order errors (1/steps each) shrink together; at 200 steps
    # the measured relative error is 0.008 (cosine DDPM, V = 0.3); allow 0.02.
    sched, spacing = SCHEDS["DDPM cosine"]
    den = linear_denoiser(sched)
    ts = time_grid(sched, 200, spacing)
    x_T = torch.randn(8, 1, 8, 8, generator=gen(12), dtype=torch.float64)
    back = ddim_invert(den, ddim(den, x_T, ts), ts)
    assert ((back - x_T).norm() / x_T.norm()).item() < 0.02


# -- detection --------------------------------------------------------------------------------------------
def test_detection_separates_watermarked_from_clean_noise_through_generation():
    # plant, generate with the exact Gaussian model, invert: the watermarked distances stay near 0 and the
    # clean ones near the mean |X_k - K_k| of unit-power noise; AUC 1 and TPR 1 at 1 % FPR.
    sched, spacing = SCHEDS["DDPM cosine"]
    den = linear_denoiser(sched)
    ts = time_grid(sched, 50, spacing)
    key = make_key(SHAPE, 2.0, generator=gen(13))
    z = torch.randn(200, *SHAPE, generator=gen(14), dtype=torch.float64)
    d_marked = watermark_distance(ddim_invert(den, ddim(den, plant(z[:100], key), ts), ts), key)
    d_clean = watermark_distance(ddim_invert(den, ddim(den, z[100:], ts), ts), key)
    assert roc_auc(d_marked, d_clean) == 1.0
    assert tpr_at_fpr(d_marked, d_clean, 0.01)[0] == 1.0
    assert d_marked.max() < 0.2 < 0.5 < d_clean.median()


def test_p_values_are_uniform_on_clean_noise_and_tiny_on_watermarked():
    key = make_key(SHAPE, 2.0, generator=gen(15))
    z = torch.randn(3000, *SHAPE, generator=gen(16), dtype=torch.float64)
    p = p_value(z, key).numpy()
    assert stats.kstest(p, "uniform").pvalue > 1e-3  # exact under N(0, I): uniform p-values
    assert p_value(plant(z[:50], key), key).max() < 1e-10
    # the wrong null (a variance off by 0.6^2, as inverted images have) breaks the calibration
    assert (p_value(0.6 * z, key) < 0.05).double().mean() > 0.3


def test_detection_rates_against_sklearn():
    g = gen(17)
    a = torch.randn(300, generator=g, dtype=torch.float64) - 1.0  # watermarked: smaller distances
    b = torch.randn(500, generator=g, dtype=torch.float64)
    labels = np.r_[np.ones(300), np.zeros(500)]
    ref = roc_auc_score(labels, -np.r_[a.numpy(), b.numpy()])  # scores: higher = watermarked
    assert abs(roc_auc(a, b) - ref) < 1e-12
    tpr, tau = tpr_at_fpr(a, b, 0.05)
    assert (b < tau).double().mean() <= 0.05 < (b <= tau).double().mean()  # tau: the 5 % quantile of b
    assert tpr == (a < tau).double().mean().item()


# -- bad input ----------------------------------------------------------------------------------------------
def test_bad_input():
    key = make_key(SHAPE, 2.0, generator=gen(0))
    with pytest.raises(ValueError, match="size"):
        ring_mask(8, 2.0)
    with pytest.raises(ValueError, match="radius"):
        ring_mask((8, 8), -1.0)
    with pytest.raises(ValueError, match="shape"):
        make_key((8, 8), 2.0)
    with pytest.raises(ValueError, match="pattern"):
        make_key(SHAPE, 2.0, pattern="zeros")
    with pytest.raises(ValueError, match="channel"):
        make_key(SHAPE, 2.0, channel=1)
    with pytest.raises(ValueError, match="noise must have shape"):
        plant(torch.randn(2, 8, 8), key)
    with pytest.raises(ValueError, match="key must be a WatermarkKey"):
        plant(torch.randn(2, 1, 8, 8), "key")
    with pytest.raises(ValueError, match="x must have shape"):
        watermark_distance(torch.randn(2, 1, 4, 4), key)
    with pytest.raises(ValueError, match="finite"):
        p_value(torch.full((1, 1, 8, 8), float("nan")), key)
    with pytest.raises(ValueError, match="fpr"):
        tpr_at_fpr(torch.zeros(3), torch.ones(3), 1.5)
    with pytest.raises(ValueError, match="d_clean"):
        roc_auc(torch.zeros(3), torch.ones(3, 2))
    sched = SCHEDS["DDPM cosine"][0]
    with pytest.raises(ValueError, match="denoiser must be a Denoiser"):
        ddim_invert(lambda x, t: x, torch.zeros(2, 3), time_grid(sched, 5, "trailing"))
    with pytest.raises(ValueError, match="ts must decrease"):
        ddim_invert(linear_denoiser(sched), torch.zeros(2, 3), torch.tensor([1.0, 5.0, 10.0]))
    assert isinstance(key, WatermarkKey) and key.shape == SHAPE
