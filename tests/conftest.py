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


TINY_LINEAR = dict(vocab_size=256, d_model=16, n_layers=1, n_heads=2, head_dim=8, d_ff=32)


def tiny_linear_export(root, **export_options):
    """A one-layer linear model saved as ``root/model.pt`` and exported to ``root/out``, for tests
    of the files around an export rather than its numerics. Returns (checkpoint, out)."""
    from linexport.export.exporter import export_checkpoint
    from linexport.models import build_model
    from linexport.models.checkpoint import save_checkpoint

    save_checkpoint(build_model("linear", TINY_LINEAR), root / "model.pt")
    export_checkpoint(root / "model.pt", root / "out", **export_options)
    return root / "model.pt", root / "out"
