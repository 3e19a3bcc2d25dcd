"""``linexport::CausalLinearAttention`` on the export side, all of it in one place:

- ``translation_table()``: the ``custom_translation_table`` entry that turns each call of
  ``torch.ops.linexport.causal_linear_attention`` (models/ops/causal_linear_attention/op.py,
  which the models call) into the bare ONNX node of the op spec (contract/op_spec.py);
- ``function_proto()``: the ``function`` lowering's model-local FunctionProto, a chunked body
  in standard ops that runtimes without the plugin inline; ``step_function_proto()``: the
  decode graph's, a body for one token (the recurrence, without the chunk machinery);
- ``standard_nodes()``: the ``standard`` lowering, ONNX opset-27 ``LinearAttention``.

export/lowerings.py applies them to a traced graph.

The function body (all in fp32, whatever the activation dtype), with C the chunk length:

    pad T up to N*C (the pad is computed in the graph), split heads, append the ones column
    scores = tril(q_c k_cᵀ)                       [B, H, N, C, C]   within each chunk
    kv_c   = k_cᵀ [v_c | 1]                        [B, H, N, Dk, Dv+1]
    before = past + exclusive CumSum over chunks of kv_c
    u      = scores [v_c | 1] + q_c before         [B, H, N, C, Dv+1]
    o      = u[..., :Dv] / (u[..., Dv] + eps);  present = past + Σ_c kv_c

Nothing is T×T (C×C per chunk, T/C chunks) and there is no Loop or If.

The unnormalised form (the node's ``normalize`` = 0) has no ones column and no division: the
state is [B, H, Dk, Dv] and o = u. A graph's nodes all share one form (one model config), so
the lowering attaches the body of that form (``graph_normalize``); the default form's node,
body and standard ops are what they were before the attribute existed.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from linexport.contract import op_spec
from linexport.errors import LinexportError
from linexport.export.ops.nodes import Nodes
import linexport.models.ops.causal_linear_attention  # noqa: F401  registers torch.ops.linexport.*

_I64_MAX = np.iinfo(np.int64).max
# The torch op the models call (its qualified name is op_spec.TORCH_OP; a test checks).
TORCH_OP = torch.ops.linexport.causal_linear_attention.default


def translation_table() -> dict:
    """``custom_translation_table`` for torch.onnx.export: our op -> the bare ONNX node."""
    from onnx.defs import OpSchema
    from onnxscript import values

    p = OpSchema.FormalParameter

    def schema(*extra):
        return OpSchema(
            op_spec.OP_TYPE, op_spec.DOMAIN, op_spec.OP_VERSION,
            inputs=[p(op_spec.INPUTS[0], "T"), p(op_spec.INPUTS[1], "T"), p(op_spec.INPUTS[2], "T"),
                    p(op_spec.INPUTS[3], "S")],
            outputs=[p(op_spec.OUTPUTS[0], "T"), p(op_spec.OUTPUTS[1], "S")],
            type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], ""),
                              ("S", ["tensor(float)"], "")],
            attributes=[
                OpSchema.Attribute(op_spec.ATTR_NUM_HEADS, OpSchema.AttrType.INT, "", required=True),
                OpSchema.Attribute(op_spec.ATTR_EPS,
                                   onnx.helper.make_attribute(op_spec.ATTR_EPS, op_spec.DEFAULT_EPS), ""),
                *extra,
            ])

    # The schemas are handed to the tracer only, not registered globally: onnx.checker must keep
    # treating our domain as opaque (the model-local function or the plugin defines it). The
    # tracer writes every attribute a schema has a default for, so the normalised form's schema
    # has no normalize attribute (its nodes stay what they were before it existed) and the
    # unnormalised form's one requires it.
    opset = values.Opset(op_spec.DOMAIN, op_spec.OP_VERSION)
    normalised = values.Op(opset, op_spec.OP_TYPE, schema())
    unnormalised = values.Op(opset, op_spec.OP_TYPE, schema(
        OpSchema.Attribute(op_spec.ATTR_NORMALIZE, OpSchema.AttrType.INT, "", required=True)))

    def translate(query, key, value, past_state, num_heads: int, eps: float, chunk_size: int = 64,
                  normalize: bool = True):
        # chunk_size is the eager implementation's; each graph's function body has its own.
        if normalize:
            return normalised(query, key, value, past_state, num_heads=num_heads, eps=eps, _outputs=2)
        return unnormalised(query, key, value, past_state, num_heads=num_heads, eps=eps, _outputs=2,
                            **{op_spec.ATTR_NORMALIZE: 0})

    return {TORCH_OP: translate}


def is_node(node: onnx.NodeProto) -> bool:
    return node.domain == op_spec.DOMAIN and node.op_type == op_spec.OP_TYPE


def attention_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The graph's bare ``linexport::CausalLinearAttention`` nodes."""
    return [nd for nd in model.graph.node if is_node(nd)]


def node_normalize(node: onnx.NodeProto) -> bool:
    """The node's form: its ``normalize`` attribute (absent: the default, 1)."""
    for a in node.attribute:
        if a.name == op_spec.ATTR_NORMALIZE:
            if a.type != onnx.AttributeProto.INT or a.i not in (0, 1):
                raise LinexportError(f"expected {op_spec.OP_TYPE}'s {op_spec.ATTR_NORMALIZE} attribute to be "
                                     f"the int 0 or 1, got {helper.get_attribute_value(a)!r}")
            return bool(a.i)
    return bool(op_spec.DEFAULT_NORMALIZE)


def graph_normalize(model: onnx.ModelProto) -> bool:
    """The one form every attention node of ``model`` has (a model-local function has one body,
    so a graph mixing the forms cannot be lowered to it)."""
    forms = {node_normalize(nd) for nd in attention_nodes(model)}
    if len(forms) > 1:
        raise LinexportError(f"expected every {op_spec.OP_TYPE} node of a graph to share one "
                             f"{op_spec.ATTR_NORMALIZE} value, got both: export one model config per graph")
    return forms.pop() if forms else bool(op_spec.DEFAULT_NORMALIZE)


def count_calls(program: torch.export.ExportedProgram) -> int:
    """How often the traced program calls our op: the number of nodes the graph must hold."""
    return sum(1 for nd in program.graph.nodes if nd.op == "call_function" and nd.target == TORCH_OP)


def check_nodes(proto: onnx.ModelProto, calls: int, graph: str):
    """Every call of the op while tracing became one bare node, or the graph is wrong."""
    found = len(attention_nodes(proto))
    if found != calls:
        raise LinexportError(
            f"{graph} graph: expected {calls} {op_spec.DOMAIN}::{op_spec.OP_TYPE} node(s), one per call "
            f"of torch.ops.{op_spec.TORCH_OP.replace('::', '.')} while tracing, got {found}: this "
            f"torch.onnx did not apply linexport's translation table; use a torch version "
            f"pyproject.toml allows")


# -- function ---------------------------------------------------------------------------------
def function_proto(chunk: int, opset: int, normalize: bool = True) -> onnx.FunctionProto:
    """The model-local ``linexport::CausalLinearAttention`` with a chunked body of chunk ``C``,
    of the normalised form or (``normalize`` False) the unnormalised one."""
    if not isinstance(chunk, int) or chunk < 1:
        raise LinexportError(f"expected the function body's chunk length to be an int >= 1, got "
                             f"{chunk!r}; set the model config's chunk_size to 1 or more")
    n = Nodes("", named=False)
    C = chunk
    heads = _ref_const(n, "heads", op_spec.ATTR_NUM_HEADS, "value_int", onnx.AttributeProto.INT)
    eps = _ref_const(n, "eps", op_spec.ATTR_EPS, "value_float", onnx.AttributeProto.FLOAT)
    heads_1 = n("Unsqueeze", [heads, n.const("axis0", [0])], name="heads_1")
    split = n("Concat", [n.const("zeros2", [0, 0]), heads_1, n.const("minus1", [-1])],
              name="split_shape", axis=0)  # [0, 0, H, -1]

    q = n("Reshape", [n("Cast", ["query"], name="q32", to=TensorProto.FLOAT), split], name="q")
    k = n("Reshape", [n("Cast", ["key"], name="k32", to=TensorProto.FLOAT), split], name="k")
    v = n("Reshape", [n("Cast", ["value"], name="v32", to=TensorProto.FLOAT), split], name="v")
    if normalize:  # [B, T, H, Dv] -> [B, T, H, Dv+1]: the ones column makes z the last state column
        v = n("Pad", [v, n.const("ones_pads", [0, 0, 0, 0, 0, 0, 0, 1]), n.const("one", np.float32(1))],
              name="v1")

    # pad T up to a multiple of C: pad = (C - T % C) % C, from the input's own shape
    T = n("Shape", ["query"], name="T", start=1, end=2)
    c_1 = n.const("C", [C])
    pad = n("Mod", [n("Sub", [c_1, n("Mod", [T, c_1], name="t_mod_c")], name="c_minus"), c_1],
            name="pad")
    time_pads = n("Concat", [n.const("zero1", [0]), pad], name="time_pads", axis=0)
    axis1 = n.const("axis1", [1])
    zero_f = n.const("zero_f", np.float32(0))

    def chunked(x, label):
        """[B, T, H, D] -> [B, H, N, C, D]"""
        x = n("Pad", [x, time_pads, zero_f, axis1], name=f"{label}_padded")
        d = n("Shape", [x], name=f"{label}_d", start=3, end=4)
        shape = n("Concat", [n.const(f"{label}_bnc", [0, -1, C]), heads_1, d], name=f"{label}_shape",
                  axis=0)
        x = n("Reshape", [x, shape], name=f"{label}_5d")  # [B, N, C, H, D]
        return n("Transpose", [x], name=f"{label}_c", perm=[0, 3, 1, 2, 4])

    qc, kc, vc = chunked(q, "qc"), chunked(k, "kc"), chunked(v, "vc")
    kt = n("Transpose", [kc], name="kt", perm=[0, 1, 2, 4, 3])  # [B, H, N, Dk, C]

    scores = n("Trilu", [n("MatMul", [qc, kt], name="scores")], name="causal", upper=0)
    intra = n("MatMul", [scores, vc], name="intra")  # [B, H, N, C, Dv+1]
    chunk_kv = n("MatMul", [kt, vc], name="chunk_kv")  # [B, H, N, Dk, Dv+1]
    past = n("Unsqueeze", ["past_state", n.const("axis2", [2])], name="past5")
    before = n("Add", [n("CumSum", [chunk_kv, n.const("axis_n", np.int64(2))], name="before_local",
                         exclusive=1), past], name="before")
    u = n("Add", [intra, n("MatMul", [qc, before], name="inter")], name="u")

    o = _normalise(n, u, eps, axis=4) if normalize else u  # [B, H, N, C, Dv]
    o = n("Transpose", [o], name="o_t", perm=[0, 2, 3, 1, 4])  # [B, N, C, H, Dv]
    hdv = n("Shape", ["value"], name="hdv", start=2, end=3)
    o = n("Reshape", [o, n("Concat", [n.const("zero_m1", [0, -1]), hdv], name="o_shape", axis=0)],
          name="o_flat")  # [B, N*C, H*Dv]
    o = n("Slice", [o, n.const("s0b", [0]), T, n.const("ax1", [1])], name="o_unpad")
    n("CastLike", [o, "query"], ["output"], name="output")

    total = n("ReduceSum", [chunk_kv, n.const("axis_n1", [2])], name="total", keepdims=0)
    n("Add", ["past_state", total], ["present_state"], name="present")

    form = "" if normalize else ", unnormalised"
    return _function(n, opset, f"Chunked standard-op body (chunk {C}{form}) of linexport::CausalLinearAttention.",
                     normalize)


def step_function_proto(opset: int, normalize: bool = True) -> onnx.FunctionProto:
    """The decode graph's ``linexport::CausalLinearAttention``: a body for one token (T = 1, as
    the decode graph's ``input_ids [batch, 1]`` fixes it), the recurrence itself and nothing of
    the chunk machinery:

        present = past + k [v | 1]ᵀ   (rank-1 update)     u = q present   [B, H, 1, Dv+1]
        output  = u[..., :Dv] / (u[..., Dv] + eps)
        (unnormalised: present = past + k vᵀ, output = q present)
    """
    n = Nodes("", named=False)
    heads = _ref_const(n, "heads", op_spec.ATTR_NUM_HEADS, "value_int", onnx.AttributeProto.INT)
    eps = _ref_const(n, "eps", op_spec.ATTR_EPS, "value_float", onnx.AttributeProto.FLOAT)
    heads_1 = n("Unsqueeze", [heads, n.const("axis0", [0])], name="heads_1")

    def per_head(x, label, tail):
        """[B, 1, H*D] -> [B, H, D, 1] (a column) or [B, H, 1, D] (a row), in fp32."""
        shape = n("Concat", [n.const(f"{label}_b", [0]), heads_1, n.const(f"{label}_tail", tail)],
                  name=f"{label}_shape", axis=0)
        return n("Reshape", [n("Cast", [x], name=f"{label}32", to=TensorProto.FLOAT), shape], name=label)

    q = per_head("query", "q_row", [1, -1])
    k = per_head("key", "k_col", [-1, 1])
    v1 = per_head("value", "v_row", [1, -1])
    if normalize:  # [B, H, 1, Dv+1]: z's ones column
        v1 = n("Pad", [v1, n.const("ones_pads", [0, 0, 0, 0, 0, 0, 0, 1]), n.const("one", np.float32(1))],
               name="v1")
    n("Add", ["past_state", n("Mul", [k, v1], name="outer")], ["present_state"], name="present")
    u = n("MatMul", [q, "present_state"], name="u")  # [B, H, 1, Dv+1] ([B, H, 1, Dv] unnormalised)
    o = _normalise(n, u, eps, axis=3) if normalize else u  # [B, H, 1, Dv]
    o = n("Reshape", [o, n.const("o_shape", [0, 1, -1])], name="o_flat")  # [B, 1, H*Dv]
    n("CastLike", [o, "query"], ["output"], name="output")

    form = "" if normalize else " unnormalised"
    return _function(n, opset, f"One-token{form} standard-op body (the decode graph's) of "
                               "linexport::CausalLinearAttention.", normalize)


def _normalise(n: Nodes, u: str, eps: str, axis: int) -> str:
    """u = [numerator | denominator] along ``axis`` (the ones column's product last) ->
    numerator / (denominator + eps)."""
    num = n("Slice", [u, n.const("s0", [0]), n.const("e_last", [-1]), n.const("ax_num", [axis])], name="num")
    den = n("Slice", [u, n.const("s_last", [-1]), n.const("e_end", [_I64_MAX]), n.const("ax_den", [axis])],
            name="den")
    return n("Div", [num, n("Add", [den, eps], name="den_eps")], name="o")


def _function(n: Nodes, opset: int, doc: str, normalize: bool = True) -> onnx.FunctionProto:
    """The model-local FunctionProto of the op spec holding ``n``'s nodes as its body. The
    unnormalised body declares ``normalize`` too (its nodes carry it); the default body is what
    it was before the attribute existed."""
    protos = [helper.make_attribute(op_spec.ATTR_EPS, op_spec.DEFAULT_EPS)]
    if not normalize:
        protos.append(helper.make_attribute(op_spec.ATTR_NORMALIZE, op_spec.DEFAULT_NORMALIZE))
    return helper.make_function(
        op_spec.DOMAIN, op_spec.OP_TYPE, list(op_spec.INPUTS), list(op_spec.OUTPUTS), n.nodes,
        opset_imports=[helper.make_opsetid("", opset)], attributes=[op_spec.ATTR_NUM_HEADS],
        attribute_protos=protos, doc_string=doc)


def _ref_const(n: Nodes, label: str, attr_name: str, field: str, attr_type) -> str:
    """A Constant whose value is the calling node's attribute ``attr_name``."""
    ref = onnx.AttributeProto()
    ref.name, ref.ref_attr_name, ref.type = field, attr_name, attr_type
    node = helper.make_node("Constant", [], [f"{n.prefix}{label}"])
    node.attribute.append(ref)
    n.nodes.append(node)
    return node.output[0]


# -- standard ---------------------------------------------------------------------------------
def standard_nodes(node: onnx.NodeProto, index: int) -> list[onnx.NodeProto]:
    """The ops replacing one CausalLinearAttention node with ONNX LinearAttention (opset 27). The
    unnormalised form is LinearAttention itself (state [B, H, Dk, Dv], output q S)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    H = int(attrs[op_spec.ATTR_NUM_HEADS])
    eps = float(attrs.get(op_spec.ATTR_EPS, op_spec.DEFAULT_EPS))
    query, key, value, past = node.input
    output, present = node.output
    n = Nodes(f"cla{index}/")
    if not node_normalize(node):
        q, k, v = (n("Cast", [x], name=f"{x_name}32", to=TensorProto.FLOAT)
                   for x, x_name in ((query, "q"), (key, "k"), (value, "v")))
        o, _ = n("LinearAttention", [q, k, v, past], [f"{n.prefix}o", present], name="linear_attention",
                 update_rule="linear", scale=1.0, q_num_heads=H, kv_num_heads=H)
        n("CastLike", [o, query], [output], name="output")
        return n.nodes
    split = n.const("split_shape", [0, 0, H, -1])
    # LinearAttention runs in fp32 whatever the activations: numerator and denominator are sums
    # over the whole context and leave fp16's range long before the quotient does.
    q = n("Cast", [query], name="q32", to=TensorProto.FLOAT)
    k = n("Cast", [key], name="k32", to=TensorProto.FLOAT)
    v = n("Reshape", [n("Cast", [value], name="v32", to=TensorProto.FLOAT), split], name="v")
    v = n("Pad", [v, n.const("ones_pads", [0, 0, 0, 0, 0, 0, 0, 1]), n.const("one", np.float32(1))],
          name="v1")  # [B, T, H, Dv+1]
    v = n("Reshape", [v, n.const("merge_shape", [0, 0, -1])], name="v1_flat")
    u, _ = n("LinearAttention", [q, k, v, past], [f"{n.prefix}u", present], name="linear_attention",
             update_rule="linear", scale=1.0, q_num_heads=H, kv_num_heads=H)
    u = n("Reshape", [u, split], name="u4")  # [B, T, H, Dv+1]
    o = _normalise(n, u, n.const("eps", np.float32(eps)), axis=3)
    o = n("Reshape", [o, n.const("merge_o", [0, 0, -1])], name="o_flat")
    n("CastLike", [o, query], [output], name="output")
    return n.nodes
