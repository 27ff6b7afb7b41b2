"""Progress on stderr for anything that runs longer than a few seconds: one tqdm bar (count, rate, ETA).

Library functions take a `tick` callback rather than drawing anything themselves; the command
that calls them owns the bar.
"""

from __future__ import annotations

from tqdm.auto import tqdm


def bar(total: int, what: str = "", unit: str = "it", **options) -> tqdm:
    """A bar on stderr for `total` units of work; `bar.update()` after each, close it (or use `with`) at the end."""
    return tqdm(total=total, desc=what or None, unit=unit, dynamic_ncols=True, **options)

