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
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["radon", "radon_adjoint", "fbp", "ramp_filter"]


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
