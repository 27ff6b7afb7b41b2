"""What a sweep's report tests: each swept axis's main effect (its marginal means over the other axes)
and the comparisons of interest (every pair of an axis's values, the best point against the runner-up,
each knob against the base), one family corrected by Holm's method.

Seeds as samples. Seed i of every point has the same train.seed, so where the points also draw their
batches the same way (same batch size, context, data and tokenizer: gptjax.data.window_starts is a
function of seed and step only) the runs of seed i see the same data in the same order and, for
same-shaped points, start from the same initial draw: the comparison is paired by seed, which removes
the seed-to-seed variation the points share. Elsewhere it is Welch's t-test.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np

from gptjax.ablate import grid, stats


@dataclasses.dataclass(frozen=True)
class Effect:
    axis: str
    level: object
    mean: float
    half: float       # 95% t-interval half-width over seeds; nan with one seed
    cells: int        # points averaged at this level (the other axes' combinations present)
    seeds: int


@dataclasses.dataclass(frozen=True)
class Comparison:
    label: str
    test: stats.Test
    p_holm: float = math.nan
    against_base: str = ""   # one-at-a-time sweeps: the point tested against its base


def _text(value) -> str:
    """A swept value in a label as in the point's directory name: budgets as 3e+13."""
    return grid.point_name({"x.x": value}).partition("=")[2]


def data_order(cfg) -> tuple:
    """What decides a run's batches besides its seed (gptjax.train.loop.local_batch)."""
    return (cfg.train.batch_size, cfg.model.n_ctx, cfg.data.source, cfg.data.tokenizer, cfg.data.val_fraction)


def seeds_of(point) -> list[int]:
    return sorted(r.cfg.train.seed for r in point.runs)


def pairable(cells: Sequence) -> bool:
    """Every cell has the same seeds and draws its batches the same way: seed i is shared across them."""
    return (len({tuple(seeds_of(c)) for c in cells}) == 1
            and len({data_order(r.cfg) for c in cells for r in c.runs}) == 1)


def marginal(cells: Sequence, metric: Callable) -> np.ndarray:
    """Sample i: the mean over the cells of each cell's i-th seed (by train.seed), for i up to the fewest
    seeds any cell has. With independent cells these are independent draws of the marginal mean too."""
    k = min(len(c.runs) for c in cells)
    by_seed = [[metric(r) for r in sorted(c.runs, key=lambda r: r.cfg.train.seed)[:k]] for c in cells]
    return np.nanmean(np.array(by_seed, float), axis=0) if k else np.array([])


def levels(points: Sequence, axis: str) -> list:
    """The axis's values in their natural order (numbers ascending, then text), not by loss."""
    return sorted(dict.fromkeys(p.values[axis] for p in points),
                  key=lambda v: (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)))


def main_effects(points: Sequence, axes: list[str], metric: Callable, within: Sequence[str] = ()) -> list[Effect]:
    """Per swept axis with two or more values: each value's mean over the points that have it."""
    effects = []
    for axis in (a for a in axes if a not in within):
        if len(values := levels(points, axis)) < 2:
            continue
        for level in values:
            cells = [p for p in points if p.values[axis] == level]
            sample = marginal(cells, metric)
            mean, half = stats.t_interval(sample)
            effects.append(Effect(axis, level, mean, half, len(cells), len(sample)))
    return effects


def axis_pairs(points: Sequence, axis: str, others: list[str], metric: Callable, name: Callable) -> list[Comparison]:
    """Every pair of the axis's values, each over the other axes' combinations present at both."""
    out = []
    values = levels(points, axis)
    for i, a in enumerate(values):
        for b in values[i + 1:]:
            key = lambda p: tuple(p.values[k] for k in others)  # noqa: E731
            at_a = {key(p): p for p in points if p.values[axis] == a}
            at_b = {key(p): p for p in points if p.values[axis] == b}
            common = [k for k in at_a if k in at_b]
            if not common:
                continue
            cells_a, cells_b = [at_a[k] for k in common], [at_b[k] for k in common]
            test = stats.compare(marginal(cells_a, metric), marginal(cells_b, metric), pairable(cells_a + cells_b))
            over = f" (mean over {len(common)} cell{'s' * (len(common) > 1)})" if others else ""
            if test:
                out.append(Comparison(f"{name(axis)}={_text(a)} vs {_text(b)}{over}", test))
    return out


def point_pair(a, b, metric: Callable, label: str, against_base: str = "") -> Comparison | None:
    pair = pairable([a, b])
    xs = [[metric(r) for r in sorted(p.runs, key=lambda r: r.cfg.train.seed)] for p in (a, b)]
    test = stats.compare(xs[0], xs[1], pair)
    return Comparison(label, test, against_base=against_base) if test else None


def comparisons(points: Sequence, axes: list[str], metric: Callable, name: Callable = str,
                one_at_a_time: bool = False, within: Sequence[str] = ()) -> list[Comparison]:
    """The family of comparisons a report makes, with Holm-adjusted p-values. `points` sorted best first.

    `within` (a budget sweep's train.flops_budget): keys whose values are blocks, not effects: points are
    compared only with points of the same block, and the key's own values are not tested against each other."""
    found: list[Comparison | None] = []
    block = lambda p: tuple(p.values[k] for k in within)  # noqa: E731
    tag = lambda p: "".join(f" at {name(k)}={_text(p.values[k])}" for k in within)  # noqa: E731
    if one_at_a_time:
        bases = {block(p): p for p in points if p.name == grid.point_name({k: p.values[k] for k in within})}
        found += [point_pair(p, bases[block(p)], metric, f"{p.name} vs base{tag(p)}", against_base=p.name)
                  for p in points if block(p) in bases and p is not bases[block(p)]]
    else:
        tested = [k for k in axes if k not in within]
        for axis in tested:
            found += axis_pairs(points, axis, [k for k in axes if k != axis], metric, name)
        for key in dict.fromkeys(map(block, points)):
            inside = [p for p in points if block(p) == key]
            if len(inside) > 2 or (len(inside) == 2 and not tested):  # with two, the axis pair is the same test
                found.append(point_pair(inside[0], inside[1], metric,
                                        f"best {inside[0].name} vs runner-up {inside[1].name}"))
    found = [c for c in found if c is not None]
    adjusted = stats.holm([c.test.p for c in found])
    return [dataclasses.replace(c, p_holm=p) for c, p in zip(found, adjusted)]

