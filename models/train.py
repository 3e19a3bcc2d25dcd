"""Trains the tiny byte-level demo models on the Python standard library's own sources.

Every machine with Python has that corpus, so the demo models can be retrained anywhere:

    linexport train --arch linear -o models/demo/linear.pt
"""

from __future__ import annotations

import hashlib
import math
import sysconfig
import time
from pathlib import Path

import numpy as np
import torch

from linexport.errors import LinexportError
from linexport.models import build_model
from linexport.models.registry import ARCHS
from linexport.models.checkpoint import save_checkpoint

# What `linexport train --arch NAME` trains (the bundled demo models' sizes): models/registry.py.
DEMO_CONFIGS = {name: arch.demo_config for name, arch in ARCHS.items()}


def python_corpus(max_bytes: int = 8 << 20, seed: int = 0) -> np.ndarray:
    """uint8 bytes of the stdlib's .py files (sorted, then shuffled by file with ``seed``)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "test" not in p.parts and "site-packages" not in p.parts)
    if not files:
        raise LinexportError(f"found no .py files under {root} to train on")
    rng = np.random.default_rng(seed)
    rng.shuffle(files)
    chunks, total = [], 0
    for path in files:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        chunks.append(data)
        total += len(data)
        if total >= max_bytes:
            break
    return np.frombuffer(b"\n".join(chunks), dtype=np.uint8)


def corpus_split(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) int64 bytes of ``python_corpus``: the last 5 % is held out."""
    data = torch.from_numpy(python_corpus(seed=seed).astype(np.int64))
    split = int(len(data) * 0.95)
    return data[:split], data[split:]


def split_digest(data: torch.Tensor) -> str:
    """sha256 of a split's bytes: says whether this machine's stdlib gives the same split."""
    return hashlib.sha256(data.to(torch.uint8).numpy().tobytes()).hexdigest()


@torch.no_grad()
def evaluate(model, data: torch.Tensor, seq_len: int = 256, batch_size: int = 32,
             max_windows: int | None = None) -> float:
    """Mean next-byte cross-entropy (nats/byte) over all of ``data``, cut into consecutive
    windows of ``seq_len`` predicted bytes (the last partial window dropped), or over the first
    ``max_windows`` of them: deterministic, so anyone can recompute a recorded figure."""
    n = (len(data) - 1) // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    if n < 1:
        raise LinexportError(f"expected at least {seq_len + 1} bytes to evaluate on, got {len(data)}")
    was_training = model.training
    model.eval()
    total = 0.0
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(start + batch_size, n)) * seq_len
        x = torch.stack([data[i:i + seq_len + 1] for i in idx.tolist()])
        logits = model(x[:, :-1])
        total += torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten(),
                                                   reduction="sum").item()
    model.train(was_training)
    return total / (n * seq_len)


def train(arch: str, out: Path, steps: int = 4000, batch_size: int = 16, seq_len: int = 256,
          lr: float = 3e-3, seed: int = 0, config: dict | None = None, val_windows: int | None = None,
          log=print) -> dict:
    """Trains a demo model and saves it to ``out``. Returns the final metrics; the validation
    loss is over the whole held-out split, or its first ``val_windows`` windows."""
    torch.manual_seed(seed)
    if config is None:
        if arch not in DEMO_CONFIGS:
            raise LinexportError(f"no demo config for arch {arch!r}; expected one of {sorted(DEMO_CONFIGS)}")
        config = DEMO_CONFIGS[arch]
    model = build_model(arch, config)
    train_data, val_data = corpus_split(seed)
    gen = torch.Generator().manual_seed(seed)

    def batch(source):
        idx = torch.randint(0, len(source) - seq_len - 1, (batch_size,), generator=gen)
        x = torch.stack([source[i:i + seq_len + 1] for i in idx.tolist()])
        return x[:, :-1], x[:, 1:]

    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    start = time.perf_counter()
    model.train()
    for step in range(1, steps + 1):
        x, y = batch(train_data)
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps:
            log(f"step {step}/{steps}  loss {loss.item():.3f}  ({time.perf_counter() - start:.0f} s)")
    seconds = round(time.perf_counter() - start, 1)  # training only, not the evaluation
    if val_windows is not None:
        val_data = val_data[:val_windows * seq_len + 1]
    metrics = {"train_loss": round(loss.item(), 4), "val_loss": round(evaluate(model, val_data, seq_len), 4),
               "val_bytes": len(val_data), "val_sha256": split_digest(val_data),
               "steps": steps, "batch_size": batch_size, "seq_len": seq_len, "lr": lr, "seed": seed,
               "threads": torch.get_num_threads(), "seconds": seconds,
               "parameters": sum(p.numel() for p in model.parameters())}
    save_checkpoint(model, out, extra={"training": {"corpus": "python-stdlib", **metrics}})
    log(f"saved {out}: val loss {metrics['val_loss']:.3f} nats/byte, {metrics['parameters']} parameters")
    return metrics
