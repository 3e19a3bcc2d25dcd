"""GPU harness: the CUDA kernels against the fp64 reference, across shapes and dtypes.

Prints one line per case: the kernel's max relative error against the fp64 oracle, next to
PyTorch's own low-precision error for the same formula (the ratio is what the tests bound by 2).
Needs a CUDA GPU, torch with CUDA, and the kernels library (LINEXPORT_KERNELS_LIB or build/lib):

    cmake -S . -B build -DCMAKE_CUDA_ARCHITECTURES=90 && cmake --build build -j
    python benchmarks/kernels/check_causal_linear_attention.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for tests.plugins

from linexport.plugins import CausalLinearAttentionKernels  # noqa: E402
from tests.conftest import rel_err  # noqa: E402
from tests.plugins.test_kernels_gpu import EPS, lowp_chunk, make_inputs, reference  # noqa: E402

CASES = [(B, T, H, D) for T in (1, 63, 97, 1025, 8192) for (B, H) in [(2, 2)] for D in (32, 64, 96, 128, 256)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lib", help="path of liblinexport_kernels.so (default: found by linexport.plugins)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU: nothing to check")
        return 1
    torch.manual_seed(0)
    kernels = CausalLinearAttentionKernels(args.lib)
    print(f"device: {torch.cuda.get_device_name()}  library: {kernels.path}")
    print(f"{'dtype':>6} {'B':>2} {'T':>5} {'H':>2} {'D':>4}  {'out err':>9} {'torch lowp':>10} {'state err':>9}")
    worst = 0.0
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        if dtype == torch.bfloat16 and torch.cuda.get_device_capability() < (8, 0):
            continue
        for B, T, H, D in CASES:
            q, k, v, state = make_inputs(B, T, H, D, D, dtype, with_state=True)
            o, s = kernels.forward(q, k, v, state, eps=EPS)
            torch.cuda.synchronize()
            o_ref, s_ref = reference(q, k, v, state)
            o_err, s_err = rel_err(o, o_ref), rel_err(s, s_ref)
            if dtype == torch.float32:
                lowp = float("nan")
            else:
                lowp = rel_err(lowp_chunk(*(t.permute(0, 2, 1, 3) for t in (q, k, v)), state).permute(0, 2, 1, 3), o_ref)
                worst = max(worst, o_err / max(lowp, 1e-12))
            print(f"{str(dtype)[6:]:>6} {B:>2} {T:>5} {H:>2} {D:>4}  {o_err:9.2e} {lowp:10.2e} {s_err:9.2e}")
    print(f"worst low-precision ratio (kernel err / torch lowp err): {worst:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
