"""Tiny checkpoints exported once per session with the default lowering, for runtime tests."""

import pytest
import torch

from linexport.export.exporter import export_checkpoint
from linexport.models.checkpoint import save_checkpoint
from tests.export.conftest import ARCHS, make_model


@pytest.fixture(scope="session")
def runtime_exports(tmp_path_factory):
    """arch -> (export dir, fp32 PyTorch model with the same weights)."""
    root = tmp_path_factory.mktemp("runtime-exports")
    out = {}
    for arch in ARCHS:
        model = make_model(arch)
        ckpt = root / f"{arch}.pt"
        save_checkpoint(model, ckpt)
        export_checkpoint(ckpt, root / arch)
        out[arch] = (root / arch, model)
    return out


@pytest.fixture(params=ARCHS)
def arch_export(request, runtime_exports):
    return runtime_exports[request.param]


def torch_greedy(model, prompt_ids, n):
    from linexport.models.sampling import generate_ids

    with torch.no_grad():
        return list(generate_ids(model, prompt_ids, n, temperature=0.0))
