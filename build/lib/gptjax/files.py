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
