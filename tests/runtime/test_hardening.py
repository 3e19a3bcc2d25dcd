"""What a careless or hostile caller can do to the runtime gets a clear LinexportError, and a
sequence's state is never read or written through a sequence that no longer owns its slot."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from linexport.cli import main
from linexport.errors import LinexportError
from linexport.export.exporter import export_checkpoint
from linexport.files import file_sha256
from linexport.models import build_model
from linexport.models.checkpoint import save_checkpoint
from linexport.runtime import ByteTokenizer, Generator, Model, SamplingParams
from linexport.tensorrt_flavours import is_installed
from tests.runtime.conftest import torch_greedy

LIMIT = 12  # learned positions of the bounded model


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """A linear model with LIMIT learned positions, exported (fp32), and the model."""
    import torch

    root = tmp_path_factory.mktemp("learned")
    torch.manual_seed(7)
    model = build_model("linear", dict(vocab_size=256, d_model=16, n_layers=1, n_heads=2, head_dim=8,
                                       d_ff=32, pos_emb="learned", max_seq_len=LIMIT)).eval()
    save_checkpoint(model, root / "model.pt")
    export_checkpoint(root / "model.pt", root / "out")
    return root / "out", model


def test_a_finished_sequence_cannot_touch_the_slot_it_gave_back(runtime_exports):
    path, _ = runtime_exports["linear"]
    gen = Generator(Model(path, num_slots=2))
    done = gen.add([5, 6, 7], SamplingParams(max_new_tokens=1))
    gen.add([9, 9], SamplingParams(max_new_tokens=50))
    gen.step()  # `done` finishes; its slot is free
    assert done.done and done.finish_reason == "length"
    other = gen.add([1, 2, 3, 4], SamplingParams(max_new_tokens=50))  # takes the freed slot
    assert other.slot == done.slot
    before = gen.backend.get_state(other.slot)
    for action in (lambda: gen.fork(done), lambda: gen.snapshot(done), lambda: gen.append_tokens(done, [1])):
        with pytest.raises(LinexportError, match=rf"sequence {done.id}: it finished \(length\)"):
            action()
    after = gen.backend.get_state(other.slot)
    assert all(np.array_equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("arch", ["linear", "softmax"])
def test_set_state_refuses_bad_values_and_slots(runtime_exports, arch):
    path, _ = runtime_exports[arch]
    backend = Model(path, num_slots=3).backend
    backend.prefill(np.array([[3, 4, 5]]), np.array([3]), [1])
    good = backend.get_state(1)
    name = next(iter(good))
    for bad, match in ((np.nan, "finite values"), (np.inf, "finite values")):
        state = {k: v.copy() for k, v in good.items()}
        state[name].flat[0] = bad
        with pytest.raises(LinexportError, match=match):
            backend.set_state(2, state)
    with pytest.raises(LinexportError, match="floating-point"):
        backend.set_state(2, {k: v.astype(np.int64) for k, v in good.items()})
    for slot in (-1, 3, 99):
        with pytest.raises(LinexportError, match=r"in \[0, 3\)"):
            backend.set_state(slot, good)
    backend.set_state(2, good)  # the refusals wrote nothing, and a good state still goes in
    assert all(np.array_equal(backend.get_state(2)[k], good[k]) for k in good)


def test_learned_positions_end_a_sequence_instead_of_crashing(learned):
    path, model = learned
    gen = Generator(Model(path, num_slots=2))
    with pytest.raises(LinexportError, match=f"at most {LIMIT} tokens"):
        gen.add(list(range(LIMIT + 1)))
    prompt = list(range(10, 20))  # 10 tokens: positions 10 and 11 are left
    seq = gen.add(prompt, SamplingParams(max_new_tokens=50))
    while not gen.is_done():
        gen.step()
    assert seq.finish_reason == "length" and len(seq.generated) == LIMIT - len(prompt) + 1
    # The reference: greedy steps for all but the last token, whose logits come from one parallel
    # pass over all LIMIT positions (stepping past it is what the model cannot do).
    assert seq.generated[:-1] == torch_greedy(model, prompt, len(seq.generated) - 1)
    import torch

    with torch.no_grad():
        full = model(torch.tensor([prompt + seq.generated[:-1]]))
    assert seq.generated[-1] == int(full[0, -1].argmax())

    live = gen.add([1, 2, 3], SamplingParams(max_new_tokens=50))
    with pytest.raises(LinexportError, match=f"at most {LIMIT - 3} more tokens"):
        gen.append_tokens(live, list(range(LIMIT - 2)))
    gen.remove(live)
    with pytest.raises(LinexportError, match="learned positions"):
        gen.beam_search([1, 2, 3], num_beams=2, max_new_tokens=LIMIT)


@pytest.mark.parametrize("kwargs, match", [
    (dict(seed=-1), "seed must be None or an int >= 0"),
    (dict(seed=1.5), "seed must be an int"),
    (dict(stop_tokens=[65.7]), "stop_tokens entry must be an int"),
    (dict(stop_tokens="a"), "sequence of int token ids"),
    (dict(stop_tokens=[-1]), "token ids >= 0"),
    (dict(max_new_tokens=2.5), "max_new_tokens must be an int"),
    (dict(temperature=float("nan")), "temperature must be a finite number"),
    (dict(top_p="high"), "top_p must be a finite number"),
], ids=["seed-negative", "seed-float", "stop-float", "stop-str", "stop-negative", "max-float",
        "temperature-nan", "top-p-str"])
def test_sampling_params_refuse_what_they_cannot_mean(kwargs, match):
    with pytest.raises(LinexportError, match=match):
        SamplingParams(**kwargs)
    assert SamplingParams(stop_tokens=[np.int64(10), 13], seed=np.int32(3)).stop_tokens == (10, 13)


def test_text_that_is_not_utf8(runtime_exports):
    tok = ByteTokenizer()
    assert tok.encode("a\udcff") == [97, 255]  # a non-UTF-8 command-line byte, escaped by Python
    with pytest.raises(LinexportError, match="encoded as UTF-8"):
        tok.encode("\ud800x")  # a lone surrogate that no byte stands behind
    path, _ = runtime_exports["linear"]
    gen = Generator(Model(path))
    with pytest.raises(LinexportError, match="encoded as UTF-8"):
        gen.add("\ud800x")
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from linexport.cli import main; main()", "generate", str(path),
         "--prompt", b"def \xff\xfe".decode("utf-8", "surrogateescape"), "--max-new-tokens", "3",
         "--temperature", "0"], capture_output=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(b"def ")


def test_num_slots_that_cannot_fit_are_refused_before_allocating(runtime_exports):
    for arch in ("linear", "softmax"):
        path, _ = runtime_exports[arch]
        with pytest.raises(LinexportError, match="lower num_slots"):
            Model(path, num_slots=10**9)
    path, _ = runtime_exports["linear"]
    for bad in (0, 1.5, True):
        with pytest.raises(LinexportError, match="num_slots|state slot"):
            Model(path, num_slots=bad)


def test_a_broken_graph_with_a_matching_sha_is_one_clear_error(runtime_exports, tmp_path):
    import onnx

    path, _ = runtime_exports["linear"]
    out = tmp_path / "broken"
    shutil.copytree(path, out)
    graph = onnx.load(str(out / "decode.onnx"))
    graph.graph.node[0].op_type = "NoSuchOp"
    onnx.save_model(graph, str(out / "decode.onnx"))
    manifest = json.loads((out / "linexport.json").read_text())
    manifest["graphs"]["decode"]["sha256"] = file_sha256(out / "decode.onnx")
    (out / "linexport.json").write_text(json.dumps(manifest))
    runner = CliRunner()
    for args in (["verify", str(out)], ["generate", str(out), "--prompt", "x"]):
        result = runner.invoke(main, args)
        assert result.exit_code == 2, (args, result.output)
        assert "ONNX Runtime could not load" in result.output and "Traceback" not in result.output


def test_an_fp16_export_loads_without_warnings(runtime_exports, tmp_path):
    path, _ = runtime_exports["linear"]
    source = json.loads((path / "linexport.json").read_text())["source"]["checkpoint"]
    export_checkpoint(source, tmp_path / "fp16", dtype="fp16")
    code = ("from linexport.runtime import Generator, Model, SamplingParams\n"
            f"gen = Generator(Model({str(tmp_path / 'fp16')!r}))\n"
            "print(len(list(gen.generate([1, 2, 3], SamplingParams(max_new_tokens=3)))))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr


@pytest.mark.skipif(not is_installed("rtx"), reason="pip install tensorrt-rtx-cu13 to build engines here")
def test_without_a_gpu_the_trt_backend_says_so_first(runtime_exports, tmp_path):
    """Engines built for 2 rows, asked for 3: on a machine without a GPU the first complaint is
    the missing GPU, not the profile (rebuilding would not help)."""
    from linexport.export.engines import EngineOptions, build_engines
    from linexport.runtime.backends.cuda import CudaRuntime

    try:
        if CudaRuntime().device_count() > 0:
            pytest.skip("this machine has a GPU: the case cannot be produced here")
    except LinexportError:
        pass  # no CUDA runtime at all: the case this test is about
    path, _ = runtime_exports["linear"]
    out = tmp_path / "out"
    shutil.copytree(path, out)
    build_engines(out, EngineOptions(target="rtx", max_batch=2, opt_batch=1, max_seq=32, opt_seq=8))
    result = CliRunner().invoke(main, ["compare", str(out), "--batch", "3"])
    assert result.exit_code == 2
    assert "GPU" in result.output and "--max-batch" not in result.output, result.output
