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
                lowered_as: str = "prefill", normalize: bool = True):
    """One op node in a graph of its own, lowered as the ``lowered_as`` graph's would be
    (``normalize`` False: the unnormalised form's node, state [B, H, Dk, Dv])."""
    t = _ONNX_TYPES[dtype]
    extra = {} if normalize else {op_spec.ATTR_NORMALIZE: 0}
    W = Dv + 1 if normalize else Dv
    node = helper.make_node(op_spec.OP_TYPE, list(op_spec.INPUTS), list(op_spec.OUTPUTS),
                            domain=op_spec.DOMAIN, num_heads=H, eps=eps, **extra)
    graph = helper.make_graph(
        [node], "one_node",
        [helper.make_tensor_value_info("query", t, ["B", "T", H * Dk]),
         helper.make_tensor_value_info("key", t, ["B", "T", H * Dk]),
         helper.make_tensor_value_info("value", t, ["B", "T", H * Dv]),
         helper.make_tensor_value_info("past_state", TensorProto.FLOAT, ["B", H, Dk, W])],
        [helper.make_tensor_value_info("output", t, ["B", "T", H * Dv]),
         helper.make_tensor_value_info("present_state", TensorProto.FLOAT, ["B", H, Dk, W])])
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


def run(session, q, k, v, state, dtype=torch.float32, normalize=True):
    """[B, H, T, D] fp64 tensors -> ORT in the op's [B, T, H*D] layout -> [B, H, T, Dv], state."""
    Bq, Hq, T, _ = q.shape
    Dv = v.shape[-1]
    flat = lambda t: t.transpose(1, 2).reshape(Bq, T, -1).to(dtype).numpy()  # noqa: E731
    past = state if state is not None else torch.zeros(Bq, Hq, q.shape[-1], Dv + (1 if normalize else 0),
                                                       dtype=torch.float64)
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


# -- the unnormalised form (normalize = 0): o = qᵀS, state [B, H, Dk, Dv] ----------------------
def signed_inputs(T, Dk, Dv, with_state):
    """Features of either sign (identity / learnable maps): nothing to keep a normaliser positive."""
    g = torch.Generator().manual_seed(T * 7 + Dk)
    q, k, v = (torch.randn(B, H, T, d, generator=g, dtype=torch.float64) for d in (Dk, Dk, Dv))
    state = torch.randn(B, H, Dk, Dv, generator=g, dtype=torch.float64) if with_state else None
    return q, k, v, state


def unnormalised_oracle(q, k, v, state):
    """o_t = q_tᵀ S_t written as masked quadratic attention (an oracle independent of the loop):
    tril(q kᵀ) v, plus q S_0."""
    T = q.shape[2]
    scores = torch.einsum("bhid,bhjd->bhij", q, k).masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), 0)
    o = scores @ v + (0 if state is None else q @ state)
    S = torch.einsum("bhtd,bhte->bhde", k, v) + (0 if state is None else state)
    return o, S


UNNORMALISED_CASES = [(lo, graph, T) for lo, graph in (("function", "prefill"), ("function", "decode"),
                                                      ("standard", "prefill"))
                      for T in ([1] if graph == "decode" else [1, 15, 17, 97])]  # decode: one token


@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "past-state"])
@pytest.mark.parametrize("lowering,lowered_as,T", UNNORMALISED_CASES,
                         ids=[f"{lo}-{graph}-T{T}" for lo, graph, T in UNNORMALISED_CASES])
def test_unnormalised_lowerings_match_the_oracles(lowering, lowered_as, T, with_state):
    q, k, v, state = signed_inputs(T, 11, 6, with_state)
    ref_o, ref_s = naive_causal_linear_attention(q, k, v, 1e-6, state, normalize=False)
    quad_o, quad_s = unnormalised_oracle(q, k, v, state)
    assert rel_err(ref_o, quad_o) < 1e-12 and rel_err(ref_s, quad_s) < 1e-12
    session = single_node(lowering, 16, 11, 6, lowered_as=lowered_as, normalize=False)
    o, s = run(session, q, k, v, state, normalize=False)
    assert s.shape == (B, H, 11, 6)
    assert rel_err(o, ref_o) < 1e-5 and rel_err(s, ref_s) < 1e-5


def test_unnormalised_bodies_have_no_normaliser():
    """No ones column (the Pad of v), no division; the body declares the attribute its node carries."""
    pads = lambda fn: [n.op_type for n in fn.node].count("Pad")  # noqa: E731
    pairs = ((function_proto(16, 20, normalize=False), function_proto(16, 20)),
             (step_function_proto(20, normalize=False), step_function_proto(20)))
    for fn, normalised in pairs:
        assert "Div" not in {n.op_type for n in fn.node} and "Div" in {n.op_type for n in normalised.node}
        assert pads(fn) == pads(normalised) - 1  # the chunked body still pads T to whole chunks
        assert op_spec.ATTR_NORMALIZE in {a.name for a in fn.attribute_proto}
    normalised = function_proto(16, 20)
    assert op_spec.ATTR_NORMALIZE not in {a.name for a in normalised.attribute_proto}  # as it always was


def test_a_graph_mixing_the_forms_is_refused():
    from linexport.errors import LinexportError
    from linexport.export.ops.causal_linear_attention import graph_normalize

    nodes = [helper.make_node(op_spec.OP_TYPE, list(op_spec.INPUTS), [f"o{i}", f"s{i}"], domain=op_spec.DOMAIN,
                              num_heads=H, **({} if i == 0 else {op_spec.ATTR_NORMALIZE: 0})) for i in range(2)]
    graph = helper.make_graph(nodes, "two", [], [])
    with pytest.raises(LinexportError, match="share one normalize value"):
        graph_normalize(helper.make_model(graph))
