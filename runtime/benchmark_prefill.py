"""Prefill throughput and peak memory, one fresh process per (export, sequence length); with a
``chunk``, the same for chunked ingestion of one long prompt (``runtime.ingest``).

Why a fresh process: ONNX Runtime's CPU arena keeps what it once allocated, so a second
measurement in the same process would see the first one's memory and report too little. Each
child loads the session, takes its resident size as the baseline, resets the kernel's peak
counter (``/proc/self/clear_refs``), runs the prefill once cold and ``repeats`` times warm, and
reports the peak resident size over that baseline: the host memory the prefill itself needed.
With ``chunk`` each run is ``ingest(..., chunk)`` instead of one prefill call: continued prefills
of ``chunk`` tokens each, or, for a KV-cache baseline, which cannot continue, one call over the
whole prompt (the row's ``chunked`` says which).

    python -m linexport.runtime.benchmark_prefill '{"path": "out", "seq": 1024, ...}'   # a child
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

INGEST_DOC = ("ingest: like prefill, but each run is runtime.ingest over one prompt of `seq` tokens, "
              "`chunk` tokens per continued prefill call; chunked false: a KV-cache baseline, whose prefill "
              "cannot continue, ingested the prompt in one call")
MEMORY_DOC = ("peak_bytes: peak resident set size (VmHWM) of a fresh process during the prefill runs "
              "minus its resident size after loading the session, i.e. host memory the prefill added; "
              "on device 'cuda' or backend 'trt' device memory is not counted")


def measure_prefill(path, seq: int, batch: int, backend: str, device: str, repeats: int,
                    timeout_s: float, chunk: int | None = None) -> dict:
    """Runs one child; returns its measurement, or ``{"status": "skipped", "reason": ...}``.
    ``chunk``: ingest in continued prefills of that many tokens instead of one prefill call."""
    spec = {"path": str(path), "seq": seq, "batch": batch, "backend": backend, "device": device,
            "repeats": repeats, "chunk": chunk}
    cmd = [sys.executable, "-m", "linexport.runtime.benchmark_prefill", json.dumps(spec)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return _skipped(seq, f"timed out after {timeout_s:g} s")
    lines = done.stdout.strip().splitlines()
    result = None
    if lines:
        try:
            result = json.loads(lines[-1])
        except json.JSONDecodeError:
            pass  # the child died mid-write; the return code below says how
    if done.returncode == 0 and result and result.get("status") == "ok":
        return result
    if result and "reason" in result:
        return _skipped(seq, result["reason"])
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        hint = " (likely out of memory)" if done.returncode == -signal.SIGKILL else ""
        return _skipped(seq, f"the measuring process was killed by {name}{hint}")
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return _skipped(seq, f"the measuring process failed (exit {done.returncode}): {tail}")


def _skipped(seq: int, reason: str) -> dict:
    return {"seq": seq, "status": "skipped", "reason": reason}


def _child(spec: dict) -> dict:
    from linexport.runtime.ingest import ingest
    from linexport.runtime.model import Model

    seq, batch, chunk = spec["seq"], spec["batch"], spec.get("chunk")
    # The parent already checked the hashes; a child per point need not read the graphs twice.
    model = Model(spec["path"], backend=spec["backend"], device=spec["device"], num_slots=batch,
                  verify_hashes=False, prefill_chunk=chunk)
    ids = np.random.default_rng(seq).integers(0, model.vocab_size, (batch, seq), dtype=np.int64)
    lengths = np.full(batch, seq, np.int64)
    slots = list(range(batch))
    if chunk is None:
        def run():
            model.backend.prefill(ids, lengths, slots)
    else:
        def run():
            ingest(model.backend, ids, slots, np.zeros(batch, np.int64), chunk)
    _settle()
    peak_tracking = _reset_peak()
    baseline = status_bytes("VmRSS")
    start = time.perf_counter()
    run()
    cold = time.perf_counter() - start
    warm = []
    for _ in range(spec["repeats"]):
        start = time.perf_counter()
        run()
        warm.append(time.perf_counter() - start)
    median = float(np.median(warm)) if warm else cold
    peak = status_bytes("VmHWM") - baseline if peak_tracking else None
    row = {"seq": seq, "status": "ok", "tokens_per_s": batch * seq / median, "seconds_median": median,
           "seconds": warm, "cold_seconds": cold, "peak_bytes": peak, "baseline_bytes": baseline}
    if chunk is not None:
        row.update(chunk=chunk, chunked=bool(model.backend.continues_prefill))
    return row


def _settle() -> None:
    """Frees what is already garbage and hands the allocator's free pages back to the OS before
    the baseline is taken. Memory freed *after* the baseline (a garbage collection the prefill's
    allocations trigger, a heap trim) would otherwise lower the resident size under the
    baseline, and the peak over it would undercount what the prefill needed."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def _reset_peak() -> bool:
    """Sets VmHWM back to the current resident size (Linux); False where that is impossible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def status_bytes(field: str) -> int | None:
    """A /proc/self/status memory field (VmRSS, VmHWM, ...) in bytes; None off Linux."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return None


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    try:
        result = _child(spec)
    except MemoryError:
        result = _skipped(spec["seq"], "out of memory")
    # ORT and TensorRT raise their own exception types; whatever failed, the parent reports a skip.
    except Exception as e:  # noqa: BLE001
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        result = _skipped(spec["seq"], f"{type(e).__name__}: {first}")
    print(json.dumps(result), flush=True)
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
