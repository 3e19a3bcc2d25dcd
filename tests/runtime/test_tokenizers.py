import pytest

from linexport.errors import LinexportError
from linexport.runtime.tokenizers import ByteTokenizer, CallableTokenizer, tokenizer_from_spec


def test_byte_tokenizer_round_trip_and_streaming():
    tok = ByteTokenizer()
    text = "def f(x):  # π ≈ 3.14 🐍\n"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    feed = tok.stream_decoder()
    assert "".join(feed(t) for t in ids) == text  # partial UTF-8 characters are held back


def test_callable_tokenizer_streams_merged_pieces():
    vocab = ["he", "llo", " wor", "ld"]
    tok = CallableTokenizer(lambda s: [vocab.index(p) for p in ["he", "llo"]],
                            lambda ids: "".join(vocab[i] for i in ids))
    feed = tok.stream_decoder()
    assert [feed(i) for i in [0, 1, 2, 3]] == ["he", "llo", " wor", "ld"]
    assert tok.encode("hello") == [0, 1]


def test_unknown_tokenizer_spec():
    assert isinstance(tokenizer_from_spec({"type": "bytes"}), ByteTokenizer)
    with pytest.raises(LinexportError, match="unknown tokenizer type 'bpe'"):
        tokenizer_from_spec({"type": "bpe"})
