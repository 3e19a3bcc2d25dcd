"""Reads and checks ``linexport.json``, the one file the runtime trusts about an export.

Pure JSON + hashlib: no torch, no onnx. A directory whose manifest is from a newer format,
whose graphs are missing, or whose graph bytes do not match the recorded sha256 is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from linexport.errors import LinexportError
from linexport.files import file_sha256

MANIFEST_NAME = "linexport.json"
FORMAT_TAG = "linexport.export"
FORMAT_VERSION = 1


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

    def graph_path(self, name: str) -> Path:
        return self.root / self.data["graphs"][name]["file"]

    def engine_path(self, name: str) -> Path:
        engines = self.data.get("engines") or {}
        if name not in engines:
            raise LinexportError(f"{self.root}: no TensorRT engine for the {name} graph is recorded; "
                                 f"build them with `linexport trt {self.root}`")
        return self.root / engines[name]["file"]


def read_manifest(root, verify_hashes: bool = True) -> Manifest:
    root = Path(root)
    path = root / MANIFEST_NAME if root.is_dir() or not root.suffix else root
    if path.name == MANIFEST_NAME:
        root = path.parent
    if not path.exists():
        raise LinexportError(f"{path} does not exist: expected a directory written by `linexport onnx` "
                             "(it holds linexport.json, prefill.onnx and decode.onnx)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LinexportError(f"{path} is not valid JSON ({e}); re-export with `linexport onnx`") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT_TAG:
        raise LinexportError(f"{path} is not a linexport export manifest (expected format {FORMAT_TAG!r})")
    version = data.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise LinexportError(f"{path} has manifest format version {version!r}; this linexport reads up "
                             f"to {FORMAT_VERSION}. Upgrade linexport or re-export with this version.")
    for key in ("arch", "vocab_size", "graphs", "states", "precision"):
        if key not in data:
            raise LinexportError(f"{path} lacks the field {key!r}; re-export with `linexport onnx`")
    manifest = Manifest(root, data)
    for name in ("prefill", "decode"):
        if name not in data["graphs"]:
            raise LinexportError(f"{path} names no {name} graph; re-export with `linexport onnx`")
        _check_file(manifest.graph_path(name), data["graphs"][name].get("sha256"), verify_hashes)
    for name, entry in (data.get("engines") or {}).items():
        _check_file(root / entry["file"], entry.get("sha256"), verify_hashes)
    return manifest


def _check_file(path: Path, sha256: str | None, verify: bool):
    if not path.exists():
        raise LinexportError(f"{path} is missing: the export directory is incomplete; re-export it")
    if verify and sha256:
        if file_sha256(path) != sha256:
            raise LinexportError(f"{path} does not match the sha256 recorded in {MANIFEST_NAME}: the file "
                                 "was modified or replaced after export. Re-export, or pass "
                                 "verify_hashes=False if you changed it on purpose.")
