"""`linexport verify OUT`: the exported graphs in ONNX Runtime against the PyTorch source model.

For a ragged batch of random prompts and one of real text prompts it compares

- prefill logits and every ``present.*`` state,
- ``steps`` decode steps (the same greedy tokens fed to both; logits and states),
- ONNX Runtime's prefill(T) + k decode steps against its own prefill(T + k),
- where the prefill continues from a state (fixed-size states): ONNX Runtime's prefill(a) then
  a continued prefill(b) against PyTorch's prefill(a + b), with ragged splits (a = 0, mid-chunk),

each as max abs and max relative error (``max|a - b| / max|b|``). KV caches (the softmax
baseline) are compared whole, padding included: it is zeros in both (contract/manifest.py), and a
cache of the wrong length fails. Tolerances are dtype-aware:
fp32 graphs must match the fp32 model to ``FP32_REL_TOL``; fp16 graphs may be at most twice as
far from the fp32 model as PyTorch's own fp16 model is on the same inputs.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from linexport.errors import LinexportError
from linexport.contract.checks import FP32_REL_TOL, Check, errors
from linexport.export.exporter import source_record
from linexport.contract.manifest import load_manifest, prefill_continues
from linexport.export.ort_session import OrtGraphs

LOW_PRECISION_FACTOR = 2.0
REAL_PROMPTS = ("def fibonacci(n):\n    ", "import os\nimport sys\n\n", "class Stack:\n    def push(self, x):",
                "# Linear attention keeps a fixed-size state.\n")


def verify_export(root, steps: int = 8, checkpoint=None, log=lambda message: None) -> list[Check]:
    from linexport.models.checkpoint import load_checkpoint

    root = Path(root)
    manifest = load_manifest(root)
    source = Path(checkpoint).absolute() if checkpoint else Path(manifest["source"]["checkpoint"])
    if not source.exists():
        raise LinexportError(f"expected the source checkpoint {source} named in {root}/linexport.json, "
                             "but it is missing; pass its new location with --model")
    model, _ = load_checkpoint(source)
    hashes = lambda record: {k: v for k, v in record.items() if k != "checkpoint"}  # noqa: E731
    if hashes(source_record(source)) != hashes(manifest["source"]):
        raise LinexportError(f"expected {source} to be the checkpoint this export was made from, got a "
                             "file with a different sha256; re-export, or pass the original with --model")
    low = copy.deepcopy(model).half() if manifest["precision"] == "fp16" else None
    log(f"loading {root} in ONNX Runtime ({manifest['lowering']['option']} lowering, "
        f"{manifest['precision']}, opset {manifest['opset']})")
    graphs = OrtGraphs(root, manifest)

    checks = []
    for label, (ids, lengths) in _prompt_sets(manifest, model, steps).items():
        log(f"comparing {label} prompts: batch {len(lengths)}, lengths {lengths.tolist()}")
        checks += _compare(label, model, low, graphs, ids, lengths, steps, manifest["full_logits"])
        if prefill_continues(manifest):
            checks += _compare_continued(label, model, low, graphs, ids, lengths, manifest["full_logits"])
    return checks


def _prompt_sets(manifest: dict, model, steps: int) -> dict:
    vocab = manifest["vocab_size"]
    limit = getattr(model.config, "max_seq_len", None) if getattr(model.config, "pos_emb", "") == "learned" else None
    T = 75 if limit is None else max(2, min(75, limit - steps))  # crosses a 64-token chunk boundary
    g = torch.Generator().manual_seed(0)
    sets = {"random": (torch.randint(0, vocab, (3, T), generator=g), torch.tensor([T, max(1, T // 2), 1]))}
    if manifest["tokenizer"].get("type") == "bytes" and vocab >= 256:
        encoded = [list(p.encode("utf-8"))[: T] for p in REAL_PROMPTS]
        width = max(map(len, encoded))
        ids = torch.zeros(len(encoded), width, dtype=torch.int64)
        for i, e in enumerate(encoded):
            ids[i, : len(e)] = torch.tensor(e)
        sets["text"] = (ids, torch.tensor([len(e) for e in encoded]))
    return sets


def _compare(label, model, low, graphs: OrtGraphs, ids, lengths, steps, full_logits) -> list[Check]:
    names = graphs.state_names
    with torch.no_grad():
        ref = _torch_run(model, ids, lengths, steps, full_logits)
        ref_low = _torch_run(low, ids, lengths, steps, full_logits, tokens=ref["tokens"]) if low else None
    got = _ort_run(graphs, ids, lengths, ref["tokens"], full_logits)

    checks = []

    def add(what, got_value, ref_value, low_value):
        abs_err, rel_err = errors(got_value, ref_value)
        tol = FP32_REL_TOL
        if low_value is not None:
            tol = max(tol, LOW_PRECISION_FACTOR * errors(low_value, ref_value)[1])
        checks.append(Check(f"{label}: {what}", abs_err, rel_err, tol))

    mask = _real_positions(ids, lengths) if full_logits else None
    for key in ["logits", *names]:
        sel = (lambda a: np.asarray(a)[mask]) if (key == "logits" and mask is not None) else np.asarray
        out = "logits" if key == "logits" else f"present.{key}"
        add(f"prefill {out}", sel(got["prefill"][key]), sel(ref["prefill"][key]),
            sel(ref_low["prefill"][key]) if ref_low else None)
    if steps:
        for key in ["logits", *names]:
            out = "logits" if key == "logits" else f"present.{key}"
            add(f"decode x{steps} {out}", got["decode"][key], ref["decode"][key],
                ref_low["decode"][key] if ref_low else None)
        # ORT's own prefill(T + k) against its prefill(T) + k steps. In low precision each side
        # may be LOW_PRECISION_FACTOR x PyTorch's fp16 error from the fp32 model (checked above),
        # so by the triangle inequality they may differ by the sum of both allowances.
        for key in ["logits", *names]:
            out = "logits" if key == "logits" else f"present.{key}"
            tol = FP32_REL_TOL
            if ref_low:
                allowance = (errors(ref_low["decode"][key], ref["decode"][key])[1]
                             + errors(ref_low["extended"][key], ref["extended"][key])[1])
                tol = max(tol, LOW_PRECISION_FACTOR * allowance)
            abs_err, rel_err = errors(got["decode"][key], got["extended"][key])
            checks.append(Check(f"{label}: prefill(T)+{steps} steps == prefill(T+{steps}) {out}",
                                abs_err, rel_err, tol))
    return checks


def _compare_continued(label, model, low, graphs: OrtGraphs, ids, lengths, full_logits) -> list[Check]:
    """ORT's prefill(first part) then its continued prefill(rest) against PyTorch's prefill of
    the whole: the split is ragged (row b after lengths[b] // 3 + b tokens: a = 0 for a one-token
    prompt, others mid-chunk), so rows continue from different positions."""
    first = torch.clamp(lengths // 3 + torch.arange(len(lengths)), max=lengths - 1)  # >= 1 new token each
    rest = lengths - first
    a_ids = torch.zeros(len(lengths), max(1, int(first.max())), dtype=torch.int64)
    b_ids = torch.zeros(len(lengths), int(rest.max()), dtype=torch.int64)
    for row, (a, n) in enumerate(zip(first.tolist(), lengths.tolist())):
        a_ids[row, :a] = ids[row, :a]
        b_ids[row, :n - a] = ids[row, a:n]
    _, state = graphs.prefill(a_ids.numpy(), first.numpy())
    logits, state = graphs.prefill(b_ids.numpy(), rest.numpy(), first.numpy(), state)
    if full_logits:
        logits = logits[np.arange(len(lengths)), rest.numpy() - 1]
    with torch.no_grad():
        want = {low_or_ref: _last_and_state(m, ids, lengths, full_logits)
                for low_or_ref, m in (("ref", model), ("low", low)) if m is not None}
    checks = []
    for key, got in [("logits", logits), *state.items()]:
        out = "logits" if key == "logits" else f"present.{key}"
        abs_err, rel_err = errors(got, want["ref"][key])
        tol = FP32_REL_TOL
        if "low" in want:
            tol = max(tol, LOW_PRECISION_FACTOR * errors(want["low"][key], want["ref"][key])[1])
        checks.append(Check(f"{label}: prefill(a) + continued prefill(b) == prefill(a+b) {out}",
                            abs_err, rel_err, tol))
    return checks


def _last_and_state(model, ids, lengths, full_logits) -> dict:
    logits, state = model.prefill(ids, lengths, full_logits=full_logits)
    if full_logits:
        logits = logits.gather(1, (lengths - 1).view(-1, 1, 1).expand(-1, 1, logits.shape[-1])).squeeze(1)
    return {"logits": logits.float().numpy(), **_np_state(state)}


def _real_positions(ids, lengths):
    return (np.arange(ids.shape[1])[None, :] < lengths.numpy()[:, None])


def _torch_run(model, ids, lengths, steps, full_logits, tokens=None) -> dict:
    """PyTorch: prefill, `steps` greedy decode steps (or the given tokens), prefill(T + steps)."""
    logits, state = model.prefill(ids, lengths, full_logits=full_logits)
    result = {"prefill": {"logits": logits.float().numpy(), **_np_state(state)}}
    last = logits if not full_logits else logits.gather(
        1, (lengths - 1).view(-1, 1, 1).expand(-1, 1, logits.shape[-1])).squeeze(1)
    chosen = []
    for i in range(steps):
        token = last.float().argmax(-1) if tokens is None else tokens[:, i]
        chosen.append(token)
        last, state = model.step(token, lengths + i, state)
    result["tokens"] = torch.stack(chosen, 1) if chosen else torch.zeros(len(lengths), 0, dtype=torch.int64)
    result["decode"] = {"logits": last.float().numpy(), **_np_state(state)}
    if steps:
        ext_ids, ext_lengths = _extend(ids, lengths, result["tokens"])
        ext_logits, ext_state = model.prefill(ext_ids, ext_lengths)
        result["extended"] = {"logits": ext_logits.float().numpy(), **_np_state(ext_state)}
    return result


def _ort_run(graphs: OrtGraphs, ids, lengths, tokens, full_logits) -> dict:
    ids_np, lengths_np = ids.numpy(), lengths.numpy()
    logits, state = graphs.prefill(ids_np, lengths_np)
    result = {"prefill": {"logits": logits, **state}}
    last = logits if not full_logits else logits[np.arange(len(lengths_np)), lengths_np - 1]
    for i in range(tokens.shape[1]):
        last, state = graphs.decode(tokens[:, i].numpy(), lengths_np + i, state)
    result["decode"] = {"logits": last, **state}
    if tokens.shape[1]:
        ext_ids, ext_lengths = _extend(ids, lengths, tokens)
        ext_logits, ext_state = graphs.prefill(ext_ids.numpy(), ext_lengths.numpy())
        if full_logits:
            ext_logits = ext_logits[np.arange(len(lengths_np)), ext_lengths.numpy() - 1]
        result["extended"] = {"logits": ext_logits, **ext_state}
    return result


def _extend(ids, lengths, tokens):
    """Right-padded ids with ``tokens`` written after each sequence's last real token."""
    k = tokens.shape[1]
    out = torch.zeros(ids.shape[0], ids.shape[1] + k, dtype=torch.int64)
    out[:, : ids.shape[1]] = ids
    for b, n in enumerate(lengths.tolist()):
        out[b, n: n + k] = tokens[b]
        out[b, n + k:] = 0
    return out, lengths + k


def _np_state(state: dict) -> dict:
    return {name: t.float().numpy() for name, t in state.items()}
