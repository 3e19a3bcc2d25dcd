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
from linexport.files import check_tokenizer_json, file_sha256

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
    check_tokenizer_json(source)
    shutil.copyfile(source, out / TOKENIZER_FILE)
    return {"type": "json", "file": TOKENIZER_FILE, "sha256": file_sha256(out / TOKENIZER_FILE)}


# -- onnxruntime-genai's tokenizer ------------------------------------------------------------
GENAI_TOKENIZER_CONFIG = "tokenizer_config.json"


def byte_level_symbols() -> list[str]:
    """The byte-level BPE alphabet: byte b's printable stand-in, the usual mapping of byte-level
    tokenizers (printable Latin-1 bytes stand for themselves, the others for 256 + n in order),
    so that a tokenizer whose vocabulary is this list, id = byte, is the bytes tokenizer."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, extra = {}, 0
    for b in range(256):
        if b in keep:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def byte_level_tokenizer_json() -> dict:
    """A ``tokenizer.json`` equal to the bytes tokenizer (token id = UTF-8 byte) that
    onnxruntime-genai's tokenizer loads: byte-level BPE with the 256 byte symbols and no merges."""
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
        "pre_tokenizer": byte_level, "post_processor": None, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": {s: i for i, s in enumerate(byte_level_symbols())},
                  "merges": []},
    }


def export_genai_tokenizer(spec: dict | None, checkpoint_dir: Path, out: Path, vocab_size: int,
                           pad_token_id: int | None, eos_token_id: int | None, bos_token_id: int | None,
                           recorded: dict | None = None) -> dict:
    """Writes the tokenizer genai loads (tokenizer.json + tokenizer_config.json) into ``out``;
    returns the special token ids for genai_config.json: those given, else those the checkpoint
    ``recorded`` (a converted model's own config: {"eos_token_id": ..., ...}, None where unset;
    pad falls back to eos), else the tokenizer's by their usual names. The bytes tokenizer has
    no special tokens, and genai needs each id inside the vocabulary: byte 0 (NUL), which text
    does not hold, pads and ends a sequence unless others are given."""
    import json

    kind = (spec or {}).get("type", "bytes")
    if kind == "bytes":
        (out / TOKENIZER_FILE).write_text(json.dumps(byte_level_tokenizer_json(), ensure_ascii=False) + "\n",
                                          encoding="utf-8")
        defaults = {"pad_token_id": 0, "eos_token_id": 0, "bos_token_id": 0}
    else:
        export_tokenizer(spec, checkpoint_dir, out)  # copies and checks tokenizer.json
        defaults = _special_ids(json.loads((out / TOKENIZER_FILE).read_text(encoding="utf-8")))
    own = {k: v for k, v in (recorded or {}).items() if k in defaults and isinstance(v, int) and not isinstance(v, bool)}
    if "eos_token_id" in own and "pad_token_id" not in own:
        own["pad_token_id"] = own["eos_token_id"]
    defaults.update(own)
    given = {"pad_token_id": pad_token_id, "eos_token_id": eos_token_id, "bos_token_id": bos_token_id}
    ids = {k: int(v if v is not None else defaults[k]) for k, v in given.items()}
    for name, value in ids.items():
        if not 0 <= value < vocab_size:
            raise LinexportError(f"expected {name} in [0, {vocab_size}), got {value}; pass "
                                 f"--{name.replace('_', '-')}")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
              "model_max_length": 1 << 30}
    (out / GENAI_TOKENIZER_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return ids


_EOS_NAMES = ("</s>", "<|endoftext|>", "<eos>", "<|end_of_text|>")
_BOS_NAMES = ("<s>", "<|begin_of_text|>", "<bos>")
_PAD_NAMES = ("<pad>", "<|pad|>", "[PAD]")


def _special_ids(tokenizer: dict) -> dict:
    """A tokenizer.json's special token ids by their usual names (0 where it has none; pad = eos
    where it has no pad)."""
    added = {t.get("content"): t.get("id") for t in tokenizer.get("added_tokens") or [] if isinstance(t, dict)}
    vocab = (tokenizer.get("model") or {}).get("vocab")
    lookup = {**(vocab if isinstance(vocab, dict) else {}), **added}

    def first(names):
        return next((lookup[n] for n in names if isinstance(lookup.get(n), int)), None)
    eos, bos, pad = first(_EOS_NAMES), first(_BOS_NAMES), first(_PAD_NAMES)
    return {"eos_token_id": 0 if eos is None else eos, "bos_token_id": bos if bos is not None else 0,
            "pad_token_id": pad if pad is not None else eos if eos is not None else 0}
