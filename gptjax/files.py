"""Files written whole or not at all: a kill mid-write leaves the old file or the new one, never half of either."""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write(path: str | Path, text: str) -> None:
    """Write `text` to a temporary sibling, then rename it over `path` (atomic on POSIX filesystems)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def follow_umask(path: str | Path) -> None:
    """Give a file the mode a plain open() would have: libraries that write through a temporary file
    (safetensors) leave it 0600, unreadable to the group that reads the file's 0644 neighbours."""
    mask = os.umask(0)  # the only way to read the umask; set straight back
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)
