"""`linexport generate --prompt-file` and `linexport chat` end to end on the bundled demo model
(trained: its replies are text, so a reply from the wrong state shows), against the runtime
driven directly (the same continued prefills, greedy)."""

import numpy as np
import pytest
from click.testing import CliRunner

from linexport.cli import main
from linexport.runtime import Generator, Model, SamplingParams


@pytest.fixture(scope="module")
def linear_out(tmp_path_factory):
    from linexport.cli.common import demo_checkpoint
    from linexport.export.exporter import export_checkpoint

    out = tmp_path_factory.mktemp("demo") / "linear"
    export_checkpoint(demo_checkpoint("linear"), out)
    return out


def test_generate_prompt_file_ingests_in_chunks_and_reports_memory(linear_out, tmp_path):
    rng = np.random.default_rng(0)
    text = bytes(rng.integers(32, 127, 3000).astype(np.uint8)).decode()
    (tmp_path / "p.txt").write_text(text)
    result = CliRunner().invoke(main, ["generate", str(linear_out), "--prompt-file", str(tmp_path / "p.txt"),
                                       "--prefill-chunk", "512", "--max-new-tokens", "12", "--temperature", "0"])
    assert result.exit_code == 0, result.output
    gen = Generator(Model(linear_out, prefill_chunk=4096))  # one-shot reference
    want = "".join(gen.generate(text, SamplingParams(max_new_tokens=12)))
    assert result.stdout == want + "\n"
    assert "ingested 3000 tokens in chunks of 512" in result.stderr
    assert "peak resident memory" in result.stderr and "tok" in result.stderr  # the progress bar


@pytest.mark.parametrize("args,message", [
    (["--prompt", "x", "--prompt-file", "f"], "exactly one of --prompt TEXT and --prompt-file FILE"),
    ([], "exactly one of --prompt TEXT and --prompt-file FILE"),
    (["--prompt-file", "/nonexistent/p.txt"], "cannot read the prompt file"),
])
def test_generate_prompt_options_are_checked(linear_out, args, message):
    result = CliRunner().invoke(main, ["generate", str(linear_out), *args])
    assert result.exit_code == 2 and message in result.output


def _reference_chat(out, turns, max_new_tokens=8, stop="\n\n"):
    """The replies a chat gives: the first turn prefilled, each later one appended, greedy."""
    gen = Generator(Model(out), max_batch=1)
    params = SamplingParams(max_new_tokens=1 << 62)
    seq, replies = None, []
    for turn in turns:
        if seq is None:
            seq = gen.add(turn + "\n", params)
        else:
            gen.append_tokens(seq, turn + "\n")
        reply, decode = "", gen.model.tokenizer.stream_decoder()
        for _ in range(max_new_tokens):
            reply += "".join(decode(t) for _, t in gen.step())
            if stop in reply:
                break
        replies.append(reply)
    return replies


def _chat(out, lines):
    return CliRunner().invoke(main, ["chat", str(out), "--temperature", "0", "--max-new-tokens", "8"],
                              input="".join(line + "\n" for line in lines))


def test_chat_turns_continue_one_state_and_save_load_resumes_it(linear_out, tmp_path):
    turns = ["def f(x):", "return x", "print(f(2))"]
    replies = _reference_chat(linear_out, turns)
    saved = tmp_path / "conv.npz"
    result = _chat(linear_out, [turns[0], turns[1], f"/save {saved}", "/reset", f"/load {saved}", turns[2], "/quit"])
    assert result.exit_code == 0, result.output
    for reply in replies:
        assert reply in result.stdout
    assert "saved" in result.stderr and "loaded" in result.stderr and saved.exists()
    # /reset really forgets: the third turn alone gives the reply of a fresh conversation.
    result = _chat(linear_out, [turns[0], "/reset", turns[2]])
    assert _reference_chat(linear_out, [turns[2]])[0] in result.stdout


def test_chat_refuses_a_state_of_another_model(linear_out, runtime_exports, tmp_path):
    saved = tmp_path / "conv.npz"
    assert _chat(linear_out, ["hello", f"/save {saved}"]).exit_code == 0
    result = _chat(runtime_exports["flash"][0], [f"/load {saved}", "/quit"])
    assert result.exit_code == 0 and "holds the state of another model" in result.stderr
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    result = _chat(linear_out, [f"/load {tmp_path / 'junk.npz'}", "/save", "/quit"])
    assert "is not a linexport snapshot file" in result.stderr and "usage: /save FILE" in result.stderr
