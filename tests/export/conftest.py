"""Tiny models, their exports (made once per session: tracing is the slow part) and helpers to
run a lowered graph in ONNX Runtime."""

from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest
import torch

from linexport.export.exporter import export_checkpoint
from linexport.export.lowerings import apply_lowering, with_function_body
from linexport.export.opset import convert_opset
from linexport.contract.op_spec import DEFAULT_OPSET
from linexport.models import build_model
from linexport.models.checkpoint import save_checkpoint
from linexport.models.registry import ARCHS as REGISTRY, TEST_CHUNK

PREFILL_CHUNK = TEST_CHUNK  # the test models' chunk_size: T = 37 spans three chunks, the last partial
DECODE_CHUNK = 1
LOWERINGS = ("function", "plugin", "standard")
DTYPES = ("fp32", "fp16")


ARCHS = tuple(REGISTRY)
KV_CACHE_ARCHS = tuple(name for name, arch in REGISTRY.items() if arch.kv_cache)  # the baselines


def _calls_the_custom_op(arch: str) -> bool:
    from linexport.contract.op_spec import OP_NAME
    from linexport.export.ops import ops_in_model

    return OP_NAME in ops_in_model(build_model(arch, REGISTRY[arch].test_config))


# Only these archs' graphs hold the custom node; for the others, the plugin and function
# lowerings leave the graph byte for byte as traced (nothing to replace), so testing both of them
# would test the same graph twice.
OP_ARCHS = tuple(a for a in ARCHS if _calls_the_custom_op(a))


def lowering_cases(archs=ARCHS):
    """(arch, lowering) pairs that give distinct graphs: every lowering for an arch with the
    custom node, ``function`` and ``standard`` (another opset) for the others."""
    return [pytest.param(a, lo, id=f"{a}-{lo}") for a in archs for lo in LOWERINGS
            if lo != "plugin" or a in OP_ARCHS]


def make_model(arch: str):
    """The registry's tiny model of ``arch`` (odd sizes), randomly initialised, weights scaled up
    so attention is far from uniform (errors then show)."""
    torch.manual_seed(1234)
    model = build_model(arch, REGISTRY[arch].test_config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(3.0)
    return model.eval()


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict:
    """arch -> path of a saved tiny checkpoint."""
    root = tmp_path_factory.mktemp("checkpoints")
    paths = {}
    for arch in ARCHS:
        paths[arch] = root / f"{arch}.pt"
        save_checkpoint(make_model(arch), paths[arch])
    return paths


@pytest.fixture(scope="session")
def models() -> dict:
    """arch -> the fp32 model (the reference) — the same weights as ``checkpoints``."""
    return {arch: make_model(arch) for arch in ARCHS}


class Exports:
    """Export directories per (arch, dtype), made by the real exporter with the ``plugin``
    lowering (the bare node) once per session — tracing is the slow part. The other lowerings
    are derived from them in memory exactly as the exporter derives them."""

    def __init__(self, checkpoints, root):
        self.checkpoints = checkpoints
        self.root = root
        self._dirs = {}

    def dir(self, arch: str, dtype: str):
        key = (arch, dtype)
        if key not in self._dirs:
            out = self.root / f"{arch}-{dtype}"
            export_checkpoint(self.checkpoints[arch], out, lowering="plugin", dtype=dtype)
            self._dirs[key] = out
        return self._dirs[key]

    def lowered(self, arch: str, dtype: str, lowering: str):
        """(prefill, decode) ModelProtos with ``lowering`` applied."""
        out = []
        for name, chunk in (("prefill", PREFILL_CHUNK), ("decode", DECODE_CHUNK)):
            proto = onnx.load(str(self.dir(arch, dtype) / f"{name}.onnx"))
            proto = convert_opset(proto, DEFAULT_OPSET[lowering])
            out.append(apply_lowering(proto, lowering, chunk, name))
        return tuple(out)


@pytest.fixture(scope="session")
def exports(checkpoints, tmp_path_factory) -> Exports:
    return Exports(checkpoints, tmp_path_factory.mktemp("exports"))


def low_precision_model(model):
    import copy

    return copy.deepcopy(model).half()


def ort_session(proto: onnx.ModelProto, lowering: str, graph: str) -> ort.InferenceSession:
    """An ONNX Runtime CPU session of the ``graph`` graph; a plugin-lowered graph gets its
    function body (as verify)."""
    if lowering == "plugin":
        proto = with_function_body(proto, PREFILL_CHUNK if graph == "prefill" else DECODE_CHUNK, graph)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
