"""Per-token decode latency on ONNX Runtime vs context length, and vs PyTorch eager stepping.

The point of a fixed-size state: the cost of a decode step must not grow with the context.
Prints ratios measured in one run (these machines are noisy; compare within a run only).

    python benchmarks/decode.py                       # 12-layer d768 12-head, random weights
    python benchmarks/decode.py --layers 4 --d-model 256 --contexts 64,1024,4096
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from linexport.export.exporter import export_checkpoint
from linexport.models.checkpoint import save_checkpoint
from linexport.models.linear import LinearConfig, LinearLM
from linexport.runtime.backends.ort import OrtBackend


def median_ms(fn, steps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--contexts", default="64,256,1024,4096,16384")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--steps", type=int, default=20, help="decode steps timed per point")
    ap.add_argument("--threads", type=int, default=0, help="0: ONNX Runtime's and torch's defaults")
    args = ap.parse_args()
    contexts = [int(c) for c in args.contexts.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    cfg = LinearConfig(vocab_size=256, d_model=args.d_model, n_layers=args.layers, n_heads=args.heads,
                       head_dim=args.d_model // args.heads, d_ff=4 * args.d_model)
    model = LinearLM(cfg).eval()
    params = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "model.pt"
        save_checkpoint(model, ckpt)
        print(f"model: linear, {args.layers} layers, d {args.d_model}, {args.heads} heads, "
              f"{params / 1e6:.1f}M parameters; exporting ...", flush=True)
        export_checkpoint(ckpt, Path(tmp) / "out")
        rows = []
        for batch in batches:
            backend = OrtBackend(Path(tmp) / "out" / "prefill.onnx", Path(tmp) / "out" / "decode.onnx",
                                 batch, threads=args.threads)
            ids = np.full(batch, 65, np.int64)
            for ctx in contexts:
                # Prefill one sequence and copy its state into every slot: a batch-16 prefill of
                # 16384 tokens each would need far more memory than the decode being measured.
                prompt = np.random.default_rng(ctx).integers(0, 256, (1, ctx))
                backend.prefill(prompt, np.array([ctx], np.int64), [0])
                for slot in range(1, batch):
                    backend.copy_slot(0, slot)
                pos = np.full(batch, ctx, np.int64)
                ort_ms = median_ms(lambda: backend.decode(ids, pos), args.steps)

                with torch.no_grad():
                    _, state = model.prefill(torch.from_numpy(prompt))
                    state = {k: v.expand(batch, *v.shape[1:]).contiguous() for k, v in state.items()}
                    tids, tpos = torch.from_numpy(ids), torch.from_numpy(pos)
                    torch_ms = median_ms(lambda: model.step(tids, tpos, state), args.steps)
                rows.append((batch, ctx, ort_ms, torch_ms))
                print(f"batch {batch:3d}  context {ctx:6d}  onnxruntime {ort_ms:8.2f} ms/token   "
                      f"pytorch eager {torch_ms:8.2f} ms/token", flush=True)

    print("\nratios (same run):")
    for batch in batches:
        mine = [r for r in rows if r[0] == batch]
        base = mine[0]
        for b, ctx, ort_ms, torch_ms in mine:
            print(f"batch {b:3d}  context {ctx:6d}: latency / latency@{base[1]} = {ort_ms / base[2]:.3f}   "
                  f"pytorch / onnxruntime = {torch_ms / ort_ms:.2f}x")
    longest = [r for r in rows if r[1] == contexts[-1]]
    for b, ctx, ort_ms, _ in longest:
        first = next(r for r in rows if r[0] == b)
        verdict = "met" if ort_ms <= 1.05 * first[2] else "NOT met"
        print(f"target: batch {b} latency at {ctx} within 5% of {first[1]}: {ort_ms / first[2]:.3f} ({verdict})")
    b1 = [r for r in rows if r[0] == 1]
    if b1:
        speedup = min(r[3] / r[2] for r in b1)
        print(f"target: onnxruntime >= 2x pytorch eager at batch 1: min {speedup:.2f}x "
              f"({'met' if speedup >= 2 else 'NOT met'})")


if __name__ == "__main__":
    main()
