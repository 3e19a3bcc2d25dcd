"""The KV-cache backend (softmax baseline) directly: pools that grow, ragged rows whose cache
lengths differ inside one decode step, state get/set/copy/permute, and its errors."""

import numpy as np
import pytest
import torch

from linexport.errors import LinexportError
from linexport.runtime import Generator, Model, SamplingParams
from linexport.runtime.backends import ort_kv
from tests.runtime.conftest import torch_greedy

PROMPTS = ["import os\n", "class A:\n    def __init__(self):", "x"]


@pytest.fixture
def softmax_export(runtime_exports):
    return runtime_exports["softmax"]


def test_kv_export_gets_the_cache_backend(softmax_export):
    path, _ = softmax_export
    assert type(Model(path).backend).__name__ == "OrtKvCacheBackend"


def test_ragged_batch_and_pool_growth_match_pytorch(softmax_export, monkeypatch):
    """Three prompts of different lengths decode together from a 2-token pool that must double
    several times; every row equals PyTorch greedy alone, token for token."""
    monkeypatch.setattr(ort_kv, "INITIAL_CAPACITY", 2)
    path, model = softmax_export
    gen = Generator(Model(path, num_slots=3))
    seqs = gen.add_many(PROMPTS, SamplingParams(max_new_tokens=30))
    while not gen.is_done():
        gen.step()
    assert gen.backend._capacity >= len(PROMPTS[1]) + 30
    for prompt, seq in zip(PROMPTS, seqs):
        assert seq.generated == torch_greedy(model, list(prompt.encode()), 30), prompt


def test_slot_state_is_the_pytorch_cache(softmax_export):
    path, model = softmax_export
    m = Model(path, num_slots=2)
    ids = [list(p.encode()) for p in PROMPTS[:2]]
    lengths = np.array([len(i) for i in ids])
    padded = np.zeros((2, lengths.max()), np.int64)
    for row, i in enumerate(ids):
        padded[row, :len(i)] = i
    m.backend.prefill(padded, lengths, [1, 0])  # rows land in swapped slots
    m.backend.decode([0, 1], np.array([5, 6]), np.array([lengths[1], lengths[0]]))
    for row, slot in ((0, 1), (1, 0)):
        with torch.no_grad():
            _, ref = model.prefill(torch.tensor([ids[row] + [6 if slot else 5]]))
        state = m.backend.get_state(slot)
        for name, value in state.items():
            assert value.shape == (3, len(ids[row]) + 1, 15), name
            np.testing.assert_allclose(value, ref[name][0].numpy(), rtol=1e-4, atol=1e-5)


def test_copy_permute_and_set_state(softmax_export):
    path, _ = softmax_export
    b = Model(path, num_slots=3).backend
    b.prefill(np.array([[1, 2, 3, 4], [9, 8, 0, 0]]), np.array([4, 2]), [0, 1])
    s0, s1 = b.get_state(0), b.get_state(1)
    b.copy_slot(0, 2)
    b.permute_slots([1, 2, 0])
    for got, want in ((b.get_state(0), s1), (b.get_state(1), s0), (b.get_state(2), s0)):
        assert got.keys() == want.keys()
        assert all(np.array_equal(got[k], want[k]) for k in got)
    b.set_state(2, s1)
    assert all(np.array_equal(b.get_state(2)[k], s1[k]) for k in s1)
    # Decoding all three rows from their own lengths (4, 2 and 2 cached tokens) is row-independent.
    logits = b.decode([0, 1, 2], np.array([7, 7, 7]), np.array([2, 4, 2]))
    np.testing.assert_allclose(logits[0], logits[2], rtol=1e-6, atol=1e-6)


def test_errors(softmax_export):
    path, _ = softmax_export
    b = Model(path, num_slots=2).backend
    b.prefill(np.array([[1, 2, 3]]), np.array([3]), [0])
    with pytest.raises(LinexportError, match=r"expected each row's position in \[0, its cached tokens \[3, 0\]\]"):
        b.decode([0, 1], np.array([1, 1]), np.array([3, 1]))
    state = b.get_state(0)
    with pytest.raises(LinexportError, match=r"state 0.key: expected shape \(3, 'past_seq', 15\), got \(3, 3, 14\)"):
        b.set_state(1, {**state, "0.key": np.zeros((3, 3, 14), np.float32)})
    with pytest.raises(LinexportError, match="the same number of tokens"):
        b.set_state(1, {**state, "0.key": np.zeros((3, 5, 15), np.float32)})
    with pytest.raises(LinexportError, match="KV cache: use backend 'ort'"):
        Model(path, backend="trt")


def test_generate_command_on_a_softmax_export(softmax_export):
    from click.testing import CliRunner

    from linexport.cli import main

    path, model = softmax_export
    result = CliRunner().invoke(main, ["generate", str(path), "--prompt", "def ", "--temperature", "0",
                                       "--max-new-tokens", "20"])
    assert result.exit_code == 0, result.output
    expected = bytes(torch_greedy(model, list(b"def "), 20)).decode("utf-8", errors="replace")
    assert result.output == "def " + expected + "\n"
