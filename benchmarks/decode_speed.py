"""Decode speed on CPU against what a step must move, every target a ratio from this one run.

Models (random weights, fp32, ONNX Runtime's CPU provider through linexport's runtime, the
same intra-op thread count everywhere): `linear` with 4 layers, d 384, 6 heads; `flash` (GAU)
with the same parameters (twice the layers, benchmarks/papers.py's sizes); the softmax
baseline with a KV cache, linear's size. For each: ms/token at contexts 64 / 1,024 / 4,096 and
batch 1 / 16 (timed rounds interleaved across the models, each round after 3 untimed steps,
medians), beside the bytes the step
must move out of place (its weights once, plus its state read and written; a KV cache read)
and the time those bytes take at the machine's read bandwidth, measured with the same number
of threads (benchmarks/bandwidth.py). Then, printed as ratios with their targets:

- GAU / linear ms/token at contexts 64 and 4,096, batch 1 (target <= 2.0);
- batch 16 / batch 1 per-step time (target <= 2.5);
- with --baseline OLD: linear's step against the same model exported by the code before the
  decode-graph work (target >= 1.5x faster; OLD is made at commit 0a6589c, recipe below);
- with --big (default on): 12 layers d 768 linear, the bytes its step moves per second against
  the read bandwidth (target >= 80 %).

    python benchmarks/decode_speed.py                  # writes benchmarks/results/decode-speed.json
    python benchmarks/decode_speed.py --no-big --contexts 64,1024

The baseline recipe (the old code's own export of the same seeded model):

    git worktree add /tmp/old 0a6589c && cd /tmp/old && pip install --no-deps -e . &&
    python -c "import sys, torch; sys.path.insert(0, 'benchmarks'); from papers import configs;
      from linexport.models import build_model; from linexport.models.checkpoint import save_checkpoint;
      from linexport.export.exporter import export_checkpoint; torch.manual_seed(0);
      m = build_model('linear', configs(4, 384, 6)['linear']).eval(); save_checkpoint(m, '/tmp/old.pt');
      export_checkpoint('/tmp/old.pt', '/tmp/old-linear')"
    # back in this checkout (pip install -e . again):
    python benchmarks/decode_speed.py --baseline /tmp/old-linear

The benchmark checks that the baseline is the same model (one decode step's logits agree).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from linexport.export.exporter import export_checkpoint
from linexport.files import atomic_write
from linexport.models import build_model
from linexport.models.checkpoint import save_checkpoint
from linexport.runtime.backends import create_backend
from linexport.runtime.benchmark import machine_info, versions
from linexport.runtime.export_dir import read_manifest

sys.path.insert(0, str(Path(__file__).parent))
from bandwidth import read_bandwidth  # noqa: E402
from papers import configs  # noqa: E402 - the project's one definition of the equal-size models

GAU_TARGET, BATCH_TARGET, BASELINE_TARGET, BANDWIDTH_TARGET = 2.0, 2.5, 1.5, 0.8
ARCHS = ("linear", "flash", "softmax")
WARMUP = 3  # untimed steps at the start of each model's round


def graph_bytes(decode: Path, batch: int) -> int:
    """Bytes of weights one decode step reads: every initializer once, except a table only
    gathered from (an untied embedding), of which it reads one row per sequence."""
    model = onnx.load(str(decode), load_external_data=False)
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node.op_type, i))
    total = 0
    for init in model.graph.initializer:
        size = onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize * int(np.prod(init.dims))
        uses = consumers.get(init.name, [])
        if uses and all(op == "Gather" and i == 0 for op, i in uses) and len(init.dims) == 2:
            size = batch * size // init.dims[0]
        total += size
    return total


def state_bytes(out: Path, batch: int, context: int) -> tuple[int, str]:
    """(bytes, what): a fixed-size state read and written once (out of place), or a KV cache
    read once (its new row written in place)."""
    manifest = read_manifest(out, verify_hashes=False)
    total, kv = 0, False
    for spec in manifest.states:
        dims = [context if d == "past_seq" else 1 if d == "batch" else d for d in spec.shape]
        kv |= "past_seq" in spec.shape
        total += batch * int(np.prod(dims)) * np.dtype(spec.dtype).itemsize
    return (total, "KV cache read") if kv else (2 * total, "state read + written")


def open_backend(out: Path, batch: int, threads: int):
    return create_backend("ort", read_manifest(out, verify_hashes=False), batch, threads=threads)


class Point:
    """One model at one batch and context: a backend whose every slot holds the same prefix."""

    def __init__(self, out: Path, batch: int, context: int, threads: int, vocab: int):
        self.backend = open_backend(out, batch, threads)
        prompt = np.random.default_rng(context).integers(0, vocab, (1, context))
        self.backend.prefill(prompt, np.array([context], np.int64), [0])
        for slot in range(1, batch):
            self.backend.copy_slot(0, slot)
        self.slots = np.arange(batch)
        self.ids = np.full(batch, 7, np.int64)
        self.position = context
        self.times: list[float] = []

    def run(self, steps: int, warmup: int = 0):
        """``warmup`` untimed steps (after another model ran, its weights are out of the caches:
        a sequence decoding alone would not pay that), then ``steps`` timed ones."""
        for step in range(warmup + steps):
            pos = np.full(len(self.slots), self.position, np.int64)
            start = time.perf_counter()
            self.backend.decode(self.slots, self.ids, pos)
            if step >= warmup:
                self.times.append(time.perf_counter() - start)
            self.position += 1

    def ms(self) -> float:
        return 1e3 * float(np.median(self.times))


def export(arch: str, config: dict, root: Path) -> tuple[Path, int]:
    torch.manual_seed(0)
    model = build_model(arch, config).eval()
    ckpt, out = root / f"{arch}.pt", root / arch
    save_checkpoint(model, ckpt)
    export_checkpoint(ckpt, out)
    return out, sum(p.numel() for p in model.parameters())


def measure(outs: dict, contexts, batches, threads: int, steps: int, rounds: int, vocab: int) -> list[dict]:
    """Rows {arch, batch, context, ms, bytes...}; at each (batch, context) the models' timed
    rounds alternate, so that a noisy machine slows all of them alike."""
    rows = []
    for batch in batches:
        for context in contexts:
            points = {arch: Point(out, batch, context, threads, vocab) for arch, out in outs.items()}
            for _ in range(rounds):
                for point in points.values():
                    point.run(steps, warmup=WARMUP)
            for arch, point in points.items():
                weights = graph_bytes(outs[arch] / "decode.onnx", batch)
                state, what = state_bytes(outs[arch], batch, context)
                rows.append({"arch": arch, "batch": batch, "context": context, "ms": point.ms(),
                             "weight_bytes": weights, "state_bytes": state, "state_is": what})
                point.backend.close()
            line = "  ".join(f"{r['arch']} {r['ms']:7.2f}" for r in rows[-len(points):])
            print(f"batch {batch:3d} context {context:5d}: ms/token  {line}", flush=True)
    return rows


def same_model(old: Path, new: Path) -> float:
    """Max |logits| difference of one decode step from a zero state, old export vs new."""
    a, b = open_backend(old, 1, 1), open_backend(new, 1, 1)
    ids, pos = np.array([7]), np.array([0])
    diff = float(np.abs(a.decode([0], ids, pos) - b.decode([0], ids, pos)).max())
    a.close()
    b.close()
    return diff


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contexts", default="64,1024,4096")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                    help="ONNX Runtime intra-op threads, and the bandwidth readers' (default: usable CPUs)")
    ap.add_argument("--steps", type=int, default=30, help="decode steps per timed round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--baseline", type=Path, default=None, help="the old code's export of linear (see above)")
    ap.add_argument("--big", action=argparse.BooleanOptionalAction, default=True,
                    help="also 12 layers d 768 linear against the read bandwidth")
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "decode-speed.json")
    args = ap.parse_args()
    contexts = [int(c) for c in args.contexts.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    torch.set_num_threads(args.threads)

    settings = {k: v for k, v in vars(args).items() if k not in ("json", "baseline")}  # no local paths
    settings["baseline"] = args.baseline is not None
    result = {"settings": settings,
              "machine": machine_info(), "versions": versions("ort"),
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "models": {}, "checks": []}
    print(f"read bandwidth, {args.threads} thread(s) ...", flush=True)
    bw = result["bandwidth"] = read_bandwidth(args.threads)
    print(f"  numpy {bw['numpy_bytes_per_s'] / 1e9:.1f} GB/s, onnxruntime {bw['onnxruntime_bytes_per_s'] / 1e9:.1f} GB/s")
    cfg = configs(4, 384, 6)
    with tempfile.TemporaryDirectory(prefix="linexport-decode-speed-") as tmp:
        outs = {}
        for arch in ARCHS:
            outs[arch], params = export(arch, cfg[arch], Path(tmp))
            result["models"][arch] = {"config": cfg[arch], "parameters": params}
            print(f"{arch}: {params / 1e6:.2f}M parameters", flush=True)
        if args.baseline is not None:
            diff = same_model(args.baseline, outs["linear"])
            if diff > 1e-4:
                raise SystemExit(f"--baseline {args.baseline} is not this linear model (logits differ by {diff})")
            outs["linear-baseline"] = args.baseline
        rows = result["rows"] = measure(outs, contexts, batches, args.threads, args.steps, args.rounds,
                                        cfg["linear"]["vocab_size"])
        if args.big:
            big = configs(12, 768, 12)["linear"]
            out, params = export("linear", big, Path(tmp) / "big")
            result["models"]["linear-12l-d768"] = {"config": big, "parameters": params}
            print(f"linear 12L d768: {params / 1e6:.1f}M parameters", flush=True)
            big_rows = measure({"linear-12l-d768": out}, [64], [1], args.threads, args.steps, args.rounds,
                               big["vocab_size"])
            rows += big_rows
    for row in rows:
        row["floor_ms"] = 1e3 * (row["weight_bytes"] + row["state_bytes"]) / bw["bytes_per_s"]
        row["of_bandwidth"] = row["floor_ms"] / row["ms"]
    report(result, contexts, batches)
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1) + "\n"))
    print(f"wrote {args.json}")


def report(result: dict, contexts, batches):
    rows = result["rows"]
    at = {(r["arch"], r["batch"], r["context"]): r for r in rows}
    print("\nper step: measured ms, and the floor (weights + state bytes at the read bandwidth)")
    for r in rows:
        print(f"  {r['arch']:16s} batch {r['batch']:3d} context {r['context']:5d}: {r['ms']:7.2f} ms; moves "
              f"{(r['weight_bytes'] + r['state_bytes']) / 2**20:7.1f} MiB (weights {r['weight_bytes'] / 2**20:.1f}, "
              f"{r['state_is']} {r['state_bytes'] / 2**20:.1f}) = floor {r['floor_ms']:.2f} ms, "
              f"{100 * r['of_bandwidth']:.0f} % of bandwidth")

    def check(name, value, target, ok):
        result["checks"].append({"name": name, "value": value, "target": target, "met": ok})
        print(f"target: {name}: {value:.2f} (target {target}) {'met' if ok else 'NOT met'}")

    print()
    for context in (c for c in (64, 4096) if c in contexts):
        if 1 in batches:
            gau, lin = at[("flash", 1, context)], at[("linear", 1, context)]
            ratio = gau["ms"] / lin["ms"]
            check(f"GAU / linear ms/token at context {context}, batch 1 (floor ratio "
                  f"{gau['floor_ms'] / lin['floor_ms']:.2f})", ratio, f"<= {GAU_TARGET}", ratio <= GAU_TARGET)
    if 1 in batches and 16 in batches:
        for arch in ("linear", "flash"):
            ratio = at[(arch, 16, contexts[0])]["ms"] / at[(arch, 1, contexts[0])]["ms"]
            check(f"{arch} batch 16 / batch 1 per-step time at context {contexts[0]}", ratio,
                  f"<= {BATCH_TARGET}", ratio <= BATCH_TARGET)
    if ("linear-baseline", 1, contexts[0]) in at:
        for batch in batches:
            ratio = at[("linear-baseline", batch, contexts[0])]["ms"] / at[("linear", batch, contexts[0])]["ms"]
            check(f"linear old graph / new graph ms/token, batch {batch}", ratio, f">= {BASELINE_TARGET}",
                  ratio >= BASELINE_TARGET)
    if ("linear-12l-d768", 1, 64) in at:
        share = at[("linear-12l-d768", 1, 64)]["of_bandwidth"]
        check("linear 12L d768 step: bytes moved per second / read bandwidth", share, f">= {BANDWIDTH_TARGET}",
              share >= BANDWIDTH_TARGET)


if __name__ == "__main__":
    main()
