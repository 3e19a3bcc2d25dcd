"""`linexport genai`: onnxruntime-genai's og.Generator runs the folder, and its greedy tokens are
linexport's runtime's, for the demo linear model and a flash one (its state packed), at batch
1 (with a second append_tokens turn; genai allows one append per generator at batch > 1) and
at batch 2 and 3 (ragged prompts, right-padded by genai's tokenizer); the graph against the
PyTorch model for rows at different points of their sequences, padded anywhere; the byte-level
tokenizer is the bytes one."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from linexport.cli import main
from linexport.cli.common import demo_checkpoint
from linexport.errors import LinexportError
from linexport.export.exporter import export_checkpoint
from linexport.export.genai import (GENAI_CONFIG, GRAPH_FILE, LayerLayout, export_genai, genai_layout,
                                    io_names)
from linexport.export.tokenizer import byte_level_symbols
from linexport.models import build_model
from linexport.models.checkpoint import save_checkpoint
from linexport.models.registry import ARCHS
from linexport.runtime.generator import Generator
from linexport.runtime.model import Model
from linexport.runtime.sampling import SamplingParams

og = pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is not installed (pip install onnxruntime-genai)")

PROMPTS = ["def fibonacci(n):\n    ", "import os\n", "class Stack:\n    def push(self, x):"]
SECOND_TURN = "\n    return self.items\n"
N = 24  # greedy tokens per turn


@pytest.fixture(scope="module", params=["linear-demo", "flash-tiny"])
def folders(request, tmp_path_factory):
    """(genai folder, linexport export) of the demo linear model, or of a tiny random flash one
    (the demo flash model costs minutes to export twice; the packing is the same)."""
    root = tmp_path_factory.mktemp(f"genai-{request.param}")
    if request.param == "linear-demo":
        ckpt = demo_checkpoint("linear")
    else:
        torch.manual_seed(0)
        ckpt = root / "flash.pt"
        save_checkpoint(build_model("flash", ARCHS["flash"].test_config), ckpt)
    export_genai(ckpt, root / "genai")
    export_checkpoint(ckpt, root / "linexport")
    return root / "genai", root / "linexport"


def _genai_greedy(folder, rows: np.ndarray | list, n: int, second: list[int] | None = None) -> list[list[int]]:
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=512, do_sample=False, batch_size=len(rows))
    gen = og.Generator(model, params)
    gen.append_tokens(rows if not isinstance(rows, list) else og.Tokenizer(model).encode_batch(rows))
    out = [[] for _ in range(len(rows))]

    def run():
        for _ in range(n):
            gen.generate_next_token()
            for i, token in enumerate(gen.get_next_tokens()):
                out[i].append(int(token))
    run()
    if second is not None:
        gen.append_tokens(np.array([second], dtype=np.int32))
        run()
    return out


def _ours_greedy(export, prompts: list[str], n: int, second: str | None = None) -> list[list[int]]:
    gen = Generator(Model(export, num_slots=len(prompts)), max_batch=len(prompts))
    seqs = gen.add_many(prompts, SamplingParams(max_new_tokens=1 << 62))
    out = [[] for _ in prompts]

    def run():
        for _ in range(n):
            for seq, token in gen.step():
                out[seqs.index(seq)].append(token)
    run()
    if second is not None:
        gen.append_tokens(seqs[0], second)
        run()
    return out


def test_batch_1_with_a_second_turn_is_linexports_runtime(folders):
    genai, ours = folders
    prompt = list(PROMPTS[0].encode())
    got = _genai_greedy(genai, np.array([prompt], dtype=np.int32), N, list(SECOND_TURN.encode()))
    want = _ours_greedy(ours, [PROMPTS[0]], N, SECOND_TURN)
    assert got == want
    assert len(set(got[0])) > 3  # a real continuation, not one token repeated


@pytest.mark.parametrize("batch", [2, 3])
def test_ragged_batch_padded_by_genais_tokenizer_is_linexports_runtime(folders, batch):
    genai, ours = folders
    assert _genai_greedy(genai, PROMPTS[:batch], N) == _ours_greedy(ours, PROMPTS[:batch], N)


def test_the_graph_is_what_genai_expects(folders):
    genai, _ = folders
    proto = onnx.load(str(genai / GRAPH_FILE))
    config = json.loads((genai / GENAI_CONFIG).read_text())["model"]
    n = config["decoder"]["num_hidden_layers"]
    assert [v.name for v in proto.graph.input] == io_names(n)["inputs"]
    assert [v.name for v in proto.graph.output] == io_names(n)["outputs"]
    shape = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
             for v in [*proto.graph.input, *proto.graph.output]}
    assert shape["input_ids"] == ["batch_size", "sequence_length"]
    assert shape["attention_mask"] == ["batch_size", "total_sequence_length"]
    assert shape["logits"] == ["batch_size", 1, config["vocab_size"]]  # pruned: last token only
    for i in range(n):  # genai: conv rank 3, recurrent rank 4, only the batch dim dynamic
        for past, present, rank in ((f"past_key_values.{i}.conv_state", f"present.{i}.conv_state", 3),
                                    (f"past_key_values.{i}.recurrent_state", f"present.{i}.recurrent_state", 4)):
            assert len(shape[past]) == rank and shape[past][0] == "batch_size"
            assert all(isinstance(d, int) and d > 0 for d in shape[past][1:])
            assert shape[present][1:] == shape[past][1:]
    assert not any(n.op_type in ("If", "Loop", "Scan") for n in proto.graph.node)


def test_the_graph_continues_each_row_as_the_pytorch_model(tmp_path):
    """ONNX Runtime on the graph against the PyTorch model directly, for an arch with learned
    positions too: rows of one batch at different points of their sequences, with padding where
    the mask says (genai's trailing pads, and leading ones as well), continue exactly as the
    model's own step by step."""
    for arch in ("linear", "flash"):
        config = dict(ARCHS[arch].test_config)
        if arch == "linear":
            config["pos_emb"] = "learned"
        model = build_model(arch, config).eval()
        save_checkpoint(model, tmp_path / f"{arch}.pt")
        export_genai(tmp_path / f"{arch}.pt", tmp_path / arch)
        session = ort.InferenceSession(str(tmp_path / arch / GRAPH_FILE), providers=["CPUExecutionProvider"])
        layout = genai_layout(model)
        gen = torch.Generator().manual_seed(1)
        histories = [torch.randint(0, model.config.vocab_size, (n,), generator=gen) for n in (0, 5, 11)]
        news = [torch.randint(0, model.config.vocab_size, (n,), generator=gen) for n in (7, 3, 1)]
        # The reference: each row alone, token by token from a fresh state.
        want_logits, want_state = [], []
        for h, x in zip(histories, news):
            state, logits = model.initial_state(1), None
            for t, token in enumerate(torch.cat([h, x])):
                with torch.no_grad():
                    logits, state = model.step(token.view(1), torch.tensor([t]), state)
            want_logits.append(logits[0])
            want_state.append(state)
        # The graph: first each history (rows with none pass through), then the new tokens,
        # row 0 padded on the right, row 1 on the left, in one batch.
        feeds_state = _zeros_state(layout, 3)
        total = max(len(h) for h in histories)
        ids = np.zeros((3, total), np.int64)
        mask = np.zeros((3, total), np.int64)
        for b, h in enumerate(histories):
            ids[b, total - len(h):], mask[b, total - len(h):] = h.numpy(), 1  # left-padded
        _, feeds_state = _run(session, layout, ids, mask, feeds_state)
        S = max(len(x) for x in news)
        new_ids, new_mask = np.zeros((3, S), np.int64), np.zeros((3, S), np.int64)
        for b, x in enumerate(news):
            sl = slice(0, len(x)) if b != 1 else slice(S - len(x), S)
            new_ids[b, sl], new_mask[b, sl] = x.numpy(), 1
        logits, state = _run(session, layout, new_ids, np.concatenate([mask, new_mask], 1), feeds_state)
        for b in range(3):
            np.testing.assert_allclose(logits[b, 0], want_logits[b].numpy(), rtol=1e-4, atol=1e-4)
            for i, lay in enumerate(layout):
                for name in lay.recurrent:
                    got = _unpacked(state[f"past_key_values.{i}.recurrent_state"][b], lay, lay.recurrent, name)
                    np.testing.assert_allclose(got, want_state[b][f"{i}.{name}"][0].numpy(), rtol=1e-4, atol=1e-5)
                for name in lay.conv:
                    got = _unpacked(state[f"past_key_values.{i}.conv_state"][b], lay, lay.conv, name)
                    np.testing.assert_allclose(got, want_state[b][f"{i}.{name}"][0].numpy(), rtol=1e-4, atol=1e-5)


def _zeros_state(layout: list[LayerLayout], batch: int) -> dict:
    state = {}
    for i, lay in enumerate(layout):
        state[f"past_key_values.{i}.conv_state"] = np.zeros((batch, *lay.conv_shape), np.float32)
        state[f"past_key_values.{i}.recurrent_state"] = np.zeros((batch, *lay.recurrent_shape), np.float32)
    return state


def _run(session, layout, ids, mask, past):
    outputs = session.run(None, {"input_ids": ids, "attention_mask": mask, **past})
    names = [o.name for o in session.get_outputs()]
    present = dict(zip(names[1:], outputs[1:]))
    return outputs[0], {k.replace("present.", "past_key_values.", 1): v for k, v in present.items()}


def _unpacked(packed: np.ndarray, lay: LayerLayout, names, name) -> np.ndarray:
    flat, start = packed.reshape(-1), 0
    for n in names:
        size = int(np.prod(lay.sizes[n]))
        if n == name:
            return flat[start:start + size].reshape(lay.sizes[n])
        start += size
    raise AssertionError(name)


def test_the_byte_level_tokenizer_is_the_bytes_tokenizer(folders):
    genai, _ = folders
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer.from_file(str(genai / "tokenizer.json"))
    text = "def f(x):\n\treturn x  # é, 数, \U0001f600\x00\x7f"
    assert tok.encode(text).ids == list(text.encode())
    assert tok.decode(list(range(256)), skip_special_tokens=False).encode("utf-8", "replace")  # every id decodes
    g = og.Tokenizer(og.Model(str(genai)))
    text = text.replace("\x00", "")  # genai's tokenizer takes a C string: NUL ends it
    assert [int(t) for t in g.encode(text)] == list(text.encode())
    assert g.decode(np.array(list(text.encode()), dtype=np.int32)) == text
    assert len(set(byte_level_symbols())) == 256


def test_kv_cache_archs_are_refused_with_the_reason(tmp_path):
    for arch in (a for a, spec in ARCHS.items() if spec.kv_cache):
        save_checkpoint(build_model(arch, ARCHS[arch].test_config), tmp_path / f"{arch}.pt")
        with pytest.raises(LinexportError, match="KV cache that grows"):
            export_genai(tmp_path / f"{arch}.pt", tmp_path / f"{arch}-out")
        assert not (tmp_path / f"{arch}-out").exists()


def test_cli_writes_the_folder_and_refuses_bad_options(tmp_path):
    save_checkpoint(build_model("linear", ARCHS["linear"].test_config), tmp_path / "m.pt")
    out = tmp_path / "g"
    result = CliRunner().invoke(main, ["genai", "--model", str(tmp_path / "m.pt"), "-o", str(out),
                                       "--threads", "1", "--eos-token-id", "10"])
    assert result.exit_code == 0, result.output
    config = json.loads((out / GENAI_CONFIG).read_text())
    assert config["model"]["eos_token_id"] == 10
    assert config["model"]["decoder"]["session_options"]["intra_op_num_threads"] == 1
    assert sorted(p.name for p in out.iterdir()) == ["genai_config.json", "model.onnx", "tokenizer.json",
                                                     "tokenizer_config.json"]
    og.Model(str(out))  # genai accepts the config
    # An id outside the vocabulary: refused, the folder left as it was.
    before = (out / GENAI_CONFIG).read_bytes()
    result = CliRunner().invoke(main, ["genai", "--model", str(tmp_path / "m.pt"), "-o", str(out),
                                       "--pad-token-id", "256"])
    assert result.exit_code == 2 and "expected pad_token_id in [0, 256)" in result.output
    assert (out / GENAI_CONFIG).read_bytes() == before
    # A folder of other files is not replaced.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    result = CliRunner().invoke(main, ["genai", "--model", str(tmp_path / "m.pt"), "-o", str(tmp_path / "other")])
    assert result.exit_code == 2 and "holds other files" in result.output


def test_a_json_tokenizer_travels_with_its_special_tokens(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {f"t{i}": i for i in range(64)} | {"<s>": 64, "</s>": 65, "<pad>": 66}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="t0"))
    tok.add_special_tokens(["<s>", "</s>", "<pad>"])
    tok.save(str(tmp_path / "tokenizer.json"))
    config = dict(ARCHS["linear"].test_config, vocab_size=67)
    save_checkpoint(build_model("linear", config), tmp_path / "m.pt",
                    tokenizer={"type": "json", "file": "tokenizer.json"})
    config = export_genai(tmp_path / "m.pt", tmp_path / "g")["model"]
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (64, 65, 66)
    assert (tmp_path / "g" / "tokenizer.json").read_bytes() == (tmp_path / "tokenizer.json").read_bytes()
