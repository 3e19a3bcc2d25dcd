"""Measurements behind `linexport bench`: decode latency vs context, prefill throughput and
memory vs sequence length, chunked ingestion of long prompts (throughput and memory vs prompt
length) and appending to a live sequence (continued prefill vs decode steps), for one or several
export directories. numpy + the runtime only.

    from linexport.runtime.benchmark import BenchSettings, run_bench
    result = run_bench(["out-linear", "out-flash"], BenchSettings(contexts=(64, 1024)))

The result is a plain JSON-able dict holding every raw number (see ``FORMAT``); the terminal
table (``benchmark_report``) and the PNG (``benchmark_plot``) are drawn from it alone.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from linexport import __version__
from linexport.errors import LinexportError
from linexport.runtime.backends import BACKENDS
from linexport.runtime.benchmark_append import APPEND_DOC, measure_append
from linexport.runtime.benchmark_decode import LATENCY_DOC, measure_decode
from linexport.runtime.benchmark_prefill import INGEST_DOC, MEMORY_DOC, measure_prefill
from linexport.runtime.export_dir import Manifest, read_manifest
from linexport.runtime.ingest import DEFAULT_PREFILL_CHUNK
from linexport.runtime.model import Model

FORMAT = "linexport.bench"
FORMAT_VERSION = 2  # 2: ingest and append measurements
DEFAULT_SIZES = (64, 256, 1024, 4096, 16384)
DEFAULT_INGEST_SEQS = (8192, 32768, 131072, 262144)
DEFAULT_APPEND = (4096, 1024)  # (context, tokens)


@dataclass(frozen=True)
class BenchSettings:
    backend: str = "ort"
    device: str = "cpu"
    batch: int = 1  # rows per decode step and per prefill call
    contexts: tuple[int, ...] = DEFAULT_SIZES  # decode: tokens already in the state
    prefill_seqs: tuple[int, ...] = DEFAULT_SIZES
    steps: int = 32  # timed decode steps per context
    warmup: int = 4  # untimed decode steps before them
    repeats: int = 3  # timed prefill runs per seq, after one cold run
    timeout_s: float = 600.0  # per prefill or ingest measurement (one child process)
    ingest_seqs: tuple[int, ...] = DEFAULT_INGEST_SEQS  # one prompt each, batch 1; () for none
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK  # tokens per continued prefill call (ingest, append)
    append: tuple[int, int] | None = DEFAULT_APPEND  # (context, tokens), batch 1; None for none

    def check(self):
        if self.backend not in BACKENDS:
            raise LinexportError(f"expected a backend in {BACKENDS}, got {self.backend!r}")
        for name, low in (("batch", 1), ("steps", 1), ("warmup", 0), ("repeats", 0), ("prefill_chunk", 1)):
            if getattr(self, name) < low:
                raise LinexportError(f"expected {name} >= {low}, got {getattr(self, name)}")
        for name in ("contexts", "prefill_seqs", "ingest_seqs"):
            sizes = getattr(self, name)
            if (not sizes and name != "ingest_seqs") or any(s < 1 for s in sizes):
                raise LinexportError(f"expected {name} to be positive token counts, got {list(sizes)}")
        if self.append is not None and (len(self.append) != 2 or min(self.append) < 1):
            raise LinexportError(f"expected append to be (context, tokens), both >= 1, got {self.append}")


def parse_sizes(text: str, option: str = "--contexts") -> tuple[int, ...]:
    """"64,256,1024" -> (64, 256, 1024): positive, increasing (ratios are to the first)."""
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or any(s < 1 for s in sizes) or list(sizes) != sorted(set(sizes)):
        raise LinexportError(f"{option}: expected increasing positive token counts separated by commas, "
                             f"got {text!r}; for example {option} 64,256,1024,4096")
    return sizes


def parse_append(text: str) -> tuple[int, int] | None:
    """"4096:1024" -> (4096, 1024): tokens in the live sequence, tokens appended; "" -> None."""
    if not text.strip():
        return None
    try:
        context, tokens = (int(part) for part in text.split(":"))
    except ValueError:
        context = tokens = 0
    if context < 1 or tokens < 1:
        raise LinexportError(f"--append: expected CONTEXT:TOKENS, two positive token counts (tokens in the live "
                             f"sequence, tokens appended to it), got {text!r}; for example --append 4096:1024, "
                             "or --append '' for none")
    return context, tokens


def position_limit(manifest: Manifest) -> int | None:
    """Positions a model can take at all: learned absolute embeddings end at max_seq_len (a graph
    given more fails in a Gather); rotary and sinusoidal positions have no limit."""
    config = manifest.data["config"]
    if config.get("pos_emb") == "learned":
        return int(config["max_seq_len"])
    return None


def run_bench(outs: Sequence, settings: BenchSettings, progress: Callable[[str], None] | None = None) -> dict:
    """Measures every export in ``outs``; ``progress(label)`` is called after each point."""
    settings.check()
    manifests = [read_manifest(out, backend=settings.backend) for out in outs]  # all refused before any time is spent
    progress = progress or (lambda label: None)
    result = {"format": FORMAT, "format_version": FORMAT_VERSION,
              "settings": {**asdict(settings), "contexts": list(settings.contexts),
                           "prefill_seqs": list(settings.prefill_seqs), "ingest_seqs": list(settings.ingest_seqs),
                           "append": None if settings.append is None else list(settings.append)},
              "definitions": {"decode": LATENCY_DOC, "prefill_memory": MEMORY_DOC,
                              "prefill_speed": "tokens_per_s: batch * seq / median of the warm runs' "
                                               "seconds; cold_seconds: the first run, not counted",
                              "ingest": INGEST_DOC + "; batch 1, tokens_per_s and peak_bytes as for prefill",
                              "append": APPEND_DOC},
              "machine": machine_info(), "versions": versions(settings.backend),
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "exports": []}
    for out, manifest, name in zip(outs, manifests, export_names(outs)):
        entry = _describe(out, manifest, name)
        entry["decode"] = _decode_all(out, manifest, settings, lambda c: progress(f"{name} decode @{c}"))
        entry["prefill"] = _prefill_all(out, manifest, settings, lambda s: progress(f"{name} prefill {s}"))
        entry["ingest"] = ingest_all(out, manifest, settings, lambda s: progress(f"{name} ingest {s}"))
        entry["append"] = _append_all(out, manifest, settings, lambda: progress(f"{name} append"))
        result["exports"].append(entry)
    return result


def _decode_all(out, manifest, s: BenchSettings, done: Callable) -> list[dict]:
    model = Model(out, backend=s.backend, device=s.device, num_slots=s.batch, verify_hashes=False)
    limit, rows = position_limit(manifest), []
    for context in s.contexts:
        last = context + s.warmup + s.steps  # positions up to last - 1 are fed
        if limit is not None and last > limit:
            rows.append({"context": context, "status": "skipped",
                         "reason": f"positions up to {last - 1} needed, learned positions end at "
                                   f"max_seq_len={limit}"})
        else:
            try:
                rows.append(measure_decode(model.backend, model.vocab_size, context, s.batch, s.steps,
                                           s.warmup, model.prefill_chunk))
            except Exception as e:  # noqa: BLE001 - ORT/TensorRT raise their own types (e.g. out of memory)
                rows.append({"context": context, "status": "skipped", "reason": _skip_reason(e)})
        done(context)
    return rows


def _prefill_all(out, manifest, s: BenchSettings, done: Callable) -> list[dict]:
    limit, rows = position_limit(manifest), []
    for seq in s.prefill_seqs:
        if limit is not None and seq > limit:
            rows.append({"seq": seq, "status": "skipped",
                         "reason": f"longer than the learned positions (max_seq_len={limit})"})
        else:
            rows.append(measure_prefill(out, seq, s.batch, s.backend, s.device, s.repeats, s.timeout_s))
        done(seq)
    return rows


def ingest_all(out, manifest, s: BenchSettings, done: Callable) -> list[dict]:
    """One fresh child per prompt length; once one fails (time, memory), longer ones are not run."""
    limit, rows, failed = position_limit(manifest), [], None
    for seq in s.ingest_seqs:
        if limit is not None and seq > limit:
            row = {"seq": seq, "status": "skipped",
                   "reason": f"longer than the learned positions (max_seq_len={limit})"}
        elif failed is not None:
            row = {"seq": seq, "status": "skipped",
                   "reason": f"not run: the {failed['seq']}-token prompt was already skipped ({failed['reason']})"}
        else:
            row = measure_prefill(out, seq, 1, s.backend, s.device, s.repeats, s.timeout_s, chunk=s.prefill_chunk)
            failed = row if row["status"] != "ok" else None
        rows.append(row)
        done(seq)
    return rows


def _append_all(out, manifest, s: BenchSettings, done: Callable) -> list[dict]:
    if s.append is None:
        return []
    (context, tokens), limit = s.append, position_limit(manifest)
    if limit is not None and context + tokens > limit:
        row = {"context": context, "tokens": tokens, "status": "skipped",
               "reason": f"positions up to {context + tokens - 1} needed, learned positions end at "
                         f"max_seq_len={limit}"}
    else:
        model = Model(out, backend=s.backend, device=s.device, num_slots=1, verify_hashes=False,
                      prefill_chunk=s.prefill_chunk)
        try:
            row = measure_append(model.backend, model.vocab_size, context, tokens, s.prefill_chunk, s.repeats)
        except LinexportError:
            raise  # the two paths disagree: a wrong result, not a point this machine cannot run
        except Exception as e:  # noqa: BLE001 - ORT/TensorRT raise their own types (e.g. out of memory)
            row = {"context": context, "tokens": tokens, "status": "skipped", "reason": _skip_reason(e)}
        finally:
            model.close()
    done()
    return [row]


def _skip_reason(e: Exception) -> str:
    """A failed point's reason: the exception's type and the first line of its message."""
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"


def _describe(out, manifest: Manifest, name: str) -> dict:
    """What the export is, with its state's size per slot: fixed bytes, plus bytes per cached
    token for a KV cache (a state with a named, growing dim)."""
    fixed = per_token = 0
    for st in manifest.states:
        size = np.dtype(st.dtype).itemsize * int(np.prod([d for d in st.shape[1:] if isinstance(d, int)]))
        if all(isinstance(d, int) for d in st.shape[1:]):
            fixed += size
        else:
            per_token += size
    return {"name": name, "path": str(out), "arch": manifest.arch, "precision": manifest.precision,
            "lowering": manifest.data["lowering"].get("option"), "state_bytes_per_slot": fixed,
            "state_bytes_per_token": per_token, "position_limit": position_limit(manifest)}


def export_names(outs: Sequence) -> list[str]:
    """Directory names, or the paths as given where two directories share a name."""
    names = [Path(out).resolve().name for out in outs]
    return [n if names.count(n) == 1 else str(out) for n, out in zip(names, outs)]


def machine_info() -> dict:
    info = {"platform": platform.platform(), "machine": platform.machine(), "python": sys.version.split()[0],
            "cpu_count": os.cpu_count(), "cpu": platform.processor() or None, "memory_bytes": None,
            "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    if hasattr(os, "sched_getaffinity"):
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    for path, key, field in (("/proc/cpuinfo", "cpu", "model name"),
                             ("/proc/meminfo", "memory_bytes", "MemTotal")):
        try:
            lines = Path(path).read_text().splitlines()
        except OSError:
            continue
        value = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith(field)), None)
        if value is not None:
            info[key] = int(value.split()[0]) * 1024 if key == "memory_bytes" else value
    return info


def versions(backend: str) -> dict:
    """Installed versions, read from package metadata (nothing heavy is imported)."""
    names = ["numpy", "onnxruntime", "onnxruntime-gpu"]
    if backend == "trt":
        names += ["tensorrt", "tensorrt-cu13", "tensorrt-rtx-cu13"]
    found = {"linexport": __version__}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found
