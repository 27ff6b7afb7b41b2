"""Content digests of a source's files, remembered by their stat so an unchanged corpus is never re-read.

The token cache and a run's inputs.json pin data by content (sha256), so a `touch`, or a `cp` without
`-p` to a new node, changes nothing, while an edit that keeps the size and mtime still shows. Hashing
(far faster than tokenizing) runs once per file: its digest is stored under the cache folder, keyed by
the file's path and valid while the file's size, mtime, ctime, inode and device are what they were (any
write, `touch`, copy or rename changes one of them, and ctime cannot be set back).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

from gptjax.data.sources import DataError, Source, loader_of
from gptjax.files import ReadError, read_json

BLOCK = 1 << 20


def source_digest(src: Source, index: Path, progress=None) -> str:
    """sha256 of what determines the source's tokens: each file's content, its format (text, JSON lines,
    parquet; compressed or not) and the files' order, and nothing of where they lie; a hub source's name."""
    if src.kind == "hf":
        parts = ["hf", src.spec]
    else:
        sums = file_digests(src.paths, index, progress)
        parts = [("ids" if src.kind == "bin" else loader_of(p), _compression(p), s) for p, s in zip(src.paths, sums)]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def file_digests(paths, index: Path, progress=None) -> list[str]:
    """Each file's sha256: from the index while its stat is unchanged, else read and hashed (and remembered).
    `progress(bytes done, bytes to hash, seconds, finished)` is called every 256 MiB, and once at the end."""
    stats = [p.stat() for p in paths]
    known = [_remembered(index, p, st) for p, st in zip(paths, stats)]
    todo = sum(st.st_size for st, k in zip(stats, known) if k is None)
    done, t0 = 0, time.perf_counter()
    for i, (path, st) in enumerate(zip(paths, stats)):
        if known[i] is None:
            known[i] = _hash(path, lambda n, before=done: progress and progress(before + n, todo,
                                                                                time.perf_counter() - t0, False))
            done += st.st_size
            _remember(index, path, st, known[i])
    if progress and todo >= 256 * BLOCK:  # it showed a progress line: end it
        progress(todo, todo, time.perf_counter() - t0, True)
    return known


def _hash(path: Path, report) -> str:
    h, n = hashlib.sha256(), 0
    try:
        with open(path, "rb") as f:
            while block := f.read(BLOCK):
                h.update(block)
                n += len(block)
                if n % (256 * BLOCK) == 0:
                    report(n)
    except OSError as e:
        raise DataError(f"cannot read dataset file {str(path)!r}: {e.strerror or e}") from None
    return h.hexdigest()


def _stamp(path: Path, st: os.stat_result) -> dict:
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
            "ino": st.st_ino, "dev": st.st_dev}


def _entry(index: Path, path: Path) -> Path:
    return index / f"{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:32]}.json"


def _remembered(index: Path, path: Path, st: os.stat_result) -> str | None:
    try:
        entry = read_json(_entry(index, path))
    except (OSError, ReadError):  # none yet, or damaged: hash again
        return None
    digest = entry.pop("sha256", None) if isinstance(entry, dict) else None
    return digest if entry == _stamp(path, st) and isinstance(digest, str) else None


def _remember(index: Path, path: Path, st: os.stat_result, digest: str) -> None:
    """Best effort: a read-only cache only means hashing again next time."""
    try:
        index.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=index, suffix=".tmp", delete=False) as f:  # unique: builds race
            json.dump({**_stamp(path, st), "sha256": digest}, f)
        os.replace(f.name, _entry(index, path))
    except OSError:
        pass


def _compression(path: Path) -> str:
    suffix = path.suffix.lower()
    return suffix if suffix in (".gz", ".zst") else ""
