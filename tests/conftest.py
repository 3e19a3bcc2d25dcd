import pytest
import torch

# CI machines have 2 cores; tests are many and small, so one thread each is fastest overall.
torch.set_num_threads(1)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| — the relative error used across the suite."""
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
