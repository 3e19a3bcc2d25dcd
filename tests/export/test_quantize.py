"""Quantized exports (export/quantize.py): both archs through verify and the runtime, the
manifest's record, TensorRT-RTX builds of QDQ graphs, Gemm / Constant weights, refusals.

The demo models are real checkpoints (verify's quantization tolerances are stated for trained
weights); each is exported once as float, then quantized in seconds with `quantize_export`."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from linexport.cli import main
from linexport.cli.common import demo_checkpoint
from linexport.contract.manifest import MANIFEST_NAME, load_manifest, validate_manifest
from linexport.errors import LinexportError
from linexport.export.exporter import export_checkpoint, quantize_export
from linexport.export.quantize import QuantOptions, quantize_graph, quantized_op_counts
from linexport.export.verify import verify_export
from tests.runtime import slot_checks

SCHEMES = {  # name -> options; the defaults of each scheme and format
    "int4": QuantOptions("int4"),
    "int8": QuantOptions("int8"),
    "int4-qdq": QuantOptions("int4", "QDQ"),
    "int8-qdq": QuantOptions("int8", "QDQ"),
    "int4-emb": QuantOptions("int4", embeddings=True),  # + the LM head and the embedding's Gather
}


@pytest.fixture(scope="module")
def float_exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("quant-float")
    for arch in ("linear", "flash"):
        export_checkpoint(demo_checkpoint(arch), root / arch)
    return {arch: root / arch for arch in ("linear", "flash")}


@pytest.fixture(scope="module")
def quantized(float_exports, tmp_path_factory):
    root = tmp_path_factory.mktemp("quant")
    made = {}

    def get(arch, scheme):
        if (arch, scheme) not in made:
            out = root / f"{arch}-{scheme}"
            quantize_export(float_exports[arch], out, SCHEMES[scheme])
            made[arch, scheme] = out
        return made[arch, scheme]
    return get


@pytest.mark.parametrize("arch,scheme", [("linear", "int4"), ("linear", "int8"), ("flash", "int4"),
                                         ("flash", "int8"), ("linear", "int4-qdq"), ("flash", "int8-qdq"),
                                         ("linear", "int4-emb")])
def test_quantized_export_passes_verify(arch, scheme, quantized):
    out = quantized(arch, scheme)
    checks = verify_export(out, steps=4)
    failed = [c for c in checks if not c.ok]
    assert not failed, failed
    kinds = {c.what.split(": ", 1)[1].split(" (")[0] for c in checks}
    assert "argmax differs from the float model's" in kinds  # quantization's measures, not fp32's
    manifest = load_manifest(out)
    q = manifest["quantization"]
    assert (q["scheme"], q["format"]) == (SCHEMES[scheme].scheme, SCHEMES[scheme].format)
    for name in ("prefill", "decode"):
        counts = quantized_op_counts(onnx.load(str(out / f"{name}.onnx"), load_external_data=False))
        assert sum(counts.values()) == q["nodes"][name] >= 1
        assert ("GatherBlockQuantized" in counts) == (scheme == "int4-emb")


@pytest.mark.parametrize("arch", ["linear", "flash"])
def test_quantized_state_stays_fp32_and_files_shrink(arch, float_exports, quantized):
    # d128 demo models: the fp32 head, embedding and norms are a large share of them (at 4 layers
    # d384, benchmarks/quantization.py: int4 is 17 % of fp32).
    for scheme, at_most in (("int4", 0.3), ("int8", 0.4)):
        out = quantized(arch, scheme)
        manifest = load_manifest(out)
        assert all(s["dtype"] == "float32" for s in manifest["states"])
        decode = onnx.load(str(out / "decode.onnx"))
        for io in [*decode.graph.input, *decode.graph.output]:
            if io.name.startswith(("past.", "present.")):
                assert io.type.tensor_type.elem_type == TensorProto.FLOAT, io.name
        size = lambda d: sum(f.stat().st_size for f in d.glob("*.onnx"))  # noqa: E731
        assert size(out) <= at_most * size(float_exports[arch]), scheme


@pytest.mark.parametrize("scheme", ["int4", "int8"])
@pytest.mark.parametrize("arch", ["linear", "flash"])
def test_quantized_slots_are_isolated(arch, scheme, quantized):
    """Several live sequences in scattered slots: decoding some never touches the others, and
    each continues exactly as it would alone (int8 rounds activations per row, so a row never
    depends on the rest of the batch)."""
    out = quantized(arch, scheme)
    slot_checks.check_decode_advances_only_named_slots(out)
    slot_checks.check_append_tokens_leaves_others_untouched(out)


def test_record_is_validated(quantized):
    out = quantized("linear", "int4")
    good = json.loads((out / MANIFEST_NAME).read_text())
    validate_manifest(good)
    tampered = [
        {"bits": 8},                                      # int4 with 8 bits
        {"scheme": "int3"},
        {"format": "GPTQ"},
        {"block_size": 48},                               # not a power of two
        {"block_size": 8},
        {"weights": ["Gather"]},
        {"weights": ["MatMul", "Gather"]},                # Gather quantized but embeddings false
        {"nodes": {"prefill": 20}},
        {"nodes": {"prefill": 0, "decode": 20}},
        {"tool_version": 1},
        {"accuracy_level": 7},
        {"extra": True},
    ]
    for change in tampered:
        bad = {**good, "quantization": {**good["quantization"], **change}}
        with pytest.raises(LinexportError, match="quantization"):
            validate_manifest(bad)
    qdq = {**good, "quantization": {**good["quantization"], "format": "QDQ", "block_size": 128}}
    with pytest.raises(LinexportError, match="opset >= 21"):
        validate_manifest(qdq)  # the graphs are opset 20: no int4 DequantizeLinear there


def test_verify_refuses_a_record_that_does_not_match_the_graphs(quantized, tmp_path):
    import shutil

    src = quantized("linear", "int4")
    out = tmp_path / "tampered"
    shutil.copytree(src, out)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    manifest["quantization"]["nodes"]["decode"] += 1
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(LinexportError, match="the record was altered"):
        verify_export(out, steps=1)
    manifest["quantization"]["nodes"]["decode"] -= 1
    manifest["quantization"]["format"] = "QDQ"  # MatMulNBits graphs recorded as QDQ (at opset 21)
    manifest["quantization"]["block_size"] = 128
    manifest["opset"] = 21
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(LinexportError, match="the record was altered"):
        verify_export(out, steps=1)


def test_quantizing_twice_is_refused(quantized, tmp_path):
    out = quantized("linear", "int4")
    with pytest.raises(LinexportError, match="already quantized .*quantize its float export instead"):
        quantize_export(out, tmp_path / "again", QuantOptions("int8"))
    assert not (tmp_path / "again").exists()
    graph = onnx.load(str(out / "decode.onnx"))
    with pytest.raises(LinexportError, match="already holds MatMulNBits"):
        quantize_graph(graph, QuantOptions("int4").checked())


@pytest.mark.parametrize("args,message", [
    (["--quantize", "int4", "--block-size", "48"], "power of two >= 16"),
    (["--quantize", "int4", "--block-size", "8"], "power of two >= 16"),
    (["--quantize", "int4", "--quant-format", "QDQ", "--block-size", "32"], r"\[64, 128\] for int4 QDQ"),
    (["--quantize", "int8", "--quant-format", "QDQ", "--block-size", "64"], "per output channel"),
    (["--block-size", "64"], "without --quantize"),
    (["--quantize", "int4", "--quant-format", "QDQ", "--opset", "20"], "opset 21 or higher"),
    (["--quantize", "int4", "--quant-format", "QDQ", "--accuracy-level", "4"], "MatMulNBits' attribute"),
])
def test_bad_quantize_options_get_clear_errors(args, message, tmp_path):
    result = CliRunner().invoke(main, ["onnx", "-o", str(tmp_path / "out"), *args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert __import__("re").search(message, result.output), result.output
    assert not (tmp_path / "out").exists()


def test_quantize_command_and_trt_refusal(float_exports, tmp_path):
    out = tmp_path / "q"
    result = CliRunner().invoke(main, ["quantize", str(float_exports["linear"]), "-o", str(out),
                                       "--quantize", "int4", "--block-size", "64"])
    assert result.exit_code == 0, result.output
    assert load_manifest(out)["quantization"]["block_size"] == 64
    import shutil

    in_place = tmp_path / "in-place"
    shutil.copytree(float_exports["linear"], in_place)
    result = CliRunner().invoke(main, ["quantize", str(in_place), "--quantize", "int8"])
    assert result.exit_code == 0, result.output
    assert load_manifest(in_place)["quantization"]["scheme"] == "int8"  # replaced atomically
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in-place", "q"]  # no temp directory left
    result = CliRunner().invoke(main, ["quantize", str(float_exports["linear"]), "-o", str(tmp_path / "x")])
    assert result.exit_code == 2 and "expected --quantize int8 or --quantize int4" in result.output
    pytest.importorskip("tensorrt_rtx", reason="pip install tensorrt-rtx-cu13 to run the TensorRT check")
    for extra in ([], ["--fp16"]):  # refused before a re-export at another precision, too
        result = CliRunner().invoke(main, ["trt", str(out), "--target", "rtx", *extra])
        assert result.exit_code == 2
        assert "TensorRT cannot parse" in result.output and "--quant-format QDQ" in result.output
        assert load_manifest(out)["precision"] == "fp32" and "engines" not in load_manifest(out)


# -- TensorRT-RTX builds the QDQ graphs (on the CPU) ------------------------------------------
@pytest.mark.parametrize("arch,scheme", [("linear", "int4-qdq"), ("flash", "int4-qdq"), ("linear", "int8-qdq")])
def test_qdq_export_builds_in_tensorrt_rtx(arch, scheme, quantized, tmp_path):
    if not os.environ.get("CI"):
        pytest.importorskip("tensorrt_rtx", reason="pip install tensorrt-rtx-cu13 to run the TensorRT check")
    import shutil

    from linexport.export.engines import EngineOptions, build_engines

    out = tmp_path / "engines"
    shutil.copytree(quantized(arch, scheme), out)
    report = build_engines(out, EngineOptions(target="rtx", max_batch=2, opt_seq=16, max_seq=64))
    manifest = load_manifest(out)
    assert manifest["engines"]["target"] == "rtx" and manifest["quantization"]["format"] == "QDQ"
    for name in ("prefill", "decode"):
        assert (out / manifest["engines"]["graphs"][name]["file"]).stat().st_size > 0
    decode = onnx.load(str(out / "decode.onnx"))
    weights = {t.name: t for t in decode.graph.initializer}
    dq = [n for n in decode.graph.node if n.op_type == "DequantizeLinear"]
    want = TensorProto.INT4 if scheme.startswith("int4") else TensorProto.INT8
    assert dq and all(weights[n.input[0]].data_type == want for n in dq)
    assert report.attention


# -- forms the quantizer does not take: Gemm and Constant weights -----------------------------
def _gemm_and_constant_model(rng) -> tuple[onnx.ModelProto, dict]:
    """x [2, 64] -> Gemm(W1 [48, 64] transB, bias) -> MatMul(Constant W2 [48, 32]) -> logits."""
    w1 = rng.standard_normal((48, 64)).astype(np.float32)
    b1 = rng.standard_normal(48).astype(np.float32)
    w2 = rng.standard_normal((48, 32)).astype(np.float32)
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="gemm", transB=1, alpha=0.5),
        helper.make_node("Constant", [], ["w2"], value=numpy_helper.from_array(w2, "w2")),
        helper.make_node("MatMul", ["h", "w2"], ["y"], name="matmul"),
        helper.make_node("Relu", ["y"], ["z"]),
        helper.make_node("MatMul", ["z", "head"], ["logits"], name="head"),
    ]
    head = numpy_helper.from_array(rng.standard_normal((32, 16)).astype(np.float32), "head")
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, 16])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"), head])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    return model, {"w1": w1, "b1": b1, "w2": w2}


@pytest.mark.parametrize("options", [QuantOptions("int4"), QuantOptions("int8"), QuantOptions("int4", "QDQ", 64),
                                     QuantOptions("int8", "QDQ")], ids=lambda o: f"{o.scheme}-{o.format}")
def test_gemm_and_constant_weights_are_quantized(options):
    rng = np.random.default_rng(0)
    model, _ = _gemm_and_constant_model(rng)
    x = rng.standard_normal((2, 64)).astype(np.float32)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(  # noqa: E731
        None, {"x": x})[0]
    want = run(model)
    got_model, count = quantize_graph(model, options.checked())
    onnx.checker.check_model(got_model, full_check=True)
    assert count == 2  # the Gemm's and the Constant's weights; the head (nearest the logits) stays float
    assert not [n for n in got_model.graph.node if n.op_type in ("Gemm", "Constant")]
    head = next(n for n in got_model.graph.node if n.name == "head")
    assert head.op_type == "MatMul" and head.input[1] == "head"
    got = run(got_model)
    rel = np.abs(got - want).max() / np.abs(want).max()
    assert rel < (0.2 if options.scheme == "int4" else 0.02), rel
    assert rel > 0  # the weights did change
    with_head, count = quantize_graph(model, QuantOptions(options.scheme, options.format, options.block_size,
                                                          embeddings=True).checked())
    assert count == 3


def test_graph_without_weights_is_refused():
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["logits"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2])])
    with pytest.raises(LinexportError, match="no MatMul with a constant 2-D weight"):
        quantize_graph(helper.make_model(graph), QuantOptions("int4").checked())


def test_reexport_keeps_the_quantization(quantized, tmp_path):
    """`linexport trt --fp16` on an fp32 QDQ export re-exports it as fp16 with the same
    quantization; the manifest's re-export command names it too."""
    from linexport.contract.manifest import reexport_command

    src = quantized("linear", "int4-qdq")
    command = reexport_command(load_manifest(src))
    assert "--quantize int4 --quant-format QDQ --block-size 128" in command and "--opset 21" in command
    if not os.environ.get("CI"):
        pytest.importorskip("tensorrt_rtx", reason="pip install tensorrt-rtx-cu13 to run the TensorRT check")
    import shutil

    from linexport.export.engines import EngineOptions, build_engines

    out = tmp_path / "fp16"
    shutil.copytree(src, out)
    build_engines(out, EngineOptions(target="rtx", precision="fp16", max_batch=2, opt_seq=16, max_seq=64))
    manifest = load_manifest(out)
    assert manifest["precision"] == "fp16" and manifest["engines"]["precision"] == "fp16"
    assert {k: v for k, v in manifest["quantization"].items() if k != "nodes"} == \
        {k: v for k, v in load_manifest(src)["quantization"].items() if k != "nodes"}
