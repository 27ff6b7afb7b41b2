"""Durations, sizes and counts: one way of writing each, used by every message and table."""

import math

from gptjax import units


def test_durations_sizes_and_counts_read_as_people_write_them():
    assert [units.duration(s) for s in (0, 45.4, 187, 7500, math.nan)] == ["0s", "45s", "3m07s", "2h05m", "—"]
    assert [units.size(b) for b in (0, 512, 1536, 3 * 2**30, 2**50)] == ["0.0 B", "512.0 B", "1.5 KiB", "3.0 GiB",
                                                                          "1024.0 TiB"]
    assert [units.count(n) for n in (950, 12_345, 4_500_000, 1_234_567_890)] == ["950", "12.3k", "4.5M", "1.23G"]
    assert units.count(1_557_611_200, giga="B") == "1.56B"
