"""`linexport convert --from fla` without fla installed: folders and configs it must refuse,
written by hand (tests/models/test_convert_fla.py holds conversions to fla's own model and
needs flash-linear-attention)."""

import json
import re

import pytest
import torch
from click.testing import CliRunner

from linexport.cli import main
from linexport.errors import LinexportError
from linexport.models.convert_fla import convert_folder, fla_linear_config

CONFIG = {"model_type": "linear_attn", "hidden_size": 48, "num_hidden_layers": 2, "num_heads": 4,
          "vocab_size": 61, "intermediate_size": 80}


def folder(tmp_path, **changes):
    from safetensors.torch import save_file

    path = tmp_path / "fla"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({**CONFIG, **changes}))
    save_file({"model.embeddings.weight": torch.zeros(61, 48)}, str(path / "model.safetensors"))
    return path


def test_fla_defaults_map_to_the_unnormalised_hadamard_layer():
    c = fla_linear_config(CONFIG)
    assert (c.feature_map, c.normalize, c.pos_emb, c.mlp, c.out_norm) == ("elementwise_product", False, "none",
                                                                         "swiglu", True)
    assert (c.n_heads, c.kv_heads(), c.head_dim, c.value_head_dim(), c.d_ff) == (4, 4, 12, 12, 80)
    assert c.q_scale == 12 ** -0.5 and c.eps == 1e-10
    c = fla_linear_config({**CONFIG, "num_kv_heads": 2, "expand_k": 0.5, "expand_v": 2, "norm_feature_map": True,
                           "intermediate_size": None, "hidden_ratio": 3})
    assert (c.kv_heads(), c.head_dim, c.value_head_dim(), c.normalize, c.d_ff) == (2, 6, 24, True, 256)


@pytest.mark.parametrize("changes,match", [
    (dict(feature_map="t2r"), r"'feature_map' = 't2r' is not supported"),
    (dict(norm_q=True), r"'norm_q' = True is not supported"),
    (dict(attn={"layers": [0], "num_heads": 4}), r"'attn' = .* hybrid models"),
    (dict(model_type="mamba"), r"got model_type 'mamba'"),
    (dict(num_heads=5), r"'expand_k': expected hidden_size × expand_k to be an int divisible by num_heads=5"),
], ids=["t2r", "norm_q", "hybrid", "model_type", "heads"])
def test_refused_through_the_cli(tmp_path, changes, match):
    src = folder(tmp_path, **changes)
    with pytest.raises(LinexportError, match=match):
        convert_folder(src, tmp_path / "ckpt.pt")
    result = CliRunner().invoke(main, ["convert", "--from", "fla", str(src), "-o", str(tmp_path / "ckpt.pt")])
    assert result.exit_code == 2 and result.output.startswith("error: ") and re.search(match, result.output)
    assert not (tmp_path / "ckpt.pt").exists()


def test_a_folder_of_pickles_is_not_read(tmp_path):
    src = folder(tmp_path)
    (src / "model.safetensors").rename(src / "pytorch_model.bin")
    with pytest.raises(LinexportError, match="pickled weights are not read"):
        convert_folder(src, tmp_path / "ckpt.pt")
    with pytest.raises(LinexportError, match="does not exist"):
        convert_folder(tmp_path / "nowhere", tmp_path / "ckpt.pt")
