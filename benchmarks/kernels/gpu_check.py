"""One GPU check of the CUDA kernels: machine, build, GPU tests and benchmark, into one JSON.

Made for a short loan of a GPU machine (PyTorch with CUDA, nvcc, cmake; no TensorRT, no
internet): run it once from the repository root and read what it wrote.

    python benchmarks/kernels/gpu_check.py --json OUT.json

Steps, each with its own timeout inside one overall budget (--budget-s, default 450 s), each
recorded as {"status": "ok" | "failed" | "skipped", "seconds", "reason", ...} under "steps":

1. machine: GPU name, capability, memory; driver and CUDA versions (nvidia-smi, torch), torch,
   nvcc and cmake versions; the git commit when the copy has one.
2. linexport: makes the package importable by the test and benchmark processes: already
   installed from this checkout, else ``pip install --no-deps --no-build-isolation --no-index -e .``,
   else an in-process finder built from pyproject.toml's package-dir (what the editable install
   would map: linexport.models -> models/, ...).
3. build: ``cmake -S . -B build-gpu-check -DCMAKE_CUDA_ARCHITECTURES=<the device's sm>`` and
   ``cmake --build build-gpu-check -j``; the benchmark loads build-gpu-check/lib/liblinexport_kernels.so.
4. tests: ``pytest tests/plugins/test_kernels_gpu.py tests/plugins/test_build.py`` (the tests that
   need nvcc or a GPU but no TensorRT); their ``native_build`` fixture builds its own copy in a
   temporary folder, for the arch in LINEXPORT_TEST_CUDA_ARCH, which is set to the device's sm.
   Counts and failing tests come from pytest's --junitxml.
5. fla: ``pip install --no-deps flash-linear-attention fla-core`` (fla-core holds fla.ops) with a
   short timeout: expected to fail offline, recorded, and the benchmark goes on without it. When
   a fla_core-*.whl (and flash_linear_attention-*.whl) was carried into .whl/ (--wheels), from
   there without an index. Its failure fails no check.
6. bench: the functions of bench_causal_linear_attention.py in a child process: D2D copy
   bandwidth, decode bandwidth and its ratio to the copy (target >= 0.60), prefill times of the
   kernel, the torch chunked op and fla's chunk kernel when importable (target kernel/fla <= 1.5).

The JSON is rewritten atomically (temp file + rename) after every step, so a run cut short
still leaves the steps it finished; "complete" turns true at the end. Beside it go the full
logs, <stem>.build.log and <stem>.pytest.log. Exit status: 0 every step ok, 1 a step failed or
was skipped, 2 no CUDA device (the JSON then says so and nothing else is tried).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
TESTS = ["tests/plugins/test_kernels_gpu.py", "tests/plugins/test_build.py"]
DEFAULT_BUILD_DIR = "build-gpu-check"
LIB_NAME = "liblinexport_kernels.so"  # linexport.plugins.KERNELS_LIBRARY
FINDER_ENV = "LINEXPORT_GPU_CHECK_FINDER"  # "1": the child processes install the package finder
TAIL = 4000  # characters of each log kept in the JSON
STEPS = ["machine", "linexport", "build", "tests", "fla", "bench"]
# Imported by the tests and the benchmark: what "linexport is importable" means here.
PROBE = ("import json, linexport.plugins, linexport.models.ops.causal_linear_attention, "
         "linexport.models.ops.causal_linear_attention.naive; "
         "print(json.dumps({'plugins': str(__import__('pathlib').Path(linexport.plugins.__file__).resolve()), "
         "'models': str(__import__('pathlib').Path(linexport.models.__file__).resolve())}))")


# --- small helpers -----------------------------------------------------------------------------

def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def tail(text: str, n: int = TAIL) -> str:
    return text if len(text) <= n else "..." + text[-n:]


def run_cmd(cmd: list[str], timeout: float, cwd: Path = REPO, env: dict | None = None) -> dict:
    """Runs cmd in its own process group; on timeout kills that group. stdout+stderr together."""
    start = time.monotonic()
    try:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", start_new_session=True)
    except OSError as e:
        return {"cmd": cmd, "returncode": None, "timed_out": False, "seconds": 0.0, "output": f"{e}"}
    try:
        out, _ = proc.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        timed_out = True
    return {"cmd": cmd, "returncode": proc.returncode, "timed_out": timed_out,
            "seconds": round(time.monotonic() - start, 2), "output": out or ""}


def first_line(cmd: list[str], pattern: str | None = None, timeout: float = 20) -> str | None:
    """First line of cmd's output (or the first that matches pattern); None if it cannot run."""
    if shutil.which(cmd[0]) is None and not Path(cmd[0]).is_file():
        return None
    r = run_cmd(cmd, timeout)
    lines = [ln.strip() for ln in r["output"].splitlines() if ln.strip()]
    if pattern:
        lines = [ln for ln in lines if re.search(pattern, ln)]
    return lines[0] if lines else None


def write_json(path: Path, data: dict) -> None:
    """Atomic: a temp file in the same folder, then rename over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, default=str)
        f.write("\n")
    os.replace(tmp, path)


class Budget:
    """The overall deadline; each step asks for a timeout that leaves `reserve` seconds to later steps."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def timeout(self, want: float, reserve: float = 0.0) -> float:
        return max(0.0, min(want, self.left() - reserve))


class StepSkipped(Exception):
    pass


class StepFailed(Exception):
    pass


# --- making linexport importable ---------------------------------------------------------------

def package_dirs() -> dict[str, Path]:
    """pyproject.toml's [tool.setuptools] package-dir: package name -> folder."""
    import tomllib

    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())
    return {name: REPO / d for name, d in cfg["tool"]["setuptools"]["package-dir"].items()}


def install_package_finder() -> None:
    """Maps linexport.* to the repository's folders as the editable install does (meta path
    finder, ahead of the others, so the repository's linexport/ on sys.path does not hide
    linexport.models)."""
    import importlib.abc
    import importlib.util

    dirs = package_dirs()

    class _Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path=None, target=None):
            d = dirs.get(fullname)
            if d is None or not (d / "__init__.py").is_file():
                return None
            return importlib.util.spec_from_file_location(fullname, d / "__init__.py",
                                                          submodule_search_locations=[str(d)])

    if not any(type(f).__name__ == "_Finder" for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


def child_env(ctx: dict, **extra: str) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", **extra)
    if ctx.get("finder"):
        env[FINDER_ENV] = "1"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH")) if p)
    return env


def probe_import(ctx: dict, timeout: float) -> tuple[bool, str]:
    """Does a fresh interpreter import linexport from this checkout?"""
    code = f"import gpu_check; gpu_check.install_package_finder(); {PROBE}" if ctx.get("finder") else PROBE
    r = run_cmd([sys.executable, "-c", code], timeout, env=child_env(ctx))
    if r["returncode"] != 0:
        return False, tail(r["output"], 1500)
    try:
        got = json.loads(r["output"].strip().splitlines()[-1])
    except (ValueError, IndexError):
        return False, tail(r["output"], 1500)
    inside = all(Path(p).is_relative_to(REPO) for p in got.values())
    return inside, json.dumps(got) if inside else f"imports linexport from elsewhere: {got}"


# --- the steps ---------------------------------------------------------------------------------

def step_machine(ctx: dict, budget: Budget, args) -> dict:
    import torch

    nvcc = find_nvcc()
    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "nvcc": first_line([nvcc or "nvcc", "--version"], r"release"),
        "nvcc_path": nvcc,
        "cmake": first_line(["cmake", "--version"]),
        "nvidia_smi": first_line(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                                  "--format=csv,noheader"]),
        "nvidia_smi_cuda": None,
        "git_commit": first_line(["git", "-C", str(REPO), "rev-parse", "HEAD"], r"^[0-9a-f]{40}$"),
    }
    header = first_line(["nvidia-smi"], r"CUDA Version")
    if header:
        m = re.search(r"Driver Version:\s*(\S+).*CUDA Version:\s*(\S+)", header)
        info["nvidia_smi_cuda"] = m.group(2) if m else header
        info["driver"] = m.group(1) if m else None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        major, minor = torch.cuda.get_device_capability(0)
        info.update(gpu=torch.cuda.get_device_name(0), capability=[major, minor], sm=f"{major}{minor}",
                    gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    multiprocessors=props.multi_processor_count, device_count=torch.cuda.device_count(),
                    torch_arch_list=torch.cuda.get_arch_list())
        try:
            v = torch._C._cuda_getDriverVersion()  # e.g. 13000: the CUDA version the driver supports
            info["driver_cuda"] = f"{v // 1000}.{v % 1000 // 10}"
        except Exception:  # a private torch function: absent in some versions
            pass
        ctx["sm"] = args.arch or info["sm"]
    ctx["nvcc"] = info["nvcc_path"]
    return info


def step_linexport(ctx: dict, budget: Budget, args) -> dict:
    ok, detail = probe_import(ctx, budget.timeout(60))
    if ok:
        return {"mode": "already importable", "detail": detail}
    attempts = {"not importable": detail}
    pip = run_cmd([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                   "--disable-pip-version-check", "-e", "."], budget.timeout(120, reserve=200), env=child_env(ctx))
    attempts["pip install -e"] = {"returncode": pip["returncode"], "timed_out": pip["timed_out"],
                                  "seconds": pip["seconds"], "output_tail": tail(pip["output"], 1500)}
    if pip["returncode"] == 0:
        ok, detail = probe_import(ctx, budget.timeout(60))
        if ok:
            return {"mode": "pip install -e", "detail": detail, "attempts": attempts}
        attempts["after pip install -e"] = detail
    ctx["finder"] = True
    ok, detail = probe_import(ctx, budget.timeout(60))
    if ok:
        return {"mode": "package finder from pyproject.toml", "detail": detail, "attempts": attempts}
    ctx["finder"] = False
    raise StepFailed(f"linexport cannot be imported in a fresh process: {detail}")


def find_nvcc() -> str | None:
    """tests/plugins/conftest.py's find_nvcc (PATH, then $CUDA_HOME/bin): the build the tests make."""
    try:
        sys.path.insert(0, str(REPO))
        from tests.plugins.conftest import find_nvcc as conftest_find_nvcc
    except Exception:  # pytest missing: the same two places
        if shutil.which("nvcc"):
            return shutil.which("nvcc")
        candidate = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "nvcc"
        return str(candidate) if candidate.is_file() else None
    finally:
        sys.path.remove(str(REPO))
    return conftest_find_nvcc()


def step_build(ctx: dict, budget: Budget, args) -> dict:
    if shutil.which("cmake") is None:
        raise StepFailed("cmake is not installed")
    if not ctx.get("nvcc"):
        raise StepFailed("nvcc not found (on PATH or in $CUDA_HOME/bin)")
    build_dir = (REPO / args.build_dir).resolve()
    result = {"build_dir": str(build_dir), "arch": ctx["sm"], "reused_build_dir": build_dir.is_dir()}
    configure = run_cmd(["cmake", "-S", str(REPO), "-B", str(build_dir), f"-DCMAKE_CUDA_ARCHITECTURES={ctx['sm']}",
                         f"-DCMAKE_CUDA_COMPILER={ctx['nvcc']}", "-DTensorRT_ROOT="],
                        budget.timeout(120, reserve=250))
    build = None
    if configure["returncode"] == 0:
        build = run_cmd(["cmake", "--build", str(build_dir), "-j", str(os.cpu_count() or 4)],
                        budget.timeout(300, reserve=250))
    log = configure["output"] + ("" if build is None else "\n" + build["output"])
    if args.log_prefix:
        Path(str(args.log_prefix) + ".build.log").write_text(log)
    lib = build_dir / "lib" / LIB_NAME
    result.update(
        configure={k: configure[k] for k in ("cmd", "returncode", "timed_out", "seconds")},
        build=None if build is None else {k: build[k] for k in ("cmd", "returncode", "timed_out", "seconds")},
        cmake_says=[ln.strip("- ").strip() for ln in configure["output"].splitlines() if "linexport:" in ln],
        spill_warnings=[ln.strip() for ln in log.splitlines() if "spill" in ln.lower()],
        compile_warnings=[ln.strip() for ln in log.splitlines() if "warning" in ln.lower()][:50],
        lib=str(lib) if lib.is_file() else None,
        lib_bytes=lib.stat().st_size if lib.is_file() else None,
        log_tail=tail(log),
    )
    if configure["returncode"] != 0 or build is None or build["returncode"] != 0 or not lib.is_file():
        what = "configure" if build is None else "build"
        r = configure if build is None else build
        why = "timed out" if r["timed_out"] else f"exit {r['returncode']}"
        raise StepFailed(f"cmake {what} failed ({why}); see log_tail", result)
    ctx["lib"] = str(lib)
    return result


def parse_junit(path: Path) -> dict:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failing, skip_reasons, slowest = [], {}, []
    for suite in suites:
        for key in counts:
            counts[key] += int(suite.get(key, 0))
        for case in suite.iter("testcase"):
            name = f"{case.get('classname', '')}::{case.get('name', '')}"
            slowest.append((float(case.get("time", 0) or 0), name))
            for kind in ("failure", "error"):
                for el in case.findall(kind):
                    failing.append({"test": name, "kind": kind, "message": tail(el.get("message") or "", 500),
                                    "detail": tail(el.text or "", 1500)})
            for el in case.findall("skipped"):
                reason = (el.get("message") or "").strip()
                skip_reasons[reason] = skip_reasons.get(reason, 0) + 1
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    slowest.sort(reverse=True)
    return {"passed": passed, "failed": counts["failures"], "errors": counts["errors"], "skipped": counts["skipped"],
            "total": counts["tests"], "failing": failing[:50], "skip_reasons": skip_reasons,
            "slowest": [{"test": n, "seconds": round(t, 2)} for t, n in slowest[:5]]}


def step_tests(ctx: dict, budget: Budget, args) -> dict:
    missing = [t for t in TESTS if not (REPO / t).is_file()]
    if missing:
        raise StepFailed(f"test files missing: {missing}")
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        junit = Path(tmp) / "junit.xml"
        pytest_args = ["-q", *TESTS, f"--junitxml={junit}", "-p", "no:cacheprovider"]
        if ctx.get("finder"):
            boot = ("import sys, gpu_check; gpu_check.install_package_finder(); import pytest; "
                    "sys.exit(pytest.main(sys.argv[1:]))")
            cmd = [sys.executable, "-c", boot, *pytest_args]
        else:
            cmd = [sys.executable, "-m", "pytest", *pytest_args]
        # The native_build fixture builds for LINEXPORT_TEST_CUDA_ARCH (default 80): the device's sm here.
        env = child_env(ctx, LINEXPORT_TEST_CUDA_ARCH=ctx["sm"])
        timeout = budget.timeout(300, reserve=100)
        if timeout < 30:
            raise StepSkipped(f"only {timeout:.0f} s of the budget left")
        r = run_cmd(cmd, timeout, env=env)
        if args.log_prefix:
            Path(str(args.log_prefix) + ".pytest.log").write_text(r["output"])
        result = {"cmd": cmd, "LINEXPORT_TEST_CUDA_ARCH": ctx["sm"], "returncode": r["returncode"],
                  "timed_out": r["timed_out"], "output_tail": tail(r["output"])}
        if not junit.is_file():
            why = f"timed out after {timeout:.0f} s" if r["timed_out"] else f"exit {r['returncode']}"
            raise StepFailed(f"pytest wrote no junit xml ({why}); see output_tail", result)
        result.update(parse_junit(junit))
    if result["failed"] or result["errors"]:
        names = ", ".join(f["test"].split("::")[-1] for f in result["failing"][:5])
        raise StepFailed(f"{result['failed']} failed, {result['errors']} errors: {names}", result)
    if result["passed"] == 0:
        raise StepFailed(f"no test passed ({result['skipped']} skipped): {list(result['skip_reasons'])[:3]}", result)
    if r["returncode"] != 0:
        raise StepFailed(f"pytest exit {r['returncode']}", result)
    return result


# flash-linear-attention keeps its kernels (fla.ops) in fla-core, a requirement of it: --no-deps
# needs both named. Wheel file prefix -> project name.
FLA_PACKAGES = {"flash_linear_attention": "flash-linear-attention", "fla_core": "fla-core"}
FLA_PROBE = ("from fla.ops.linear_attn import chunk_linear_attn; import fla; "
             "print(getattr(fla, '__version__', '?'))")  # what bench_prefill imports


def step_fla(ctx: dict, budget: Budget, args) -> dict:
    check = run_cmd([sys.executable, "-c", FLA_PROBE], budget.timeout(60))
    if check["returncode"] == 0:
        return {"already_installed": True, "version": check["output"].strip().splitlines()[-1]}
    # --no-deps: with a network, pip must not swap this machine's torch or triton for others.
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-input", "--disable-pip-version-check"]
    wheels = (REPO / args.wheels).resolve()
    carried = [name for prefix, name in FLA_PACKAGES.items() if list(wheels.glob(f"{prefix}-*.whl"))]
    if "fla-core" in carried:
        cmd += ["--no-index", "--find-links", str(wheels), *carried]  # carried along: no index needed
    else:
        cmd += ["--retries", "0", "--timeout", "5", *FLA_PACKAGES.values()]
    r = run_cmd(cmd, budget.timeout(args.fla_timeout, reserve=90))
    result = {"cmd": cmd, "returncode": r["returncode"], "timed_out": r["timed_out"], "output_tail": tail(r["output"], 1500)}
    if r["returncode"] != 0:
        raise StepFailed("pip install flash-linear-attention failed (no internet?); benchmarking without fla", result)
    check = run_cmd([sys.executable, "-c", FLA_PROBE], budget.timeout(60))
    result["import_check"] = tail(check["output"], 1500)
    if check["returncode"] != 0:
        raise StepFailed("installed, but fla.ops.linear_attn does not import; benchmarking without fla", result)
    return result


def step_bench(ctx: dict, budget: Budget, args) -> dict:
    if not ctx.get("lib"):
        raise StepSkipped("no kernels library: the build step failed")
    timeout = budget.timeout(240, reserve=5)
    if timeout < 20:
        raise StepSkipped(f"only {timeout:.0f} s of the budget left")
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        out = Path(tmp) / "bench.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--bench-child", str(out), "--lib", ctx["lib"]]
        r = run_cmd(cmd, timeout, env=child_env(ctx))
        data = json.loads(out.read_text()) if out.is_file() else {}
    data.update(cmd=cmd, returncode=r["returncode"], timed_out=r["timed_out"], output_tail=tail(r["output"], 3000))
    if r["returncode"] != 0 or "decode" not in data or "prefill" not in data:
        why = "timed out" if r["timed_out"] else f"exit {r['returncode']}"
        last = (r["output"].strip().splitlines() or ["no output"])[-1]
        raise StepFailed(f"benchmark {why}: {data.get('error', last)}", data)
    return data


# --- the benchmark, in a child process ---------------------------------------------------------

def bench_child(out_path: Path, lib: str) -> int:
    """Calls bench_causal_linear_attention's functions; writes their figures to out_path as they come."""
    if os.environ.get(FINDER_ENV) == "1":
        install_package_finder()
    import torch

    sys.path.insert(0, str(HERE))
    import bench_causal_linear_attention as bench
    from linexport.plugins import CausalLinearAttentionKernels

    data: dict = {}
    try:
        data["device"] = torch.cuda.get_device_name()
        kernels = CausalLinearAttentionKernels(lib)
        data["lib"] = str(kernels.path)
        copy_bw = bench.copy_bandwidth()
        data["copy_bandwidth_GBps"] = round(copy_bw / 1e9, 1)
        write_json(out_path, data)
        t, bw = bench.bench_decode(kernels)
        data["decode"] = {"shape": "B64 T1 H12 D64 fp16", "us": round(t * 1e6, 2), "GBps": round(bw / 1e9, 1),
                          "ratio_to_copy": round(bw / copy_bw, 3), "target_ratio_min": 0.60,
                          "meets_target": bw / copy_bw >= 0.60}
        write_json(out_path, data)
        try:
            import fla.ops.linear_attn  # what bench_prefill imports (fla-core)
            data["fla"] = {"importable": True, "version": getattr(fla, "__version__", None)}
        except ImportError as e:
            data["fla"] = {"importable": False, "reason": str(e)}
        try:
            results = bench.bench_prefill(kernels)
        except Exception as e:
            if not data["fla"]["importable"]:
                raise
            # fla's kernel broke (API or Triton): keep the other two figures
            data["fla"]["error"] = f"{type(e).__name__}: {e}"
            sys.modules["fla.ops.linear_attn"] = None  # makes bench_prefill's import fail: skips fla
            results = bench.bench_prefill(kernels)
        base = results["linexport kernel"]
        data["prefill"] = {"shape": "B8 T1024 H8 D64 bf16",
                           "us": {name: round(t * 1e6, 2) for name, t in results.items()},
                           "x_kernel_time": {name: round(t / base, 3) for name, t in results.items()}}
        if "fla chunk_linear_attn" in results:
            ratio = base / results["fla chunk_linear_attn"]
            data["prefill"].update(kernel_over_fla=round(ratio, 3), target_max=1.5, meets_target=ratio <= 1.5)
        write_json(out_path, data)
    except Exception as e:
        data["error"] = f"{type(e).__name__}: {e}"
        data["traceback"] = tail(traceback.format_exc(), 3000)
        write_json(out_path, data)
        print(data["traceback"], file=sys.stderr)
        return 1
    return 0


# --- driver ------------------------------------------------------------------------------------

def run_step(name: str, fn, ctx: dict, budget: Budget, args, report: dict, json_path: Path) -> None:
    print(f"[gpu_check] {name} ...", flush=True)
    start = time.monotonic()
    step: dict = {"status": "ok", "reason": None}
    try:
        step.update(fn(ctx, budget, args))
    except StepSkipped as e:
        step.update(status="skipped", reason=str(e))
    except StepFailed as e:
        step.update(status="failed", reason=str(e.args[0]))
        if len(e.args) > 1:
            step.update(e.args[1])
    except Exception as e:
        step.update(status="failed", reason=f"{type(e).__name__}: {e}", traceback=tail(traceback.format_exc(), 3000))
    step["seconds"] = round(time.monotonic() - start, 2)
    report["steps"][name] = step
    write_json(json_path, report)
    print(f"[gpu_check] {name}: {step['status']} in {step['seconds']:.1f} s"
          + (f" ({step['reason']})" if step["reason"] else ""), flush=True)


def summary(report: dict) -> list[str]:
    s = report["steps"]
    lines = []
    m = s.get("machine", {})
    lines.append(f"machine: {m.get('gpu', 'no GPU')} sm_{m.get('sm', '?')}, driver {m.get('driver')}, "
                 f"CUDA {m.get('nvidia_smi_cuda')}, torch {m.get('torch')} (cu {m.get('torch_cuda')}), "
                 f"{m.get('nvcc') or 'no nvcc'}, {m.get('cmake') or 'no cmake'}")
    for name in STEPS[1:]:
        st = s.get(name)
        if st is None:
            lines.append(f"{name}: not run")
            continue
        line = f"{name}: {st['status']} ({st['seconds']:.0f} s)"
        if name == "linexport" and st.get("mode"):
            line += f" via {st['mode']}"
        if name == "build" and st.get("build"):
            line += f", build {st['build']['seconds']:.0f} s, {len(st.get('spill_warnings', []))} spill warnings"
        if name == "tests" and "passed" in st:
            line += f", {st['passed']} passed, {st['failed']} failed, {st['errors']} errors, {st['skipped']} skipped"
            line += "".join(f"\n    FAILED {f['test']}" for f in st["failing"][:10])
        if name == "bench":
            if "decode" in st:
                d = st["decode"]
                line += (f"\n    decode {d['shape']}: {d['us']} us, {d['GBps']} GB/s = {d['ratio_to_copy']:.2f} "
                         f"of D2D copy {st['copy_bandwidth_GBps']} GB/s (target >= 0.60)")
            if "prefill" in st:
                for k, us in st["prefill"]["us"].items():
                    line += f"\n    prefill {st['prefill']['shape']}, {k}: {us} us"
                if "kernel_over_fla" in st["prefill"]:
                    line += f"\n    kernel / fla time: {st['prefill']['kernel_over_fla']:.2f} (target <= 1.5)"
        if st["reason"] and st["status"] != "ok":
            line += f"\n    reason: {st['reason']}"
        lines.append(line)
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=Path("gpu_check.json"), help="where to write the results")
    parser.add_argument("--budget-s", type=float, default=450, help="overall time budget; steps shrink their timeouts to fit")
    parser.add_argument("--arch", help="CUDA arch for the builds, e.g. 90 (default: the device's capability)")
    parser.add_argument("--build-dir", default=DEFAULT_BUILD_DIR, help="cmake build folder, relative to the repository")
    parser.add_argument("--fla-timeout", type=float, default=45, help="seconds for pip install flash-linear-attention")
    parser.add_argument("--wheels", default=".whl", help="folder (relative to the repository) that may hold a "
                        "flash_linear_attention-*.whl to install without an index")
    parser.add_argument("--no-logs", action="store_true", help="do not write <stem>.build.log and <stem>.pytest.log")
    parser.add_argument("--bench-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--lib", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bench_child:
        return bench_child(args.bench_child, args.lib)

    json_path = args.json.resolve()
    args.log_prefix = None if args.no_logs else json_path.with_suffix("")
    budget = Budget(args.budget_s)
    report = {"script": "benchmarks/kernels/gpu_check.py", "started": now_iso(), "finished": None,
              "complete": False, "status": None, "budget_s": args.budget_s, "argv": sys.argv[1:],
              "repo": str(REPO), "steps": {}}
    ctx: dict = {}
    write_json(json_path, report)
    run_step("machine", step_machine, ctx, budget, args, report, json_path)
    if "sm" not in ctx:
        why = report["steps"]["machine"].get("reason") or "torch.cuda.is_available() is False"
        reason = f"no CUDA device ({why}): nothing to build, test or benchmark on this machine"
        for name in STEPS[1:]:
            report["steps"][name] = {"status": "skipped", "seconds": 0.0, "reason": reason}
        report.update(status="skipped", reason=reason, finished=now_iso(), complete=True)
        write_json(json_path, report)
        print(f"gpu_check: {reason}; wrote {json_path}")
        return 2
    for name in STEPS[1:]:
        if name in ("tests", "bench") and report["steps"]["linexport"]["status"] != "ok":
            report["steps"][name] = {"status": "skipped", "seconds": 0.0, "reason": "linexport is not importable"}
            write_json(json_path, report)
            continue
        run_step(name, globals()[f"step_{name}"], ctx, budget, args, report, json_path)
    # fla is optional: its failure (offline) does not fail the check
    failed = [n for n, st in report["steps"].items() if st["status"] != "ok" and n != "fla"]
    report.update(status="failed" if failed else "ok", failed_steps=failed, finished=now_iso(), complete=True)
    report["summary"] = summary(report)
    write_json(json_path, report)
    print("\n".join(["", "gpu_check summary:", *report["summary"], f"wrote {json_path}"]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
