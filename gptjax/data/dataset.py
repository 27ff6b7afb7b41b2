"""Data: text sources -> cached uint16/uint32 token files + meta; batches as a pure function of (seed, step).

A source is tokenized once into `train.bin`/`val.bin` under a cache folder named by a
hash of what determines the tokens (source content, tokenizer, split). Batches are
random windows drawn from a generator seeded by (seed, step), so a resumed run sees
exactly the batches an uninterrupted one would, and any process can draw its own rows.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from gptjax.config import DataConfig
from gptjax.data import tokenizer as tokenizers
from gptjax.errors import UserError, first_line

FORMAT_VERSION = 1  # bump when the cached layout or tokenization changes
LOADERS = {".txt": "text", ".text": "text", ".md": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
TRAIN_STREAM, EVAL_STREAM = 0, 1


class DataError(UserError):
    """A dataset the user must fix; the message is one line saying how."""


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


def prepare(cfg: DataConfig) -> Dataset:
    """Tokenize the source once (or reuse the cache) and memory-map its splits."""
    source_id = _source_identity(cfg)
    key = hashlib.sha256(json.dumps(
        [FORMAT_VERSION, source_id, cfg.tokenizer, cfg.val_fraction, cfg.text_field]).encode()).hexdigest()[:16]
    folder = cache_root(cfg) / "data" / key
    if not (folder / "meta.json").is_file():
        _build(cfg, source_id, folder)
    return _open(folder)


@functools.cache
def vocab_size(cfg: DataConfig) -> int:
    """The data's vocabulary: GPT-2's without reading the data, the corpus's characters otherwise."""
    if cfg.tokenizer == "gpt2":
        return tokenizers.GPT2_VOCAB
    return prepare(cfg).vocab_size


def _source_identity(cfg: DataConfig) -> str:
    if cfg.source == "shakespeare":
        return "shakespeare:" + _sha256(tokenizers.ASSETS / "tinyshakespeare.txt")
    if cfg.source.startswith("hf:"):
        return cfg.source
    path = Path(cfg.source).expanduser()
    if not path.is_file():
        raise DataError(f"dataset file {cfg.source!r} not found; data.source takes shakespeare, "
                        f"a .txt/.jsonl/.parquet path, or hf:NAME")
    if path.suffix.lower() not in LOADERS:
        raise DataError(f"dataset file {cfg.source!r} has unsupported type {path.suffix!r}; "
                        f"use one of {', '.join(sorted(LOADERS))}")
    return "file:" + _sha256(path)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_documents(cfg: DataConfig) -> list[str]:
    """The source's documents as strings, through `datasets` for files and the hub."""
    if cfg.source == "shakespeare":
        return [(tokenizers.ASSETS / "tinyshakespeare.txt").read_text(encoding="utf-8")]
    import datasets  # heavy import, only needed when a cache is built

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    cache = str(cache_root(cfg) / "hf")
    try:
        if cfg.source.startswith("hf:"):
            name, _, subset = cfg.source[3:].partition(":")
            ds = datasets.load_dataset(name, subset or None, split="train", cache_dir=cache)
        else:
            loader = LOADERS[Path(cfg.source).suffix.lower()]
            extra = {"sample_by": "document"} if loader == "text" else {}
            ds = datasets.load_dataset(loader, data_files=str(Path(cfg.source).expanduser()),
                                       split="train", cache_dir=cache, **extra)
    except Exception as e:  # datasets wraps reader errors; report the root cause in one line
        root = e
        while root.__cause__ or root.__context__:
            root = root.__cause__ or root.__context__
        if isinstance(root, UnicodeDecodeError):
            raise DataError(f"dataset {cfg.source!r} is not UTF-8 text ({root.reason} at byte {root.start}); "
                            f"re-encode it as UTF-8") from None
        raise DataError(f"cannot load dataset {cfg.source!r}: {first_line(root)}") from None
    if cfg.text_field not in ds.column_names:
        raise DataError(f"dataset {cfg.source!r} has no column {cfg.text_field!r} (columns: "
                        f"{', '.join(ds.column_names)}); set data.text_field")
    return [t for t in ds[cfg.text_field] if t]


def tokenize(cfg: DataConfig, docs: list[str]):
    """All documents as one token stream; BPE documents end with <|endoftext|>."""
    if cfg.tokenizer == "char":
        text = "\n".join(docs)
        tok = tokenizers.CharTokenizer.fit(text)
        return tok, np.asarray(tok.encode(text))
    tok = tokenizers.GPT2Tokenizer()
    ids = [i for ids in tok.enc.encode_ordinary_batch(docs) for i in (*ids, tok.eot_id)]
    return tok, np.asarray(ids)


def _build(cfg: DataConfig, source_id: str, folder: Path) -> None:
    docs = read_documents(cfg)
    if not any(d.strip() for d in docs):
        raise DataError(f"dataset {cfg.source!r} is empty; give it some text")
    tok, ids = tokenize(cfg, docs)
    dtype = np.uint16 if tok.vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32
    n_val = max(1, int(len(ids) * cfg.val_fraction))
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Build in a scratch folder and rename it into place, so a crash never leaves a half cache.
    scratch = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
    try:
        ids[:-n_val].astype(dtype).tofile(scratch / "train.bin")
        ids[-n_val:].astype(dtype).tofile(scratch / "val.bin")
        meta = {"format": FORMAT_VERSION, "source": cfg.source, "source_id": source_id, "dtype": np.dtype(dtype).name,
                "vocab_size": tok.vocab_size, "n_train": len(ids) - n_val, "n_val": n_val, "tokenizer": tok.to_json()}
        (scratch / "meta.json").write_text(json.dumps(meta))
        os.replace(scratch, folder)
    except OSError:
        if (folder / "meta.json").is_file():  # another process built it first
            return
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _open(folder: Path) -> Dataset:
    meta = json.loads((folder / "meta.json").read_text())
    splits = {name: np.memmap(folder / f"{name}.bin", dtype=meta["dtype"], mode="r") for name in ("train", "val")}
    return Dataset(splits["train"], splits["val"], tokenizers.from_json(meta["tokenizer"]), meta)


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
