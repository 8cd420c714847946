r"""Image data: scikit-learn's bundled handwritten digits, and standard data sets read from disk.

``sklearn.datasets.load_digits`` ships 1,797 greyscale images of the digits 0-9, 8x8 pixels,
each pixel an integer count ``v in {0, 1, ..., 16}`` (17 grey levels; UCI "Optical Recognition of
Handwritten Digits"). The file lies inside the scikit-learn package, so nothing is fetched from
the network. :func:`load_digits` maps the levels affinely onto ``value_range = (lo, hi)``,

.. math::  x = lo + (hi - lo)\, v / 16 ,

so that with the default ``(-1, 1)`` the 17 levels are ``-1, -7/8, ..., 7/8, 1`` (spacing
``1/8``), optionally resizes bilinearly to 16x16 or 32x32, and returns one part of a fixed,
seeded 70 / 15 / 15 split into train, validation and test images.

**MNIST, Fashion-MNIST and CIFAR-10**, for users who have the files, are read from disk by
``load_mnist``, ``load_fashion_mnist``, ``load_cifar10`` and ``load_image_dataset(name, root,
split)``. Nothing is ever downloaded. The files must lie in torchvision's on-disk layout under
``root`` (the layout ``torchvision.datasets.X(root, download=True)`` leaves behind)::

    root/MNIST/raw/train-images-idx3-ubyte[.gz]        (LeCun et al., 1998)
    root/MNIST/raw/train-labels-idx1-ubyte[.gz]
    root/MNIST/raw/t10k-images-idx3-ubyte[.gz]
    root/MNIST/raw/t10k-labels-idx1-ubyte[.gz]
    root/FashionMNIST/raw/...                           (Xiao et al., 2017; same four names)
    root/cifar-10-batches-py/data_batch_1 ... data_batch_5, test_batch   (Krizhevsky, 2009)

Every loader returns ``(x, y)``: ``x`` float32 of shape ``(N, C, H, W)`` and ``y`` int64 of
shape ``(N,)``. The 256 grey levels ``v in {0, ..., 255}`` of the files are mapped affinely onto
``[-1, 1]``, the data range that DDPM (Ho et al., 2020) assumes,

.. math::  x = v / 127.5 - 1 ,

so that ``v = 0`` gives ``-1`` and ``v = 255`` gives ``1`` exactly.

When :mod:`torchvision` is importable, the files are read by ``torchvision.datasets.MNIST``,
``FashionMNIST`` or ``CIFAR10`` with ``download=False``; otherwise (or when torchvision refuses
the files, e.g. only ``.gz`` files are present) by the two short readers below:

- **idx** (MNIST, Fashion-MNIST): a big-endian header ``0x00 0x00 <type> <ndim>``, then
  ``ndim`` big-endian ``uint32`` sizes, then the ``uint8`` data in row-major order; the type
  byte ``0x08`` means ``uint8``. Files may be gzip-compressed (``.gz``).
- **CIFAR-10 python batches**: each file is a pickle of a dict ``{b"data": uint8 array
  (10000, 3072), b"labels": list of 10000 ints, ...}``; a row holds the 1024 red, then the
  1024 green, then the 1024 blue values of a 32x32 image in row-major order, so that
  ``data.reshape(-1, 3, 32, 32)`` is already ``(N, C, H, W)``. A pickle can run arbitrary code
  when loaded, so the reader uses a *restricted* unpickler that resolves only the few numpy
  globals an array needs and refuses every other one with ``pickle.UnpicklingError``.

:func:`load_image_dataset` puts these and the bundled scikit-learn digits
(:func:`load_digits`, no files needed) behind one name; :data:`IMAGE_DATASETS`
gives each set's ``(channels, size, num_classes)``.

The number of grey levels matters for likelihoods: a bits-per-dimension figure on these digits
is a statement about 17-level 8x8 images, not about 256-level CIFAR-10 photographs (see
:func:`diffusion_edu.likelihood.bits_per_dim`).
"""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["load_digits", "DIGITS_LEVELS", "SPLITS", "IMAGE_DATASETS", "load_image_dataset",
           "load_mnist", "load_fashion_mnist", "load_cifar10", "read_idx", "read_cifar10_batch"]

DIGITS_LEVELS = 17  # grey levels 0..16 of the scikit-learn digits
SPLITS = ("train", "val", "test", "all")
_FRACTIONS = (0.70, 0.15, 0.15)


def load_digits(
    size: int = 8, split: str = "train", value_range: tuple[float, float] = (-1.0, 1.0), *,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The scikit-learn digits as ``(images (N, 1, size, size) float32, labels (N,) int64)``.

    Parameters
    ----------
    size : 8 (the original resolution), 16 or 32 (bilinear upsampling with
        ``torch.nn.functional.interpolate(..., align_corners=False)``; the values stay in
        ``value_range`` because bilinear weights are convex, but they are no longer on the 17 levels)
    split : ``"train"`` (1,258 images), ``"val"`` (270), ``"test"`` (269) or ``"all"`` (1,797);
        the three parts are disjoint and fixed by ``seed``
    value_range : ``(lo, hi)``, the values of grey level 0 and grey level 16
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
    lo, hi = (float(s) for s in value_range)
    if not lo < hi:
        raise ValueError(f"value_range must be (lo, hi) with lo < hi, got {value_range!r}")
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

try:  # ndarray.__new__ as pickles of arrays call it
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct


#: name -> (channels, size, num_classes) of the native images
IMAGE_DATASETS: dict[str, tuple[int, int, int]] = {
    "digits": (1, 8, 10),
    "mnist": (1, 28, 10),
    "fashion-mnist": (1, 28, 10),
    "cifar10": (3, 32, 10),
}

_SPLITS = ("train", "test")
_IDX_PREFIX = {"train": "train", "test": "t10k"}
_CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
_NO_DOWNLOAD = "nothing is downloaded: place the files there yourself"


def load_image_dataset(
    name: str, root: str | os.PathLike | None = None, split: str = "train", size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One of :data:`IMAGE_DATASETS` as ``(x (N, C, size, size) float32 in [-1, 1], y (N,) int64)``.

    Parameters
    ----------
    name : ``"digits"`` (scikit-learn's bundled 8x8 digits, no ``root`` needed), ``"mnist"``,
        ``"fashion-mnist"`` or ``"cifar10"`` (these need ``root``; see the module docstring)
    root : folder holding the files in torchvision's layout (ignored for ``"digits"``)
    split : ``"train"`` or ``"test"``; ``"digits"`` also has ``"val"`` (and ``"all"``)
    size : output height and width; ``None`` keeps the native size. For ``"digits"`` it is
        passed to :func:`~diffusion_edu.data.load_digits` (8, 16 or 32); for the others the images
        are resized bilinearly (with antialiasing when shrinking), e.g. MNIST 28 -> 32 for a UNet
        that halves the resolution three times. Bilinear weights are non-negative and sum to one,
        so the values stay in ``[-1, 1]``.

    Examples
    --------
    >>> x, y = load_image_dataset("digits", split="test")
    >>> x.shape, y.shape, IMAGE_DATASETS["digits"]
    (torch.Size([269, 1, 8, 8]), torch.Size([269]), (1, 8, 10))
    >>> load_image_dataset("mnist", root=None)
    Traceback (most recent call last):
    ...
    ValueError: load_image_dataset: 'mnist' is read from files on disk (nothing is downloaded): pass root=..., the folder that holds MNIST/raw/
    """
    if name not in IMAGE_DATASETS:
        raise ValueError(f"name must be one of {tuple(IMAGE_DATASETS)}, got {name!r}")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
        raise ValueError(f"size must be None or a positive int, got {size!r}")
    if name == "digits":
        return load_digits(size or 8, split)
    if root is None:
        where = {"mnist": "MNIST/raw/", "fashion-mnist": "FashionMNIST/raw/",
                 "cifar10": "cifar-10-batches-py/"}[name]
        raise ValueError(
            f"load_image_dataset: {name!r} is read from files on disk (nothing is downloaded): "
            f"pass root=..., the folder that holds {where}"
        )
    loader = {"mnist": load_mnist, "fashion-mnist": load_fashion_mnist, "cifar10": load_cifar10}[name]
    x, y = loader(root, split)
    if size is not None and size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=size < x.shape[-1]).clamp_(-1.0, 1.0)  # clamp: rounding only
    return x, y


def load_mnist(
    root: str | os.PathLike, split: str = "train", *, backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST from ``root/MNIST/raw/`` as ``(x (N, 1, 28, 28) float32 in [-1, 1], y (N,) int64)``.

    ``split="train"`` reads ``train-*`` (60,000 images), ``"test"`` reads ``t10k-*`` (10,000).
    ``backend``: ``"auto"`` (torchvision if importable, else the built-in reader),
    ``"torchvision"`` or ``"builtin"``.
    """
    return _load_idx_dataset(root, "MNIST", split, backend)


def load_fashion_mnist(
    root: str | os.PathLike, split: str = "train", *, backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST from ``root/FashionMNIST/raw/``; same format and API as :func:`load_mnist`."""
    return _load_idx_dataset(root, "FashionMNIST", split, backend)


def load_cifar10(
    root: str | os.PathLike, split: str = "train", *, backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 from ``root/cifar-10-batches-py/`` as ``(x (N, 3, 32, 32) float32 in [-1, 1], y (N,))``.

    ``split="train"`` concatenates ``data_batch_1`` .. ``data_batch_5`` (50,000 images) in that
    order, ``"test"`` reads ``test_batch`` (10,000). ``backend`` as in :func:`load_mnist`.
    """
    _check_split(split)
    use_tv = _use_torchvision(backend)
    folder = Path(root).expanduser() / "cifar-10-batches-py"
    if use_tv:
        import torchvision

        try:
            ds = torchvision.datasets.CIFAR10(str(Path(root).expanduser()), train=split == "train",
                                              download=False)
        except RuntimeError:  # missing or failing its md5 check: let our reader say which
            if backend == "torchvision":
                raise
        else:
            v = torch.as_tensor(np.asarray(ds.data)).permute(0, 3, 1, 2)  # (N, 32, 32, 3) -> (N, 3, 32, 32)
            return _to_unit_range(v), torch.as_tensor(ds.targets, dtype=torch.long)
    paths = [folder / f for f in _CIFAR_FILES[split]]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"CIFAR-10 {split} split: missing {', '.join(missing)} ({_NO_DOWNLOAD})")
    batches = [read_cifar10_batch(p) for p in paths]
    v = torch.cat([b[0] for b in batches])  # (N, 3, 32, 32) uint8
    return _to_unit_range(v), torch.cat([b[1] for b in batches])


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one idx file (``.gz`` or not) into a ``uint8`` array of the shape in its header.

    Examples
    --------
    >>> import tempfile, struct
    >>> f = Path(tempfile.mkdtemp()) / "x-idx3-ubyte"
    >>> _ = f.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">3I", 2, 1, 3) + bytes(range(6)))
    >>> read_idx(f)
    array([[[0, 1, 2]],
    <BLANKLINE>
           [[3, 4, 5]]], dtype=uint8)
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip magic
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an idx file (the magic number must start with two zero bytes)")
    if raw[2] != 0x08:
        raise ValueError(f"{path}: idx type byte must be 0x08 (uint8), got {raw[2]:#04x}")
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} ({int(np.prod(shape))} bytes) "
                         f"but {len(raw) - offset} data bytes follow")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)


def read_cifar10_batch(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one CIFAR-10 python batch with the restricted unpickler.

    Returns ``(images (n, 3, 32, 32) uint8, labels (n,) int64)``. Raises
    ``pickle.UnpicklingError`` if the file asks for any global other than numpy's array
    reconstruction functions (a file that would run code when loaded), and ``ValueError`` naming
    the file if it is not a pickle at all.
    """
    path = Path(path)
    with open(path, "rb") as f:
        # encoding="bytes": the real files are Python 2 pickles whose str objects become bytes
        try:
            d = _RestrictedUnpickler(f, encoding="bytes").load()
        except pickle.UnpicklingError as e:
            if str(e).startswith("refusing"):  # a forbidden global: keep the security error
                raise
            raise ValueError(f"{path}: not a CIFAR-10 python batch (not a readable pickle: {e})") from e
        except (EOFError, ValueError, TypeError, IndexError, KeyError) as e:
            raise ValueError(f"{path}: not a CIFAR-10 python batch (not a readable pickle: {e!r})") from e
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(d).__name__}")
    d = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in d.items()}
    data, labels = d.get("data"), d.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: 'data' must be a uint8 array of shape (n, 3072), got "
                         f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}")
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    if y.shape != (len(data),):
        raise ValueError(f"{path}: {len(data)} images but labels of shape {tuple(y.shape)}")
    x = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32).copy())  # R, G, B planes
    return x, y


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only numpy's array-reconstruction globals."""

    def find_class(self, module: str, name: str):
        fn = _ALLOWED_GLOBALS.get((module, name))
        if fn is None:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: a CIFAR-10 batch needs only numpy arrays"
            )
        return fn


def _latin1_encode(s, encoding="latin1", errors="strict"):
    """``_codecs.encode`` as protocol-2 pickles of ``bytes`` use it, for latin-1 only."""
    if not isinstance(s, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise pickle.UnpicklingError(f"refusing _codecs.encode({type(s).__name__}, {encoding!r})")
    return s.encode("latin1")


def _frombuffer(buf, dtype, shape, order):
    """numpy's ``_frombuffer``, as protocol-5 pickles of arrays use it."""
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order)


_ALLOWED_GLOBALS: dict[tuple[str, str], object] = {
    ("_codecs", "encode"): _latin1_encode,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
for _mod in ("numpy.core", "numpy._core"):  # the module's name before and since numpy 2
    _ALLOWED_GLOBALS[(_mod + ".multiarray", "_reconstruct")] = _reconstruct
    _ALLOWED_GLOBALS[(_mod + ".numeric", "_frombuffer")] = _frombuffer


def _load_idx_dataset(root, folder: str, split: str, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    _check_split(split)
    if _use_torchvision(backend):
        import torchvision

        cls = getattr(torchvision.datasets, folder)  # MNIST or FashionMNIST
        try:
            ds = cls(str(Path(root).expanduser()), train=split == "train", download=False)
        except RuntimeError:  # torchvision wants the uncompressed files; our reader also takes .gz
            if backend == "torchvision":
                raise
        else:
            return _to_unit_range(ds.data[:, None]), ds.targets.long()
    raw = Path(root).expanduser() / folder / "raw"
    prefix = _IDX_PREFIX[split]
    images = read_idx(_find(raw, f"{prefix}-images-idx3-ubyte", folder, split))
    labels = read_idx(_find(raw, f"{prefix}-labels-idx1-ubyte", folder, split))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{raw}: images of shape {images.shape} do not match labels of shape {labels.shape}")
    x = _to_unit_range(torch.from_numpy(images.copy())[:, None])  # (N, 1, 28, 28)
    return x, torch.from_numpy(labels.astype(np.int64))


def _find(raw: Path, name: str, folder: str, split: str) -> Path:
    """``raw/name`` or, failing that, ``raw/name.gz``."""
    for p in (raw / name, raw / (name + ".gz")):
        if p.is_file():
            return p
    raise FileNotFoundError(f"{folder} {split} split: missing {raw / name} (or {name}.gz) ({_NO_DOWNLOAD})")


def _to_unit_range(v: torch.Tensor) -> torch.Tensor:
    """uint8 ``v`` -> float32 ``v / 127.5 - 1`` in ``[-1, 1]``."""
    return v.to(torch.float32).div_(127.5).sub_(1.0).contiguous()


def _check_split(split: str) -> None:
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")


def _use_torchvision(backend: str) -> bool:
    if backend not in ("auto", "torchvision", "builtin"):
        raise ValueError(f"backend must be 'auto', 'torchvision' or 'builtin', got {backend!r}")
    if backend == "builtin":
        return False
    try:
        import torchvision  # noqa: F401  (only whether it imports)
    except ImportError:
        if backend == "torchvision":
            raise
        return False
    return True
