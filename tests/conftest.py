import pytest
import torch

torch.set_num_threads(1)  # DESIGN.md: one thread is steadier than two on these machines


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)
