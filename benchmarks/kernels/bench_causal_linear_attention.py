"""Benchmark the CUDA kernels; prints ratios measured in one run on one GPU.

* decode (T = 1) at batch 64, 12 heads, d 64: the kernel's bandwidth (state read + written, q,
  k, v, o) against the device-to-device copy bandwidth torch measures on the same GPU
  (target: >= 60 %);
* prefill at (B 8, T 1024, H 8, D 64) bfloat16: the kernel's time against
  flash-linear-attention's chunk kernel (``fla.ops.linear_attn.chunk_linear_attn``,
  normalize=True, when installed: pip install flash-linear-attention; target: <= 1.5x) and
  against this repo's chunked PyTorch op.

    python benchmarks/kernels/bench_causal_linear_attention.py
"""

from __future__ import annotations

import argparse
import sys

import torch

from linexport.models.ops.causal_linear_attention import chunk_causal_linear_attention, feature_map
from linexport.plugins import CausalLinearAttentionKernels


def cuda_time(fn, iters: int = 50, warmup: int = 10) -> float:
    """Median seconds per call, by CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


def copy_bandwidth(nbytes: int = 1 << 30) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    t = cuda_time(lambda: dst.copy_(src), iters=20)
    return 2 * nbytes / t  # read + write


def bench_decode(kernels, B=64, H=12, D=64, dtype=torch.float16):
    q = feature_map(torch.randn(B, 1, H, D, device="cuda"), "elu").to(dtype)
    k = feature_map(torch.randn(B, 1, H, D, device="cuda"), "elu").to(dtype)
    v = torch.randn(B, 1, H, D, device="cuda", dtype=dtype)
    past = torch.rand(B, H, D, D + 1, device="cuda")
    present = torch.empty_like(past)
    out = torch.empty_like(v)
    t = cuda_time(lambda: kernels.forward(q, k, v, past, out=out, present_state=present), iters=200)
    nbytes = 2 * past.numel() * 4 + (q.numel() + k.numel() + v.numel() + out.numel()) * q.element_size()
    return t, nbytes / t


def bench_prefill(kernels, B=8, T=1024, H=8, D=64, dtype=torch.bfloat16):
    q = feature_map(torch.randn(B, T, H, D, device="cuda"), "elu").to(dtype)
    k = feature_map(torch.randn(B, T, H, D, device="cuda"), "elu").to(dtype)
    v = torch.randn(B, T, H, D, device="cuda", dtype=dtype)
    out = torch.empty_like(v)
    present = torch.empty(B, H, D, D + 1, device="cuda")
    results = {"linexport kernel": cuda_time(lambda: kernels.forward(q, k, v, None, out=out, present_state=present))}
    qh, kh, vh = (t.transpose(1, 2).contiguous() for t in (q, k, v))
    results["torch chunked op (fp32 inside)"] = cuda_time(lambda: chunk_causal_linear_attention(qh, kh, vh, 1e-6))
    try:
        from fla.ops.linear_attn import chunk_linear_attn
    except ImportError as e:
        print(f"flash-linear-attention not available ({e}): pip install flash-linear-attention")
    else:
        results["fla chunk_linear_attn"] = cuda_time(
            lambda: chunk_linear_attn(q, k, v, scale=1.0, normalize=True, output_final_state=True))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lib", help="path of liblinexport_kernels.so (default: found by linexport.plugins)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU: nothing to benchmark")
        return 1
    kernels = CausalLinearAttentionKernels(args.lib)
    print(f"device: {torch.cuda.get_device_name()}  library: {kernels.path}")

    copy_bw = copy_bandwidth()
    t, bw = bench_decode(kernels)
    print(f"decode B64 H12 D64 fp16: {t * 1e6:.1f} us, {bw / 1e9:.0f} GB/s; "
          f"D2D copy {copy_bw / 1e9:.0f} GB/s; ratio {bw / copy_bw:.2f} (target >= 0.60)")

    results = bench_prefill(kernels)
    base = results["linexport kernel"]
    for name, t in results.items():
        print(f"prefill B8 T1024 H8 D64 bf16, {name}: {t * 1e6:.1f} us ({t / base:.2f}x the kernel's time)")
    if "fla chunk_linear_attn" in results:
        print(f"kernel / fla time: {base / results['fla chunk_linear_attn']:.2f} (target <= 1.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
