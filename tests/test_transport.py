"""Exact W2 through POT against closed forms."""

import numpy as np
import pytest
import torch

from diffusion_edu.transport import w2


def test_one_dimension_equals_sorted_matching(gen):
    """In 1-D the optimal coupling of equal-weight clouds matches the sorted points."""
    x = torch.randn(300, 1, generator=gen, dtype=torch.float64)
    y = 2 * torch.rand(300, 1, generator=gen, dtype=torch.float64) + 1
    expected = ((x.sort(0).values - y.sort(0).values) ** 2).mean().sqrt().item()
    assert w2(x, y) == pytest.approx(expected, rel=1e-9)


def test_translation_symmetry_and_identity(gen):
    x = torch.randn(200, 3, generator=gen)
    shift = torch.tensor([1.0, -2.0, 0.5])
    assert w2(x, x + shift) == pytest.approx(shift.norm().item(), rel=1e-5)  # translation is optimal
    # POT forms |x|^2 + |y|^2 - 2 x.y: round-off ~1e-16 on W2^2, hence ~1e-8 on its root
    assert w2(x, x) == pytest.approx(0.0, abs=1e-6)
    y = torch.randn(150, 3, generator=gen)
    assert w2(x, y) == pytest.approx(w2(y, x), rel=1e-9)


def test_unequal_sizes_and_numpy_input():
    x = np.array([[0.0], [2.0]])
    y = np.array([[1.0]])
    assert w2(x, y) == pytest.approx(1.0)


def test_bad_input():
    with pytest.raises(ValueError, match="same dimension"):
        w2(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"x must have shape \(n, D\)"):
        w2(torch.zeros(3), torch.zeros(3, 1))
    with pytest.raises(ValueError, match="y must be finite"):
        w2(torch.zeros(3, 1), torch.tensor([[0.0], [float("nan")]]))
