"""The attention node alone: each lowering in ONNX Runtime against the naive fp64 loop, and the
`standard` lowering (ONNX Runtime's own LinearAttention kernel, an independent implementation)
against our function body."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from linexport.contract import op_spec
from linexport.export.lowerings import apply_lowering, function_proto
from linexport.export.ops.causal_linear_attention import step_function_proto
from linexport.models.ops.causal_linear_attention import causal_linear_attention, feature_map
from linexport.models.ops.causal_linear_attention.naive import naive_causal_linear_attention
from tests.conftest import rel_err

B, H = 2, 3
_ONNX_TYPES = {torch.float32: TensorProto.FLOAT, torch.float16: TensorProto.FLOAT16}


def single_node(lowering: str, chunk: int, Dk: int, Dv: int, dtype=torch.float32, eps=1e-6,
                lowered_as: str = "prefill"):
    """One op node in a graph of its own, lowered as the ``lowered_as`` graph's would be."""
    t = _ONNX_TYPES[dtype]
    node = helper.make_node(op_spec.OP_TYPE, list(op_spec.INPUTS), list(op_spec.OUTPUTS),
                            domain=op_spec.DOMAIN, num_heads=H, eps=eps)
    graph = helper.make_graph(
        [node], "one_node",
        [helper.make_tensor_value_info("query", t, ["B", "T", H * Dk]),
         helper.make_tensor_value_info("key", t, ["B", "T", H * Dk]),
         helper.make_tensor_value_info("value", t, ["B", "T", H * Dv]),
         helper.make_tensor_value_info("past_state", TensorProto.FLOAT, ["B", H, Dk, Dv + 1])],
        [helper.make_tensor_value_info("output", t, ["B", "T", H * Dv]),
         helper.make_tensor_value_info("present_state", TensorProto.FLOAT, ["B", H, Dk, Dv + 1])])
    opset = op_spec.DEFAULT_OPSET[lowering]
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    helper.make_opsetid(op_spec.DOMAIN, 1)])
    model = apply_lowering(model, lowering, chunk, lowered_as)
    onnx.checker.check_model(model, full_check=True)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def inputs(T, Dk, Dv, with_state):
    g = torch.Generator().manual_seed(T * 100 + Dk)
    q = feature_map(torch.randn(B, H, T, Dk, generator=g, dtype=torch.float64), "elu")
    k = feature_map(torch.randn(B, H, T, Dk, generator=g, dtype=torch.float64), "elu")
    v = torch.randn(B, H, T, Dv, generator=g, dtype=torch.float64)
    state = None
    if with_state:
        state = torch.cat([torch.randn(B, H, Dk, Dv, generator=g, dtype=torch.float64),
                           5 * torch.rand(B, H, Dk, 1, generator=g, dtype=torch.float64)], -1)
    return q, k, v, state


def run(session, q, k, v, state, dtype=torch.float32):
    """[B, H, T, D] fp64 tensors -> ORT in the op's [B, T, H*D] layout -> [B, H, T, Dv], state."""
    Bq, Hq, T, _ = q.shape
    Dv = v.shape[-1]
    flat = lambda t: t.transpose(1, 2).reshape(Bq, T, -1).to(dtype).numpy()  # noqa: E731
    past = state if state is not None else torch.zeros(Bq, Hq, q.shape[-1], Dv + 1, dtype=torch.float64)
    o, s = session.run(None, {"query": flat(q), "key": flat(k), "value": flat(v),
                              "past_state": past.float().numpy()})
    assert s.dtype == np.float32
    o = torch.from_numpy(o.astype(np.float32)).view(Bq, T, Hq, Dv).transpose(1, 2)
    return o, torch.from_numpy(s)


@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "past-state"])
@pytest.mark.parametrize("T", [1, 15, 16, 17, 97], ids=lambda t: f"T{t}")
@pytest.mark.parametrize("chunk", [1, 16, 64], ids=lambda c: f"C{c}")
def test_function_body_matches_naive(chunk, T, with_state):
    q, k, v, state = inputs(T, 15, 7, with_state)
    ref_o, ref_s = naive_causal_linear_attention(q, k, v, 1e-6, state)
    o, s = run(single_node("function", chunk, 15, 7), q, k, v, state)
    assert rel_err(o, ref_o) < 1e-5
    assert rel_err(s, ref_s) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "past-state"])
def test_decode_graph_body_matches_naive_and_the_chunked_body(with_state, dtype):
    """The decode graph's one-token body: the recurrence, against the oracle and against the
    chunked body on the same token (fp16: within what the chunked body itself is off)."""
    q, k, v, state = inputs(1, 15, 7, with_state)
    ref_o, ref_s = naive_causal_linear_attention(q, k, v, 1e-6, state)
    o, s = run(single_node("function", 1, 15, 7, dtype, lowered_as="decode"), q, k, v, state, dtype)
    chunked_o, chunked_s = run(single_node("function", 1, 15, 7, dtype), q, k, v, state, dtype)
    if dtype == torch.float32:
        tol_o = tol_s = 1e-5
    else:  # fp16 inputs: the oracle sees the unrounded ones
        tol_o, tol_s = (2 * rel_err(chunked_o, ref_o) + 1e-5), (2 * rel_err(chunked_s, ref_s) + 1e-5)
    assert rel_err(o, ref_o) < tol_o and rel_err(s, ref_s) < tol_s
    assert rel_err(s, chunked_s) < 1e-5  # both accumulate the same fp32 products


def test_decode_graph_body_is_lean():
    """No chunk machinery in the one-token body: no padding of T, no chunk split or scan."""
    fn = step_function_proto(20)
    ops = [n.op_type for n in fn.node if n.op_type != "Constant"]
    assert not set(ops) & {"Trilu", "CumSum", "Transpose", "Split", "Loop", "If", "Scan", "Shape", "Mod"}
    chunked = [n.op_type for n in function_proto(64, 20).node if n.op_type != "Constant"]
    assert len(ops) <= len(chunked) // 2, ops
    assert (fn.domain, fn.name) == (op_spec.DOMAIN, op_spec.OP_TYPE)
    assert list(fn.input) == list(op_spec.INPUTS) and list(fn.output) == list(op_spec.OUTPUTS)


@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "past-state"])
@pytest.mark.parametrize("T", [1, 17, 97], ids=lambda t: f"T{t}")
def test_standard_onnxruntime_kernel_agrees_with_function_body_and_naive(T, with_state):
    q, k, v, state = inputs(T, 12, 9, with_state)
    ref_o, ref_s = naive_causal_linear_attention(q, k, v, 1e-6, state)
    std_o, std_s = run(single_node("standard", 16, 12, 9), q, k, v, state)
    fn_o, fn_s = run(single_node("function", 16, 12, 9), q, k, v, state)
    assert rel_err(std_o, fn_o) < 1e-5 and rel_err(std_s, fn_s) < 1e-5
    assert rel_err(std_o, ref_o) < 1e-5 and rel_err(std_s, ref_s) < 1e-5


def test_zero_key_rows_leave_the_state_untouched():
    q, k, v, _ = inputs(40, 8, 8, False)
    lengths = torch.tensor([40, 13])
    k = k * (torch.arange(40)[None, :] < lengths[:, None])[:, None, :, None]
    _, ref_s = naive_causal_linear_attention(q, k, v, 1e-6, lengths=lengths)
    for lowering in ("function", "standard"):
        _, s = run(single_node(lowering, 16, 8, 8), q, k, v, None)
        assert rel_err(s, ref_s) < 1e-5, lowering


@pytest.mark.parametrize("lowering", ["function", "standard"])
def test_fp16_activations_keep_an_fp32_state(lowering):
    """fp16 in/out, fp32 state; error vs fp64 at most 2x PyTorch's own op on fp16 inputs."""
    q, k, v, state = inputs(97, 16, 16, True)
    ref_o, ref_s = naive_causal_linear_attention(q, k, v, 1e-6, state)
    flat = lambda t: t.transpose(1, 2).reshape(B, 97, -1).half()  # noqa: E731
    pt_o, pt_s = causal_linear_attention(flat(q), flat(k), flat(v), state.float(), H, 1e-6)
    assert pt_o.dtype == torch.float16 and pt_s.dtype == torch.float32
    pt_o = pt_o.float().view(B, 97, H, 16).transpose(1, 2)
    o, s = run(single_node(lowering, 16, 16, 16, torch.float16), q, k, v, state, torch.float16)
    assert rel_err(o, ref_o) <= 2 * rel_err(pt_o, ref_o) + 1e-5
    assert rel_err(s, ref_s) <= 2 * rel_err(pt_s, ref_s) + 1e-5


@pytest.mark.parametrize("T", [1, 37])
def test_pytorch_custom_op_matches_naive(T):
    """The op in the spec's [B, T, H*D] layout, as traced into the graphs."""
    q, k, v, state = inputs(T, 6, 5, True)
    ref_o, ref_s = naive_causal_linear_attention(q, k, v, 1e-6, state)
    flat = lambda t: t.transpose(1, 2).reshape(B, T, -1).float()  # noqa: E731
    o, s = torch.ops.linexport.causal_linear_attention(flat(q), flat(k), flat(v), state.float(), H, 1e-6)
    assert rel_err(o.view(B, T, H, 5).transpose(1, 2), ref_o) < 1e-5
    assert rel_err(s, ref_s) < 1e-5


def test_function_body_is_linear_standard_ops():
    fn = function_proto(64, 20)
    ops = {n.op_type for n in fn.node}
    assert not ops & {"Loop", "If", "Scan"}
    assert {"Trilu", "CumSum", "MatMul"} <= ops
    assert all(n.domain in ("", "ai.onnx") for n in fn.node)
    assert (fn.domain, fn.name) == (op_spec.DOMAIN, op_spec.OP_TYPE)
    assert list(fn.input) == list(op_spec.INPUTS) and list(fn.output) == list(op_spec.OUTPUTS)
