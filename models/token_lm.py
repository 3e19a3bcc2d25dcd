"""The shell shared by the block-structured archs (linear, softmax, reformer): token embeddings,
positions (rotary angles, or learned embeddings added to the input), the final norm and the
(optionally tied) LM head. Each arch adds its blocks, its attention and its state.

Positions are rotary (applied to q and k inside attention) or learned (``max_seq_len`` of
them). The config must have vocab_size, d_model, head_dim, pos_emb, rotary_base, max_seq_len,
tie_embeddings and norm_eps.
"""

from __future__ import annotations

import torch
from torch import nn

from linexport.errors import LinexportError
from linexport.models.base import PAST_SEQ, CausalLM, StateSpec, check_input_ids, length_mask
from linexport.models.layers import RMSNorm, rotary_angles


class TokenLM(CausalLM):
    def __init__(self, config, blocks):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        if config.pos_emb == "learned":
            self.pos_embed = nn.Embedding(config.max_seq_len, config.d_model)
        self.blocks = nn.ModuleList(blocks)
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.apply(_init_weights)

    def parallel_inputs(self, input_ids, lengths):
        """Checks input_ids [B, T] and lengths [B]; returns (x [B, T, C], mask [B, T] bool,
        cos, sin [B, 1, T, D/2] — None with learned positions)."""
        c = self.config
        check_input_ids(input_ids, lengths, c.vocab_size)
        B, T = input_ids.shape
        if c.pos_emb == "learned" and T > c.max_seq_len:
            raise LinexportError(f"sequence length {T} exceeds this model's learned positions "
                                 f"(max_seq_len={c.max_seq_len}); use shorter inputs")
        positions = torch.arange(T, device=input_ids.device).unsqueeze(0).expand(B, T)
        x, cos, sin = self._embed(input_ids, positions)
        return x, length_mask(lengths, B, T, input_ids.device), cos, sin

    def step_inputs(self, input_ids, position):
        """input_ids [B], position [B] -> (x [B, C], cos, sin [B, 1, 1, D/2] or None)."""
        x, cos, sin = self._embed(input_ids[:, None], position[:, None])
        return x[:, 0], cos, sin

    def logits(self, x):
        return self.lm_head(self.norm(x))

    def _embed(self, input_ids, positions):
        c = self.config
        x = self.embed(input_ids)
        if c.pos_emb == "learned":
            return x + self.pos_embed(positions), None, None
        cos, sin = rotary_angles(positions, c.head_dim, c.rotary_base)
        return x, cos.unsqueeze(1), sin.unsqueeze(1)


def kv_cache_specs(config, key_doc: str) -> list[StateSpec]:
    """The KV-cache state of the softmax-style baselines: ``{layer}.key`` / ``{layer}.value``,
    fp32 [batch, heads, past_seq, head_dim], one entry per token so far."""
    shape = ("batch", config.n_heads, PAST_SEQ, config.head_dim)
    specs = []
    for i in range(config.n_layers):
        specs.append(StateSpec(f"{i}.key", shape, torch.float32, key_doc))
        specs.append(StateSpec(f"{i}.value", shape, torch.float32, "values of every token so far"))
    return specs


def _init_weights(module):
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
