"""A sequence's snapshot as a file (``linexport chat``'s ``/save`` and ``/load``).

One ``.npz`` (numpy's zip of arrays, read with ``allow_pickle=False``: nothing in the file is
ever unpickled): the state tensors, the next-token logits, the tokens so far and a small JSON
header saying which model the state belongs to. A state only means something to the model that
made it, so loading checks the header against the open model (arch, config, state names and
shapes) and refuses any other with what it found. Written to a temp file and renamed into place.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from linexport.errors import LinexportError
from linexport.files import atomic_write
from linexport.runtime.sampling import SamplingParams

FORMAT = "linexport.snapshot"
FORMAT_VERSION = 1


def _identity(model) -> dict:
    m = model.manifest.data
    return {"arch": m["arch"], "config": m["config"], "states": [[s["name"], s["shape"]] for s in m["states"]]}


def save_snapshot(path, snapshot, model) -> Path:
    """Writes ``snapshot`` (a :class:`linexport.runtime.generator.Snapshot`) of ``model``'s
    sequence to ``path`` atomically."""
    path = Path(path)
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": _identity(model),
              "prompt_len": snapshot.prompt_len, "position": snapshot.position}
    arrays = {f"state/{k}": np.asarray(v) for k, v in snapshot.state.items()}
    arrays["logits"] = np.asarray(snapshot.logits, np.float32)
    arrays["tokens"] = np.asarray(snapshot.tokens, np.int64)
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)
    return path


def load_snapshot(path, model, params: SamplingParams | None = None):
    """The snapshot in ``path``, checked to belong to ``model``; ``params`` for its sampling."""
    from linexport.runtime.generator import Snapshot

    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise LinexportError(f"no snapshot file {path}; save one with /save {path}") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise LinexportError(f"{path} is not a linexport snapshot file ({e})") from None
    try:
        header = json.loads(arrays.pop("header").tobytes().decode())
        logits, tokens = arrays.pop("logits"), arrays.pop("tokens")
    except (KeyError, ValueError, UnicodeDecodeError):
        raise LinexportError(f"{path} is not a linexport snapshot file (no header, logits or tokens)") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT or header.get("format_version") != FORMAT_VERSION:
        raise LinexportError(f"{path} is not a linexport snapshot file of format {FORMAT_VERSION}")
    if header.get("model") != json.loads(json.dumps(_identity(model))):
        found = header.get("model") or {}
        raise LinexportError(f"{path} holds the state of another model ({found.get('arch')!r}, config "
                             f"{found.get('config')}); load it with the export it was saved from")
    position, prompt_len = header.get("position"), header.get("prompt_len")
    if not (isinstance(position, int) and tokens.ndim == 1 and position == len(tokens)
            and isinstance(prompt_len, int) and 0 <= prompt_len <= len(tokens)):
        raise LinexportError(f"{path}: damaged snapshot (position {position!r} for {tokens.shape} tokens)")
    state = {k[len("state/"):]: v for k, v in arrays.items() if k.startswith("state/")}
    return Snapshot(state, params or SamplingParams(), tokens.tolist(), prompt_len, position,
                    np.asarray(logits, np.float32), np.random.default_rng().bit_generator.state)
