"""Files written whole or not at all: a kill mid-write leaves the old file or the new one, never half of either."""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write(path: str | Path, text: str) -> None:
    """Write `text` to a temporary sibling, then rename it over `path` (atomic on POSIX filesystems).

    The data reaches the disk before the rename, and the rename before we return: without the
    first fsync a power cut can leave the new name pointing at an empty file; without the second,
    the old file back. A failed write leaves no temporary file behind.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (a no-op where directories cannot be opened, as on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
