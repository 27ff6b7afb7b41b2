"""The report's figures: val loss against tokens seen per point, and best val loss over two swept axes."""

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


def _figure(size: tuple[int, int]):
    return plt.figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI, layout="constrained")


def curves(points, path: Path) -> None:
    """One line per point (mean over seeds) with a band from the lowest to the highest seed; best first."""
    fig = curves_figure(points)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def curves_figure(points):
    fig = _figure(CURVES_SIZE)
    ax = fig.add_subplot()
    for i, point in enumerate(points):
        x, ys = _by_tokens(point)
        color = _color(i, len(points))
        ax.plot(x, [y.mean() for y in ys], color=color, linewidth=1.5,
                label=f"{point.name} ({point.mean('best_val_loss'):.3f})")
        if len(point.runs) > 1:
            ax.fill_between(x, [y.min() for y in ys], [y.max() for y in ys], color=color, alpha=0.2, linewidth=0)
    zoomed = _zoom(ax, points)
    ax.xaxis.set_major_formatter(matplotlib.ticker.EngFormatter())
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("val loss")
    seeds = max(len(p.runs) for p in points)
    # One short line each: a single long title line runs past the axes into the legend beside them.
    ax.set_title("\n".join(["val loss", *([f"mean of {seeds} seeds, band: lowest to highest"] if seeds > 1 else []),
                            *(["y axis from the first quarter of training on"] if zoomed else [])]))
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right upper", fontsize="small", title="point (best val loss)")
    return fig


def _by_tokens(point):
    by_tokens: dict[int, list[float]] = {}
    for run in point.runs:
        for tokens, loss in run.curve:
            by_tokens.setdefault(tokens, []).append(loss)
    x = np.array(sorted(by_tokens))
    return x, [np.array(by_tokens[t]) for t in x]


def _color(i: int, n: int):
    if n <= 10:
        return plt.get_cmap("tab10")(i)
    return plt.get_cmap("tab20")((2 * i) % 20 + (2 * i) // 20)  # the ten dark shades first, then the light ones


def _zoom(ax, points) -> bool:
    # The first quarter of training falls from ln(vocab) and would squash the differences that
    # matter into a sliver at the bottom: the y range covers the rest (earlier points are clipped).
    last = max(t for p in points for r in p.runs for t, _ in r.curve)
    late = [v for p in points for r in p.runs for t, v in r.curve if t >= last / 4]
    low, high = min(late), max(late)
    if high > low:
        ax.set_ylim(low - 0.05 * (high - low), high + 0.05 * (high - low))
    return high > low


def heatmap(points, axes: list[str], planned: list[dict], path: Path) -> bool:
    """Best val loss over two axes (rows: the first); invalid points are marked. False if not two axes."""
    if len(axes) != 2:
        path.unlink(missing_ok=True)  # a stale heatmap from an earlier report would mislead
        return False
    rows, cols = (_axis_values(points, planned, key) for key in axes)
    grid = np.full((len(rows), len(cols)), np.nan)
    labels = {}
    for p in planned:
        if p["error"]:
            labels[_cell(p["values"], axes, rows, cols)] = "invalid"
    for p in points:
        r, c = _cell(p.values, axes, rows, cols)
        grid[r, c] = p.mean("best_val_loss")
        std = p.std("best_val_loss")
        labels[r, c] = f"{grid[r, c]:.3f}" + ("" if math.isnan(std) else f"\n± {std:.3f}")
    _draw(grid, labels, axes, rows, cols, path, seeds=max(len(p.runs) for p in points))
    return True


def _axis_values(points, planned: list[dict], key: str) -> list:
    # The sweep's own order where there is a plan; sorted otherwise.
    seen = [p["values"][key] for p in planned] or sorted({p.values[key] for p in points}, key=_order)
    return list(dict.fromkeys(seen))


def _order(v):
    return (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v))


def _cell(values: dict, axes: list[str], rows: list, cols: list) -> tuple[int, int]:
    return rows.index(values[axes[0]]), cols.index(values[axes[1]])


def _draw(grid, labels, axes, rows, cols, path: Path, seeds: int) -> None:
    fig = _figure(HEATMAP_SIZE)
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis_r", aspect="auto")
    ax.set_facecolor("0.85")  # invalid or missing cells
    fig.colorbar(image, ax=ax, label="best val loss (lower is better)")
    ax.set_xticks(range(len(cols)), [str(c) for c in cols])
    ax.set_yticks(range(len(rows)), [str(r) for r in rows])
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
    title = "best val loss" + (f", mean ± std over {seeds} seeds" if seeds > 1 else "")
    ax.set_title(title + " (red: best)")
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
