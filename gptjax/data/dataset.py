"""Data: a source tokenized once into cached token files, memory-mapped; batches as a pure function of (seed, step).

A source is tokenized once into `train.bin`/`val.bin` under a cache folder named by a
hash of what determines the tokens (every shard's identity, tokenizer, split). Batches are
random windows drawn from a generator seeded by (seed, step), so a resumed run sees
exactly the batches an uninterrupted one would, and any process can draw its own rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from gptjax.config import DataConfig
from gptjax.data import pipeline, sources
from gptjax.data import tokenizer as tokenizers
from gptjax.data.sources import DataError

TRAIN_STREAM, EVAL_STREAM = 0, 1


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
    return Path(cfg.cache_dir or os.environ.get("GPTJAX_CACHE") or Path.home() / ".cache" / "gptjax").expanduser()


def prepare(cfg: DataConfig, progress=None) -> Dataset:
    """Tokenize the source once (or reuse the cache) and memory-map its splits; `progress`, if
    given, is called with a `Progress` after every chunk."""
    src = sources.resolve(cfg.source)
    if src.kind == "bin" and cfg.tokenizer != "gpt2":
        raise DataError(f"{cfg.source!r} is a nanoGPT train.bin/val.bin folder of GPT-2 ids; set data.tokenizer=gpt2")
    fields = [pipeline.FORMAT_VERSION, sources.identity(src), tokenizers.identity(cfg.tokenizer), cfg.text_field]
    key = hashlib.sha256(json.dumps(fields + [cfg.val_fraction] * (src.kind != "bin")).encode()).hexdigest()[:16]
    folder = cache_root(cfg) / "data" / key
    if not (folder / "meta.json").is_file():
        for parent in (folder.parent, cache_root(cfg) / "locks"):
            parent.mkdir(parents=True, exist_ok=True)
        with _locked(cache_root(cfg) / "locks" / key):
            if not (folder / "meta.json").is_file():  # another process may have built it meanwhile
                _build(cfg, src, folder, progress)
    return _open(folder)


@functools.cache
def vocab_size(cfg: DataConfig) -> int:
    """The data's vocabulary: a fixed tokenizer's without reading the data, the corpus's characters otherwise."""
    if cfg.tokenizer == "gpt2":
        return tokenizers.GPT2_VOCAB
    if tokenizers.is_path(cfg.tokenizer):
        return tokenizers.load_path(cfg.tokenizer).vocab_size
    return prepare(cfg).vocab_size


@contextlib.contextmanager
def _locked(path: Path):
    """One builder per cache entry; the OS drops the lock when its holder dies, even by SIGKILL."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _build(cfg: DataConfig, src: sources.Source, folder: Path, progress) -> None:
    # Build in a scratch folder and rename it into place, so a killed preparation never leaves a
    # cache that loads; holding the lock, any scratch of an earlier killed build is ours to remove.
    for stale in folder.parent.glob(f".tmp-{folder.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    scratch = folder.parent / f".tmp-{folder.name}-{os.getpid()}"
    scratch.mkdir()
    try:
        meta = _bin_meta(src) if src.kind == "bin" else pipeline.build(cfg, src, scratch, progress)
        pipeline.write_meta(scratch, {**meta, "source_id": sources.identity(src)})
        os.replace(scratch, folder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _bin_meta(src: sources.Source) -> dict:
    """A nanoGPT folder is used where it lies, once checked: whole uint16 ids, all below GPT-2's vocabulary."""
    vocab = tokenizers.GPT2Tokenizer().vocab_size
    counts = {}
    for name, path in zip(("train", "val"), src.paths):
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
            "n_train": counts["train"], "n_val": counts["val"], "tokenizer": {"kind": "gpt2"},
            "files": [str(p.resolve()) for p in src.paths]}


def _open(folder: Path) -> Dataset:
    meta = json.loads((folder / "meta.json").read_text())
    files = meta.get("files") or [folder / f"{name}.bin" for name in ("train", "val")]
    splits = [np.memmap(path, dtype=meta["dtype"], mode="r") for path in files]
    return Dataset(splits[0], splits[1], tokenizers.from_json(meta["tokenizer"]), meta)


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
