"""`linexport compare`: two backends on the same inputs, output by output. Here both are ONNX
Runtime (TensorRT needs a GPU; see test_trt_backend.py), over exports that must agree and
over exports that must not."""

import pytest
from click.testing import CliRunner

from linexport.cli import main
from linexport.errors import LinexportError
from linexport.export.exporter import export_checkpoint
from linexport.models.checkpoint import save_checkpoint
from linexport.runtime import Model
from linexport.runtime.compare import FP16_REL_TOL, compare_backends
from tests.export.conftest import make_model


def backend(path, slots=3):
    return Model(path, num_slots=slots).backend


def test_same_graphs_agree_exactly(arch_export):
    path, _ = arch_export
    checks = compare_backends(backend(path), backend(path), "fp32", steps=5)
    states = len(backend(path).state_names)
    assert len(checks) == 2 * (1 + states)  # prefill and decode: logits + every state
    assert all(c.ok and c.abs_err == 0.0 for c in checks), checks


def test_fp16_graphs_agree_within_the_fp16_tolerance(tmp_path):
    """The fp16 export against the fp32 one: a real low-precision difference, which must be
    well inside the tolerance compare allows two fp16 runs (their difference is smaller)."""
    ckpt = tmp_path / "m.pt"
    save_checkpoint(make_model("linear"), ckpt)
    export_checkpoint(ckpt, tmp_path / "fp32")
    export_checkpoint(ckpt, tmp_path / "fp16", dtype="fp16")
    checks = compare_backends(backend(tmp_path / "fp32"), backend(tmp_path / "fp16"), "fp16", steps=4)
    assert all(c.ok for c in checks), checks
    worst = max(c.rel_err for c in checks)
    assert 0 < worst < FP16_REL_TOL / 4, worst


# One fixed-size state and one KV cache: the comparison does not depend on the arch beyond that
# (every arch's graphs agree with themselves above), and each case exports a second model.
@pytest.mark.parametrize("arch", ["linear", "softmax"])
def test_different_weights_are_caught(arch, runtime_exports, tmp_path):
    path, model = runtime_exports[arch]
    other = make_model(model.arch)
    import torch

    with torch.no_grad():
        other.lm_head.weight.mul_(1.01)  # a 1 % change in one matrix
    ckpt = tmp_path / "other.pt"
    save_checkpoint(other, ckpt)
    export_checkpoint(ckpt, tmp_path / "other")
    checks = compare_backends(backend(path), backend(tmp_path / "other"), "fp32", steps=3)
    failed = {c.what for c in checks if not c.ok}
    assert "prefill logits" in failed and "decode x3 logits (worst step)" in failed, checks


def test_refuses_mismatched_backends(runtime_exports):
    linear, flash = runtime_exports["linear"][0], runtime_exports["flash"][0]
    with pytest.raises(LinexportError, match="expected two backends over one model"):
        compare_backends(backend(linear), backend(flash), "fp32")
    with pytest.raises(LinexportError, match="at least 3 slots"):
        compare_backends(backend(linear, 1), backend(linear, 1), "fp32")


def test_cli(runtime_exports):
    path = runtime_exports["flash"][0]
    runner = CliRunner()
    result = runner.invoke(main, ["compare", str(path), "--backend", "ort", "--device", "cpu", "--steps", "3"])
    assert result.exit_code == 0, result.output
    states = len(backend(path).state_names)
    assert f"all {2 * (1 + states)} checks passed" in result.output
    # With no engines built, the default TensorRT backend says how to build them.
    result = runner.invoke(main, ["compare", str(path)])
    assert result.exit_code == 2 and "linexport trt" in result.output, result.output
