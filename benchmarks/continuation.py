"""Continued prefill on CPU: appending to a live sequence and ingesting a long prompt chunk by
chunk, each target a ratio measured in this one run (our machines are shared: compare within a
run only).

Models: ONNX Runtime on CPU, fp32, batch 1, random weights; `linear` with 4 layers, d 384, 6
heads and `flash` (GAU) with about the same parameters (twice the layers, as in
benchmarks/papers.py), the softmax baseline (KV cache) of the linear model's size beside them.
For each of linear and flash:

- append 1,024 tokens to a live 4,096-token sequence: one continued prefill (chunked) against
  1,024 decode steps, from the same state snapshot (`linexport bench --append`'s function):
  target >= 20x faster;
- ingest a 262,144-token prompt, 4,096 tokens per call, against one 8,192-token prefill, each in
  a fresh process (`linexport bench`'s ingest and prefill children): peak resident memory at
  most 1.25x, tokens/s at least 0.85x (within 15 %, slower; faster passes);
- the curve: tokens/s and peak memory against prompt length 8k..262k, with the softmax
  baseline's memory beside it (it takes a prompt in one call) at the lengths whose T x T scores
  fit in memory and that finish within --timeout, skipped beyond.

    python benchmarks/continuation.py            # writes benchmarks/results/continuation-4l-d384.json
    python benchmarks/continuation.py --archs linear --seqs 8192,32768
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from linexport.export.exporter import export_checkpoint
from linexport.models import build_model
from linexport.models.checkpoint import save_checkpoint
from linexport.runtime import Model
from linexport.runtime.benchmark import BenchSettings, ingest_all, machine_info, parse_append, parse_sizes, versions
from linexport.runtime.benchmark_append import APPEND_DOC, measure_append
from linexport.runtime.benchmark_prefill import INGEST_DOC, MEMORY_DOC, measure_prefill
from linexport.runtime.export_dir import read_manifest

sys.path.insert(0, str(Path(__file__).parent))
from papers import configs  # noqa: E402 - the project's one definition of the 4L d384 sizes

APPEND_TARGET, MEMORY_TARGET, SPEED_TARGET = 20.0, 1.25, 0.85
REFERENCE = 8192  # the one-shot prefill the long ingest is held against
MEMORY_FRACTION = 0.6  # softmax: skip where ~6 fp32 [H, T, T] tensors would pass this share of free memory


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=384)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--archs", default="linear,flash", help="fixed-state archs measured against the targets")
    ap.add_argument("--seqs", default="8192,32768,131072,262144", help="ingest prompt lengths (the curve)")
    ap.add_argument("--chunk", type=int, default=4096, help="tokens per continued prefill call")
    ap.add_argument("--append", default="4096:1024", help="CONTEXT:TOKENS")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per point after an untimed one")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per fresh-process measurement")
    ap.add_argument("--json", type=Path, default=None, help="default: benchmarks/results/continuation-<L>l-d<D>.json")
    args = ap.parse_args()
    seqs, (context, tokens) = parse_sizes(args.seqs, "--seqs"), parse_append(args.append)
    settings = BenchSettings(ingest_seqs=seqs, prefill_chunk=args.chunk, repeats=args.repeats,
                             timeout_s=args.timeout, append=(context, tokens))
    json_path = args.json or Path(__file__).parent / "results" / f"continuation-{args.layers}l-d{args.d_model}.json"
    torch.set_num_threads(1)  # only the export uses torch; ORT takes the cores

    result = {"settings": {**vars(args), "reference_prefill": REFERENCE},
              "targets": {"append_speedup_min": APPEND_TARGET, "ingest_memory_ratio_max": MEMORY_TARGET,
                          "ingest_speed_ratio_min": SPEED_TARGET},
              "definitions": {"append": APPEND_DOC, "ingest": INGEST_DOC, "prefill_memory": MEMORY_DOC},
              "machine": machine_info(), "versions": versions("ort"),
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "models": {}, "checks": []}
    cfg = configs(args.layers, args.d_model, args.heads)
    with tempfile.TemporaryDirectory(prefix="linexport-continuation-") as tmp:
        for arch in [*args.archs.split(","), "softmax"]:
            entry = result["models"][arch] = export(arch, cfg[arch], Path(tmp))
            print(f"{arch}: {entry['parameters'] / 1e6:.2f}M parameters"
                  + (f"; PENDING: {entry['pending']}" if entry.get("pending") else ""), flush=True)
            if entry.get("pending"):
                continue
            out = Path(entry.pop("out"))
            if arch == "softmax":
                entry["ingest"] = softmax_curve(out, seqs, args, cfg[arch]["n_heads"])
            else:
                measure_arch(entry, out, settings, args)
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    result["load_average_1m_end"] = machine_info()["load_average_1m"]
    report(result)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {json_path}")


def export(arch: str, config: dict, root: Path) -> dict:
    """{config, parameters, out} or, where this checkout cannot export or run it, {..., pending}."""
    torch.manual_seed(0)
    model = build_model(arch, config).eval()
    entry = {"config": config, "parameters": sum(p.numel() for p in model.parameters())}
    ckpt, out = root / f"{arch}.pt", root / arch
    save_checkpoint(model, ckpt)
    try:
        export_checkpoint(ckpt, out)
    except Exception as e:  # noqa: BLE001 - an arch whose continued prefill is unfinished here
        while e.__cause__ is not None:  # torch.onnx wraps the model's own error
            e = e.__cause__
        return {**entry, "pending": f"export failed: {type(e).__name__}: {_first_line(e)}"}
    return {**entry, "out": str(out)}


def measure_arch(entry: dict, out: Path, settings: BenchSettings, args):
    context, tokens = settings.append
    model = Model(out, num_slots=1, verify_hashes=False, prefill_chunk=settings.prefill_chunk)
    try:
        entry["append"] = measure_append(model.backend, model.vocab_size, context, tokens, settings.prefill_chunk,
                                         settings.repeats)
    except Exception as e:  # noqa: BLE001 - a wrong result (LinexportError) or a graph failing
        entry["pending"] = f"append failed: {type(e).__name__}: {_first_line(e)}"
        print(f"  PENDING: {entry['pending']}", flush=True)
        return
    finally:
        model.close()
    a = entry["append"]
    print(f"  append {tokens} at context {context}: continued {a['continued_seconds']:.3f} s, "
          f"token by token {a['token_by_token_seconds']:.3f} s", flush=True)
    entry["prefill"] = measure_prefill(out, REFERENCE, 1, "ort", "cpu", settings.repeats, settings.timeout_s)
    print(f"  prefill {REFERENCE}: {_rate(entry['prefill'])}", flush=True)
    entry["ingest"] = ingest_all(out, read_manifest(out), settings,
                                 lambda seq: print(f"  ingest {seq} done at {time.strftime('%H:%M:%S')}", flush=True))
    for row in entry["ingest"]:
        print(f"  ingest {row['seq']}: {_rate(row)}", flush=True)


def softmax_curve(out: Path, seqs, args, heads: int) -> list[dict]:
    """One-call prefill memory of the KV-cache baseline (the bench ingest child: it cannot chunk),
    at the lengths whose scores fit in memory; after a skip, longer ones are not run."""
    rows = []
    for seq in seqs:
        need, avail = 6 * heads * seq * seq * 4, _meminfo("MemAvailable")  # measured ~6 fp32 [H, T, T]
        if rows and rows[-1]["status"] != "ok":
            row = {"seq": seq, "status": "skipped", "reason": f"not run: the {rows[-1]['seq']}-token prompt was "
                                                              "already skipped"}
        elif need > MEMORY_FRACTION * avail:
            row = {"seq": seq, "status": "skipped", "reason": f"needs ~{need / 2**30:.0f} GiB of T x T scores, "
                                                              f"{avail / 2**30:.0f} GiB available"}
        else:
            row = measure_prefill(out, seq, 1, "ort", "cpu", args.repeats, args.timeout, chunk=args.chunk)
        rows.append(row)
        print(f"  softmax ingest {seq}: {_rate(row)}", flush=True)
    return rows


def report(result: dict):
    checks = result["checks"]
    print("\ntargets (ratios measured in this run):")
    for arch, e in result["models"].items():
        if arch == "softmax":
            continue
        if e.get("pending"):
            print(f"  {arch}: PENDING ({e['pending']})")
            continue
        a = e["append"]
        checks.append(_check(arch, f"append {a['tokens']} tokens at context {a['context']}: continued prefill "
                                   f"{a['continued_seconds']:.3f} s vs {a['tokens']} decode steps "
                                   f"{a['token_by_token_seconds']:.3f} s", a["speedup"], ">=", APPEND_TARGET))
        longest, ref = e["ingest"][-1], e["prefill"]
        if longest["status"] != "ok" or ref["status"] != "ok":
            why = longest.get("reason") or ref.get("reason")
            checks.append({"arch": arch, "what": f"ingest {longest['seq']} vs prefill {REFERENCE}", "value": None,
                           "pass": False, "reason": why})
            print(f"  {arch}: ingest {longest['seq']} vs prefill {REFERENCE}: FAIL (not measured: {why})")
            continue
        checks.append(_check(arch, f"ingest {longest['seq']} (chunk {longest['chunk']}) peak "
                                   f"{longest['peak_bytes'] / 2**20:.0f} MiB vs one {REFERENCE}-token prefill "
                                   f"{ref['peak_bytes'] / 2**20:.0f} MiB", longest["peak_bytes"] / ref["peak_bytes"],
                             "<=", MEMORY_TARGET))
        checks.append(_check(arch, f"ingest {longest['seq']} {longest['tokens_per_s']:.0f} tokens/s vs one "
                                   f"{REFERENCE}-token prefill {ref['tokens_per_s']:.0f} tokens/s",
                             longest["tokens_per_s"] / ref["tokens_per_s"], ">=", SPEED_TARGET))
    print("\ncurve: ingest tokens/s and peak MiB over the loaded session vs prompt length (x: ratio to the first "
          "length); softmax in one call")
    curves = {arch: e["ingest"] for arch, e in result["models"].items() if "ingest" in e}
    print(f"{'seq':>8}" + "".join(f"  {arch + ' tok/s':>16} {'MiB':>9} {'x mem':>6}" for arch in curves))
    for i, seq in enumerate(parse_sizes(result["settings"]["seqs"], "--seqs") if curves else ()):
        cells = []
        for rows in curves.values():
            row, first = rows[i], next((r for r in rows if r["status"] == "ok"), None)
            if row["status"] != "ok":
                cells.append(f"  {'skipped':>16} {'':>9} {'':>6}")
            else:
                cells.append(f"  {row['tokens_per_s']:16.0f} {row['peak_bytes'] / 2**20:9.1f} "
                             f"{row['peak_bytes'] / first['peak_bytes']:6.2f}")
        print(f"{seq:>8}" + "".join(cells))
    for rows in curves.values():
        for row in rows:
            if row["status"] != "ok":
                print(f"  skipped {row['seq']}: {row['reason']}")


def _check(arch, what, value, op, target) -> dict:
    ok = value >= target if op == ">=" else value <= target
    print(f"  {arch}: {what}: {value:.2f}x (target {op} {target}x): {'PASS' if ok else 'FAIL'}")
    return {"arch": arch, "what": what, "value": value, "target": f"{op} {target}", "pass": ok}


def _rate(row: dict) -> str:
    if row["status"] != "ok":
        return f"skipped ({row['reason']})"
    return f"{row['tokens_per_s']:.0f} tokens/s, peak {row['peak_bytes'] / 2**20:.1f} MiB"


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [""])[0]


def _meminfo(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


if __name__ == "__main__":
    main()
