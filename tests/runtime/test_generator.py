"""The runtime on ONNX Runtime against PyTorch, and its state operations against re-prefilling."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from linexport.errors import LinexportError
from linexport.runtime import Generator, Model, SamplingParams
from tests.runtime.conftest import torch_greedy

PROMPT = "def add(a, b):\n    return"
N = 40  # with the test models' chunk of 16 the run crosses several chunk boundaries


def _run_alone(path, prompt, params):
    gen = Generator(Model(path))
    seq = gen.add(prompt, params)
    while not gen.is_done():
        gen.step()
    return seq.generated


def test_greedy_matches_pytorch_token_for_token(arch_export):
    path, model = arch_export
    prompt_ids = list(PROMPT.encode())
    expected = torch_greedy(model, prompt_ids, N)
    got = _run_alone(path, PROMPT, SamplingParams(max_new_tokens=N))
    assert got == expected


def test_seeded_sampling_is_reproducible(arch_export):
    path, _ = arch_export
    params = SamplingParams(max_new_tokens=30, temperature=1.0, top_k=50, top_p=0.9, seed=11)
    a = _run_alone(path, PROMPT, params)
    b = _run_alone(path, PROMPT, params)
    c = _run_alone(path, PROMPT, SamplingParams(**{**params.__dict__, "seed": 12}))
    assert a == b and a != c


def test_sequences_are_isolated_under_continuous_batching(arch_export):
    path, _ = arch_export
    jobs = [("import os\n", SamplingParams(max_new_tokens=25)),
            ("class A:\n", SamplingParams(max_new_tokens=12, temperature=0.8, seed=3)),
            ("x = [", SamplingParams(max_new_tokens=30, temperature=1.2, top_k=20, seed=4)),
            ("for i in", SamplingParams(max_new_tokens=18))]
    alone = [_run_alone(path, p, params) for p, params in jobs]

    gen = Generator(Model(path, num_slots=3))
    seqs = gen.add_many([jobs[0][0]], jobs[0][1]) + [gen.add(*jobs[1])]
    steps = 0
    while not gen.is_done() or len(seqs) < len(jobs):
        if steps == 5:
            seqs.append(gen.add(*jobs[2]))  # joins while the others decode
        if len(seqs) == 3 and seqs[1].done and len(seqs) < 4:
            seqs.append(gen.add(*jobs[3]))  # takes the slot a finished sequence left
        gen.step()
        steps += 1
    assert [s.generated for s in seqs] == alone


def test_more_sequences_than_slots_is_an_error(arch_export):
    path, _ = arch_export
    gen = Generator(Model(path, num_slots=2))
    with pytest.raises(LinexportError, match="3 new sequences but only 2 free state slots"):
        gen.add_many(["a", "b", "c"])


def test_fork_and_restore_equal_reprefilling(arch_export):
    path, _ = arch_export
    gen = Generator(Model(path, num_slots=3))
    seq = gen.add(PROMPT, SamplingParams(max_new_tokens=N))
    for _ in range(7):
        gen.step()
    snap = gen.snapshot(seq)
    fork = gen.fork(seq)
    while not gen.is_done():
        gen.step()
    # Re-prefill the same text (prompt + the 7 tokens) from scratch: same continuation.
    reprefilled = Generator(Model(path)).add(seq.tokens[:seq.prompt_len + 7],
                                             SamplingParams(max_new_tokens=N - 7))
    np.testing.assert_allclose(snap.logits, reprefilled.logits, rtol=1e-4, atol=1e-4)
    fresh_gen = reprefilled
    del fresh_gen
    ref = _run_alone(path, seq.tokens[:seq.prompt_len + 7], SamplingParams(max_new_tokens=N - 7))
    assert fork.generated[7:] == ref == seq.generated[7:]
    # Restore the snapshot later, into a fresh generator: continues identically.
    gen2 = Generator(Model(path))
    restored = gen2.restore(snap)
    while not gen2.is_done():
        gen2.step()
    assert restored.generated[7:] == ref


def test_append_tokens_equals_prefill_of_the_whole_text(arch_export):
    path, _ = arch_export
    gen = Generator(Model(path))
    seq = gen.add("def f(x):")
    gen.append_tokens(seq, "\n    return x")
    whole = Generator(Model(path)).add("def f(x):\n    return x")
    np.testing.assert_allclose(seq.logits, whole.logits, rtol=1e-4, atol=1e-4)


def test_beam_search_scores_are_pytorch_log_probs(arch_export):
    path, model = arch_export
    gen = Generator(Model(path, num_slots=4))
    beams = gen.beam_search(PROMPT, num_beams=4, max_new_tokens=6, length_penalty=0.0)
    prompt_ids = list(PROMPT.encode())
    greedy = torch_greedy(model, prompt_ids, 6)

    def logprob(tokens):
        ids = torch.tensor([prompt_ids + tokens])
        with torch.no_grad():
            lp = torch.log_softmax(model(ids)[0].double(), -1)
        return sum(float(lp[len(prompt_ids) - 1 + i, t]) for i, t in enumerate(tokens))

    best, score = beams[0]
    assert abs(score - logprob(best)) < 1e-3
    assert score >= logprob(greedy) - 1e-6
    assert Generator(Model(path)).beam_search(PROMPT, 1, 6)[0][0] == greedy


def test_streaming_generate_yields_the_generated_text(arch_export):
    path, _ = arch_export
    pieces = []
    gen = Generator(Model(path))
    text = "".join(gen.generate(PROMPT, SamplingParams(max_new_tokens=20), callback=pieces.append))
    assert text == "".join(pieces)
    alone = _run_alone(path, PROMPT, SamplingParams(max_new_tokens=20))
    assert text == bytes(alone).decode("utf-8", errors="replace")


def test_stop_tokens(arch_export):
    path, model = arch_export
    expected = torch_greedy(model, list(PROMPT.encode()), N)
    stop = expected[5]
    got = _run_alone(path, PROMPT, SamplingParams(max_new_tokens=N, stop_tokens=(stop,)))
    assert got == expected[:expected.index(stop) + 1]


@pytest.mark.parametrize("prompt,match", [
    ("", "non-empty prompt"),
    ([1, 2, 999], r"token ids must be in \[0, 256\)"),
    ([-1], r"token ids must be in"),
])
def test_bad_prompts(runtime_exports, prompt, match):
    path, _ = runtime_exports["linear"]
    with pytest.raises(LinexportError, match=match):
        Generator(Model(path)).add(prompt)


def _copy_export(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_manifest_from_another_version(runtime_exports, tmp_path):
    out = _copy_export(runtime_exports["linear"][0], tmp_path / "e")
    data = json.loads((out / "linexport.json").read_text())
    data["format_version"] = 99
    (out / "linexport.json").write_text(json.dumps(data))
    with pytest.raises(LinexportError, match="format version 99"):
        Model(out)


def test_missing_and_tampered_graphs(runtime_exports, tmp_path):
    out = _copy_export(runtime_exports["linear"][0], tmp_path / "e")
    with open(out / "decode.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(LinexportError, match="sha256"):
        Model(out)
    (out / "decode.onnx").unlink()
    with pytest.raises(LinexportError, match="missing"):
        Model(out)
    with pytest.raises(LinexportError, match="linexport.json"):
        Model(tmp_path / "nowhere")


def test_wrong_provider_and_backend(runtime_exports):
    import onnxruntime as ort

    path, _ = runtime_exports["linear"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: the error case cannot be produced here")
    with pytest.raises(LinexportError, match="onnxruntime-gpu"):
        Model(path, device="cuda")
    with pytest.raises(LinexportError, match="unknown backend 'tvm'"):
        Model(path, backend="tvm")
    with pytest.raises(LinexportError, match="unknown device 'tpu'"):
        Model(path, device="tpu")


def test_runtime_imports_neither_torch_nor_onnx():
    code = ("import sys, linexport.runtime; "
            "bad = [m for m in ('torch', 'onnx', 'onnxscript') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_full_logits_export_generates_as_the_default_export(runtime_exports, tmp_path):
    """A --full-logits prefill returns [B, T, V]: ingestion takes each row's last real token
    (prompts of different lengths, in chunks that end mid-prompt)."""
    from linexport.export.exporter import export_checkpoint
    from linexport.models.checkpoint import save_checkpoint

    path, model = runtime_exports["linear"]
    save_checkpoint(model, tmp_path / "m.pt")
    export_checkpoint(tmp_path / "m.pt", tmp_path / "full", full_logits=True)
    prompts = [[3, 1, 4, 1, 5, 9, 2, 6], [2, 7], [1, 8, 2, 8, 1]]
    runs = []
    for out in (path, tmp_path / "full"):
        gen = Generator(Model(out, num_slots=3, prefill_chunk=3))
        seqs = gen.add_many(prompts, SamplingParams(max_new_tokens=6))
        while not gen.is_done():
            gen.step()
        runs.append([s.generated for s in seqs])
    assert runs[0] == runs[1]
    backend = Model(tmp_path / "full", num_slots=3).backend  # the backend contract: [n, V]
    ids = np.zeros((3, 8), np.int64)
    for i, p in enumerate(prompts):
        ids[i, :len(p)] = p
    assert backend.prefill(ids, np.array([len(p) for p in prompts]), [0, 1, 2]).shape == (3, backend.vocab_size)
    for prompt, generated in zip(prompts, runs[0]):
        assert generated == torch_greedy(model, prompt, 6)
