"""The on-disk loaders of diffusion_edu.data: tiny fake MNIST / Fashion-MNIST / CIFAR-10 files in
the real formats, read back exactly; clear errors for missing files; a code-running pickle is refused."""

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusion_edu.data import (
    IMAGE_DATASETS,
    load_cifar10,
    load_fashion_mnist,
    load_image_dataset,
    load_mnist,
    read_cifar10_batch,
    read_idx,
)

N_IDX = {"train": 7, "test": 3}  # images per split in the fake idx files
N_CIFAR = 4  # images per fake CIFAR batch


# ---------------------------------------------------------------- writers of the real formats

def _idx_bytes(a: np.ndarray) -> bytes:
    """The idx format: 0x00 0x00 0x08 (uint8) ndim, big-endian uint32 sizes, the data."""
    return bytes([0, 0, 8, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.astype(np.uint8).tobytes()


def _write_idx_set(root: Path, folder: str, rng, gz: bool) -> dict:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    truth = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = rng.integers(0, 256, size=(N_IDX[split], 28, 28), dtype=np.uint8)
        images[0, 0, 0], images[0, 0, 1] = 0, 255  # both ends of the range appear
        labels = rng.integers(0, 10, size=N_IDX[split], dtype=np.uint8)
        for name, a in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
            data = _idx_bytes(a)
            if gz:
                (raw / (name + ".gz")).write_bytes(gzip.compress(data))
            else:
                (raw / name).write_bytes(data)
        truth[split] = (images, labels)
    return truth


def _write_cifar(root: Path, rng, protocol=None, py2=False) -> dict:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    truth = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(N_CIFAR, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=N_CIFAR).tolist()
        d = {b"batch_label": b"fake " + name.encode(), b"labels": labels, b"data": data,
             b"filenames": [b"img%d.png" % i for i in range(N_CIFAR)]}
        with open(folder / name, "wb") as f:
            f.write(_py2_pickle(d)) if py2 else pickle.dump(d, f, protocol=protocol)
        truth[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as f:  # torchvision reads the class names from here
        pickle.dump({"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072}, f)
    return truth


def _py2_pickle(d: dict) -> bytes:
    """A protocol-2 pickle as Python 2's cPickle writes the real CIFAR files: str objects as
    SHORT_BINSTRING / BINSTRING, arrays through ``numpy.core.multiarray._reconstruct``."""
    def s(b: bytes) -> bytes:  # a Python 2 str
        return (b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<I", len(b))) + b

    def i(n: int) -> bytes:
        return b"J" + struct.pack("<i", n)

    def value(v) -> bytes:
        if isinstance(v, bytes):
            return s(v)
        if isinstance(v, list):
            return b"](" + b"".join(value(e) for e in v) + b"e"  # EMPTY_LIST MARK ... APPENDS
        if isinstance(v, int):
            return i(v)
        assert isinstance(v, np.ndarray) and v.dtype == np.uint8 and v.ndim == 2
        dtype = (b"cnumpy\ndtype\n" + s(b"u1") + i(0) + i(1) + b"\x87R"  # dtype('u1', 0, 1)
                 + b"(" + i(3) + s(b"|") + b"NNN" + i(-1) + i(-1) + i(0) + b"tb")  # its state
        return (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + i(0) + b"\x85"
                + s(b"b") + b"\x87R"  # _reconstruct(ndarray, (0,), 'b')
                + b"(" + i(1) + i(v.shape[0]) + i(v.shape[1]) + b"\x86" + dtype + b"\x89"
                + s(v.tobytes()) + b"tb")  # __setstate__((1, shape, dtype, False, data))

    body = b"".join(s(k) + value(v) for k, v in d.items())
    return b"\x80\x02}(" + body + b"u."  # PROTO 2, EMPTY_DICT, MARK, ..., SETITEMS, STOP


def _unit(v: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(v.astype(np.float32)) / 127.5 - 1


# ---------------------------------------------------------------- idx: MNIST and Fashion-MNIST

@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("loader,folder", [(load_mnist, "MNIST"), (load_fashion_mnist, "FashionMNIST")])
def test_idx_round_trip(tmp_path, loader, folder, gz):
    truth = _write_idx_set(tmp_path, folder, np.random.default_rng(0), gz)
    for split in ("train", "test"):
        x, y = loader(tmp_path, split, backend="builtin")
        images, labels = truth[split]
        assert x.shape == (N_IDX[split], 1, 28, 28) and x.dtype == torch.float32
        assert y.shape == (N_IDX[split],) and y.dtype == torch.long
        # exact: v / 127.5 - 1 is the float32 rounding of the true value, same as ours
        assert torch.equal(x[:, 0], _unit(images)) and torch.equal(y, torch.from_numpy(labels).long())
        assert x.min().item() == -1.0 and x.max().item() == 1.0  # 0 and 255 map to the ends
        # the uint8 levels are recovered exactly: (x + 1) * 127.5 is an integer
        assert torch.equal(((x[:, 0] + 1) * 127.5).round().to(torch.uint8), torch.from_numpy(images))


def test_read_idx_header_checks(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "ok").write_bytes(_idx_bytes(a))
    assert np.array_equal(read_idx(tmp_path / "ok"), a)
    (tmp_path / "short").write_bytes(_idx_bytes(a)[:-1])
    with pytest.raises(ValueError, match="data bytes"):
        read_idx(tmp_path / "short")
    (tmp_path / "int32").write_bytes(bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 1) + bytes(4))
    with pytest.raises(ValueError, match="0x08"):
        read_idx(tmp_path / "int32")
    (tmp_path / "junk").write_bytes(b"PK\x03\x04junk")
    with pytest.raises(ValueError, match="not an idx file"):
        read_idx(tmp_path / "junk")


def test_idx_missing_file_is_named(tmp_path):
    _write_idx_set(tmp_path, "MNIST", np.random.default_rng(1), gz=False)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    load_mnist(tmp_path, "train", backend="builtin")  # the train split is still complete
    with pytest.raises(FileNotFoundError, match=r"t10k-labels-idx1-ubyte.*nothing is downloaded"):
        load_mnist(tmp_path, "test", backend="builtin")
    with pytest.raises(FileNotFoundError, match=r"FashionMNIST.*train-images-idx3-ubyte"):
        load_fashion_mnist(tmp_path, "train", backend="builtin")


# ---------------------------------------------------------------- CIFAR-10 pickles

@pytest.mark.parametrize("protocol,py2", [(None, False), (2, False), (5, False), (2, True)])
def test_cifar_round_trip(tmp_path, protocol, py2):
    truth = _write_cifar(tmp_path, np.random.default_rng(2), protocol, py2)
    x, y = load_cifar10(tmp_path, "train", backend="builtin")
    assert x.shape == (5 * N_CIFAR, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.long
    data = np.concatenate([truth[f"data_batch_{i}"][0] for i in range(1, 6)])  # batches in order
    labels = sum((truth[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert torch.equal(y, torch.tensor(labels))
    # a row is 1024 red, 1024 green, 1024 blue values, each plane row-major
    assert torch.equal(x, _unit(data).reshape(-1, 3, 32, 32))
    assert round((x[3, 1, 2, 5].item() + 1) * 127.5) == data[3, 1024 + 2 * 32 + 5]  # green, row 2, col 5
    assert -1 <= x.min().item() and x.max().item() <= 1
    xt, yt = load_cifar10(tmp_path, "test", backend="builtin")
    assert torch.equal(xt, _unit(truth["test_batch"][0]).reshape(-1, 3, 32, 32))
    assert yt.tolist() == truth["test_batch"][1]


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("payload", ["os.system", "builtins.eval", "numpy.load"])
def test_malicious_pickle_is_refused(tmp_path, payload):
    marker = tmp_path / "pwned"
    if payload == "os.system":
        evil = _RunsCode()
        evil.marker = marker
        obj = {b"data": evil, b"labels": [0]}
    elif payload == "builtins.eval":
        class Eval:
            def __reduce__(self):
                return (eval, (f"open({str(marker)!r}, 'w')",))
        obj = {b"data": Eval()}
    else:  # a numpy global that is not one of the few an array needs
        class Load:
            def __reduce__(self):
                return (np.load, (str(marker),))
        obj = {b"data": Load()}
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(obj))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        read_cifar10_batch(path)
    assert not marker.exists()
    # the same file through the loader: refused too
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps(obj))
    with pytest.raises(pickle.UnpicklingError):
        load_cifar10(tmp_path, "test", backend="builtin")
    assert not marker.exists()


def test_cifar_bad_contents_and_missing_files(tmp_path):
    path = tmp_path / "b"
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}))
    with pytest.raises(ValueError, match="uint8"):
        read_cifar10_batch(path)
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}))
    with pytest.raises(ValueError, match="labels"):
        read_cifar10_batch(path)
    _write_cifar(tmp_path, np.random.default_rng(3))
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    load_cifar10(tmp_path, "test", backend="builtin")
    with pytest.raises(FileNotFoundError, match=r"data_batch_4.*nothing is downloaded"):
        load_cifar10(tmp_path, "train", backend="builtin")


# ---------------------------------------------------------------- load_image_dataset

def test_load_image_dataset(tmp_path):
    rng = np.random.default_rng(4)
    truth = _write_idx_set(tmp_path, "MNIST", rng, gz=True)
    _write_idx_set(tmp_path, "FashionMNIST", rng, gz=False)
    _write_cifar(tmp_path, rng)
    for name, n in (("mnist", N_IDX["test"]), ("fashion-mnist", N_IDX["test"]), ("cifar10", N_CIFAR)):
        c, s, k = IMAGE_DATASETS[name]
        x, y = load_image_dataset(name, tmp_path, "test")
        assert x.shape == (n, c, s, s) and y.shape == (n,) and int(y.max()) < k
        x32, y32 = load_image_dataset(name, str(tmp_path), "test", size=32)
        assert x32.shape == (n, c, 32, 32) and torch.equal(y32, y)
        assert -1 <= x32.min().item() and x32.max().item() <= 1  # convex weights stay in range
        x16, _ = load_image_dataset(name, tmp_path, "test", size=16)
        assert x16.shape == (n, c, 16, 16) and -1 <= x16.min().item() and x16.max().item() <= 1
    x, _ = load_image_dataset("mnist", tmp_path, "train")
    assert torch.equal(x[:, 0], _unit(truth["train"][0]))


def test_load_image_dataset_digits_and_errors(tmp_path):
    x, y = load_image_dataset("digits", split="val")
    assert x.shape == (270, 1, 8, 8) and y.shape == (270,)
    assert load_image_dataset("digits", split="test", size=16)[0].shape == (269, 1, 16, 16)
    with pytest.raises(ValueError, match="nothing is downloaded"):
        load_image_dataset("cifar10")
    with pytest.raises(ValueError, match="name must be one of"):
        load_image_dataset("imagenet", tmp_path)
    with pytest.raises(ValueError, match="split must be one of"):
        load_image_dataset("mnist", tmp_path, split="val")
    with pytest.raises(ValueError, match="size must be"):
        load_image_dataset("mnist", tmp_path, size=0)
    with pytest.raises(FileNotFoundError, match=r"MNIST.*train-images-idx3-ubyte.*nothing is downloaded"):
        load_image_dataset("mnist", tmp_path / "empty")
    with pytest.raises(ValueError, match="backend"):
        load_mnist(tmp_path, backend="pil")


# ---------------------------------------------------------------- against torchvision, if present

def test_equals_torchvision(tmp_path, monkeypatch):
    tv = pytest.importorskip("torchvision")
    rng = np.random.default_rng(5)
    _write_idx_set(tmp_path, "MNIST", rng, gz=False)  # torchvision reads the uncompressed files
    _write_idx_set(tmp_path, "FashionMNIST", rng, gz=False)
    _write_cifar(tmp_path, rng, py2=True)
    # the fake CIFAR files cannot have the real files' md5 sums
    monkeypatch.setattr(tv.datasets.cifar, "check_integrity", lambda *a, **k: True)
    for loader in (load_mnist, load_fashion_mnist, load_cifar10):
        for split in ("train", "test"):
            ours = loader(tmp_path, split, backend="builtin")
            theirs = loader(tmp_path, split, backend="torchvision")
            assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])


def test_one_data_module():
    """The loaders live in diffusion_edu.data, which holds the digits too; the old module
    diffusion_edu.datasets (which imported data.py in a circle) is gone."""
    import importlib.util

    import diffusion_edu.data as data

    for name in ("load_digits", "load_mnist", "load_fashion_mnist", "load_cifar10", "load_image_dataset"):
        assert callable(getattr(data, name)) and getattr(data, name).__module__ == "diffusion_edu.data", name
    assert importlib.util.find_spec("diffusion_edu.datasets") is None
