"""The CUDA kernels against the naive reference, on a GPU (skipped without one).

Inputs are made in low precision first, so the fp64 reference sees exactly what the kernel sees.
Low-precision tolerance (as flash-attention's tests): the kernel may be at most twice as far
from the fp64 reference as PyTorch's own low-precision computation of the same chunked formula,
or half an output ulp, whichever is larger. The state is fp32 in every case.
"""

from __future__ import annotations

import pytest
import torch

from linexport.models.ops.causal_linear_attention import chunk_causal_linear_attention, feature_map
from linexport.models.ops.causal_linear_attention.naive import naive_causal_linear_attention
from tests.conftest import rel_err

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU: the kernels run only on a GPU machine")

EPS = 1e-6
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
HALF_ULP = {torch.float32: 1e-6, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}
# For the checks without a low-precision PyTorch twin (lengths, in-place, split sequences): a few
# output ulps. A wrong kernel is off by O(1).
FEW_ULPS = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@pytest.fixture(scope="module")
def kernels(native_build):
    from linexport.plugins import CausalLinearAttentionKernels

    return CausalLinearAttentionKernels(native_build.kernels_lib)


def lowp_chunk(q, k, v, state, chunk=64):
    """The chunked formula evaluated in the inputs' dtype: PyTorch's own low-precision answer."""
    B, H, T, Dk = q.shape
    Dv = v.shape[-1]
    dt = q.dtype
    v1 = torch.cat([v, torch.ones_like(v[..., :1])], -1)
    pad = (-T) % chunk
    q, k, v1 = (torch.nn.functional.pad(t, (0, 0, 0, pad)) for t in (q, k, v1))
    N = (T + pad) // chunk
    q, k, v1 = q.view(B, H, N, chunk, Dk), k.view(B, H, N, chunk, Dk), v1.view(B, H, N, chunk, Dv + 1)
    mask = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()
    u = (q @ k.transpose(-1, -2)).masked_fill(~mask, 0) @ v1
    kv = k.transpose(-1, -2) @ v1
    before = kv.cumsum(2) - kv + state.to(dt).unsqueeze(2)
    u = u + q @ before
    o = (u[..., :Dv] / (u[..., Dv:] + EPS)).reshape(B, H, N * chunk, Dv)[:, :, :T]
    return o


def make_inputs(B, T, H, Dk, Dv, dtype, with_state, device="cuda"):
    q = feature_map(torch.randn(B, T, H, Dk, device=device), "elu").to(dtype)
    k = feature_map(torch.randn(B, T, H, Dk, device=device), "elu").to(dtype)
    v = torch.randn(B, T, H, Dv, device=device).to(dtype)
    state = None
    if with_state:
        # A state some earlier tokens left behind (z > 0, as any real state).
        kp = feature_map(torch.randn(B, H, 5, Dk, device=device, dtype=torch.float64), "elu")
        vp = torch.randn(B, H, 5, Dv, device=device, dtype=torch.float64)
        v1 = torch.cat([vp, torch.ones_like(vp[..., :1])], -1)
        state = (kp.transpose(-1, -2) @ v1).float().contiguous()
    return q, k, v, state


def reference(q, k, v, state, lengths=None):
    """fp64 oracle in [B, T, H, D] layout: naive token loop up to T = 1025, else the chunked op."""
    qh, kh, vh = (t.permute(0, 2, 1, 3).double() for t in (q, k, v))
    st = None if state is None else state.double()
    if q.shape[1] <= 1025:
        o, s = naive_causal_linear_attention(qh.cpu(), kh.cpu(), vh.cpu(), EPS, None if st is None else st.cpu(),
                                             None if lengths is None else lengths.cpu())
    else:
        assert lengths is None
        o, s = chunk_causal_linear_attention(qh, kh, vh, EPS, initial_state=st)
    return o.permute(0, 2, 1, 3).to(q.device), s.to(q.device)


SHAPES = [  # B, T, H, Dk, Dv
    (2, 1, 3, 64, 64),
    (2, 63, 3, 32, 32),
    (2, 97, 2, 60, 60),
    (1, 97, 2, 96, 96),
    (2, 1025, 2, 64, 64),
    (1, 1025, 2, 128, 128),
    (1, 257, 2, 256, 256),
    (1, 97, 2, 64, 32),
    (1, 97, 2, 32, 128),
    (1, 8192, 2, 64, 64),
]


@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "past-state"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-T{}-H{}-Dk{}-Dv{}".format(*s))
@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
def test_kernels_match_the_reference(kernels, dtype, shape, with_state):
    B, T, H, Dk, Dv = shape
    if dtype == torch.bfloat16 and torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("bfloat16 kernels need sm_80")
    q, k, v, state = make_inputs(B, T, H, Dk, Dv, dtype, with_state)
    o, s = kernels.forward(q, k, v, state, eps=EPS)
    torch.cuda.synchronize()
    o_ref, s_ref = reference(q, k, v, state)
    assert rel_err(s, s_ref) < (1e-5 if dtype == torch.float32 else 1e-4)
    if dtype == torch.float32:
        assert rel_err(o, o_ref) < 1e-4
    else:
        zero = torch.zeros(B, H, Dk, Dv + 1, device="cuda") if state is None else state
        o_lowp = lowp_chunk(*(t.permute(0, 2, 1, 3) for t in (q, k, v)), zero).permute(0, 2, 1, 3)
        assert rel_err(o, o_ref) <= max(2 * rel_err(o_lowp, o_ref), HALF_ULP[dtype])


@pytest.mark.parametrize("shape", [(2, 1, 3, 64, 40), (2, 97, 2, 60, 60), (1, 1025, 2, 128, 64)],
                         ids=lambda s: "B{}-T{}-H{}-Dk{}-Dv{}".format(*s))
@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
def test_unnormalised_kernels_match_the_reference(kernels, dtype, shape):
    """normalize = 0: state [B, H, Dk, Dv], o = qᵀS, features of either sign. fp16/bf16 to the
    rounding of q, k, v and the MMA operands (a few output ulps of the fp64 oracle's scale)."""
    B, T, H, Dk, Dv = shape
    if dtype == torch.bfloat16 and torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("bfloat16 kernels need sm_80")
    g = torch.Generator(device="cuda").manual_seed(T)
    q, k, v = ((0.5 * torch.randn(B, T, H, d, device="cuda", generator=g)).to(dtype) for d in (Dk, Dk, Dv))
    state = torch.randn(B, H, Dk, Dv, device="cuda", generator=g)
    o, s = kernels.forward(q, k, v, state, eps=EPS, normalize=False)
    torch.cuda.synchronize()
    qh, kh, vh = (t.permute(0, 2, 1, 3).double().cpu() for t in (q, k, v))
    o_ref, s_ref = naive_causal_linear_attention(qh, kh, vh, EPS, state.double().cpu(), normalize=False)
    o_ref = o_ref.permute(0, 2, 1, 3)
    assert s.shape == (B, H, Dk, Dv)
    assert rel_err(s.cpu(), s_ref) < (1e-5 if dtype == torch.float32 else 1e-4)
    assert rel_err(o.cpu(), o_ref) < {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("T", [1, 70], ids=["decode", "prefill"])
def test_padded_positions_leave_the_state_untouched(kernels, dtype, T):
    if dtype == torch.bfloat16 and torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("bfloat16 kernels need sm_80")
    B, H, D = 3, 2, 64
    q, k, v, state = make_inputs(B, T, H, D, D, dtype, with_state=True)
    lengths = torch.tensor([T, 0, max(T - 9, 0)], dtype=torch.int32)
    o, s = kernels.forward(q, k, v, state, eps=EPS, lengths=lengths)
    torch.cuda.synchronize()
    o_ref, s_ref = reference(q, k, v, state, lengths)
    assert torch.equal(s[1], state[1])  # length 0: the state passes through bit for bit
    assert rel_err(s, s_ref) < 1e-4
    for b in range(B):
        assert not o[b, int(lengths[b]):].any()  # zero output past the length
    assert rel_err(o, o_ref) < FEW_ULPS[dtype]


def test_decode_updates_the_state_in_place(kernels):
    q, k, v, state = make_inputs(2, 1, 4, 64, 64, torch.float16, with_state=True)
    o_ref, s_ref = reference(q, k, v, state)
    o, s = kernels.forward(q, k, v, state, eps=EPS, present_state=state)
    torch.cuda.synchronize()
    assert s.data_ptr() == state.data_ptr()
    assert rel_err(state, s_ref) < 1e-5
    assert rel_err(o, o_ref) < FEW_ULPS[torch.float16]


def test_prefill_then_decode_equals_longer_prefill(kernels):
    q, k, v, _ = make_inputs(2, 65, 2, 64, 64, torch.bfloat16 if torch.cuda.get_device_capability() >= (8, 0) else torch.float16, False)
    o_all, s_all = kernels.forward(q, k, v)
    o_pre, s_pre = kernels.forward(q[:, :64], k[:, :64], v[:, :64])
    o_step, s_step = kernels.forward(q[:, 64:], k[:, 64:], v[:, 64:], s_pre)
    torch.cuda.synchronize()
    assert rel_err(s_step, s_all) < 1e-5
    assert rel_err(o_step, o_all[:, 64:]) < FEW_ULPS[q.dtype]
