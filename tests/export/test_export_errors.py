"""The export's checks of what it is handed raise LinexportError (expected X, got Y, fix), not
AssertionError. Each is driven directly, without tracing a model."""

from types import SimpleNamespace

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from linexport.contract import op_spec
from linexport.errors import LinexportError
from linexport.export import exporter
from linexport.export.lowerings import apply_lowering, function_proto
from linexport.export.opset import convert_opset
from linexport.export.ops.causal_linear_attention import check_nodes
from linexport.models.base import StateSpec


def _model(nodes, functions=(), opset=20):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    return helper.make_model(graph, functions=list(functions),
                             opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(op_spec.DOMAIN, 1)])


def _branch(name="branch"):
    then = helper.make_graph([helper.make_node("Identity", ["x"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1])])
    return helper.make_node("If", ["c"], ["y"], name=name, then_branch=then, else_branch=then)


def _attention_node():
    return helper.make_node(op_spec.OP_TYPE, list(op_spec.INPUTS), list(op_spec.OUTPUTS),
                            domain=op_spec.DOMAIN, num_heads=2)


@pytest.mark.parametrize("chunk", [0, -3, 2.5])
def test_function_body_chunk_must_be_positive(chunk):
    with pytest.raises(LinexportError, match=rf"expected the function body's chunk length to be an int >= 1, got {chunk}.*chunk_size"):
        function_proto(chunk, 20)


def test_unknown_lowering():
    with pytest.raises(LinexportError, match=r"expected a lowering in \['function', 'plugin', 'standard'\], got 'fused'"):
        apply_lowering(_model([_attention_node()]), "fused", 16, "prefill")


def test_opset_upgrade_refuses_subgraphs():
    with pytest.raises(LinexportError, match=r"expected a graph without subgraphs.*got a If node.*keep --opset 20"):
        convert_opset(_model([_branch()]), 21)


def test_node_count_must_match_the_op_calls():
    model = _model([_attention_node()])
    check_nodes(model, 1, "prefill")  # one call, one node: fine
    with pytest.raises(LinexportError, match=r"decode graph: expected 2 linexport::CausalLinearAttention node\(s\), "
                                             r"one per call of torch.ops.linexport.causal_linear_attention while tracing, got 1"):
        check_nodes(model, 2, "decode")


@pytest.mark.parametrize("where,make", [
    ("node branch", lambda: _model([_branch()])),
    ("function linexport::Body", lambda: _model([], [helper.make_function(
        op_spec.DOMAIN, "Body", ["x"], ["y"], [_branch()], [helper.make_opsetid("", 20)])])),
])
def test_graphs_must_be_branch_free(tmp_path, where, make):
    with pytest.raises(LinexportError, match=rf"expected a branch-free prefill graph \(no If/Loop/Scan\), got {where}.*torch.where"):
        exporter._save_graph(make(), tmp_path, "prefill", 2**30)
    assert not (tmp_path / "prefill.onnx").exists()


def test_states_must_be_fp32():
    model = SimpleNamespace(arch="odd", state_specs=lambda: [
        StateSpec("0.kv", ("batch", 2, 3, 4), torch.float32, ""),
        StateSpec("1.kv", ("batch", 2, 3, 4), torch.float16, "")])
    with pytest.raises(LinexportError, match=r"expected every state of odd to be float32.*got 1.kv as torch.float16.*state_specs"):
        exporter._check_states(model)
    exporter._check_states(SimpleNamespace(arch="ok", state_specs=lambda: model.state_specs()[:1]))
