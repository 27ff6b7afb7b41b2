"""Rank-consistent byte-level BPE files: tiktoken (gptjax's engine for them) and Hugging Face `tokenizers`
reading the same file give the same ids; any other file stays with `tokenizers` (real libraries, no mocks)."""

import itertools
import json
import random

import numpy as np
import pytest
import tiktoken
from tiktoken_ext.openai_public import r50k_pat_str
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from gptjax.config import DataConfig
from gptjax.data import bpe_ranks, dataset, tokenizer_train
from gptjax.data import tokenizer as tokenizers
from tests.test_own_tokenizer import HARD, PLAY

EDGES = HARD + ["<|endoftext|>", "a<|endoftext|>b <|endoftext|>\n", "\u2028\u2029\u3000\u00a0 x\u200b",
                " \n \n\n  word  \t\n", "x" + "\U0001F600" * 30, "\u00e9\u0301\u0308" * 40, "1234567 89 ,,,;;",
                "''s'S'll 'VE", "\x85\x0b\x0c\x1c mixed", "\ufffd\ufffe\uffff"]

# Each code point in the contexts GPT-2's split tells apart (letters, numbers, spaces before, runs, line ends,
# contractions, the end of the text): all of them up to U+3100 (every script's common letters, all the
# spaces, U+2028, U+3000), and a spread of the rest.
CODE_POINTS = [chr(c) for c in [*range(0x3100), *range(0x3100, 0x110000, 61)] if not 0xD800 <= c < 0xE000]
SWEEP = [f"a{c}b {c}{c} 1{c}\n{c}\n's{c} 'll {c}  {c}x{c}\t{c}" for c in CODE_POINTS]


def _trained(text: str, vocab_size: int) -> dict:
    """What `tokenizers`' trainer writes (one merge per token, in the order learnt): not rank-consistent."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([text], trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[tokenizers.EOT], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return json.loads(tok.to_str())


def _hf(spec: dict) -> Tokenizer:
    """The file as `tokenizers` reads it, special tokens in text kept as text (as gptjax encodes)."""
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.encode_special_tokens = True
    return tok


def _same_ids(spec: dict, texts: list[str]) -> None:
    fast, hf = tokenizers.from_json(spec), _hf(spec)
    assert fast.engine == "tiktoken"
    expected = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
    assert [fast.encode(t) for t in texts] == expected
    assert fast.encode_batch(texts) == expected
    for text in texts:
        assert fast.decode(fast.encode(text)) == text


@pytest.fixture(scope="module")
def bpe2048():
    """`gptjax tokenizer train`'s file: a 2048-token BPE of the play's first 90%."""
    return json.loads(tokenizer_train.train_bpe(iter([PLAY[:1_000_000]]), 2048))


def test_trained_file_is_rank_consistent_and_deterministic(bpe2048):
    model = bpe2048["model"]
    assert model["ignore_merges"] is True
    assert model["merges"] == bpe_ranks.complete_merges(model["vocab"], {tokenizers.EOT})
    assert tokenizer_train.train_bpe(iter([PLAY[:1_000_000]]), 2048) == json.dumps(bpe2048, indent=2,
                                                                                       ensure_ascii=False)
    # the trainer's vocabulary and its merges are kept: only the other splits are added
    raw = _trained(PLAY[:1_000_000], 2048)["model"]
    assert model["vocab"] == raw["vocab"] and set(map(tuple, raw["merges"])) <= set(map(tuple, model["merges"]))


def test_tiktoken_gives_the_ids_of_tokenizers_on_the_play_and_hard_text(bpe2048):
    _same_ids(bpe2048, [PLAY] + PLAY.splitlines(keepends=True)[:4000] + EDGES + SWEEP)


def test_gptjax_split_is_tiktokens_r50k_split():
    """GPT2_SPLIT, r50k's pattern regrouped for speed, gives tiktoken's own GPT-2 ids."""
    ours = tokenizers.gpt2_encoding()
    stock = tiktoken.Encoding("r50k", pat_str=r50k_pat_str, mergeable_ranks=ours._mergeable_ranks,
                              special_tokens=ours._special_tokens)
    assert ours._pat_str != stock._pat_str
    texts = [PLAY, *EDGES, *SWEEP]
    assert ours.encode_ordinary_batch(texts) == stock.encode_ordinary_batch(texts)


def test_tiktoken_gives_the_ids_of_tokenizers_on_token_soup(bpe2048):
    """Strings glued from tokens and from halves of tokens with several splits: where a wrong merge order shows."""
    vocab = bpe2048["model"]["vocab"]
    of = {i: bytes(bpe_ranks.BYTE_OF[c] for c in t) for t, i in vocab.items() if t != tokenizers.EOT}
    rng = random.Random(0)
    halves = [of[vocab[a]] + b"|" + of[vocab[b]] for a, b in bpe2048["model"]["merges"]]
    soup = [b"".join(rng.choice(halves).replace(b"|", b"") if rng.random() < 0.5 else of[rng.randrange(1, 2048)]
                     for _ in range(rng.randint(1, 8))).decode("utf-8", "replace") for _ in range(5000)]
    _same_ids(bpe2048, soup)


def test_every_small_vocabulary_agrees_on_every_short_text():
    """Random BPE-like vocabularies (each token two earlier ones glued) over a 3-letter alphabet: every
    text of up to 7 letters, with and without a leading space, gets the same ids from both engines."""
    rng = random.Random(1)
    words = ["".join(w) for n in range(1, 8) for w in itertools.product("abc", repeat=n)]
    texts = words + [" " + w for w in words]
    for _ in range(12):
        spec = _trained("x", 257)
        vocab, tokens = spec["model"]["vocab"], ["a", "b", "c", "Ġ"]
        while len(tokens) < 20:
            token = rng.choice(tokens) + rng.choice(tokens)
            if token not in vocab and len(token) <= 5:
                vocab[token] = len(vocab)
                tokens.append(token)
        _same_ids(bpe_ranks.make_rank_consistent(spec), texts)


def test_decode_of_any_ids_matches_tokenizers(bpe2048):
    fast, hf = tokenizers.from_json(bpe2048), _hf(bpe2048)
    rng = np.random.default_rng(0)
    for n in [1, 2, 3, 7, 50]:  # lone continuation bytes, cut characters: both write U+FFFD the same way
        for _ in range(200):
            ids = rng.integers(0, 2048, size=n).tolist()
            assert fast.decode(ids) == hf.decode(ids, skip_special_tokens=False)


def test_literal_end_of_text_is_text_in_both_engines(bpe2048):
    fast = tokenizers.from_json(bpe2048)
    ids = fast.encode("a <|endoftext|> b<|endoftext|>")
    assert fast.eot_id not in ids and ids == _hf(bpe2048).encode("a <|endoftext|> b<|endoftext|>",
                                                                 add_special_tokens=False).ids


def _without_one_merge(spec):
    merges = spec["model"]["merges"]
    return {**spec, "model": {**spec["model"], "merges": merges[:100] + merges[101:]}}


@pytest.mark.parametrize("damage", [
    lambda s: _trained(PLAY[:200_000], 600),  # a file trained before this form: the trainer's merges only
    _without_one_merge,
    lambda s: {**s, "model": {**s["model"], "ignore_merges": False}},
    lambda s: {**s, "normalizer": {"type": "NFC"}},
    lambda s: {**s, "pre_tokenizer": {**s["pre_tokenizer"], "add_prefix_space": True}},
    lambda s: {**s, "added_tokens": s["added_tokens"] + [{**s["added_tokens"][0], "id": 600, "content": "Ġthe",
                                                          "special": False}]},
])
def test_other_files_stay_with_tokenizers_and_still_work(damage, tmp_path):
    spec = damage(json.loads(tokenizer_train.train_bpe(iter([PLAY[:200_000]]), 600)))
    tok = tokenizers.from_json(spec)
    assert tok.engine == "tokenizers" and tok.fast is None
    text = PLAY[-2000:] + EDGES[0]
    assert tok.encode(text) == _hf(spec).encode(text, add_special_tokens=False).ids
    assert tok.decode(tok.encode(text)) == _hf(spec).decode(tok.encode(text), skip_special_tokens=False)
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec))
    assert tokenizers.identity(str(path)) == f"sha256:{tok.digest}"  # the cache key follows the content


def test_preparation_uses_the_file_ranks_and_matches_tokenizers(bpe2048, tmp_path):
    docs = [PLAY[i * 5000:(i + 1) * 5000] for i in range(30)] + EDGES
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    (tmp_path / "tokenizer.json").write_text(json.dumps(bpe2048))
    ds = dataset.prepare(DataConfig(source=str(tmp_path / "docs.jsonl"), tokenizer=str(tmp_path / "tokenizer.json"),
                                    cache_dir=str(tmp_path / "c"), chunk_chars=4096, num_proc=1, val_fraction=1e-6))
    hf = _hf(bpe2048)
    expected = [i for d in docs if d for i in [*hf.encode(d, add_special_tokens=False).ids, 0]]  # "" is no document
    assert ds.train.dtype == np.uint16 and ds.train.tolist() + ds.val.tolist() == expected
