"""Checkpoints: ``ckpt.pt`` (a plain dict, loaded with weights_only=True) or safetensors + JSON.

    ckpt.pt = {"format": "linexport.checkpoint", "format_version": 1, "arch": "linear",
               "config": {...}, "state_dict": {...}, "tokenizer": {"type": "bytes"}}

Checkpoints are untrusted input: nothing is ever unpickled beyond tensors and plain containers.
"""

from __future__ import annotations

import json
import pickle
import re
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
def read_torch_file(path: Path, expected: str):
    """``torch.load(path, weights_only=True)`` with one clear error per way it can fail; never
    suggests loading with ``weights_only=False`` (that runs code from the file). ``expected``
    says what the file should be ("a linexport checkpoint", "a FLASHTransformer state_dict")."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        globals_ = [line.strip() for line in str(e).splitlines() if "GLOBAL" in line]
        if globals_:
            raise LinexportError(
                f"{path} contains Python objects other than tensors and plain containers, which "
                f"linexport refuses to unpickle (checkpoints are untrusted); expected {expected}. Save "
                "plain data: torch.save({'format': ..., 'config': {...}, 'state_dict': model.state_dict()}, "
                f"path), or a bare model.state_dict() for `linexport convert`. Detail: {globals_[0]}") from None
        if _is_plain_pickle(path):
            raise LinexportError(
                f"{path} is a plain Python pickle (pickle.dump), not a torch.save file; expected {expected}. "
                "linexport never unpickles arbitrary objects: save the weights with torch.save(...) "
                "(or safetensors) instead") from None
        raise LinexportError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?); expected "
                             f"{expected}. Re-save or re-download it.") from None
    except Exception as e:  # torch raises many types for damaged files (RuntimeError, struct.error, ...)
        raise LinexportError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): "
                             f"{_first_line(e)}; expected {expected}. Re-save or re-download it.") from None


def _is_plain_pickle(path: Path) -> bool:
    """A pickle stream (protocol >= 2 starts with PROTO 0x80) that is not torch.save's zip archive."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError:
        return False
    return head[:1] == b"\x80" and not zipfile.is_zipfile(path)


def _read_pt(path: Path):
    obj = read_torch_file(path, "a linexport checkpoint (a plain dict saved with torch.save)")
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
    _check_size_against_weights(path, arch, meta.get("config"), state_dict)
    with torch.device("meta"):  # shapes only: a config the weights do not back allocates nothing
        skeleton = build_model(arch, meta.get("config"))
    expected = skeleton.state_dict()
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
    _check_buffers(path, skeleton, state_dict)
    model = build_model(arch, meta.get("config"))
    model.load_state_dict(state_dict, strict=True)
    return model.to(map_location).eval()


# -- size checks: the config is untrusted until the weights back it ---------------------------
_LAYER_INDEX = re.compile(r"^[A-Za-z_]+\.(\d+)\.")  # blocks.3.attn... / layers.3.to_qk...
# What a model may allocate beyond the weights it loads (buffers the config sizes, e.g. FLASH's
# [C, C] relative-position buckets): this many bytes, or the weights' own size if larger.
_EXTRA_BYTES = 256 << 20
_LAYER_SLACK = 256


def _check_size_against_weights(path: Path, arch: str, config, state_dict: dict):
    """Before any module is built: a config whose depth the weights do not have is refused (a
    meta-device build of 10**7 layers would itself take hours)."""
    from linexport.models import model_class
    from linexport.models.config import config_from_dict

    cfg = config_from_dict(model_class(arch).config_class, config)
    layers = {int(m.group(1)) for key in state_dict for m in [_LAYER_INDEX.match(key)] if m}
    n_layers = getattr(cfg, "n_layers", None)
    # A few layers too many still reach the key-by-key comparison (its message names the keys);
    # far too many would make even the meta-device build take hours.
    if isinstance(n_layers, int) and n_layers > len(layers) + _LAYER_SLACK:
        raise LinexportError(f"{path}: the config says n_layers={n_layers}, but the weights hold "
                             f"{len(layers)} layers; is the config from the same model as the weights?")


def _check_buffers(path: Path, skeleton: CausalLM, state_dict: dict):
    """Buffers the config sizes but the checkpoint does not store (``skeleton``: the model on the
    meta device) must stay within a sane bound."""
    stored = set(state_dict)
    extra = sum(b.numel() * b.element_size() for name, b in skeleton.named_buffers() if name not in stored)
    present = sum(t.numel() * t.element_size() for t in state_dict.values())
    if extra > max(_EXTRA_BYTES, present):
        raise LinexportError(f"{path}: the config asks for {extra / 2**20:.0f} MiB of buffers beyond the "
                             f"{present / 2**20:.1f} MiB of weights (e.g. a huge chunk_size); expected at "
                             f"most {max(_EXTRA_BYTES, present) / 2**20:.0f} MiB. Check the config")


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
