"""Tokenizers the runtime understands: the bundled byte-level one, any pair of callables, or a
``tokenizer.json`` through the optional ``tokenizers`` package."""

from __future__ import annotations

import codecs
from collections.abc import Callable, Sequence
from pathlib import Path

from linexport.errors import LinexportError


class ByteTokenizer:
    """UTF-8 bytes as tokens (vocab 256): what the bundled demo models use."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        # surrogateescape: a command-line argument that is not valid UTF-8 reaches Python with
        # its bytes escaped as lone surrogates; a byte-level model takes those bytes as they are.
        return list(encode_utf8(text, "surrogateescape"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def stream_decoder(self):
        """Returns f(token) -> text completed so far (holds back partial UTF-8 characters)."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        return lambda token: decoder.decode(bytes([int(token)]))


def encode_utf8(text: str, errors: str = "strict") -> bytes:
    """``text`` as UTF-8, or a LinexportError for a string that has no UTF-8 form (lone surrogates)."""
    try:
        return text.encode("utf-8", errors)
    except UnicodeEncodeError as e:
        raise LinexportError(f"expected text that can be encoded as UTF-8, got a string with "
                             f"{e.object[e.start:e.end]!r} at {e.start} (a lone surrogate); pass valid "
                             "Unicode text or token ids") from None


class CallableTokenizer:
    """Wraps ``encode(str) -> list[int]`` and ``decode(list[int]) -> str`` callables."""

    def __init__(self, encode: Callable[[str], list[int]], decode: Callable[[list[int]], str]):
        self._encode, self._decode = encode, decode

    def encode(self, text: str) -> list[int]:
        encode_utf8(text)  # refused here with the reason, not deep inside the user's tokenizer
        return list(self._encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        return self._decode(list(ids))

    def stream_decoder(self):
        # Decode the whole tail each time and emit what is new: correct for tokenizers whose
        # pieces merge (byte-fallback, sentencepiece spaces) at O(n) per token.
        ids: list[int] = []
        emitted = [""]

        def feed(token):
            ids.append(int(token))
            text = self._decode(ids)
            if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for more
                return ""
            new = text[len(emitted[0]):]
            emitted[0] = text
            return new

        return feed


def tokenizer_from_json(path) -> CallableTokenizer:
    """A Hugging Face ``tokenizer.json``; needs ``pip install tokenizers``."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise LinexportError("reading tokenizer.json needs the tokenizers package: "
                             "pip install tokenizers") from None
    path = Path(path)
    if not path.exists():
        raise LinexportError(f"tokenizer file {path} does not exist")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # the tokenizers package raises a bare Exception for a malformed file
        raise LinexportError(f"could not read the tokenizer {path}: {str(e).splitlines()[0]}") from None
    return CallableTokenizer(lambda s: tok.encode(s).ids, lambda ids: tok.decode(ids))


def tokenizer_from_spec(spec: dict | None, base_dir: Path | None = None):
    """The tokenizer a manifest names: {"type": "bytes"} or {"type": "json", "file": ...}, the
    file inside the export directory ``base_dir`` (the exporter copies it there; a path that
    leaves the directory, e.g. through a symlink, is refused)."""
    kind = (spec or {}).get("type", "bytes")
    if kind == "bytes":
        return ByteTokenizer()
    if kind == "json":
        file = spec.get("file")
        if not isinstance(file, str) or base_dir is None:
            raise LinexportError(f"expected a json tokenizer spec with the file inside the export, got {spec!r}")
        root = Path(base_dir).resolve()
        path = (root / file).resolve()
        if root not in path.parents:
            raise LinexportError(f"expected the tokenizer file {file!r} to lie inside {root}, but it "
                                 f"resolves to {path}; re-export so that the tokenizer is copied in")
        return tokenizer_from_json(path)
    raise LinexportError(f"unknown tokenizer type {kind!r}: expected 'bytes' or 'json', or pass "
                         "your own tokenizer object (encode/decode) to the Generator")
