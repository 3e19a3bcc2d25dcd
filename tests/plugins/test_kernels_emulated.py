"""The CUDA kernels' own source, run on the CPU through a small CUDA emulator (cuda_emu/).

No GPU here or in CI, so this is what checks the kernels' indexing, masking, chunk carry and
barriers everywhere: the .cu files are compiled by g++ against cuda_emu/ (one OS thread per
CUDA thread, real barriers, WMMA tiles computed per warp with operands rounded to the input
type), and their results are compared with the naive fp64 reference. The emulator cannot tell
anything about speed or about the real WMMA fragment layout; tests/plugins/test_kernels_gpu.py
does that on a GPU.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from linexport.models.ops.causal_linear_attention import feature_map
from linexport.models.ops.causal_linear_attention.naive import naive_causal_linear_attention
from linexport.plugins import _Params
from tests.conftest import rel_err
from tests.plugins.conftest import REPO

HERE = Path(__file__).resolve().parent
SOURCES = ["causal_linear_attention.cu", "decode_kernel.cu", "recurrent_kernel.cu", "chunked_kernel.cu"]
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
EPS = 1e-6
# Max relative error to the fp64 reference: fp32 kernels are exact FMAs; low precision allows a
# few output ulps (the output is rounded to the type, A and S pass through it for the MMAs).
TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def to_emulator_source(text: str) -> str:
    """Rewrites the two CUDA-only syntaxes: dynamic shared memory and <<<...>>> launches."""
    text = re.sub(r"extern __shared__ (?:__align__\(\d+\) )?([\w ]+?) (\w+)\[\];",
                  r"\1* \2 = reinterpret_cast<\1*>(::emu::dynamic_smem());", text)
    text = re.sub(r"([\w:]+(?:<[^<>;]*>)?)<<<(.+?)>>>\((.*?)\);", r"::emu::launch(\1, \2, \3);", text)
    assert "<<<" not in text and "extern __shared__" not in text
    return text


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed")
    out = tmp_path_factory.mktemp("cuda-emu")
    src_dir = REPO / "plugins" / "causal_linear_attention"
    for name in ["causal_linear_attention.h", "cla_common.cuh"] + SOURCES:
        (out / name).write_text(to_emulator_source((src_dir / name).read_text()))
    lib = out / "liblinexport_kernels_emu.so"
    cmd = ["g++", "-std=c++20", "-O2", "-pthread", "-fPIC", "-shared", "-I", str(HERE / "cuda_emu"), "-I", str(out),
           "-include", "emu.h", "-x", "c++", *[str(out / s) for s in SOURCES], "-o", str(lib)]
    build = subprocess.run(cmd, capture_output=True, text=True)
    if build.returncode != 0 and "barrier" in build.stderr and "No such file" in build.stderr:
        pytest.skip("this g++ has no C++20 <barrier>")
    assert build.returncode == 0, build.stderr[-5000:]
    handle = ctypes.CDLL(str(lib))
    handle.linexport_cla_forward.restype = ctypes.c_int
    handle.linexport_cla_forward.argtypes = [ctypes.POINTER(_Params), ctypes.c_void_p]
    return handle


def run(lib, q, k, v, state=None, lengths=None, present=None, normalize=True):
    """q, k [B, T, H, Dk], v [B, T, H, Dv] CPU tensors (the emulator's "device" memory is host
    memory); the state [B, H, Dk, Dv + 1], or [B, H, Dk, Dv] unnormalised."""
    B, T, H, Dk = q.shape
    Dv = v.shape[-1]
    o = torch.full((B, T, H, Dv), float("nan"), dtype=v.dtype)
    if present is None:
        present = torch.full((B, H, Dk, Dv + (1 if normalize else 0)), float("nan"))
    lengths32 = None if lengths is None else lengths.to(torch.int32).contiguous()
    p = _Params(q=q.data_ptr(), k=k.data_ptr(), v=v.data_ptr(), o=o.data_ptr(),
                past_state=None if state is None else state.data_ptr(), present_state=present.data_ptr(),
                lengths=None if lengths32 is None else lengths32.data_ptr(),
                batch=B, seq_len=T, num_heads=H, head_dim_k=Dk, head_dim_v=Dv, dtype=DTYPE_CODES[q.dtype], eps=EPS,
                normalize=1 if normalize else 0)
    for name, t in (("q", q), ("k", k), ("v", v), ("o", o)):
        for i, d in enumerate("bth"):
            setattr(p, f"{name}_stride_{d}", t.stride(i))
    err = lib.linexport_cla_forward(ctypes.byref(p), None)
    assert err == 0, f"linexport_cla_forward returned {err}"
    return o, present


def inputs(B, T, H, Dk, Dv, dtype, with_state):
    q = feature_map(torch.randn(B, T, H, Dk), "elu").to(dtype)
    k = feature_map(torch.randn(B, T, H, Dk), "elu").to(dtype)
    v = torch.randn(B, T, H, Dv).to(dtype)
    state = None
    if with_state:
        kp = feature_map(torch.randn(B, H, 3, Dk, dtype=torch.float64), "elu")
        v1 = torch.cat([torch.randn(B, H, 3, Dv, dtype=torch.float64), torch.ones(B, H, 3, 1, dtype=torch.float64)], -1)
        state = (kp.transpose(-1, -2) @ v1).float().contiguous()
    return q, k, v, state


def reference(q, k, v, state, lengths=None, normalize=True):
    o, s = naive_causal_linear_attention(*(t.permute(0, 2, 1, 3).double() for t in (q, k, v)), EPS,
                                         None if state is None else state.double(), lengths, normalize)
    return o.permute(0, 2, 1, 3), s


CASES = [  # id, (B, T, H, Dk, Dv), dtype, with_state, lengths
    ("decode-fp32", (2, 1, 2, 64, 64), torch.float32, True, None),
    ("decode-fp16-Dk60-Dv33", (2, 1, 2, 60, 33), torch.float16, True, None),
    ("decode-bf16-Dk256-Dv256", (1, 1, 2, 256, 256), torch.bfloat16, True, None),
    ("decode-bf16-lengths", (3, 1, 2, 32, 32), torch.bfloat16, True, [1, 0, 1]),
    ("recurrent-fp32-T37", (2, 37, 2, 64, 40), torch.float32, True, None),
    ("recurrent-fp32-Dk200-Dv70", (1, 19, 1, 200, 70), torch.float32, False, None),
    ("recurrent-fp32-lengths", (3, 21, 1, 32, 32), torch.float32, True, [21, 0, 5]),
    ("chunked-bf16-C64-T97", (2, 97, 1, 64, 64), torch.bfloat16, True, None),
    ("chunked-fp16-C64-Dk60-Dv40", (1, 70, 2, 60, 40), torch.float16, False, None),
    ("chunked-fp16-C32-Dk96", (1, 45, 1, 96, 32), torch.float16, True, None),
    ("chunked-bf16-C16-Dk256-Dv48", (1, 40, 1, 256, 48), torch.bfloat16, True, None),
    ("chunked-bf16-lengths", (3, 70, 1, 32, 32), torch.bfloat16, True, [70, 0, 33]),
]


@pytest.mark.parametrize("shape, dtype, with_state, lengths", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_emulated_kernels_match_the_reference(emulated, shape, dtype, with_state, lengths):
    q, k, v, state = inputs(*shape, dtype, with_state)
    lengths = None if lengths is None else torch.tensor(lengths)
    o, s = run(emulated, q, k, v, state, lengths)
    o_ref, s_ref = reference(q, k, v, state, lengths)
    assert not torch.isnan(o).any() and not torch.isnan(s).any()
    assert rel_err(s, s_ref) < 1e-5
    assert rel_err(o, o_ref) < TOL[dtype]
    if lengths is not None:
        for b, n in enumerate(lengths.tolist()):
            assert not o[b, n:].any(), f"batch row {b}: output past its length {n} must be zero"
            if n == 0:
                assert torch.equal(s[b], state[b])


def test_emulated_chunked_falls_back_to_a_smaller_chunk_on_small_gpus(emulated, monkeypatch):
    # 48 KiB of shared memory (sm_75-class): Dk = 64 must take the C = 32 configuration.
    monkeypatch.setenv("LINEXPORT_EMU_SMEM", str(48 * 1024))
    q, k, v, state = inputs(1, 50, 1, 64, 32, torch.float16, True)
    o, s = run(emulated, q, k, v, state)
    o_ref, s_ref = reference(q, k, v, state)
    assert rel_err(s, s_ref) < 1e-5 and rel_err(o, o_ref) < TOL[torch.float16]


def test_emulated_bf16_is_refused_below_sm80(emulated, monkeypatch):
    monkeypatch.setenv("LINEXPORT_EMU_CC_MAJOR", "7")
    q, k, v, state = inputs(1, 8, 1, 32, 32, torch.bfloat16, False)
    with pytest.raises(AssertionError, match="returned 801"):  # cudaErrorNotSupported
        run(emulated, q, k, v, state)


def test_emulated_decode_in_place(emulated):
    q, k, v, state = inputs(2, 1, 2, 64, 64, torch.float32, True)
    o_ref, s_ref = reference(q, k, v, state)
    o, s = run(emulated, q, k, v, state, present=state)
    assert s.data_ptr() == state.data_ptr()
    assert rel_err(state, s_ref) < 1e-6 and rel_err(o, o_ref) < TOL[torch.float32]


def test_emulated_prefill_then_decode_equals_longer_prefill(emulated):
    q, k, v, _ = inputs(1, 34, 2, 32, 32, torch.bfloat16, False)
    o_all, s_all = run(emulated, q, k, v)
    _, s_pre = run(emulated, q[:, :33].contiguous(), k[:, :33].contiguous(), v[:, :33].contiguous())
    o_step, s_step = run(emulated, q[:, 33:].contiguous(), k[:, 33:].contiguous(), v[:, 33:].contiguous(), s_pre)
    assert rel_err(s_step, s_all) < 1e-6
    assert rel_err(o_step, o_all[:, 33:]) < TOL[torch.bfloat16]




# A ragged prefill, then a ragged prefill continuing from the state it left. Row 1 adds nothing
# in the first call (it continues from zeros), row 2 nothing in the second (its state must pass
# through bit for bit); row 3 ends the first call mid-chunk and spans chunks in the second.
FIRST, THEN = [7, 0, 40, 19], [30, 25, 0, 45]
CONTINUED = [  # id, (H, Dk, Dv), dtype
    ("recurrent-fp32", (2, 64, 40), torch.float32),
    ("chunked-fp16-C64-Dk60", (1, 60, 40), torch.float16),
    ("chunked-bf16-C32-Dk96", (1, 96, 32), torch.bfloat16),
]


@pytest.mark.parametrize("dims, dtype", [c[1:] for c in CONTINUED], ids=[c[0] for c in CONTINUED])
def test_emulated_continued_prefill_equals_one_shot(emulated, dims, dtype):
    """The second call, from the first call's (non-zero) state, equals the fp64 reference
    continuing from that state and the fp64 reference of one prefill over whole rows (the state
    to 1e-5, outputs at each type's rounding floor). Padding in both calls is real-looking
    tokens, so only ``lengths`` keeps it out."""
    H, Dk, Dv = dims
    first, then = torch.tensor(FIRST), torch.tensor(THEN)
    B, total = len(FIRST), first + then
    q, k, v, _ = inputs(B, int(total.max()), H, Dk, Dv, dtype, False)
    pad = inputs(B, int(then.max()), H, Dk, Dv, dtype, False)[:3]
    second = [p.clone() for p in pad]
    for b in range(B):
        for t, full in zip(second, (q, k, v)):
            t[b, :then[b]] = full[b, first[b]:total[b]]
    head = [t[:, :int(first.max())].contiguous() for t in (q, k, v)]

    _, s1 = run(emulated, *head, None, first)
    o2, s2 = run(emulated, *second, s1, then)
    assert not torch.isnan(o2).any() and not torch.isnan(s2).any()
    assert not s1[1].any(), "a row of length 0 from no past: a zero state"
    assert torch.equal(s2[2], s1[2]), "a row of length 0 passes its state through bit for bit"

    o_cont, s_cont = reference(*second, s1, then)
    o_all, s_all = reference(q, k, v, None, total)
    assert rel_err(s2, s_cont) < 1e-5 and rel_err(s2, s_all) < 1e-5
    valid = [(b, t) for b in range(B) for t in range(int(then[b]))]
    got = torch.stack([o2[b, t] for b, t in valid])
    assert rel_err(got, torch.stack([o_cont[b, t] for b, t in valid])) < TOL[dtype]
    assert rel_err(got, torch.stack([o_all[b, first[b] + t] for b, t in valid])) < TOL[dtype]
    for b, n in enumerate(THEN):
        assert not o2[b, n:].any(), f"batch row {b}: output past its length {n} must be zero"


# The unnormalised form (normalize = 0): state [B, H, Dk, Dv], o = qᵀS, features of either sign
# (identity / learnable maps). Every kernel: decode, fp32 recurrent, fp16/bf16 chunked.
UNNORMALISED = [  # id, (B, T, H, Dk, Dv), dtype, with_state, lengths
    ("decode-fp32", (2, 1, 2, 64, 40), torch.float32, True, None),
    ("decode-fp16-Dk60-Dv33-lengths", (3, 1, 2, 60, 33), torch.float16, True, [1, 0, 1]),
    ("recurrent-fp32-T37", (2, 37, 2, 64, 40), torch.float32, True, None),
    ("recurrent-fp32-Dk200-Dv70-lengths", (3, 19, 1, 200, 70), torch.float32, True, [19, 0, 5]),
    ("chunked-bf16-C64-T97", (2, 97, 1, 64, 64), torch.bfloat16, True, None),
    ("chunked-fp16-C64-Dk60-Dv40", (1, 70, 2, 60, 40), torch.float16, False, None),
    ("chunked-bf16-lengths", (3, 70, 1, 32, 32), torch.bfloat16, True, [70, 0, 33]),
]


def signed_inputs(B, T, H, Dk, Dv, dtype, with_state):
    q, k, v = (0.5 * torch.randn(B, T, H, d) for d in (Dk, Dk, Dv))
    state = torch.randn(B, H, Dk, Dv) if with_state else None
    return q.to(dtype), k.to(dtype), v.to(dtype), state


@pytest.mark.parametrize("shape, dtype, with_state, lengths", [c[1:] for c in UNNORMALISED],
                         ids=[c[0] for c in UNNORMALISED])
def test_emulated_unnormalised_kernels_match_the_reference(emulated, shape, dtype, with_state, lengths):
    q, k, v, state = signed_inputs(*shape, dtype, with_state)
    lengths = None if lengths is None else torch.tensor(lengths)
    o, s = run(emulated, q, k, v, state, lengths, normalize=False)
    o_ref, s_ref = reference(q, k, v, state, lengths, normalize=False)
    assert s.shape == s_ref.shape == (shape[0], shape[2], shape[3], shape[4])
    assert not torch.isnan(o).any() and not torch.isnan(s).any()
    assert rel_err(s, s_ref) < 1e-5
    assert rel_err(o, o_ref) < TOL[dtype]
    # The normalised reference is far away: the kernels did not divide.
    assert rel_err(o, reference(q, k, v, None if state is None else torch.cat(
        [state, torch.ones(*state.shape[:3], 1)], -1), lengths)[0]) > 0.1
    if lengths is not None:
        for b, n in enumerate(lengths.tolist()):
            assert not o[b, n:].any(), f"batch row {b}: output past its length {n} must be zero"
            if n == 0:
                assert torch.equal(s[b], state[b])


def test_emulated_unnormalised_prefill_then_decode_equals_longer_prefill(emulated):
    q, k, v, _ = signed_inputs(1, 34, 2, 32, 32, torch.float16, False)
    o_all, s_all = run(emulated, q, k, v, normalize=False)
    _, s_pre = run(emulated, q[:, :33].contiguous(), k[:, :33].contiguous(), v[:, :33].contiguous(), normalize=False)
    o_step, s_step = run(emulated, q[:, 33:].contiguous(), k[:, 33:].contiguous(), v[:, 33:].contiguous(), s_pre,
                         normalize=False)
    assert rel_err(s_step, s_all) < 1e-6
    assert rel_err(o_step, o_all[:, 33:]) < TOL[torch.float16]


def test_emulated_kernels_refuse_a_bad_normalize(emulated):
    q, k, v, state = inputs(1, 1, 1, 8, 8, torch.float32, True)
    with pytest.raises(AssertionError, match="returned 1"):  # cudaErrorInvalidValue
        run_with_normalize(emulated, q, k, v, state, 2)


def run_with_normalize(lib, q, k, v, state, value):
    B, T, H, Dk = q.shape
    Dv = v.shape[-1]
    o, present = torch.empty(B, T, H, Dv), torch.empty(B, H, Dk, Dv + 1)
    p = _Params(q=q.data_ptr(), k=k.data_ptr(), v=v.data_ptr(), o=o.data_ptr(), past_state=state.data_ptr(),
                present_state=present.data_ptr(), batch=B, seq_len=T, num_heads=H, head_dim_k=Dk, head_dim_v=Dv,
                dtype=DTYPE_CODES[q.dtype], eps=EPS, normalize=value)
    for name, t in (("q", q), ("k", k), ("v", v), ("o", o)):
        for i, d in enumerate("bth"):
            setattr(p, f"{name}_stride_{d}", t.stride(i))
    err = lib.linexport_cla_forward(ctypes.byref(p), None)
    assert err == 0, f"linexport_cla_forward returned {err}"
