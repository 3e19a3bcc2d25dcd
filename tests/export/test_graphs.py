"""The graph contract (docs/DESIGN.md, "Contracts"): IO names, shapes and dtypes; the ONNX checker and strict
shape inference; no If/Loop; no tensor with two sequence-length dims; Polygraphy runs it."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.inliner
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from linexport.contract import op_spec
from linexport.export.ort_session import prefill_feed
from linexport.export.lowerings import attention_nodes
from linexport.contract.manifest import load_manifest
from tests.export.conftest import ARCHS, KV_CACHE_ARCHS, lowering_cases, make_model

_TYPES = {"int64": TensorProto.INT64, "float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16}


def _io(values):
    return [(v.name, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
             v.type.tensor_type.elem_type) for v in values]


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
@pytest.mark.parametrize("arch", ARCHS)
def test_io_follows_the_contract(arch, dtype, exports):
    model = make_model(arch)
    V, act = model.config.vocab_size, TensorProto.FLOAT16 if dtype == "fp16" else TensorProto.FLOAT
    states = [(s.name, list(s.shape)) for s in model.state_specs()]

    def present(cache_dim):  # a KV cache's length (softmax): "seq" in prefill, "past_seq+1" in decode
        return [(f"present.{n}", [cache_dim if d == "past_seq" else d for d in shape], TensorProto.FLOAT)
                for n, shape in states]
    root = exports.dir(arch, dtype)
    prefill = onnx.load(str(root / "prefill.onnx"))
    decode = onnx.load(str(root / "decode.onnx"))

    past = [("position", ["batch"], TensorProto.INT64),
            *((f"past.{n}", shape, TensorProto.FLOAT) for n, shape in states)]
    continues = arch not in KV_CACHE_ARCHS  # a fixed-size state's prefill continues from it
    assert _io(prefill.graph.input) == [("input_ids", ["batch", "seq"], TensorProto.INT64),
                                        ("lengths", ["batch"], TensorProto.INT64), *(past if continues else [])]
    assert _io(prefill.graph.output) == [("logits", ["batch", V], act), *present("seq")]
    assert _io(decode.graph.input) == [("input_ids", ["batch", 1], TensorProto.INT64), *past]
    assert _io(decode.graph.output) == [("logits", ["batch", V], act), *present("past_seq+1")]

    manifest = load_manifest(root)
    for name, graph in (("prefill", prefill), ("decode", decode)):
        entry = manifest["graphs"][name]
        assert [(e["name"], e["shape"], _TYPES[e["dtype"]]) for e in entry["inputs"]] == _io(graph.graph.input)
        assert [(e["name"], e["shape"], _TYPES[e["dtype"]]) for e in entry["outputs"]] == _io(graph.graph.output)
    assert manifest["precision"] == dtype and manifest["arch"] == arch
    if arch == "linear":  # the fixture exports use the plugin lowering: one bare node per layer
        assert manifest["lowering"]["ops"] == {"causal_linear_attention": "plugin"}
        assert len(attention_nodes(prefill)) == len(attention_nodes(decode)) == model.config.n_layers
    else:  # no custom node for the other attentions: their PyTorch body is traced
        op = {"flash": "mixed_chunk_attention", "softmax": "softmax_attention", "reformer": "lsh_attention"}[arch]
        assert manifest["lowering"] == {"option": "plugin", "ops": {op: "traced"}}
        assert not attention_nodes(prefill) and not attention_nodes(decode)
    assert [s["name"] for s in manifest["states"]] == [n for n, _ in states]
    assert manifest["format_version"] == 3


@pytest.mark.parametrize("arch,lowering", lowering_cases())
def test_checker_shape_inference_and_no_control_flow(arch, lowering, exports):
    for graph in exports.lowered(arch, "fp16", lowering):
        onnx.checker.check_model(graph, full_check=True)
        onnx.shape_inference.infer_shapes(graph, check_type=True, strict_mode=True, data_prop=True)
        ops = {n.op_type for n in graph.graph.node} | {n.op_type for f in graph.functions for n in f.node}
        assert not ops & {"If", "Loop", "Scan"}
        if lowering == "standard":
            assert "LinearAttention" in ops or arch != "linear"
            assert not attention_nodes(graph)


def test_attention_node_carries_the_plugin_fields(exports):
    model = make_model("linear")
    for graph in exports.lowered("linear", "fp32", "plugin"):
        nodes = attention_nodes(graph)
        assert len(nodes) == model.config.n_layers
        for node in nodes:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            assert attrs == {op_spec.ATTR_NUM_HEADS: model.config.n_heads,
                             op_spec.ATTR_EPS: pytest.approx(model.config.eps)}
            assert len(node.input) == 4 and len(node.output) == 2
        assert not graph.functions
        assert (op_spec.DOMAIN, op_spec.OP_VERSION) in {(o.domain, o.version) for o in graph.opset_import}


# -- linear in T --------------------------------------------------------------------------------
def _intermediate_numels(model: onnx.ModelProto, feeds: dict) -> dict:
    """Every tensor the graph computes (functions inlined) -> its element count for ``feeds``."""
    model = onnx.inliner.inline_local_functions(model)
    typed = {v.name: v.type.tensor_type.elem_type
             for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    outputs = {o.name for o in model.graph.output}
    produced = [name for node in model.graph.node for name in node.output if name and name not in outputs]
    untyped = [name for name in produced if name not in typed]
    assert not untyped, f"shape inference gave no type for {untyped[:5]}"
    model.graph.output.extend(helper.make_tensor_value_info(n, typed[n], None) for n in produced)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    feeds = feeds(session) if callable(feeds) else feeds
    return {n: int(np.asarray(v).size) for n, v in zip(names, session.run(None, feeds))}


def _growth(model, feeds_at):
    """Largest factor by which any tensor grows when T doubles (2 for linear, 4 for T x T)."""
    small, large = _intermediate_numels(model, feeds_at(64)), _intermediate_numels(model, feeds_at(128))
    return max(large[n] / max(small[n], 1) for n in small)


@pytest.mark.parametrize("arch,lowering", lowering_cases())
def test_no_tensor_grows_with_t_squared(arch, lowering, exports):
    prefill, _ = exports.lowered(arch, "fp32", lowering)
    if lowering == "plugin":
        from linexport.export.lowerings import with_function_body
        from tests.export.conftest import PREFILL_CHUNK

        prefill = with_function_body(prefill, PREFILL_CHUNK, "prefill")

    def feeds(T):  # a fresh prefill of T tokens (zeros past where the graph takes one)
        return lambda session: prefill_feed(session, np.ones((1, T), np.int64), np.array([T], np.int64))

    if arch == "softmax":  # the baseline is quadratic by definition: the check must see it
        assert _growth(prefill, feeds) == 4.0
    else:
        assert _growth(prefill, feeds) <= 2.0


def test_the_growth_check_catches_a_t_by_t_tensor():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "T", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "T", 4])
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["x", "xt"], ["scores"]),  # [1, T, T]
             helper.make_node("MatMul", ["scores", "x"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "quadratic", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 20)])
    assert _growth(model, lambda T: {"x": np.ones((1, T, 4), np.float32)}) == 4.0


# -- Polygraphy ---------------------------------------------------------------------------------
def test_polygraphy_runs_prefill_in_onnxruntime(exports, tmp_path):
    prefill, _ = exports.lowered("linear", "fp32", "function")
    path = tmp_path / "prefill.onnx"
    onnx.save(prefill, str(path))
    script = Path(sys.executable).parent / "polygraphy"  # the console script of this environment
    assert script.exists(), "polygraphy is a test dependency: pip install polygraphy"
    # Every input's shape, batch 2 and 23 tokens: polygraphy gives a dim it is not told 1.
    dims = {"batch": 2, "seq": 23}
    shapes = [f"{i.name}:[{','.join(str(dims.get(d.dim_param, d.dim_value)) for d in i.type.tensor_type.shape.dim)}]"
              for i in prefill.graph.input]
    result = subprocess.run(
        [str(script), "run", str(path), "--onnxrt", "--input-shapes", *shapes,
         "--val-range", "input_ids:[0,200]", "lengths:[1,23]", "position:[0,50]"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "PASSED" in result.stdout + result.stderr
