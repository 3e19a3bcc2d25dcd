"""`linexport trt`: TensorRT engine builds recorded in the manifest.

TensorRT-RTX's builder runs without a GPU, so the whole `--target rtx` flow runs here for both
archs and both precisions: parse, network IO check, profile, build, engine files, manifest.
The `--target tensorrt` flow shares every step but the plugin loading and needs full TensorRT,
which no package registry serves for our CPU machines: its tests skip with that reason.
"""

import json
import os
import shutil

import pytest
from click.testing import CliRunner

from linexport.cli import main
from linexport.errors import LinexportError
from linexport.export.engines import ENGINE_FILES, EngineOptions, build_engines
from linexport.export.exporter import export_checkpoint
from linexport.contract.manifest import MANIFEST_NAME
from linexport.files import file_sha256
from linexport.runtime.export_dir import read_manifest
from linexport.tensorrt_flavours import is_installed
from tests.export.conftest import ARCHS, KV_CACHE_ARCHS

if os.environ.get("CI"):
    import tensorrt_rtx  # noqa: F401  CI must run these builds: pip install tensorrt-rtx-cu13
elif not is_installed("rtx"):
    pytest.skip("pip install tensorrt-rtx-cu13 to run the TensorRT-RTX builds", allow_module_level=True)

SMALL = dict(max_batch=3, opt_batch=2, max_seq=96, opt_seq=40)


def snapshot(directory):
    """Every file's name and bytes: to prove a failed build changed nothing."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


class _LazyExports(dict):
    """arch -> export directory, each exported the first time a test asks for it (an arch that
    fails to export fails its own tests only)."""

    def __init__(self, checkpoints, root):
        super().__init__()
        self.checkpoints, self.root = checkpoints, root

    def __missing__(self, arch):
        if arch not in ARCHS:
            raise KeyError(arch)
        export_checkpoint(self.checkpoints[arch], self.root / arch)
        self[arch] = self.root / arch
        return self[arch]


@pytest.fixture(scope="module")
def fp32_exports(checkpoints, tmp_path_factory):
    """arch -> a function-lowered fp32 export (the default `linexport onnx` output)."""
    return _LazyExports(checkpoints, tmp_path_factory.mktemp("engine-exports"))


def expected_profiles(manifest: dict, batch, seq) -> dict:
    """graph -> input -> [min, opt, max] shapes, from the manifest's states (not its graph IO,
    which the build reads): the prefill continues from a state (position, past.* as decode
    takes them) unless the states are KV caches."""
    fixed = all(isinstance(d, int) for s in manifest["states"] for d in s["shape"][1:])
    past = {"position": [[b] for b in batch],
            **{f"past.{s['name']}": [[b, *s["shape"][1:]] for b in batch] for s in manifest["states"]}}
    prefill = {"input_ids": [[b, t] for b, t in zip(batch, seq)], "lengths": [[b] for b in batch]}
    if fixed:
        return {"prefill": {**prefill, **past}, "decode": {"input_ids": [[b, 1] for b in batch], **past}}
    return {"prefill": prefill}  # a KV cache's decode past has the past_seq dim: checked by the build


# Every arch once; fp16 (built through the re-export of the fp32 export) for the two fixed-state
# archs, the baselines in fp32: each case is a full export + two engine builds.
@pytest.mark.parametrize("arch,precision", [("linear", "fp32"), ("linear", "fp16"), ("flash", "fp16"),
                                            ("softmax", "fp32"), ("reformer", "fp32")])
def test_rtx_builds_and_records_engines(arch, precision, fp32_exports, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(fp32_exports[arch], out)
    messages = []
    report = build_engines(out, EngineOptions(target="rtx", precision=precision, **SMALL), log=messages.append)

    # fp16 from an fp32 export: re-exported in place, and said so.
    assert (report.reexported is not None) == (precision == "fp16")
    if report.reexported:
        assert "holds fp32 graphs: re-exporting" in report.reexported and report.reexported in messages
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest == report.manifest and manifest["precision"] == precision
    engines = manifest["engines"]
    assert engines["target"] == "rtx" and engines["precision"] == precision and engines["strongly_typed"]
    kv_cache = {"past_seq": [0, 40, 96]} if arch in KV_CACHE_ARCHS else {}  # the decode graph's cache length
    assert engines["profile"] == {"batch": [1, 2, 3], "seq": [1, 40, 96], **kv_cache}
    # Every input of each engine got its shapes from the manifest: a fixed-size state's prefill
    # engine takes position and past.* (batch 1..3, the state's dims), a KV cache's does not.
    expected = expected_profiles(manifest, (1, 2, 3), (1, 40, 96))
    for graph, inputs in expected.items():
        assert report.profiles[graph] == inputs, graph
        assert list(report.profiles[graph]) == [e["name"] for e in manifest["graphs"][graph]["inputs"]]
    prefill_inputs = set(report.profiles["prefill"])
    assert ("position" in prefill_inputs) == (arch not in KV_CACHE_ARCHS)
    assert all(f"past.{s['name']}" in prefill_inputs for s in manifest["states"]) == (arch not in KV_CACHE_ARCHS)
    assert engines["attention"] == ("inlined function body" if arch == "linear" else "traced")
    assert engines["plugin_library"] is None
    for name, file in ENGINE_FILES.items():
        assert engines["graphs"][name] == {"file": file, "sha256": file_sha256(out / file)}
        assert (out / file).stat().st_size > 10_000
    # The state stays fp32 in the graphs the engines were built from (checked again on the parsed
    # network by build_engines); logits carry the precision.
    decode = {e["name"]: e["dtype"] for e in manifest["graphs"]["decode"]["outputs"]}
    assert decode.pop("logits") == {"fp32": "float32", "fp16": "float16"}[precision]
    assert set(decode.values()) == {"float32"}
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temp files left behind"
    assert any("building the decode engine" in m for m in messages)
    assert any("Building engine" in m for m in messages), "no progress shown"

    # The runtime accepts the record and refuses an engine changed after the build.
    assert read_manifest(out).engine_path("decode") == out / "decode.engine"
    (out / "decode.engine").write_bytes(b"not an engine")
    with pytest.raises(LinexportError, match="does not match the sha256"):
        read_manifest(out)


def test_rebuild_replaces_the_record(fp32_exports, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(fp32_exports["linear"], out)
    build_engines(out, EngineOptions(target="rtx", **SMALL))
    first = read_manifest(out).data["engines"]
    build_engines(out, EngineOptions(target="rtx", max_batch=5, max_seq=64))
    second = read_manifest(out).data["engines"]
    assert second["profile"] == {"batch": [1, 1, 5], "seq": [1, 64, 64]}
    assert second["graphs"]["prefill"]["sha256"] != first["graphs"]["prefill"]["sha256"]


def test_a_state_shape_the_graphs_do_not_have_is_refused(fp32_exports, tmp_path):
    """The profile is made from the manifest's shapes: a manifest whose state disagrees with the
    graphs (edited consistently everywhere it appears, so it still validates) is refused before
    building, and OUT is left as it was."""
    out = tmp_path / "out"
    shutil.copytree(fp32_exports["linear"], out)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    state = manifest["states"][0]
    old = list(state["shape"])
    state["shape"] = [*old[:-1], old[-1] + 1]
    for graph in manifest["graphs"].values():
        for entry in [*graph["inputs"], *graph["outputs"]]:
            if entry["name"] in (f"past.{state['name']}", f"present.{state['name']}"):
                entry["shape"] = list(state["shape"])
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    before = snapshot(out)
    with pytest.raises(LinexportError, match=rf"network input shapes .*past\.{state['name']}"):
        build_engines(out, EngineOptions(target="rtx", **SMALL))
    assert snapshot(out) == before


def test_rtx_refuses_graphs_lowered_for_tensorrt(exports, tmp_path):
    """The bare node would abort the RTX parser (the whole process): refused before parsing."""
    out = tmp_path / "plugin"
    shutil.copytree(exports.dir("linear", "fp32"), out)  # the fixture's exports use --lowering plugin
    before = snapshot(out)
    with pytest.raises(LinexportError, match="builds only 'function'-lowered graphs.*--lowering function"):
        build_engines(out, EngineOptions(target="rtx"))
    assert snapshot(out) == before


def test_rtx_refuses_the_standard_lowering(checkpoints, tmp_path):
    out = tmp_path / "standard"
    export_checkpoint(checkpoints["linear"], out, lowering="standard")
    before = snapshot(out)
    with pytest.raises(LinexportError, match="'standard' lowering"):
        build_engines(out, EngineOptions(target="rtx"))
    assert snapshot(out) == before


def test_reexport_needs_the_unchanged_checkpoint(checkpoints, fp32_exports, tmp_path):
    ckpt, out = tmp_path / "model.pt", tmp_path / "out"
    shutil.copy(checkpoints["linear"], ckpt)
    shutil.copytree(fp32_exports["linear"], out)
    manifest = json.loads((out / MANIFEST_NAME).read_text())  # as if exported from the copy
    manifest["source"]["checkpoint"] = str(ckpt)
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    before = snapshot(out)
    with open(ckpt, "ab") as f:
        f.write(b"\0")
    with pytest.raises(LinexportError, match="changed since that export.*--dtype fp16"):
        build_engines(out, EngineOptions(target="rtx", precision="fp16"))
    ckpt.unlink()
    with pytest.raises(LinexportError, match="is gone.*--dtype fp16"):
        build_engines(out, EngineOptions(target="rtx", precision="fp16"))
    assert snapshot(out) == before


@pytest.mark.parametrize("options, match", [
    (dict(target="tensorrt-llm"), "expected --target in"),
    (dict(precision="bf16"), "bf16 engines need a bf16 export"),
    (dict(precision="int8"), "expected a precision in"),
    (dict(min_batch=4, opt_batch=2), "--min-batch <= --opt-batch <= --max-batch"),
    (dict(max_batch=0, opt_batch=1), "--min-batch <= --opt-batch <= --max-batch"),
    (dict(max_seq=64, opt_seq=65), "--opt-seq <= --max-seq"),
    (dict(workspace_mb=0), "--workspace"),
    (dict(target="rtx", plugin_lib="lib.so"), "TensorRT-RTX takes no custom plugins"),
], ids=["target", "bf16", "int8", "batch-order", "batch-zero", "seq-order", "workspace", "rtx-plugin"])
def test_bad_options(options, match, fp32_exports):
    with pytest.raises(LinexportError, match=match):
        build_engines(fp32_exports["linear"], EngineOptions(**options))


@pytest.mark.skipif(is_installed("tensorrt"), reason="full TensorRT is installed here")
def test_missing_tensorrt_names_the_package(fp32_exports):
    with pytest.raises(LinexportError, match="is not installed.*pip install tensorrt-cu13"):
        build_engines(fp32_exports["linear"], EngineOptions(target="tensorrt"))


def test_rtx_has_no_timing_cache(fp32_exports, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "timing.cache"
    shutil.copytree(fp32_exports["linear"], out)
    messages = []
    build_engines(out, EngineOptions(target="rtx", timing_cache=cache, **SMALL), log=messages.append)
    assert not cache.exists() and any("--timing-cache ignored" in m for m in messages)


def test_cli(fp32_exports, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(fp32_exports["flash"], out)
    runner = CliRunner()
    result = runner.invoke(main, ["trt", str(out), "--target", "rtx", "--max-batch", "2", "--max-seq", "64"])
    assert result.exit_code == 0, result.output
    assert "built prefill.engine, decode.engine" in result.output and "batch <= 2, prompt <= 64 tokens" in result.output
    assert read_manifest(out).data["engines"]["profile"]["seq"] == [1, 64, 64]
    result = runner.invoke(main, ["trt", str(out), "--target", "rtx", "--bf16"])
    assert result.exit_code == 2 and "bf16" in result.output and "Traceback" not in result.output
    result = runner.invoke(main, ["trt", str(tmp_path / "missing"), "--target", "rtx"])
    assert result.exit_code == 2 and "linexport onnx -o" in result.output


@pytest.mark.skipif(not is_installed("tensorrt"), reason="needs full TensorRT (pip install tensorrt-cu13) "
                    "and a GPU; no package registry serves it for our CPU machines")
def test_tensorrt_builds_with_our_plugin(fp32_exports, tmp_path):
    from linexport.plugins import find_plugin_library

    try:
        find_plugin_library()
    except LinexportError as e:
        pytest.skip(str(e))
    out = tmp_path / "out"
    shutil.copytree(fp32_exports["linear"], out)
    report = build_engines(out, EngineOptions(target="tensorrt", timing_cache=tmp_path / "cache", **SMALL))
    engines = report.manifest["engines"]
    assert engines["attention"] == "plugin"  # ENABLE_PLUGIN_OVERRIDE took our plugin over the body
    plugin = engines["plugin_library"]
    assert plugin["sha256"] == file_sha256(out / plugin["file"])
    assert (tmp_path / "cache").stat().st_size > 0


def test_product_card_commands_on_the_demo_model(tmp_path, monkeypatch):
    """`linexport onnx` then `linexport trt --fp16`, as written: the bundled demo model, the
    default directory, the TensorRT flavour installed here, fp16 graphs re-exported for it."""
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(main, ["onnx"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["trt", "--fp16", "--max-batch", "2", "--max-seq", "256"])
    assert result.exit_code == 0, result.output
    assert "note: linexport-out holds fp32 graphs: re-exporting" in result.output
    manifest = read_manifest(tmp_path / "linexport-out")
    assert manifest.precision == "fp16" and manifest.engines["precision"] == "fp16"
    assert manifest.engines["target"] == ("tensorrt" if is_installed("tensorrt") else "rtx")
    assert manifest.engine_path("prefill").stat().st_size > 100_000
