"""Quantized exports: quality on the demo models, speed and size at a real width, in one run.

Quality (the bundled demo models, `linear` and `flash`, through ONNX Runtime): nats per byte on
the demo corpus' validation split (models/train.py, windows of 256 predicted bytes, through the
export's own prefill graph exported with --full-logits) for fp32, fp16, int8 and int4 (and int4
at block sizes 32 / 64 / 128, and with int8 compute), the loss relative to fp32; and greedy
decoding through linexport's runtime (`Generator`) from validation-text prompts, 512 tokens each:
the share of positions where the tokens equal fp32's, and how many tokens agree before the first
difference.

Speed (random weights, `linear`, 4 layers d 384 — the size of onnxruntime-genai's Llama in
benchmarks/genai_peer.py — and with --big 12 layers d 768; batch 1, CPU ONNX Runtime, the same
thread count everywhere, timed rounds interleaved across the exports, medians): decode ms/token
at contexts 64 and 4,096, prefill tokens/s of a 1,024-token prompt, the export's size on disk.
Then the targets as ratios from this run: int8 >= 2x and int4 >= 3x faster decode than fp32,
int4 file <= 20 % of fp32's, int4 prefill no more than 20 % slower than fp32's, int8 loss
<= +1 % and int4 <= +5 % (relative).

    python benchmarks/quantization.py            # writes benchmarks/results/quantization.json
    python benchmarks/quantization.py --no-big --windows 16 --tokens 128   # a quick look
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
import torch

from linexport.cli.common import demo_checkpoint
from linexport.export.exporter import export_checkpoint, quantize_export
from linexport.export.ort_session import OrtGraphs
from linexport.export.quantize import QuantOptions
from linexport.files import atomic_write
from linexport.models import build_model
from linexport.models.checkpoint import save_checkpoint
from linexport.models.train import corpus_split
from linexport.runtime import Generator, Model, SamplingParams
from linexport.runtime.backends import create_backend
from linexport.runtime.benchmark import machine_info, versions
from linexport.runtime.export_dir import read_manifest

sys.path.insert(0, str(Path(__file__).parent))
from decode_speed import Point  # noqa: E402 - one timed decode loop for every benchmark
from papers import configs  # noqa: E402

INT8_LOSS, INT4_LOSS, INT8_SPEED, INT4_SPEED, INT4_SIZE, INT4_PREFILL = 0.01, 0.05, 2.0, 3.0, 0.20, 1.2
WINDOW = 256
QUALITY = {  # name -> (dtype, QuantOptions or None)
    "fp32": ("fp32", None), "fp16": ("fp16", None),
    "int8": ("fp32", QuantOptions("int8")),
    "int4": ("fp32", QuantOptions("int4")),
    "int4 b64": ("fp32", QuantOptions("int4", block_size=64)),
    "int4 b128": ("fp32", QuantOptions("int4", block_size=128)),
    "int4 int8-compute": ("fp32", QuantOptions("int4", accuracy_level=4)),
    "int4 QDQ b128": ("fp32", QuantOptions("int4", "QDQ")),
}
SPEED = {"fp32": None, "int8": QuantOptions("int8"), "int4": QuantOptions("int4"),
         "int4 int8-compute": QuantOptions("int4", accuracy_level=4),
         # the int8 forms not chosen (README, "Quantized exports"): float compute, and dynamic
         # int8 (onnxruntime.quantization.quantize_dynamic, one activation scale per tensor)
         "int8 float-compute": QuantOptions("int8", accuracy_level=0), "int8 dynamic": "dynamic"}


def size_on_disk(out: Path) -> int:
    return sum(f.stat().st_size for f in out.iterdir() if f.is_file())


def nats_per_byte(out: Path, data: torch.Tensor, windows: int, threads: int) -> float:
    graphs = OrtGraphs(out, threads=threads)
    total = 0.0
    for start in range(0, windows, 8):
        idx = [i * WINDOW for i in range(start, min(start + 8, windows))]
        x = np.stack([data[i:i + WINDOW + 1].numpy() for i in idx])
        logits, _ = graphs.prefill(x[:, :-1], np.full(len(idx), WINDOW, np.int64))
        logits = logits.astype(np.float64)
        logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
        picked = np.take_along_axis(logits, x[:, 1:, None], -1)[..., 0]
        total += float((logz - picked).sum())
    return total / (windows * WINDOW)


def greedy(out: Path, prompts: list[bytes], tokens: int) -> list[list[int]]:
    gen = Generator(Model(out, num_slots=len(prompts)))
    seqs = gen.add_many([list(p) for p in prompts], SamplingParams(max_new_tokens=tokens))
    while not gen.is_done():
        gen.step()
    return [s.generated for s in seqs]


def quality(root: Path, data: torch.Tensor, windows: int, tokens: int, threads: int) -> list[dict]:
    rows = []
    prompts = [bytes(data[i:i + 64].to(torch.uint8).tolist()) for i in (0, 40_000, 80_000, 120_000)]
    for arch in ("linear", "flash"):
        floats = {}
        ref_tokens = None
        for name, (dtype, options) in QUALITY.items():
            out = root / f"{arch}-{name.replace(' ', '-')}"
            if options is None:
                export_checkpoint(demo_checkpoint(arch), out, dtype=dtype, full_logits=True)
                floats[dtype] = out
            else:
                quantize_export(floats[dtype], out, options)
            loss = nats_per_byte(out, data, windows, threads)
            generated = greedy(out, prompts, tokens)
            if ref_tokens is None:
                ref_tokens = generated
            same = [np.mean([a == b for a, b in zip(g, r)]) for g, r in zip(generated, ref_tokens)]
            prefix = [next((i for i, (a, b) in enumerate(zip(g, r)) if a != b), len(r))
                      for g, r in zip(generated, ref_tokens)]
            rows.append({"arch": arch, "export": name, "nats_per_byte": loss, "size_bytes": size_on_disk(out),
                         "greedy_same_share": float(np.mean(same)), "greedy_agree_prefix": prefix})
            base = next(r["nats_per_byte"] for r in rows if r["arch"] == arch and r["export"] == "fp32")
            rows[-1]["loss_vs_fp32"] = loss / base - 1
            print(f"{arch:6s} {name:18s} {loss:.4f} nats/byte ({100 * rows[-1]['loss_vs_fp32']:+.2f} %), "
                  f"greedy {100 * rows[-1]['greedy_same_share']:.1f} % same as fp32 over {tokens} tokens "
                  f"(agree for {prefix}), {rows[-1]['size_bytes'] / 2**20:.1f} MiB", flush=True)
    return rows


def prefill_tokens_per_s(out: Path, threads: int, tokens: int = 1024, repeats: int = 3) -> float:
    backend = create_backend("ort", read_manifest(out, verify_hashes=False), 1, threads=threads)
    ids = np.random.default_rng(0).integers(0, 256, (1, tokens))
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        backend.prefill(ids, np.array([tokens]), [0])
        times.append(time.perf_counter() - start)
    backend.close()
    return tokens / float(np.median(times[1:]))


def dynamic_int8(src: Path, out: Path):
    """A copy of ``src`` with onnxruntime's dynamic int8 MatMuls in both graphs (for timing only:
    its manifest's hashes no longer match, the benchmark opens it without checking them)."""
    import shutil

    from onnxruntime.quantization import QuantType, quantize_dynamic

    shutil.copytree(src, out)
    for graph in ("prefill", "decode"):
        quantize_dynamic(src / f"{graph}.onnx", out / f"{graph}.onnx", weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul"])


def speed(root: Path, layers: int, width: int, heads: int, threads: int, steps: int, rounds: int) -> list[dict]:
    config = configs(layers, width, heads)["linear"]
    torch.manual_seed(0)
    model = build_model("linear", config).eval()
    ckpt = root / f"speed-{layers}l.pt"
    save_checkpoint(model, ckpt)
    outs = {}
    for name, options in SPEED.items():
        out = root / f"speed-{layers}l-{name.replace(' ', '-')}"
        if options is None:
            export_checkpoint(ckpt, out)
        elif options == "dynamic":
            dynamic_int8(outs["fp32"], out)
        else:
            quantize_export(outs["fp32"], out, options)
        outs[name] = out
    rows = []
    for context in (64, 4096):
        points = {name: Point(out, 1, context, threads, config["vocab_size"]) for name, out in outs.items()}
        for _ in range(rounds):
            for point in points.values():
                point.run(steps, warmup=3)
        for name, point in points.items():
            rows.append({"model": f"linear {layers}L d{width}", "parameters": sum(p.numel() for p in model.parameters()),
                         "export": name, "context": context, "decode_ms": point.ms(), "size_bytes": size_on_disk(outs[name])})
            point.backend.close()
    for name, out in outs.items():
        rate = prefill_tokens_per_s(out, threads)
        for row in rows:
            if row["export"] == name and row["model"] == f"linear {layers}L d{width}":
                row["prefill_tokens_per_s"] = rate
    for row in rows:
        print(f"{row['model']} {row['export']:18s} context {row['context']:5d}: {row['decode_ms']:6.2f} ms/token, "
              f"prefill {row['prefill_tokens_per_s']:8.0f} tokens/s, {row['size_bytes'] / 2**20:6.1f} MiB", flush=True)
    return rows


def checks(result: dict) -> list[dict]:
    out = []

    def check(name, value, target, ok):
        out.append({"name": name, "value": value, "target": target, "met": bool(ok)})
        print(f"target: {name}: {value:.3f} (target {target}) {'met' if ok else 'NOT met'}")

    for arch in ("linear", "flash"):
        q = {r["export"]: r for r in result["quality"] if r["arch"] == arch}
        check(f"{arch} int8 loss vs fp32 (relative)", q["int8"]["loss_vs_fp32"], f"<= +{INT8_LOSS}",
              q["int8"]["loss_vs_fp32"] <= INT8_LOSS)
        check(f"{arch} int4 (block 32) loss vs fp32 (relative)", q["int4"]["loss_vs_fp32"], f"<= +{INT4_LOSS}",
              q["int4"]["loss_vs_fp32"] <= INT4_LOSS)
    for model in sorted({r["model"] for r in result["speed"]}):
        s = {(r["export"], r["context"]): r for r in result["speed"] if r["model"] == model}
        fp32 = s[("fp32", 64)]
        for name, target in (("int8", INT8_SPEED), ("int4", INT4_SPEED), ("int4 int8-compute", INT4_SPEED)):
            ratio = fp32["decode_ms"] / s[(name, 64)]["decode_ms"]
            check(f"{model}: fp32 / {name} decode ms/token, context 64", ratio, f">= {target}", ratio >= target)
        share = s[("int4", 64)]["size_bytes"] / fp32["size_bytes"]
        check(f"{model}: int4 export size / fp32's", share, f"<= {INT4_SIZE}", share <= INT4_SIZE)
        slower = fp32["prefill_tokens_per_s"] / s[("int4", 64)]["prefill_tokens_per_s"]
        check(f"{model}: int4 prefill time / fp32's (1,024 tokens)", slower, f"<= {INT4_PREFILL}", slower <= INT4_PREFILL)
        flat = s[("int4", 4096)]["decode_ms"] / s[("int4", 64)]["decode_ms"]
        check(f"{model}: int4 decode at context 4,096 / at 64", flat, "~1 (flat)", flat <= 1.2)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--windows", type=int, default=64, help="validation windows of 256 bytes per export")
    ap.add_argument("--tokens", type=int, default=512, help="greedy tokens per prompt")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--big", action=argparse.BooleanOptionalAction, default=True, help="also 12 layers d 768")
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "quantization.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result = {"settings": {k: v for k, v in vars(args).items() if k != "json"}, "machine": machine_info(),
              "versions": versions("ort"), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _, val = corpus_split()
    with tempfile.TemporaryDirectory(prefix="linexport-quantization-") as tmp:
        root = Path(tmp)
        result["quality"] = quality(root, val, args.windows, args.tokens, args.threads)
        result["speed"] = speed(root, 4, 384, 6, args.threads, args.steps, args.rounds)
        if args.big:
            result["speed"] += speed(root, 12, 768, 12, args.threads, args.steps, args.rounds)
    print()
    result["checks"] = checks(result)
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1) + "\n"))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
