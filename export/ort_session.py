"""Running an export directory's two graphs in ONNX Runtime (CPU), for verify and the tests.

A ``plugin``-lowered graph holds a bare custom node that only TensorRT's plugin resolves; to run
it here the graph is given the ``function`` lowering's body for that node (in a temp copy —
the export itself is never modified). What runs is then the graph around the node exactly as
exported, with the reference decomposition in place of the plugin.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from linexport.contract.manifest import load_manifest


_NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}


def prefill_feed(session, input_ids, lengths, position=None, state: dict | None = None) -> dict:
    """The feed of an ONNX Runtime prefill session: ``input_ids``, ``lengths`` and — where the
    graph continues from a state (contract/graph_io.py) — ``position`` (None: zeros) and each
    ``past.*`` from ``state`` (None: zeros, a fresh sequence). For raw sessions in tests and
    benchmarks; the runtime's backends feed their own."""
    ids = np.asarray(input_ids, np.int64)
    feed = {"input_ids": ids, "lengths": np.asarray(lengths, np.int64)}
    batch = ids.shape[0]
    for inp in session.get_inputs():
        if inp.name == "position":
            feed["position"] = np.zeros(batch, np.int64) if position is None else np.asarray(position, np.int64)
        elif inp.name.startswith("past."):
            name = inp.name[len("past."):]
            if state is not None:
                feed[inp.name] = np.asarray(state[name], np.float32)
            else:
                feed[inp.name] = np.zeros((batch, *inp.shape[1:]), _NP[inp.type])
    return feed


class OrtGraphs:
    """prefill(input_ids, lengths[, position, state]) and decode(input_ids, position, state)
    over numpy arrays."""

    def __init__(self, root, manifest: dict | None = None, threads: int = 0):
        from linexport.runtime.backends.ort import load_session  # the runtime's loader: one set of errors

        self.root = Path(root)
        self.manifest = manifest or load_manifest(self.root)
        self.state_names = [s["name"] for s in self.manifest["states"]]
        self._sessions = {}
        with tempfile.TemporaryDirectory(prefix="linexport-ort-") as tmp:
            for name in ("prefill", "decode"):
                self._sessions[name] = load_session(self._runnable_path(name, Path(tmp)), threads)

    def session(self, name: str):
        """The ONNX Runtime session of graph ``name`` ("prefill" or "decode"), for benchmarks
        that feed it themselves."""
        return self._sessions[name]

    def _runnable_path(self, name: str, tmp: Path) -> Path:
        path = self.root / self.manifest["graphs"][name]["file"]
        lowering = self.manifest["lowering"]
        if lowering["option"] != "plugin" or "function_chunk" not in lowering:
            return path  # runnable as it is (or an arch without the custom node)
        import onnx

        from linexport.export.lowerings import with_function_body

        chunk = lowering["function_chunk"][name]
        model = with_function_body(onnx.load(str(path)), chunk, name)
        copy = tmp / path.name
        external = bool(self.manifest["graphs"][name]["external_data"])
        onnx.save_model(model, str(copy), save_as_external_data=external, all_tensors_to_one_file=True,
                        location=f"{path.name}.data")
        return copy

    def prefill(self, input_ids: np.ndarray, lengths: np.ndarray, position=None, state: dict | None = None):
        """-> (logits, {state name: array}); continuing from ``state`` at ``position`` if given."""
        session = self._sessions["prefill"]
        outputs = session.run(None, prefill_feed(session, input_ids, lengths, position, state))
        return outputs[0], dict(zip(self.state_names, outputs[1:]))

    def decode(self, input_ids: np.ndarray, position: np.ndarray, state: dict):
        """input_ids [B] or [B, 1] -> (logits [B, V], new state)"""
        feed = {"input_ids": np.asarray(input_ids, np.int64).reshape(-1, 1),
                "position": np.asarray(position, np.int64)}
        feed.update({f"past.{n}": state[n] for n in self.state_names})
        outputs = self._sessions["decode"].run(None, feed)
        return outputs[0], dict(zip(self.state_names, outputs[1:]))
