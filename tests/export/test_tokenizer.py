"""A checkpoint's tokenizer.json travels inside the export: copied, hashed, confined."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from linexport.errors import LinexportError
from linexport.export.exporter import export_checkpoint
from linexport.models import build_model
from linexport.models.checkpoint import save_checkpoint

tokenizers = pytest.importorskip("tokenizers", reason="pip install tokenizers (in linexport[test])")


def _tokenizer_json(path):
    """A word-level tokenizer.json over 256 ids: '[UNK]', then single characters."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, **{chr(33 + i): i + 1 for i in range(255)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.save(str(path))
    return tok


@pytest.fixture(scope="module")
def json_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    (root / "ckpt").mkdir()
    tok = _tokenizer_json(root / "ckpt" / "tok.json")
    model = build_model("linear", dict(vocab_size=256, d_model=16, n_layers=1, n_heads=2, head_dim=8, d_ff=32))
    save_checkpoint(model, root / "ckpt" / "model.pt", tokenizer={"type": "json", "file": "tok.json"})
    out = root / "out"
    export_checkpoint(root / "ckpt" / "model.pt", out)
    return root, out, tok


def test_export_copies_and_hashes_the_tokenizer(json_export):
    from linexport.files import file_sha256
    from linexport.runtime import Model

    root, out, tok = json_export
    spec = json.loads((out / "linexport.json").read_text())["tokenizer"]
    assert spec == {"type": "json", "file": "tokenizer.json", "sha256": file_sha256(out / "tokenizer.json")}
    assert (out / "tokenizer.json").read_bytes() == (root / "ckpt" / "tok.json").read_bytes()
    # The export alone is what ships: with the source gone, the runtime still has its tokenizer.
    moved = root / "moved"
    shutil.copytree(out, moved)
    (root / "ckpt" / "tok.json").rename(root / "ckpt" / "gone.json")
    try:
        model = Model(moved)
        assert model.tokenizer.encode("abc") == tok.encode("abc").ids
    finally:
        (root / "ckpt" / "gone.json").rename(root / "ckpt" / "tok.json")


def test_a_changed_or_escaping_tokenizer_is_refused(json_export, tmp_path):
    from linexport.runtime import Model

    _, out, _ = json_export
    changed = tmp_path / "changed"
    shutil.copytree(out, changed)
    (changed / "tokenizer.json").write_text((changed / "tokenizer.json").read_text().replace("[UNK]", "[UNX]"))
    with pytest.raises(LinexportError, match="tokenizer.json to match the sha256"):
        Model(changed)

    # Same bytes, but a symlink to a file outside the export: the runtime must not follow it.
    linked = tmp_path / "linked"
    shutil.copytree(out, linked)
    outside = tmp_path / "outside.json"
    shutil.copyfile(linked / "tokenizer.json", outside)
    (linked / "tokenizer.json").unlink()
    os.symlink(outside, linked / "tokenizer.json")
    with pytest.raises(LinexportError, match="inside"):
        Model(linked)

    escaping = tmp_path / "escaping"
    shutil.copytree(out, escaping)
    manifest = json.loads((escaping / "linexport.json").read_text())
    manifest["tokenizer"]["file"] = "../outside.json"
    (escaping / "linexport.json").write_text(json.dumps(manifest))
    with pytest.raises(LinexportError, match="relative path inside the export"):
        Model(escaping)


def test_export_refuses_a_missing_or_malformed_tokenizer(tmp_path):
    model = build_model("linear", dict(vocab_size=256, d_model=16, n_layers=1, n_heads=2, head_dim=8, d_ff=32))
    save_checkpoint(model, tmp_path / "missing.pt", tokenizer={"type": "json", "file": "nope.json"})
    with pytest.raises(LinexportError, match="nope.json .*to exist"):
        export_checkpoint(tmp_path / "missing.pt", tmp_path / "out1")
    (tmp_path / "bad.json").write_text("{not json")
    save_checkpoint(model, tmp_path / "bad.pt", tokenizer={"type": "json", "file": "bad.json"})
    with pytest.raises(LinexportError, match="unreadable JSON"):
        export_checkpoint(tmp_path / "bad.pt", tmp_path / "out2")
    save_checkpoint(model, tmp_path / "nofile.pt", tokenizer={"type": "json"})
    with pytest.raises(LinexportError, match="to name its file"):
        export_checkpoint(tmp_path / "nofile.pt", tmp_path / "out3")
    assert not (tmp_path / "out1").exists() and not (tmp_path / "out2").exists()
