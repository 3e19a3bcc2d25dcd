"""Opening an export: the files the chosen backend loads are hashed, once per unchanged file
per process; a file changed since is hashed again and refused."""

import json
import os
import shutil

import pytest

from linexport.contract import manifest as contract_manifest
from linexport.errors import LinexportError
from linexport.runtime import Model
from linexport.runtime.export_dir import read_manifest


@pytest.fixture
def hashed(monkeypatch):
    """The paths file_sha256 actually reads, in order."""
    seen = []
    real = contract_manifest.file_sha256
    monkeypatch.setattr(contract_manifest, "file_sha256", lambda p: (seen.append(p.name), real(p))[1])
    return seen


@pytest.fixture
def export(runtime_exports, tmp_path):
    out = tmp_path / "e"  # a fresh copy: never opened in this process, nothing cached for it
    shutil.copytree(runtime_exports["linear"][0], out)
    return out


def test_second_open_does_not_rehash(export, hashed):
    Model(export)
    graphs = [e["file"] for e in contract_manifest.graph_files(json.loads((export / "linexport.json").read_text()))]
    assert sorted(hashed) == sorted(graphs) and "prefill.onnx" in hashed and "decode.onnx" in hashed
    Model(export)
    read_manifest(export, backend="ort")
    assert sorted(hashed) == sorted(graphs), "an unchanged export was read again"


def test_a_file_changed_after_the_first_open_is_refused(export, hashed):
    Model(export)
    data = (export / "decode.onnx").read_bytes()
    (export / "decode.onnx").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, new content
    st = os.stat(export / "decode.onnx")
    os.utime(export / "decode.onnx", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # coarse-mtime filesystems
    with pytest.raises(LinexportError, match="decode.onnx to match the sha256"):
        Model(export)
    assert hashed.count("decode.onnx") == 2
    (export / "decode.onnx").write_bytes(data)  # put back: accepted again
    Model(export)


def test_the_ort_backend_hashes_only_what_it_loads(export, hashed):
    """An engine record (as `linexport trt` writes it) whose engine file is garbage: ONNX Runtime
    never reads it, so opening with backend 'ort' neither hashes nor refuses it; a full check
    (backend None) and the TensorRT backend do refuse it."""
    path = export / "linexport.json"
    data = json.loads(path.read_text())
    data["engines"] = {"target": "rtx", "tensorrt_version": "1.7.1.116", "precision": data["precision"],
                       "strongly_typed": True, "tf32": False,
                       "profile": {"batch": [1, 1, 4], "seq": [1, 16, 64]}, "attention": "traced",
                       "plugin_library": None,
                       "graphs": {"prefill": {"file": "prefill.engine", "sha256": "a" * 64},
                                  "decode": {"file": "decode.engine", "sha256": "b" * 64}}}
    path.write_text(json.dumps(data))
    for name in ("prefill.engine", "decode.engine"):
        (export / name).write_bytes(b"not an engine")
    Model(export, backend="ort")
    assert not [h for h in hashed if h.endswith(".engine")]
    with pytest.raises(LinexportError, match="does not match the sha256"):
        read_manifest(export)
    with pytest.raises(LinexportError, match="does not match the sha256"):
        Model(export, backend="trt", device="cuda")
    # And the TensorRT side does not hash the .onnx graphs it never loads.
    hashed.clear()
    contract_manifest._DIGESTS.clear()  # cold: a graph hashed now would show
    with pytest.raises(LinexportError, match="decode.engine|prefill.engine"):
        read_manifest(export, backend="trt")
    assert hashed and not [h for h in hashed if h.endswith(".onnx")]
