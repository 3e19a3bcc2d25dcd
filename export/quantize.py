"""Weight-only quantization of an export's graphs: int8 / int4 weights, fp32 state.

Two formats, each the form its runtime takes (docs/DESIGN.md, "Quantized exports"):

- ``MatMulNBits`` (ONNX Runtime): block-wise int4 or int8 weights in the ``com.microsoft``
  MatMulNBits contrib op, made by ``onnxruntime.quantization``'s ``MatMulNBitsQuantizer``;
  with ``embeddings``, the token embedding becomes a 4-bit ``GatherBlockQuantized`` too.
- ``QDQ`` (TensorRT, TensorRT-RTX): the float MatMul stays and its weight becomes an int4
  (block-wise, ``block_size`` 64 or 128, the same quantizer) or int8 (per output channel)
  constant behind a ``DequantizeLinear`` — symmetric (TensorRT's dequantize layer takes no
  zero point), opset >= 21 (int4 tensors and blocked DequantizeLinear are opset 21).

Only the projections' weights change: every MatMul whose second input is a constant 2-D
float weight (``Gemm`` is rewritten as MatMul + Add first and ``Constant`` weights become
initializers, because the quantizer takes neither). The attention (its function body, its
state, accumulation and normaliser) has no constant weight and stays as exported; the LM head
and the embedding only with ``embeddings``. The quantizer walks the main graph only: the
attention's local function holds no weight, so nothing is missed there.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from linexport.errors import LinexportError
from linexport.contract.manifest import (INT4_TENSOR_OPSET, QUANT_FORMATS, QUANT_SCHEMES,
                                         quant_block_size_error, quant_min_opset)
from linexport.export.opset import convert_opset, opset_of

QDQ_MIN_OPSET = INT4_TENSOR_OPSET  # int4 tensors and DequantizeLinear's block_size
DEFAULT_BLOCK_SIZE = {("int4", "MatMulNBits"): 32, ("int8", "MatMulNBits"): 32, ("int4", "QDQ"): 128,
                      ("int8", "QDQ"): None}
# MatMulNBits' compute type: int4 in the activations' precision (weight-only: prefill and decode
# agree as float exports do), int8 in int8 (ONNX Runtime's CPU kernel for 8-bit weights with
# float compute ran 6x slower than fp32 here; level 4 rounds each row's activations per block,
# so a sequence never depends on another's). Measured in benchmarks/quantization.py.
DEFAULT_ACCURACY_LEVEL = {"int4": 0, "int8": 4}
# What each format's quantized weight looks like in the graph (counted into the manifest).
QUANTIZED_OPS = {"MatMulNBits": ("MatMulNBits", "GatherBlockQuantized"), "QDQ": ("DequantizeLinear",)}
_ANY_QUANTIZED_OP = frozenset(op for ops in QUANTIZED_OPS.values() for op in ops)
_QUANTIZER_LOGGERS = ("onnxruntime.quantization.matmul_nbits_quantizer", "onnx_ir")


@dataclass(frozen=True)
class QuantOptions:
    """What ``linexport onnx --quantize`` asks for. ``block_size`` None: the scheme's default
    (``DEFAULT_BLOCK_SIZE``; int8 QDQ is per channel and takes none)."""

    scheme: str
    format: str = "MatMulNBits"
    block_size: int | None = None
    embeddings: bool = False
    accuracy_level: int | None = None  # None: DEFAULT_ACCURACY_LEVEL (MatMulNBits), 0 (QDQ)

    def checked(self) -> "QuantOptions":
        if self.scheme not in QUANT_SCHEMES:
            raise LinexportError(f"expected --quantize in {sorted(QUANT_SCHEMES)}, got {self.scheme!r}")
        if self.format not in QUANT_FORMATS:
            raise LinexportError(f"expected --quant-format in {list(QUANT_FORMATS)}, got {self.format!r}")
        block = DEFAULT_BLOCK_SIZE[(self.scheme, self.format)] if self.block_size is None else self.block_size
        problem = quant_block_size_error(self.scheme, self.format, block)
        if problem:
            raise LinexportError(f"--block-size: {problem}")
        level = (DEFAULT_ACCURACY_LEVEL[self.scheme] if self.format == "MatMulNBits" else 0) \
            if self.accuracy_level is None else self.accuracy_level
        if level not in (0, 1, 2, 3, 4):
            raise LinexportError(f"expected --accuracy-level in 0..4 (MatMulNBits' compute type: 0 as the "
                                 f"activations, 4 int8), got {self.accuracy_level!r}")
        if self.format == "QDQ" and level:
            raise LinexportError("--accuracy-level is MatMulNBits' attribute; QDQ graphs compute in the "
                                 "activations' precision: drop it or use --quant-format MatMulNBits")
        return QuantOptions(self.scheme, self.format, block, self.embeddings, level)


def record(options: QuantOptions, nodes: dict[str, int]) -> dict:
    """The manifest's ``quantization`` entry (contract/manifest.py validates it)."""
    import onnxruntime

    ops = quantized_weights(options)
    return {"scheme": options.scheme, "bits": QUANT_SCHEMES[options.scheme], "format": options.format,
            "block_size": options.block_size, "symmetric": True, "accuracy_level": options.accuracy_level,
            "weights": ops, "embeddings": options.embeddings,
            "tool": "onnxruntime.quantization", "tool_version": onnxruntime.__version__,
            "nodes": dict(nodes)}


def options_from_record(record: dict) -> QuantOptions:
    """The options that made a (validated) ``quantization`` record: to quantize again alike."""
    return QuantOptions(record["scheme"], record["format"], record["block_size"], record["embeddings"],
                        record["accuracy_level"])


def quantize_graph(model: onnx.ModelProto, options: QuantOptions) -> tuple[onnx.ModelProto, int]:
    """``model`` with its projections' weights quantized as ``options`` (checked) says; returns
    (the new model, the number of quantized-weight nodes in it)."""
    found = quantized_op_counts(model)
    if found:
        raise LinexportError(f"expected a float graph to quantize, got one that already holds {min(found)} "
                             f"nodes: quantize the float export (re-export without --quantize first)")
    model = _prepare(model, options.embeddings)
    include = _targets(model, options)
    if not include:
        raise LinexportError("found no MatMul with a constant 2-D weight to quantize in the graph; "
                             "export without --quantize")
    floor = quant_min_opset(options.format, quantized_weights(options))
    if opset_of(model) < floor:
        model = _raise_opset(model, floor)
    if options.format == "QDQ" and options.scheme == "int8":
        model = _int8_per_channel_qdq(model, include)
    else:
        model = _nbits(model, options, include)
    return model, sum(quantized_op_counts(model).values())


def _nbits(model: onnx.ModelProto, options: QuantOptions, include: list[str]) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantFormat

    MatMulNBitsQuantizer = _import_quantizer()

    ops = ("MatMul", "Gather") if _quantizes_gather(options) else ("MatMul",)
    quantizer = MatMulNBitsQuantizer(
        model, bits=QUANT_SCHEMES[options.scheme], block_size=options.block_size, is_symmetric=True,
        accuracy_level=options.accuracy_level if options.format == "MatMulNBits" else None,
        quant_format=QuantFormat.QOperator if options.format == "MatMulNBits" else QuantFormat.QDQ,
        op_types_to_quantize=ops,
        # Its nodes_to_include adds to op_types_to_quantize; exclusion is what restricts it.
        nodes_to_exclude=[n.name for n in model.graph.node if n.op_type in ops and n.name not in set(include)])
    # It logs every node at INFO (and onnx_ir's passes it runs, every initializer).
    loggers = [logging.getLogger(name) for name in _QUANTIZER_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        quantizer.process()
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
    return quantizer.model.model


def _import_quantizer():
    """MatMulNBitsQuantizer, without the ``logging.basicConfig(level=INFO)`` its module runs on
    import: an application's root logger is its own."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    return MatMulNBitsQuantizer


def _int8_per_channel_qdq(model: onnx.ModelProto, include: list[str]) -> onnx.ModelProto:
    """int8 QDQ, one scale per output channel: MatMulNBitsQuantizer's QDQ form is int4 only, so
    the weights are quantized with onnxruntime.quantization's own ``quantize_data`` per column
    (symmetric int8) and put behind a DequantizeLinear(axis=1)."""
    from onnxruntime.quantization.quant_utils import quantize_data

    inits = {t.name: t for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    done: dict[str, str] = {}
    for name in include:
        node = nodes[name]
        weight = node.input[1]
        if weight not in done:
            w = numpy_helper.to_array(inits[weight])
            q = np.empty(w.shape, np.int8)
            scales = np.empty(w.shape[1], w.dtype)
            for col in range(w.shape[1]):
                _, scale, q[:, col] = quantize_data(w[:, col].astype(np.float32), onnx.TensorProto.INT8,
                                                    symmetric=True)
                scales[col] = np.asarray(scale).reshape(())
            q_name, s_name, out = f"{weight}_q8", f"{weight}_scale", f"{weight}_dq"
            model.graph.initializer.extend([numpy_helper.from_array(q, q_name),
                                            numpy_helper.from_array(scales, s_name)])
            dq = helper.make_node("DequantizeLinear", [q_name, s_name], [out], name=f"{weight}_DequantizeLinear",
                                  axis=1)
            model.graph.node.insert(list(model.graph.node).index(node), dq)
            done[weight] = out
        node.input[1] = done[weight]
    _drop_unused_initializers(model)
    return model


# -- preparing a traced graph for the quantizer ----------------------------------------------
def _prepare(model: onnx.ModelProto, embeddings: bool) -> onnx.ModelProto:
    """Constant weights as initializers and Gemm as MatMul (+ Add): the forms the quantizer takes.
    With ``embeddings``, a head that multiplies by a transposed table gets the table folded."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    model = copy
    _constants_to_initializers(model)
    _gemm_to_matmul(model)
    if embeddings:
        _fold_weight_transposes(model)
    _drop_unused_initializers(model)
    return model


def _weight_consumers(model: onnx.ModelProto) -> set[str]:
    return {n.input[1] for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1}


def _constants_to_initializers(model: onnx.ModelProto):
    wanted = _weight_consumers(model) | {i for n in model.graph.node if n.op_type == "Gemm" for i in n.input[2:]}
    wanted |= {n.input[0] for n in model.graph.node if n.op_type == "Transpose"}
    keep = []
    for node in model.graph.node:
        value = [a for a in node.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR]
        if node.op_type == "Constant" and node.output[0] in wanted and value:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value[0].t)
            tensor.name = node.output[0]
            model.graph.initializer.append(tensor)
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)


def _attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _gemm_to_matmul(model: onnx.ModelProto):
    """Gemm(A, B, C) with a constant B and transA = 0 -> MatMul(A, alpha * op(B)) [+ Add(beta * C)]."""
    inits = {t.name: t for t in model.graph.initializer}
    new_nodes, made = [], {}
    for node in model.graph.node:
        if node.op_type != "Gemm" or node.input[1] not in inits or _attr(node, "transA", 0):
            new_nodes.append(node)
            continue
        alpha, beta, trans_b = _attr(node, "alpha", 1.0), _attr(node, "beta", 1.0), _attr(node, "transB", 0)
        key = (node.input[1], trans_b, alpha)
        if key not in made:
            w = numpy_helper.to_array(inits[node.input[1]])
            w = w.T if trans_b else w
            if alpha != 1.0:
                w = w * np.asarray(alpha, w.dtype)
            made[key] = f"{node.input[1]}_matmul{len(made)}"
            model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w), made[key]))
        has_bias = len(node.input) > 2 and node.input[2]
        mm_out = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        new_nodes.append(helper.make_node("MatMul", [node.input[0], made[key]], [mm_out], name=f"{node.name}_MatMul"))
        if has_bias:
            bias = node.input[2]
            if beta != 1.0:
                if bias not in inits:
                    raise LinexportError(f"cannot rewrite Gemm {node.name} (beta {beta} on a computed bias) "
                                         "as MatMul + Add for the quantizer; export without --quantize")
                scaled = numpy_helper.to_array(inits[bias]) * beta
                bias = f"{bias}_beta{len(made)}"
                model.graph.initializer.append(numpy_helper.from_array(scaled, bias))
            new_nodes.append(helper.make_node("Add", [mm_out, bias], [node.output[0]], name=f"{node.name}_Add"))
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)


def _fold_weight_transposes(model: onnx.ModelProto):
    """A MatMul weight that is Transpose(initializer) (a tied LM head) becomes an initializer."""
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type != "MatMul":
            continue
        t = producers.get(node.input[1])
        if t is not None and t.op_type == "Transpose" and t.input[0] in inits:
            w = numpy_helper.to_array(inits[t.input[0]])
            perm = _attr(t, "perm", None) or list(range(w.ndim))[::-1]
            name = f"{t.input[0]}_transposed"
            if name not in inits:
                inits[name] = numpy_helper.from_array(np.ascontiguousarray(np.transpose(w, perm)), name)
                model.graph.initializer.append(inits[name])
            node.input[1] = name


def _drop_unused_initializers(model: onnx.ModelProto):
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)


def _targets(model: onnx.ModelProto, options: QuantOptions) -> list[str]:
    """Names of the nodes to quantize: MatMuls with a constant 2-D float weight, minus the LM head
    (the MatMul nearest the logits) unless ``embeddings``; with it, the token embedding's Gather
    (int4 MatMulNBits only: ONNX Runtime has no 8-bit or QDQ form of a quantized Gather)."""
    inits = {t.name: t for t in model.graph.initializer}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    producers = {o: n for n in model.graph.node for o in n.output}
    head = _head_matmuls(producers)
    names = []
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits:
            w = inits[node.input[1]]
            if len(w.dims) == 2 and w.data_type in _FLOATS and (options.embeddings or node.name not in head):
                names.append(node.name)
        elif (node.op_type == "Gather" and _quantizes_gather(options) and node.input[0] in inits
              and len(inits[node.input[0]].dims) == 2 and inits[node.input[0]].data_type in _FLOATS
              and _from_input_ids(producers, node)):
            names.append(node.name)
    return names


def quantized_weights(options: QuantOptions) -> list[str]:
    """The ops whose weights ``options`` quantizes (the manifest's ``weights``)."""
    return ["MatMul", "Gather"] if _quantizes_gather(options) else ["MatMul"]


def _quantizes_gather(options: QuantOptions) -> bool:
    """The token embedding is quantized with ``embeddings`` in int4 MatMulNBits only."""
    return options.embeddings and options.scheme == "int4" and options.format == "MatMulNBits"


def _head_matmuls(producers: dict) -> set[str]:
    """The MatMuls first reached walking back from the ``logits`` output (``producers``: each
    value name's node)."""
    heads, seen, todo = set(), set(), ["logits"]
    while todo:
        node = producers.get(todo.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in ("MatMul", "MatMulNBits"):
            heads.add(node.name)
        else:
            todo.extend(node.input)
    return heads


def _from_input_ids(producers: dict, gather) -> bool:
    """Whether a Gather's indices come from the graph's ``input_ids`` values (the token embedding;
    decode selects its one token with a Gather first)."""
    todo, seen = [gather.input[1]], set()
    while todo:
        name = todo.pop()
        if name == "input_ids":
            return True
        node = producers.get(name)
        if node is None or name in seen or node.op_type in ("MatMul", "Shape", "Size"):
            continue  # a MatMul's output is no token id, a shape's is only the batch's size
        seen.add(name)
        todo.extend(node.input)
    return False


def _raise_opset(model: onnx.ModelProto, target: int) -> onnx.ModelProto:
    try:
        return convert_opset(model, target)
    except LinexportError as e:
        raise LinexportError(f"these quantized weights need opset {target} (int4 tensors, blocked "
                             f"DequantizeLinear): {e}") from None


def quantized_op_counts(model: onnx.ModelProto) -> Counter:
    """How many nodes of each quantized-weight kind (of any format) ``model``'s graph holds."""
    return Counter(n.op_type for n in model.graph.node if n.op_type in _ANY_QUANTIZED_OP)
