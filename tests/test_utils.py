import pytest
import torch

from diffusion_edu.utils import append_dims, as_batch_time, budget, check_finite, default_device, is_quick, seed


def test_append_dims_shapes_and_values():
    t = torch.arange(3.0)
    assert append_dims(t, 4).shape == (3, 1, 1, 1)
    assert append_dims(t, 1).shape == (3,)
    x = torch.ones(3, 2, 5, 5)
    assert torch.equal((append_dims(t, x.ndim) * x)[:, 1, 2, 3], t)
    with pytest.raises(ValueError, match="target_ndim"):
        append_dims(torch.ones(2, 2), 1)


def test_budget_reads_environment(monkeypatch):
    monkeypatch.setenv("DIFFUSION_EDU_QUICK", "1")
    assert is_quick() and budget(quick=3, full=300) == 3
    monkeypatch.setenv("DIFFUSION_EDU_QUICK", "0")
    assert not is_quick() and budget(quick=3, full=300) == 300
    monkeypatch.delenv("DIFFUSION_EDU_QUICK")
    assert budget(quick=3, full=300) == 300


def test_seed_reproducible_and_validated():
    a = torch.randn(4, generator=seed(7))
    b = torch.randn(4, generator=seed(7))
    c = torch.randn(4, generator=seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="seed"):
        seed(-1)


def test_default_device_is_cpu_without_cuda(monkeypatch):
    """Both branches, whatever this machine has: no CUDA -> CPU, CUDA -> the GPU; and the device
    chosen on this machine holds a tensor."""
    assert torch.zeros(1, device=default_device()).device.type == default_device().type
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_device() == torch.device("cuda")


def test_as_batch_time_and_check_finite():
    assert as_batch_time(0.5, 3).shape == (3,)
    assert torch.equal(as_batch_time(torch.tensor([1.0, 2.0]), 2), torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"t must be a float or a tensor of shape \(3,\)"):
        as_batch_time(torch.ones(2), 3)
    with pytest.raises(ValueError, match="x must be finite"):
        check_finite(torch.tensor([1.0, float("nan")]), "x")
