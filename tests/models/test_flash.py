"""The GAU/FLASH LM: parallel == recurrent, prefill + steps == parallel (rows at different
positions too), ragged batches, the mixed-chunk op and the model against the naive definition,
the exact fixed-size state, and prefill continued from any state == one prefill."""

import dataclasses

import pytest
import torch

import linexport.models.flash as flash_module
from linexport.errors import LinexportError
from linexport.models.checkpoint import load_checkpoint, save_checkpoint
from linexport.models.config import config_from_dict
from linexport.models.flash import FlashConfig, FlashLM
from linexport.models.ops.mixed_chunk_attention import chunk_mixed_attention, step_mixed_attention
from linexport.models.ops.mixed_chunk_attention.naive import naive_mixed_chunk_attention, naive_mixed_chunk_state
from tests.conftest import rel_err, run_steps

V = 53
CONFIGS = {
    "default-options-c8": dict(),
    "layernorm-laplace-noshift-c8": dict(norm="layernorm", attn_fn="laplace", shift_tokens=False),
    "no-bias-no-abs-odd-dims-c8": dict(rel_pos_bias=False, abs_pos_emb=False, d_model=27, qk_dim=11,
                                       rotary_dim=6, expansion=1.3),
    "odd-chunk5-no-rotary": dict(chunk_size=5, rotary_dim=0, d_model=22, qk_dim=9, expansion=2.0),
}
# T relative to the chunk size C: one token, around one chunk, and long odd lengths.
LENGTHS = {"T1": lambda C: 1, "T=C-1": lambda C: C - 1, "T=C": lambda C: C, "T=C+1": lambda C: C + 1,
           "T97": lambda C: 97, "T1025": lambda C: 1025}


def make_model(name, **overrides):
    kwargs = dict(vocab_size=V, d_model=24, n_layers=2, qk_dim=12, expansion=1.5, chunk_size=8, rotary_dim=8)
    model = FlashLM(FlashConfig(**{**kwargs, **CONFIGS[name], **overrides})).eval()
    with torch.no_grad():  # weights big enough that every part of the layer matters
        for pname, p in model.named_parameters():
            if p.dim() == 2:
                p.mul_(3.0)
            if "rel_pos_bias" in pname:
                p.normal_(0, 0.3)
    return model


@pytest.mark.parametrize("length", list(LENGTHS))
@pytest.mark.parametrize("name", list(CONFIGS))
@torch.no_grad()
def test_parallel_equals_recurrent(name, length):
    model = make_model(name)
    T = LENGTHS[length](model.config.chunk_size)
    ids = torch.randint(0, V, (2, T))
    logits, state = model(ids, return_state=True)
    rec, rec_state = run_steps(model, ids)
    assert rel_err(rec, logits) <= 1e-5
    assert rec_state.keys() == state.keys()
    for key in state:
        assert rel_err(rec_state[key], state[key]) <= 1e-5, key


@pytest.mark.parametrize("split", [3, 8, 15, 21])
@pytest.mark.parametrize("name", ["default-options-c8", "odd-chunk5-no-rotary"])
@torch.no_grad()
def test_prefill_then_steps_equals_parallel(name, split):
    model = make_model(name)
    ids = torch.randint(0, V, (3, 40))  # 40 - split steps: every split crosses chunk boundaries
    last, state = model.prefill(ids[:, :split])
    steps, _ = run_steps(model, ids[:, split:], state, start=split)
    full = model(ids)
    assert rel_err(last, full[:, split - 1]) <= 1e-5
    assert rel_err(steps, full[:, split:]) <= 1e-5


def _ragged(lengths, total):
    """Per-row sequences of ``total`` tokens and a right-padded batch of their first ``lengths``
    tokens whose padding is random garbage (it must not leak into anything)."""
    seqs = torch.randint(0, V, (len(lengths), total))
    padded = torch.randint(0, V, (len(lengths), max(lengths)))
    for i, n in enumerate(lengths):
        padded[i, :n] = seqs[i, :n]
    return seqs, padded


@torch.no_grad()
def test_ragged_batch_matches_unpadded():
    model = make_model("default-options-c8")
    lengths = [29, 8, 5, 16]  # partial chunk, exactly one chunk, < one chunk, two chunks
    seqs, padded = _ragged(lengths, 29)
    last, state = model.prefill(padded, torch.tensor(lengths))
    for i, n in enumerate(lengths):
        ref_last, ref_state = model.prefill(seqs[i:i + 1, :n])
        assert rel_err(last[i], ref_last[0]) <= 1e-5
        for key in state:
            torch.testing.assert_close(state[key][i], ref_state[key][0], rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_steps_with_rows_at_different_positions():
    """After a ragged prefill every row decodes from its own position, so rows reach (and fold)
    their chunk boundaries at different steps — the decode graph's situation."""
    model = make_model("default-options-c8")
    lengths, k = [13, 8, 1, 22], 11
    seqs, padded = _ragged(lengths, max(lengths) + k)
    _, state = model.prefill(padded, torch.tensor(lengths))
    position = torch.tensor(lengths)
    for t in range(k):
        tokens = seqs.gather(1, position.view(-1, 1)).squeeze(1)
        logits, state = model.step(tokens, position, state)
        for i in range(len(lengths)):
            expected = model(seqs[i:i + 1, :lengths[i] + t + 1])[0, -1]
            assert rel_err(logits[i], expected) <= 1e-5, (i, t)
        position = position + 1


def _random_op_inputs(T, B=2, S=5, E=7, C=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    qq, qk, lq, lk = (torch.randn(B, T, S, generator=g, dtype=torch.float64) for _ in range(4))
    v = torch.randn(B, T, E, generator=g, dtype=torch.float64)
    bias = torch.randn(C, C, generator=g, dtype=torch.float64)
    return qq, qk, lq, lk, v, bias


def _assert_state_is_naive(state, qk, lk, v, C, lengths, tol):
    for b, n in enumerate(lengths):
        expected = naive_mixed_chunk_state(qk[b], lk[b], v[b], C, n)
        for name, got, ref in zip(("lin_kv", "k_buf", "v_buf"), state, expected):
            assert (got[b] - ref).abs().max() <= tol * ref.abs().max().clamp(min=1.0), (name, b, n)


@pytest.mark.parametrize("attn_fn", ["relu2", "laplace"])
@pytest.mark.parametrize("T", [1, 7, 8, 9, 30], ids=lambda t: f"T{t}")
def test_mixed_chunk_op_matches_naive(attn_fn, T):
    """fp64 in, fp64 math: the chunked and step forms agree with the definition to rounding."""
    C = 8
    qq, qk, lq, lk, v, bias = _random_op_inputs(T, C=C, seed=T)
    ref = naive_mixed_chunk_attention(qq, qk, lq, lk, v, bias, C, attn_fn)
    out, state = chunk_mixed_attention(qq, qk, lq, lk, v, bias, C, attn_fn)
    assert out.dtype == torch.float64 and rel_err(out, ref) <= 1e-12
    _assert_state_is_naive(state, qk, lk, v, C, [T, T], 1e-12)

    step_state = tuple(torch.zeros(s, dtype=torch.float64) for s in ((2, 5, 7), (2, C, 10), (2, C, 7)))
    outs = []
    for t in range(T):
        o, step_state = step_mixed_attention(torch.stack([qq[:, t], lq[:, t]], 1), torch.stack([qk[:, t], lk[:, t]], 1),
                                             v[:, t], bias, torch.full((2,), t), step_state, attn_fn)
        outs.append(o)
    assert rel_err(torch.stack(outs, 1), ref) <= 1e-12
    _assert_state_is_naive(step_state, qk, lk, v, C, [T, T], 1e-12)

    out32, _ = chunk_mixed_attention(*(t.float() for t in (qq, qk, lq, lk, v, bias)), C, attn_fn)
    assert out32.dtype == torch.float32 and rel_err(out32, ref) <= 1e-5


def test_mixed_chunk_op_state_with_lengths():
    """Padding after each row's length changes neither its outputs nor its state."""
    C, lengths = 8, [19, 16, 1, 8, 7]
    qq, qk, lq, lk, v, bias = _random_op_inputs(19, B=len(lengths), C=C)
    out, state = chunk_mixed_attention(qq, qk, lq, lk, v, bias, C, "relu2", torch.tensor(lengths))
    _assert_state_is_naive(state, qk, lk, v, C, lengths, 1e-12)
    for b, n in enumerate(lengths):
        ref = naive_mixed_chunk_attention(*(t[b:b + 1, :n] for t in (qq, qk, lq, lk, v)), bias, C, "relu2")
        assert rel_err(out[b:b + 1, :n], ref) <= 1e-12


def _naive_chunk_mixed_attention(quad_q, quad_k, lin_q, lin_k, v, bias, chunk_size, attn_fn, lengths,
                                 initial_state=None, offset=None):
    """Drop-in for the model's chunked op from a fresh state, computed from the definition (fp64 loops)."""
    assert initial_state is None and offset is None
    out = naive_mixed_chunk_attention(quad_q, quad_k, lin_q, lin_k, v, bias, chunk_size, attn_fn)
    rows = [naive_mixed_chunk_state(quad_k[b], lin_k[b], v[b], chunk_size, int(n)) for b, n in enumerate(lengths)]
    return out, tuple(torch.stack(parts) for parts in zip(*rows))


@pytest.mark.parametrize("name", list(CONFIGS))
@torch.no_grad()
def test_model_forward_matches_naive_attention(name, monkeypatch):
    """The model's forward (fp64 and fp32) against the same model whose attention is the naive
    definition in fp64: logits and the prefill state."""
    model = make_model(name)
    T = 2 * model.config.chunk_size + 3
    ids = torch.randint(0, V, (2, T))
    logits32, state32 = model(ids, return_state=True)
    model64 = make_model(name).double()
    model64.load_state_dict(model.state_dict())
    logits64, state64 = model64(ids, return_state=True)
    monkeypatch.setattr(flash_module, "chunk_mixed_attention", _naive_chunk_mixed_attention)
    ref, ref_state = model64(ids, return_state=True)
    assert ref.dtype == torch.float64 and ref.abs().max() > 1.0
    assert rel_err(logits64, ref) <= 1e-12
    assert rel_err(logits32, ref) <= 1e-5
    for key in ref_state:
        assert rel_err(state64[key], ref_state[key]) <= 1e-12, key
        assert rel_err(state32[key], ref_state[key]) <= 1e-5, key


@pytest.mark.parametrize("name", list(CONFIGS))
def test_state_is_fixed_size_and_matches_specs(name):
    model = make_model(name)
    c = model.config
    specs = {s.name: s for s in model.state_specs()}
    names = ["lin_kv", "k_buf", "v_buf"] + (["shift"] if c.shift_tokens else [])
    assert list(specs) == [f"{i}.{n}" for i in range(c.n_layers) for n in names]
    S, E, C = c.qk_dim, c.hidden_dim, c.chunk_size
    expected = {"lin_kv": (S, E), "k_buf": (C, 2 * S), "v_buf": (C, E), "shift": ((c.d_model + 1) // 2,)}
    for key, spec in specs.items():
        assert spec.shape == ("batch", *expected[key.split(".")[1]]) and spec.dtype == torch.float32
    with torch.no_grad():
        _, short = model.prefill(torch.randint(0, V, (3, 2)))
        _, long = model.prefill(torch.randint(0, V, (3, 300)))
        _, stepped = model.step(torch.zeros(3, dtype=torch.int64), torch.tensor([0, 7, 300]), model.initial_state(3))
    for state in (short, long, stepped):
        assert {k: (v.shape, v.dtype) for k, v in state.items()} == {
            k: (torch.Size((3, *s.shape[1:])), torch.float32) for k, s in specs.items()}


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_checkpoint_round_trip(name, suffix, tmp_path):
    model = make_model(name)
    assert config_from_dict(FlashConfig, dataclasses.asdict(model.config)) == model.config
    save_checkpoint(model, tmp_path / f"f{suffix}")
    loaded, meta = load_checkpoint(tmp_path / f"f{suffix}")
    assert meta["arch"] == "flash" and loaded.config == model.config
    ids = torch.randint(0, V, (1, 20))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))


@pytest.mark.parametrize("kwargs,match", [
    (dict(rotary_dim=7), "rotary_dim must be even"),
    (dict(rotary_dim=64), "rotary_dim must be even and in"),
    (dict(d_model=25), "even d_model"),
    (dict(chunk_size=0), "chunk_size must be >= 1"),
    (dict(expansion=0.01), "expansion must give a hidden size >= 1"),
    (dict(rel_pos_buckets=32, rel_pos_max_distance=16), "rel_pos_max_distance must exceed"),
], ids=["odd-rotary", "rotary-over-qk", "odd-d-with-sinusoid", "chunk0", "tiny-expansion", "bucket-distance"])
def test_bad_configs(kwargs, match):
    with pytest.raises(LinexportError, match=match):
        FlashConfig(**{**dict(d_model=24, qk_dim=12, rotary_dim=8), **kwargs})
    with pytest.raises(LinexportError, match=match):
        config_from_dict(FlashConfig, {**dataclasses.asdict(FlashConfig(d_model=24, qk_dim=12, rotary_dim=8)),
                                       **kwargs})


# -- continued prefill: forward(..., position, state) -------------------------------------------

def _pieces(sizes):
    """Random sequences cut into pieces: row i's piece p has ``sizes[i][p]`` tokens (0 allowed).
    Returns (seqs [B, longest total], totals [B], [(ids, lengths, position)] one per piece), each
    piece right-padded with random garbage (it must not leak into anything)."""
    sizes = torch.tensor(sizes)
    ends = sizes.cumsum(1)
    totals = ends[:, -1]
    seqs = torch.randint(0, V, (len(sizes), max(int(totals.max()), 1)))
    pieces = []
    for n, end in zip(sizes.T, ends.T):
        start = end - n
        ids = torch.randint(0, V, (len(sizes), max(int(n.max()), 1)))
        for i in range(len(sizes)):
            ids[i, :n[i]] = seqs[i, start[i]:end[i]]
        pieces.append((ids, n, start))
    return seqs, totals, pieces


def _assert_continuation_matches(logits, state, start, n, full_logits, full_state, tol, before=None):
    """Logits of a piece's n tokens at start.. and its state against one prefill's (per row);
    rows without new tokens keep ``before`` bit for bit."""
    for i in range(len(n)):
        s, e = int(start[i]), int(start[i] + n[i])
        if n[i] > 0:
            assert rel_err(logits[i, :n[i]], full_logits[i, s:e]) <= tol, i
        for key in full_state:
            if n[i] == 0 and before is not None:
                assert torch.equal(state[key][i], before[key][i]), (key, i)
            ref = full_state[key][i]
            assert (state[key][i] - ref).abs().max() <= tol * ref.abs().max().clamp(min=1.0), (key, i)


def _steps_from(model, ids, state, position):
    """``model.step`` over ids [B, k] from per-row positions; returns (logits [B, k, V], state)."""
    logits = []
    for t in range(ids.shape[1]):
        out, state = model.step(ids[:, t], position + t, state)
        logits.append(out)
    return torch.stack(logits, 1), state


def _two_piece_sizes(C):
    """(a, b) per row: a at 0, C - 1, C, C + 1; a + b at C - 1, C, C + 1; b = 0 on some rows."""
    return [[0, C - 1], [0, C + 1], [1, C - 2], [C - 1, 1], [C, 1], [C + 1, C], [C - 1, 0], [3, 2 * C + 1],
            [2 * C + 3, 4], [5, 0], [0, 0]]


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)], ids=["fp32", "fp64"])
@pytest.mark.parametrize("name", list(CONFIGS))
@torch.no_grad()
def test_continued_prefill_equals_one_prefill(name, dtype, tol):
    """prefill(a) then forward(b, position=a, state) == prefill(a + b) on a ragged batch whose
    rows start their second piece at every offset kind; then k decode steps agree too."""
    model = make_model(name).to(dtype)
    seqs, totals, ((ids_a, a, _), (ids_b, b, _)) = _pieces(_two_piece_sizes(model.config.chunk_size))
    _, state_a = model(ids_a, a, return_state=True)
    logits, state = model(ids_b, b, return_state=True, position=a, state=state_a)
    full_logits, full_state = model(seqs, totals, return_state=True)
    _assert_continuation_matches(logits, state, a, b, full_logits, full_state, tol, before=state_a)

    k = 4
    tokens = torch.randint(0, V, (len(a), k))
    steps, _ = _steps_from(model, tokens, state, totals)
    ref_steps, _ = _steps_from(model, tokens, full_state, totals)
    assert rel_err(steps, ref_steps) <= tol


@pytest.mark.parametrize("name", list(CONFIGS))
@torch.no_grad()
def test_continuation_in_pieces_equals_one_prefill(name):
    """Five pieces of various sizes per row (0 too), the first from position 0 with no state:
    after each piece, logits and state as one prefill of everything so far."""
    model = make_model(name)
    C = model.config.chunk_size
    sizes = [[3, 5, 9, 0, 2], [8, 1, 7, 13, 1], [0, 13, 2, 6, 5], [C - 1, 1, C, C + 1, 0], [1, 1, 1, 1, 1]]
    seqs, totals, pieces = _pieces(sizes)
    full_logits = model(seqs, totals)
    state = None
    for ids, n, start in pieces:
        before = state
        logits, state = model(ids, n, return_state=True, position=start, state=state)
        _, ref_state = model(seqs, start + n, return_state=True)
        _assert_continuation_matches(logits, state, start, n, full_logits, ref_state, 1e-5, before)


def test_mixed_chunk_op_continues_from_state():
    """The op in fp64, from the state after a tokens, with ragged offsets: out and state as one
    pass over a + b tokens (the definition's state), both quadratic functions, C = 8 and 5."""
    for C, attn_fn in ((8, "relu2"), (5, "laplace")):
        a, b = (torch.tensor(col) for col in zip(*_two_piece_sizes(C)))
        T = int((a + b).max())
        qq, qk, lq, lk, v, bias = _random_op_inputs(T, B=len(a), C=C, seed=C)
        full, _ = chunk_mixed_attention(qq, qk, lq, lk, v, bias, C, attn_fn)
        _, state_a = chunk_mixed_attention(qq, qk, lq, lk, v, bias, C, attn_fn, a)
        # Each row's b tokens from index a, right-padded with garbage.
        index = torch.arange(int(b.max())).unsqueeze(0) + a.unsqueeze(1)
        real = (index < (a + b).unsqueeze(1)).unsqueeze(-1)
        parts = [torch.where(real, t.gather(1, index.clamp(max=T - 1).unsqueeze(-1).expand(-1, -1, t.shape[-1])),
                             torch.randn(*index.shape, t.shape[-1], dtype=t.dtype))
                 for t in (qq, qk, lq, lk, v)]
        out, state = chunk_mixed_attention(*parts, bias, C, attn_fn, b, state_a, a % C)
        _assert_state_is_naive(state, qk, lk, v, C, (a + b).tolist(), 1e-12)
        for i in range(len(a)):
            if b[i] > 0:
                assert rel_err(out[i, :b[i]], full[i, a[i]:a[i] + b[i]]) <= 1e-12, i
            else:
                assert all(torch.equal(s[i], s0[i]) for s, s0 in zip(state, state_a)), i


def _bad_continuation(model, what):
    """forward's arguments for 3 sequences of 4 tokens continuing from position 9, with one bad."""
    state = model.initial_state(3)
    args = dict(lengths=torch.tensor([4, 0, 2]), position=torch.tensor([9, 9, 9]), state=state)
    spec = model.state_specs()[0].name
    bad = {
        "length-over-T": dict(lengths=torch.tensor([5, 0, 2])),
        "negative-length": dict(lengths=torch.tensor([4, -1, 2])),
        "lengths-shape": dict(lengths=torch.tensor([4, 0])),
        "position-int32": dict(position=torch.tensor([9, 9, 9], dtype=torch.int32)),
        "position-shape": dict(position=torch.tensor([[9, 9, 9]])),
        "negative-position": dict(position=torch.tensor([9, -1, 9])),
        "missing-entry": dict(state={k: v for k, v in state.items() if k != spec}),
        "unknown-entry": dict(state={**state, "9.lin_kv": state[spec]}),
        "state-shape": dict(state={**state, spec: state[spec][:2]}),
        "state-fp16": dict(state={**state, spec: state[spec].half()}),
    }[what]
    return {**args, **bad}


@pytest.mark.parametrize("what,match", [
    ("length-over-T", r"lengths \(new tokens per sequence\) must be in \[0, 4\]"),
    ("negative-length", r"must be in \[0, 4\], got \[4, -1, 2\]"),
    ("lengths-shape", r"expected lengths of shape \[3\]"),
    ("position-int32", r"expected position int64 \[3\]"),
    ("position-shape", r"expected position int64 \[3\]"),
    ("negative-position", "position must be >= 0"),
    ("missing-entry", r"missing \['0.lin_kv'\], unknown \[\]"),
    ("unknown-entry", r"missing \[\], unknown \['9.lin_kv'\]"),
    ("state-shape", r"expected state '0.lin_kv' torch.float32 \[3, 12, 36\]"),
    ("state-fp16", r"expected state '0.lin_kv' torch.float32 .*got torch.float16"),
])
def test_bad_continuation_inputs(what, match):
    model = make_model("default-options-c8")
    with pytest.raises(LinexportError, match=match):
        model(torch.randint(0, V, (3, 4)), return_state=True, **_bad_continuation(model, what))


class _ContinueGraph(torch.nn.Module):
    """forward with a state as a graph: (input_ids, lengths, position, *past) -> (logits, *present)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.names = [s.name for s in model.state_specs()]

    def forward(self, input_ids, lengths, position, *past):
        logits, state = self.model(input_ids, lengths, True, position, dict(zip(self.names, past)))
        return (logits, *(state[name] for name in self.names))


@torch.no_grad()
def test_continued_prefill_exports_without_control_flow():
    """torch.export → ONNX gives plain ops (no If/Loop/Scan), and ONNX Runtime runs a ragged batch
    at mixed offsets (one row without new tokens, whose random state must come back exactly)."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from linexport.export.graphs import quiet_exporter

    model = make_model("default-options-c8", d_model=8, n_layers=1, qk_dim=4, expansion=1.0, chunk_size=4,
                       rotary_dim=2)
    graph = _ContinueGraph(model).eval()
    specs = model.state_specs()
    example = (torch.randint(0, V, (2, 5)), torch.tensor([5, 3]), torch.tensor([6, 3]),
               *(torch.full((2, *s.shape[1:]), 0.5) for s in specs))
    dyn = torch.export.Dim.DYNAMIC
    with quiet_exporter():
        dynamic = ({0: dyn, 1: dyn}, {0: dyn}, {0: dyn}, tuple({0: dyn} for _ in specs))
        program = torch.onnx.export(graph, example, dynamo=True, optimize=True, dynamic_shapes=dynamic)
    proto = program.model_proto
    onnx.checker.check_model(proto)
    ops = {n.op_type for n in proto.graph.node} | {n.op_type for f in proto.functions for n in f.node}
    assert not ops & {"If", "Loop", "Scan"}, ops

    inputs = (torch.randint(0, V, (4, 11)), torch.tensor([11, 0, 4, 7]), torch.tensor([0, 5, 3, 9]),
              *(torch.randn(4, *s.shape[1:]) for s in specs))
    expected = graph(*inputs)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    got = session.run(None, dict(zip(names, (t.numpy() for t in inputs))))
    lengths = inputs[1]
    real = torch.arange(11).unsqueeze(0) < lengths.unsqueeze(1)
    assert rel_err(torch.from_numpy(got[0])[real], expected[0][real]) <= 1e-5
    for g, e, past in zip(got[1:], expected[1:], inputs[3:]):
        assert rel_err(torch.from_numpy(g), e) <= 1e-5
        assert torch.equal(e[1], past[1]) and torch.equal(torch.from_numpy(g[1]), past[1])


@torch.no_grad()
def test_step_moves_only_its_ring_row_and_the_evicted_token():
    """A decode step from a random state, rows at every kind of offset: k_buf/v_buf change only
    at row position % C (the new token), lin_kv only by the evicted token's Σ lin_k vᵀ / C —
    the decode graph rewrites nothing else (fp64, exact where nothing may change)."""
    C, B, S, E = 8, 5, 5, 7
    g = torch.Generator().manual_seed(3)
    state = (torch.randn(B, S, E, generator=g, dtype=torch.float64),
             torch.randn(B, C, 2 * S, generator=g, dtype=torch.float64),
             torch.randn(B, C, E, generator=g, dtype=torch.float64))
    q, k = (torch.randn(B, 2, S, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, E, generator=g, dtype=torch.float64)
    position = torch.tensor([0, 3, 7, 8, 21])  # offsets 0, 3, 7 (chunk end), 0 (new chunk), 5
    _, (lin_kv, k_buf, v_buf) = step_mixed_attention(q, k, v, torch.randn(C, C, dtype=torch.float64),
                                                     position, state, "relu2")
    for b, row in enumerate((position % C).tolist()):
        others = [r for r in range(C) if r != row]
        assert torch.equal(k_buf[b, others], state[1][b, others]) and torch.equal(v_buf[b, others], state[2][b, others])
        assert torch.equal(k_buf[b, row], k[b].flatten()) and torch.equal(v_buf[b, row], v[b])
        evicted = torch.outer(state[1][b, row, S:], state[2][b, row]) / C
        torch.testing.assert_close(lin_kv[b], state[0][b] + evicted, rtol=1e-14, atol=1e-14)
