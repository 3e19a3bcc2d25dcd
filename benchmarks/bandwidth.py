"""The machine's memory read bandwidth, measured the honest way: with as many threads as the
thing it is compared with (a decode step on ONNX Runtime with N intra-op threads is compared
with N threads reading).

Two readers, each over a buffer far larger than the last-level cache, best of a few rounds:

- ``onnxruntime``: one ``ReduceSum`` over the buffer in a session with ``threads`` intra-op
  threads, the runtime and thread pool the decode step itself uses;
- ``numpy``: ``threads`` Python threads each summing its own slice (numpy releases the GIL).

``read_bandwidth`` returns both and their maximum, the figure a step's bytes are held against
(the larger one is the harder bar).

    python benchmarks/bandwidth.py --threads 2
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

BUFFER_BYTES = 512 * 2**20


def _best_seconds(fn, rounds: int) -> float:
    fn()  # warm-up: pages touched, pools made
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def numpy_read(buffer: np.ndarray, threads: int, rounds: int) -> float:
    """Bytes/s of ``threads`` threads summing disjoint slices of ``buffer`` at once."""
    parts = np.array_split(buffer, threads)
    sink = [0.0] * threads

    def run():
        workers = [threading.Thread(target=lambda i=i: sink.__setitem__(i, float(parts[i].sum())))
                   for i in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    return buffer.nbytes / _best_seconds(run, rounds)


def onnxruntime_read(buffer: np.ndarray, threads: int, rounds: int) -> float:
    """Bytes/s of ONNX Runtime's ReduceSum over ``buffer`` with ``threads`` intra-op threads."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x"], ["y"], keepdims=0)], "read",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [buffer.size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "read.onnx"
        onnx.save(model, path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return buffer.nbytes / _best_seconds(lambda: session.run(None, {"x": buffer}), rounds)


def read_bandwidth(threads: int, rounds: int = 5, nbytes: int = BUFFER_BYTES) -> dict:
    """{"threads", "buffer_bytes", "numpy_bytes_per_s", "onnxruntime_bytes_per_s", "bytes_per_s"}."""
    buffer = np.ones(nbytes // 4, np.float32)
    result = {"threads": threads, "buffer_bytes": buffer.nbytes,
              "numpy_bytes_per_s": numpy_read(buffer, threads, rounds),
              "onnxruntime_bytes_per_s": onnxruntime_read(buffer, threads, rounds)}
    result["bytes_per_s"] = max(result["numpy_bytes_per_s"], result["onnxruntime_bytes_per_s"])
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    bw = read_bandwidth(args.threads)
    print(f"{args.threads} thread(s): numpy {bw['numpy_bytes_per_s'] / 1e9:.1f} GB/s, "
          f"onnxruntime {bw['onnxruntime_bytes_per_s'] / 1e9:.1f} GB/s")


if __name__ == "__main__":
    main()
