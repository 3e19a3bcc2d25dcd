"""Decode latency of the linear model against the softmax baseline of the same size, on ONNX
Runtime through the runtime's backends, vs context length: "how much faster than what I run now?"

Both models get the same sizes (parameter for parameter) and random weights; each is exported
with `linexport onnx` defaults and stepped through ``create_backend`` exactly as `linexport
generate` would. Prints ratios measured in one run (these machines are noisy).

    python benchmarks/baselines.py                          # 4 layers, d 256, 4 heads
    python benchmarks/baselines.py --layers 12 --d-model 768 --heads 12 --contexts 256,4096
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from linexport.export.exporter import export_checkpoint
from linexport.models import build_model
from linexport.models.checkpoint import save_checkpoint
from linexport.runtime.backends import create_backend
from linexport.runtime.manifest import read_manifest


ARCHS = ("linear", "softmax")


def median_ms(fn, steps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def decode_ms(out: Path, batch: int, ctx: int, steps: int) -> float:
    """ms per decode step for ``batch`` rows that each hold ``ctx`` tokens of context."""
    backend = create_backend("ort", read_manifest(out), batch)
    prompt = np.random.default_rng(ctx).integers(0, 256, (1, ctx))
    backend.prefill(prompt, np.array([ctx], np.int64), [0])
    for slot in range(1, batch):
        backend.copy_slot(0, slot)
    ids, pos = np.full(batch, 65, np.int64), np.full(batch, ctx, np.int64)
    # Every call decodes at the same position: the KV cache is overwritten, not grown, so each
    # timed step sees exactly `ctx` tokens of context.
    return median_ms(lambda: backend.decode(ids, pos), steps)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--contexts", default="64,512,2048,8192")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20, help="decode steps timed per point")
    args = ap.parse_args()
    contexts = [int(c) for c in args.contexts.split(",")]
    sizes = dict(vocab_size=256, d_model=args.d_model, n_layers=args.layers, n_heads=args.heads,
                 head_dim=args.d_model // args.heads, d_ff=4 * args.d_model)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ARCHS:
            torch.manual_seed(0)
            model = build_model(arch, sizes).eval()
            params = sum(p.numel() for p in model.parameters())
            ckpt, out = Path(tmp) / f"{arch}.pt", Path(tmp) / arch
            save_checkpoint(model, ckpt)
            print(f"{arch}: {args.layers} layers, d {args.d_model}, {args.heads} heads, "
                  f"{params / 1e6:.2f}M parameters; exporting ...", flush=True)
            export_checkpoint(ckpt, out)
            for ctx in contexts:
                results[arch, ctx] = decode_ms(out, args.batch, ctx, args.steps)
                print(f"  batch {args.batch}  context {ctx:6d}  {results[arch, ctx]:8.2f} ms/token", flush=True)

    print("\nratios (same run): softmax ms/token / linear ms/token")
    for ctx in contexts:
        print(f"  context {ctx:6d}: {results['softmax', ctx] / results['linear', ctx]:.2f}x")


if __name__ == "__main__":
    main()
