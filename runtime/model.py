"""An opened export directory: its validated manifest, tokenizer and a backend over its graphs."""

from __future__ import annotations

from pathlib import Path

from linexport.errors import LinexportError
from linexport.runtime.backends import create_backend
from linexport.runtime.export_dir import read_manifest
from linexport.runtime.ingest import DEFAULT_PREFILL_CHUNK, check_chunk
from linexport.runtime.tokenizers import tokenizer_from_spec


class Model:
    """``Model("out/")`` opens ``out/linexport.json`` and the graphs it names.

    backend: "ort" (ONNX Runtime) or "trt" (TensorRT engines); device: "cpu" or "cuda";
    num_slots: how many sequences can decode at once (state rows allocated up front).
    prefill_chunk: the most tokens one prefill call ingests per sequence; longer prompts and
    appends go in chunks, so prefill memory depends on it, not on the prompt (default: the
    backend's — 4096, or the TensorRT engines' largest profiled sequence if that is smaller).
    tokenizer: any object with ``encode``/``decode``/``stream_decoder``; default from the manifest.
    verify_hashes: check the files the backend loads against their recorded sha256 (only those:
    the .onnx graphs for "ort", the engines and plugin library for "trt"; digests are cached per
    process, so reopening an unchanged export re-reads nothing; see runtime/export_dir.py).

    ``close()`` (or ``with Model(...) as m:``) releases the backend's device resources.
    """

    def __init__(self, path, backend: str = "ort", device: str = "cpu", num_slots: int = 1,
                 tokenizer=None, verify_hashes: bool = True, prefill_chunk: int | None = None):
        self.path = Path(path)
        self.manifest = read_manifest(self.path, verify_hashes=verify_hashes, backend=backend)
        self.tokenizer = tokenizer or tokenizer_from_spec(self.manifest.tokenizer, self.path)
        chunk = None if prefill_chunk is None else check_chunk(prefill_chunk)  # before building anything
        self.backend = create_backend(backend, self.manifest, num_slots, device)
        self.prefill_chunk = chunk or getattr(self.backend, "default_prefill_chunk", DEFAULT_PREFILL_CHUNK)
        most = getattr(self.backend, "max_seq", None)  # an engine profile's longest prefill
        if most is not None and self.prefill_chunk > most:
            self.backend.close()
            raise LinexportError(f"expected prefill_chunk <= {most} (the engines' largest profiled sequence), "
                                 f"got {self.prefill_chunk}; pass a smaller prefill_chunk or rebuild the "
                                 "engines with a larger --max-seq")
        if self.backend.vocab_size != self.manifest.vocab_size:
            raise LinexportError(f"{self.path}: the graphs' vocab ({self.backend.vocab_size}) does not "
                                 f"match the manifest's ({self.manifest.vocab_size}); re-export")

    @property
    def vocab_size(self) -> int:
        return self.manifest.vocab_size

    def close(self) -> None:
        self.backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
