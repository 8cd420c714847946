r"""Parallel-beam computed tomography in torch: the Radon transform, its exact adjoint, and
filtered back-projection -- the forward operator of sparse-view CT as an inverse problem.

**The Radon transform.** For an image ``f`` on the plane and an angle ``theta``, the projection
at detector position ``s`` integrates ``f`` along the line at distance ``s`` from the centre,
perpendicular to the direction ``(cos theta, sin theta)``:

.. math::  (Rf)(s, \theta) = \int f\big(s\,(\cos\theta, \sin\theta) + u\,(-\sin\theta, \cos\theta)\big)\,du .

Discretely (:func:`radon`): rotate the ``N x N`` image by ``theta`` about its centre pixel
``c = N // 2`` with bilinear interpolation and sum its rows, one detector bin per column. This
is the convention of ``skimage.transform.radon(image, theta, circle=True)``: images must be zero
outside the inscribed circle, sinograms are ``(detector N, angles A)`` and angles are in
degrees. The operator is linear and differentiable (``grid_sample``), so gradients of a
measurement loss flow through it, as diffusion posterior sampling needs.

**The adjoint** (back-projection, :func:`radon_adjoint`) is computed as the vector-Jacobian
product of the discrete operator, so ``<R x, y> = <x, R^T y>`` holds to round-off.

**Filtered back-projection** (:func:`fbp`): the inverse of the continuous transform is
``f = R^T (h * Rf)`` with the ramp filter ``|omega|`` applied along ``s`` (the central slice
theorem). As in ``skimage.transform.iradon`` (Kak & Slaney, 1988, Ch. 3, Eq. 61), the ramp is
built as the Fourier transform of its band-limited spatial kernel (which removes the DC bias of a
sampled ``|omega|``), applied on a zero-padded sinogram; each filtered projection is smeared back
across the image by linear interpolation, summed over angles and scaled by ``pi / (2 A)``.

**Phantoms made in code** (:func:`shepp_logan`, :func:`ellipse_phantoms`): sums of constant
ellipses, the test objects of Shepp & Logan (1974); values are attenuations in ``[0, 1]``, zero
outside the inscribed circle.

**Image quality** (:func:`psnr`, :func:`ssim`): the peak signal-to-noise ratio
``10 log10(L^2 / MSE)`` for a data range ``L``, and the structural similarity of Wang et al. (2004)
with a Gaussian window, the mean over the pixels whose window lies inside the image.

**Sparse-view CT as posterior sampling** (:func:`ct_posterior_sample`). With few views, ``R`` has
a large null space and FBP fills it with streaks. A diffusion prior ``p(x)`` and the measurement
``y = R mu(x) + sigma_y z`` (``mu(x)`` the attenuation, an affine map of the model's data range onto
``[0, 1]``) define the posterior ``p(x | y)``; two mechanisms push the sampler towards it:

- DPS (Chung et al., 2023; :func:`diffusion_edu.guidance.dps`): the gradient of
  ``||y - R mu(x0_hat(x_t))||^2`` through the network, added to the score;
- a data-consistency step in the spirit of Song, Shen, Xing & Ermon (2022) (:func:`data_consistency`,
  :func:`data_consistent`): at every step Tweedie's ``x0_hat`` is replaced by the solution of the
  proximal problem

  .. math::  \mu^\star = \arg\min_\mu \|R \mu - y\|^2 + \lambda \|\mu - \mu(\hat x_0)\|^2 ,

  i.e. ``(R^T R + lambda I) mu = R^T y + lambda mu(x0_hat)`` with ``mu`` restricted to the inscribed
  circle (the known support), solved approximately by a few conjugate-gradient iterations started at
  ``mu(x0_hat)``, then clipped to ``[0, 1]`` (non-negative attenuation). ``lambda -> inf`` leaves ``x0_hat`` unchanged;
  ``lambda = 0`` moves it to the nearest least-squares fit within the iterations' Krylov space.
  The sampler then continues from the corrected ``x0_hat`` (an ancestral step re-noises it). Song
  et al. (2022) instead mix a noised sinogram into ``x_t`` in the transform domain; the correction of
  ``x0_hat`` by conjugate gradients is the variant of the decomposed diffusion sampler (Chung, Lee &
  Ye, 2024).
"""

from __future__ import annotations

import math

from typing import Callable

import torch
import torch.nn.functional as F

from .denoiser import Denoiser, clip_x0
from .guidance import dps
from .samplers import ddpm_ancestral
from .utils import append_dims, check_finite

__all__ = ["radon", "radon_adjoint", "fbp", "ramp_filter", "shepp_logan", "ellipse_phantoms", "inscribed_circle",
           "psnr", "ssim", "ct_operator", "data_consistency", "data_consistent", "ct_posterior_sample"]


def radon(images: torch.Tensor, angles) -> torch.Tensor:
    """Sinograms ``(B, 1, N, A)`` of images ``(B, 1, N, N)`` at ``angles`` (degrees, ``A`` of them).

    Examples
    --------
    >>> x = torch.zeros(1, 1, 9, 9); x[0, 0, 4, 4] = 1.0   # a point at the centre
    >>> s = radon(x, [0.0, 90.0])
    >>> s.shape, s[0, 0, :, 0].tolist() == s[0, 0, :, 1].tolist() == [0, 0, 0, 0, 1, 0, 0, 0, 0]
    (torch.Size([1, 1, 9, 2]), True)
    """
    x = _check_images(images)
    theta = _check_angles(angles, x.device)
    B, _, N, _ = x.shape
    A = len(theta)
    grid = _rotation_grid(theta, N, x.dtype, x.device)  # (A, N, N, 2)
    rotated = F.grid_sample(x.repeat_interleave(A, 0), grid.repeat(B, 1, 1, 1), mode="bilinear",
                            padding_mode="zeros", align_corners=True)  # (B A, 1, N, N)
    proj = rotated.sum(2)  # (B A, 1, N): the sum over the rows, one bin per column
    return proj.reshape(B, A, N).transpose(1, 2).unsqueeze(1)  # (B, 1, N, A)


def radon_adjoint(sinograms: torch.Tensor, angles) -> torch.Tensor:
    """Back-projection ``R^T y`` ``(B, 1, N, N)``: the exact adjoint of :func:`radon` for
    sinograms ``(B, 1, N, A)`` (a vector-Jacobian product, so ``<R x, y> = <x, R^T y>``)."""
    y = _check_sinograms(sinograms, angles)
    B, _, N, _ = y.shape
    with torch.enable_grad():
        x = torch.zeros(B, 1, N, N, dtype=y.dtype, device=y.device, requires_grad=True)
        (grad,) = torch.autograd.grad(radon(x, angles), x, grad_outputs=y, create_graph=y.requires_grad)
    return grad


def ramp_filter(size: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """The ramp filter ``|omega|`` on ``size`` (even) frequencies, as the FFT of the band-limited
    spatial kernel ``h(0) = 1/4``, ``h(n) = -1 / (pi n)^2`` for odd ``n``, ``0`` for even ``n != 0``
    (Kak & Slaney, Eq. 61), times 2 -- the filter of ``skimage.transform.iradon(filter_name="ramp")``."""
    if not isinstance(size, int) or size < 2 or size % 2:
        raise ValueError(f"size must be an even int >= 2, got {size!r}")
    n = torch.cat([torch.arange(1, size // 2 + 1, 2), torch.arange(size // 2 - 1, 0, -2)]).to(dtype)
    h = torch.zeros(size, dtype=dtype)
    h[0] = 0.25
    h[1::2] = -1.0 / (math.pi * n) ** 2
    return (2 * torch.fft.fft(h).real).to(device)


def fbp(sinograms: torch.Tensor, angles) -> torch.Tensor:
    """Filtered back-projection ``(B, 1, N, N)`` of sinograms ``(B, 1, N, A)`` taken at ``angles``
    (degrees); zero outside the inscribed circle.

    Examples
    --------
    >>> yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    >>> disc = (((yy - 16) ** 2 + (xx - 16) ** 2) < 64).double()[None, None]
    >>> angles = torch.arange(180.0)
    >>> rec = fbp(radon(disc, angles), angles)
    >>> bool((rec - disc).abs().mean() < 0.05)
    True
    """
    y = _check_sinograms(sinograms, angles)
    theta = _check_angles(angles, y.device)
    B, _, N, A = y.shape
    # the sinogram padded as skimage pads a circle sinogram, then to a power of two (>= 64)
    diagonal = int(math.ceil(math.sqrt(2) * N))
    size = max(64, int(2 ** math.ceil(math.log2(2 * diagonal))))
    proj = F.pad(y[:, 0].transpose(1, 2), (0, size - N))  # (B, A, size)
    # N + 1 bins: a pixel on the circle's edge (distance c = N // 2 for even N) reads bin N, which
    # the filter fills even though the sinogram has only N
    filt = torch.fft.ifft(torch.fft.fft(proj, dim=-1) * ramp_filter(size, y.dtype, y.device), dim=-1).real[..., :N + 1]
    # smear back: the pixel at offsets (i, j) from the centre meets projection a at s = j cos - i sin
    c = N // 2
    offs = torch.arange(N, dtype=y.dtype, device=y.device) - c
    i, j = torch.meshgrid(offs, offs, indexing="ij")  # (N, N) row and column offsets
    rad = theta * (math.pi / 180)
    s = j[None] * torch.cos(rad)[:, None, None] - i[None] * torch.sin(rad)[:, None, None] + c  # (A, N, N) bin index
    lo = torch.floor(s)
    w = s - lo
    lo = lo.long()

    def take(k):  # filt[b, a, k] with zeros outside 0..N
        inside = (k >= 0) & (k <= N)
        vals = torch.gather(filt, 2, k.clamp(0, N).reshape(1, A, N * N).expand(B, A, N * N))
        return vals.reshape(B, A, N, N) * inside

    rec = ((1 - w) * take(lo) + w * take(lo + 1)).sum(1) * (math.pi / (2 * A))  # (B, N, N)
    rec = rec * ((i**2 + j**2) <= c**2)
    return rec.unsqueeze(1)


# -- phantoms ---------------------------------------------------------------------------------
# the modified Shepp-Logan phantom (Toft, 1996, Table B.3; Shepp & Logan, 1974, with higher contrast):
# value, semi-axis along x, semi-axis along y, centre x, centre y, rotation (degrees, anticlockwise)
_SHEPP_LOGAN = (
    (1.0, 0.69, 0.92, 0.0, 0.0, 0.0), (-0.8, 0.6624, 0.874, 0.0, -0.0184, 0.0),
    (-0.2, 0.11, 0.31, 0.22, 0.0, -18.0), (-0.2, 0.16, 0.41, -0.22, 0.0, 18.0),
    (0.1, 0.21, 0.25, 0.0, 0.35, 0.0), (0.1, 0.046, 0.046, 0.0, 0.1, 0.0),
    (0.1, 0.046, 0.046, 0.0, -0.1, 0.0), (0.1, 0.046, 0.023, -0.08, -0.605, 0.0),
    (0.1, 0.023, 0.023, 0.0, -0.606, 0.0), (0.1, 0.023, 0.046, 0.06, -0.605, 0.0),
)


def inscribed_circle(size: int, device=None) -> torch.Tensor:
    """The boolean mask ``(size, size)`` of the pixels ``(i - c)^2 + (j - c)^2 <= c^2``, ``c = size // 2``:
    the field of view of :func:`radon` and :func:`fbp`."""
    _check_size(size)
    r = torch.arange(size, device=device) - size // 2
    return (r[:, None] ** 2 + r[None, :] ** 2) <= (size // 2) ** 2


def shepp_logan(size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The modified Shepp-Logan head phantom ``(1, 1, size, size)``, values in ``[0, 1]`` (skull 1,
    brain 0.2, ventricles 0), zero outside the inscribed circle.

    Examples
    --------
    >>> x = shepp_logan(64)
    >>> x.shape, float(x.min()), float(x.max()), round(float(x[0, 0, 32, 32]), 2)
    (torch.Size([1, 1, 64, 64]), 0.0, 1.0, 0.2)
    """
    _check_size(size)
    return _ellipses(torch.tensor(_SHEPP_LOGAN, dtype=torch.float64)[None], size).to(dtype)


def ellipse_phantoms(n: int, size: int, *, generator: torch.Generator | None = None,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``n`` random Shepp-Logan-like phantoms ``(n, 1, size, size)`` in ``[0, 1]``: an outer ellipse of
    value 1 (the skull), an inner one of value 0.2-0.5 (tissue), and 2-4 small ellipses inside that
    add or remove 0.15-0.5 (lesions, ventricles); clipped to ``[0, 1]``, zero outside the circle.

    Examples
    --------
    >>> x = ellipse_phantoms(3, 32, generator=torch.Generator().manual_seed(0))
    >>> x.shape, bool(x.min() >= 0), bool(x.max() <= 1), bool(x[:, 0, 0, 0].eq(0).all())
    (torch.Size([3, 1, 32, 32]), True, True, True)
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    _check_size(size)
    u = lambda *shape: torch.rand(shape, generator=generator, dtype=torch.float64)  # noqa: E731
    rows = torch.zeros(n, 6, 6, dtype=torch.float64)  # 6 ellipses per image, unused ones of value 0
    a, b, rot = 0.72 + 0.16 * u(n), 0.78 + 0.14 * u(n), 180 * u(n)  # the skull
    inner = 0.2 + 0.3 * u(n)  # tissue value
    rows[:, 0] = torch.stack([torch.ones(n), a, b, torch.zeros(n), torch.zeros(n), rot], 1)
    rows[:, 1] = torch.stack([inner - 1, 0.88 * a, 0.88 * b, torch.zeros(n), torch.zeros(n), rot], 1)
    count = 2 + (3 * u(n)).long()  # 2-4 features
    for k in range(4):
        r, ang = 0.45 * u(n).sqrt(), 2 * math.pi * u(n)  # centre inside radius 0.45
        sign = torch.where(u(n) < 0.5, -1.0, 1.0)
        feat = torch.stack([sign * (0.15 + 0.35 * u(n)), 0.08 + 0.2 * u(n), 0.08 + 0.2 * u(n),
                            r * torch.cos(ang), r * torch.sin(ang), 180 * u(n)], 1)
        rows[:, 2 + k] = feat * (k < count).double()[:, None]
    return _ellipses(rows, size).to(dtype)


# -- image quality -----------------------------------------------------------------------------
def psnr(x: torch.Tensor, ref: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    r"""Peak signal-to-noise ratio per image ``(B,)`` in dB: ``10 log10(L^2 / MSE)``, the MSE over all
    entries of each image, ``L = data_range`` (2 for data in ``[-1, 1]``).

    Examples
    --------
    >>> ref = torch.zeros(1, 1, 4, 4)
    >>> psnr(ref + 0.02, ref).round(decimals=3)   # MSE 4e-4: 10 log10(4 / 4e-4) = 40 dB
    tensor([40.])
    """
    _check_pair(x, ref)
    _check_range(data_range)
    mse = (x.double() - ref.double()).pow(2).flatten(1).mean(1)  # (B,)
    return (10 * torch.log10(data_range**2 / mse)).to(x.dtype)


def ssim(x: torch.Tensor, ref: torch.Tensor, data_range: float = 2.0, *, sigma: float = 1.5) -> torch.Tensor:
    r"""Structural similarity (Wang, Bovik, Sheikh & Simoncelli, 2004) per image ``(B,)``.

    With local means ``mu``, variances ``s^2`` and covariance ``s_xr`` under a Gaussian window of
    standard deviation ``sigma`` (truncated at ``3.5 sigma``: 11 x 11 pixels for ``sigma = 1.5``),

    .. math::  \mathrm{SSIM} = \frac{(2 \mu_x \mu_r + C_1)(2 s_{xr} + C_2)}
                                   {(\mu_x^2 + \mu_r^2 + C_1)(s_x^2 + s_r^2 + C_2)},
               \quad C_1 = (0.01 L)^2,\ C_2 = (0.03 L)^2 ,

    averaged over the positions whose window lies inside the image (and over channels). This is
    ``skimage.metrics.structural_similarity(x, ref, data_range=L, gaussian_weights=True, sigma=sigma,
    use_sample_covariance=False)``. The image must be at least as large as the window; for tiny images
    pass a smaller ``sigma``.

    Examples
    --------
    >>> ref = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    >>> ssim(ref, ref, 1.0), bool(ssim(ref, ref.flip(-1), 1.0).max() < 0.5)
    (tensor([1., 1.]), True)
    """
    _check_pair(x, ref)
    _check_range(data_range)
    if isinstance(sigma, bool) or not (isinstance(sigma, (int, float)) and 0 < sigma < math.inf):
        raise ValueError(f"sigma must be a float > 0, got {sigma!r}")
    radius = int(3.5 * sigma + 0.5)  # scipy's gaussian_filter with truncate=3.5
    if min(x.shape[-2:]) < 2 * radius + 1:
        raise ValueError(f"x must be at least {2 * radius + 1} pixels wide for sigma={sigma} "
                         f"(a {2 * radius + 1}-pixel window), got {tuple(x.shape[-2:])}")
    k = torch.arange(-radius, radius + 1, dtype=torch.float64)
    w = torch.exp(-k**2 / (2 * sigma**2))
    w = w / w.sum()
    B, C, H, W = x.shape

    def blur(img):  # separable Gaussian filter, 'valid' positions only: (B C, 1, H - 2r, W - 2r)
        img = F.conv2d(img.reshape(B * C, 1, H, W), w.view(1, 1, -1, 1))
        return F.conv2d(img, w.view(1, 1, 1, -1))

    a, r = x.double(), ref.double()
    mu_a, mu_r = blur(a), blur(r)
    var_a, var_r = blur(a * a) - mu_a**2, blur(r * r) - mu_r**2
    cov = blur(a * r) - mu_a * mu_r
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_a * mu_r + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_r**2 + c1) * (var_a + var_r + c2))
    return s.reshape(B, -1).mean(1).to(x.dtype)  # (B,)


# -- posterior sampling for sparse-view CT -------------------------------------------------------
def ct_operator(angles, value_range: tuple[float, float] = (-1.0, 1.0)) -> Callable[[torch.Tensor], torch.Tensor]:
    """The measurement operator ``A(x) = R mu(x)`` of images ``x`` ``(B, 1, N, N)`` in the model's data
    range ``(lo, hi)``, whose attenuation is ``mu(x) = (x - lo) / (hi - lo)`` (``lo``: air, 0), to sinograms
    ``(B, 1, N, A)``; for :func:`diffusion_edu.guidance.measure` and :func:`~diffusion_edu.guidance.dps`.

    Examples
    --------
    >>> A = ct_operator([0.0, 90.0])
    >>> A(torch.full((1, 1, 8, 8), -1.0)).abs().max().item()   # air projects to 0
    0.0
    """
    _check_angles(angles, "cpu")
    lo, hi = _check_value_range(value_range)

    def A(x: torch.Tensor) -> torch.Tensor:
        return radon((x - lo) / (hi - lo), angles)  # (B, 1, N, A)

    return A


def data_consistency(
    x0: torch.Tensor, sinograms: torch.Tensor, angles, *, lam: float = 0.1, iters: int = 5,
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> torch.Tensor:
    r"""Move images ``x0`` ``(B, 1, N, N)`` towards the measurement set of ``sinograms`` ``(B, 1, N, A)``:
    ``iters`` conjugate-gradient iterations on ``(R^T R + lam I) mu = R^T y + lam mu(x0)`` started at
    ``mu(x0)`` (the proximal step of the module docstring) with ``mu`` restricted to the inscribed circle (the
    known support: ``R`` is applied to ``M mu``, ``M`` the mask), then ``mu`` clipped to ``[0, 1]``; returned
    in the data range. Computed in float64 (conjugate gradients on a singular system lose accuracy in
    float32), returned in ``x0``'s dtype.

    Examples
    --------
    >>> angles = [0.0, 60.0, 120.0]
    >>> truth = ellipse_phantoms(2, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    >>> y, x0 = ct_operator(angles)(truth), torch.zeros_like(truth)
    >>> before = (ct_operator(angles)(x0) - y).norm()
    >>> after = (ct_operator(angles)(data_consistency(x0, y, angles, lam=0.0, iters=20)) - y).norm()
    >>> bool(after < 0.1 * before)
    True
    """
    check_finite(x0, "x0")
    _check_images(x0)
    y = _check_sinograms(sinograms, angles)
    if y.shape[0] != x0.shape[0] or y.shape[2] != x0.shape[2]:
        raise ValueError(f"sinograms must have shape ({x0.shape[0]}, 1, {x0.shape[2]}, A) to match x0 "
                         f"{tuple(x0.shape)}, got {tuple(y.shape)}")
    lam, iters = _check_lam_iters(lam, iters)
    lo, hi = _check_value_range(value_range)
    circle = inscribed_circle(x0.shape[-1], x0.device)  # (N, N): the support, known
    mu0 = (x0.detach().double() - lo) / (hi - lo) * circle  # (B, 1, N, N) attenuation, float64 for CG
    y = y.double()

    def normal(v):  # (M R^T R M + lam I) v, M the support mask
        return radon_adjoint(radon(v * circle, angles), angles) * circle + lam * v

    mu = _conjugate_gradient(normal, radon_adjoint(y, angles) * circle + lam * mu0, mu0, iters)
    mu = mu.clamp(0, 1) * circle  # non-negative attenuation, below the data range's top
    return (lo + (hi - lo) * mu).to(x0.dtype)


def data_consistent(
    denoiser: Denoiser, sinograms: torch.Tensor, angles, *, lam: float = 0.1, iters: int = 5,
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> Denoiser:
    """The Denoiser whose ``x0_hat`` is ``denoiser``'s corrected by :func:`data_consistency`; any sampler
    then continues from the corrected estimate (prediction ``"x0"``, like
    :func:`~diffusion_edu.denoiser.clip_x0`). ``sinograms`` ``(B, 1, N, A)``: one per example."""
    if not isinstance(denoiser, Denoiser):
        raise ValueError(f"denoiser must be a Denoiser, got {type(denoiser).__name__}")
    _check_sinograms(sinograms, angles)
    _check_lam_iters(lam, iters)
    _check_value_range(value_range)

    def consistent_x0(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return data_consistency(denoiser.x0(x, t), sinograms, angles, lam=lam, iters=iters, value_range=value_range)

    consistent_x0.__name__ = f"data_consistent(lam={lam:g}, iters={iters})"
    return Denoiser(consistent_x0, denoiser.schedule, "x0")


def ct_posterior_sample(
    denoiser: Denoiser, sinograms: torch.Tensor, angles, ts: torch.Tensor, *, sigma_y: float,
    zeta: float | None = 1.0, data_consistency: bool = True, lam: float = 0.1, iters: int = 5,
    value_range: tuple[float, float] = (-1.0, 1.0), generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""One posterior sample ``(B, 1, N, N)`` (in the data range) per sinogram ``(B, 1, N, A)``, by
    ancestral sampling on ``ts`` with the prior ``denoiser`` (its ``x0_hat`` clipped to the data range),

    - guided by DPS with ``||y - R mu(x0_hat)||^2`` (:func:`~diffusion_edu.guidance.dps`; ``zeta`` its
      step size, None for the weight ``1 / (2 sigma_y^2)``, 0 for no DPS), and
    - with ``data_consistency``, ``x0_hat`` corrected at every step by :func:`data_consistency`
      (``lam``, ``iters``), so that the last step returns a corrected estimate.

    For several samples per measurement repeat the sinograms (``sinograms.repeat_interleave(K, 0)``).
    ``sigma_y`` is the measurement noise's standard deviation per sinogram entry: a sample should leave a
    residual of about ``sigma_y`` per entry; far less means it fits the noise.

    Examples
    --------
    >>> from diffusion_edu import GaussianMixture, DDPMSchedule, alphas_cumprod, ddpm_betas, time_grid
    >>> sched = DDPMSchedule(alphas_cumprod(ddpm_betas(100)))
    >>> prior = GaussianMixture(torch.zeros(1, 64), stds=0.5).denoiser(sched)   # N(0, 0.25 I) on 8x8
    >>> den = Denoiser(lambda x, t: prior.x0(x.flatten(1), t).view_as(x), sched, "x0")
    >>> truth = ellipse_phantoms(2, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    >>> angles = [0.0, 45.0, 90.0, 135.0]
    >>> y = ct_operator(angles)(truth)
    >>> x = ct_posterior_sample(den, y, angles, time_grid(sched, 10, "leading"), sigma_y=0.05, zeta=0.0,
    ...                         generator=torch.Generator().manual_seed(0))
    >>> x.shape, bool((ct_operator(angles)(x) - y).norm() < 0.5 * y.norm())
    (torch.Size([2, 1, 8, 8]), True)
    """
    if not isinstance(denoiser, Denoiser):
        raise ValueError(f"denoiser must be a Denoiser, got {type(denoiser).__name__}")
    y = _check_sinograms(sinograms, angles)
    lo, hi = _check_value_range(value_range)
    if zeta is not None and (isinstance(zeta, bool) or not (isinstance(zeta, (int, float)) and 0 <= zeta < math.inf)):
        raise ValueError(f"zeta must be None or a finite float >= 0, got {zeta!r}")
    if not isinstance(data_consistency, bool):
        raise ValueError(f"data_consistency must be a bool, got {data_consistency!r}")
    model = clip_x0(denoiser, (lo, hi))
    if zeta != 0:
        model = dps(model, y, ct_operator(angles, (lo, hi)), sigma_y=sigma_y, zeta=zeta)
    elif isinstance(sigma_y, bool) or not (isinstance(sigma_y, (int, float)) and 0 < sigma_y < math.inf):
        raise ValueError(f"sigma_y must be a finite float > 0, got {sigma_y!r}")
    if data_consistency:
        model = data_consistent(model, y, angles, lam=lam, iters=iters, value_range=(lo, hi))
    B, _, N, _ = y.shape
    x_T = denoiser.schedule.prior_sample((B, 1, N, N), generator).to(y.device, y.dtype)
    return ddpm_ancestral(model, x_T, ts, generator=generator)


# -- helpers ----------------------------------------------------------------------------------
def _rotation_grid(theta: torch.Tensor, N: int, dtype, device) -> torch.Tensor:
    """``grid_sample`` coordinates ``(A, N, N, 2)``: output pixel (row y, column x) reads the input
    at column ``cos(x - c) + sin(y - c) + c`` and row ``-sin(x - c) + cos(y - c) + c``."""
    c = N // 2
    r = torch.arange(N, dtype=dtype, device=device) - c
    y, x = torch.meshgrid(r, r, indexing="ij")  # (N, N)
    rad = theta.to(dtype) * (math.pi / 180)
    cos, sin = torch.cos(rad)[:, None, None], torch.sin(rad)[:, None, None]
    col = cos * x + sin * y + c  # (A, N, N)
    row = -sin * x + cos * y + c
    # normalise to [-1, 1] with align_corners=True: -1 is pixel 0, +1 is pixel N - 1
    return torch.stack([2 * col / (N - 1) - 1, 2 * row / (N - 1) - 1], dim=-1)


def _check_images(images) -> torch.Tensor:
    if not torch.is_tensor(images) or images.ndim != 4 or images.shape[1] != 1 or images.shape[2] != images.shape[3]:
        got = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"images must be square single-channel images (B, 1, N, N), got {got}")
    if images.shape[2] < 2 or not images.is_floating_point():
        raise ValueError(f"images must be floating point with N >= 2, got {images.dtype} {tuple(images.shape)}")
    if not torch.isfinite(images).all():
        raise ValueError("images must be finite")
    return images


def _check_angles(angles, device) -> torch.Tensor:
    theta = torch.as_tensor(angles, dtype=torch.float64)
    if theta.ndim != 1 or len(theta) == 0 or not torch.isfinite(theta).all() or (theta < 0).any() or (theta >= 360).any():
        raise ValueError(f"angles must be a non-empty 1-D list of degrees in [0, 360), got {angles!r:.80}")
    return theta.to(device)


def _check_sinograms(sinograms, angles) -> torch.Tensor:
    theta = _check_angles(angles, "cpu")
    if not torch.is_tensor(sinograms) or sinograms.ndim != 4 or sinograms.shape[1] != 1 or \
            sinograms.shape[3] != len(theta) or not sinograms.is_floating_point():
        got = tuple(sinograms.shape) if torch.is_tensor(sinograms) else type(sinograms).__name__
        raise ValueError(f"sinograms must be floating point (B, 1, N, A) with A = {len(theta)} angles, got {got}")
    if not torch.isfinite(sinograms).all():
        raise ValueError("sinograms must be finite")
    return sinograms


def _ellipses(rows: torch.Tensor, size: int) -> torch.Tensor:
    """Images ``(n, 1, size, size)`` from ``rows`` ``(n, k, 6)`` of ``(value, a, b, cx, cy, degrees)``: the
    sum of the values of the ellipses containing each pixel, on the coordinates ``X = (j - c) / c``,
    ``Y = (c - i) / c`` (``c = size // 2``; the unit disc is the inscribed circle), clipped to [0, 1]."""
    c = size // 2
    r = (torch.arange(size, dtype=torch.float64) - c) / c
    Y, X = -r[:, None], r[None, :]  # (size, 1), (1, size): y points up
    value, a, b, cx, cy, deg = (append_dims(v, 4) for v in rows.unbind(-1))  # each (n, k, 1, 1)
    rad = deg * (math.pi / 180)
    u = (X - cx) * torch.cos(rad) + (Y - cy) * torch.sin(rad)  # coordinates along the ellipse's axes
    v = -(X - cx) * torch.sin(rad) + (Y - cy) * torch.cos(rad)
    inside = ((u / a) ** 2 + (v / b) ** 2 <= 1).double()  # (n, k, size, size)
    img = (value * inside).sum(1).clamp(0, 1)  # (n, size, size)
    return (img * inscribed_circle(size)).unsqueeze(1)


def _conjugate_gradient(apply, b: torch.Tensor, x: torch.Tensor, iters: int) -> torch.Tensor:
    """``iters`` conjugate-gradient iterations for ``apply(x) = b`` (symmetric positive semi-definite),
    one independent system per example of the batch, from ``x``."""
    dot = lambda u, v: (u * v).flatten(1).sum(1)  # noqa: E731  (B,)
    r = b - apply(x)
    p, rs = r, dot(r, r)
    tol = 1e-20 * rs  # stop at ||r|| <= 1e-10 ||r_0||: beyond, round-off steers p into the null space
    for _ in range(iters):
        Ap = apply(p)
        pAp = dot(p, Ap)
        go = (rs > tol) & (pAp > 0)
        alpha = torch.where(go, rs / pAp.clamp_min(1e-300), torch.zeros_like(rs))  # 0 once solved
        x = x + append_dims(alpha, x.ndim) * p
        r = r - append_dims(alpha, x.ndim) * Ap
        rs_new = dot(r, r)
        beta = torch.where(rs > 0, rs_new / rs.clamp_min(1e-300), torch.zeros_like(rs))
        p, rs = r + append_dims(beta, x.ndim) * p, rs_new
    return x


def _check_size(size) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 2:
        raise ValueError(f"size must be an int >= 2, got {size!r}")


def _check_pair(x, ref) -> None:
    for name, v in (("x", x), ("ref", ref)):
        if not torch.is_tensor(v) or v.ndim != 4 or not v.is_floating_point():
            got = tuple(v.shape) if torch.is_tensor(v) else type(v).__name__
            raise ValueError(f"{name} must be a floating-point (B, C, H, W) tensor, got {got}")
        check_finite(v, name)
    if x.shape != ref.shape:
        raise ValueError(f"x and ref must have the same shape, got {tuple(x.shape)} and {tuple(ref.shape)}")


def _check_range(data_range) -> None:
    if isinstance(data_range, bool) or not (isinstance(data_range, (int, float)) and 0 < data_range < math.inf):
        raise ValueError(f"data_range must be a finite float > 0, got {data_range!r}")


def _check_value_range(value_range) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise ValueError(f"value_range must be a pair (lo, hi), got {value_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"value_range must be finite with lo < hi, got {value_range!r}")
    return lo, hi


def _check_lam_iters(lam, iters) -> tuple[float, int]:
    if isinstance(lam, bool) or not (isinstance(lam, (int, float)) and 0 <= lam < math.inf):
        raise ValueError(f"lam must be a finite float >= 0, got {lam!r}")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters must be a positive int, got {iters!r}")
    return float(lam), iters
