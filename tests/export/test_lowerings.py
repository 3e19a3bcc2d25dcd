"""Every lowering x arch x dtype in ONNX Runtime (CPU) against the PyTorch model.

fp32 graphs match the fp32 model to 1e-5 (relative to the output's max); fp16 graphs may be at
most twice as far from the fp32 model as PyTorch's own fp16 model is (plus fp32's 1e-5 floor).
"""

import numpy as np
import pytest
import torch

from tests.conftest import rel_err
from tests.export.conftest import (ARCHS, DECODE_CHUNK, DTYPES, LOWERINGS, PREFILL_CHUNK,
                                   low_precision_model, ort_session)

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
@pytest.mark.parametrize("lowering", LOWERINGS)
@pytest.mark.parametrize("arch", ARCHS)
def test_prefill_and_decode_match_pytorch(arch, lowering, dtype, models, exports):
    model = models[arch]
    prefill, decode = exports.lowered(arch, dtype, lowering)
    sp, sd = ort_session(prefill, lowering, PREFILL_CHUNK), ort_session(decode, lowering, DECODE_CHUNK)
    names = [s.name for s in model.state_specs()]
    ids, lengths = _inputs(model.config.vocab_size)

    ref = _torch_steps(model, ids, lengths, STEPS)
    low = _torch_steps(low_precision_model(model), ids, lengths, STEPS) if dtype == "fp16" else None

    out = sp.run(None, {"input_ids": ids.numpy(), "lengths": lengths.numpy()})
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


@pytest.mark.parametrize("lowering", LOWERINGS)
@pytest.mark.parametrize("arch", ARCHS)
def test_ragged_batch_equals_unpadded_prefill(arch, lowering, models, exports):
    model = models[arch]
    prefill, _ = exports.lowered(arch, "fp32", lowering)
    session = ort_session(prefill, lowering, PREFILL_CHUNK)
    ids, lengths = _inputs(model.config.vocab_size, (37, 16, 17, 1))
    batch = session.run(None, {"input_ids": ids.numpy(), "lengths": lengths.numpy()})
    cache_axes = [s.shape.index("past_seq") if "past_seq" in s.shape else None for s in model.state_specs()]
    for b, n in enumerate(lengths.tolist()):
        alone = session.run(None, {"input_ids": ids[b:b + 1, :n].numpy(), "lengths": np.array([n])})
        for got, want, axis in zip(batch, alone, [None, *cache_axes]):
            got = got[b:b + 1]
            if axis is not None:  # a KV cache: one entry per input position, zeros where padded
                assert not got.take(range(n, got.shape[axis]), axis).any()
                got = got.take(range(n), axis)
            assert rel_err(torch.from_numpy(got), torch.from_numpy(want)) < 1e-6
