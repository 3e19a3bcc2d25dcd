"""Checkpoints: ``ckpt.pt`` (a plain dict, loaded with weights_only=True) or safetensors + JSON.

    ckpt.pt = {"format": "linexport.checkpoint", "format_version": 1, "arch": "linear",
               "config": {...}, "state_dict": {...}, "tokenizer": {"type": "bytes"}}

Checkpoints are untrusted input: nothing is ever unpickled beyond tensors and plain containers.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import torch

from linexport.errors import LinexportError
from linexport.files import atomic_write
from linexport.models import ARCH_NAMES, build_model
from linexport.models.base import CausalLM

FORMAT_TAG = "linexport.checkpoint"
FORMAT_VERSION = 1
DEFAULT_TOKENIZER = {"type": "bytes"}


def save_checkpoint(model: CausalLM, path, tokenizer: dict | None = None, extra: dict | None = None):
    """Writes ``model`` to ``path`` (.pt, or .safetensors with a sibling .json), atomically."""
    path = Path(path)
    meta = {"format": FORMAT_TAG, "format_version": FORMAT_VERSION, "arch": model.arch,
            "config": model.config_dict(), "tokenizer": tokenizer or DEFAULT_TOKENIZER}
    if extra:
        meta["extra"] = extra
    state_dict = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        atomic_write(path, lambda tmp: save_file(_untie(state_dict), tmp))
        atomic_write(path.with_suffix(".json"),
                      lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2)))
    else:
        atomic_write(path, lambda tmp: torch.save({**meta, "state_dict": state_dict}, tmp))


def load_checkpoint(path, map_location="cpu") -> tuple[CausalLM, dict]:
    """Returns (model in eval mode, metadata dict without the state_dict)."""
    path = Path(path)
    if path.is_dir():
        candidates = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.pt"))
        if len(candidates) != 1:
            raise LinexportError(f"expected {path} to hold exactly one .pt or .safetensors checkpoint, "
                                 f"found {[c.name for c in candidates]}")
        path = candidates[0]
    if not path.exists():
        raise LinexportError(f"checkpoint {path} does not exist: pass the path of a .pt or .safetensors "
                             "file written by linexport (or `linexport convert`)")
    if path.suffix == ".safetensors":
        meta, state_dict = _read_safetensors(path)
    else:
        meta, state_dict = _read_pt(path)
    model = _build(path, meta, state_dict, map_location)
    return model, meta


# -- reading --------------------------------------------------------------------------------
def _read_pt(path: Path):
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        globals_ = [line.strip() for line in str(e).splitlines() if "GLOBAL" in line]
        if not globals_:  # the weights-only unpickler met bytes that are no pickle: damaged file
            raise LinexportError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?). "
                                 "Re-save or re-download it.") from None
        raise LinexportError(
            f"{path} contains Python objects other than tensors and plain containers, which "
            "linexport refuses to unpickle (checkpoints are untrusted). Save a plain dict: "
            "torch.save({'format': ..., 'config': {...}, 'state_dict': model.state_dict()}, path), "
            f"or convert it with `linexport convert`. Detail: {globals_[0]}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise LinexportError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): "
                             f"{_first_line(e)}. Re-save or re-download it.") from None
    if not isinstance(obj, dict):
        raise LinexportError(f"expected {path} to hold a dict, got {type(obj).__name__}")
    if obj.get("format") != FORMAT_TAG:
        hint = (" It looks like a bare state_dict: convert it with `linexport convert`."
                if all(isinstance(v, torch.Tensor) for v in obj.values()) else "")
        raise LinexportError(f"expected a linexport checkpoint (format {FORMAT_TAG!r}) in {path}, "
                             f"got format {obj.get('format')!r}.{hint}")
    state_dict = obj.get("state_dict")
    meta = {k: v for k, v in obj.items() if k != "state_dict"}
    return meta, state_dict


def _read_safetensors(path: Path):
    config_path = path.with_suffix(".json")
    if not config_path.exists():
        raise LinexportError(f"expected the config {config_path} beside {path} (safetensors "
                             "checkpoints are weights + a JSON config)")
    try:
        meta = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LinexportError(f"{config_path} is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_TAG:
        raise LinexportError(f"expected {config_path} to be a linexport config (format {FORMAT_TAG!r})")
    try:
        from safetensors.torch import load_file

        state_dict = load_file(str(path))
    except Exception as e:  # safetensors raises its own SafetensorError for every corruption
        raise LinexportError(f"{path} is not a readable safetensors file (truncated or corrupt?): "
                             f"{_first_line(e)}") from None
    return meta, state_dict


def _build(path: Path, meta: dict, state_dict, map_location) -> CausalLM:
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise LinexportError(f"{path} has checkpoint format version {version!r}; this linexport reads "
                             f"versions up to {FORMAT_VERSION}. Upgrade linexport.")
    arch = meta.get("arch")
    if arch not in ARCH_NAMES:
        raise LinexportError(f"{path}: unknown architecture {arch!r}, expected one of {list(ARCH_NAMES)}")
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise LinexportError(f"{path}: expected 'state_dict' to be a dict of tensors")
    model = build_model(arch, meta.get("config"))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise LinexportError(
            f"{path}: the weights do not match the {arch} config: missing keys {_few(missing)}, "
            f"unexpected keys {_few(unexpected)}. Is the config from the same model as the weights?")
    for name, ref in expected.items():
        got = state_dict[name]
        if tuple(got.shape) != tuple(ref.shape):
            raise LinexportError(f"{path}: weight {name!r} has shape {list(got.shape)}, but the config "
                                 f"implies {list(ref.shape)}. Is the config from the same model?")
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            raise LinexportError(f"{path}: weight {name!r} contains NaN or Inf values; the checkpoint "
                                 "is damaged or training diverged")
    model.load_state_dict(state_dict, strict=True)
    return model.to(map_location).eval()


# -- helpers --------------------------------------------------------------------------------
def _untie(state_dict: dict) -> dict:
    """safetensors refuses tensors that share memory (tied embeddings): store copies."""
    seen, out = set(), {}
    for k, v in state_dict.items():
        ptr = v.untyped_storage().data_ptr()
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return out


def _few(names: list, n: int = 5) -> str:
    return str(names[:n])[:-1] + (f", ... +{len(names) - n} more]" if len(names) > n else "]")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
