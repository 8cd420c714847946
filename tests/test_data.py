"""The bundled digits: shapes, a fixed disjoint split, the 17 grey levels, resizing."""

import pytest
import torch
import torch.nn.functional as F

from diffusion_edu.data import DIGITS_LEVELS, _split_indices, load_digits


def test_split_sizes_and_shapes():
    sizes = {}
    for split in ["train", "val", "test", "all"]:
        x, y = load_digits(split=split)
        assert x.ndim == 4 and x.shape[1:] == (1, 8, 8) and x.dtype == torch.float32
        assert y.shape == (x.shape[0],) and y.dtype == torch.long
        assert set(y.unique().tolist()) <= set(range(10))
        sizes[split] = x.shape[0]
    assert sizes == {"train": 1258, "val": 270, "test": 269, "all": 1797}


def test_splits_are_disjoint_and_cover_everything():
    idx = _split_indices(1797, seed=0)
    parts = [set(idx[s].tolist()) for s in ["train", "val", "test"]]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert parts[0] | parts[1] | parts[2] == set(range(1797))
    # the returned images are those rows of the full set
    x_all, y_all = load_digits(split="all")
    x_test, y_test = load_digits(split="test")
    assert torch.equal(x_test, x_all[idx["test"]]) and torch.equal(y_test, y_all[idx["test"]])


def test_split_is_fixed_by_the_seed():
    a, b = load_digits(split="val")[1], load_digits(split="val")[1]
    assert torch.equal(a, b)
    assert not torch.equal(_split_indices(1797, 0)["val"], _split_indices(1797, 1)["val"])


def test_seventeen_levels_mapped_to_the_value_range():
    x, _ = load_digits(split="all")
    assert x.min().item() == -1.0 and x.max().item() == 1.0
    k = (x + 1) / 2 * (DIGITS_LEVELS - 1)  # back to the grey levels 0..16
    assert torch.equal(k, k.round())
    assert len(k.unique()) == DIGITS_LEVELS
    x01, _ = load_digits(split="all", value_range=(0, 1))
    assert torch.allclose(x01, (x + 1) / 2)


@pytest.mark.parametrize("size", [16, 32])
def test_resize_is_bilinear_interpolation(size):
    x8, _ = load_digits(split="test")
    x, _ = load_digits(size=size, split="test")
    assert x.shape == (269, 1, size, size)
    assert torch.equal(x, F.interpolate(x8, size=(size, size), mode="bilinear", align_corners=False))
    assert x.min() >= -1 and x.max() <= 1  # convex weights stay in range


@pytest.mark.parametrize("kw", [dict(size=12), dict(split="training"), dict(value_range=(1, -1)),
                                dict(value_range=(0.5, 0.5))])
def test_bad_arguments_raise(kw):
    with pytest.raises(ValueError):
        load_digits(**kw)
