"""The TensorRT plugin against a real TensorRT: the lean runtime's plugin registry (no GPU needed).

Needs TensorRT headers to build the plugin (``TensorRT_ROOT``, see conftest.py) and the lean
runtime (``pip install tensorrt-lean-cu13``); each test skips with the reason otherwise. The
Python bindings reach a C++ plugin's creator and core only, so the IPluginV3 build/runtime
interfaces (serialization round trip, format support, shape checks) are driven from
plugin_driver.cpp, loaded into the same registry through libnvinfer_lean.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

NAME, VERSION, NAMESPACE = "CausalLinearAttention", "1", ""
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def trt():
    return pytest.importorskip("tensorrt_lean", reason="the TensorRT lean runtime is not installed: pip install tensorrt-lean-cu13")


@pytest.fixture(scope="module")
def registry(trt, plugin_lib):
    from linexport.plugins import load_trt_plugins

    reg = trt.get_plugin_registry()
    assert load_trt_plugins(reg, plugin_lib) == plugin_lib
    return reg


def fields(trt, **values):
    out = []
    for name, (value, dtype, ftype) in values.items():
        out.append(trt.PluginField(name, np.array(value, dtype=dtype), getattr(trt.PluginFieldType, ftype)))
    return trt.PluginFieldCollection(out)


def test_creator_found_by_name_version_namespace(trt, registry):
    creator = registry.get_creator(NAME, VERSION, NAMESPACE)
    assert creator is not None
    assert (creator.name, creator.plugin_version, creator.plugin_namespace) == (NAME, VERSION, NAMESPACE)
    assert isinstance(creator, trt.IPluginCreatorV3One)
    assert registry.get_creator(NAME, "2", NAMESPACE) is None


def test_fields_are_the_node_attributes(trt, registry):
    creator = registry.get_creator(NAME, VERSION, NAMESPACE)
    got = [(f.name, f.type, f.size) for f in creator.field_names]
    assert got == [("num_heads", trt.PluginFieldType.INT32, 1), ("eps", trt.PluginFieldType.FLOAT32, 1),
                   ("normalize", trt.PluginFieldType.INT32, 1)]


@pytest.mark.parametrize("phase", ["BUILD", "RUNTIME"])
def test_create_plugin(trt, registry, phase):
    creator = registry.get_creator(NAME, VERSION, NAMESPACE)
    fc = fields(trt, num_heads=([12], np.int32, "INT32"), eps=([1e-6], np.float32, "FLOAT32"))
    plugin = creator.create_plugin("attn", fc, getattr(trt.TensorRTPhase, phase))
    assert plugin is not None
    core = plugin.get_capability_interface(trt.PluginCapabilityType.CORE)
    assert (core.plugin_name, core.plugin_version, core.plugin_namespace) == (NAME, VERSION, NAMESPACE)
    for cap in ("BUILD", "RUNTIME"):
        assert plugin.get_capability_interface(getattr(trt.PluginCapabilityType, cap)) is not None


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"eps": ([1e-6], np.float32, "FLOAT32")}, "num_heads is required"),
        ({"num_heads": ([0], np.int32, "INT32")}, "num_heads must be in [1, 65535], got 0"),
        ({"num_heads": ([4], np.int32, "INT32"), "eps": ([-1.0], np.float32, "FLOAT32")}, "eps must be finite and >= 0"),
        ({"num_heads": ([4.0], np.float32, "FLOAT32")}, "num_heads must be an integer"),
        ({"num_heads": ([4, 4], np.int32, "INT32")}, "must hold exactly one value"),
        ({"num_heads": ([4], np.int32, "INT32"), "chunk": ([64], np.int32, "INT32")}, "unknown field 'chunk'"),
        ({"num_heads": ([4], np.int32, "INT32"), "normalize": ([2], np.int32, "INT32")}, "normalize must be 0 or 1, got 2"),
        ({"num_heads": ([4], np.int32, "INT32"), "normalize": ([1.0], np.float32, "FLOAT32")},
         "normalize must be an integer"),
    ],
    ids=["missing-heads", "zero-heads", "negative-eps", "float-heads", "two-values", "unknown-field",
         "normalize-2", "float-normalize"],
)
def test_bad_fields_rejected_with_a_message(trt, registry, capfd, bad, message):
    creator = registry.get_creator(NAME, VERSION, NAMESPACE)
    assert creator.create_plugin("attn", fields(trt, **bad), trt.TensorRTPhase.BUILD) is None
    # Without a builder or runtime the lean library has no logger, so the plugin falls back to stderr.
    assert message in capfd.readouterr().err


def lean_library() -> Path:
    libs = pytest.importorskip("tensorrt_lean_libs", reason="pip install tensorrt-lean-cu13")
    found = sorted(Path(libs.__file__).parent.glob("libnvinfer_lean.so*"))
    if not found:
        pytest.skip(f"no libnvinfer_lean.so in {Path(libs.__file__).parent}")
    return found[0]


def cuda_include() -> Path | None:
    from tests.plugins.conftest import find_nvcc

    nvcc = find_nvcc()
    candidates = [Path(nvcc).resolve().parent.parent / "include"] if nvcc else []
    candidates.append(Path("/usr/local/cuda/include"))
    return next((c for c in candidates if (c / "cuda_runtime_api.h").is_file()), None)


def test_iplugin_v3_interfaces_through_the_lean_registry(plugin_lib, native_build, tmp_path):
    """Serialization round trip, clone, types, formats, shape checks: see plugin_driver.cpp."""
    lean = lean_library()
    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed")
    cuda_inc = cuda_include()
    if cuda_inc is None:
        pytest.skip("cuda_runtime_api.h not found (TensorRT's headers include it)")
    driver = tmp_path / "plugin_driver"
    build = subprocess.run(
        ["g++", "-std=c++17", "-O1", "-isystem", str(native_build.trt_root / "include"), "-isystem", str(cuda_inc),
         str(HERE / "plugin_driver.cpp"), "-o", str(driver), "-ldl"],
        capture_output=True, text=True,
    )
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(driver), str(lean), str(plugin_lib)], capture_output=True, text=True, timeout=120)
    lines = run.stdout.splitlines()
    failed = [line for line in lines if line.startswith("FAIL")]
    assert run.returncode == 0 and not failed, "\n".join(failed) + "\n" + run.stdout[-5000:] + run.stderr[-5000:]
    assert sum(line.startswith("PASS") for line in lines) >= 40, run.stdout


LOAD_SCRIPT = """
import ctypes, json, sys
import tensorrt_lean as trt
mode, lib = sys.argv[1], sys.argv[2]
reg = trt.get_plugin_registry()
seen = {}
if mode in ("dlopen", "both"):
    ctypes.CDLL(lib)   # what trtexec --staticPlugins and Polygraphy --plugins do
    seen["after_dlopen"] = reg.get_creator("CausalLinearAttention", "1", "") is not None
if mode in ("load_library", "both"):
    seen["handle"] = reg.load_library(lib) is not None
seen["creator"] = reg.get_creator("CausalLinearAttention", "1", "") is not None
print(json.dumps(seen))
"""


@pytest.mark.parametrize("mode", ["load_library", "dlopen", "both"])
def test_library_loads_every_way_tensorrt_loads_plugins(trt, plugin_lib, mode):
    # A fresh process each: the registry is process-wide.
    run = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, mode, str(plugin_lib)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["creator"], seen
    assert seen.get("after_dlopen", True), seen
    assert seen.get("handle", True), seen
