"""The decode graphs are shaped for one token (docs/DESIGN.md, "Attention lowerings"): what ONNX
Runtime runs after its optimizer, counted on graphs exported by the real exporter (linear at two
depths, so that what one layer adds is measured apart from what the graph does once). Guards the
decode-speed work: a linear layer adds at most 30 nodes; a GAU layer writes its state once (two
ring-row scatters, no Where over whole buffers, no Einsum)."""

from __future__ import annotations

import collections

import onnx
import onnxruntime as ort
import pytest
import torch

from linexport.export.exporter import export_checkpoint
from linexport.models import build_model
from linexport.models.checkpoint import save_checkpoint

DEPTHS = {"linear": (1, 2), "flash": (1,)}  # GAU: its one layer is the graph, less what it does once
CONFIGS = {  # the benchmark's shapes (benchmarks/decode_speed.py), small
    "linear": dict(vocab_size=61, d_model=48, n_heads=3, head_dim=16, d_ff=96),
    "flash": dict(vocab_size=61, d_model=48, qk_dim=16, expansion=2.0, chunk_size=8, rotary_dim=8),
}


@pytest.fixture(scope="module")
def optimized(tmp_path_factory):
    """(arch, n_layers) -> op counts of the decode graph ONNX Runtime runs (full optimizer)."""
    root = tmp_path_factory.mktemp("decode-shape")
    result = {}
    for arch, config in CONFIGS.items():
        for layers in DEPTHS[arch]:
            torch.manual_seed(0)
            name = f"{arch}-{layers}"
            save_checkpoint(build_model(arch, dict(config, n_layers=layers)).eval(), root / f"{name}.pt")
            export_checkpoint(root / f"{name}.pt", root / name, lowering="function")
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.intra_op_num_threads = 1
            options.log_severity_level = 3
            options.optimized_model_filepath = str(root / f"{name}-optimized.onnx")
            ort.InferenceSession(str(root / name / "decode.onnx"), options, providers=["CPUExecutionProvider"])
            graph = onnx.load(options.optimized_model_filepath, load_external_data=False).graph
            result[arch, layers] = collections.Counter(n.op_type for n in graph.node)
    return result


def _per_layer(optimized, arch):
    """(op counts one layer adds, op counts of the rest of the graph)."""
    (a, few), (b, more) = ((d, optimized[arch, d]) for d in DEPTHS[arch])
    layer = collections.Counter({op: (more[op] - few[op]) / (b - a) for op in more | few})
    shared = collections.Counter({op: few[op] - a * layer[op] for op in few})
    return layer, shared


def test_linear_decode_layer_is_at_most_30_nodes(optimized):
    layer, shared = _per_layer(optimized, "linear")
    assert sum(layer.values()) <= 30, layer
    assert sum(shared.values()) <= 16, shared  # embedding, rotary tables, final norm, head
    assert layer["SimplifiedLayerNormalization"] == 2, layer  # both RMSNorms fused
    assert layer["Sin"] == layer["Cos"] == 0 and shared["Sin"] == shared["Cos"] == 1, shared  # tables once
    assert not (layer.keys() | shared.keys()) & {"CumSum", "Trilu", "Transpose", "Concat"}, layer


def test_gau_decode_layer_writes_its_state_once(optimized):
    counts = optimized["flash", 1]
    assert counts["ScatterND"] == 2 and not counts["ScatterElements"], counts  # a ring row of k_buf, one of v_buf
    assert counts["Where"] <= 1, counts  # the [B, 1, C] choice of scores, nothing state-sized
    assert not counts.keys() & {"Einsum", "If", "Loop", "Transpose"}, counts
    assert counts["Sin"] == counts["Cos"] <= 2, counts  # rotary and positions: once per step
