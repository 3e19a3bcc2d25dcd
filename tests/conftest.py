import pytest
import torch

# CI machines have 2 cores; tests are many and small, so one thread each is fastest overall.
torch.set_num_threads(1)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| — the relative error used across the suite."""
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def run_steps(model, ids, state=None, start=0):
    """Feeds ids [B, T] through ``model.step`` one token at a time from position ``start``;
    returns (logits [B, T, V], final state)."""
    B, T = ids.shape
    state = state if state is not None else model.initial_state(B)
    logits = []
    for t in range(T):
        out, state = model.step(ids[:, t], torch.full((B,), start + t), state)
        logits.append(out)
    return torch.stack(logits, 1), state


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
