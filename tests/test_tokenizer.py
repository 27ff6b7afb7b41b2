"""Tokenizers: GPT-2 BPE equals tiktoken's own r50k_base encoding; char-level round-trips."""

import hashlib
import shutil

import pytest
import tiktoken

from gptjax.data import tokenizer as tokenizers
from gptjax.data.tokenizer import CharTokenizer, GPT2Tokenizer, TokenizerError

SAMPLES = ["Hello world", "", " leading space", "ROMEO:\nWhat light through yonder window breaks?",
           "naïve café — 日本語 🙂", "tabs\tand\r\nnewlines\n\n\n", "It's we'll they've I'd 12345 3.14",
           "<|endoftext|> as plain text"]


def test_known_token_ids():
    tok = GPT2Tokenizer()
    # Published ids (the transformers GPT2Tokenizer docs and model card), not computed with tiktoken.
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode(" Hello world") == [18435, 995]
    assert tok.encode("Hello, my dog is cute") == [15496, 11, 616, 3290, 318, 13779]
    assert (tok.vocab_size, tok.eot_id) == (50257, 50256)


def test_shipped_ranks_are_gpt2s():
    digest = hashlib.sha256(tokenizers.GPT2_RANKS.read_bytes()).hexdigest()
    assert digest == tokenizers.GPT2_RANKS_SHA256


def test_matches_tiktoken_r50k_base_built_by_tiktoken_itself(tmp_path, monkeypatch):
    # Let tiktoken build its own r50k_base from our file placed in its cache (no network):
    # tiktoken names cache entries by the sha1 of the download URL.
    url = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"
    shutil.copy(tokenizers.GPT2_RANKS, tmp_path / hashlib.sha1(url.encode()).hexdigest())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    reference = tiktoken.get_encoding("r50k_base")
    ours = GPT2Tokenizer()
    for text in SAMPLES:
        assert ours.encode(text) == reference.encode_ordinary(text)
        assert ours.decode(ours.encode(text)) == text


def test_char_tokenizer_round_trips_and_rejects_unknown_chars():
    tok = CharTokenizer.fit("hello\nworld")
    assert tok.vocab_size == len(set("hello\nworld"))
    assert tok.decode(tok.encode("low\nhold")) == "low\nhold"
    assert tok.bos_ids == tok.encode("\n")
    with pytest.raises(TokenizerError, match="outside the char vocabulary: 'z'"):
        tok.encode("hez")


def test_tokenizers_rebuild_from_json():
    for tok in (CharTokenizer.fit("abc\n"), GPT2Tokenizer()):
        again = tokenizers.from_json(tok.to_json())
        assert again.encode("abc\n") == tok.encode("abc\n")
