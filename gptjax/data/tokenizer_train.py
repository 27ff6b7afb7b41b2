"""Training a byte-level BPE on a data.source, and measuring tokenizers' compression on its held-out text.

The tokenizer learns from the text a training run trains on and never sees the text it validates on:
the same documents are held out as in preparation (by the hash of each document's index), and a
source that is one text file (the built-in play) holds out its tail.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from gptjax.config import DataConfig
from gptjax.data import bpe_ranks, pipeline, sources
from gptjax.data import tokenizer as tokenizers
from gptjax.data.sources import Source

MIN_VOCAB = 257  # the 256 bytes, so any text encodes, and <|endoftext|>


def texts(src: Source, cfg: DataConfig, split: str, max_chars: int | None = None) -> Iterator[str]:
    """The source's train or val text, streamed in pieces of at most data.chunk_chars."""
    single = len(src.paths) == 1 and sources.loader_of(src.paths[0]) == "text" and \
        src.paths[0].suffix.lower() not in sources.COMPRESSIONS
    # Characters stand in for bytes: exact for ASCII, the tail a little longer than val_fraction otherwise.
    tail_at = (1 - cfg.val_fraction) * src.total_bytes if single else None
    seen = given = 0
    for doc, text, _, _ in pipeline.pieces(src, cfg, pipeline.bpe_cut):
        if single:
            cut = int(min(max(tail_at - seen, 0), len(text)))
            seen += len(text)
            text = text[:cut] if split == "train" else text[cut:]
        elif bool(pipeline.held_out(np.array([doc]), cfg.val_fraction)[0]) != (split == "val"):
            continue
        if max_chars is not None and given + len(text) > max_chars:
            yield text[:max_chars - given]
            return
        given += len(text)
        if text:
            yield text


def with_progress(stream: Iterable[str], total_chars: float | None, report: Callable[[str], None],
                  every_s: float = 1.0) -> Iterator[str]:
    """The stream unchanged, reporting characters read (and an ETA where the size is known) as it goes."""
    t0 = last = time.perf_counter()
    chars = 0
    for text in stream:
        chars += len(text)
        now = time.perf_counter()
        if now - last >= every_s:
            last, rate = now, chars / max(now - t0, 1e-9)
            eta = f", ETA {(total_chars - chars) / rate:.0f}s" if total_chars and chars < total_chars else ""
            report(f"tokenizer: read {chars / 1e6:.1f}M chars, {rate / 1e6:.1f}M chars/s{eta}")
        yield text
    report(f"tokenizer: read {chars / 1e6:.1f}M chars in {time.perf_counter() - t0:.0f}s; learning merges")


def train_bpe(stream: Iterable[str], vocab_size: int) -> str:
    """A byte-level BPE (GPT-2's split and byte alphabet, <|endoftext|> as id 0) as tokenizer.json text,
    in the rank-consistent form (bpe_ranks.py), so that gptjax encodes it with tiktoken.

    Deterministic: the same text and size give the same file, byte for byte."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[tokenizers.EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(small_pieces(stream), trainer)
    # The trainer's merges are one split per token, in the order learnt. The written file keeps its vocabulary
    # with every split of every token, ordered by ids: what tiktoken's rule computes. It may tokenize a rare
    # word otherwise than the trainer's own merges would; the file written is the tokenizer from here on.
    spec = bpe_ranks.make_rank_consistent(json.loads(tok.to_str()))
    return Tokenizer.from_str(json.dumps(spec)).to_str(pretty=True)


def small_pieces(stream: Iterable[str], size: int = 4096) -> Iterator[str]:
    """Each text cut into pieces of about `size` characters, only where GPT-2's pre-tokenizer splits anyway,
    so the trainer counts exactly the words of the whole (a text with no such place stays whole). `tokenizers`
    counts words in small texts faster than in long ones (15% less CPU than the 1M-character pieces)."""
    for text in stream:
        while len(text) > size:
            at = pipeline.bpe_cut(text, size)
            if at >= size:  # no whitespace to cut at: an arbitrary cut would split a word in two
                break
            yield text[:at]
            text = text[at:]
        yield text


@dataclasses.dataclass(frozen=True)
class Compression:
    name: str
    vocab_size: int
    chars: int
    bytes: int
    tokens: int

    @property
    def bytes_per_token(self) -> float:
        return self.bytes / max(self.tokens, 1)


def compression(name: str, tok, sample: list[str]) -> Compression:
    tokens = sum(len(tok.encode(text)) for text in sample)
    return Compression(name, tok.vocab_size, sum(map(len, sample)), sum(len(t.encode("utf-8")) for t in sample),
                       tokens)


def table(rows: list[Compression]) -> str:
    """nanochat's tok_eval comparison: bytes per token, and each tokenizer's token count against GPT-2's."""
    gpt2 = next((r for r in rows if r.name == "gpt2"), None)
    width = max(len(r.name) for r in rows)
    lines = [f"{'tokenizer':<{width}}  {'vocab':>7}  {'tokens':>10}  {'bytes/token':>11}  {'tokens vs gpt2':>14}",
             "-" * (width + 50)]
    for r in rows:
        versus = f"{r.tokens / gpt2.tokens - 1:+.1%}" if gpt2 else "-"
        lines.append(f"{r.name:<{width}}  {r.vocab_size:>7,}  {r.tokens:>10,}  {r.bytes_per_token:>11.3f}  "
                     f"{versus:>14}")
    return "\n".join(lines)
