"""ONNX Runtime prefill time and peak memory against sequence length (not a test).

A linear-attention LM with random weights (default: 12 layers, d 768, 12 heads of 64) is
exported as linexport's prefill graph — ``function`` lowering (chunked standard ops) and
``standard`` lowering (ONNX Runtime's own LinearAttention kernel) — and, in the same run, as a
naive masked-quadratic export of the same model (A = tril(φ(q) φ(k)ᵀ), o = A v / rowsum(A)).
Each (graph, seq) runs in a fresh process on CPU; printed are the best of ``--repeats`` wall
times and the peak resident memory the run added on top of the loaded session, each also as a
ratio to the first sequence length. Linear scaling means ratio == seq / seq[0]; the target is
at most 1.15x that (seq 16384 at most 18.4x seq 1024).

    python benchmarks/prefill_scaling.py                       # the full size (slow on 2 cores)
    python benchmarks/prefill_scaling.py --layers 2 --seqs 1024 2048 8192 16384
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET = 1.15


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--d-model", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--seqs", type=int, nargs="+", default=[1024, 2048, 8192, 16384])
    parser.add_argument("--graphs", nargs="+", default=["function", "standard", "quadratic"],
                        choices=["function", "standard", "quadratic"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--memory-fraction", type=float, default=0.6,
                        help="skip the quadratic graph where its estimated peak exceeds this share "
                             "of the memory available now")
    parser.add_argument("--child", nargs=3, metavar=("GRAPH", "SEQ", "REPEATS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child(Path(args.child[0]), int(args.child[1]), int(args.child[2]))

    with tempfile.TemporaryDirectory(prefix="linexport-bench-") as tmp:
        graphs = _export(Path(tmp), args)
        print(f"\nONNX Runtime CPU prefill, batch 1, {args.layers} layers, d {args.d_model}, "
              f"{args.heads} heads; best of {args.repeats}")
        for name, path in graphs.items():
            rows = []
            for seq in args.seqs:
                # measured: the quadratic graph peaks at ~6 fp32 [H, T, T] tensors (17.7 GiB at
                # T = 8192, 12 heads)
                need = 6 * args.heads * seq * seq * 4
                if name == "quadratic" and need > args.memory_fraction * _meminfo("MemAvailable"):
                    rows.append((seq, None, None, f"skipped: needs ~{need / 2**30:.0f} GiB of T x T "
                                                  f"scores, {_meminfo('MemAvailable') / 2**30:.0f} GiB available"))
                    continue
                result = subprocess.run([sys.executable, __file__, "--child", str(path), str(seq),
                                         str(args.repeats)], capture_output=True, text=True)
                if result.returncode != 0:
                    rows.append((seq, None, None, f"failed: {result.stderr.strip().splitlines()[-1:]}"))
                    continue
                m = json.loads(result.stdout.strip().splitlines()[-1])
                rows.append((seq, m["seconds"], m["peak_bytes"], ""))
            _print(name, rows)


def _export(tmp: Path, args) -> dict:
    """Exports the prefill graphs; returns {name: path}."""
    import torch

    from linexport.export.exporter import export_checkpoint
    from linexport.models.checkpoint import save_checkpoint
    from linexport.models.linear import LinearConfig, LinearLM

    torch.manual_seed(0)
    head_dim = args.d_model // args.heads
    model = LinearLM(LinearConfig(vocab_size=256, d_model=args.d_model, n_layers=args.layers,
                                  n_heads=args.heads, head_dim=head_dim, d_ff=4 * args.d_model)).eval()
    save_checkpoint(model, tmp / "model.pt")
    graphs = {}
    for name in args.graphs:
        start = time.perf_counter()
        if name == "quadratic":
            graphs[name] = _export_quadratic(model, tmp / "quadratic.onnx")
        else:
            export_checkpoint(tmp / "model.pt", tmp / name, lowering=name)
            graphs[name] = tmp / name / "prefill.onnx"
        print(f"exported {name} in {time.perf_counter() - start:.0f}s", file=sys.stderr)
    return graphs


def _export_quadratic(model, path: Path) -> Path:
    """The same model with attention as masked T x T products, traced by torch.onnx."""
    import copy

    import onnx
    import torch

    from linexport.contract import graph_io
    from linexport.export.graphs import PrefillGraph, quiet_exporter
    from linexport.models.linear import LinearAttention

    class QuadraticAttention(LinearAttention):
        """LinearAttention's parameters and φ, its attention as masked T x T products."""

        def forward(self, x, mask, cos, sin, state=None):  # x [B, T, C], mask [B, T]; fresh only
            q, k, v = self._qkv(x, cos, sin)  # [B, H, T, D]
            k = k * mask[:, None, :, None].to(k.dtype)
            B, H, T, D = v.shape
            causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
            scores = (q @ k.transpose(-1, -2)).masked_fill(~causal, 0.0)  # [B, H, T, T]
            o = (scores @ v) / (scores.sum(-1, keepdim=True) + self.config.eps)
            v1 = torch.cat([v, torch.ones_like(v[..., :1])], -1)
            state = k.transpose(-1, -2) @ v1  # the state, so the graph's outputs match
            return self.out(o.transpose(1, 2).reshape(B, T, H * D)), {"kv": state}

    model = copy.deepcopy(model)
    for block in model.blocks:
        block.attn.__class__ = QuadraticAttention  # same module, same weights, other forward
    names = graph_io.io_names([s.name for s in model.state_specs()], continues=False)["prefill"]
    dyn = torch.export.Dim.DYNAMIC
    ids, lengths = torch.randint(0, 256, (2, 5)), torch.tensor([5, 3])
    with torch.no_grad(), quiet_exporter():
        program = torch.onnx.export(PrefillGraph(model, False), (ids, lengths), dynamo=True,
                                    dynamic_shapes=({0: dyn, 1: dyn}, {0: dyn}), verbose=False,
                                    input_names=names["inputs"], output_names=names["outputs"])
    onnx.save(program.model_proto, str(path))
    return path


def _child(path: Path, seq: int, repeats: int):
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    from linexport.export.ort_session import prefill_feed

    feed = prefill_feed(session, np.random.default_rng(0).integers(0, 256, (1, seq), dtype=np.int64),
                        np.array([seq], np.int64))
    before = _rss("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak resident size
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feed)
        best = min(best, time.perf_counter() - start)
    print(json.dumps({"seconds": best, "peak_bytes": _rss("VmHWM") - before}))


def _rss(field: str) -> int:
    return _proc_kib("/proc/self/status", field)


def _meminfo(field: str) -> int:
    return _proc_kib("/proc/meminfo", field)


def _proc_kib(path: str, field: str) -> int:
    for line in Path(path).read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in {path}")


def _print(name: str, rows: list):
    print(f"\n{name}")
    print(f"{'seq':>7} {'seconds':>9} {'x time':>8} {'peak MiB':>9} {'x memory':>9} {'linear x':>9}  verdict")
    base = next(((s, t, m) for s, t, m, _ in rows if t is not None), None)
    for seq, seconds, peak, note in rows:
        if seconds is None:
            print(f"{seq:>7}  {note}")
            continue
        linear = seq / base[0]
        rt, rm = seconds / base[1], peak / max(base[2], 1)
        ok = rt <= TARGET * linear and rm <= TARGET * linear
        print(f"{seq:>7} {seconds:9.3f} {rt:8.2f} {peak / 2**20:9.1f} {rm:9.2f} {linear:9.1f}  "
              f"{'within' if ok else 'OVER'} {TARGET}x linear")


if __name__ == "__main__":
    main()
