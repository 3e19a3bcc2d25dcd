"""Checkpoints round-trip, and every bad input gets one clear LinexportError."""

import json
import pickle

import pytest
import torch

from linexport.errors import LinexportError
from linexport.models.checkpoint import FORMAT_TAG, load_checkpoint, save_checkpoint
from linexport.models.linear import LinearConfig, LinearLM


@pytest.fixture
def model():
    return LinearLM(LinearConfig(vocab_size=32, d_model=16, n_layers=2, n_heads=2, head_dim=8, d_ff=24)).eval()


def _raw(model):
    return {"format": FORMAT_TAG, "format_version": 1, "arch": "linear",
            "config": model.config_dict(), "state_dict": model.state_dict()}


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_round_trip(model, tmp_path, suffix):
    path = tmp_path / f"ckpt{suffix}"
    save_checkpoint(model, path)
    loaded, meta = load_checkpoint(path)
    assert meta["arch"] == "linear" and meta["tokenizer"] == {"type": "bytes"}
    assert loaded.config == model.config
    ids = torch.randint(0, 32, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))
    # Tied embeddings stay tied after loading.
    assert loaded.lm_head.weight.data_ptr() == loaded.embed.weight.data_ptr()
    assert not list(tmp_path.glob(".*tmp")), "temp files left behind"


def test_directory_with_one_checkpoint_loads(model, tmp_path):
    save_checkpoint(model, tmp_path / "model.safetensors")
    loaded, _ = load_checkpoint(tmp_path)
    assert loaded.config == model.config


def test_missing_file(tmp_path):
    with pytest.raises(LinexportError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_truncated_file(model, tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(model, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(LinexportError, match="truncated or corrupt"):
        load_checkpoint(path)


def test_garbage_file(tmp_path):
    path = tmp_path / "ckpt.pt"
    path.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(LinexportError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(path)


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED_BY_CHECKPOINT",))


def test_pickled_objects_are_refused_and_never_run(model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    raw = _raw(model)
    raw["payload"] = _Evil()
    torch.save(raw, path)
    with pytest.raises(LinexportError, match="refuses to unpickle"):
        load_checkpoint(path)
    assert not (tmp_path / "PWNED_BY_CHECKPOINT").exists()


def test_plain_pickle_file_is_refused(tmp_path):
    path = tmp_path / "ckpt.pt"
    path.write_bytes(pickle.dumps({"format": FORMAT_TAG, "obj": _Evil()}))
    with pytest.raises(LinexportError):
        load_checkpoint(path)


def test_bare_state_dict_hints_convert(model, tmp_path):
    path = tmp_path / "sd.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(LinexportError, match="linexport convert"):
        load_checkpoint(path)


@pytest.mark.parametrize("mutate,match", [
    (lambda r: r.update(arch="mamba"), "unknown architecture 'mamba'"),
    (lambda r: r.update(format_version=99), "format version 99"),
    (lambda r: r["config"].update(n_experts=4), r"unknown keys \['n_experts'\]"),
    (lambda r: r["config"].update(n_heads="two"), "n_heads: expected an int"),
    (lambda r: r["config"].update(feature_map="softmax"), r"feature_map: expected one of \['elu', 'relu', 'identity', 'elementwise_product'\]"),
    (lambda r: r["config"].update(n_layers=3), r"missing keys \['blocks.2"),
    (lambda r: r["config"].update(n_layers=1), r"unexpected keys \['blocks.1"),
    (lambda r: r["config"].update(d_ff=25), "has shape .* but the config implies"),
    (lambda r: r["state_dict"]["blocks.0.attn.qkv.weight"].__setitem__((0, 0), float("nan")), "NaN or Inf"),
    (lambda r: r["state_dict"].update({"blocks.0.norm1.weight": "not a tensor"}), "dict of tensors"),
], ids=["unknown-arch", "future-version", "unknown-config-key", "config-wrong-type", "config-bad-choice",
        "missing-keys", "unexpected-keys", "shape-mismatch", "non-finite", "non-tensor"])
def test_bad_checkpoints(model, tmp_path, mutate, match):
    raw = _raw(model)
    raw["state_dict"] = {k: v.clone() for k, v in raw["state_dict"].items()}
    mutate(raw)
    path = tmp_path / "bad.pt"
    torch.save(raw, path)
    with pytest.raises(LinexportError, match=match):
        load_checkpoint(path)


def test_safetensors_needs_its_config(model, tmp_path):
    save_checkpoint(model, tmp_path / "m.safetensors")
    (tmp_path / "m.json").unlink()
    with pytest.raises(LinexportError, match="expected the config"):
        load_checkpoint(tmp_path / "m.safetensors")


def test_safetensors_corrupt(model, tmp_path):
    save_checkpoint(model, tmp_path / "m.safetensors")
    (tmp_path / "m.safetensors").write_bytes(b"garbage")
    with pytest.raises(LinexportError, match="not a readable safetensors"):
        load_checkpoint(tmp_path / "m.safetensors")
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(LinexportError, match="not valid JSON"):
        load_checkpoint(tmp_path / "m.safetensors")


def test_failed_save_leaves_previous_checkpoint(model, tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(model, path)
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        save_checkpoint(model, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
    json.dumps(model.config_dict())  # the config is plain JSON-able data


def _measure_load(path) -> str:
    """Loads ``path`` in a fresh process; returns 'error: <message> | rss_mib=<peak RSS>'. The
    peak is the new process's own (Linux: VmHWM of its address space): getrusage's ru_maxrss
    carries over fork + exec, so it would report pytest's own peak whenever that is larger."""
    import subprocess
    import sys

    code = ("import resource, sys\n"
            "from linexport.errors import LinexportError\n"
            "from linexport.models.checkpoint import load_checkpoint\n"
            "try:\n"
            f"    load_checkpoint({str(path)!r}); out = 'loaded'\n"
            "except LinexportError as e:\n"
            "    out = 'error: ' + str(e)\n"
            "try:\n"
            "    hwm = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:'))\n"
            "except OSError:\n"
            "    hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "print(out, '| rss_mib=%d' % (hwm // 1024))\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300).stdout


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_config_the_weights_do_not_back_allocates_nothing(model, tmp_path, suffix):
    """A small checkpoint whose config claims d_model = 3·10**6 (3 GB of embeddings alone) is
    refused from the tensors' shapes before any module is built: the process stays small."""
    path = tmp_path / f"bomb{suffix}"
    save_checkpoint(model, path)
    if suffix == ".pt":
        raw = torch.load(path, weights_only=True)
        raw["config"]["d_model"] = 3 * 10**6
        torch.save(raw, path)
    else:
        meta = json.loads(path.with_suffix(".json").read_text())
        meta["config"]["d_model"] = 3 * 10**6
        path.with_suffix(".json").write_text(json.dumps(meta))
    out = _measure_load(path)
    assert out.startswith("error: ") and "has shape" in out, out
    assert int(out.rsplit("rss_mib=", 1)[1]) < 1500, out


def test_a_config_deeper_than_its_weights_is_refused_at_once(model, tmp_path):
    import time

    path = tmp_path / "deep.pt"
    raw = _raw(model)
    raw["config"]["n_layers"] = 10**7
    torch.save(raw, path)
    start = time.perf_counter()
    with pytest.raises(LinexportError, match="n_layers=10000000, but the weights hold 2 layers"):
        load_checkpoint(path)
    assert time.perf_counter() - start < 10


def test_a_config_sized_buffer_is_bounded(tmp_path):
    """FLASH's relative-position buckets are a [C, C] buffer sized by chunk_size alone, stored in
    no checkpoint: a chunk_size of 10**5 (80 GB of int64) is refused before it is allocated."""
    from linexport.models.flash import FlashConfig, FlashLM

    flash = FlashLM(FlashConfig(vocab_size=32, d_model=16, n_layers=1, qk_dim=8, rotary_dim=4, chunk_size=16))
    path = tmp_path / "flash.pt"
    save_checkpoint(flash, path)
    raw = torch.load(path, weights_only=True)
    raw["config"]["chunk_size"] = 10**5
    torch.save(raw, path)
    out = _measure_load(path)
    assert out.startswith("error: ") and "MiB of buffers" in out, out


def test_plain_pickles_are_named_and_no_message_suggests_unsafe_loading(model, tmp_path):
    from linexport.models.convert_flash_pytorch import load_flash_pytorch_state_dict

    plain = tmp_path / "plain.pt"
    with open(plain, "wb") as f:
        pickle.dump({"weights": [1.0, 2.0]}, f)
    with pytest.raises(LinexportError, match="plain Python pickle") as err:
        load_checkpoint(plain)
    assert "weights_only=False" not in str(err.value)

    evil = tmp_path / "evil.pt"
    torch.save({"layers.0.w": torch.zeros(1), "payload": _Evil()}, evil)
    for load in (load_checkpoint, load_flash_pytorch_state_dict):
        with pytest.raises(LinexportError, match="refuses to unpickle") as err:
            load(evil)
        assert "weights_only" not in str(err.value) and "Weights only load failed" not in str(err.value)
    with pytest.raises(LinexportError, match="plain Python pickle"):
        load_flash_pytorch_state_dict(plain)
