"""Durations, byte sizes and counts as people read them, written the same way in every message and table."""

from __future__ import annotations

import math


def duration(seconds: float) -> str:
    """2h05m, 3m07s or 45s; an unknown (NaN) time is a dash."""
    if math.isnan(seconds):
        return "—"
    minutes, s = divmod(int(round(seconds)), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m" if hours else f"{m}m{s:02d}s" if m else f"{s}s"


def size(n_bytes: float) -> str:
    """Bytes in binary units: 512.0 B, 1.5 KiB ... 2.0 TiB."""
    exp = min(int(math.log(max(n_bytes, 1), 1024)), 4)
    return f"{n_bytes / 1024 ** exp:.1f} {('B', 'KiB', 'MiB', 'GiB', 'TiB')[exp]}"


def count(n: float, giga: str = "G") -> str:
    """A count to three significant figures with an SI prefix: 950, 12.3k, 4.5M, 1.23G (giga="B" for
    parameters, as models are named: 1.56B)."""
    for unit, scale in ((giga, 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:g}"
