r"""Watermarks in the initial noise, read back by DDIM inversion (in the spirit of Tree-Ring).

Deterministic DDIM (:func:`~diffusion_edu.samplers.ddim` with ``eta = 0``) is a map from the
initial noise ``x_T`` to the image. Wen, Kirchenbauer, Geiping & Goldstein (2023, "Tree-Ring
watermarks") plant a key in the *Fourier transform* of ``x_T``, generate as usual, and detect the
key in a given image by running DDIM backwards (:func:`ddim_invert`) and comparing the recovered
noise's spectrum with the key.

**The key.** With the orthonormal 2-D DFT ``X = F x`` of each channel (``norm="ortho"``, so that
the spectrum of white noise ``x ~ N(0, I)`` is again white: ``E|X_k|^2 = 1``), a mask ``M`` of low
frequencies ``|k| <= r`` (a disc at the centre of the shifted spectrum) and key values ``K_k``,

.. math::  X_k \leftarrow K_k \ (k \in M), \qquad x_T^{\mathrm{wm}} = F^{-1} X .

``M`` is symmetric (``k in M`` iff ``-k in M``) and ``K`` Hermitian (``K_{-k} = conj(K_k)``), so
``x_T^wm`` is real; the unmasked coefficients keep the noise's own values. Two patterns
(:func:`make_key`): ``"rings"`` (Tree-Ring's: concentric rings, one real value ``v_j ~ N(0, 1)``
per ring, rotation invariant) and ``"rand"`` (the masked coefficients of one fresh white-noise
draw).

**Distribution.** For *one fixed* key the watermarked noise is ``N(m_K, P)``, ``m_K`` the key's
inverse transform and ``P`` the projection on the unmasked frequencies: not ``N(0, I)``, and that
shift is what the detector finds. Over *random keys*: with ``"rand"`` the watermarked noise is
exactly ``N(0, I)`` (the masked and unmasked coefficients come from two independent white fields,
and the DFT is unitary); with ``"rings"`` it has mean 0 and ``E||x||^2 = D`` (each masked
coefficient keeps ``E|X_k|^2 = 1``) but the coefficients of one ring are equal, hence correlated.

**Detection.** Invert the image to ``x_T'`` and measure Tree-Ring's distance
``d = mean_{k in M} |X'_k - K_k|`` (:func:`watermark_distance`): small for watermarked images.
If ``x_T'`` were exactly ``N(0, I)`` (no watermark), ``S = sum_{k in M} |X'_k - K_k|^2`` would follow a
noncentral chi-square law with ``|M|`` degrees of freedom and non-centrality ``sum_{k in M} |K_k|^2``
(a conjugate pair contributes two real ``N(., 1/2)`` parts twice, a self-conjugate coefficient one
``N(., 1)``), whence the exact p-value :func:`p_value` (Tree-Ring's code computes one of this form
with a variance estimated from the image). Inverted
images are not exactly ``N(0, I)``, so in practice the threshold is set on unwatermarked images
for a chosen false-positive rate (:func:`tpr_at_fpr`, :func:`roc_auc`).

**DDIM inversion** (Song, Meng & Ermon, 2021, encode images into ``x_T`` by running DDIM's ODE
backwards). In the
variables ``y = x / alpha`` and ``sigma~ = sigma / alpha`` the DDIM step from ``s`` down to ``t`` is
``y_t = y_s + (sigma~_t - sigma~_s) eps_hat(x_s, s)``. Undoing it needs ``eps_hat`` at the unknown
``x_s``; inversion uses the known ``x_t`` in its place,

.. math::  y_s = y_t + (\tilde\sigma_s - \tilde\sigma_t)\, \hat\varepsilon(x_t, s), \qquad
           \text{i.e.}\ x_s = \alpha_s \hat x_0 + \sigma_s \hat\varepsilon, \ \
           \hat\varepsilon = \hat\varepsilon(x_t, s),\ \hat x_0 = (x_t - \sigma_t \hat\varepsilon) / \alpha_t ,

the convention of diffusers' ``DDIMInverseScheduler`` (the model is evaluated at the time being
stepped *to*, so it is never called at the data, where ``sigma = 0``). The error of one step is
``O(h^2)``: inversion recovers ``x_T`` when the ODE is smooth and the steps are small.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .denoiser import Denoiser
from .utils import check_finite

__all__ = [
    "WatermarkKey", "ring_mask", "make_key", "plant", "spectrum", "ddim_invert", "watermark_distance",
    "p_value", "tpr_at_fpr", "roc_auc",
]

PATTERNS = ("rings", "rand")


@dataclass(frozen=True)
class WatermarkKey:
    """A key planted in the spectrum of the initial noise.

    Attributes
    ----------
    mask : ``(C, H, W)`` bool, the watermarked frequencies (unshifted DFT layout, as
        :func:`torch.fft.fft2` returns them), symmetric under ``k -> -k``
    values : ``(C, H, W)`` complex128, the key ``K`` (zero off the mask), Hermitian
    """

    mask: torch.Tensor
    values: torch.Tensor

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``, the shape of one noise tensor."""
        return tuple(self.mask.shape)


def ring_mask(size: tuple[int, int], radius: float) -> torch.Tensor:
    r"""The frequencies ``k = (k_1, k_2)`` with ``|k| <= radius``, ``(H, W)`` bool, in the unshifted
    layout of :func:`torch.fft.fft2` (integer frequencies from :func:`torch.fft.fftfreq`); the
    centre of the shifted spectrum is ``k = 0``. Symmetric under ``k -> -k``.

    Examples
    --------
    >>> ring_mask((8, 8), 1.0).sum().item()      # k = 0 and its four neighbours
    5
    >>> torch.fft.fftshift(ring_mask((5, 5), 1.5)).int()
    tensor([[0, 0, 0, 0, 0],
            [0, 1, 1, 1, 0],
            [0, 1, 1, 1, 0],
            [0, 1, 1, 1, 0],
            [0, 0, 0, 0, 0]], dtype=torch.int32)
    """
    H, W = _size(size)
    if isinstance(radius, bool) or not (isinstance(radius, (int, float)) and 0 <= radius and math.isfinite(radius)):
        raise ValueError(f"radius must be a finite float >= 0, got {radius!r}")
    return _radius(H, W) <= radius


def make_key(
    shape: tuple[int, int, int], radius: float, *, pattern: str = "rings", channel: int | None = 0,
    generator: torch.Generator | None = None,
) -> WatermarkKey:
    r"""A random key for noise of shape ``(C, H, W)``: the disc ``|k| <= radius`` of one channel
    (``channel``) or of all (``channel=None``).

    - ``"rings"`` (Tree-Ring's pattern): ring ``j`` holds the frequencies with ``j - 1 < |k| <= j``
      (the centre counts to ring 1), and every coefficient of ring ``j`` gets the same real value
      ``v_j ~ N(0, 1)`` (real and even in ``k``, hence Hermitian; unit power like white noise's).
    - ``"rand"``: the masked coefficients of the spectrum of a fresh draw ``z ~ N(0, I)``.

    Examples
    --------
    >>> key = make_key((1, 8, 8), 2.0, generator=torch.Generator().manual_seed(0))
    >>> key.mask.sum().item(), key.values[key.mask].real.unique().numel()   # 13 frequencies, 2 rings
    (13, 2)
    """
    if not (isinstance(shape, (tuple, list)) and len(shape) == 3
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape)):
        raise ValueError(f"shape must be (C, H, W), three positive ints, got {shape!r}")
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {PATTERNS}, got {pattern!r}")
    C, H, W = shape
    if channel is not None and not (isinstance(channel, int) and not isinstance(channel, bool) and 0 <= channel < C):
        raise ValueError(f"channel must be None (all channels) or an int in 0..{C - 1}, got {channel!r}")
    disc = ring_mask((H, W), radius)  # (H, W)
    mask = torch.zeros(C, H, W, dtype=torch.bool)
    mask[slice(None) if channel is None else channel] = disc
    if pattern == "rings":
        ring = _radius(H, W).ceil().clamp_min(1).long()  # (H, W): ring index j, centre in ring 1
        rings = int(ring[disc].max())  # rings 1 .. rings lie in the disc
        v = torch.randn(C, rings, generator=generator, dtype=torch.float64)  # (C, rings): v_j ~ N(0, 1)
        idx = (ring.clamp(max=rings) - 1).flatten().expand(C, -1)  # (C, H W); outside the disc: masked below
        full = torch.gather(v, 1, idx).view(C, H, W)  # v_{ring(k)} on every channel
        values = full.to(torch.complex128)
    else:
        values = spectrum(torch.randn(1, C, H, W, generator=generator, dtype=torch.float64))[0]
    return WatermarkKey(mask, torch.where(mask, values, torch.zeros((), dtype=torch.complex128)))


def plant(noise: torch.Tensor, key: WatermarkKey) -> torch.Tensor:
    r"""The watermarked noise: the spectrum of ``noise`` ``(B, C, H, W)`` with the key's values on
    its mask, transformed back (``x <- F^{-1}[X off M, K on M]``); same shape and dtype.

    Examples
    --------
    >>> key = make_key((1, 8, 8), 2.0, generator=torch.Generator().manual_seed(0))
    >>> x = plant(torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1)), key)
    >>> bool(torch.allclose(spectrum(x)[:, key.mask], key.values[key.mask].expand(4, -1), atol=1e-6))
    True
    """
    _check_key(key)
    _check_images(noise, "noise", key)
    X = spectrum(noise)  # (B, C, H, W) complex128
    X = torch.where(key.mask.to(noise.device), key.values.to(noise.device), X)
    return torch.fft.ifft2(X, norm="ortho").real.to(noise.dtype)  # real: M symmetric, K Hermitian


def spectrum(x: torch.Tensor) -> torch.Tensor:
    """The orthonormal 2-D DFT of each image channel, ``(..., H, W)`` complex128 (unshifted)."""
    if not torch.is_tensor(x) or x.ndim < 2 or x.is_complex():
        raise ValueError(f"x must be a real tensor (..., H, W), got {getattr(x, 'shape', type(x).__name__)}")
    return torch.fft.fft2(x.double(), norm="ortho")


@torch.no_grad()
def ddim_invert(denoiser: Denoiser, x: torch.Tensor, ts: torch.Tensor, *, callback=None) -> torch.Tensor:
    r"""DDIM inversion: run deterministic DDIM *backwards* along the sampling grid ``ts``, from
    ``x`` at ``ts[-1]`` (an image, at the data end) up to ``ts[0]``, so that
    ``ddim(denoiser, ddim_invert(denoiser, x, ts), ts) ~ x``. From ``t`` up to ``s``:
    ``eps_hat = eps_hat(x_t, s)``, ``x0_hat = (x_t - sigma_t eps_hat) / alpha_t``,
    ``x_s = alpha_s x0_hat + sigma_s eps_hat`` (module docstring).

    Parameters
    ----------
    denoiser : the model that generated (or is assumed to have generated) ``x``
    x : ``(B, *dims)`` at time ``ts[-1]``
    ts : the decreasing grid the sampler used (:func:`~diffusion_edu.schedules.time_grid`)
    callback : optional ``callback(i, t, x)`` after each step, ``t`` the time reached

    Returns
    -------
    ``(B, *dims)``, the recovered noise at ``ts[0]``

    Examples
    --------
    >>> from diffusion_edu import GaussianMixture, ddim
    >>> from diffusion_edu.schedules import DDPMSchedule, alphas_cumprod, ddpm_betas, time_grid
    >>> sched = DDPMSchedule(alphas_cumprod(ddpm_betas(1000, "cosine")))
    >>> den = GaussianMixture([[0.0, 0.0]], stds=0.5).denoiser(sched)
    >>> ts = time_grid(sched, 100, "trailing")
    >>> x_T = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> bool((ddim_invert(den, ddim(den, x_T, ts), ts) - x_T).abs().max() < 0.05)   # 0.04: O(1 / steps)
    True
    """
    from .samplers import _call_back, _check  # the samplers' own checks of (denoiser, x, ts)

    ts = _check(denoiser, x, ts)
    sched = denoiser.schedule
    for j, i in enumerate(range(len(ts) - 1, 0, -1)):
        t, s = ts[i], ts[i - 1]  # one step up: t < s
        a_t, s_t = (c.item() for c in sched.marginal(t))
        a_s, s_s = (c.item() for c in sched.marginal(s))
        eps = denoiser.eps(x, s)  # eps_hat at the known x_t, evaluated at the target time s
        x0 = (x - s_t * eps) / a_t  # x0_hat = (x_t - sigma_t eps_hat) / alpha_t
        x = a_s * x0 + s_s * eps  # the DDIM step, run upwards
        if not torch.isfinite(x).all():
            raise FloatingPointError(f"ddim_invert produced NaN/inf at step {j} (t={s.item():.4g})")
        _call_back(x, j, s, callback)
    return x


def watermark_distance(x: torch.Tensor, key: WatermarkKey) -> torch.Tensor:
    r"""Tree-Ring's distance ``mean_{k in M} |X_k - K_k|`` between the spectrum of each
    ``x`` ``(B, C, H, W)`` (e.g. inverted noise) and the key, ``(B,)`` float64; small means
    watermarked.

    Examples
    --------
    >>> key = make_key((1, 8, 8), 2.0, generator=torch.Generator().manual_seed(0))
    >>> z = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    >>> watermark_distance(plant(z, key), key).max().item() < 1e-6
    True
    """
    _check_key(key)
    _check_images(x, "x", key)
    m = key.mask.to(x.device)
    return (spectrum(x)[:, m] - key.values.to(x.device)[m]).abs().mean(1)  # (B,)


def p_value(x: torch.Tensor, key: WatermarkKey) -> torch.Tensor:
    r"""``P(S' <= S)`` for ``S = sum_{k in M} |X_k - K_k|^2`` under the null hypothesis
    ``x ~ N(0, I)`` (no watermark), where ``S`` is noncentral chi-square with ``|M|`` degrees of
    freedom and non-centrality ``sum_{k in M} |K_k|^2``; ``(B,)`` float64. Small: the spectrum is
    closer to the key than unwatermarked noise would be. Exact only if the null holds exactly
    (inverted images are not exactly ``N(0, I)``).

    Examples
    --------
    >>> key = make_key((1, 8, 8), 2.0, generator=torch.Generator().manual_seed(0))
    >>> z = torch.randn(2000, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    >>> p = p_value(z, key)
    >>> abs((p < 0.05).double().mean().item() - 0.05) < 0.02, p_value(plant(z[:3], key), key).max().item() < 1e-12
    (True, True)
    """
    from scipy.stats import ncx2

    _check_key(key)
    _check_images(x, "x", key)
    m = key.mask.to(x.device)
    S = (spectrum(x)[:, m] - key.values.to(x.device)[m]).abs().pow(2).sum(1)  # (B,)
    nc = key.values[key.mask].abs().pow(2).sum().item()
    return torch.as_tensor(ncx2.cdf(S.cpu().numpy(), df=int(key.mask.sum()), nc=nc), dtype=torch.float64)


def tpr_at_fpr(d_marked: torch.Tensor, d_clean: torch.Tensor, fpr: float = 0.01) -> tuple[float, float]:
    """Detection at a fixed false-positive rate, for distances where *small* means watermarked:
    the threshold ``tau`` is the ``fpr`` quantile of the unwatermarked distances (at most a
    fraction ``fpr`` of them fall below it), and the true-positive rate is the fraction of
    watermarked distances below ``tau``. Returns ``(tpr, tau)``.

    Examples
    --------
    >>> clean = torch.arange(1, 101, dtype=torch.float64) / 100          # 0.01, 0.02, ..., 1.00
    >>> tpr_at_fpr(torch.tensor([0.01, 0.03, 0.5]), clean, fpr=0.05)    # 5 clean ones below 0.06
    (0.6666666666666666, 0.06)
    """
    a, b = _scores(d_marked, "d_marked"), _scores(d_clean, "d_clean")
    if isinstance(fpr, bool) or not (isinstance(fpr, (int, float)) and 0 < fpr < 1):
        raise ValueError(f"fpr must be a float in (0, 1), got {fpr!r}")
    k = math.floor(fpr * len(b))  # how many clean distances may fall below tau
    tau = b.sort().values[k].item() if k < len(b) else math.inf  # flagged: d < tau
    return (a < tau).double().mean().item(), tau


def roc_auc(d_marked: torch.Tensor, d_clean: torch.Tensor) -> float:
    """The area under the ROC curve for distances where small means watermarked: the
    probability that a watermarked distance is below an unwatermarked one (ties count 1/2), the
    Mann-Whitney statistic. 1 is perfect separation, 1/2 chance.

    Examples
    --------
    >>> roc_auc(torch.tensor([0.1, 0.5]), torch.tensor([0.3, 0.7]))
    0.75
    """
    a, b = _scores(d_marked, "d_marked"), _scores(d_clean, "d_clean")
    below = (a[:, None] < b[None, :]).double() + 0.5 * (a[:, None] == b[None, :]).double()  # (Na, Nb)
    return below.mean().item()


# -- helpers ---------------------------------------------------------------------------------
def _size(size) -> tuple[int, int]:
    if not (isinstance(size, (tuple, list)) and len(size) == 2
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in size)):
        raise ValueError(f"size must be (H, W), two positive ints, got {size!r}")
    return int(size[0]), int(size[1])


def _radius(H: int, W: int) -> torch.Tensor:
    """``|k|`` on the unshifted DFT grid, ``(H, W)`` float64 (frequencies in ``-H/2 .. H/2 - 1``)."""
    k1 = torch.fft.fftfreq(H, 1 / H, dtype=torch.float64)  # 0, 1, ..., -1
    k2 = torch.fft.fftfreq(W, 1 / W, dtype=torch.float64)
    return (k1[:, None] ** 2 + k2[None, :] ** 2).sqrt()


def _check_key(key) -> None:
    if not isinstance(key, WatermarkKey):
        raise ValueError(f"key must be a WatermarkKey (see make_key), got {type(key).__name__}")


def _check_images(x, name: str, key: WatermarkKey) -> None:
    if not torch.is_tensor(x) or x.ndim != 4 or tuple(x.shape[1:]) != key.shape:
        got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"{name} must have shape (B, {', '.join(map(str, key.shape))}) like the key, got {got}")
    check_finite(x, name)


def _scores(d, name: str) -> torch.Tensor:
    if not torch.is_tensor(d) or d.ndim != 1 or len(d) == 0:
        got = tuple(d.shape) if torch.is_tensor(d) else type(d).__name__
        raise ValueError(f"{name} must be a non-empty 1-D tensor of distances, got {got}")
    check_finite(d, name)
    return d.detach().double().cpu()
