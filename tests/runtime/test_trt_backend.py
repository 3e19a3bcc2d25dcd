"""The TensorRT backend: engines from `linexport trt`, driven by the same Generator as ONNX
Runtime, must give the same tokens and states.

Running engines needs a CUDA GPU (TensorRT-RTX's builder works on our CPU machines, its runtime
does not), so those tests skip here with that reason. What the backend checks before touching
the GPU runs everywhere TensorRT-RTX is installed.
"""

import shutil

import numpy as np
import pytest

from linexport.contract.checks import FP32_REL_TOL, errors
from linexport.errors import LinexportError
from linexport.export.engines import EngineOptions, build_engines
from linexport.runtime import Generator, Model, SamplingParams
from linexport.runtime.compare import compare_backends
from linexport.runtime.ingest import ingest
from linexport.tensorrt_flavours import TARGETS, import_tensorrt, is_installed
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


class _Engines(dict):
    """arch -> export directory with engines for the installed TensorRT flavour, built the first
    time a test asks for that arch (one that fails to export or build fails its own tests only)."""

    def __init__(self, runtime_exports, root):
        super().__init__()
        self.runtime_exports, self.root = runtime_exports, root

    def __missing__(self, arch):
        if arch not in ("linear", "flash"):  # the fixed-state archs TensorRT runs
            raise KeyError(arch)
        out = self.root / arch
        shutil.copytree(self.runtime_exports[arch][0], out)
        build_engines(out, EngineOptions(target=TARGET, **PROFILE))
        self[arch] = out
        return out


@pytest.fixture(scope="module")
def engines(runtime_exports, tmp_path_factory):
    return _Engines(runtime_exports, tmp_path_factory.mktemp("trt-engines"))


def padded(rows):
    """Token rows -> (input_ids [n, T] right-padded with a real token, lengths [n])."""
    ids = np.full((len(rows), max(1, max(map(len, rows)))), ord(" "), np.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
    return ids, np.array([len(r) for r in rows], np.int64)


def assert_close(got, ref, what):
    abs_err, rel_err = errors(got, ref)
    assert rel_err <= FP32_REL_TOL, f"{what}: relative error {rel_err:.2e} (max abs {abs_err:.2e})"


def assert_same_state(got: dict, ref: dict, what):
    assert got.keys() == ref.keys(), what
    for name in got:
        assert_close(got[name], ref[name], f"{what}, state {name}")


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
def test_prefill_engine_continues_from_a_state(engines):
    """The deserialized prefill engine takes position [batch] and every past.* [batch, state
    dims], profiled over the build's batch range, beside input_ids and lengths."""
    trt = import_tensorrt(TARGET)
    model = Model(engines["linear"], backend="trt", device="cuda")
    engine = model.backend._prefill.engine
    inputs = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)
              if engine.get_tensor_mode(engine.get_tensor_name(i)) == trt.TensorIOMode.INPUT]
    states = model.manifest.states
    assert sorted(inputs) == sorted(["input_ids", "lengths", "position", *(f"past.{s.name}" for s in states)])
    batch = (1, PROFILE["opt_batch"], PROFILE["max_batch"])
    shapes = lambda name: [list(d) for d in engine.get_tensor_profile_shape(name, 0)]  # noqa: E731
    assert shapes("position") == [[b] for b in batch]
    for s in states:
        assert shapes(f"past.{s.name}") == [[b, *s.shape[1:]] for b in batch], s.name
    assert shapes("input_ids") == [[1, 1], [2, PROFILE["opt_seq"]], [4, PROFILE["max_seq"]]]


@needs_gpu
def test_continued_prefill_equals_one_shot_and_leaves_other_slots_alone(engines):
    """Slot 1 a bystander; A's first 11 tokens into slot 3 and one decode step (slot 3 flips to
    the other pool), all of B into slot 0, junk into slot 2. Then one prefill over slots
    [3, 2, 0] (scattered, both pools): A continues at position 12 (mid-chunk), C starts fresh
    in slot 2 (its junk ignored), B adds no token. States and logits equal one prefill over
    whole rows on the same engines; slot 1 and B's slot keep their state bit for bit."""
    path = engines["linear"]
    A, B, C = (list(t.encode()) for t in ("def add(a, b):\n    return a + b\n", "import os\n", "class A:\n    pass"))
    ref = Model(path, backend="trt", device="cuda", num_slots=4).backend
    ref_logits = ref.prefill(*padded([A, B, C]), [0, 1, 2])
    ref_states = [ref.get_state(slot) for slot in (0, 1, 2)]

    b = Model(path, backend="trt", device="cuda", num_slots=4).backend
    b.prefill(*padded([list(b"x = [1, 2]")]), [1])
    b.prefill(*padded([A[:11], B]), [3, 0])
    b.decode([3], [A[11]], [11])
    b.prefill(*padded([C[::-1]]), [2])
    assert b._parity[3] != b._parity[0], "the continued prefill below should gather from both pools"
    bystander, b_state = b.get_state(1), b.get_state(0)

    logits = b.prefill(*padded([A[12:], C, []]), [3, 2, 0], [12, 0, len(B)])
    assert slot_checks.same_state(b.get_state(1), bystander), "a slot not named changed"
    assert slot_checks.same_state(b.get_state(0), b_state), "a row of length 0 must pass its state through"
    assert_same_state(b.get_state(3), ref_states[0], "A continued")
    assert_same_state(b.get_state(2), ref_states[2], "C fresh")
    assert_close(logits[0], ref_logits[0], "A's logits")
    assert_close(logits[1], ref_logits[2], "C's logits")


@needs_gpu
def test_chunked_ingestion_equals_one_prefill(engines):
    """runtime.ingest in chunks of 23 tokens (not the model's chunk size: calls end mid-chunk),
    ragged rows into scattered slots, equals one prefill over whole rows; the slot not named
    keeps its state."""
    path = engines["linear"]
    text = "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\nprint(fib(10))\n"
    rows = [list(text.encode()), list(b"import sys\nsys.exit(0)\n"), list((text * 2).encode())[:120]]
    ref = Model(path, backend="trt", device="cuda", num_slots=3).backend
    ref_logits = ref.prefill(*padded(rows), [0, 1, 2])
    b = Model(path, backend="trt", device="cuda", num_slots=4).backend
    b.prefill(*padded([list(b"x = 1")]), [2])
    bystander = b.get_state(2)
    logits = ingest(b, rows, [3, 0, 1], [0, 0, 0], chunk=23)
    assert slot_checks.same_state(b.get_state(2), bystander)
    for row, slot in enumerate((3, 0, 1)):
        assert_same_state(b.get_state(slot), ref.get_state(row), f"row {row}")
        assert_close(logits[row], ref_logits[row], f"row {row}'s logits")


@needs_gpu
def test_prompts_longer_than_the_profile_go_in_chunks(engines):
    """One prefill call is held to the profile (128 tokens); the Model's default chunk is that,
    so a longer prompt is ingested in chunks and decodes as ONNX Runtime's one-call prefill."""
    model = Model(engines["linear"], backend="trt", device="cuda")
    assert model.prefill_chunk == PROFILE["max_seq"]
    with pytest.raises(LinexportError, match="1..128 tokens.*chunks of at most 128"):
        model.backend.prefill(*padded([[120] * 129]), [0])
    prompt, params = "# a long comment, past the engines' profile\n" * 7, SamplingParams(max_new_tokens=12)
    assert len(prompt.encode()) > 2 * PROFILE["max_seq"]
    tokens = {}
    for backend, m in (("ort", Model(engines["linear"], backend="ort")), ("trt", model)):
        gen = Generator(m)
        seq = gen.add(prompt, params)
        while not gen.is_done():
            gen.step()
        tokens[backend] = seq.generated
    assert tokens["trt"] == tokens["ort"]


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
