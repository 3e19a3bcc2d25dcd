"""The TensorRT backend: engines from `linexport trt`, driven by the same Generator as ONNX
Runtime, must give the same tokens and states.

Running engines needs a CUDA GPU (TensorRT-RTX's builder works on our CPU machines, its runtime
does not), so those tests skip here with that reason. What the backend checks before touching
the GPU runs everywhere TensorRT-RTX is installed.
"""

import shutil

import pytest

from linexport.errors import LinexportError
from linexport.export.engines import EngineOptions, build_engines
from linexport.runtime import Generator, Model, SamplingParams
from linexport.runtime.compare import compare_backends
from linexport.tensorrt_flavours import TARGETS, is_installed
from tests.runtime import slot_checks

TARGET = next((t for t in TARGETS if is_installed(t)), None)
pytestmark = pytest.mark.skipif(TARGET is None, reason="no TensorRT installed (pip install tensorrt-rtx-cu13)")
PROFILE = dict(max_batch=4, opt_batch=2, max_seq=128, opt_seq=48)


def gpu_count() -> int:
    from linexport.runtime.backends.cuda import CudaRuntime

    try:
        return CudaRuntime().device_count()
    except LinexportError:  # no CUDA runtime library at all
        return 0


needs_gpu = pytest.mark.skipif(gpu_count() == 0, reason="running TensorRT engines needs a CUDA GPU; "
                               "none here (CI never has one): run on a GPU machine")


@pytest.fixture(scope="module")
def engines(runtime_exports, tmp_path_factory):
    """arch -> export directory with engines for the installed TensorRT flavour."""
    root = tmp_path_factory.mktemp("trt-engines")
    out = {}
    for arch in ("linear", "flash"):  # the fixed-state archs TensorRT runs
        path = runtime_exports[arch][0]
        out[arch] = root / arch
        shutil.copytree(path, out[arch])
        build_engines(out[arch], EngineOptions(target=TARGET, **PROFILE))
    return out


def test_refuses_what_the_engines_cannot_serve(engines, runtime_exports):
    path = engines["linear"]
    # Without a GPU that is the first thing said (issue: a profile complaint sent users rebuilding
    # engines that cannot run here anyway); with one, the profile is.
    expected = "expected 1..4 state slots.*--max-batch 5" if gpu_count() > 0 else "needs a CUDA GPU|could not load the CUDA runtime"
    with pytest.raises(LinexportError, match=expected):
        Model(path, backend="trt", device="cuda", num_slots=5)
    with pytest.raises(LinexportError, match="runs on 'cuda' only"):
        Model(path, backend="trt", device="cpu")
    with pytest.raises(LinexportError, match="no TensorRT engines are recorded.*linexport trt"):
        Model(runtime_exports["linear"][0], backend="trt", device="cuda")


@pytest.mark.skipif(gpu_count() > 0, reason="a GPU is visible here")
def test_without_a_gpu_the_cli_says_so(engines):
    from click.testing import CliRunner

    from linexport.cli import main

    result = CliRunner().invoke(main, ["generate", str(engines["linear"]), "--backend", "trt", "--prompt", "x"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "needs a CUDA GPU" in result.output or "could not load the CUDA runtime" in result.output


@needs_gpu
@pytest.mark.parametrize("arch", ["linear", "flash"])
def test_greedy_tokens_equal_onnx_runtime(arch, engines):
    prompt, params = "def add(a, b):\n    return", SamplingParams(max_new_tokens=40)
    tokens = {}
    for backend, device in (("ort", "cpu"), ("trt", "cuda")):
        gen = Generator(Model(engines[arch], backend=backend, device=device))
        seq = gen.add(prompt, params)
        while not gen.is_done():
            gen.step()
        tokens[backend] = seq.generated
    assert tokens["trt"] == tokens["ort"]


@needs_gpu
@pytest.mark.parametrize("arch", ["linear", "flash"])
def test_every_output_matches_onnx_runtime(arch, engines):
    ref = Model(engines[arch], backend="ort", num_slots=3).backend
    trt = Model(engines[arch], backend="trt", device="cuda", num_slots=3).backend
    checks = compare_backends(ref, trt, "fp32", batch=3, seq=37, steps=8)
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]


@needs_gpu
def test_fork_and_batching_on_engines(engines):
    """Slots, CUDA-graph replay at several batch sizes and both ping-pong parities, fork."""
    path = engines["linear"]
    alone = []
    for prompt in ("import os\n", "class A:"):
        gen = Generator(Model(path, backend="trt", device="cuda"))
        seq = gen.add(prompt, SamplingParams(max_new_tokens=17))
        while not gen.is_done():
            gen.step()
        alone.append(seq.generated)
    gen = Generator(Model(path, backend="trt", device="cuda", num_slots=3))
    a = gen.add("import os\n", SamplingParams(max_new_tokens=17))
    for _ in range(3):
        gen.step()
    b = gen.add("class A:", SamplingParams(max_new_tokens=17))
    fork = gen.fork(a)
    while not gen.is_done():
        gen.step()
    assert [a.generated, b.generated] == alone and fork.generated == a.generated


@needs_gpu
def test_prefill_outside_the_profile_is_refused(engines):
    model = Model(engines["linear"], backend="trt", device="cuda")
    with pytest.raises(LinexportError, match="1..128 tokens"):
        Generator(model).add("x" * 129)


@needs_gpu
def test_decode_leaves_unnamed_slots_bit_identical(engines):
    """Slots {0, 2, 3} live, 1 free: slot 0 alone 7x then 4x (both pool parities), slot 2 alone,
    then gap / out-of-order / offset runs (the staged CUDA graphs and ("run", start, n, parity)
    ones): the slots not named keep their state bit for bit, and all continue as solo runs."""
    slot_checks.check_decode_advances_only_named_slots(engines["linear"], "trt", "cuda")


@needs_gpu
def test_append_tokens_leaves_other_sequences_untouched(engines):
    slot_checks.check_append_tokens_leaves_others_untouched(engines["linear"], "trt", "cuda")


@needs_gpu
def test_fork_uses_copy_slot_and_leaves_others_untouched(engines):
    slot_checks.check_fork_copies_on_the_backend(engines["linear"], "trt", "cuda")


@needs_gpu
def test_close_releases_the_backend(engines):
    with Model(engines["linear"], backend="trt", device="cuda", num_slots=2) as model:
        gen = Generator(model)
        gen.add("x = 1", SamplingParams(max_new_tokens=4))
        while not gen.is_done():
            gen.step()
        assert model.backend._graphs
    assert model.backend._graphs == {} and model.backend._stream is None
    with pytest.raises(LinexportError, match="was closed"):
        model.backend.get_state(0)
