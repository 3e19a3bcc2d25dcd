"""The tokenizer an export ships: the checkpoint names it, the export carries it.

A checkpoint's ``tokenizer`` is ``{"type": "bytes"}`` (the byte-level demo tokenizer) or
``{"type": "json", "file": F}``, a Hugging Face ``tokenizer.json`` at F (relative to the
checkpoint's folder, or absolute). The export copies that file into OUT as
``tokenizer.json`` and records its sha256, so the directory alone is what a user deploys and
the runtime reads nothing from outside it (contract/manifest.py checks the hash).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from linexport.errors import LinexportError
from linexport.files import file_sha256

TOKENIZER_FILE = "tokenizer.json"


def export_tokenizer(spec: dict | None, checkpoint_dir: Path, out: Path) -> dict:
    """Copies the tokenizer ``spec`` names into ``out``; returns the manifest's tokenizer entry."""
    spec = spec or {"type": "bytes"}
    if not isinstance(spec, dict):
        raise LinexportError(f"expected the checkpoint's tokenizer as a dict, got {type(spec).__name__}")
    kind = spec.get("type", "bytes")
    if kind == "bytes":
        return {"type": "bytes"}
    if kind != "json":
        raise LinexportError(f"expected the checkpoint's tokenizer type to be 'bytes' or 'json', got {kind!r}")
    file = spec.get("file")
    if not isinstance(file, str) or not file:
        raise LinexportError(f"expected the checkpoint's json tokenizer to name its file "
                             f"({{'type': 'json', 'file': 'tokenizer.json'}}), got {spec!r}")
    source = Path(file) if Path(file).is_absolute() else checkpoint_dir / file
    if not source.is_file():
        raise LinexportError(f"expected the tokenizer file {source} (named by the checkpoint) to exist; "
                             "put it beside the checkpoint or fix the checkpoint's tokenizer.file")
    _check_json(source)
    shutil.copyfile(source, out / TOKENIZER_FILE)
    return {"type": "json", "file": TOKENIZER_FILE, "sha256": file_sha256(out / TOKENIZER_FILE)}


def _check_json(path: Path):
    """A tokenizer.json must at least be a JSON object: refuse garbage at export, not at run time."""
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LinexportError(f"expected {path} to be a tokenizer.json, got unreadable JSON "
                             f"({type(e).__name__}: {e})") from None
    if not isinstance(data, dict) or "model" not in data:
        raise LinexportError(f"expected {path} to be a Hugging Face tokenizer.json (an object with a "
                             "'model'), got something else")
