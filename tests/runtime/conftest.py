"""Tiny checkpoints exported once per session with the default lowering, for runtime tests."""

from collections.abc import Mapping

import pytest
import torch

from linexport.export.exporter import export_checkpoint
from linexport.models.checkpoint import save_checkpoint
from tests.export.conftest import ARCHS, make_model


class _LazyExports(Mapping):
    """arch -> (export dir, model), each exported the first time a test asks for it: a test
    module that needs one arch does not pay for exporting all of them."""

    def __init__(self, root):
        self.root, self._done = root, {}

    def __getitem__(self, arch):
        if arch not in ARCHS:
            raise KeyError(arch)
        if arch not in self._done:
            model = make_model(arch)
            ckpt = self.root / f"{arch}.pt"
            save_checkpoint(model, ckpt)
            export_checkpoint(ckpt, self.root / arch)
            self._done[arch] = (self.root / arch, model)
        return self._done[arch]

    def __iter__(self):
        return iter(ARCHS)

    def __len__(self):
        return len(ARCHS)


@pytest.fixture(scope="session")
def runtime_exports(tmp_path_factory):
    """arch -> (export dir, fp32 PyTorch model with the same weights)."""
    return _LazyExports(tmp_path_factory.mktemp("runtime-exports"))


@pytest.fixture(params=ARCHS)
def arch_export(request, runtime_exports):
    return runtime_exports[request.param]


def torch_greedy(model, prompt_ids, n):
    from linexport.models.sampling import generate_ids

    with torch.no_grad():
        return list(generate_ids(model, prompt_ids, n, temperature=0.0))
