"""FLASH-pytorch (an independent implementation of the same paper) is our oracle for `flash`."""

import pytest
import torch
from click.testing import CliRunner

from linexport.cli import main
from linexport.errors import LinexportError
from linexport.models.checkpoint import load_checkpoint
from linexport.models.convert_flash_pytorch import convert_flash_pytorch
from tests.conftest import run_steps

flash_pytorch = pytest.importorskip("flash_pytorch", reason="pip install flash-pytorch (in the test extra)")

VOCAB = 61
CASES = {
    "defaults-g16": dict(group_size=16),
    "layernorm-laplace-noshift-g8": dict(group_size=8, norm_type="layernorm", laplace_attn_fn=True, shift_tokens=False),
    "laplace-shift-g4": dict(group_size=4, laplace_attn_fn=True),
    "qk16-all-rotary-g5": dict(group_size=5, query_key_dim=16),
    "qk48-partial-rotary-e1.5-g12": dict(group_size=12, query_key_dim=48, expansion_factor=1.5),
    # hidden = int(14 · 8.72) = 122, and int((122 / 14) · 14) = 121: expansion needs care
    "d14-e8.72-g7": dict(group_size=7, dim=14, expansion_factor=8.72),
}


def reference(case, seed=0, depth=3):
    torch.manual_seed(seed)
    kwargs = {"query_key_dim": 12, "dim": 32, **CASES[case]}
    model = flash_pytorch.FLASHTransformer(num_tokens=VOCAB, depth=depth, causal=True, **kwargs).eval()
    with torch.no_grad():  # weights big enough that every part of the layer matters
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.mul_(3.0)
            if "relative_attention_bias" in name:
                p.normal_(0, 0.5)
    return model, kwargs


def convert(ref, kwargs):
    return convert_flash_pytorch(ref.state_dict(), kwargs["group_size"], kwargs.get("shift_tokens", True),
                                 kwargs.get("laplace_attn_fn", False))


@pytest.mark.parametrize("T", [1, 11, 16, 50], ids=lambda t: f"T{t}")
@pytest.mark.parametrize("case", list(CASES))
@torch.no_grad()
def test_matches_flash_pytorch_forward(case, T):
    ref, kwargs = reference(case)
    ours = convert(ref, kwargs)
    ids = torch.randint(0, VOCAB, (2, T))
    expected = ref(ids)
    assert expected.abs().max() > 1.0  # not a degenerate comparison
    assert (ours(ids) - expected).abs().max() <= 1e-4


@torch.no_grad()
def test_package_defaults_across_a_group():
    """FLASHTransformer's own defaults (group 256, query_key_dim 128 with rotary on 32 of them,
    expansion 2, scale norm, token shift, relu²) over more than one group."""
    torch.manual_seed(0)
    ref = flash_pytorch.FLASHTransformer(num_tokens=VOCAB, dim=32, depth=2, causal=True).eval()
    for p in ref.parameters():
        if p.dim() == 2:
            p.mul_(3.0)
    ours = convert_flash_pytorch(ref.state_dict())
    assert (ours.config.chunk_size, ours.config.qk_dim, ours.config.rotary_dim) == (256, 128, 32)
    ids = torch.randint(0, VOCAB, (1, 300))
    expected = ref(ids)
    assert (ours(ids) - expected).abs().max() <= 1e-4
    halved = convert_flash_pytorch(ref.state_dict(), group_size=128)  # T = 300 really spans groups
    assert (halved(ids) - expected).abs().max() > 1e-2


@pytest.mark.parametrize("case", ["defaults-g16", "layernorm-laplace-noshift-g8"])
@torch.no_grad()
def test_recurrent_steps_match_flash_pytorch(case):
    """Our token-by-token decoding reproduces the package's parallel forward."""
    ref, kwargs = reference(case, depth=2)
    ours = convert(ref, kwargs)
    ids = torch.randint(0, VOCAB, (2, 37))
    steps, _ = run_steps(ours, ids)
    assert (steps - ref(ids)).abs().max() <= 1e-4


@torch.no_grad()
def test_ragged_batch_matches_flash_pytorch_mask():
    """Right padding: our lengths and the package's key mask agree on every real position."""
    ref, kwargs = reference("defaults-g16")
    ours = convert(ref, kwargs)
    lengths = torch.tensor([37, 16, 5])
    ids = torch.randint(0, VOCAB, (3, 37))
    mask = torch.arange(37).unsqueeze(0) < lengths.unsqueeze(1)
    expected, got = ref(ids, mask=mask), ours(ids, lengths)
    assert (got - expected)[mask].abs().max() <= 1e-4


@torch.no_grad()
def test_wrong_group_size_is_detectable():
    """The group size is not in the weights: a wrong --group-size must change the output (so the
    parity test above is really checking the chunking)."""
    ref, _ = reference("defaults-g16")
    ids = torch.randint(0, VOCAB, (1, 40))
    wrong = convert_flash_pytorch(ref.state_dict(), group_size=8)
    assert (wrong(ids) - ref(ids)).abs().max() > 1e-2


def _cli(*args):
    return CliRunner().invoke(main, ["convert", "--from", "flash-pytorch", *map(str, args)])


def test_cli_convert_then_load(tmp_path):
    ref, _ = reference("layernorm-laplace-noshift-g8")
    src = tmp_path / "flash_sd.pt"
    torch.save(ref.state_dict(), src)
    result = _cli(src, "-o", tmp_path / "ckpt.pt", "--group-size", "8", "--laplace-attn", "--no-shift-tokens")
    assert result.exit_code == 0, result.output
    model, meta = load_checkpoint(tmp_path / "ckpt.pt")
    c = model.config
    assert (c.n_layers, c.d_model, c.qk_dim, c.chunk_size, c.norm, c.attn_fn, c.shift_tokens) == (
        3, 32, 12, 8, "layernorm", "laplace", False)
    ids = torch.randint(0, VOCAB, (1, 33))
    with torch.no_grad():
        assert (model(ids) - ref(ids)).abs().max() <= 1e-4
    assert meta["extra"]["converted_from"] == {
        "package": "flash-pytorch", "source": "flash_sd.pt",
        "options": {"group_size": 8, "shift_tokens": False, "laplace_attn_fn": True, "causal": True}}


def _edited(sd, **changes):
    out = dict(sd)
    for key, value in changes.items():
        if value is None:
            del out[key]
        else:
            out[key] = value
    return out


def test_unsupported_state_dicts():
    ref, _ = reference("defaults-g16")
    sd = ref.state_dict()
    nan_out = sd["layers.1.to_out.weight"].clone()
    nan_out[0, 0] = float("nan")
    cases = [
        (_edited(sd, **{"layers.0.rotary_pos_emb.freqs": sd["layers.0.rotary_pos_emb.freqs"] * 1.5}),
         "rotary frequencies"),
        (_edited(sd, **{"layers.0.some_new_module.weight": torch.zeros(3)}), "unsupported FLASH-pytorch weight"),
        (_edited(sd, **{"extra_head.weight": torch.zeros(3)}), "unsupported FLASH-pytorch weight"),
        ({k: v for k, v in sd.items() if not k.startswith("token_emb")},
         "expected a FLASH-pytorch FLASHTransformer state_dict"),
        ({k: v for k, v in sd.items() if not k.startswith("layers.1.")}, r"layers \[1\] are missing"),
        (_edited(sd, **{"layers.0.rotary_pos_emb.freqs": None}), "expected a rotary embedding in every"),
        (_edited(sd, **{"layers.2.to_qk.0.weight": torch.zeros(7, 32), "layers.2.to_qk.0.bias": torch.zeros(7)}),
         "has shape"),
        (_edited(sd, **{"layers.1.to_out.weight": nan_out}), "expected finite weights"),
        (_edited(sd, **{"abs_pos_emb.inv_freq": sd["abs_pos_emb.inv_freq"] * 2}), "inv_freq"),
    ]
    for bad, match in cases:
        with pytest.raises(LinexportError, match=match):
            convert_flash_pytorch(bad, 16)
    with pytest.raises(LinexportError, match="expected a FLASHTransformer built with causal=True, got causal=False"):
        convert_flash_pytorch(sd, 16, causal=False)


def test_cli_refuses_bad_inputs(tmp_path):
    ref, _ = reference("defaults-g16")
    src = tmp_path / "sd.pt"
    torch.save(ref.state_dict(), src)
    out = tmp_path / "o.pt"
    result = _cli(src, "-o", out, "--non-causal")
    assert result.exit_code == 2 and "causal=True" in result.output and not out.exists()
    result = _cli(tmp_path / "missing.pt", "-o", out)
    assert result.exit_code == 2 and "does not exist" in result.output
    (tmp_path / "junk.pt").write_bytes(b"junk")
    result = _cli(tmp_path / "junk.pt", "-o", out)
    assert result.exit_code == 2 and "could not be loaded" in result.output
    torch.save({"model": ref}, tmp_path / "pickled_module.pt")  # a whole module, not a state_dict
    result = _cli(tmp_path / "pickled_module.pt", "-o", out)
    assert result.exit_code == 2 and "could not be loaded" in result.output and not out.exists()
