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

A quantized export (its manifest's ``quantization``) computes with other weights than the model,
so it is held to quantization's own measures against the float model: over ``QUANT_STEPS``
teacher-forced decode steps after each prompt, the share of positions whose argmax differs
from the model's and the 99th percentile of the per-position logit error (max |a - b| /
max |b|), each under the scheme's ``QUANT_TOL``. Against itself it is held exactly as tight as a
float export: prefill(T) + k steps == prefill(T + k), and prefill(a) + continued prefill(b) ==
its own prefill(a + b). First, the manifest's record must describe the graphs: the count of
quantized-weight nodes (and their kind) in each graph, or verify refuses the export.
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
QUANT_STEPS = 32
# scheme -> (argmax disagreement at confident positions, p99 per-position logit error) allowed
# against the float model. What weight rounding does on the demo models (README, "Quantization"):
# the p99 measured there is <= 1.7e-2 for int8 and <= 0.34 for int4 (blocks of 32 or 128; GAU's
# random prompts are the worst case), no confident argmax flipped; a broken graph (a wrong
# scale, a transposed weight) is off by ~100 % and flips most argmaxes.
QUANT_TOL = {"int8": (0.05, 0.05), "int4": (0.15, 0.5)}
# A position counts for the argmax check where the float model's top probability leads the
# second by this much: elsewhere the model itself hardly prefers one token.
QUANT_CONFIDENT = 0.2
# int8 activations (MatMulNBits accuracy level 4) are rounded to 1/127 of each block's largest
# value; the chunked prefill and the one-token step compute them with fp32 differences of
# ~1e-7, which flip single roundings: the export against itself then agrees to about one
# quantum, not to FP32_REL_TOL (measured on the demo models: <= 5e-3).
INT8_ACTIVATION_TOL = 1 / 127
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
    quant = manifest.get("quantization")
    if quant:
        check_quant_record(root, manifest)
    log(f"loading {root} in ONNX Runtime ({manifest['lowering']['option']} lowering, "
        f"{manifest['precision']}, opset {manifest['opset']}"
        f"{', ' + quant['scheme'] + ' ' + quant['format'] + ' weights' if quant else ''})")
    graphs = OrtGraphs(root, manifest)

    checks = []
    for label, (ids, lengths) in _prompt_sets(manifest, model, max(steps, QUANT_STEPS if quant else 0)).items():
        log(f"comparing {label} prompts: batch {len(lengths)}, lengths {lengths.tolist()}")
        checks += _compare(label, model, low, graphs, ids, lengths, steps, manifest["full_logits"], quant)
        if quant:
            checks += _compare_quantized(label, model, graphs, ids, lengths, manifest["full_logits"],
                                         QUANT_TOL[quant["scheme"]])
        if prefill_continues(manifest):
            checks += _compare_continued(label, model, low, graphs, ids, lengths, manifest["full_logits"], quant)
    return checks


def check_quant_record(root: Path, manifest: dict) -> None:
    """Refuses an export whose ``quantization`` record does not describe its graphs: each graph
    holds exactly the recorded number of quantized-weight nodes, all of the recorded format's
    kind (the record is validated, the graphs hashed; this ties the two together)."""
    import onnx
    from linexport.export.quantize import QUANTIZED_OPS, quantized_op_counts

    quant = manifest["quantization"]
    for name, want in quant["nodes"].items():
        entry = manifest["graphs"][name]
        counts = quantized_op_counts(onnx.load(str(root / entry["file"]), load_external_data=False))
        kinds = set(QUANTIZED_OPS[quant["format"]])
        if sum(counts.values()) != want or not set(counts) <= kinds or ("Gather" in quant["weights"]) != (
                "GatherBlockQuantized" in counts):
            raise LinexportError(
                f"{root}/linexport.json records {want} {quant['format']} quantized weights "
                f"({quant['weights']}) in the {name} graph, which holds {dict(counts) or 'none'}: the record "
                f"was altered; re-export with `linexport onnx --quantize {quant['scheme']}`")


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


def self_tol(quant: dict | None) -> float:
    """The export against itself (prefill(T) + k == prefill(T + k), continued prefill): fp32's
    tolerance, or one int8 activation quantum where the graph computes in int8."""
    return INT8_ACTIVATION_TOL if quant and quant["accuracy_level"] == 4 else FP32_REL_TOL


def _compare(label, model, low, graphs: OrtGraphs, ids, lengths, steps, full_logits, quant=None) -> list[Check]:
    """With ``quant`` (the manifest's record), only the export against itself: the model
    comparison is ``_compare_quantized``'s."""
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
    for key in [] if quant else ["logits", *names]:
        sel = (lambda a: np.asarray(a)[mask]) if (key == "logits" and mask is not None) else np.asarray
        out = "logits" if key == "logits" else f"present.{key}"
        add(f"prefill {out}", sel(got["prefill"][key]), sel(ref["prefill"][key]),
            sel(ref_low["prefill"][key]) if ref_low else None)
    if steps:
        for key in [] if quant else ["logits", *names]:
            out = "logits" if key == "logits" else f"present.{key}"
            add(f"decode x{steps} {out}", got["decode"][key], ref["decode"][key],
                ref_low["decode"][key] if ref_low else None)
        # ORT's own prefill(T + k) against its prefill(T) + k steps. In low precision each side
        # may be LOW_PRECISION_FACTOR x PyTorch's fp16 error from the fp32 model (checked above),
        # so by the triangle inequality they may differ by the sum of both allowances.
        for key in ["logits", *names]:
            out = "logits" if key == "logits" else f"present.{key}"
            tol = self_tol(quant)
            if ref_low:
                allowance = (errors(ref_low["decode"][key], ref["decode"][key])[1]
                             + errors(ref_low["extended"][key], ref["extended"][key])[1])
                tol = max(tol, LOW_PRECISION_FACTOR * allowance)
            abs_err, rel_err = errors(got["decode"][key], got["extended"][key])
            checks.append(Check(f"{label}: prefill(T)+{steps} steps == prefill(T+{steps}) {out}",
                                abs_err, rel_err, tol))
    return checks


def _compare_continued(label, model, low, graphs: OrtGraphs, ids, lengths, full_logits, quant=None) -> list[Check]:
    """ORT's prefill(first part) then its continued prefill(rest) against PyTorch's prefill of
    the whole (with ``quant``: against ORT's own): the split is ragged (row b after
    lengths[b] // 3 + b tokens: a = 0 for a one-token prompt, others mid-chunk), so rows continue
    from different positions."""
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
    if quant:  # the allowance of fp16 (from PyTorch's fp16 model) stays; the reference is ORT's own
        whole_logits, whole_state = graphs.prefill(ids.numpy(), lengths.numpy())
        if full_logits:
            whole_logits = whole_logits[np.arange(len(lengths)), lengths.numpy() - 1]
        own = {"logits": whole_logits, **whole_state}
    checks = []
    for key, got in [("logits", logits), *state.items()]:
        out = "logits" if key == "logits" else f"present.{key}"
        abs_err, rel_err = errors(got, own[key] if quant else want["ref"][key])
        tol = self_tol(quant)
        if "low" in want:
            tol = max(tol, LOW_PRECISION_FACTOR * errors(want["low"][key], want["ref"][key])[1])
        checks.append(Check(f"{label}: prefill(a) + continued prefill(b) == prefill(a+b) {out}",
                            abs_err, rel_err, tol))
    return checks


def _compare_quantized(label, model, graphs: OrtGraphs, ids, lengths, full_logits, tol) -> list[Check]:
    """The quantized export against the float model over QUANT_STEPS teacher-forced decode
    steps after the prompts (the model's greedy tokens fed to both): the share of positions whose
    argmax differs, and the 99th percentile of the per-position logit error."""
    with torch.no_grad():
        logits, state = model.prefill(ids, lengths, full_logits=full_logits)
        if full_logits:
            logits = logits[torch.arange(len(lengths)), lengths - 1]
        ref, tokens = [logits.float().numpy()], []
        for i in range(QUANT_STEPS):
            tokens.append(torch.from_numpy(ref[-1].argmax(-1)))
            logits, state = model.step(tokens[-1], lengths + i, state)
            ref.append(logits.float().numpy())
    got_logits, got_state = graphs.prefill(ids.numpy(), lengths.numpy())
    if full_logits:
        got_logits = got_logits[np.arange(len(lengths)), lengths.numpy() - 1]
    got = [got_logits]
    for i, token in enumerate(tokens):
        got_logits, got_state = graphs.decode(token.numpy(), lengths.numpy() + i, got_state)
        got.append(got_logits)
    ref, got = np.concatenate(ref).astype(np.float64), np.concatenate(got).astype(np.float64)
    probs = np.exp(ref - ref.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    top2 = np.sort(probs, -1)[:, -2:]
    confident = top2[:, 1] - top2[:, 0] >= QUANT_CONFIDENT
    flips = ref.argmax(-1)[confident] != got.argmax(-1)[confident]
    disagree = float(flips.mean()) if flips.size else 0.0
    per_row = np.abs(got - ref).max(-1) / np.maximum(np.abs(ref).max(-1), 1e-30)
    rows = len(per_row)
    return [Check(f"{label}: argmax differs from the float model's (share of {int(confident.sum())} confident "
                  f"positions)", float(flips.sum()), disagree, tol[0]),
            Check(f"{label}: logit error vs the float model, p99 over {rows} positions (median "
                  f"{np.median(per_row):.2e})", float(np.abs(got - ref).max()), float(np.percentile(per_row, 99)),
                  tol[1])]


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
