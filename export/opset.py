"""Moving a traced graph to the opset the user asked for.

torch.onnx emits one opset (20 in torch 2.13: its tanh-GELU is the opset-20 Gelu op, so nothing
lower is valid). Going up is done here, not by a converter: onnxscript's stops at opset 25 and its fallback, the
ONNX C converter, silently produced a wrong opset import for our graphs (Gelu under opset 18).
An upgrade only re-labels the default-domain import, which is valid exactly when every op in
the graph has the same semantics in the target opset; this module checks that op by op.
"""

from __future__ import annotations

import onnx

from linexport.errors import LinexportError

# Ops whose new versions in (20, 27] only added tensor types (int4/uint4 in 21, bfloat16 in 22,
# float4e2m1 in 23, float8e8m0 in 24, int2/uint2 in 25) or, for Range-27, an attribute that only
# affects float16/bfloat16 inputs, which Range-11 does not accept. Nothing else may change.
_RETYPED = frozenset({"Cast", "CastLike", "Constant", "ConstantOfShape", "Flatten", "Identity",
                      "Pad", "Reshape", "Shape", "Size", "Squeeze", "Transpose", "Unsqueeze"})
_TYPE_ONLY_CHANGES = {
    21: _RETYPED,
    22: frozenset({"Elu", "Sin", "Cos", "Tan", "Round", "Softplus", "Softsign", "Selu", "Mish",
                   "HardSigmoid", "HardSwish", "ThresholdedRelu", "Acos", "Asin", "Atan", "Cosh",
                   "Sinh", "Acosh", "Asinh", "Atanh", "EyeLike"}),
    23: _RETYPED,
    24: _RETYPED | {"TopK"},
    25: _RETYPED,
    27: frozenset({"Range"}),
}


def opset_of(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def convert_opset(model: onnx.ModelProto, target: int) -> onnx.ModelProto:
    source = opset_of(model)
    if target == source:
        return model
    if target < source:
        raise LinexportError(f"expected --opset {source} or higher for this torch version's export, "
                             f"got {target}")
    _check_upgradable(model, source, target)
    # The model's import and each local function's own (a function body is checked above too).
    for entry in [*model.opset_import, *(e for fn in model.functions for e in fn.opset_import)]:
        if entry.domain in ("", "ai.onnx"):
            entry.version = target
    return model


def _check_upgradable(model: onnx.ModelProto, source: int, target: int):
    ops = {n.op_type for n in model.graph.node if n.domain in ("", "ai.onnx")}
    for fn in model.functions:
        ops |= {n.op_type for n in fn.node if n.domain in ("", "ai.onnx")}
    for node in model.graph.node:
        # Ops inside a subgraph would escape the op-by-op check below.
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise LinexportError(f"expected a graph without subgraphs to move from opset {source} to "
                                 f"{target}, got a {node.op_type} node with one; keep --opset {source}")
    for op in sorted(ops):
        for version in range(source + 1, target + 1):
            changed = onnx.defs.get_schema(op, version).since_version == version
            if changed and op not in _TYPE_ONLY_CHANGES.get(version, ()):
                raise LinexportError(
                    f"the graph uses {op}, which changed in opset {version}; linexport cannot yet "
                    f"move it from opset {source} to {target}. Use --opset {version - 1} or lower")
