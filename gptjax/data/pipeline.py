"""Preparation: documents streamed in chunks through a process pool, written straight into the split files."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import multiprocessing
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

from gptjax import units
from gptjax.config import DataConfig
from gptjax.data import hf_tokenizer, sources
from gptjax.data import tokenizer as tokenizers
from gptjax.data.sources import DataError, Source

# 2: split by documents, streamed; 3: keyed by content, fingerprinted. Bump when the layout or tokenization changes.
FORMAT_VERSION = 3
Piece = tuple[int, str, bool, bool]  # document index, text, first piece of its document, last piece


@dataclasses.dataclass(frozen=True)
class Progress:
    """Where a preparation stands, handed to the caller's callback after every chunk."""

    stage: str  # "digest" (hashing the source) | "vocabulary" (the char tokenizer's first pass) | "tokens" | "done"
    docs: int
    tokens: int
    chars: int  # while hashing: bytes read
    total_bytes: int | None  # None for the hub: no ETA
    elapsed_s: float
    note: str = ""  # stage "note": something the user should know, e.g. a damaged cache entry being rebuilt

    @classmethod
    def notice(cls, note: str) -> Progress:
        return cls("note", 0, 0, 0, None, 0.0, note)

    @property
    def fraction(self) -> float | None:
        # Characters stand in for bytes read: exact for ASCII, an estimate for compressed shards.
        return min(0.99, self.chars / self.total_bytes) if self.total_bytes else None

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.elapsed_s, 1e-9)

    @property
    def eta_s(self) -> float | None:
        f = self.fraction
        return self.elapsed_s * (1 - f) / f if f else None

    def line(self) -> str:
        """One progress-bar line: documents, tokens/s and an ETA where the corpus size is known."""
        if self.stage == "note":
            return f"data: {self.note}"
        if self.stage == "digest":
            return (f"data: hashing the source once, to pin it by content: {units.size(self.chars)} of "
                    f"{units.size(self.total_bytes or 0)}, {units.duration(self.elapsed_s)}, "
                    f"{self.fraction:4.0%}, ETA {units.duration(self.eta_s or 0)}")
        what = "reading the char vocabulary" if self.stage == "vocabulary" else "tokenizing"
        rate = f"{units.count(self.tokens)} tokens, {units.count(self.tokens_per_s)} tokens/s" if self.tokens else \
            f"{units.count(self.chars)} chars"
        eta = "done" if self.stage == "done" else (
            f"{self.fraction:4.0%}, ETA {units.duration(self.eta_s)}" if self.eta_s is not None else "ETA unknown")
        return f"data: {what} {self.docs:,} documents, {rate}, {units.duration(self.elapsed_s)}, {eta}"


def pieces(src: Source, cfg: DataConfig, cut: Callable[[str, int], int]) -> Iterator[Piece]:
    """Documents in order, each cut into pieces of about data.chunk_chars where `cut` says it is safe."""
    doc = 0
    for fragments in sources.documents(src, cfg.text_field, cfg.chunk_chars):
        buf, first = "", True
        for fragment in fragments:
            buf += fragment
            while len(buf) > cfg.chunk_chars:
                at = cut(buf, cfg.chunk_chars)
                yield doc, buf[:at], first, False
                buf, first = buf[at:], False
        if buf or not first:
            yield doc, buf, first, True
            doc += 1


def bpe_cut(text: str, limit: int) -> int:
    """A cut where GPT-2's pre-tokenizer starts a new piece anyway (a space or newline after a
    non-space), so tokenizing the two halves gives exactly the ids of the whole (for any byte-level
    BPE with GPT-2's split, as `gptjax tokenizer train` writes; other Hugging Face kinds may differ
    at the cut, once per data.chunk_chars of one document)."""
    at = max(text.rfind(" ", 1, limit), text.rfind("\n", 1, limit))
    while at > 0 and text[at - 1].isspace():
        at = max(text.rfind(" ", 1, at), text.rfind("\n", 1, at))
    return at if at > 0 else limit  # no whitespace in the whole block: an arbitrary cut


def chunks(stream: Iterable[Piece], chunk_chars: int) -> Iterator[list[Piece]]:
    chunk, size = [], 0
    for piece in stream:
        chunk.append(piece)
        size += len(piece[1])
        if size >= chunk_chars:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


@dataclasses.dataclass(frozen=True)
class Encoded:
    """A chunk's ids, with what routing and progress need; the text itself is not sent back."""

    docs: np.ndarray  # int64[pieces]: each piece's document index
    lengths: np.ndarray  # int64[pieces]: each piece's token count
    ids: np.ndarray
    chars: int

    @property
    def docs_done(self) -> int:
        return int(self.docs[-1]) + 1


def _encoded(chunk: list[Piece], ids: np.ndarray, lengths: np.ndarray) -> Encoded:
    docs = np.fromiter((piece[0] for piece in chunk), dtype=np.int64, count=len(chunk))
    return Encoded(docs, lengths, ids, sum(len(piece[1]) for piece in chunk))


def encode_gpt2(chunk: list[Piece]) -> Encoded:
    """Token ids of a chunk, each document ending with <|endoftext|>."""
    enc = tokenizers.gpt2_encoding()
    return encode_tiktoken(chunk, enc, enc.eot_token)


def encode_tiktoken(chunk: list[Piece], enc, eot_id: int | None) -> Encoded:
    """Token ids of a chunk under a tiktoken Encoding, each document ending with `eot_id` (if any)."""
    eot = np.array([] if eot_id is None else [eot_id], dtype=np.uint32)
    # encode_to_numpy with no special tokens allowed is encode_ordinary without a Python int per token.
    ids = [enc.encode_to_numpy(text, allowed_special=set(), disallowed_special=()) for _, text, _, _ in chunk]
    parts = itertools.chain.from_iterable((a, eot) if piece[3] else (a,) for a, piece in zip(ids, chunk))
    lengths = np.fromiter((len(a) + piece[3] * len(eot) for a, piece in zip(ids, chunk)), dtype=np.int64,
                          count=len(chunk))
    dtype = np.uint16 if enc.max_token_value < 1 << 16 else np.uint32
    return _encoded(chunk, np.concatenate(list(parts)).astype(dtype), lengths)


def encode_hf(chunk: list[Piece], path: str, digest: str) -> Encoded:
    """Token ids of a chunk under a Hugging Face tokenizer, each document ending with its
    end-of-text token when it has one (else documents simply follow each other)."""
    tok = hf_tokenizer.cached(path, digest)
    if tok.fast is not None:  # a rank-consistent byte-level BPE: GPT-2's path, with the file's ranks
        return encode_tiktoken(chunk, tok.fast, tok.eot_id)
    ids = tok.encode_batch([text for _, text, _, _ in chunk])
    ends = [piece[3] and tok.eot_id is not None for piece in chunk]
    flat = itertools.chain.from_iterable((a, (tok.eot_id,)) if end else (a,) for a, end in zip(ids, ends))
    lengths = np.fromiter((len(a) + end for a, end in zip(ids, ends)), dtype=np.int64, count=len(chunk))
    return _encoded(chunk, np.fromiter(itertools.chain.from_iterable(flat), dtype=np.uint32,
                                       count=int(lengths.sum())), lengths)


def encode_chars(chunk: list[Piece], codepoints: np.ndarray) -> Encoded:
    """Char ids of a chunk; documents after the first start with a newline, as if joined by one."""
    texts = ["\n" * (first and doc > 0) + text for doc, text, first, _ in chunk]
    ids = np.searchsorted(codepoints, _codepoints("".join(texts))).astype(np.uint32)
    return _encoded(chunk, ids, np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)))


def _codepoints(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def held_out(docs: np.ndarray, fraction: float) -> np.ndarray:
    """Whether each document index goes to validation: a fixed hash (splitmix64), so the choice
    depends on the document alone, not on shards, chunking or process count."""
    with np.errstate(over="ignore"):
        z = docs.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)).astype(np.float64) < fraction * 2.0**53


def ordered_map(fn, items: Iterable, workers: int) -> Iterator:
    """fn over items in order, `workers` processes at a time, at most 2 x workers chunks in flight
    (Pool.imap would read the whole input ahead); workers <= 1 runs here, with no start-up cost."""
    if workers <= 1:
        yield from map(fn, items)
        return
    # spawn, not fork: the caller may hold JAX's threads, which a forked child would inherit broken.
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_exit_with_parent, initargs=(os.getpid(),))
    done = 0
    try:
        pending = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
                done += 1
        while pending:
            yield pending.popleft().result()
            done += 1
    except BrokenProcessPool:
        raise DataError(_why_workers_stopped(started=done > 0)) from None
    finally:
        pool.shutdown(cancel_futures=True)


def _why_workers_stopped(started: bool) -> str:
    """Workers that leave before any result are, almost always, ones that re-ran the user's script (spawn
    imports __main__ again: gptjax.data.dataset stops such a worker before it waits on the cache lock)."""
    script = getattr(sys.modules["__main__"], "__file__", None)
    if script and not started:
        return (f"data preparation's worker processes stopped: each starts by running {script} again, which "
                f"calls gptjax again; put the script's calls under `if __name__ == \"__main__\":` "
                f"(or set data.num_proc=1)")
    return "data preparation's worker processes stopped (killed, or out of memory?); re-run, or set data.num_proc=1"


def _exit_with_parent(parent: int) -> None:
    """A worker whose parent was killed (SIGKILL runs no cleanup) exits within a second instead of
    waiting forever on a task queue whose other end it holds itself."""
    def watch():
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


class Splits:
    """The train/val token files being written, routed document by document."""

    def __init__(self, folder: Path, dtype, val_fraction: float):
        self.folder, self.dtype, self.val_fraction = folder, np.dtype(dtype), val_fraction
        self.files = {name: open(folder / f"{name}.bin", "wb") for name in ("train", "val")}
        self.counts = {"train": 0, "val": 0}

    def write(self, enc: Encoded) -> None:
        val = np.repeat(held_out(enc.docs, self.val_fraction), enc.lengths)
        for name, rows in (("train", ~val), ("val", val)):
            part = enc.ids[rows].astype(self.dtype, copy=False)
            self.files[name].write(part.data)  # not tofile: a full disk then says so (ENOSPC), not "0 written"
            self.counts[name] += len(part)

    def close(self) -> dict:
        for f in self.files.values():
            f.close()
        if any(self.counts.values()) and not all(self.counts.values()):
            self._hold_out_tail()
        return self.counts

    def _hold_out_tail(self) -> None:
        """Too few documents to split by document (the built-in play is one): hold out the tail."""
        train, val = self.folder / "train.bin", self.folder / "val.bin"
        if not self.counts["train"]:
            os.replace(val, train)
            self.counts["train"] = self.counts["val"]
        n = self.counts["train"]
        n_val = max(1, int(n * self.val_fraction))
        tokens = np.memmap(train, dtype=self.dtype, mode="r")
        with open(val, "wb") as f:
            for start in range(n - n_val, n, 1 << 24):
                f.write(np.ascontiguousarray(tokens[start:min(start + (1 << 24), n)]).data)
        del tokens
        os.truncate(train, (n - n_val) * self.dtype.itemsize)
        self.counts = {"train": n - n_val, "val": n_val}


def build(cfg: DataConfig, src: Source, scratch: Path, progress=None) -> dict:
    """Tokenize `src` into scratch/{train,val}.bin; returns the meta.json fields."""
    t0 = time.perf_counter()
    report = _throttled(progress)
    workers = _workers(cfg, src)
    if cfg.tokenizer == "char":
        codepoints = _char_vocabulary(cfg, src, report, t0)
        tok = tokenizers.CharTokenizer([chr(c) for c in codepoints])
        # One process: numpy encodes characters faster than a pool could be sent them.
        encode, cut, workers = functools.partial(encode_chars, codepoints=codepoints), (lambda text, limit: limit), 1
        t0 = time.perf_counter()  # the ETA of this second pass is its own
    elif cfg.tokenizer == "gpt2":
        tok, encode, cut = tokenizers.GPT2Tokenizer(), encode_gpt2, bpe_cut
    else:
        tok = tokenizers.load_path(cfg.tokenizer)
        # Workers load the file themselves (once each) rather than receive it with every chunk.
        encode, cut = functools.partial(encode_hf, path=cfg.tokenizer, digest=tok.digest), bpe_cut
    dtype = np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32
    splits = Splits(scratch, dtype, cfg.val_fraction)
    docs = chars = 0
    for enc in ordered_map(encode, chunks(pieces(src, cfg, cut), cfg.chunk_chars), workers):
        splits.write(enc)
        docs, chars = enc.docs_done, chars + enc.chars
        report(Progress("tokens", docs, sum(splits.counts.values()), chars, src.total_bytes, time.perf_counter() - t0))
    counts = splits.close()
    if not counts["train"]:
        raise DataError(f"dataset {src.spec!r} is empty; give it some text")
    report(Progress("done", docs, sum(counts.values()), chars, src.total_bytes, time.perf_counter() - t0))
    return {"format": FORMAT_VERSION, "source": src.spec, "dtype": np.dtype(dtype).name, "documents": docs,
            "vocab_size": tok.vocab_size, "n_train": counts["train"], "n_val": counts["val"],
            "tokenizer": tok.to_json()}


def _throttled(progress, every_s: float = 0.5):
    """The caller's callback at most every `every_s` seconds, and always for the final report."""
    last = [-every_s]

    def report(p: Progress) -> None:
        if progress and (p.stage == "done" or time.perf_counter() - last[0] >= every_s):
            last[0] = time.perf_counter()
            progress(p)
    return report


def _workers(cfg: DataConfig, src: Source) -> int:
    workers = cfg.num_proc or sources.cpu_count()
    total = src.total_bytes
    # A small corpus is done before a pool of fresh interpreters has started.
    return 1 if total is not None and total < 4 * cfg.chunk_chars else workers


def _char_vocabulary(cfg: DataConfig, src: Source, report, t0: float) -> np.ndarray:
    """The char tokenizer's vocabulary, a first streaming pass: every distinct character, sorted."""
    common, rare, docs, chars = np.zeros(1 << 16, dtype=bool), np.zeros(0, dtype=np.uint32), 0, 0
    for chunk in chunks(pieces(src, cfg, lambda text, limit: limit), cfg.chunk_chars):
        cps = _codepoints("".join(piece[1] for piece in chunk) + "\n" * (chunk[-1][0] > 0))
        common[cps[cps < 1 << 16]] = True  # a table, not a sort: the pass runs at memory speed
        rare = np.union1d(rare, cps[cps >= 1 << 16])
        docs, chars = chunk[-1][0] + 1, chars + len(cps)
        report(Progress("vocabulary", docs, 0, chars, src.total_bytes, time.perf_counter() - t0))
    return np.concatenate([np.flatnonzero(common).astype(np.uint32), rare])


def write_meta(folder: Path, meta: dict) -> None:
    (folder / "meta.json").write_text(json.dumps(meta))
