"""The native build: CMake compiles the CUDA kernels with nvcc, and says what it skipped."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.plugins.conftest import REPO

C_API = ("linexport_cla_forward", "linexport_cla_check_params", "linexport_cla_set_packed_strides",
         "linexport_cla_abi_version")


def exported_symbols(lib) -> set[str]:
    if shutil.which("nm") is None:
        pytest.skip("nm (binutils) is not installed")
    out = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


def test_kernels_compile_and_export_the_c_api(native_build):
    assert "linexport: building CUDA kernels" in native_build.configure_log
    assert native_build.kernels_lib.is_file()
    symbols = exported_symbols(native_build.kernels_lib)
    assert set(C_API) <= symbols
    # Hidden visibility: the kernels' C++ internals stay private.
    assert not any("linexport3cla" in s for s in symbols), sorted(s for s in symbols if "linexport3cla" in s)


def test_cmake_says_what_it_skipped(native_build):
    if native_build.trt_root is None:
        assert "linexport: skipping TensorRT plugin: no TensorRT headers" in native_build.configure_log
    else:
        assert "linexport: building TensorRT plugin (TensorRT" in native_build.configure_log


def test_cmake_without_nvcc_skips_kernels_with_a_reason(tmp_path):
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed (apt-get install cmake)")
    # No nvcc anywhere CMake looks: it must not fail, it must say what it skipped.
    cmake_dir = os.path.dirname(shutil.which("cmake"))
    env = {k: v for k, v in os.environ.items() if k not in ("CUDACXX", "CUDA_HOME", "CUDA_PATH", "CUDAToolkit_ROOT")}
    env["PATH"] = os.pathsep.join(dict.fromkeys([cmake_dir, "/usr/bin", "/bin"]))
    if any(os.path.exists(os.path.join(d, "nvcc")) for d in env["PATH"].split(os.pathsep)):
        pytest.skip("nvcc sits next to cmake or in /usr/bin: cannot hide it from CMake here")
    result = subprocess.run(["cmake", "-S", str(REPO), "-B", str(tmp_path)], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert "linexport: skipping CUDA kernels: nvcc not found" in result.stdout
    assert "linexport: skipping TensorRT plugin: needs the CUDA kernels" in result.stdout


def test_plugin_exports_tensorrt_entry_points_and_links_no_libnvinfer(plugin_lib):
    symbols = exported_symbols(plugin_lib)
    assert {"getCreators", "setLoggerFinder"} <= symbols
    if shutil.which("readelf") is None:
        pytest.skip("readelf (binutils) is not installed")
    dynamic = subprocess.run(["readelf", "-d", str(plugin_lib)], capture_output=True, text=True, check=True).stdout
    needed = [line.split("[")[1].rstrip("]") for line in dynamic.splitlines() if "(NEEDED)" in line]
    assert needed, dynamic
    assert not any("nvinfer" in n or "cudart" in n for n in needed), needed
