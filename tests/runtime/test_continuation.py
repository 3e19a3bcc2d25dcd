"""Continued prefill in the runtime: the prefix cache, the KV baselines' refusal, and bad input.
The slot-isolation checks of continued prefill and chunked ingestion are in slot_checks.py
(run per backend from test_slots.py)."""

import numpy as np
import pytest

from linexport.errors import LinexportError
from linexport.runtime import Generator, Model, SamplingParams
from linexport.runtime.prefix_cache import PrefixCache
from tests.runtime.slot_checks import same_state

SYSTEM = "# You are a helpful assistant that writes Python.\n" * 3
GREEDY = SamplingParams(max_new_tokens=10)


@pytest.mark.parametrize("arch", ["linear", "flash"])
def test_prefix_cache_hits_give_the_tokens_of_misses(arch, runtime_exports):
    path = runtime_exports[arch][0]
    plain = Generator(Model(path, num_slots=3))
    cache = PrefixCache(max_bytes=64 << 20)
    cached = Generator(Model(path, num_slots=3), prefix_cache=cache)
    cached.cache_prefix(SYSTEM)
    assert cached.is_done() and len(cache) == 1 and cache.hits == 0
    bystander = cached.add("import os\n", SamplingParams(max_new_tokens=100))  # live throughout
    for question in ("def add(a, b):", "class Point:"):
        before = cached.backend.get_state(bystander.slot)
        hit = cached.add(SYSTEM + question, GREEDY)  # restores SYSTEM's state, prefills the question
        assert same_state(cached.backend.get_state(bystander.slot), before), "a restore touched another slot"
        miss = plain.add(SYSTEM + question, GREEDY)
        assert np.abs(hit.logits - miss.logits).max() <= 1e-4 * np.abs(miss.logits).max()
        for gen, seq in ((cached, hit), (plain, miss)):
            while not seq.done:
                gen.step()
        assert hit.generated == miss.generated
    assert cache.hits == 2
    # A prompt that is exactly a cached one needs no prefill at all: its logits come from the cache.
    again = cached.add(SYSTEM, GREEDY)
    assert cache.hits == 3 and again.position == len(SYSTEM.encode())


def test_prefix_cache_is_lru_bounded_in_bytes():
    state = {"0.kv": np.ones((2, 3), np.float32)}
    logits = np.zeros(4, np.float32)
    entry = 2 * 3 * 4 + 4 * 4 + 8 * 3  # state + logits + 3 tokens
    cache = PrefixCache(max_bytes=2 * entry + entry // 2)
    assert cache.insert([1, 2, 3], state, logits) and cache.insert([4, 5, 6], state, logits)
    assert cache.nbytes == 2 * entry
    assert cache.lookup([1, 2, 3, 9]).tokens == (1, 2, 3)  # now the most recently used
    cache.insert([7, 8, 9], state, logits)  # evicts the least recently used: (4, 5, 6)
    assert [1, 2, 3] in cache and [7, 8, 9] in cache and [4, 5, 6] not in cache
    assert cache.nbytes == 2 * entry and len(cache) == 2
    assert not PrefixCache(max_bytes=entry - 1).insert([1, 2, 3], state, logits), "too big to keep"
    cache = PrefixCache(max_bytes=10 * entry)
    cache.insert([1, 2, 3], state, logits)
    cache.insert([1, 2], state, logits)
    assert cache.lookup([1, 2, 3, 4]).tokens == (1, 2, 3), "the longest cached prefix wins"
    assert cache.lookup([1, 2, 4]).tokens == (1, 2)
    assert cache.lookup([2, 3]) is None and cache.misses == 1
    hit = cache.lookup([1, 2, 3])
    state["0.kv"][:] = 5  # the caller's array: the entry holds a copy
    assert (hit.state["0.kv"] == 1).all()
    with pytest.raises(ValueError):
        hit.state["0.kv"][0, 0] = 7  # and nobody writes into an entry


def test_kv_baselines_refuse_continuation_clearly(runtime_exports):
    path = runtime_exports["softmax"][0]
    model = Model(path, num_slots=2)
    assert not model.backend.continues_prefill
    model.backend.prefill(np.array([[5, 6, 7]]), np.array([3]), [0])
    with pytest.raises(LinexportError, match="starts from an empty KV cache and cannot continue"):
        model.backend.prefill(np.array([[8]]), np.array([1]), [0], positions=np.array([3]))
    with pytest.raises(LinexportError, match="prefix cache needs a prefill that continues"):
        Generator(model, prefix_cache=PrefixCache(1 << 20))


@pytest.mark.parametrize("call,match", [
    (lambda b: b.prefill(np.ones((2, 3), np.int64), [3, 3], [0, 1], positions=[0, -1]), "positions >= 0"),
    (lambda b: b.prefill(np.ones((2, 3), np.int64), [3, 3], [0, 1], positions=[0]), "expected positions as 2 ints"),
    (lambda b: b.prefill(np.ones((2, 3), np.int64), [3, 3], [0, 1], positions=[0.5, 1]), "expected positions"),
    (lambda b: b.prefill(np.ones((2, 3), np.int64), [4, 3], [0, 1]), r"lengths in \[0, 3\]"),
    (lambda b: b.prefill(np.ones((2, 3), np.int64), [-1, 3], [0, 1]), r"lengths in \[0, 3\]"),
    (lambda b: b.prefill(np.ones((2, 0), np.int64), [0, 0], [0, 1]), r"T >= 1"),
    (lambda b: b.prefill(np.full((1, 2), 999), [2], [0]), r"token ids must be in \[0, 256\)"),
])
def test_bad_prefill_inputs_are_refused(call, match, runtime_exports):
    backend = Model(runtime_exports["linear"][0], num_slots=2).backend
    before = [backend.get_state(s) for s in range(2)]
    with pytest.raises(LinexportError, match=match):
        call(backend)
    assert all(same_state(backend.get_state(s), before[s]) for s in range(2)), "a refused call wrote state"


@pytest.mark.parametrize("chunk", [0, -3, 2.5, True])
def test_bad_prefill_chunk_is_refused(chunk, runtime_exports):
    with pytest.raises(LinexportError, match="prefill_chunk to be an int >= 1"):
        Model(runtime_exports["linear"][0], prefill_chunk=chunk)
