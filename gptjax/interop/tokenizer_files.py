"""A run's tokenizer in the files transformers' AutoTokenizer reads, written with the standard library alone.

GPT-2 BPE: GPT-2's own vocab.json and merges.txt, derived from the tiktoken ranks gptjax ships
(each token is the merge of the two parts BPE splits it into using only the ranks below its own).
Char-level: a tokenizer.json whose model is a BPE with the characters as its vocabulary and no
merges, so every character is one token, decoded by joining them (the Fuse decoder). A run
trained with a Hugging Face tokenizer.json exports that file as it is.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from tiktoken.load import load_tiktoken_bpe

from gptjax.data import tokenizer as tokenizers

# transformers must not tidy spaces on decoding (" ." -> "."): the text would differ from sample.py's.
COMMON = {"clean_up_tokenization_spaces": False, "add_bos_token": False, "add_eos_token": False}


def write(out: Path, tok, n_ctx: int) -> list[str]:
    """The tokenizer files for `tok` in `out`; returns their names ([] for a tokenizer HF cannot express)."""
    if tok.kind == "gpt2":
        files = {"vocab.json": json.dumps(gpt2_vocab(), ensure_ascii=False),
                 "merges.txt": "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in gpt2_merges()),
                 "tokenizer_config.json": json.dumps({
                     "tokenizer_class": "GPT2Tokenizer", "model_max_length": n_ctx, "add_prefix_space": False,
                     **{f"{k}_token": tokenizers.EOT for k in ("bos", "eos", "unk")}, **COMMON}, indent=2)}
    elif tok.kind == "char":
        files = {"tokenizer.json": json.dumps(char_tokenizer_json(tok.chars), ensure_ascii=False),
                 "tokenizer_config.json": json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                                      "model_max_length": n_ctx, **COMMON}, indent=2)}
    elif tok.kind == "hf":  # a Hugging Face tokenizer.json the run trained with (gptjax tokenizer train)
        eos = {"eos_token": tok.tok.id_to_token(tok.eot_id)} if tok.eot_id is not None else {}
        files = {"tokenizer.json": json.dumps(tok.spec, ensure_ascii=False),
                 "tokenizer_config.json": json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                                      "model_max_length": n_ctx, **eos, **COMMON}, indent=2)}
    else:  # token ids as text: the model's real tokenizer is unknown to gptjax
        return []
    for name, text in files.items():
        (out / name).write_text(text.rstrip("\n") + "\n", encoding="utf-8")
    return list(files)


def char_tokenizer_json(chars: list[str]) -> dict:
    """The `tokenizers` library's serialized form: no normalizer or pre-tokenizer, one token per character."""
    model = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
             "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
             "vocab": {c: i for i, c in enumerate(chars)}, "merges": []}
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
            "pre_tokenizer": None, "post_processor": None, "decoder": {"type": "Fuse"}, "model": model}


@functools.cache
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte (its encoder.py's bytes_to_unicode): vocab.json is in these."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return {b: chr(b if b in printable else next(extra)) for b in range(256)}


def _text(token: bytes) -> str:
    table = byte_to_unicode()
    return "".join(table[b] for b in token)


@functools.cache
def _gpt2_ranks() -> dict[bytes, int]:
    return load_tiktoken_bpe(str(tokenizers.GPT2_RANKS), expected_hash=tokenizers.GPT2_RANKS_SHA256)


def gpt2_vocab() -> dict[str, int]:
    ranks = _gpt2_ranks()
    return {**{_text(token): rank for token, rank in ranks.items()}, tokenizers.EOT: tokenizers.GPT2_VOCAB - 1}


def gpt2_merges() -> list[tuple[str, str]]:
    """Every multi-byte token, in rank order, as the pair of tokens it was merged from."""
    ranks = _gpt2_ranks()
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) > 1:
            left, right = _split(token, ranks, rank)
            merges.append((_text(left), _text(right)))
    return merges


def _split(token: bytes, ranks: dict[bytes, int], below: int) -> tuple[bytes, bytes]:
    """BPE on `token` with only the merges ranked below its own: what is left is the last merge's two parts."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        pairs = [(ranks.get(a + b, below), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        rank, i = min(pairs)
        if rank >= below:
            raise ValueError(f"token {token!r} is not a merge of two tokens")
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return parts[0], parts[1]
