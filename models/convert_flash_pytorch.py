"""Import a FLASH-pytorch ``FLASHTransformer(causal=True)`` state_dict as a linexport ``flash`` model.

The weights tell dims, depth, vocab, query/key dim, expansion, norm type and rotary dims; what
they cannot tell (group size, token shift, attention function, causality) comes from options
whose defaults are the package's own — except ``causal``, whose package default (False) we
cannot decode with, so a non-causal model is refused. Anything we cannot reproduce exactly is
refused too.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from linexport.errors import LinexportError
from linexport.models.checkpoint import read_torch_file, save_checkpoint
from linexport.models.flash import FlashConfig, FlashLM

_LAYER_KEY = re.compile(r"layers\.(\d+)\.(.+)")
_RENAME = {  # FLASH-pytorch layer key -> ours
    "to_hidden.0.weight": "to_hidden.weight", "to_hidden.0.bias": "to_hidden.bias",
    "to_qk.0.weight": "to_qk.weight", "to_qk.0.bias": "to_qk.bias",
    "qk_offset_scale.gamma": "gamma", "qk_offset_scale.beta": "beta",
    "to_out.weight": "to_out.weight", "to_out.bias": "to_out.bias",
    "rel_pos_bias.relative_attention_bias.weight": "rel_pos_bias.weight",
    "norm.g": "norm.g", "norm.weight": "norm.weight", "norm.bias": "norm.bias",
}
_TOP = {"token_emb.weight": "token_emb.weight", "abs_pos_emb.scale": "abs_pos_scale",
        "to_logits.0.weight": "final_norm.weight", "to_logits.0.bias": "final_norm.bias",
        "to_logits.1.weight": "lm_head.weight", "to_logits.1.bias": "lm_head.bias"}


def load_flash_pytorch_state_dict(path) -> dict:
    path = Path(path)
    if not path.exists():
        raise LinexportError(f"{path} does not exist: expected a FLASHTransformer state_dict saved "
                             "with torch.save(model.state_dict(), path)")
    try:
        sd = read_torch_file(path, "a FLASHTransformer state_dict saved with torch.save(model.state_dict(), path)")
    except LinexportError as e:
        raise LinexportError(f"{path} could not be loaded as a plain state_dict: {e}") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise LinexportError(f"expected {path} to hold a FLASHTransformer state_dict (a dict of tensors)")
    return sd


def _unsupported(key: str) -> LinexportError:
    return LinexportError(f"unsupported FLASH-pytorch weight {key!r}: expected only the weights of "
                          "FLASHTransformer(causal=True) from flash-pytorch 0.1.9, got a module this converter "
                          "does not know. Convert a plain FLASHTransformer state_dict")


def _expansion_for(hidden: int, dim: int) -> float:
    """A float e with int(e · dim) == hidden, as FLASH computes hidden_dim (hidden / dim itself can
    round to just below hidden after the multiplication)."""
    e = hidden / dim
    for _ in range(4):
        if int(e * dim) == hidden:
            return e
        e = math.nextafter(e, math.inf)
    raise LinexportError(f"expected a hidden size int(expansion × {dim}), got {hidden}: not a FLASHTransformer layer")


def convert_flash_pytorch(sd: dict, group_size: int = 256, shift_tokens: bool = True,
                          laplace_attn: bool = False, causal: bool = True) -> FlashLM:
    """Builds our model from a causal ``FLASHTransformer`` state_dict.

    ``group_size``, ``shift_tokens``, ``laplace_attn`` and ``causal`` are the constructor
    arguments the weights do not record; pass the ones the model was built with."""
    if not causal:
        raise LinexportError("expected a FLASHTransformer built with causal=True, got causal=False: a "
                             "non-causal model attends to later tokens and cannot decode token by token. "
                             "Train it with causal=True")
    if group_size < 1:
        raise LinexportError(f"expected --group-size >= 1, got {group_size}")
    for key in ("token_emb.weight", "to_logits.1.weight", "layers.0.to_qk.0.weight", "layers.0.to_hidden.0.weight"):
        if key not in sd:
            raise LinexportError(f"expected a FLASH-pytorch FLASHTransformer state_dict, got one without key "
                                 f"{key!r}: not a FLASHTransformer (a bare GAU/FLASH layer is not supported). "
                                 "Save FLASHTransformer(...).state_dict()")
    if sd["token_emb.weight"].dim() != 2:
        raise LinexportError(f"expected token_emb.weight of shape [num_tokens, dim], got "
                             f"{list(sd['token_emb.weight'].shape)}")
    vocab, dim = sd["token_emb.weight"].shape
    layers = sorted({int(m.group(1)) for k in sd if (m := _LAYER_KEY.fullmatch(k))})
    depth = layers[-1] + 1
    if layers != list(range(depth)):
        raise LinexportError(f"expected the weights of layers 0..{depth - 1}, got layers {layers}: layers "
                             f"{sorted(set(range(depth)) - set(layers))} are missing. Save the whole model's "
                             "state_dict")
    qk_dim = sd["layers.0.to_qk.0.weight"].shape[0]
    hidden = sd["layers.0.to_hidden.0.weight"].shape[0] // 2
    norm = "scalenorm" if "layers.0.norm.g" in sd else "layernorm"
    # FLASHTransformer shares one RotaryEmbedding(min(32, query_key_dim)) across its layers; the
    # state_dict holds its frequencies once per layer. Only the fixed theta=10000 ones convert.
    for i in range(depth):
        if f"layers.{i}.rotary_pos_emb.freqs" not in sd:
            raise LinexportError(f"expected a rotary embedding in every FLASHTransformer layer, got none in "
                                 f"layer {i} (key 'layers.{i}.rotary_pos_emb.freqs' is missing)")
    freqs = sd["layers.0.rotary_pos_emb.freqs"]
    rotary_dim = 2 * freqs.numel()
    default = 1.0 / (10000 ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim))
    for i in range(depth):
        f = sd[f"layers.{i}.rotary_pos_emb.freqs"]
        if f.shape != default.shape or not torch.allclose(f.float(), default, rtol=1e-6, atol=0):
            raise LinexportError(f"expected layer {i}'s rotary frequencies to be the default theta=10000 ones "
                                 f"for {rotary_dim} dims, got others (learned or rescaled rotary): not supported")
    expansion = _expansion_for(hidden, dim)

    config = FlashConfig(vocab_size=vocab, d_model=dim, n_layers=depth, qk_dim=qk_dim, expansion=expansion,
                         chunk_size=group_size, norm=norm, shift_tokens=shift_tokens,
                         attn_fn="laplace" if laplace_attn else "relu2", rel_pos_bias=True,
                         rotary_dim=rotary_dim, abs_pos_emb=True)
    model = FlashLM(config)
    ours = {}
    known = {"abs_pos_emb.inv_freq"}
    for key, value in sd.items():
        if key in _TOP:
            ours[_TOP[key]] = value
        elif (m := _LAYER_KEY.fullmatch(key)):
            i, rest = m.groups()
            if rest == "rotary_pos_emb.freqs":
                continue  # checked above; we compute the same frequencies
            if rest not in _RENAME:
                raise _unsupported(key)
            ours[f"layers.{i}.{_RENAME[rest]}"] = value
        elif key not in known:
            raise _unsupported(key)
    inv_freq = sd.get("abs_pos_emb.inv_freq")
    if inv_freq is not None:
        expected = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
        if not torch.allclose(inv_freq.float(), expected, rtol=1e-6, atol=0):
            raise LinexportError("expected abs_pos_emb.inv_freq to be the default sinusoid (base 10000), got "
                                 "other frequencies: not supported")
    expected_keys = set(model.state_dict())
    missing, extra = sorted(expected_keys - set(ours)), sorted(set(ours) - expected_keys)
    if missing or extra:
        raise LinexportError(f"the FLASH-pytorch weights do not map onto a flash model: missing {missing[:5]}, "
                             f"unexpected {extra[:5]}")
    for key, value in ours.items():
        if tuple(value.shape) != tuple(model.state_dict()[key].shape):
            raise LinexportError(f"weight {key!r} has shape {list(value.shape)}, expected "
                                 f"{list(model.state_dict()[key].shape)} (from layer 0 and the embedding): "
                                 "all layers of a FLASHTransformer share one shape")
        if not bool(torch.isfinite(value).all()):
            raise LinexportError(f"expected finite weights, got NaN or Inf in {key!r}: the source model "
                                 "is damaged or its training diverged; convert an earlier checkpoint")
    model.load_state_dict({k: v.float() for k, v in ours.items()})
    return model.eval()


def convert_file(src, out, group_size: int = 256, shift_tokens: bool = True, laplace_attn: bool = False,
                 causal: bool = True) -> FlashLM:
    model = convert_flash_pytorch(load_flash_pytorch_state_dict(src), group_size, shift_tokens, laplace_attn, causal)
    options = {"group_size": group_size, "shift_tokens": shift_tokens, "laplace_attn_fn": laplace_attn,
               "causal": causal}
    save_checkpoint(model, out, extra={"converted_from": {"package": "flash-pytorch", "source": Path(src).name,
                                                          "options": options}})
    return model
