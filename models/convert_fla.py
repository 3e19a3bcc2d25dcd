"""Import a flash-linear-attention (``fla``) ``linear_attn`` checkpoint as a linexport ``linear`` model.

The source is the folder ``LinearAttentionForCausalLM.save_pretrained`` writes: ``config.json``
(``"model_type": "linear_attn"``) and its weights as ``*.safetensors`` (one file or shards; a
pickled ``pytorch_model.bin`` is refused: checkpoints are untrusted and safetensors is what
``save_pretrained`` writes). A ``tokenizer.json`` in the folder travels along.

fla's block is ours with its options on (models/linear.py): pre-norm RMSNorm blocks, no
positions, q/k/v projections (k and v with ``num_kv_heads`` heads, repeated to the query heads),
φ on q and k, fla's linear attention, a per-head RMSNorm of the output, o_proj, then a SwiGLU
MLP. fla's attention, with K the key head dim and scale = K ** -0.5 (what the layer uses):

    unnormalised (``norm_feature_map`` false, the default): o = scale · φ(q)ᵀ S
    normalised:  o = (scale · φ(q))ᵀ S / ((scale · φ(q))ᵀ z + 1e-10)

so ``q_scale = K ** -0.5`` and, normalised, ``eps = 1e-10``: the same formula term for term.
Every config field fla reads is mapped or checked; a value that changes the math in a way our
model does not reproduce is refused with the field's name.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import torch

from linexport.errors import LinexportError
from linexport.files import atomic_write, check_tokenizer_json
from linexport.models.checkpoint import save_checkpoint
from linexport.models.linear import LinearConfig, LinearLM

MODEL_TYPE = "linear_attn"
FEATURE_MAPS = ("elu", "relu", "identity", "elementwise_product")
ATTN_MODES = ("chunk", "fused_chunk", "fused_recurrent")  # kernels of one math
FLA_NORMALISED_EPS = 1e-10  # fla.ops.linear_attn: the normaliser's constant
_LAYER_KEY = re.compile(r"model\.layers\.(\d+)\.(.+)")
_LAYER_RENAME = {  # fla layer key -> ours under blocks.{i}.
    "attn_norm.weight": "norm1.weight", "mlp_norm.weight": "norm2.weight",
    "attn.o_proj.weight": "attn.out.weight", "attn.norm.weight": "attn.out_norm.weight",
    "mlp.gate_proj.weight": "mlp.gate.weight", "mlp.up_proj.weight": "mlp.up.weight",
    "mlp.down_proj.weight": "mlp.down.weight",
    **{f"attn.feature_map_{x}.{layer}.{p}": f"attn.feature_{x}.{layer}.{p}"
       for x in "qk" for layer in ("layer1", "layer2") for p in ("weight", "bias")},
}
_QKV = ("attn.q_proj.weight", "attn.k_proj.weight", "attn.v_proj.weight")  # fused into attn.qkv
_TOP = {"model.embeddings.weight": "embed.weight", "model.norm.weight": "norm.weight",
        "lm_head.weight": "lm_head.weight"}


# -- reading the folder ---------------------------------------------------------------------
def read_fla_folder(src) -> tuple[dict, dict]:
    """-> (config.json as a dict, {name: tensor} from every *.safetensors in ``src``)."""
    src = Path(src)
    if not src.is_dir():
        raise LinexportError(f"expected {src} to be a folder written by fla's save_pretrained (config.json + "
                             "*.safetensors), got " + ("a file" if src.exists() else "nothing (it does not exist)"))
    config_path = src / "config.json"
    if not config_path.is_file():
        raise LinexportError(f"expected {config_path}: an fla checkpoint folder holds config.json beside its "
                             "weights (save it with model.save_pretrained(folder))")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LinexportError(f"{config_path} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise LinexportError(f"expected {config_path} to hold a JSON object, got {type(config).__name__}")
    if config.get("model_type") != MODEL_TYPE:
        raise LinexportError(f"expected an fla linear-attention checkpoint (config.json model_type "
                             f"{MODEL_TYPE!r}), got model_type {config.get('model_type')!r}: only fla's "
                             "linear_attn family converts")
    files = sorted(src.glob("*.safetensors"))
    if not files:
        pickled = sorted(p.name for p in src.glob("*.bin")) + sorted(p.name for p in src.glob("*.pt"))
        hint = (f" (found {pickled}: pickled weights are not read, checkpoints are untrusted; re-save with "
                "save_pretrained(folder, safe_serialization=True))") if pickled else ""
        raise LinexportError(f"expected the weights as *.safetensors in {src}, found none{hint}")
    from safetensors.torch import load_file

    weights = {}
    for path in files:
        try:
            part = load_file(str(path))
        except Exception as e:  # safetensors raises its own SafetensorError for every corruption
            raise LinexportError(f"{path} is not a readable safetensors file (truncated or corrupt?): "
                                 f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None
        twice = sorted(set(part) & set(weights))
        if twice:
            raise LinexportError(f"weights {twice[:5]} appear in more than one of {[p.name for p in files]}: "
                                 "expected one checkpoint's shards only")
        weights.update(part)
    return config, weights


# -- the config -----------------------------------------------------------------------------
def _field(config: dict, name: str, default, kinds, what: str):
    value = config.get(name, default)
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        raise LinexportError(f"fla config field {name!r}: expected {what}, got {value!r}")
    return value


def _refuse(name: str, value, why: str):
    raise LinexportError(f"fla config field {name!r} = {value!r} is not supported: {why}")


def fla_linear_config(config: dict, d_ff: int | None = None) -> LinearConfig:
    """fla's ``LinearAttentionConfig`` fields (config.json) -> our ``LinearConfig``. ``d_ff``: the
    MLP width the weights have (checked against what the config implies)."""
    hidden = _field(config, "hidden_size", 2048, int, "an int")
    heads = _field(config, "num_heads", 4, int, "an int")
    layers = _field(config, "num_hidden_layers", 24, int, "an int")
    vocab = _field(config, "vocab_size", 32000, int, "an int")
    kv_heads = _field(config, "num_kv_heads", None, (int, type(None)), "an int or null")
    if kv_heads is None:
        kv_heads = heads
    for name, value in (("hidden_size", hidden), ("num_heads", heads), ("num_hidden_layers", layers),
                        ("vocab_size", vocab), ("num_kv_heads", kv_heads)):
        if value < 1:
            raise LinexportError(f"fla config field {name!r}: expected >= 1, got {value}")
    if heads % kv_heads:
        raise LinexportError(f"fla config field 'num_kv_heads': expected a divisor of num_heads={heads}, "
                             f"got {kv_heads}")

    def head_dim(field: str) -> int:
        expand = _field(config, field, 1.0, (int, float), "a number")
        total = hidden * expand
        if not math.isclose(total, round(total)) or round(total) % heads:
            raise LinexportError(f"fla config field {field!r}: expected hidden_size × {field} to be an int "
                                 f"divisible by num_heads={heads}, got {hidden} × {expand} = {total}")
        return round(total) // heads

    dk, dv = head_dim("expand_k"), head_dim("expand_v")

    fm = _field(config, "feature_map", "elementwise_product", str, "a string")
    if fm not in FEATURE_MAPS:
        _refuse("feature_map", fm, f"expected one of {list(FEATURE_MAPS)} (hedgehog, t2r and dpfp do not "
                                   "convert)")
    for name in ("norm_q", "norm_k"):
        if _field(config, name, False, bool, "a bool"):
            _refuse(name, True, "expected false (the sum-normalised q/k feature is not in linexport's linear "
                                "arch)")
    attn = config.get("attn")
    if attn not in (None, {}, []):
        _refuse("attn", attn, "expected null: hybrid models with softmax attention layers do not convert "
                              "(their decode state is a KV cache)")
    if config.get("attnres_block_size") is not None:
        _refuse("attnres_block_size", config["attnres_block_size"], "expected null (attention residuals do "
                                                                    "not convert)")
    mode = _field(config, "attn_mode", "fused_chunk", str, "a string")
    if mode not in ATTN_MODES:
        _refuse("attn_mode", mode, f"expected one of {list(ATTN_MODES)}")
    act = _field(config, "hidden_act", "swish", str, "a string")
    if act != "swish":
        _refuse("hidden_act", act, "expected 'swish' (a SwiGLU MLP; powlu does not convert)")
    norm_eps = _field(config, "norm_eps", 1e-6, (int, float), "a number")
    if not norm_eps > 0:
        raise LinexportError(f"fla config field 'norm_eps': expected > 0, got {norm_eps}")
    normalize = _field(config, "norm_feature_map", False, bool, "a bool")
    tied = _field(config, "tie_word_embeddings", False, bool, "a bool")

    expected_ff = _field(config, "intermediate_size", None, (int, type(None)), "an int or null")
    if expected_ff is None:  # fla's GatedMLP: 2/3 of hidden × ratio, rounded up to 256
        ratio = _field(config, "hidden_ratio", 4, (int, float, type(None)), "a number or null")
        ratio = 4 if ratio is None else ratio
        expected_ff = int(hidden * ratio * 2 / 3)
        expected_ff = 256 * ((expected_ff + 255) // 256)
    if d_ff is not None and d_ff != expected_ff:
        raise LinexportError(f"the MLP weights are {d_ff} wide, but config.json implies {expected_ff} "
                             "(intermediate_size / hidden_ratio): is the config from the same model?")
    return LinearConfig(vocab_size=vocab, d_model=hidden, n_layers=layers, n_heads=heads, head_dim=dk,
                        d_ff=expected_ff, pos_emb="none", tie_embeddings=tied, norm_eps=float(norm_eps),
                        mlp="swiglu", feature_map=fm, eps=FLA_NORMALISED_EPS, n_kv_heads=kv_heads,
                        v_head_dim=dv, normalize=normalize, q_scale=dk ** -0.5, out_norm=True)


# -- the weights ----------------------------------------------------------------------------
def convert_fla(config: dict, weights: dict) -> LinearLM:
    """Builds our model from fla's config.json (a dict) and its weights."""
    gate = weights.get("model.layers.0.mlp.gate_proj.weight")
    c = fla_linear_config(config, d_ff=gate.shape[0] if isinstance(gate, torch.Tensor) and gate.dim() == 2 else None)
    fm_learned = c.feature_map == "elementwise_product"
    affine = config.get("elementwise_affine", True)
    if affine not in (True, False, None):
        raise LinexportError(f"fla config field 'elementwise_affine': expected a bool or null, got {affine!r}")
    tie_fm = _field(config, "tie_feature_map_qk", False, bool, "a bool")

    ours, consumed = {}, set()

    def take(key):
        if key not in weights:
            raise LinexportError(f"expected weight {key!r} in the fla checkpoint (config.json says "
                                 f"{c.n_layers} layers, feature_map {c.feature_map!r}), got none: is the config "
                                 "from the same model as the weights?")
        consumed.add(key)
        return weights[key]

    for key, name in _TOP.items():
        if key == "lm_head.weight" and c.tie_embeddings:
            continue
        ours[name] = take(key)
    if c.tie_embeddings:
        ours["lm_head.weight"] = ours["embed.weight"]
        if "lm_head.weight" in weights:  # a tied head saved anyway must be the embedding
            consumed.add("lm_head.weight")
            if not torch.equal(weights["lm_head.weight"], weights["model.embeddings.weight"]):
                raise LinexportError("fla config field 'tie_word_embeddings' is true, but lm_head.weight differs "
                                     "from model.embeddings.weight: is the config from the same model?")
    for i in range(c.n_layers):
        pre = f"model.layers.{i}."
        ours[f"blocks.{i}.attn.qkv.weight"] = torch.cat([_matrix(take(pre + k), pre + k) for k in _QKV])
        for src, dst in _LAYER_RENAME.items():
            if src == "attn.norm.weight" and not affine:
                continue
            if src.startswith("attn.feature_map_"):
                if not fm_learned:
                    continue
                if tie_fm and pre + src not in weights:  # one tied copy saved: it is both maps
                    twin = src.replace("feature_map_k", "feature_map_q") if "_k." in src else \
                        src.replace("feature_map_q", "feature_map_k")
                    ours[f"blocks.{i}.{dst}"] = take(pre + twin)
                    continue
            ours[f"blocks.{i}.{dst}"] = take(pre + src)
        if not affine:  # fla's output norm without a weight: ones
            ours[f"blocks.{i}.attn.out_norm.weight"] = torch.ones(c.value_head_dim())

    extra = sorted(set(weights) - consumed)
    if extra:
        layers = sorted({int(m.group(1)) for k in extra if (m := _LAYER_KEY.fullmatch(k))})
        hint = (f" (layers {layers} are beyond num_hidden_layers={c.n_layers})" if layers and layers[0] >= c.n_layers
                else "")
        raise LinexportError(f"unexpected weights {extra[:5]}{' ...' if len(extra) > 5 else ''} in the fla "
                             f"checkpoint{hint}: expected only those of LinearAttentionForCausalLM with this "
                             "config.json; is the config from the same model?")
    model = LinearLM(c)
    expected = model.state_dict()
    for name, ref in expected.items():
        got = ours[name]
        if tuple(got.shape) != tuple(ref.shape):
            raise LinexportError(f"fla weight for {name!r} has shape {list(got.shape)}, but config.json implies "
                                 f"{list(ref.shape)} (hidden {c.d_model}, heads {c.n_heads}/{c.kv_heads()}, "
                                 f"head dims {c.head_dim}/{c.value_head_dim()}): is the config from the same model?")
        if not got.is_floating_point() or not bool(torch.isfinite(got).all()):
            raise LinexportError(f"expected finite floating-point weights, got {got.dtype} or NaN/Inf in the one "
                                 f"for {name!r}: the source model is damaged or its training diverged")
    model.load_state_dict({k: v.float() for k, v in ours.items()})
    return model.eval()


def _matrix(t, key):
    if not isinstance(t, torch.Tensor) or t.dim() != 2:
        raise LinexportError(f"expected fla weight {key!r} to be a matrix, got shape "
                             f"{list(getattr(t, 'shape', []))}")
    return t


# -- the command ----------------------------------------------------------------------------
def convert_folder(src, out) -> LinearLM:
    """Converts the fla folder ``src`` into the linexport checkpoint ``out`` (.pt or .safetensors);
    the folder's tokenizer.json is copied beside ``out`` as ``{stem}.tokenizer.json`` and named
    by the checkpoint."""
    src, out = Path(src), Path(out)
    config, weights = read_fla_folder(src)
    model = convert_fla(config, weights)
    tokenizer = None
    source_tok = src / "tokenizer.json"
    if source_tok.is_file():
        check_tokenizer_json(source_tok)
        name = f"{out.stem}.tokenizer.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out.parent / name, lambda tmp: shutil.copyfile(source_tok, tmp))
        tokenizer = {"type": "json", "file": name}
    special = {k: config.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    save_checkpoint(model, out, tokenizer=tokenizer,
                    extra={"converted_from": {"package": "flash-linear-attention", "model_type": MODEL_TYPE,
                                              "source": src.name, "special_tokens": special}})
    return model

