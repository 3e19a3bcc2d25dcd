"""Lowerings of the ``linexport::CausalLinearAttention`` node: ONNX graph rewrites.

The traced graph holds the bare node (the op spec, contract/op_spec.py). From it:

- ``plugin``: left as is; TensorRT resolves it to the plugin of the same name.
- ``function``: the node stays and the model gains a local FunctionProto of the same
  domain/name whose body is a chunked decomposition in standard ops — runtimes without the
  plugin (ONNX Runtime, TensorRT's parser without a registered plugin) inline it.
- ``standard``: each node is replaced by ONNX opset-27 ``LinearAttention`` with a ones column
  appended to each head's value (so the normaliser z is the last state column and the state
  layout [B, H, Dk, Dv+1] is unchanged), then numerator / (denominator + eps).

The function body (all in fp32, whatever the activation dtype), with C the chunk length:

    pad T up to N*C (the pad is computed in the graph), split heads, append the ones column
    scores = tril(q_c k_cᵀ)                       [B, H, N, C, C]   within each chunk
    kv_c   = k_cᵀ [v_c | 1]                        [B, H, N, Dk, Dv+1]
    before = past + exclusive CumSum over chunks of kv_c
    u      = scores [v_c | 1] + q_c before         [B, H, N, C, Dv+1]
    o      = u[..., :Dv] / (u[..., Dv] + eps);  present = past + Σ_c kv_c

Nothing is T×T (C×C per chunk, T/C chunks) and there is no Loop or If.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from linexport.contract import op_spec

_I64_MAX = np.iinfo(np.int64).max


class _Nodes:
    """Collects nodes, naming every value ``{prefix}{name}`` so rewrites never collide."""

    def __init__(self, prefix: str, named: bool = True):
        self.prefix = prefix
        # Node names inside a function would repeat once per call after inlining (TensorRT
        # warns about each), so function bodies leave them empty.
        self.named = named
        self.nodes: list[onnx.NodeProto] = []
        self._count = 0

    def __call__(self, op_type: str, inputs, outputs=1, name: str | None = None, **attrs):
        self._count += 1
        label = name or op_type.lower()
        if isinstance(outputs, int):
            outputs = [f"{self.prefix}{label}_{self._count}" + (f"_{i}" if outputs > 1 else "")
                       for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), list(outputs),
                                           name=f"{self.prefix}{label}_{self._count}" if self.named else None,
                                           **attrs))
        return outputs[0] if len(outputs) == 1 else outputs

    def const(self, name: str, value) -> str:
        array = np.asarray(value)
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        tensor = numpy_helper.from_array(array, name=f"{self.prefix}{name}")
        return self("Constant", [], name=name, value=tensor)


# -- function ---------------------------------------------------------------------------------
def function_proto(chunk: int, opset: int) -> onnx.FunctionProto:
    """The model-local ``linexport::CausalLinearAttention`` with a chunked body of chunk ``C``."""
    assert chunk >= 1
    n = _Nodes("", named=False)
    C = chunk
    heads = _ref_const(n, "heads", op_spec.ATTR_NUM_HEADS, "value_int", onnx.AttributeProto.INT)
    eps = _ref_const(n, "eps", op_spec.ATTR_EPS, "value_float", onnx.AttributeProto.FLOAT)
    heads_1 = n("Unsqueeze", [heads, n.const("axis0", [0])], name="heads_1")
    split = n("Concat", [n.const("zeros2", [0, 0]), heads_1, n.const("minus1", [-1])],
              name="split_shape", axis=0)  # [0, 0, H, -1]

    q = n("Reshape", [n("Cast", ["query"], name="q32", to=TensorProto.FLOAT), split], name="q")
    k = n("Reshape", [n("Cast", ["key"], name="k32", to=TensorProto.FLOAT), split], name="k")
    v = n("Reshape", [n("Cast", ["value"], name="v32", to=TensorProto.FLOAT), split], name="v")
    # [B, T, H, Dv] -> [B, T, H, Dv+1]: the ones column makes z the last state column
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

    num = n("Slice", [u, n.const("s0", [0]), n.const("e_last", [-1]), n.const("ax4", [4])], name="num")
    den = n("Slice", [u, n.const("s_last", [-1]), n.const("e_end", [_I64_MAX]), n.const("ax4b", [4])],
            name="den")
    o = n("Div", [num, n("Add", [den, eps], name="den_eps")], name="o")  # [B, H, N, C, Dv]
    o = n("Transpose", [o], name="o_t", perm=[0, 2, 3, 1, 4])  # [B, N, C, H, Dv]
    hdv = n("Shape", ["value"], name="hdv", start=2, end=3)
    o = n("Reshape", [o, n("Concat", [n.const("zero_m1", [0, -1]), hdv], name="o_shape", axis=0)],
          name="o_flat")  # [B, N*C, H*Dv]
    o = n("Slice", [o, n.const("s0b", [0]), T, n.const("ax1", [1])], name="o_unpad")
    n("CastLike", [o, "query"], ["output"], name="output")

    total = n("ReduceSum", [chunk_kv, n.const("axis_n1", [2])], name="total", keepdims=0)
    n("Add", ["past_state", total], ["present_state"], name="present")

    attr_eps = helper.make_attribute(op_spec.ATTR_EPS, op_spec.DEFAULT_EPS)
    fn = helper.make_function(
        op_spec.DOMAIN, op_spec.OP_TYPE, list(op_spec.INPUTS), list(op_spec.OUTPUTS), n.nodes,
        opset_imports=[helper.make_opsetid("", opset)], attributes=[op_spec.ATTR_NUM_HEADS],
        attribute_protos=[attr_eps],
        doc_string=f"Chunked standard-op body (chunk {C}) of linexport::CausalLinearAttention.")
    return fn


def _ref_const(n: _Nodes, label: str, attr_name: str, field: str, attr_type) -> str:
    """A Constant whose value is the calling node's attribute ``attr_name``."""
    ref = onnx.AttributeProto()
    ref.name, ref.ref_attr_name, ref.type = field, attr_name, attr_type
    node = helper.make_node("Constant", [], [f"{n.prefix}{label}"])
    node.attribute.append(ref)
    n.nodes.append(node)
    return node.output[0]


# -- standard ---------------------------------------------------------------------------------
def _standard_nodes(node: onnx.NodeProto, index: int) -> list[onnx.NodeProto]:
    """The ops replacing one CausalLinearAttention node with ONNX LinearAttention (opset 27)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    H = int(attrs[op_spec.ATTR_NUM_HEADS])
    eps = float(attrs.get(op_spec.ATTR_EPS, op_spec.DEFAULT_EPS))
    query, key, value, past = node.input
    output, present = node.output
    n = _Nodes(f"cla{index}/")
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
    num = n("Slice", [u, n.const("s0", [0]), n.const("e_last", [-1]), n.const("ax3", [3])], name="num")
    den = n("Slice", [u, n.const("s_last", [-1]), n.const("e_end", [_I64_MAX]), n.const("ax3b", [3])],
            name="den")
    o = n("Div", [num, n("Add", [den, n.const("eps", np.float32(eps))], name="den_eps")], name="o")
    o = n("Reshape", [o, n.const("merge_o", [0, 0, -1])], name="o_flat")
    n("CastLike", [o, query], [output], name="output")
    return n.nodes


# -- applying a lowering ------------------------------------------------------------------------
def attention_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [nd for nd in model.graph.node
            if nd.domain == op_spec.DOMAIN and nd.op_type == op_spec.OP_TYPE]


def apply_lowering(model: onnx.ModelProto, lowering: str, chunk: int) -> onnx.ModelProto:
    """Rewrites the bare attention nodes of ``model`` (in place) into ``lowering``."""
    assert lowering in op_spec.LOWERINGS, lowering
    opset = default_opset(model)
    if lowering == "plugin":
        return model
    if lowering == "function":
        if attention_nodes(model):
            model.functions.append(function_proto(chunk, opset))
        return model
    # standard
    new_nodes = []
    for i, node in enumerate(model.graph.node):
        if node.domain == op_spec.DOMAIN and node.op_type == op_spec.OP_TYPE:
            new_nodes.extend(_standard_nodes(node, i))
        else:
            new_nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    _drop_unused_domain(model)
    return model


def with_function_body(model: onnx.ModelProto, chunk: int) -> onnx.ModelProto:
    """A copy of a ``plugin``-lowered model with the function body attached, so ONNX Runtime
    can run it (verify, tests). The TensorRT plugin replaces that body on the device."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    if not any(f.domain == op_spec.DOMAIN and f.name == op_spec.OP_TYPE for f in copy.functions):
        copy.functions.append(function_proto(chunk, default_opset(copy)))
    return copy


def default_opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _drop_unused_domain(model: onnx.ModelProto):
    if not attention_nodes(model) and not model.functions:
        keep = [o for o in model.opset_import if o.domain != op_spec.DOMAIN]
        del model.opset_import[:]
        model.opset_import.extend(keep)
