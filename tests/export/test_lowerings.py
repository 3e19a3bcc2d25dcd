"""Every lowering x arch x dtype in ONNX Runtime (CPU) against the PyTorch model.

fp32 graphs match the fp32 model to 1e-5 (relative to the output's max); fp16 graphs may be at
most twice as far from the fp32 model as PyTorch's own fp16 model is (plus fp32's 1e-5 floor).
"""

import numpy as np
import pytest
import torch

from linexport.export.ort_session import prefill_feed
from tests.conftest import rel_err
from tests.export.conftest import (ARCHS, DECODE_CHUNK, DTYPES, KV_CACHE_ARCHS, PREFILL_CHUNK, low_precision_model,
                                   lowering_cases, ort_session)

FP32_TOL = 1e-5
STEPS = 5


def _inputs(vocab, lengths=(37, 20, 1)):
    g = torch.Generator().manual_seed(7)
    T = max(lengths)
    ids = torch.randint(0, vocab, (len(lengths), T), generator=g)
    lengths = torch.tensor(lengths)
    ids[torch.arange(T)[None, :] >= lengths[:, None]] = 0  # padding holds some id; it must not matter
    return ids, lengths


def _check(got, ref, low, what):
    """got: ORT output; ref: fp32 PyTorch; low: PyTorch fp16 or None (fp32 graph)."""
    got = torch.as_tensor(np.asarray(got, dtype=np.float32))
    err = rel_err(got, ref)
    bound = FP32_TOL if low is None else 2 * rel_err(low, ref) + FP32_TOL
    assert err <= bound, f"{what}: relative error {err:.3e} > {bound:.3e}"
    return err


def _torch_steps(model, ids, lengths, steps):
    """prefill, then `steps` steps fed the tokens `ids[:, T:T+steps]`-like fixed tokens."""
    with torch.no_grad():
        logits, state = model.prefill(ids, lengths)
        out = [(logits, state)]
        for i in range(steps):
            token = torch.full((len(lengths),), 11 + 7 * i) % model.config.vocab_size
            logits, state = model.step(token, lengths + i, state)
            out.append((logits, state))
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("arch,lowering", lowering_cases())
def test_prefill_and_decode_match_pytorch(arch, lowering, dtype, models, exports):
    model = models[arch]
    prefill, decode = exports.lowered(arch, dtype, lowering)
    sp, sd = ort_session(prefill, lowering, "prefill"), ort_session(decode, lowering, "decode")
    names = [s.name for s in model.state_specs()]
    ids, lengths = _inputs(model.config.vocab_size)

    ref = _torch_steps(model, ids, lengths, STEPS)
    low = _torch_steps(low_precision_model(model), ids, lengths, STEPS) if dtype == "fp16" else None

    out = sp.run(None, prefill_feed(sp, ids.numpy(), lengths.numpy()))
    assert out[0].dtype == (np.float16 if dtype == "fp16" else np.float32)
    assert all(o.dtype == np.float32 for o in out[1:]), "states must stay fp32"
    _check(out[0], ref[0][0], low and low[0][0].float(), "prefill logits")
    for name, got in zip(names, out[1:]):
        _check(got, ref[0][1][name], low and low[0][1][name], f"prefill present.{name}")

    state = dict(zip(names, out[1:]))
    for i in range(STEPS):
        token = (torch.full((len(lengths),), 11 + 7 * i) % model.config.vocab_size).numpy()
        feed = {"input_ids": token[:, None], "position": (lengths + i).numpy(),
                **{f"past.{n}": state[n] for n in names}}
        out = sd.run(None, feed)
        state = dict(zip(names, out[1:]))
        r, lo = ref[i + 1], (low[i + 1] if low else None)
        _check(out[0], r[0], lo and lo[0].float(), f"decode step {i} logits")
        for name in names:
            _check(state[name], r[1][name], lo and lo[1][name], f"decode step {i} present.{name}")


@pytest.mark.parametrize("arch,lowering", lowering_cases())
def test_ragged_batch_equals_unpadded_prefill(arch, lowering, models, exports):
    model = models[arch]
    prefill, _ = exports.lowered(arch, "fp32", lowering)
    session = ort_session(prefill, lowering, "prefill")
    ids, lengths = _inputs(model.config.vocab_size, (37, 16, 17, 1))
    batch = session.run(None, prefill_feed(session, ids.numpy(), lengths.numpy()))
    cache_axes = [s.shape.index("past_seq") if "past_seq" in s.shape else None for s in model.state_specs()]
    for b, n in enumerate(lengths.tolist()):
        alone = session.run(None, prefill_feed(session, ids[b:b + 1, :n].numpy(), np.array([n])))
        for got, want, axis in zip(batch, alone, [None, *cache_axes]):
            got = got[b:b + 1]
            if axis is not None:  # a KV cache: one entry per input position, zeros where padded
                assert not got.take(range(n, got.shape[axis]), axis).any()
                got = got.take(range(n), axis)
            assert rel_err(torch.from_numpy(got), torch.from_numpy(want)) < 1e-6


# -- continued prefill ------------------------------------------------------------------------
CONTINUING_ARCHS = tuple(a for a in ARCHS if a not in KV_CACHE_ARCHS)
# (a, b) per row: a tokens prefilled first, then b more by a continued prefill. The test models'
# chunk is 16 (GAU's group size and the linear op's chunk): a and a + b fall at C - 1, C, C + 1,
# a = 0 (a fresh row in a continued call), b = 0 (the row's state must pass through unchanged).
SPLITS = ((0, 17), (15, 1), (16, 0), (17, 15), (5, 10), (31, 2), (16, 16), (1, 33))
CONTINUE_STEPS = 3


def _split_inputs(vocab):
    a = torch.tensor([s[0] for s in SPLITS])
    b = torch.tensor([s[1] for s in SPLITS])
    whole, _ = _inputs(vocab, tuple((a + b).tolist()))
    first = torch.zeros(len(SPLITS), int(a.max()), dtype=torch.int64)
    rest = torch.zeros(len(SPLITS), int(b.max()), dtype=torch.int64)
    for row, (n, m) in enumerate(SPLITS):
        first[row, :n] = whole[row, :n]
        rest[row, :m] = whole[row, n:n + m]
    return whole, first, rest, a, b


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("arch,lowering", lowering_cases(CONTINUING_ARCHS))
def test_continued_prefill_equals_one_prefill(arch, lowering, dtype, models, exports):
    """prefill(a) then prefill(b) from its state == prefill(a + b) in PyTorch: logits of each
    row's last token and every state, on one ragged batch of rows at different positions; then
    decode steps from either state agree too. fp16: verify's allowance (2x PyTorch's fp16)."""
    model = models[arch]
    prefill, decode = exports.lowered(arch, dtype, lowering)
    sp, sd = ort_session(prefill, lowering, "prefill"), ort_session(decode, lowering, "decode")
    names = [s.name for s in model.state_specs()]
    whole, first, rest, a, b = _split_inputs(model.config.vocab_size)
    ref = _torch_steps(model, whole, a + b, CONTINUE_STEPS)
    low = _torch_steps(low_precision_model(model), whole, a + b, CONTINUE_STEPS) if dtype == "fp16" else None

    out = sp.run(None, prefill_feed(sp, first.numpy(), a.numpy()))
    after_a = dict(zip(names, out[1:]))
    out = sp.run(None, prefill_feed(sp, rest.numpy(), b.numpy(), a.numpy(), after_a))
    logits, state = out[0], dict(zip(names, out[1:]))
    moved = b > 0
    _check(logits[moved.numpy()], ref[0][0][moved], low and low[0][0][moved].float(), "continued logits")
    for name in names:
        _check(state[name], ref[0][1][name], low and low[0][1][name], f"continued present.{name}")
        for row in torch.nonzero(~moved).flatten().tolist():  # nothing new: the very same state
            assert np.array_equal(state[name][row], after_a[name][row]), (name, row)

    for i in range(CONTINUE_STEPS):
        token = (torch.full((len(SPLITS),), 11 + 7 * i) % model.config.vocab_size).numpy()
        out = sd.run(None, {"input_ids": token[:, None], "position": (a + b + i).numpy(),
                            **{f"past.{n}": state[n] for n in names}})
        state = dict(zip(names, out[1:]))
        r, lo = ref[i + 1], (low[i + 1] if low else None)
        _check(out[0], r[0], lo and lo[0].float(), f"decode step {i} after the continued prefill")
        for name in names:
            _check(state[name], r[1][name], lo and lo[1][name], f"decode step {i} present.{name}")


@pytest.mark.parametrize("arch", CONTINUING_ARCHS)
def test_three_continued_pieces_equal_one_prefill(arch, models, exports):
    """A prompt fed in pieces of 5, 16 and 12 tokens (ragged: each row's own cuts) in the
    function lowering equals its one prefill: the chunked ingestion the runtime does."""
    model = models[arch]
    prefill, _ = exports.lowered(arch, "fp32", "function")
    sp = ort_session(prefill, "function", "prefill")
    names = [s.name for s in model.state_specs()]
    whole, lengths = _inputs(model.config.vocab_size, (33, 21, 4))
    ref_logits, ref_state = _torch_steps(model, whole, lengths, 0)[0]
    position, state, last = np.zeros(3, np.int64), None, None
    for piece in (5, 16, 12):
        take = np.clip(lengths.numpy() - position, 0, piece)
        ids = np.zeros((3, piece), np.int64)
        for row in range(3):
            ids[row, :take[row]] = whole[row, position[row]:position[row] + take[row]]
        out = sp.run(None, prefill_feed(sp, ids, take, position, state))
        last = out[0] if last is None else np.where((take > 0)[:, None], out[0], last)  # rows done keep theirs
        state, position = dict(zip(names, out[1:])), position + take
    assert (position == lengths.numpy()).all()
    _check(last, ref_logits, None, "logits after three pieces")
    for name in names:
        _check(state[name], ref_state[name], None, f"present.{name} after three pieces")


@pytest.mark.parametrize("arch", KV_CACHE_ARCHS)
def test_a_kv_cache_prefill_takes_no_past(arch, exports):
    prefill, _ = exports.lowered(arch, "fp32", "function")
    assert [i.name for i in prefill.graph.input] == ["input_ids", "lengths"]
