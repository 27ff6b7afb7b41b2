"""A Hugging Face `tokenizer.json` (one `gptjax tokenizer train` wrote, or a hub model's) as a gptjax tokenizer.

The file itself is the description: a run directory's `tokenizer.json` is the Hugging Face file, so
`tokenizers.Tokenizer.from_file` and `transformers` read it as they read any hub model's.

One engine per file, everywhere (preparation, prompts, inspect, the API), so prompts and prepared data
never disagree: tiktoken for a rank-consistent byte-level BPE (bpe_ranks.py: what `gptjax tokenizer
train` writes; the same ids, several times faster), `tokenizers` for any other file.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re

import numpy as np

from gptjax.data import bpe_ranks
from gptjax.data.bpe_ranks import BYTE_OF

# Tokens that end a document, most usual first: the one a sampler stops at and preparation appends.
EOT_NAMES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eot_id|>", "[SEP]")
# Kinds whose decode loses text by design: out-of-vocabulary words become [UNK] and decoding
# re-spaces punctuation, so samples and bits per byte would not be of the text trained on.
LOSSY = {"WordPiece": "decodes with spaces around punctuation and maps unseen words to [UNK]",
         "WordLevel": "maps every word outside its vocabulary to one unknown token"}


class HFTokenizerError(ValueError):
    """The file is not a Hugging Face tokenizer.json (damaged, or something else)."""


class UnsupportedKind(HFTokenizerError):
    """A well-formed tokenizer of a kind gptjax refuses; the message says why."""


BYTE_FALLBACK = re.compile(r"<0x[0-9A-Fa-f]{2}>")


class HFTokenizer:
    kind = "hf"

    def __init__(self, spec: dict):
        from tokenizers import Tokenizer  # Rust, loaded only for runs that use it

        model = spec.get("model") if isinstance(spec, dict) else None
        kind = model.get("type") if isinstance(model, dict) else None
        if kind in LOSSY:
            raise UnsupportedKind(f"it is a {kind} tokenizer, which {LOSSY[kind]}; gptjax needs one whose decode "
                                   f"gives back the text (BPE or Unigram): train one with gptjax tokenizer train")
        try:
            self.tok = Tokenizer.from_str(json.dumps(spec))
        except Exception as e:  # the Rust parser's message names the field and position
            raise HFTokenizerError(f"not a Hugging Face tokenizer.json ({str(e).splitlines()[0][:120]})") from None
        self.spec = spec
        self.model_type = kind
        self.digest = spec_digest(spec)
        self.fast = bpe_ranks.encoding(spec, self.digest)  # a tiktoken Encoding, or None
        self.engine = "tokenizers" if self.fast is None else "tiktoken"
        # Text is data, never control: a literal "<|endoftext|>" in a document is ordinary characters.
        self.tok.encode_special_tokens = True
        vocab = self.tok.get_vocab(with_added_tokens=True)
        self.vocab_size = max(vocab.values()) + 1
        specials = {t.content for t in self.tok.get_added_tokens_decoder().values() if t.special}
        self.eot_id = next((vocab[name] for name in EOT_NAMES if name in specials), None)
        bos = next((vocab[n] for n in ("<|begin_of_text|>", "<s>", "<bos>", "[CLS]") if n in specials), None)
        self.bos_ids = [self.eot_id if self.eot_id is not None else bos if bos is not None else 0]

    def encode(self, text: str) -> list[int]:
        if self.fast is not None:  # ordinary: a literal "<|endoftext|>" is text, as encode_special_tokens says
            return self.fast.encode_ordinary(text)
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self.fast is not None:
            return [self.fast.encode_ordinary(text) for text in texts]
        return [e.ids for e in self.tok.encode_batch_fast(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids if 0 <= i < self.vocab_size]
        if self.fast is not None:
            return self.fast.decode(ids)  # invalid UTF-8 becomes U+FFFD, as `tokenizers`' from_utf8_lossy does
        return self.tok.decode(ids, skip_special_tokens=False)

    def to_json(self) -> dict:
        return self.spec

    @functools.cached_property
    def token_bytes(self) -> np.ndarray:
        """UTF-8 bytes of text each token id stands for, [vocab_size], as bits per byte divides by
        (a byte-level token may hold part of a character; special tokens and unused ids: 0)."""
        lengths = np.zeros(self.vocab_size, dtype=np.int64)
        specials = {i for i, t in self.tok.get_added_tokens_decoder().items() if t.special}
        byte_level = "ByteLevel" in json.dumps(self.spec.get("decoder")) + json.dumps(self.spec.get("pre_tokenizer"))
        for piece, i in self.tok.get_vocab(with_added_tokens=True).items():
            if i not in specials:
                lengths[i] = _piece_bytes(piece, byte_level)
        return lengths


def _piece_bytes(piece: str, byte_level: bool) -> int:
    if byte_level and all(c in BYTE_OF for c in piece):
        return len(piece)  # one alphabet character per byte
    if BYTE_FALLBACK.fullmatch(piece):
        return 1  # SentencePiece's byte fallback, <0x41>
    return len(piece.replace("\u2581", " ").encode("utf-8"))  # SentencePiece marks a space with U+2581


def spec_digest(spec: dict) -> str:
    """The tokenizer's content digest: what a cache key and a run's inputs.json record."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


@functools.lru_cache(maxsize=4)
def cached(path: str, digest: str) -> HFTokenizer:
    """A preparation worker's tokenizer, built once per process; refused if the file changed meanwhile."""
    from gptjax.data import tokenizer as tokenizers

    tok = tokenizers.load_path(path)
    if tok.digest != digest:
        raise tokenizers.TokenizerError(f"tokenizer file {path} changed during preparation; run again")
    return tok
