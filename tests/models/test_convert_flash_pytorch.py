"""FLASH-pytorch (an independent implementation of the same paper) is our oracle for `flash`."""

import pytest
import torch
from click.testing import CliRunner

from linexport.cli import main
from linexport.errors import LinexportError
from linexport.models.checkpoint import load_checkpoint
from linexport.models.convert_flash_pytorch import convert_flash_pytorch

flash_pytorch = pytest.importorskip("flash_pytorch", reason="pip install flash-pytorch (in the test extra)")

CASES = {
    "defaults-g16": dict(group_size=16),
    "layernorm-laplace-noshift-g8": dict(group_size=8, norm_type="layernorm", laplace_attn_fn=True, shift_tokens=False),
    "qk16-all-rotary-g5": dict(group_size=5, query_key_dim=16),
    "qk48-partial-rotary-e1.5-g12": dict(group_size=12, query_key_dim=48, expansion_factor=1.5),
}


def reference(case, seed=0):
    torch.manual_seed(seed)
    kwargs = {"query_key_dim": 12, **CASES[case]}
    model = flash_pytorch.FLASHTransformer(num_tokens=61, dim=32, depth=3, causal=True, **kwargs).eval()
    with torch.no_grad():  # weights big enough that every part of the layer matters
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.mul_(3.0)
            if "relative_attention_bias" in name:
                p.normal_(0, 0.5)
    return model, kwargs


@pytest.mark.parametrize("T", [1, 11, 16, 50])
@pytest.mark.parametrize("case", list(CASES))
@torch.no_grad()
def test_matches_flash_pytorch_forward(case, T):
    ref, kwargs = reference(case)
    ours = convert_flash_pytorch(ref.state_dict(), kwargs["group_size"], kwargs.get("shift_tokens", True),
                                 kwargs.get("laplace_attn_fn", False))
    ids = torch.randint(0, 61, (2, T))
    expected = ref(ids)
    assert expected.abs().max() > 1.0  # not a degenerate comparison
    assert (ours(ids) - expected).abs().max() <= 1e-4


@torch.no_grad()
def test_wrong_group_size_is_detectable():
    """The group size is not in the weights: a wrong --group-size must change the output (so the
    parity test above is really checking the chunking)."""
    ref, _ = reference("defaults-g16")
    ids = torch.randint(0, 61, (1, 40))
    wrong = convert_flash_pytorch(ref.state_dict(), group_size=8)
    assert (wrong(ids) - ref(ids)).abs().max() > 1e-2


def test_cli_convert_then_load(tmp_path):
    ref, _ = reference("defaults-g16")
    src = tmp_path / "flash_sd.pt"
    torch.save(ref.state_dict(), src)
    result = CliRunner().invoke(main, ["convert", "--from", "flash-pytorch", str(src), "-o",
                                       str(tmp_path / "ckpt.pt"), "--group-size", "16"])
    assert result.exit_code == 0, result.output
    model, meta = load_checkpoint(tmp_path / "ckpt.pt")
    ids = torch.randint(0, 61, (1, 33))
    with torch.no_grad():
        assert (model(ids) - ref(ids)).abs().max() <= 1e-4
    assert meta["extra"]["converted_from"]["package"] == "flash-pytorch"


def test_unsupported_inputs(tmp_path):
    ref, _ = reference("defaults-g16")
    sd = ref.state_dict()
    learned = dict(sd)
    learned["layers.0.rotary_pos_emb.freqs"] = sd["layers.0.rotary_pos_emb.freqs"] * 1.5
    with pytest.raises(LinexportError, match="rotary frequencies"):
        convert_flash_pytorch(learned, 16)
    extra = dict(sd)
    extra["layers.0.some_new_module.weight"] = torch.zeros(3)
    with pytest.raises(LinexportError, match="unsupported FLASH-pytorch weight"):
        convert_flash_pytorch(extra, 16)
    gau = {k: v for k, v in sd.items() if not k.startswith("token_emb")}
    with pytest.raises(LinexportError, match="not a FLASH-pytorch FLASHTransformer"):
        convert_flash_pytorch(gau, 16)
    result = CliRunner().invoke(main, ["convert", "--from", "flash-pytorch", str(tmp_path / "missing.pt"),
                                       "-o", str(tmp_path / "o.pt")])
    assert result.exit_code == 2 and "does not exist" in result.output
    (tmp_path / "junk.pt").write_bytes(b"junk")
    result = CliRunner().invoke(main, ["convert", "--from", "flash-pytorch", str(tmp_path / "junk.pt"),
                                       "-o", str(tmp_path / "o.pt")])
    assert result.exit_code == 2 and "could not be loaded" in result.output
