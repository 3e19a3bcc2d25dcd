"""An export directory is self-contained: no file it names, and no external data its graphs
reference, may lie outside it — checked before any parser (ONNX Runtime, TensorRT) sees a graph."""

from __future__ import annotations

import json
import os
import shutil

import onnx
import pytest
from click.testing import CliRunner
from onnx import external_data_helper

from linexport.cli import main
from linexport.contract.manifest import MANIFEST_NAME, load_manifest
from linexport.contract.onnx_refs import external_data_files
from linexport.errors import LinexportError
from linexport.files import file_sha256
from tests.conftest import tiny_linear_export


@pytest.fixture(scope="module")
def external_export(tmp_path_factory):
    """A tiny linear export whose weights all live in <graph>.onnx.data files."""
    return tiny_linear_export(tmp_path_factory.mktemp("confined"), external_data_threshold=0)[1]


def _onnx_locations(path) -> set:
    """The reference: onnx's own walk over every tensor of the model."""
    model = onnx.load(str(path), load_external_data=False)
    return {dict((e.key, e.value) for e in t.external_data)["location"]
            for t in external_data_helper._get_all_tensors(model) if external_data_helper.uses_external_data(t)}


def test_reader_agrees_with_onnx(external_export):
    for name in ("prefill", "decode"):
        path = external_export / f"{name}.onnx"
        assert external_data_files(path) == _onnx_locations(path) == {f"{name}.onnx.data"}


def _redirect(out, outside):
    """Points one prefill initializer at 'evil.bin', a symlink to ``outside``, and re-records the
    graph's sha256 in the manifest (what a crafted directory would do)."""
    path = out / "prefill.onnx"
    model = onnx.load(str(path), load_external_data=False)
    tensor = next(t for t in model.graph.initializer if external_data_helper.uses_external_data(t))
    for entry in tensor.external_data:
        if entry.key == "location":
            entry.value = "evil.bin"
    onnx.save_model(model, str(path))
    os.symlink(outside, out / "evil.bin")
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    manifest["graphs"]["prefill"]["sha256"] = file_sha256(path)
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))


def test_unlisted_external_data_is_refused_everywhere(external_export, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(external_export, out, symlinks=True)
    outside = tmp_path / "secret.bin"
    shutil.copyfile(out / "prefill.onnx.data", outside)  # same bytes: only the path gives it away
    _redirect(out, outside)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and not p.is_symlink()}

    with pytest.raises(LinexportError, match=r"reference only the external data .* \['evil.bin'\]"):
        load_manifest(out)

    from linexport.runtime import Model

    with pytest.raises(LinexportError, match="evil.bin"):
        Model(out)
    runner = CliRunner()
    for args in (["verify", str(out)], ["trt", str(out), "--target", "rtx"], ["compare", str(out), "--backend", "ort"],
                 ["generate", str(out), "--prompt", "x"]):
        result = runner.invoke(main, args)
        assert result.exit_code == 2 and "evil.bin" in result.output and "Traceback" not in result.output, (args, result.output)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and not p.is_symlink()} == before
    assert not list(out.glob("*.engine"))


def test_listed_files_may_not_point_outside(external_export, tmp_path):
    for victim in ("decode.onnx.data", "decode.onnx"):
        out = tmp_path / victim
        shutil.copytree(external_export, out)
        outside = tmp_path / f"outside-{victim}"
        shutil.move(out / victim, outside)
        os.symlink(outside, out / victim)  # same bytes and sha256, but outside the export
        with pytest.raises(LinexportError, match="to lie inside"):
            load_manifest(out)


def test_a_plain_export_passes(external_export):
    load_manifest(external_export)
