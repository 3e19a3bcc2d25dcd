"""Two exports' decode graphs side by side: optimized node counts and ms/token, in one run.

Use it to measure a change to the decode graph: export the same checkpoint with the old code
and with the new one, then

    python benchmarks/decode_graphs.py OLD_OUT NEW_OUT --batches 1,16

Both graphs run in this process on ONNX Runtime's CPU provider with the same thread count, the
timed rounds interleaved (A, B, A, B, ...) so that a noisy machine slows both alike; the ratio
is old / new of the medians. The state fed back is each step's own output (a real decode).
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import time
from pathlib import Path

import numpy as np

from linexport.contract.manifest import load_manifest


def optimized_nodes(path: Path, threads: int) -> collections.Counter:
    """Op counts of the graph ONNX Runtime runs after its optimizer (the full-level one)."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath, load_external_data=False).graph
        return collections.Counter(node.op_type for node in graph.node)


class DecodeLoop:
    """One export's decode session at one batch, its state fed back step after step."""

    def __init__(self, out: Path, batch: int, threads: int):
        from linexport.export.ort_session import OrtGraphs

        graphs = OrtGraphs(out, threads=threads)
        self.manifest = graphs.manifest
        if any("past_seq" in s["shape"] for s in self.manifest["states"]):
            raise SystemExit(f"{out}: a KV-cache export; this benchmark compares fixed-size states")
        self.session = graphs.session("decode")
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.feed = {"input_ids": np.full((batch, 1), 65, np.int64),
                     "position": np.full(batch, 64, np.int64)}
        for spec in self.manifest["states"]:
            shape = [batch if d == "batch" else d for d in spec["shape"]]
            self.feed[f"past.{spec['name']}"] = np.full(shape, 0.01, np.float32)

    def step(self):
        results = self.session.run(self.outputs, self.feed)
        for name, value in zip(self.outputs, results):
            if name.startswith("present."):
                self.feed["past." + name[len("present."):]] = value


def time_steps(loop: DecodeLoop, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        loop.step()
        times.append(time.perf_counter() - start)
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old", type=Path, help="export directory A (the baseline)")
    ap.add_argument("new", type=Path, help="export directory B (the change)")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--steps", type=int, default=50, help="decode steps per round")
    ap.add_argument("--rounds", type=int, default=10, help="interleaved rounds per graph")
    ap.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)")
    args = ap.parse_args()

    for label, out in (("old", args.old), ("new", args.new)):
        counts = optimized_nodes(out / "decode.onnx", args.threads)
        n_layers = load_manifest(out)["config"]["n_layers"]
        total = sum(counts.values())
        print(f"{label}: {out}: {total} nodes after ONNX Runtime's optimizer, "
              f"{total / n_layers:.1f} per layer; {dict(counts.most_common(8))}")
    for batch in (int(b) for b in args.batches.split(",")):
        loops = {label: DecodeLoop(out, batch, args.threads) for label, out in (("old", args.old), ("new", args.new))}
        for loop in loops.values():
            time_steps(loop, 5)  # warm-up
        times = {label: [] for label in loops}
        for _ in range(args.rounds):
            for label, loop in loops.items():
                times[label] += time_steps(loop, args.steps)
        ms = {label: 1e3 * float(np.median(t)) for label, t in times.items()}
        print(f"batch {batch:3d}: old {ms['old']:.3f} ms/token, new {ms['new']:.3f} ms/token, "
              f"old / new = {ms['old'] / ms['new']:.2f}x")


if __name__ == "__main__":
    main()
