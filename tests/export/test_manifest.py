"""The manifest validator: what it accepts, what it refuses, and that it needs neither torch nor
onnx (the torch-free runtime imports it)."""

import copy
import json
import subprocess
import sys

import pytest

from linexport.errors import LinexportError
from linexport.contract.manifest import MANIFEST_NAME, load_manifest, validate_manifest


def test_importing_the_manifest_module_pulls_in_no_torch_or_onnx():
    code = ("import sys, linexport.contract.manifest, linexport.contract.op_spec; "
            "heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'numpy') if m in sys.modules]; "
            "assert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def manifest(exports):
    return json.loads((exports.dir("linear", "fp32") / MANIFEST_NAME).read_text())


def test_a_written_manifest_validates(manifest, exports):
    validate_manifest(manifest)
    assert load_manifest(exports.dir("linear", "fp32")) == manifest


def _mutations():
    def set_(path, value):
        def apply(m):
            target = m
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = value
        return apply

    return {
        "wrong format": (set_(["format"], "onnx"), "expected a linexport export manifest"),
        "newer version": (set_(["format_version"], 4), "manifest format version 4"),
        # An export from before continued prefill: refused with the command that writes it again.
        "older version": (set_(["format_version"], 1),
                          r"older linexport \(manifest format 1\).*Re-export it: linexport onnx --model "
                          r"\S+\.pt -o \S+ --dtype fp32 --lowering \w+ --opset \d+"),
        "missing field": (lambda m: m.pop("states"), "expected field 'states'"),
        "bool as int": (set_(["vocab_size"], True), "expected field 'vocab_size' to be a int"),
        "bad precision": (set_(["precision"], "int8"), "expected precision in"),
        "fp16 state": (set_(["states", 0, "dtype"], "float16"), "expected each state"),
        "renamed output": (set_(["graphs", "decode", "outputs", 1, "name"], "present.kv0"),
                           "the decode graph's IO does not match"),
        "escaping path": (set_(["graphs", "prefill", "file"], "../prefill.onnx"),
                          "a relative path inside the export"),
        "absolute path": (set_(["graphs", "prefill", "file"], "/etc/passwd"),
                          "a relative path inside the export"),
        "escaping external data": (set_(["graphs", "prefill", "external_data"],
                                         [{"file": "../../w.data", "sha256": "0" * 64}]),
                                   "a relative path inside the export"),
        "vocab mismatch": (set_(["vocab_size"], 7), "the prefill graph's IO does not match"),
    }


@pytest.mark.parametrize("case", list(_mutations()))
def test_invalid_manifests_are_refused(manifest, case):
    mutate, message = _mutations()[case]
    bad = copy.deepcopy(manifest)
    mutate(bad)
    with pytest.raises(LinexportError, match=message):
        validate_manifest(bad)


def test_load_checks_every_file_hash(exports, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(exports.dir("linear", "fp32"), out)
    (out / "prefill.onnx").write_bytes((out / "prefill.onnx").read_bytes() + b"\0")
    with pytest.raises(LinexportError, match="prefill.onnx to match the sha256"):
        load_manifest(out)
    assert load_manifest(out, verify_hashes=False)["arch"] == "linear"
    shutil.copy(exports.dir("linear", "fp32") / "prefill.onnx", out / "prefill.onnx")
    (out / "decode.onnx").unlink()
    with pytest.raises(LinexportError, match="decode.onnx .* is missing"):
        load_manifest(out)


ENGINES = {"target": "rtx", "tensorrt_version": "1.7.1.116", "precision": "fp32", "strongly_typed": True,
           "tf32": False, "profile": {"batch": [1, 1, 8], "seq": [1, 256, 4096]}, "attention": "traced",
           "plugin_library": None, "graphs": {"prefill": {"file": "prefill.engine", "sha256": "a" * 64},
                                              "decode": {"file": "decode.engine", "sha256": "b" * 64}}}


@pytest.mark.parametrize("change, message", [
    ({"target": "onnxruntime"}, "expected engines.target in"),
    ({"precision": "fp16"}, "engines built at the graphs' precision 'fp32'"),
    ({"profile": {"batch": [1, 8, 2], "seq": [1, 1, 1]}}, "expected engines.profile"),
    ({"profile": {"batch": [1, 1, 8]}}, "expected engines.profile"),
    ({"graphs": {"prefill": {"file": "prefill.engine", "sha256": "a" * 64}}}, "expected engines.graphs"),
    ({"graphs": {"prefill": {"file": "/tmp/x.engine", "sha256": "a" * 64},
                 "decode": {"file": "decode.engine", "sha256": "b" * 64}}}, "expected engines.graphs"),
    ({"plugin_library": {"file": "../lib.so", "sha256": "c" * 64}}, "expected engines.plugin_library"),
], ids=["target", "precision", "profile-order", "profile-no-seq", "one-graph", "absolute-engine", "plugin-path"])
def test_engine_records_are_validated(manifest, change, message):
    validate_manifest({**manifest, "engines": ENGINES})
    with pytest.raises(LinexportError, match=message):
        validate_manifest({**manifest, "engines": {**ENGINES, **change}})


# -- KV caches (since format 2) ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def kv_manifest(exports):
    return json.loads((exports.dir("softmax", "fp32") / MANIFEST_NAME).read_text())


def test_a_kv_cache_manifest_validates(kv_manifest):
    validate_manifest(kv_manifest)
    assert kv_manifest["format_version"] == 3
    assert kv_manifest["states"][0]["shape"] == ["batch", 3, "past_seq", 15]
    io = {g: {e["name"]: e["shape"] for e in kv_manifest["graphs"][g][k]}
          for g, k in (("prefill", "outputs"), ("decode", "inputs"))}
    assert io["prefill"]["present.0.key"] == ["batch", 3, "seq", 15]
    assert io["decode"]["past.0.key"] == ["batch", 3, "past_seq", 15]
    decode_out = {e["name"]: e["shape"] for e in kv_manifest["graphs"]["decode"]["outputs"]}
    assert decode_out["present.0.key"] == ["batch", 3, "past_seq+1", 15]


def _kv_mutations():
    def state_shape(shape):
        def apply(m):
            m["states"][0]["shape"] = shape
        return apply

    def decode_present(shape):
        def apply(m):
            m["graphs"]["decode"]["outputs"][1]["shape"] = shape
        return apply

    return {
        "cache in format 2": (lambda m: m.update(format_version=2), r"older linexport \(manifest format 2\)"),
        # The KV prefill starts from an empty cache: it has no position/past inputs.
        "kv prefill with a past": (lambda m: m["graphs"]["prefill"]["inputs"].append(
            {"name": "position", "shape": ["batch"], "dtype": "int64"}), "the prefill graph's IO does not match"),
        "two cache dims": (state_shape(["batch", "past_seq", "past_seq", 15]), "expected each state"),
        "other dim name": (state_shape(["batch", 3, "kv_len", 15]), "expected each state"),
        "present as long as past": (decode_present(["batch", 3, "past_seq", 15]),
                                    "the decode graph's IO does not match"),
        "prefill cache not seq": (lambda m: m["graphs"]["prefill"]["outputs"][1].update(
            shape=["batch", 3, "past_seq", 15]), "the prefill graph's IO does not match"),
    }


@pytest.mark.parametrize("case", list(_kv_mutations()))
def test_invalid_kv_cache_manifests_are_refused(kv_manifest, case):
    mutate, message = _kv_mutations()[case]
    bad = copy.deepcopy(kv_manifest)
    mutate(bad)
    with pytest.raises(LinexportError, match=message):
        validate_manifest(bad)
