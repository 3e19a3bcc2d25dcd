"""Builds the native code once per test session (CMake, one CUDA arch) into a temporary folder.

The TensorRT plugin is built only where TensorRT headers are given: ``TensorRT_ROOT`` (or
``LINEXPORT_TRT_ROOT``) naming a folder with ``include/NvInfer.h`` -- a TensorRT install or the
NVIDIA/TensorRT repository's checkout. The headers are never part of this repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# One arch keeps the build to a minute on two cores; the full list builds in CMake's default.
TEST_CUDA_ARCH = os.environ.get("LINEXPORT_TEST_CUDA_ARCH", "80")


def tensorrt_root() -> Path | None:
    for var in ("LINEXPORT_TRT_ROOT", "TensorRT_ROOT"):
        value = os.environ.get(var)
        if value and (Path(value) / "include" / "NvInfer.h").is_file():
            return Path(value)
    return None


def find_nvcc() -> str | None:
    if shutil.which("nvcc"):
        return shutil.which("nvcc")
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    candidate = Path(cuda_home) / "bin" / "nvcc"
    return str(candidate) if candidate.is_file() else None


@dataclass
class NativeBuild:
    build_dir: Path
    configure_log: str
    build_log: str
    trt_root: Path | None

    @property
    def kernels_lib(self) -> Path:
        return self.build_dir / "lib" / "liblinexport_kernels.so"

    @property
    def plugin_lib(self) -> Path:
        return self.build_dir / "lib" / "liblinexport_trt_plugin.so"


@pytest.fixture(scope="session")
def native_build(tmp_path_factory) -> NativeBuild:
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed (apt-get install cmake)")
    nvcc = find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (on PATH or in $CUDA_HOME/bin): the CUDA kernels cannot be compiled here")
    build_dir = tmp_path_factory.mktemp("native-build")
    trt_root = tensorrt_root()
    cmd = ["cmake", "-S", str(REPO), "-B", str(build_dir), f"-DCMAKE_CUDA_COMPILER={nvcc}",
           f"-DCMAKE_CUDA_ARCHITECTURES={TEST_CUDA_ARCH}"]
    cmd.append(f"-DTensorRT_ROOT={trt_root}" if trt_root else "-DTensorRT_ROOT=")
    configure = subprocess.run(cmd, capture_output=True, text=True)
    assert configure.returncode == 0, f"cmake configure failed:\n{configure.stdout}\n{configure.stderr}"
    build = subprocess.run(["cmake", "--build", str(build_dir), "-j2"], capture_output=True, text=True)
    assert build.returncode == 0, f"cmake build failed:\n{build.stdout[-20000:]}\n{build.stderr[-20000:]}"
    return NativeBuild(build_dir, configure.stdout, build.stdout, trt_root)


@pytest.fixture(scope="session")
def plugin_lib(native_build) -> Path:
    if native_build.trt_root is None:
        pytest.skip("no TensorRT headers: set TensorRT_ROOT to a folder with include/NvInfer.h "
                    "(a TensorRT install, or `include/` of the NVIDIA/TensorRT repository) to build and test the plugin")
    assert native_build.plugin_lib.is_file(), native_build.configure_log
    return native_build.plugin_lib
