"""The runtime's view of ``linexport.json``, the one file it trusts about an export.

A directory whose manifest is from a newer format, whose graphs or engines are missing, or
whose files do not match the recorded sha256 is refused (the checks live in
``linexport.contract.manifest``, which imports neither torch nor onnx).

Which files are hashed: those the chosen backend loads, and only those. ``backend="ort"``
hashes the ONNX graphs and their external-data files (ONNX Runtime reads nothing else);
``backend="trt"`` hashes the engines and the plugin library (TensorRT never reads the .onnx
files). ``backend=None`` hashes everything the manifest names. Hashing a file nobody will
load costs a full read of it (a large export's graphs are GBs) and protects nothing. Digests
are cached per process by (resolved path, size, mtime_ns, inode)
(``linexport.contract.manifest.cached_sha256``), so reopening an unchanged export costs a
stat per file, and a file changed since is hashed again and refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from linexport.errors import LinexportError
from linexport.contract.manifest import (MANIFEST_NAME, cached_sha256, check_external_refs, engine_files,
                                        graph_files, load_manifest, tokenizer_files, verify_file)  # pure JSON: no torch, no onnx


@dataclass(frozen=True)
class StateInfo:
    name: str  # "{layer}.{name}"; graph IO is past.<name> / present.<name>
    shape: tuple  # ("batch", ...)
    dtype: str  # numpy dtype name, e.g. "float32"


@dataclass(frozen=True)
class Manifest:
    root: Path
    data: dict

    @property
    def arch(self) -> str:
        return self.data["arch"]

    @property
    def vocab_size(self) -> int:
        return int(self.data["vocab_size"])

    @property
    def tokenizer(self) -> dict:
        return self.data.get("tokenizer") or {"type": "bytes"}

    @property
    def precision(self) -> str:
        return self.data["precision"]

    @property
    def states(self) -> list[StateInfo]:
        return [StateInfo(s["name"], tuple(s["shape"]), s["dtype"]) for s in self.data["states"]]

    @property
    def max_positions(self) -> int | None:
        """The most tokens a sequence may hold: a model with learned positions has
        ``max_seq_len`` of them (past that, its graphs would index outside their embedding
        table); None where positions are unbounded (rotary, sinusoidal)."""
        config = self.data["config"]
        if config.get("pos_emb") == "learned" and isinstance(config.get("max_seq_len"), int):
            return config["max_seq_len"]
        return None

    def graph_path(self, name: str) -> Path:
        return self.root / self.data["graphs"][name]["file"]

    @property
    def engines(self) -> dict:
        """The record `linexport trt` wrote (target, precision, profile, files), or an error
        telling how to build it."""
        if not self.data.get("engines"):
            raise LinexportError(f"{self.root}: no TensorRT engines are recorded; build them with "
                                 f"`linexport trt {self.root}` (or --target rtx)")
        return self.data["engines"]

    def engine_path(self, name: str) -> Path:
        return self.root / self.engines["graphs"][name]["file"]

    @property
    def plugin_library(self) -> Path | None:
        """The plugin library the engines were built with (copied into the export), or None."""
        plugin = self.engines["plugin_library"]
        return self.root / plugin["file"] if plugin else None


_BACKEND_FILES = ("ort", "trt")  # the backends whose files read_manifest knows


def read_manifest(root, verify_hashes: bool = True, backend: str | None = None) -> Manifest:
    """Validates ``root/linexport.json`` with the exporter's own schema check (one schema, one
    checker), then checks the files ``backend`` loads (all recorded files when None): that they
    exist and, with ``verify_hashes``, match their sha256 (see the module docstring)."""
    if backend is not None and backend not in _BACKEND_FILES:
        raise LinexportError(f"unknown backend {backend!r}: expected one of {', '.join(_BACKEND_FILES)}")
    root = Path(root)
    if root.name == MANIFEST_NAME:
        root = root.parent
    data = load_manifest(root, verify_hashes=False)
    if backend in (None, "ort"):
        for entry in graph_files(data):
            verify_file(root, entry["file"], entry["sha256"], verify_hashes)
        if verify_hashes:
            check_external_refs(root, data)  # before ONNX Runtime parses a graph
    if backend in (None, "trt"):
        for entry in engine_files(data):
            _check_engine(root / entry["file"], entry["sha256"], verify_hashes)
    for entry in tokenizer_files(data):  # every backend's Model loads the tokenizer
        verify_file(root, entry["file"], entry["sha256"], verify_hashes)
    return Manifest(root, data)


def _check_engine(path: Path, sha256: str, verify: bool):
    if not path.exists():
        raise LinexportError(f"{path} is missing: rebuild the engines with `linexport trt {path.parent}`")
    if verify and cached_sha256(path) != sha256:
        raise LinexportError(f"{path} does not match the sha256 recorded in {MANIFEST_NAME}: it was "
                             f"modified or replaced after the build; rebuild with `linexport trt`")
