"""The chunked and step forms of causal linear attention against the naive fp64 loops."""

import pytest
import torch

from linexport.models.ops.causal_linear_attention import (chunk_causal_linear_attention, feature_map,
                                                          step_causal_linear_attention)
from linexport.models.ops.causal_linear_attention.naive import (naive_causal_linear_attention,
                                                                naive_softmax_free_causal_attention)
from tests.conftest import rel_err


def _inputs(B, H, T, Dk, Dv, dtype=torch.float64, fm="elu"):
    q = feature_map(torch.randn(B, H, T, Dk, dtype=dtype), fm)
    k = feature_map(torch.randn(B, H, T, Dk, dtype=dtype), fm)
    v = torch.randn(B, H, T, Dv, dtype=dtype)
    return q, k, v


def test_naive_loop_matches_quadratic_form():
    q, k, v = _inputs(2, 3, 40, 7, 5)
    o, _ = naive_causal_linear_attention(q, k, v, 1e-6)
    assert rel_err(o, naive_softmax_free_causal_attention(q, k, v, 1e-6)) < 1e-12


@pytest.mark.parametrize("T", [1, 15, 16, 17, 97, 1025], ids=lambda t: f"T{t}")
@pytest.mark.parametrize("dims", [(7, 5), (32, 32), (60, 33)], ids=lambda d: f"Dk{d[0]}-Dv{d[1]}")
@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "initial-state"])
def test_chunk_matches_naive(T, dims, with_state):
    Dk, Dv = dims
    q, k, v = _inputs(2, 3, T, Dk, Dv)
    init = None
    if with_state:
        init = torch.cat([torch.randn(2, 3, Dk, Dv), torch.rand(2, 3, Dk, 1) * 5], -1).double()
    ref_o, ref_s = naive_causal_linear_attention(q, k, v, 1e-6, init)
    o, s = chunk_causal_linear_attention(q.float(), k.float(), v.float(), 1e-6, chunk_size=16,
                                         initial_state=None if init is None else init.float())
    assert o.dtype == torch.float32 and s.dtype == torch.float32
    assert rel_err(o, ref_o) < 1e-5
    assert rel_err(s, ref_s) < 1e-5


@pytest.mark.parametrize("chunk", [1, 7, 64, 2048])
def test_chunk_size_does_not_change_results(chunk):
    q, k, v = (t.float() for t in _inputs(1, 2, 300, 16, 16))
    ref_o, ref_s = chunk_causal_linear_attention(q, k, v, 1e-6, chunk_size=64)
    o, s = chunk_causal_linear_attention(q, k, v, 1e-6, chunk_size=chunk)
    assert rel_err(o, ref_o) < 1e-5 and rel_err(s, ref_s) < 1e-5


def test_zero_keys_leave_state_untouched():
    q, k, v = _inputs(2, 2, 50, 8, 8)
    lengths = torch.tensor([50, 23])
    k_masked = k * (torch.arange(50)[None, :] < lengths[:, None])[:, None, :, None]
    _, s = chunk_causal_linear_attention(q.float(), k_masked.float(), v.float(), 1e-6, chunk_size=16)
    _, ref_s = naive_causal_linear_attention(q, k, v, 1e-6, lengths=lengths)
    assert rel_err(s, ref_s) < 1e-5


def test_steps_match_naive():
    q, k, v = _inputs(2, 3, 30, 9, 4)
    ref_o, ref_s = naive_causal_linear_attention(q, k, v, 1e-6)
    state = torch.zeros(2, 3, 9, 5)
    outs = []
    for t in range(30):
        o, state = step_causal_linear_attention(q[:, :, t].float(), k[:, :, t].float(),
                                                v[:, :, t].float(), state, 1e-6)
        outs.append(o)
    assert rel_err(torch.stack(outs, 2), ref_o) < 1e-5
    assert rel_err(state, ref_s) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_low_precision_inputs_keep_fp32_state(dtype):
    q, k, v = _inputs(1, 2, 200, 16, 16)
    ref_o, ref_s = naive_causal_linear_attention(q, k, v, 1e-6)
    o, s = chunk_causal_linear_attention(q.to(dtype), k.to(dtype), v.to(dtype), 1e-6, chunk_size=32)
    assert o.dtype == dtype and s.dtype == torch.float32
    # Only the inputs' rounding is lost: the error is that of rounding q, k, v once.
    o_rounded, _ = naive_causal_linear_attention(q.to(dtype).double(), k.to(dtype).double(),
                                                 v.to(dtype).double(), 1e-6)
    assert rel_err(o.double(), o_rounded) < 2 * torch.finfo(dtype).eps
    assert rel_err(s, ref_s) < 4 * torch.finfo(dtype).eps


# -- the unnormalised form: o = qᵀS, state [B, H, Dk, Dv] ---------------------------------------
@pytest.mark.parametrize("T", [1, 15, 16, 17, 97], ids=lambda t: f"T{t}")
@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "initial-state"])
def test_unnormalised_chunk_and_steps_match_naive(T, with_state):
    g = torch.Generator().manual_seed(T)
    q, k, v = (torch.randn(2, 3, T, d, generator=g, dtype=torch.float64) for d in (7, 7, 5))  # signed
    init = torch.randn(2, 3, 7, 5, generator=g, dtype=torch.float64) if with_state else None
    ref_o, ref_s = naive_causal_linear_attention(q, k, v, 1e-6, init, normalize=False)
    # The naive loop against its definition: o_t = q_tᵀ (S_0 + Σ_{s<=t} k_s v_sᵀ).
    S = torch.zeros(2, 3, 7, 5, dtype=torch.float64) if init is None else init.clone()
    for t in range(T):
        S = S + k[:, :, t, :, None] * v[:, :, t, None, :]
        assert rel_err(ref_o[:, :, t], torch.einsum("bhd,bhde->bhe", q[:, :, t], S)) < 1e-12
    assert rel_err(ref_s, S) < 1e-12
    o, s = chunk_causal_linear_attention(q.float(), k.float(), v.float(), 1e-6, chunk_size=16,
                                         initial_state=None if init is None else init.float(), normalize=False)
    assert s.shape == (2, 3, 7, 5) and rel_err(o, ref_o) < 1e-5 and rel_err(s, ref_s) < 1e-5
    state = torch.zeros(2, 3, 7, 5) if init is None else init.float()
    outs = []
    for t in range(T):
        o_t, state = step_causal_linear_attention(q[:, :, t].float(), k[:, :, t].float(), v[:, :, t].float(),
                                                  state, 1e-6, normalize=False)
        outs.append(o_t)
    assert rel_err(torch.stack(outs, 2), ref_o) < 1e-5 and rel_err(state, ref_s) < 1e-5
