"""The tiny models of the block archs (models/token_lm.py) that tests/models/ builds: per arch,
three variants: rotary with an odd head_dim (linear: with token shift, as its demo model),
learned positions with untied embeddings, and one head of dim 33 (linear also two with fla's
options). Sizes are odd so that shape
mix-ups show."""

import torch

from linexport.models import model_class

CHUNK = 16  # the linear models' chunk_size
SIZES = dict(vocab_size=61, d_model=40, n_layers=2, d_ff=56, max_seq_len=2048)
ARCH_SIZES = {"linear": dict(chunk_size=CHUNK)}
VARIANTS = {
    "linear": {
        "rotary-elu-d15-shift": dict(n_heads=3, head_dim=15, pos_emb="rotary", feature_map="elu",
                                     shift_tokens=True),
        "learned-relu-d8": dict(n_heads=2, head_dim=8, pos_emb="learned", feature_map="relu",
                                tie_embeddings=False),
        "rotary-relu-d33": dict(n_heads=1, head_dim=33, pos_emb="rotary", feature_map="relu"),
        # fla's linear_attn options (models/convert_fla.py): GQA, value heads of another width,
        # no positions, SwiGLU, the per-head output norm, the learnable map, unnormalised.
        "fla-gqa-hadamard-unnorm": dict(n_heads=4, n_kv_heads=2, head_dim=6, v_head_dim=9, pos_emb="none",
                                        mlp="swiglu", feature_map="elementwise_product", normalize=False,
                                        q_scale=6 ** -0.5, out_norm=True, tie_embeddings=False),
        "fla-rotary-gqa-relu-norm": dict(n_heads=3, n_kv_heads=1, head_dim=7, v_head_dim=5, pos_emb="rotary",
                                         mlp="swiglu", feature_map="relu", q_scale=0.4, out_norm=True,
                                         shift_tokens=True),
    },
    "softmax": {
        "rotary-d15": dict(n_heads=3, head_dim=15, pos_emb="rotary"),
        "learned-d8": dict(n_heads=2, head_dim=8, pos_emb="learned", tie_embeddings=False),
        "rotary-d33": dict(n_heads=1, head_dim=33, pos_emb="rotary"),
    },
    "reformer": {
        "rotary-h2-b4-c4": dict(n_heads=3, head_dim=15, n_hashes=2, n_buckets=4, bucket_size=4),
        "learned-h1-b8-c3": dict(n_heads=2, head_dim=8, n_hashes=1, n_buckets=8, bucket_size=3,
                                 pos_emb="learned", tie_embeddings=False),
        "rotary-h3-b2-c5": dict(n_heads=1, head_dim=33, n_hashes=3, n_buckets=2, bucket_size=5),
    },
}
BLOCK_ARCHS = tuple(VARIANTS)


def config_kwargs(arch, name, **overrides):
    return {**SIZES, **ARCH_SIZES.get(arch, {}), **VARIANTS[arch][name], **overrides}


def make_model(arch, name, **overrides):
    cls = model_class(arch)
    model = cls(cls.config_class(**config_kwargs(arch, name, **overrides))).eval()
    with torch.no_grad():  # larger weights than the init so attention is far from uniform
        for p in model.parameters():
            p.mul_(4.0) if p.dim() == 2 else None
    return model


def variant(arch, kind):
    """The arch's variant of ``kind``: "rotary" (d15), "learned" (d8) or "d33"."""
    index = {"rotary": 0, "learned": 1, "d33": 2}[kind]
    return list(VARIANTS[arch])[index]
