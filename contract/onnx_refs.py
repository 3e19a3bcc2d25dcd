"""The external-data files an ONNX graph references, read from its bytes without onnx.

A graph names its external tensors' files in ``TensorProto.external_data["location"]``; a parser
then opens them relative to the graph — and some parsers follow symlinks out of the export.
Before any parser sees a graph, every file it references must be one the manifest lists (with
its sha256) and lie inside the export (contract/manifest.py). This reader walks the protobuf
wire format of the few messages that can hold a tensor (graph initializers, node attributes,
function bodies, subgraphs), skipping weights by their length, so it costs about a stat per
tensor whatever the graph's size.
"""

from __future__ import annotations

import mmap
from pathlib import Path

from linexport.errors import LinexportError

# field numbers (onnx.proto3): message -> {field: kind of the field's message}
_MODEL = {7: "graph", 25: "function"}
_GRAPH = {1: "node", 5: "tensor", 15: "sparse"}
_FUNCTION = {7: "node"}
_NODE = {5: "attribute"}
_ATTRIBUTE = {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"}
_SPARSE = {1: "tensor", 2: "tensor"}
_FIELDS = {"model": _MODEL, "graph": _GRAPH, "function": _FUNCTION, "node": _NODE,
           "attribute": _ATTRIBUTE, "sparse": _SPARSE}
_TENSOR_EXTERNAL_DATA = 13  # repeated StringStringEntryProto {key = 1, value = 2}
_MAX_DEPTH = 64  # subgraphs nest; a crafted file must not recurse without end


def external_data_files(path) -> set[str]:
    """The ``location`` of every external tensor in the ONNX file ``path``."""
    path = Path(path)
    found: set[str] = set()
    error = None
    with open(path, "rb") as f:
        if path.stat().st_size == 0:
            return found
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            view = memoryview(data)
            try:
                _walk(view, "model", found, 0)
            except (ValueError, IndexError) as e:
                error = str(e)  # the traceback holds views of the map: leave the handler first
            view.release()
    if error is not None:
        raise LinexportError(f"expected {path} to be an ONNX graph, got bytes that are not one ({error}); "
                             "re-export it")
    return found


def _walk(buf: memoryview, kind: str, found: set, depth: int):
    if depth > _MAX_DEPTH:
        raise ValueError("messages nested too deep")
    fields = _FIELDS.get(kind, {})
    for field, wire, value in _fields(buf):
        if wire != 2:
            continue
        if kind == "tensor":
            if field == _TENSOR_EXTERNAL_DATA:
                entry = {f: bytes(v).decode("utf-8", "replace") for f, w, v in _fields(value) if w == 2}
                if entry.get(1) == "location":
                    found.add(entry.get(2, ""))
        elif field in fields:
            _walk(value, fields[field], found, depth + 1)


def _fields(buf: memoryview):
    """(field number, wire type, value) of each field; length-delimited values as memoryviews."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = None, i + 8
        elif wire == 5:
            value, i = None, i + 4
        elif wire == 3:  # a (deprecated) group: parsers skip it as an unknown field; so do we
            value, i = None, _skip_group(buf, i, field)
        elif wire == 2:
            length, i = _varint(buf, i)
            if i + length > n:
                raise ValueError("a field runs past the end of its message")
            value, i = buf[i:i + length], i + length
        else:
            raise ValueError(f"unknown wire type {wire}")
        if i > n:
            raise ValueError("truncated field")
        yield field, wire, value


def _skip_group(buf: memoryview, i: int, field: int) -> int:
    """Index just past the END_GROUP (wire type 4) that closes group ``field`` opened before ``i``."""
    depth = 1
    while True:
        key, i = _varint(buf, i)
        wire = key & 7
        if wire == 0:
            _, i = _varint(buf, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            length, i = _varint(buf, i)
            i += length
        elif wire == 3:
            depth += 1
        elif wire == 4:
            depth -= 1
            if depth == 0:
                if key >> 3 != field:
                    raise ValueError("a group closes with another field's end")
                return i
        else:
            raise ValueError(f"unknown wire type {wire}")
        if i > len(buf):
            raise ValueError("truncated group")


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        byte = buf[i]
        i += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")
