"""Data: a source tokenized once into cached token files, memory-mapped; batches as a pure function of (seed, step).

A source is tokenized once into `train.bin`/`val.bin` under a cache folder named by a
hash of what determines the tokens (every shard's content, tokenizer, split); its meta.json
records the files' sizes and fingerprints, checked at every open, and a damaged entry is rebuilt. Batches are
random windows drawn from a generator seeded by (seed, step), so a resumed run sees
exactly the batches an uninterrupted one would, and any process can draw its own rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import functools
import hashlib
import json
import multiprocessing
import os
import shutil
from pathlib import Path

import numpy as np

from gptjax.config import DataConfig
from gptjax.data import digests, pipeline, sources
from gptjax.data import tokenizer as tokenizers
from gptjax.data.sources import DataError
from gptjax.errors import first_line
from gptjax.files import read_json

TRAIN_STREAM, EVAL_STREAM = 0, 1
SPLITS = ("train", "val")


@dataclasses.dataclass(frozen=True)
class Dataset:
    train: np.ndarray  # token ids, memory-mapped
    val: np.ndarray
    tokenizer: object
    meta: dict

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def split(self, name: str) -> np.ndarray:
        return self.train if name == "train" else self.val


def cache_root(cfg: DataConfig) -> Path:
    chosen = cfg.cache_dir or os.environ.get("GPTJAX_CACHE")
    if not chosen and os.environ.get("HOME") == "":  # Path.home() would say "/", and the cache would go to /.cache
        raise DataError("HOME is empty, so the token cache has no place; set HOME, or GPTJAX_CACHE or "
                        "data.cache_dir to a folder you can write")
    return Path(chosen or Path.home() / ".cache" / "gptjax").expanduser()


def cache_key(cfg: DataConfig, src: sources.Source, source_sha256: str) -> str:
    """The cache entry's name: a hash of everything that determines its tokens, the data and a tokenizer
    file by content."""
    fields = [pipeline.FORMAT_VERSION, source_sha256, tokenizers.identity(cfg.tokenizer), cfg.text_field]
    return hashlib.sha256(json.dumps(fields + [cfg.val_fraction] * (src.kind != "bin")).encode()).hexdigest()[:16]


def prepare(cfg: DataConfig, progress=None) -> Dataset:
    """Tokenize the source once (or reuse the cache) and memory-map its splits; `progress`, if
    given, is called with a `Progress` after every chunk (and with a note when a damaged entry is rebuilt)."""
    _stop_if_a_worker_reruns_the_script()
    src = sources.resolve(cfg.source)
    if src.kind == "bin" and cfg.tokenizer != "gpt2":
        raise DataError(f"{cfg.source!r} is a nanoGPT train.bin/val.bin folder of GPT-2 ids; set data.tokenizer=gpt2")
    root = cache_root(cfg)
    digest = digests.source_digest(src, root / "digests", _hashing_progress(progress))
    folder = root / "data" / cache_key(cfg, src, digest)
    try:
        return _open(folder, src, digest)
    except _Unusable:
        pass
    with _cache_writes(root):
        for parent in (folder.parent, root / "locks"):
            parent.mkdir(parents=True, exist_ok=True)
        with _locked(root / "locks" / folder.name):
            try:  # another process may have built it meanwhile
                return _open(folder, src, digest)
            except _Unusable as e:
                if e.damaged and progress:
                    progress(pipeline.Progress.notice(f"token cache entry {folder} is damaged ({e}); rebuilding it"))
            _build(cfg, src, folder, digest, progress)
    try:
        return _open(folder, src, digest)
    except _Unusable as e:  # just written and read back wrong: the disk, not the data
        raise DataError(f"token cache entry {folder} reads back damaged right after it was built ({e}); "
                        f"check the disk, or set data.cache_dir elsewhere") from None


@functools.cache
def vocab_size(cfg: DataConfig) -> int:
    """The data's vocabulary: a fixed tokenizer's without reading the data, the corpus's characters otherwise."""
    if cfg.tokenizer == "gpt2":
        return tokenizers.GPT2_VOCAB
    if tokenizers.is_path(cfg.tokenizer):
        return tokenizers.load_path(cfg.tokenizer).vocab_size
    return prepare(cfg).vocab_size


def _stop_if_a_worker_reruns_the_script() -> None:
    """multiprocessing's spawn starts each worker by running the user's __main__ script again; one that calls
    gptjax at its top level (no `if __name__ == "__main__":`) would prepare data again here and wait forever
    on the cache lock its parent holds. Leave quietly instead: the parent's pool breaks and says why."""
    if getattr(multiprocessing.current_process(), "_inheriting", False):  # set while a spawned child imports main
        raise SystemExit(3)


def _hashing_progress(progress):
    """digests' (bytes done, bytes to do, seconds) as Progress lines, the last one a note of its own."""
    def report(done: int, total: int, elapsed: float, finished: bool) -> None:
        if not finished:
            progress(pipeline.Progress("digest", 0, 0, done, total, elapsed))
        else:
            progress(pipeline.Progress.notice(f"hashed {total / 1e6:,.0f} MB in {elapsed:.0f} s: the source is "
                                              f"pinned by content"))
    return report if progress else None


@contextlib.contextmanager
def _locked(path: Path):
    """One builder per cache entry; the OS drops the lock when its holder dies, even by SIGKILL."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def _cache_writes(root: Path):
    """A cache that cannot be written (disk full, read-only, HOME a file) is one line, not a traceback."""
    try:
        yield
    except OSError as e:
        full = "free some space, or " if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        raise DataError(f"cannot write the token cache in {root}: {e.strerror or e}; {full}set data.cache_dir "
                        f"(or GPTJAX_CACHE) to a folder you can write") from None


def _build(cfg: DataConfig, src: sources.Source, folder: Path, digest: str, progress) -> None:
    # Build in a scratch folder and rename it into place, so a killed preparation never leaves a
    # cache that loads; holding the lock, any scratch of an earlier killed build is ours to remove,
    # and so is a damaged entry in the way.
    for stale in folder.parent.glob(f".tmp-{folder.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    scratch = folder.parent / f".tmp-{folder.name}-{os.getpid()}"
    scratch.mkdir()
    try:
        meta = _bin_meta(src) if src.kind == "bin" else pipeline.build(cfg, src, scratch, progress)
        files = src.paths if src.kind == "bin" else [scratch / f"{name}.bin" for name in SPLITS]
        meta |= {"source_sha256": digest, "fingerprints": [fingerprint(path) for path in files]}
        pipeline.write_meta(scratch, meta)
        if folder.exists():
            os.replace(folder, scratch.with_name(scratch.name + "-damaged"))
            shutil.rmtree(scratch.with_name(scratch.name + "-damaged"), ignore_errors=True)
        os.replace(scratch, folder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _bin_meta(src: sources.Source) -> dict:
    """A nanoGPT folder is used where it lies, once checked: whole uint16 ids, all below GPT-2's vocabulary."""
    vocab = tokenizers.GPT2Tokenizer().vocab_size
    counts = {}
    for name, path in zip(SPLITS, src.paths):
        if path.stat().st_size % 2 or path.stat().st_size < 2:
            raise DataError(f"{str(path)!r} is not a file of uint16 token ids (size {path.stat().st_size} bytes)")
        tokens = np.memmap(path, dtype=np.uint16, mode="r")
        for start in range(0, len(tokens), 1 << 24):
            top = int(tokens[start:start + (1 << 24)].max())
            if top >= vocab:
                raise DataError(f"{str(path)!r} holds token id {top}, outside GPT-2's vocabulary of {vocab}; "
                                f"it must hold nanoGPT's uint16 GPT-2 ids")
        counts[name] = len(tokens)
    return {"format": pipeline.FORMAT_VERSION, "source": src.spec, "dtype": "uint16", "vocab_size": vocab,
            "n_train": counts["train"], "n_val": counts["val"], "tokenizer": {"kind": "gpt2"}}


class _Unusable(Exception):
    """A cache entry that cannot be opened: absent (`damaged` False), or damaged, the message says how."""

    def __init__(self, why: str = "absent", damaged: bool = True):
        super().__init__(why)
        self.damaged = damaged


def _open(folder: Path, src: sources.Source, digest: str) -> Dataset:
    """The entry's splits, memory-mapped once its meta.json, sizes and fingerprints agree (a few reads)."""
    if not folder.is_dir():
        raise _Unusable(damaged=False)
    try:
        meta = read_json(folder / "meta.json", max_bytes=tokenizers.MAX_FILE_BYTES)
        if not isinstance(meta, dict) or meta.get("format") != pipeline.FORMAT_VERSION:
            raise _Unusable("meta.json is of another format")
        tok = tokenizers.from_json(meta.get("tokenizer"))
        dtype = np.dtype(meta["dtype"])
    except FileNotFoundError:
        raise _Unusable("no meta.json") from None
    except (OSError, ValueError, KeyError, TypeError) as e:  # ReadError and TokenizerError are ValueErrors
        raise _Unusable(f"meta.json cannot be read: {first_line(e)}") from None
    if meta.get("source_sha256") != digest:
        raise _Unusable("meta.json names other data")
    # A nanoGPT folder's own files (the entry holds only their meta), wherever the folder is now.
    files = src.paths if src.kind == "bin" else [folder / f"{name}.bin" for name in SPLITS]
    for path, name, prints in zip(files, SPLITS, _pairs(meta.get("fingerprints"))):
        n = meta.get(f"n_{name}")
        if not path.is_file():  # missing, or a FIFO, whose read would block
            raise _Unusable(f"{path.name} is missing or not a regular file")
        size = path.stat().st_size
        if not isinstance(n, int) or n <= 0 or size != n * dtype.itemsize:
            raise _Unusable(f"{path.name} has {size} bytes, its meta.json says {n} tokens of {dtype.itemsize}")
        try:
            matches = fingerprint(path) == prints
        except OSError as e:
            raise _Unusable(f"{path.name} cannot be read: {e.strerror or e}") from None
        if not matches:
            raise _Unusable(f"{path.name} does not match its fingerprint")
    splits = [np.memmap(str(path.resolve()), dtype=dtype, mode="r") for path in files]
    return Dataset(splits[0], splits[1], tok, meta)


def _pairs(prints) -> list:
    return prints if isinstance(prints, list) and len(prints) == 2 else [None, None]


def fingerprint(path: Path, blocks: int = 16, block: int = 1 << 16) -> str:
    """A cheap checksum of a token file: its size and `blocks` evenly spaced blocks (all of a small file),
    so opening a cache of any size reads about a megabyte, and a cut or overwritten file shows."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= blocks * block:
            h.update(f.read())
        for i in range(blocks) if size > blocks * block else ():
            f.seek(i * (size - block) // (blocks - 1))
            h.update(f.read(block))
    return h.hexdigest()


def check_fits(ds: Dataset, n_ctx: int) -> None:
    for name in ("train", "val"):
        n = len(ds.split(name))
        if n < n_ctx + 1:
            raise DataError(f"the {name} split has {n} tokens, fewer than model.n_ctx+1={n_ctx + 1}; "
                            f"use more data or a smaller model.n_ctx")


def window_starts(n_tokens: int, *, seed: int, step: int, batch_size: int, n_ctx: int,
                  stream: int = TRAIN_STREAM) -> np.ndarray:
    """Where each of a batch's windows starts: a pure function of (seed, stream, step)."""
    return np.random.default_rng([seed, stream, step]).integers(0, n_tokens - n_ctx, size=batch_size)


def gather(tokens: np.ndarray, starts: np.ndarray, n_ctx: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and next-token targets, int32[*starts.shape, n_ctx]."""
    window = tokens[starts[..., None] + np.arange(n_ctx + 1)].astype(np.int32)
    return window[..., :-1], window[..., 1:]
