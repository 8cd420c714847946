r"""Image data that needs no download: scikit-learn's bundled handwritten digits.

``sklearn.datasets.load_digits`` ships 1,797 greyscale images of the digits 0-9, 8x8 pixels,
each pixel an integer count ``v in {0, 1, ..., 16}`` (17 grey levels; UCI "Optical Recognition of
Handwritten Digits"). The file lies inside the scikit-learn package, so nothing is fetched from
the network. :func:`load_digits` maps the levels affinely onto ``scale = (lo, hi)``,

.. math::  x = lo + (hi - lo)\, v / 16 ,

so that with the default ``(-1, 1)`` the 17 levels are ``-1, -7/8, ..., 7/8, 1`` (spacing
``1/8``), optionally resizes bilinearly to 16x16 or 32x32, and returns one part of a fixed,
seeded 70 / 15 / 15 split into train, validation and test images.

MNIST, Fashion-MNIST and CIFAR-10, for users who have the files, are read by
:mod:`diffusion_edu.datasets` (re-exported here): ``load_mnist``, ``load_fashion_mnist``,
``load_cifar10`` and ``load_image_dataset(name, root, split)``. Nothing is ever downloaded.

The number of grey levels matters for likelihoods: a bits-per-dimension figure on these digits
is a statement about 17-level 8x8 images, not about 256-level CIFAR-10 photographs (see
:func:`diffusion_edu.likelihood.bits_per_dim`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["load_digits", "DIGITS_LEVELS", "SPLITS",
           "load_mnist", "load_fashion_mnist", "load_cifar10", "load_image_dataset"]

DIGITS_LEVELS = 17  # grey levels 0..16 of the scikit-learn digits
SPLITS = ("train", "val", "test", "all")
_FRACTIONS = (0.70, 0.15, 0.15)


def load_digits(
    size: int = 8, split: str = "train", scale: tuple[float, float] = (-1.0, 1.0), *,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The scikit-learn digits as ``(images (N, 1, size, size) float32, labels (N,) int64)``.

    Parameters
    ----------
    size : 8 (the original resolution), 16 or 32 (bilinear upsampling with
        ``torch.nn.functional.interpolate(..., align_corners=False)``; the values stay in
        ``scale`` because bilinear weights are convex, but they are no longer on the 17 levels)
    split : ``"train"`` (1,258 images), ``"val"`` (270), ``"test"`` (269) or ``"all"`` (1,797);
        the three parts are disjoint and fixed by ``seed``
    scale : ``(lo, hi)``, the values of grey level 0 and grey level 16
    seed : seed of the permutation that defines the split (keep the default to compare numbers)

    Examples
    --------
    >>> x, y = load_digits(split="test")
    >>> x.shape, y.shape, float(x.min()), float(x.max())
    (torch.Size([269, 1, 8, 8]), torch.Size([269]), -1.0, 1.0)
    >>> load_digits(size=16, split="val")[0].shape
    torch.Size([270, 1, 16, 16])
    """
    if size not in (8, 16, 32):
        raise ValueError(f"size must be 8, 16 or 32, got {size!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    lo, hi = (float(s) for s in scale)
    if not lo < hi:
        raise ValueError(f"scale must be (lo, hi) with lo < hi, got {scale!r}")
    from sklearn.datasets import load_digits as _sklearn_digits  # bundled file, no download

    bunch = _sklearn_digits()
    levels = torch.as_tensor(bunch.images, dtype=torch.float32)  # (1797, 8, 8), values 0..16
    labels = torch.as_tensor(bunch.target, dtype=torch.long)  # (1797,)
    x = lo + (hi - lo) * levels[:, None] / (DIGITS_LEVELS - 1)  # (N, 1, 8, 8)
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    idx = _split_indices(len(x), seed)[split]
    return x[idx].contiguous(), labels[idx]


def _split_indices(n: int, seed: int) -> dict[str, torch.Tensor]:
    """A seeded permutation of ``range(n)`` cut into train / val / test (70 / 15 / 15)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_train = round(_FRACTIONS[0] * n)
    n_val = round(_FRACTIONS[1] * n)
    return {
        "train": perm[:n_train],
        "val": perm[n_train:n_train + n_val],
        "test": perm[n_train + n_val:],
        "all": torch.arange(n),
    }


# Loaders of the datasets on disk (torchvision's layout); imported last: they use load_digits.
from .datasets import load_cifar10, load_fashion_mnist, load_image_dataset, load_mnist  # noqa: E402
