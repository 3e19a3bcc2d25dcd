"""`linexport convert --from fla`: flash-linear-attention linear_attn folders against fla itself.

The oracle is fla's own model (``LinearAttentionForCausalLM``, built from ``LinearAttentionConfig``
with random weights, saved with ``save_pretrained``). Its kernels are Triton and do not run on a
CPU, so the few calls that reach them are replaced by fla's pure-torch references: the attention
by ``fla.ops.linear_attn.naive.naive_recurrent_linear_attn``, the fused RMSNorm by
``fla.modules.norm.layernorm.rms_norm_ref``, and SwiGLU by its definition (swish(x)·y, as fla's
docstring writes it). Everything else (projections, GQA's repeat, feature maps, the per-head
output norm, the residual wiring) is fla's code as it runs.

fla and the triton it imports come with the test extra (pip install -e ".[fla]" alone); triton
installs and imports without a GPU.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

pytest.importorskip("fla.models", reason="flash-linear-attention is not installed (pip install -e \".[fla]\", "
                                         "in the test extra)")

import fla.layers.linear_attn as fla_layer  # noqa: E402
import fla.modules.mlp as fla_mlp  # noqa: E402
import fla.modules.norm.layernorm as fla_norm  # noqa: E402
from fla.models import LinearAttentionConfig, LinearAttentionForCausalLM  # noqa: E402
from fla.ops.linear_attn.naive import naive_recurrent_linear_attn  # noqa: E402

from linexport.cli import main  # noqa: E402
from linexport.errors import LinexportError  # noqa: E402
from linexport.models.checkpoint import load_checkpoint  # noqa: E402
from linexport.models.convert_fla import convert_fla, convert_folder, read_fla_folder  # noqa: E402

VOCAB = 61
SIZES = dict(hidden_size=48, num_hidden_layers=2, num_heads=4, vocab_size=VOCAB, intermediate_size=80)
# Every supported feature map, both normalisations, GQA, key/value head dims apart, odd sizes,
# tied embeddings, fla's unfused norm/SwiGLU modules, an output norm without weights.
CONFIGS = {
    "defaults-hadamard-unnorm": dict(),  # fla's own defaults: elementwise_product, unnormalised
    "elu-norm": dict(feature_map="elu", norm_feature_map=True),
    "relu-norm-gqa2-k0.5-v1.5": dict(feature_map="relu", norm_feature_map=True, num_kv_heads=2, expand_k=0.5,
                                     expand_v=1.5),
    "identity-unnorm-gqa1-v0.75": dict(feature_map="identity", num_kv_heads=1, expand_v=0.75),
    "elu-unnorm-tied-unfused-noaffine": dict(feature_map="elu", tie_word_embeddings=True, fuse_norm=False,
                                             fuse_swiglu=False, elementwise_affine=False,
                                             intermediate_size=None, hidden_ratio=2),
    "relu-unnorm-odd": dict(feature_map="relu", hidden_size=36, num_heads=3, expand_k=1 / 3,
                            intermediate_size=52, num_hidden_layers=3),
    "hadamard-unnorm-gqa1-odd": dict(hidden_size=36, num_heads=3, num_kv_heads=1, expand_k=2 / 3,
                                     expand_v=4 / 3, intermediate_size=44),
    "elu-norm-gqa2-k1.25": dict(feature_map="elu", norm_feature_map=True, num_kv_heads=2, expand_k=1.25),
}


@pytest.fixture(autouse=True)
def fla_on_cpu(monkeypatch):
    """fla's Triton calls -> its torch references (see the module doc)."""
    def attention(q, k, v, scale=None, initial_state=None, output_final_state=False, normalize=False,
                  cu_seqlens=None, **kwargs):
        assert cu_seqlens is None and not kwargs, (cu_seqlens, kwargs)
        return naive_recurrent_linear_attn(q, k, v, scale=scale, initial_state=initial_state,
                                           output_final_state=output_final_state, normalize=normalize)

    for name in ("chunk_linear_attn", "fused_chunk_linear_attn", "fused_recurrent_linear_attn"):
        monkeypatch.setattr(fla_layer, name, attention)

    def rms_norm(x, weight, bias, residual=None, eps=1e-5, prenorm=False, residual_in_fp32=False):
        if weight is None:  # elementwise_affine=False: the kernel scales by nothing, the reference by ones
            weight = torch.ones(x.shape[-1], dtype=torch.float32)
        return fla_norm.rms_norm_ref(x, weight, bias, residual=residual, eps=eps, prenorm=prenorm, upcast=True)

    monkeypatch.setattr(fla_norm, "rms_norm", rms_norm)
    monkeypatch.setattr(fla_mlp, "swiglu", lambda x, y: F.silu(x) * y)
    monkeypatch.setattr(fla_mlp, "swiglu_linear", lambda x, y, w, b: F.linear(F.silu(x) * y, w, b))


def fla_model(**overrides) -> LinearAttentionForCausalLM:
    """fla's model with random, non-trivial weights (norm weights too)."""
    torch.manual_seed(7)
    model = LinearAttentionForCausalLM(LinearAttentionConfig(**{**SIZES, **overrides})).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(1 + 0.3 * torch.randn_like(p) if p.dim() == 1 else 0.2 * torch.randn_like(p))
        for name, p in model.named_parameters():  # biases of the learnable feature maps
            if name.endswith("bias"):
                p.normal_(0, 0.3)
    return model


def saved(tmp_path, model, name="fla"):
    folder = tmp_path / name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(folder)
    return folder


def fla_logits(model, ids):
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model(ids, use_cache=False).logits


@pytest.mark.parametrize("name", CONFIGS)
def test_converted_model_matches_fla(tmp_path, name):
    """Logits of the parallel forward, and of prefill + decode steps, against fla's."""
    ref = fla_model(**CONFIGS[name])
    config, weights = read_fla_folder(saved(tmp_path, ref))
    ours = convert_fla(config, weights)
    c = ours.config
    assert (c.normalize, c.feature_map) == (ref.config.norm_feature_map, ref.config.feature_map)
    assert c.kv_heads() == (ref.config.num_kv_heads or ref.config.num_heads)
    ids = torch.randint(0, VOCAB, (2, 77))  # > 64: fla would take its chunked kernel
    expected = fla_logits(ref, ids)
    with torch.no_grad():
        got = ours(ids)
        last, state = ours.prefill(ids[:, :70])
        steps = []
        for t in range(70, 77):
            logits, state = ours.step(ids[:, t], torch.full((2,), t), state)
            steps.append(logits)
    diff = (got - expected).abs().max().item()
    step_diff = max((last - expected[:, 69]).abs().max().item(),
                    (torch.stack(steps, 1) - expected[:, 70:77]).abs().max().item())
    print(f"{name}: max |logit diff| parallel {diff:.2e}, prefill+steps {step_diff:.2e} "
          f"(max |logit| {expected.abs().max().item():.1f})")
    assert expected.abs().max() > 1.0  # the logits are far from trivial
    assert diff <= 1e-4 and step_diff <= 1e-4


def test_what_the_output_norm_hides():
    """fla's per-head output RMSNorm divides out any positive per-head, per-token factor: the
    normaliser of a non-negative map (elu, relu) and the K^-0.5 scale. So with elu the other
    normalisation gives fla's logits too, while with a sign-changing map (elementwise_product) the
    normaliser's sign flips outputs and the forms are far apart: the oracle tells the forms apart
    only there, and the op tests hold the normalised form to its own oracle."""
    import dataclasses

    from linexport.models.linear import LinearLM

    for name, same in (("defaults-hadamard-unnorm", False), ("elu-norm", True)):
        ref = fla_model(**CONFIGS[name])
        ours = convert_fla(json.loads(ref.config.to_json_string()), dict(ref.state_dict()))
        ids = torch.randint(0, VOCAB, (1, 40))
        expected = fla_logits(ref, ids)
        other = LinearLM(dataclasses.replace(ours.config, normalize=not ours.config.normalize)).eval()
        other.load_state_dict(ours.state_dict())
        with torch.no_grad():
            assert (ours(ids) - expected).abs().max() <= 1e-4
            assert ((other(ids) - expected).abs().max() <= 1e-4) == same, name


# -- export, verify, generate ------------------------------------------------------------------
def _tokenizer_json(path):
    """A tiny character-level tokenizer.json whose ids are inside the model's vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    chars = "abcdefghijklmnopqrstuvwxyz .,"
    vocab = {"[UNK]": 0, **{ch: i + 1 for i, ch in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    tok.save(str(path))


def _fla_greedy(model, ids, n):
    ids = list(ids)
    for _ in range(n):
        ids.append(int(fla_logits(model, torch.tensor([ids]))[0, -1].argmax()))
    return ids


@pytest.mark.parametrize("name,lowering", [("relu-norm-gqa2-k0.5-v1.5", "function"),
                                           ("defaults-hadamard-unnorm", "function"),
                                           ("defaults-hadamard-unnorm", "standard")])
def test_export_verify_and_generate(tmp_path, name, lowering):
    from linexport.contract.manifest import load_manifest
    from linexport.export.exporter import export_checkpoint
    from linexport.export.verify import verify_export
    from linexport.runtime import Generator, Model, SamplingParams
    from linexport.runtime.tokenizers import tokenizer_from_json

    ref = fla_model(**CONFIGS[name])
    folder = saved(tmp_path, ref)
    _tokenizer_json(folder / "tokenizer.json")
    ckpt = tmp_path / "out" / "ckpt.pt"
    convert_folder(folder, ckpt)
    model, meta = load_checkpoint(ckpt)
    assert meta["tokenizer"] == {"type": "json", "file": "ckpt.tokenizer.json"}
    assert (tmp_path / "out" / "ckpt.tokenizer.json").read_bytes() == (folder / "tokenizer.json").read_bytes()

    out = tmp_path / "export"
    export_checkpoint(ckpt, out, lowering=lowering)
    manifest = load_manifest(out)
    assert manifest["tokenizer"]["type"] == "json"
    assert (out / "tokenizer.json").read_bytes() == (folder / "tokenizer.json").read_bytes()
    width = model.config.value_head_dim() + (1 if model.config.normalize else 0)
    state = next(s for s in manifest["states"] if s["name"] == "0.kv")
    assert state["shape"][1:] == [model.config.n_heads, model.config.head_dim, width]
    import onnx

    for graph in ("prefill", "decode"):  # the node says its form only when it is the unnormalised one
        nodes = [n for n in onnx.load(str(out / f"{graph}.onnx")).graph.node if n.op_type == "CausalLinearAttention"]
        attrs = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in nodes]
        if lowering == "function":
            assert len(nodes) == model.config.n_layers
            assert all(a.get("normalize", 1) == int(model.config.normalize) for a in attrs)
            assert all(("normalize" in a) == (not model.config.normalize) for a in attrs)
        else:
            assert not nodes  # standard: ONNX LinearAttention instead
    checks = verify_export(out, steps=6)
    failed = [c for c in checks if not c.ok]
    assert checks and not failed, failed

    prompt = "linear attention, decoded"
    gen = Generator(Model(out))
    seq = gen.add(prompt, SamplingParams(max_new_tokens=12))
    while not gen.is_done():
        gen.step()
    prompt_ids = tokenizer_from_json(out / "tokenizer.json").encode(prompt)
    assert len(prompt_ids) == len(prompt) and 0 not in prompt_ids  # one known id per character
    assert seq.generated == _fla_greedy(ref, prompt_ids, 12)[len(prompt_ids):]


# -- the CLI and what is refused ---------------------------------------------------------------
def _cli(*args):
    return CliRunner().invoke(main, ["convert", "--from", "fla", *map(str, args)])


def test_cli_convert_then_load(tmp_path):
    ref = fla_model(**CONFIGS["relu-norm-gqa2-k0.5-v1.5"])
    folder = saved(tmp_path, ref)
    result = _cli(folder, "-o", tmp_path / "ckpt.safetensors")
    assert result.exit_code == 0, result.output
    assert "linear (from fla linear_attn), 2 layers, d 48, heads 4 (kv 2), head dims 6/18" in result.output
    model, meta = load_checkpoint(tmp_path / "ckpt.safetensors")
    assert meta["tokenizer"] == {"type": "bytes"}  # the folder has no tokenizer.json
    assert meta["extra"]["converted_from"]["package"] == "flash-linear-attention"
    ids = torch.randint(0, VOCAB, (1, 33))
    with torch.no_grad():
        assert (model(ids) - fla_logits(ref, ids)).abs().max() <= 1e-4
    flash_only = _cli(folder, "-o", tmp_path / "x.pt", "--group-size", "8")
    assert flash_only.exit_code == 2 and "--group-size are FLASHTransformer options" in flash_only.output


def _edit_config(folder, **changes):
    path = folder / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is ...:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config))


REFUSED = [
    (dict(feature_map="hedgehog"), r"'feature_map' = 'hedgehog' is not supported"),
    (dict(feature_map="dpfp"), r"'feature_map' = 'dpfp' is not supported"),
    (dict(norm_q=True), r"'norm_q' = True is not supported"),
    (dict(norm_k=True), r"'norm_k' = True is not supported"),
    (dict(attn={"layers": [1], "num_heads": 4}), r"'attn' = .* hybrid models"),
    (dict(attnres_block_size=2), r"'attnres_block_size' = 2 is not supported"),
    (dict(hidden_act="powlu"), r"'hidden_act' = 'powlu' is not supported"),
    (dict(attn_mode="parallel"), r"'attn_mode' = 'parallel' is not supported"),
    (dict(model_type="gla"), r"model_type 'linear_attn'\), got model_type 'gla'"),
    (dict(num_kv_heads=3), r"'num_kv_heads': expected a divisor of num_heads=4, got 3"),
    (dict(expand_k=0.3), r"'expand_k': expected hidden_size × expand_k to be an int divisible by"),
    (dict(intermediate_size=96), r"MLP weights are 80 wide, but config.json implies 96"),
    (dict(num_hidden_layers=3), r"expected weight 'model.layers.2.attn.q_proj.weight'"),
    (dict(num_hidden_layers=1), r"unexpected weights .*layers \[1\] are beyond num_hidden_layers=1"),
    (dict(hidden_size="big"), r"'hidden_size': expected an int, got 'big'"),
    (dict(norm_feature_map="yes"), r"'norm_feature_map': expected a bool, got 'yes'"),
]


@pytest.mark.parametrize("changes,match", REFUSED, ids=[next(iter(c)) + f"={next(iter(c.values()))}"
                                                        for c, _ in REFUSED])
def test_refused_configs_name_the_field(tmp_path, changes, match):
    folder = saved(tmp_path, fla_model())
    _edit_config(folder, **changes)
    with pytest.raises(LinexportError, match=match):
        convert_folder(folder, tmp_path / "ckpt.pt")
    assert not (tmp_path / "ckpt.pt").exists()
    result = _cli(folder, "-o", tmp_path / "ckpt.pt")
    assert result.exit_code == 2 and "error:" in result.output


def _rewrite_weights(folder, edit):
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    weights = load_file(str(path))
    edit(weights)
    save_file(weights, str(path))


def test_bad_folders(tmp_path):
    with pytest.raises(LinexportError, match="does not exist"):
        convert_folder(tmp_path / "nowhere", tmp_path / "a.pt")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LinexportError, match="expected .*config.json: an fla checkpoint folder"):
        convert_folder(empty, tmp_path / "a.pt")
    (empty / "config.json").write_text("{not json")
    with pytest.raises(LinexportError, match="is not valid JSON"):
        convert_folder(empty, tmp_path / "a.pt")

    folder = saved(tmp_path, fla_model())
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(LinexportError, match=r"found none \(found \['pytorch_model.bin'\]: pickled weights are "
                                             "not read"):
        convert_folder(folder, tmp_path / "a.pt")

    cases = [
        (lambda w: w.pop("model.layers.0.attn.o_proj.weight"), r"expected weight 'model.layers.0.attn.o_proj.weight'"),
        (lambda w: w.update({"model.layers.0.attn.extra.weight": torch.zeros(2)}),
         r"unexpected weights \['model.layers.0.attn.extra.weight'\]"),
        (lambda w: w.update({"model.layers.1.attn.v_proj.weight": torch.zeros(40, 48)}),
         r"'blocks.1.attn.qkv.weight' has shape \[136, 48\], but config.json implies \[144, 48\]"),
        (lambda w: w["model.norm.weight"].__setitem__(0, float("nan")), "NaN/Inf in the one for 'norm.weight'"),
        (lambda w: w.update({"model.layers.0.attn.k_proj.weight": torch.zeros(48)}),
         r"'model.layers.0.attn.k_proj.weight' to be a matrix"),
    ]
    for i, (edit, match) in enumerate(cases):
        folder = saved(tmp_path, fla_model(), name=f"bad{i}")
        _rewrite_weights(folder, edit)
        with pytest.raises(LinexportError, match=match):
            convert_folder(folder, tmp_path / "a.pt")
    folder = saved(tmp_path, fla_model(), name="truncated")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(LinexportError, match="not a readable safetensors file"):
        convert_folder(folder, tmp_path / "a.pt")
    folder = saved(tmp_path, fla_model(), name="badtok")
    (folder / "tokenizer.json").write_text("[1, 2]")
    with pytest.raises(LinexportError, match="to be a Hugging Face tokenizer.json"):
        convert_folder(folder, tmp_path / "a.pt")


def test_tied_feature_maps_saved_once_convert(tmp_path):
    """tie_feature_map_qk: one module serves q and k. fla cannot save_pretrained it (shared
    tensors), so build the folder a tied model would leave: q's map saved, k's not."""
    ref = fla_model()  # untied, then tie k's map to q's
    with torch.no_grad():
        for layer in ref.model.layers:
            layer.attn.feature_map_k.load_state_dict(layer.attn.feature_map_q.state_dict())
    folder = saved(tmp_path, ref)
    _rewrite_weights(folder, lambda w: [w.pop(k) for k in list(w) if ".feature_map_k." in k])
    with pytest.raises(LinexportError, match=r"expected weight 'model.layers.0.attn.feature_map_k.layer1.weight'"):
        convert_folder(folder, tmp_path / "a.pt")
    _edit_config(folder, tie_feature_map_qk=True)
    model = convert_folder(folder, tmp_path / "a.pt")
    ids = torch.randint(0, VOCAB, (1, 30))
    with torch.no_grad():
        assert (model(ids) - fla_logits(ref, ids)).abs().max() <= 1e-4


def test_converted_model_runs_under_genai(tmp_path):
    """The converted model through `linexport genai` and onnxruntime-genai's own generator: its
    greedy tokens are fla's (GQA, unnormalised, learnable feature map, output norm, SwiGLU, no
    positions), and genai stops at the eos id fla's config.json records."""
    og = pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is not installed")
    from linexport.export.genai import export_genai

    ref = fla_model(**CONFIGS["hadamard-unnorm-gqa1-odd"])
    folder = saved(tmp_path, ref)
    _tokenizer_json(folder / "tokenizer.json")
    ckpt = tmp_path / "ckpt.pt"
    convert_folder(folder, ckpt)
    config = export_genai(ckpt, tmp_path / "genai")
    ids = config["model"]
    assert (ids["eos_token_id"], ids["pad_token_id"], ids["bos_token_id"]) == (
        ref.config.eos_token_id, ref.config.eos_token_id, ref.config.bos_token_id)

    prompt, n = [5, 17, 3, 28, 9, 11, 4], 24
    model = og.Model(str(tmp_path / "genai"))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + n, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(np.array([prompt], dtype=np.int32))
    while not gen.is_done():
        gen.generate_next_token()
    got = [int(t) for t in gen.get_sequence(0)]
    new = got[len(prompt):]
    assert got[:len(prompt)] == prompt and new
    assert len(new) == n or new[-1] == ref.config.eos_token_id  # genai ends at max_length or at eos
    assert got == _fla_greedy(ref, prompt, len(new))
