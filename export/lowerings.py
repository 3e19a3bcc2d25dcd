"""Lowerings of the ``linexport::CausalLinearAttention`` node: ONNX graph rewrites.

The traced graph holds the bare node (the op spec, contract/op_spec.py). From it:

- ``plugin``: left as is; TensorRT resolves it to the plugin of the same name.
- ``function``: the node stays and the model gains a local FunctionProto of the same
  domain/name whose body is a decomposition in standard ops — runtimes without the plugin
  (ONNX Runtime, TensorRT's parser without a registered plugin) inline it. The prefill graph's
  body is chunked; the decode graph's is the one-token recurrence (its T is always 1).
- ``standard``: each node is replaced by ONNX opset-27 ``LinearAttention`` with a ones column
  appended to each head's value (so the normaliser z is the last state column and the state
  layout [B, H, Dk, Dv+1] is unchanged), then numerator / (denominator + eps); the unnormalised
  form (``normalize`` = 0) is ``LinearAttention`` as it is, state [B, H, Dk, Dv].

The op's body and rewrite live with the op (export/ops/causal_linear_attention.py); this
module only applies them to a graph.
"""

from __future__ import annotations

import onnx

from linexport.contract import op_spec
from linexport.errors import LinexportError
from linexport.export.ops.causal_linear_attention import (attention_nodes, function_proto, graph_normalize,
                                                          is_node, standard_nodes, step_function_proto)

__all__ = ["apply_lowering", "attention_nodes", "default_opset", "function_body", "function_proto",
           "with_function_body"]


# -- applying a lowering ------------------------------------------------------------------------
GRAPHS = ("prefill", "decode")


def function_body(graph: str, chunk: int, opset: int, normalize: bool = True) -> onnx.FunctionProto:
    """The ``function`` lowering's body for ``graph``: chunked (chunk ``chunk``) for prefill,
    the one-token recurrence for decode; of the normalised form or the unnormalised one."""
    assert graph in GRAPHS, graph
    return step_function_proto(opset, normalize) if graph == "decode" else function_proto(chunk, opset, normalize)


def apply_lowering(model: onnx.ModelProto, lowering: str, chunk: int, graph: str) -> onnx.ModelProto:
    """Rewrites the bare attention nodes of ``model``, the ``graph`` graph (in place), into
    ``lowering``."""
    if lowering not in op_spec.LOWERINGS:
        raise LinexportError(f"expected a lowering in {list(op_spec.LOWERINGS)}, got {lowering!r}; "
                             f"pass one of them (linexport onnx --lowering)")
    opset = default_opset(model)
    if lowering == "plugin":
        return model
    if lowering == "function":
        if attention_nodes(model):
            model.functions.append(function_body(graph, chunk, opset, graph_normalize(model)))
        return model
    # standard
    new_nodes = []
    for i, node in enumerate(model.graph.node):
        if is_node(node):
            new_nodes.extend(standard_nodes(node, i))
        else:
            new_nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    _drop_unused_domain(model)
    return model


def with_function_body(model: onnx.ModelProto, chunk: int, graph: str) -> onnx.ModelProto:
    """A copy of a ``plugin``-lowered model with the function body attached, so ONNX Runtime
    can run it (verify, tests). The TensorRT plugin replaces that body on the device."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    if not any(f.domain == op_spec.DOMAIN and f.name == op_spec.OP_TYPE for f in copy.functions):
        copy.functions.append(function_body(graph, chunk, default_opset(copy), graph_normalize(copy)))
    return copy


def default_opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _drop_unused_domain(model: onnx.ModelProto):
    if not attention_nodes(model) and not model.functions:
        keep = [o for o in model.opset_import if o.domain != op_spec.DOMAIN]
        del model.opset_import[:]
        model.opset_import.extend(keep)
