import pytest
import torch

from diffusion_edu.nets import TimeMLP, sinusoidal_embedding


def test_shapes_and_time_forms():
    net = TimeMLP(dim=3, hidden=32, depth=2)
    x = torch.randn(7, 3)
    assert net(x, torch.rand(7)).shape == (7, 3)
    assert torch.allclose(net(x, 0.5), net(x, torch.full((7,), 0.5)))


def test_time_changes_the_output_and_gradients_reach_every_parameter():
    net = TimeMLP(dim=2, hidden=16, depth=2)
    x = torch.randn(5, 2)
    assert not torch.allclose(net(x, 0.1), net(x, 0.9))
    net(x, torch.rand(5)).pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_embedding():
    e = sinusoidal_embedding(torch.tensor([0.0, 1.0]), 8)
    assert e.shape == (2, 8)
    assert torch.allclose(e[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    with pytest.raises(ValueError, match="dim must be even"):
        sinusoidal_embedding(torch.zeros(2), 7)


def test_bad_shape():
    with pytest.raises(ValueError, match=r"x must have shape \(B, 2\)"):
        TimeMLP(dim=2)(torch.zeros(4, 3), 0.5)
