"""`linexport onnx` and `linexport verify` end to end, atomic output, and bad inputs."""

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from linexport.cli import main
from linexport.errors import LinexportError
from linexport.export import exporter
from linexport.export.exporter import check_options, export_checkpoint, source_record
from linexport.contract.manifest import MANIFEST_NAME
from linexport.export.ort_session import OrtGraphs
from linexport.files import file_sha256
from linexport.models.checkpoint import save_checkpoint
from tests.export.conftest import make_model


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_user_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


def test_export_verify_and_atomic_replace(checkpoints, tmp_path, monkeypatch):
    ckpt, out = checkpoints["linear"], tmp_path / "out"
    result = cli("onnx", "--model", ckpt, "-o", out)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert sorted(p.name for p in out.iterdir()) == ["decode.onnx", MANIFEST_NAME, "prefill.onnx"]
    assert manifest["source"] == {"checkpoint": str(ckpt), "sha256": file_sha256(ckpt)}
    assert manifest["lowering"]["option"] == "function" and manifest["opset"] == 20
    assert manifest["lowering"]["ops"] == {"causal_linear_attention": "function"}
    result = cli("verify", out, "--steps", 4)
    assert result.exit_code == 0, result.output
    # 2 prompt sets x 4 groups x (logits + every state)
    assert f"all {2 * 4 * (1 + len(manifest['states']))} checks passed" in result.output
    assert "prefill(a) + continued prefill(b) == prefill(a+b) present.1.kv" in result.output

    # A second export replaces the first only once it is complete: external data forced on.
    monkeypatch.setattr(exporter, "EXTERNAL_DATA_THRESHOLD", 0)
    result = cli("onnx", "--model", ckpt, "-o", out, "--lowering", "standard", "--dtype", "fp16",
                 "--full-logits")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert (manifest["precision"], manifest["opset"], manifest["full_logits"]) == ("fp16", 27, True)
    assert [e["file"] for e in manifest["graphs"]["prefill"]["external_data"]] == ["prefill.onnx.data"]
    weights = onnx.load(str(out / "prefill.onnx"), load_external_data=False).graph.initializer
    external = [t.data_location == onnx.TensorProto.EXTERNAL for t in weights]
    assert any(external) and all(e or len(t.raw_data) < 1024 for e, t in zip(external, weights))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "temp or backup dirs left behind"
    result = cli("verify", out, "--steps", 3)
    assert result.exit_code == 0, result.output


# Reformer's fp16 graphs are checked against PyTorch in tests/export/test_lowerings.py; here the
# command end to end on one arch of each state kind and on GAU.
@pytest.mark.parametrize("arch", ["linear", "flash", "softmax"])
def test_verify_passes_on_a_plugin_lowered_fp16_export(arch, exports):
    result = cli("verify", exports.dir(arch, "fp16"), "--steps", 2)
    assert result.exit_code == 0, result.output
    assert "passed" in result.output


def test_verify_fails_on_a_cache_of_the_wrong_length():
    from linexport.export.verify import errors

    ref = np.ones((2, 3, 5, 4))
    assert errors(ref[:, :, :1], ref) == (float("inf"), float("inf"))  # would broadcast to 0
    assert errors(ref, ref) == (0.0, 0.0)


def test_verify_fails_when_the_graphs_disagree(exports, monkeypatch):
    prefill = OrtGraphs.prefill

    def off_by_a_little(self, input_ids, lengths, position=None, state=None):
        logits, state = prefill(self, input_ids, lengths, position, state)
        return logits + np.float32(1e-2) * np.abs(logits).max(), state

    monkeypatch.setattr(OrtGraphs, "prefill", off_by_a_little)
    result = cli("verify", exports.dir("linear", "fp32"), "--steps", 2)
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.output and "prefill logits" in result.output
    assert "continued prefill(b) == prefill(a+b) logits" in result.output  # a continued prefill is off too


# -- bad inputs -----------------------------------------------------------------------------------
@pytest.mark.parametrize("lowering, opset, dtype, message", [
    ("standard", 20, "fp32", "expected --opset 27 or higher with --lowering standard"),
    ("function", 19, "fp32", "expected --opset between 20 and 27, got 19"),
    ("plugin", 28, "fp32", "expected --opset between 20 and 27, got 28"),
    ("quadratic", None, "fp32", "expected --lowering in"),
    ("function", None, "bf16", "expected --dtype in"),
])
def test_bad_option_combinations(lowering, opset, dtype, message):
    with pytest.raises(LinexportError, match=message.replace("-", r"\-")):
        check_options(lowering, opset, dtype)


def test_cli_reports_bad_options_without_traceback(checkpoints, tmp_path):
    ckpt = checkpoints["linear"]
    assert_user_error(cli("onnx", "--model", ckpt, "-o", tmp_path / "o", "--lowering", "standard",
                          "--opset", 21), "error: expected --opset 27 or higher")
    result = cli("onnx", "--model", ckpt, "--lowering", "quadratic")
    assert result.exit_code == 2 and "Invalid value for '--lowering'" in result.output
    assert not (tmp_path / "o").exists()


def test_checkpoint_that_fails_to_load(checkpoints, tmp_path):
    truncated = tmp_path / "truncated.pt"
    data = checkpoints["linear"].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    assert_user_error(cli("onnx", "--model", truncated, "-o", tmp_path / "out"),
                      "error:", "is not a readable PyTorch checkpoint")
    assert_user_error(cli("onnx", "--model", tmp_path / "missing.pt", "-o", tmp_path / "out"), "does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["truncated.pt"], "nothing may be left behind"


def test_unwritable_or_foreign_output(checkpoints, tmp_path):
    ckpt = checkpoints["linear"]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert_user_error(cli("onnx", "--model", ckpt, "-o", a_file), "expected -o to name a directory")
    assert_user_error(cli("onnx", "--model", ckpt, "-o", a_file / "sub"), "expected a writable place")
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_text("meow")
    assert_user_error(cli("onnx", "--model", ckpt, "-o", foreign), "holds other files")
    assert [p.name for p in foreign.iterdir()] == ["cat.jpg"]


def test_failed_export_keeps_the_previous_one(exports, checkpoints, tmp_path, monkeypatch):
    """The export fails after both graphs were written to the temp dir: OUT keeps the old export."""
    good = exports.dir("linear", "fp32")
    out = tmp_path / "out"
    shutil.copytree(good, out)
    before = {p.name: file_sha256(p) for p in out.iterdir()}
    # Skip the slow tracing: hand the exporter the bare graphs it traced before.
    monkeypatch.setattr(exporter, "trace_prefill", lambda *a, **k: onnx.load(str(good / "prefill.onnx")))
    monkeypatch.setattr(exporter, "trace_decode", lambda *a, **k: onnx.load(str(good / "decode.onnx")))
    written = []

    def disk_full(data, root):
        written.extend(sorted(p.name for p in root.iterdir()))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(exporter, "write_manifest", disk_full)
    with pytest.raises(OSError, match="No space left"):
        export_checkpoint(checkpoints["linear"], out, dtype="fp16")
    assert written == ["decode.onnx", "prefill.onnx"]
    assert {p.name: file_sha256(p) for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "temp dir left behind"


def test_verify_bad_directories(exports, tmp_path):
    assert_user_error(cli("verify", tmp_path), "expected an export directory holding linexport.json")
    out = tmp_path / "out"
    shutil.copytree(exports.dir("linear", "fp32"), out)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    with open(out / "decode.onnx", "ab") as f:
        f.write(b"\0")
    assert_user_error(cli("verify", out), "decode.onnx to match the sha256")
    shutil.copy(exports.dir("linear", "fp32") / "decode.onnx", out / "decode.onnx")
    moved = tmp_path / "moved.pt"
    assert_user_error(cli("verify", out, "--model", moved), "is missing; pass its new location with --model")
    other = make_model("linear")
    with torch.no_grad():
        other.embed.weight[0, 0] += 1.0
    save_checkpoint(other, moved)
    assert_user_error(cli("verify", out, "--model", moved), "different sha256")
    manifest["format_version"] = 99
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert_user_error(cli("verify", out), "manifest format version 99")


def test_source_record_of_safetensors_checkpoints(tmp_path):
    save_checkpoint(make_model("linear"), tmp_path / "model.safetensors")
    record = source_record(tmp_path)  # a directory holding one checkpoint, as load_checkpoint accepts
    assert record == {"checkpoint": str(tmp_path / "model.safetensors"),
                      "sha256": file_sha256(tmp_path / "model.safetensors"),
                      "config_sha256": file_sha256(tmp_path / "model.json")}
