"""The function-lowered graphs parse and build in TensorRT-RTX's builder (it runs without a GPU):
the only real TensorRT parser/builder we can run here. Without a registered plugin the parser
inlines the function body, so this also checks that the body is something TensorRT builds."""

import os

import pytest

from tests.export.conftest import ARCHS, DTYPES

if os.environ.get("CI"):
    import tensorrt_rtx as trt  # CI must run this check: pip install tensorrt-rtx-cu13
else:
    trt = pytest.importorskip("tensorrt_rtx", reason="pip install tensorrt-rtx-cu13 to run the TensorRT check")

# batch and seq ranges of the optimisation profile: (min, opt, max)
BATCH, SEQ = (1, 2, 4), (1, 37, 512)


def build(model_bytes: bytes) -> tuple[bytes | None, list[str]]:
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model_bytes):
        return None, [str(parser.get_error(i)) for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shapes = []
        for k in range(3):
            dims = [BATCH[k] if axis == 0 else SEQ[k] if d < 0 else d
                    for axis, d in enumerate(tensor.shape)]
            shapes.append(dims)
        profile.set_shape(tensor.name, *shapes)
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    return (bytes(engine) if engine is not None else None), []


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("arch", ARCHS)
def test_function_lowered_graphs_build(arch, dtype, exports):
    for graph in exports.lowered(arch, dtype, "function"):
        engine, errors = build(graph.SerializeToString())
        assert not errors, errors
        assert engine, f"TensorRT-RTX failed to build the {graph.graph.name} graph"


def test_bare_node_is_left_to_the_plugin(exports):
    """Without our plugin registered, the parser must refuse the bare node (it is no op of its
    own): proof that the function body, not some builtin, is what the test above built."""
    prefill, _ = exports.lowered("linear", "fp32", "plugin")
    engine, errors = build(prefill.SerializeToString())
    assert engine is None and any("CausalLinearAttention" in e for e in errors), errors


def test_unnormalised_function_bodies_build(tmp_path):
    """The unnormalised form (fla's default: no normaliser column) with GQA, the learnable feature
    map and the output norm: both graphs' bodies build too."""
    import onnx

    from linexport.export.exporter import export_checkpoint
    from linexport.models.checkpoint import save_checkpoint
    from tests.models.block_models import make_model

    model = make_model("linear", "fla-gqa-hadamard-unnorm")
    save_checkpoint(model, tmp_path / "ckpt.pt")
    export_checkpoint(tmp_path / "ckpt.pt", tmp_path / "out")
    for name in ("prefill", "decode"):
        engine, errors = build(onnx.load(str(tmp_path / "out" / f"{name}.onnx")).SerializeToString())
        assert not errors, errors
        assert engine, f"TensorRT-RTX failed to build the unnormalised {name} graph"
