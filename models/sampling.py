"""Autoregressive sampling in PyTorch through the recurrent step: the reference generator.

The ONNX Runtime / TensorRT runtime must produce the same tokens (greedy) as this.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator

import torch

from linexport.errors import LinexportError
from linexport.models.base import CausalLM


@torch.no_grad()
def generate_ids(model: CausalLM, prompt_ids: list[int], max_new_tokens: int, temperature: float = 0.0,
                 top_k: int = 0, generator: torch.Generator | None = None) -> Iterator[int]:
    """Prefill ``prompt_ids`` in parallel, then one recurrent step per new token (batch 1)."""
    if not prompt_ids:
        raise LinexportError("expected a non-empty prompt")
    ids = torch.tensor([prompt_ids], dtype=torch.int64)
    logits, state = model.prefill(ids, torch.tensor([len(prompt_ids)]))
    position = len(prompt_ids)
    for _ in range(max_new_tokens):
        token = pick_token(logits[0], temperature, top_k, generator)
        yield token
        logits, state = model.step(torch.tensor([token]), torch.tensor([position]), state)
        position += 1


def pick_token(logits: torch.Tensor, temperature: float, top_k: int, generator=None) -> int:
    if temperature <= 0:
        return int(logits.argmax())
    logits = logits.float() / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))


def generate_bytes(model: CausalLM, prompt: str, max_new_tokens: int, temperature: float = 0.0,
                   top_k: int = 0, generator=None) -> Iterator[str]:
    """Byte-level models: yields decoded text pieces as complete UTF-8 characters arrive."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for token in generate_ids(model, list(prompt.encode("utf-8")), max_new_tokens, temperature,
                              top_k, generator):
        piece = decoder.decode(bytes([token]))
        if piece:
            yield piece
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail
