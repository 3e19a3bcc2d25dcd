"""Slot-addressed decoding on the backends that run here: ONNX Runtime CPU (fixed-size states,
ping-pong pools with per-slot parity) and the KV-cache backend. Checks in slot_checks.py; the
same ones run on TensorRT in test_trt_backend.py."""

import numpy as np
import pytest

from linexport.errors import LinexportError
from linexport.runtime import Generator, Model, SamplingParams
from tests.runtime import slot_checks

ARCHS = ["linear", "softmax"]  # OrtBackend, OrtKvCacheBackend


@pytest.mark.parametrize("arch", ARCHS)
def test_decode_leaves_unnamed_slots_bit_identical(arch, runtime_exports):
    slot_checks.check_decode_advances_only_named_slots(runtime_exports[arch][0])


@pytest.mark.parametrize("arch", ARCHS)
def test_append_tokens_leaves_other_sequences_untouched(arch, runtime_exports):
    slot_checks.check_append_tokens_leaves_others_untouched(runtime_exports[arch][0])


@pytest.mark.parametrize("arch", ARCHS)
def test_fork_uses_copy_slot_and_leaves_others_untouched(arch, runtime_exports):
    slot_checks.check_fork_copies_on_the_backend(runtime_exports[arch][0])


def test_contiguous_batches_stay_zero_copy(runtime_exports):
    """Every live sequence in slots 0..n-1, decoding together, with joins at the end: never the
    gather path (its staging pools are only allocated when it first runs)."""
    gen = Generator(Model(runtime_exports["linear"][0], num_slots=3))
    gen.add("a = 1", SamplingParams(max_new_tokens=9))
    for _ in range(3):
        gen.step()
    gen.add("b = 2", SamplingParams(max_new_tokens=9))  # joins in slot 1 with slot 0's parity flipped 3x
    for _ in range(4):
        gen.step()
    assert gen.backend._staging is None
    # A gap (slot 1 finishes first) takes the gather path once; the write-back to pool A makes
    # the parities uniform again, so the next contiguous step is zero-copy again.
    b = gen.backend
    b.decode([0, 2], [1, 1], [20, 0])
    assert b._staging is not None and b._parity[0] == b._parity[2] == 0


@pytest.mark.parametrize("arch", ARCHS)
def test_bad_slots_are_refused(arch, runtime_exports):
    b = Model(runtime_exports[arch][0], num_slots=3).backend
    b.prefill(np.array([[1, 2, 3]]), np.array([3]), [1])
    before = b.get_state(1)
    cases = [
        (lambda: b.decode([1, 1], [5, 6], [3, 3]), r"expected distinct slots .*got \[1, 1\]"),
        (lambda: b.decode([3], [5], [3]), r"expected slots in \[0, 3\), got \[3\]"),
        (lambda: b.decode([-1], [5], [3]), r"expected slots in \[0, 3\), got \[-1\]"),
        (lambda: b.decode([1], [5, 6], [3, 3]), r"expected one slot per row \(2 rows\), got 1 slots"),
        (lambda: b.decode([1, 2], [5, 6], [3]), r"expected input_ids \[n\] and positions \[n\]"),
        (lambda: b.decode([], [], []), r"expected 1..3 rows"),
        (lambda: b.decode([1.5], [5], [3]), r"expected slots as a 1-D sequence of ints"),
        (lambda: b.prefill(np.array([[1, 2]]), np.array([2]), [0, 1]), r"prefill: expected one slot per row"),
        (lambda: b.get_state(3), r"expected slot in \[0, 3\)"),
        (lambda: b.copy_slot(1, 7), r"expected dst in \[0, 3\)"),
        (lambda: b.permute_slots([0, 5]), r"permute_slots: expected at most 3 entries in \[0, 3\)"),
    ]
    for call, match in cases:
        with pytest.raises(LinexportError, match=match):
            call()
    assert slot_checks.same_state(b.get_state(1), before)  # a refused call changes nothing


@pytest.mark.parametrize("arch", ARCHS)
def test_permute_and_copy_touch_only_named_slots(arch, runtime_exports):
    """permute_slots over a prefix and copy_slot after decodes that left the slots on mixed
    parities: each slot ends with exactly the state it should, others unchanged."""
    b = Model(runtime_exports[arch][0], num_slots=4).backend
    b.prefill(np.array([[1, 2, 3, 4], [5, 6, 0, 0], [7, 0, 0, 0], [8, 9, 10, 0]]), np.array([4, 2, 1, 3]),
              [0, 1, 2, 3])
    b.decode([1], [11], [2])  # slot 1 on the other pool now
    b.decode([3, 1], [12, 13], [3, 3])  # gather path
    states = [b.get_state(s) for s in range(4)]
    b.permute_slots([2, 0, 0])
    for slot, want in enumerate([states[2], states[0], states[0], states[3]]):
        assert slot_checks.same_state(b.get_state(slot), want), slot
    b.copy_slot(3, 0)
    for slot, want in enumerate([states[3], states[0], states[0], states[3]]):
        assert slot_checks.same_state(b.get_state(slot), want), slot
    # and the copies decode like their originals
    logits = b.decode([0, 3], [1, 1], [4, 4])
    np.testing.assert_array_equal(logits[0], logits[1])


@pytest.mark.parametrize("arch", ["linear", "flash"])  # the fixed-size states: both continue
def test_continued_prefill_in_scattered_slots(arch, runtime_exports):
    slot_checks.check_continued_prefill_in_scattered_slots(runtime_exports[arch][0])


@pytest.mark.parametrize("arch", ["linear", "flash"])
def test_chunked_ingestion_equals_one_prefill(arch, runtime_exports):
    slot_checks.check_chunked_ingestion_equals_one_prefill(runtime_exports[arch][0])
