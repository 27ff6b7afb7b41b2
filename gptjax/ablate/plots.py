"""The report's figures: val loss (or bpb) against tokens seen per point, and the best over two swept axes."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed, nor wanted on a training machine
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

DPI = 100
CURVES_SIZE = (960, 560)    # pixels; exact, since figures are saved without bbox="tight"
HEATMAP_SIZE = (640, 480)


def new_figure(size: tuple[int, int]):
    return plt.figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI, layout="constrained")


STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
NAMES = {"val_loss": "val loss", "val_bpb": "val bpb"}


def curves(points, path: Path, metric: str = "val_loss") -> None:
    """One line per point (mean over seeds) with a band from the lowest to the highest seed; best first."""
    fig = curves_figure(points, metric)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def curves_figure(points, metric: str = "val_loss"):
    """Every point distinguishable where lines coincide: each has its own colour, line style and marker,
    and markers sit at staggered evaluations so two equal curves still show both."""
    fig = new_figure(CURVES_SIZE)
    ax = fig.add_subplot()
    name = NAMES[metric]
    for i, point in enumerate(points):
        x, ys = _by_tokens(point, metric)
        color = _color(i, len(points))
        ax.plot(x, [y.mean() for y in ys], color=color, linewidth=1.5, linestyle=STYLES[i % len(STYLES)],
                marker=MARKERS[i % len(MARKERS)], markersize=5, markevery=(i % 3, 3) if len(x) > 6 else None,
                label=f"{point.name} ({point.mean('best_' + metric):.3f})")
        if len(point.runs) > 1:
            ax.fill_between(x, [y.min() for y in ys], [y.max() for y in ys], color=color, alpha=0.15, linewidth=0)
    zoomed = _zoom(ax, points, metric)
    spans = [max(t for t, _ in r.curve) for p in points for r in p.runs]
    if max(spans) > 10 * min(spans):  # budgets a decade apart: a linear axis crushes the small ones
        ax.set_xscale("log")
    else:
        ax.xaxis.set_major_formatter(matplotlib.ticker.EngFormatter())
    ax.set_xlabel("tokens seen")
    ax.set_ylabel(name)
    seeds = max(len(p.runs) for p in points)
    # One short line each: a single long title line runs past the axes into the legend beside them.
    ax.set_title("\n".join([name, *([f"mean of {seeds} seeds, band: lowest to highest"] if seeds > 1 else []),
                            *(["y axis from the first quarter of training on"] if zoomed else [])]))
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right upper", fontsize="small", title=f"point (best {name})")
    return fig


def _curve(run, metric: str):
    return run.bpb_curve if metric == "val_bpb" else run.curve


def _by_tokens(point, metric: str = "val_loss"):
    by_tokens: dict[int, list[float]] = {}
    for run in point.runs:
        for tokens, loss in _curve(run, metric):
            by_tokens.setdefault(tokens, []).append(loss)
    x = np.array(sorted(by_tokens))
    return x, [np.array(by_tokens[t]) for t in x]


def _color(i: int, n: int):
    if n <= 10:
        return plt.get_cmap("tab10")(i)
    return plt.get_cmap("tab20")((2 * i) % 20 + (2 * i) // 20)  # the ten dark shades first, then the light ones


def _zoom(ax, points, metric: str = "val_loss") -> bool:
    # The first quarter of training falls from ln(vocab) and would squash the differences that
    # matter into a sliver at the bottom: the y range covers the rest (earlier points are clipped).
    last = max(t for p in points for r in p.runs for t, _ in _curve(r, metric))
    late = [v for p in points for r in p.runs for t, v in _curve(r, metric) if t >= last / 4]
    low, high = min(late), max(late)
    if high > low:
        ax.set_ylim(low - 0.05 * (high - low), high + 0.05 * (high - low))
    return high > low


ZOOMED = 0.05  # a colour range narrower than this share of its values is said to be zoomed


def heatmap(points, axes: list[str], planned: list[dict], path: Path, report=None) -> bool:
    """Best val loss (or bpb) over two axes (rows: the first), each cell annotated with its mean and 95%
    interval; invalid points are marked. False if not two axes."""
    if len(axes) != 2:
        path.unlink(missing_ok=True)  # a stale heatmap from an earlier report would mislead
        return False
    metric = report.metric if report else "val_loss"
    rows, cols = (_axis_values(points, planned, key) for key in axes)
    grid = np.full((len(rows), len(cols)), np.nan)
    labels = {}
    for p in planned:
        if p["error"]:
            labels[_cell(p["values"], axes, rows, cols)] = "invalid"
    for p in points:
        r, c = _cell(p.values, axes, rows, cols)
        grid[r, c], half = p.interval("best_" + metric)
        labels[r, c] = f"{grid[r, c]:.3f}" + ("" if math.isnan(half) else f"\n± {half:.3f}")
    _draw(grid, labels, axes, rows, cols, path, seeds=min(len(p.runs) for p in points), name=NAMES[metric])
    return True


def _axis_values(points, planned: list[dict], key: str) -> list:
    # The sweep's own order where there is a plan; sorted otherwise.
    seen = [p["values"][key] for p in planned] or sorted({p.values[key] for p in points}, key=_order)
    return list(dict.fromkeys(seen))


def _tick(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) and abs(v) >= 1e6 else str(v)


def _order(v):
    return (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v))


def _cell(values: dict, axes: list[str], rows: list, cols: list) -> tuple[int, int]:
    return rows.index(values[axes[0]]), cols.index(values[axes[1]])


def _draw(grid, labels, axes, rows, cols, path: Path, seeds: int, name: str = "val loss") -> None:
    fig = new_figure(HEATMAP_SIZE)
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis_r", aspect="auto")
    ax.set_facecolor("0.85")  # invalid or missing cells
    finite = grid[np.isfinite(grid)]
    spread = float(finite.max() - finite.min()) if finite.size else 0.0
    # The colours always run from the best cell to the worst; a small spread then looks as dramatic as a
    # large one, so the figure says how small it is.
    zoomed = finite.size > 1 and spread < ZOOMED * float(np.abs(finite).mean())
    fig.colorbar(image, ax=ax, label=f"best {name} (lower is better)"
                 + (f"\ncolours zoomed: the whole range is {spread:.3f}" if zoomed else ""))
    ax.set_xticks(range(len(cols)), [_tick(c) for c in cols])
    ax.set_yticks(range(len(rows)), [_tick(r) for r in rows])
    ax.set_xlabel(axes[1])
    ax.set_ylabel(axes[0])
    if np.isfinite(grid).any():
        best = np.unravel_index(np.nanargmin(grid), grid.shape)
        ax.add_patch(plt.Rectangle((best[1] - 0.5, best[0] - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    middle = np.nanmean(grid) if np.isfinite(grid).any() else 0
    for (r, c), text in labels.items():
        # viridis_r draws low losses light and high ones dark; grey marks invalid cells.
        light = not np.isfinite(grid[r, c]) or grid[r, c] < middle
        ax.text(c, r, text, ha="center", va="center", fontsize="small", color="black" if light else "white")
    title = f"best {name}" + (f", mean ± 95% interval over {seeds} seeds" if seeds > 1 else "")
    ax.set_title(title + " (red: best)" + (f"\ncolour range zoomed to a spread of {spread:.3f}" if zoomed else ""))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
