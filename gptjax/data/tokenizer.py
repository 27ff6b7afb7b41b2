"""Tokenizers: char-level (vocabulary from the corpus), GPT-2 BPE through tiktoken, and raw ids.

All are plain data (a char list, the shipped GPT-2 ranks file, a vocabulary size) so a run
directory's `tokenizer.json` rebuilds the exact tokenizer at sampling time without any pickle.

Every tokenizer also says how many UTF-8 bytes of text each id stands for (`token_bytes`), which
bits per byte (val_bpb) divides by: a loss per byte compares runs whatever their tokenizers.
"""

from __future__ import annotations

import json
from functools import cache, cached_property
from pathlib import Path

import numpy as np
import tiktoken
from tiktoken.load import load_tiktoken_bpe

from gptjax.errors import UserError
from gptjax.files import ReadError, read_json

ASSETS = Path(__file__).resolve().parent.parent / "assets"
GPT2_RANKS = ASSETS / "gpt2.tiktoken"
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
EOT = "<|endoftext|>"
GPT2_VOCAB = 50257


class TokenizerError(UserError):
    """Text the tokenizer cannot handle, or a broken tokenizer file."""


class UnsupportedTokenizer(TokenizerError):
    """A well-formed tokenizer file of a kind gptjax does not use."""


class CharTokenizer:
    kind = "char"

    def __init__(self, chars: list[str]):
        self.chars = chars
        self.index = {c: i for i, c in enumerate(chars)}
        self.vocab_size = len(chars)
        self.eot_id = None  # char-level text has no end-of-text token
        # An empty prompt starts from a newline, as a new line of the play would.
        self.bos_ids = [self.index["\n"]] if "\n" in self.index else [0]

    @classmethod
    def fit(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    def encode(self, text: str) -> list[int]:
        missing = sorted(set(text) - self.index.keys())
        if missing:
            shown = "".join(missing[:10])
            raise TokenizerError(f"text has {len(missing)} character(s) outside the char vocabulary: {shown!r}")
        return [self.index[c] for c in text]

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in ids if 0 <= i < self.vocab_size)

    def to_json(self) -> dict:
        return {"kind": "char", "chars": self.chars}

    @cached_property
    def token_bytes(self) -> np.ndarray:
        """UTF-8 bytes of each id's text, [vocab_size]: 1 for ASCII, up to 4 (surrogates as Python keeps them)."""
        return np.array([len(c.encode("utf-8", "surrogatepass")) for c in self.chars], np.int64)


class GPT2Tokenizer:
    kind = "gpt2"

    def __init__(self):
        self.enc = gpt2_encoding()
        self.vocab_size = self.enc.n_vocab  # 50257
        self.eot_id = self.enc.eot_token  # 50256
        self.bos_ids = [self.eot_id]  # GPT-2 starts documents after <|endoftext|>

    def encode(self, text: str) -> list[int]:
        # Text is data, never control: a literal "<|endoftext|>" in a document is encoded
        # as ordinary characters rather than raising or injecting a special token.
        return self.enc.encode_ordinary(text)

    def decode(self, ids) -> str:
        return self.enc.decode([i for i in ids if 0 <= i < self.vocab_size])

    def to_json(self) -> dict:
        return {"kind": "gpt2"}

    @cached_property
    def token_bytes(self) -> np.ndarray:
        """Bytes of each id's byte string, [vocab_size] (a byte-level BPE token may hold part of a character,
        so a sequence's bytes are the sum of its tokens'); <|endoftext|> is a document boundary, not text: 0."""
        lengths = [len(self.enc.decode_single_token_bytes(i)) for i in range(self.vocab_size)]
        lengths[self.eot_id] = 0
        return np.array(lengths, np.int64)


class IdsTokenizer:
    """Token ids written as text ("464 3290 11"), for a model whose text tokenizer gptjax does not
    know, e.g. a converted Hugging Face GPT-2 with its own vocabulary size."""

    kind = "ids"

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self.eot_id = None  # unknown: samples run to their full length
        self.bos_ids = [0]

    def encode(self, text: str) -> list[int]:
        try:
            ids = [int(word) for word in text.split()]
        except ValueError:
            raise TokenizerError(f"this run's tokenizer takes token ids, e.g. --prompt '464 3290 11', "
                                 f"not text: {text[:40]!r}") from None
        if any(not 0 <= i < self.vocab_size for i in ids):
            raise TokenizerError(f"token ids must be in [0, {self.vocab_size}), got {text[:40]!r}")
        return ids

    def decode(self, ids) -> str:
        # Each id with a leading space, so a prompt and its continuation print as one sequence.
        return "".join(f" {i}" for i in ids if 0 <= i < self.vocab_size)

    def to_json(self) -> dict:
        return {"kind": "ids", "vocab_size": self.vocab_size}

    @cached_property
    def token_bytes(self) -> np.ndarray:
        """Bytes of each id as decode writes it (" 464"): this tokenizer's text is the ids themselves."""
        return np.array([len(f" {i}") for i in range(self.vocab_size)], np.int64)


def token_bytes(tokenizer) -> np.ndarray:
    """UTF-8 bytes of each id's text, [vocab_size]: the tokenizer's own `token_bytes`, or else each id decoded
    alone (exact when every token is whole characters; a byte-level BPE must say its own)."""
    own = getattr(tokenizer, "token_bytes", None)
    if own is not None:
        return own
    return np.array([len(tokenizer.decode([i]).encode("utf-8", "surrogatepass"))
                     for i in range(tokenizer.vocab_size)], np.int64)


# GPT-2's pre-tokenizer split: the same pieces as tiktoken's r50k pattern and as `tokenizers`' ByteLevel regex
# (tests/test_rank_consistent.py), written without r50k's possessive quantifiers and with the four
# lookaround-free alternatives in one group (a group keeps their order, which decides a match), so that
# fancy_regex runs them as one automaton instead of trying each in its backtracking VM: tiktoken encodes
# 1.5-2.4x faster with it (BENCHMARKS.md, "Your own tokenizer").
GPT2_SPLIT = r"""(?:'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+)|\s+(?!\S)|\s+"""


@cache
def gpt2_encoding() -> tiktoken.Encoding:
    """tiktoken's `gpt2`/`r50k_base` encoding (the same ids), built from the ranks shipped in assets/."""
    ranks = load_tiktoken_bpe(str(GPT2_RANKS), expected_hash=GPT2_RANKS_SHA256)
    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_SPLIT, mergeable_ranks=ranks,
                             special_tokens={EOT: GPT2_VOCAB - 1}, explicit_n_vocab=GPT2_VOCAB)


# Far above any real vocabulary, far below what would exhaust memory when an embedding is sized by it.
MAX_VOCAB = 1 << 24
MAX_FILE_BYTES = 256 << 20  # a char list of MAX_VOCAB characters, or a large Hugging Face tokenizer.json


def from_json(spec):
    """The tokenizer a tokenizer.json describes, every field checked (the file may be damaged or hostile)."""
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind is None and isinstance(spec, dict) and "model" in spec:  # a Hugging Face tokenizer.json
        from gptjax.data import hf_tokenizer

        try:
            return hf_tokenizer.HFTokenizer(spec)
        except hf_tokenizer.UnsupportedKind as e:
            raise UnsupportedTokenizer(str(e)) from None
        except hf_tokenizer.HFTokenizerError as e:
            raise TokenizerError(str(e)) from None
    if kind == "gpt2":
        return GPT2Tokenizer()
    if kind == "char":
        chars = spec.get("chars")
        if (isinstance(chars, list) and 0 < len(chars) <= MAX_VOCAB and len(set(chars)) == len(chars)
                and all(isinstance(c, str) and len(c) == 1 for c in chars)):
            return CharTokenizer(chars)
        raise TokenizerError("char tokenizer's \"chars\" must be a list of distinct single characters")
    if kind == "ids":
        size = spec.get("vocab_size")
        if isinstance(size, int) and not isinstance(size, bool) and 0 < size <= MAX_VOCAB:
            return IdsTokenizer(size)
        raise TokenizerError(f"ids tokenizer's vocab_size must be an integer in [1, {MAX_VOCAB}], got {size!r}"[:160])
    raise TokenizerError(f"unrecognised tokenizer description: {json.dumps(spec)[:80]}")


def load(path: Path):
    try:  # bounded: a FIFO in its place would block, 20,000 nested `[` would overflow the parser
        spec = read_json(path, max_bytes=MAX_FILE_BYTES)
    except (OSError, ReadError) as e:
        raise TokenizerError(f"cannot read tokenizer file {path}: {str(e)[:160]}; restore it from the run's "
                             f"source, or retrain") from None
    try:
        return from_json(spec)
    except UnsupportedTokenizer as e:
        raise TokenizerError(f"tokenizer file {path} cannot be used: {e}") from None
    except TokenizerError as e:
        raise TokenizerError(f"tokenizer file {path} is damaged: {e}") from None


# data.tokenizer may also name a Hugging Face tokenizer.json (hf_tokenizer.py): the run keeps that file itself.
BUILT_IN = ("char", "gpt2")


def is_path(name: str) -> bool:
    """Whether a data.tokenizer value names a file (or a folder holding tokenizer.json) rather than a kind."""
    return name not in BUILT_IN


def file_of(name: str) -> Path:
    path = Path(name).expanduser()
    return path / "tokenizer.json" if path.is_dir() else path


def load_path(name: str):
    """The tokenizer in the file data.tokenizer names, refused in one line if missing, damaged or unusable."""
    path = file_of(name)
    if not path.is_file():
        raise TokenizerError(f"data.tokenizer file {str(path)!r} not found; data.tokenizer takes char, gpt2, or the "
                             f"path of a tokenizer.json (gptjax tokenizer train writes one)")
    return load(path)


def identity(name: str) -> str:
    """What a data cache key records of the tokenizer: its kind, or a file's content digest (so an edited
    or retrained file gets its own cache entry and the same file under another path shares one)."""
    if not is_path(name):
        return name
    from gptjax.data import hf_tokenizer

    tok = load_path(name)
    return f"sha256:{hf_tokenizer.spec_digest(tok.to_json())}"
