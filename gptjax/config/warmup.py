"""Batch-size and sequence-length warm-up (train.batch_warmup_steps, train.seq_warmup_steps): the shape each
step trains on, and the tokens and FLOPs of the steps before a step.

A warm-up of N steps trains steps before N/2 on a quarter, steps before N on a half, then on all: three
shapes, so three compiled step programs. The smaller batch is the first rows of the batch the step draws
anyway, the shorter window the first tokens of each of its windows: data order, seeds and resume are
those of the run without warm-up, and off (N = 0) every step is the full batch_size x n_ctx.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gptjax.config.sections import Config

Segment = tuple[int, int | None, int, int]  # (first step, end step or None: open, rows, window length)


def divisor(warmup_steps: int, step: int) -> int:
    """What a warm-up of `warmup_steps` divides step `step`'s size by: 4, 2, then 1."""
    return 4 if 2 * step < warmup_steps else 2 if step < warmup_steps else 1


def rows_at(cfg: Config, step: int, shards: int = 1) -> int:
    """The global batch rows of step `step`: a multiple of grad_accum x `shards` (the mesh's batch shards), so
    every micro-batch splits over the devices; rounded down to one, at least one such group."""
    t = cfg.train
    k, grain = divisor(t.batch_warmup_steps, step), t.grad_accum * shards
    return t.batch_size if k == 1 else max(grain, t.batch_size // k // grain * grain)


def length_at(cfg: Config, step: int) -> int:
    return max(1, cfg.model.n_ctx // divisor(cfg.train.seq_warmup_steps, step))


def shape_at(cfg: Config, step: int, shards: int = 1) -> tuple[int, int]:
    """(rows, window length) of step `step`'s batch."""
    return rows_at(cfg, step, shards), length_at(cfg, step)


def segments(cfg: Config, shards: int = 1) -> list[Segment]:
    """The steps in runs of one shape, in order; the last run is open-ended."""
    t = cfg.train
    cuts = sorted({0, *(c for n in (t.batch_warmup_steps, t.seq_warmup_steps) for c in (-(-n // 2), n) if c > 0)})
    ends = [*cuts[1:], None]
    return [(start, end, *shape_at(cfg, start, shards)) for start, end in zip(cuts, ends)]


def total(cfg: Config, step: int, per_step: Callable[[int, int], int], shards: int = 1) -> int:
    """per_step(rows, length) summed over steps 0 .. step-1."""
    return sum(max(0, min(step, step if end is None else end) - start) * per_step(rows, length)
               for start, end, rows, length in segments(cfg, shards))


def tokens_before(cfg: Config, step: int, shards: int = 1) -> int:
    """Tokens trained on by the updates before step `step` (step x tokens_per_step without warm-up)."""
    return total(cfg, step, lambda rows, length: rows * length, shards)


def flops_before(cfg: Config, step: int, shards: int = 1) -> int:
    """Their training FLOPs, each token at its window's model.flops_per_token (attention grows with T)."""
    return total(cfg, step, lambda rows, length: rows * length * cfg.model.flops_per_token(n_ctx=length), shards)


def steps_within(cfg: Config, budget: float, per_step: Callable[[int, int], int]) -> int:
    """The most steps whose per_step(rows, length) costs add up to at most `budget`."""
    for start, end, rows, length in segments(cfg):
        cost = per_step(rows, length)
        # The tolerance forgives a budget that is an exact multiple of one step's cost written as a float.
        fit = math.floor(budget / cost * (1 + 1e-12))
        if end is None or fit < end - start:
            return start + fit
        budget -= (end - start) * cost
    raise AssertionError("the last segment is open-ended")
