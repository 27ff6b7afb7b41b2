"""Data sources: the shards a data.source names, their identity for the cache key, and their documents."""

from __future__ import annotations

import dataclasses
import functools
import glob
import gzip
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

from gptjax.data import tokenizer as tokenizers
from gptjax.errors import UserError, first_line

LOADERS = {".txt": "text", ".text": "text", ".md": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
COMPRESSIONS = (".gz", ".zst")
SUPPORTED = "a .txt/.jsonl/.parquet file (optionally .gz/.zst), a glob, a comma-separated list, a folder of shards"
BIN_SPLITS = ("train.bin", "val.bin")  # nanoGPT's prepare.py output: uint16 GPT-2 ids


class DataError(UserError):
    """A dataset the user must fix; the message is one line saying how."""


@dataclasses.dataclass(frozen=True)
class Source:
    kind: str  # builtin | files | hf | bin
    spec: str
    paths: tuple[Path, ...] = ()
    total_bytes: int | None = None  # on disk, for an ETA; unknown for the hub

    def __post_init__(self):
        if self.kind != "hf":
            object.__setattr__(self, "total_bytes", sum(p.stat().st_size for p in self.paths))


def resolve(spec: str) -> Source:
    """The source a data.source string names; every path checked, in document order."""
    if spec == "shakespeare":
        return Source("builtin", spec, (tokenizers.ASSETS / "tinyshakespeare.txt",))
    if spec.startswith("hf:"):
        return Source("hf", spec)
    items = [s.strip() for s in spec.split(",") if s.strip()] if "," in spec else [spec]
    if len(items) == 1 and Path(items[0]).expanduser().is_dir():
        folder = Path(items[0]).expanduser()
        if all((folder / name).is_file() for name in BIN_SPLITS):
            return Source("bin", spec, tuple(folder / name for name in BIN_SPLITS))
    return Source("files", spec, tuple(p for item in items for p in _expand(item)))


def _expand(item: str) -> list[Path]:
    path = Path(item).expanduser()
    if glob.has_magic(item):
        found = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not found:
            raise DataError(f"data.source pattern {item!r} matches no files; check the path")
        return [_checked(p) for p in found]
    if path.is_dir():
        shards = sorted(p for p in path.rglob("*") if p.is_file()
                        and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not shards:
            raise DataError(f"data.source {item!r} is an empty folder; put .txt/.jsonl/.parquet shards in it")
        return [_checked(p, folder=item) for p in shards]
    if not path.is_file():
        raise DataError(f"dataset file {item!r} not found; data.source takes shakespeare, hf:NAME or {SUPPORTED}")
    return [_checked(path)]


def _checked(path: Path, folder: str | None = None) -> Path:
    if loader_of(path) is None:
        where = f"folder {folder!r} holds {str(path)!r}, of" if folder else f"dataset file {str(path)!r} has"
        raise DataError(f"{where} unsupported type {path.suffix!r}; use one of "
                        f"{', '.join(sorted(LOADERS))} (optionally {'/'.join(COMPRESSIONS)})")
    return path


def loader_of(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes[-2:]]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes.pop()
    return LOADERS.get(suffixes[-1]) if suffixes else None


def stat_identity(src: Source) -> list:
    """How gptjax before 2026-12 pinned a source in a run's inputs.json (path, size and mtime_ns of each
    shard; the built-in text's content): kept only to resume those runs. Data is now pinned by content
    (gptjax.data.digests)."""
    if src.kind == "builtin":
        return [src.kind, _sha256(src.paths[0])]
    if src.kind == "hf":
        return [src.kind, src.spec]
    return [src.kind] + [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in src.paths]


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def documents(src: Source, text_field: str, block_chars: int) -> Iterator[Iterator[str]]:
    """Each document as an iterator of text fragments of at most about `block_chars`, so a
    one-document 10 GB .txt file streams like many small documents."""
    if src.kind == "hf":
        yield from _rows(lambda: _hub(src.spec), text_field, src.spec)
        return
    for path in src.paths:
        if loader_of(path) == "text":
            yield _text_blocks(path, block_chars)
        elif _is_json_lines(path):
            yield from _json_lines(path, text_field)
        else:
            yield from _rows(functools.partial(_local, path), text_field, str(path), path)


def _text_blocks(path: Path, block_chars: int) -> Iterator[str]:
    try:
        with io.TextIOWrapper(_open_binary(path), encoding="utf-8", newline="") as f:
            while block := f.read(block_chars):
                yield block
        # zstd's stream reader stops quietly where a cut file ends: only a look at its frames tells.
        problem = _decompression_problem(path) if path.suffix.lower() == ".zst" else None
    except UnicodeDecodeError as e:  # a cut inside a character reads as bad UTF-8 too
        problem = _decompression_problem(path)
        if not problem:
            raise DataError(f"dataset {str(path)!r} is not UTF-8 text ({e.reason}); re-encode it as UTF-8") from None
    except (OSError, EOFError, _ZSTD_ERROR) as e:
        problem = first_line(e)
    if problem:
        raise DataError(f"cannot read shard {str(path)!r}: {problem}; replace or remove the file")


def _is_json_lines(path: Path) -> bool:
    return [s.lower() for s in path.suffixes[-2:] if s.lower() not in COMPRESSIONS][-1:] == [".jsonl"]


def _json_lines(path: Path, text_field: str) -> Iterator[Iterator[str]]:
    """Documents of a JSON-lines shard, read here line by line: 2x faster than through `datasets`
    (its Arrow tables become Python strings anyway), which the process feeding the tokenizing workers
    would otherwise spend, on the cores they need. Rows and their checks are `_rows`' own."""
    row, columns = 0, None
    try:
        with _open_binary(path) as f:
            for line in _lines(f):
                if not line.strip():
                    continue
                obj = _json_row(line, row, path, text_field)
                columns = columns or list(obj)
                text = _checked_text(obj.get(text_field), row, str(path), text_field)
                row += 1
                if text:
                    yield iter((text,))
        problem = _decompression_problem(path) if path.suffix.lower() == ".zst" else None
    except UnicodeDecodeError as e:
        problem = _decompression_problem(path) or f"not UTF-8 text ({e.reason})"
    except (OSError, EOFError, _ZSTD_ERROR) as e:
        problem = _decompression_problem(path) or first_line(e)
    if problem:
        raise DataError(f"cannot load dataset {str(path)!r} (at row {row}): {problem}; replace or remove the file")
    if columns is not None and text_field not in columns and row:
        raise DataError(f"dataset {str(path)!r} has no column {text_field!r} (columns: {', '.join(columns)}); "
                        f"set data.text_field")


def _lines(f, block: int = 1 << 20) -> Iterator[bytes]:
    """A binary stream's lines (without their ends), read in blocks: gzip's, zstd's and files' streams alike."""
    rest = b""
    while data := f.read(block):
        *whole, rest = (rest + data).split(b"\n")
        yield from whole
    if rest:
        yield rest


def _json_row(line: bytes, row: int, path: Path, text_field: str) -> dict:
    text = line.decode("utf-8")  # strict, unlike json.loads(bytes): bad bytes are the file's fault
    if row == 0 and text.startswith("\ufeff"):
        text = text[1:]
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"cannot load dataset {str(path)!r} (at row {row}): not JSON: {e.msg} "
                        f"(column {e.colno}); replace or remove the file") from None
    except RecursionError:  # 20,000 `[` overflow Python's parser
        raise DataError(f"cannot load dataset {str(path)!r} (at row {row}): JSON nested too deeply; replace or "
                        f"remove the file") from None
    if not isinstance(obj, dict):
        raise DataError(f"dataset {str(path)!r} row {row} is a JSON {type(obj).__name__}, not an object with a "
                        f"{text_field!r} field; fix the row")
    value = obj.get(text_field)
    if isinstance(value, str) and "\\u" in text and _has_surrogate(value):
        raise DataError(f"dataset {str(path)!r} row {row}: {text_field!r} holds an unpaired surrogate escape "
                        f"(\\ud800-\\udfff), not text; fix the row")
    return obj


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _decompression_problem(path: Path) -> str | None:
    """Why a compressed shard cannot be decompressed (truncated, not .gz/.zst at all), or None. Only
    asked once a reader has failed: `datasets` reports these as a bare EOFError or StopIteration."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".gz":
            with gzip.open(path, "rb") as f:
                while f.read(1 << 20):
                    pass
        elif suffix == ".zst" and not _zstd_frames_end(path):
            return "damaged .zst file (it ends inside a frame: cut short?)"
    except (OSError, EOFError, _ZSTD_ERROR) as e:
        return f"damaged {suffix} file ({first_line(e)})"
    return None


def _zstd_frames_end(path: Path) -> bool:
    """Whether every zstd frame in the file is complete (a stream reader stops quietly at a cut)."""
    import zstandard

    d, fed = zstandard.ZstdDecompressor().decompressobj(), False
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            while block:
                d.decompress(block)
                fed, block = True, b""
                if d.eof:  # the next frame, if any, starts in what this one left over
                    block, d, fed = d.unused_data, zstandard.ZstdDecompressor().decompressobj(), False
    return not fed or d.eof


try:
    from zstandard import ZstdError as _ZSTD_ERROR
except ImportError:  # no zstandard: no .zst shard gets this far
    _ZSTD_ERROR = OSError


def _open_binary(path: Path):
    suffix = path.suffix.lower()
    if suffix == ".gz":
        return gzip.open(path, "rb")
    if suffix == ".zst":
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)
    return open(path, "rb")


def _local(path: Path):
    import datasets  # heavy import, only needed when a cache is built

    _quiet(datasets)
    return datasets.load_dataset(loader_of(path), data_files=str(path), split="train", streaming=True)


def _hub(spec: str):
    import datasets

    _quiet(datasets)
    name, _, subset = spec[3:].partition(":")
    return datasets.load_dataset(name, subset or None, split="train", streaming=True)


def _quiet(datasets) -> None:
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


def _rows(open_stream, text_field: str, name: str, path: Path | None = None) -> Iterator[Iterator[str]]:
    """Documents of a `datasets` stream; any reader failure (opening it reads its first rows) becomes one
    line naming the shard."""
    row = 0
    try:
        ds = open_stream()
        if ds.column_names is not None and text_field not in ds.column_names:
            raise DataError(f"dataset {name!r} has no column {text_field!r} (columns: "
                            f"{', '.join(ds.column_names)}); set data.text_field")
        for batch in ds.iter(batch_size=1024):
            for text in batch[text_field]:
                _checked_text(text, row, name, text_field)
                row += 1
                if text:
                    yield iter((text,))
    except UserError:
        raise
    except Exception as e:  # datasets wraps reader errors; report the root cause in one line
        cause = (_decompression_problem(path) if path else None) or _root_cause(e)
        raise DataError(f"cannot load dataset {name!r} (at row {row}): {cause}; replace or remove the file") from None


def _checked_text(text, row: int, name: str, text_field: str) -> str | None:
    """A row's text as read (None or "" for a row without any), refused in one line when it is not text."""
    if text is not None and not isinstance(text, str):
        raise DataError(f"dataset {name!r} row {row}: {text_field!r} holds {type(text).__name__} "
                        f"{str(text)[:30]!r}, not text; fix the row or set data.text_field")
    return text


def _root_cause(e: BaseException) -> str:
    while e.__cause__ or e.__context__:
        e = e.__cause__ or e.__context__
    if isinstance(e, UnicodeDecodeError):
        return f"not UTF-8 text ({e.reason})"
    if isinstance(e, KeyError):
        return f"no column {e}"
    return first_line(e)


def cpu_count() -> int:
    """Cores this process may run on (a container's or taskset's share, not the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
