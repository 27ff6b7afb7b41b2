"""Pictures for `python -m gptjax.inspect`: attention heatmaps and the logit lens, as PNG files."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from gptjax.errors import UserError  # noqa: E402


class PlotError(UserError):
    """A picture that cannot be written where asked."""


def check_out(path: str) -> Path:
    """Fail before any work if the PNG cannot be written: wrong suffix or a missing folder."""
    out = Path(path)
    if out.suffix.lower() != ".png":
        raise PlotError(f"--out {path}: give a file name ending in .png")
    if not out.parent.is_dir():
        raise PlotError(f"--out {path}: folder {out.parent} does not exist; create it or write elsewhere")
    return out


def label(token: str) -> str:
    """A token as a tick label: newline as ⏎, space as ␣, and '$' escaped so matplotlib never reads math."""
    return token.replace("\n", "⏎").replace(" ", "␣").replace("$", r"\$") or "∅"


def save(fig, path: str) -> None:
    try:
        fig.savefig(path, dpi=90, bbox_inches="tight")
    except OSError as e:
        raise PlotError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        plt.close(fig)


def attention_grid(attn_lhts: np.ndarray, tokens: list[str], layers: list[int], heads: list[int], path: str) -> None:
    """One heatmap per (layer, head): rows are queries, columns the keys they attend to; the
    masked future (above the diagonal) is left white so causality is visible at a glance."""
    T = len(tokens)
    ticks = [label(t) for t in tokens]
    cell = min(max(1.8, 0.14 * T + 0.6), 6.0)
    fig, axes = plt.subplots(len(layers), len(heads), figsize=(cell * len(heads) + 1.2, cell * len(layers) + 0.6),
                             squeeze=False, sharex=True, sharey=True, layout="constrained")
    future_ts = np.triu(np.ones((T, T), bool), k=1)
    cmap = plt.get_cmap("viridis").with_extremes(bad="white")
    for r, layer in enumerate(layers):
        for c, head in enumerate(heads):
            ax = axes[r, c]
            image = ax.imshow(np.ma.masked_where(future_ts, attn_lhts[layer, head]), cmap=cmap, vmin=0, vmax=1)
            ax.set_title(f"layer {layer}, head {head}", fontsize=9)
            ax.set_xticks(range(T), ticks, fontsize=8)
            ax.set_yticks(range(T), ticks, fontsize=8)
            ax.label_outer()  # the token labels once per row and column of the grid
    fig.supxlabel("key: the token attended to", fontsize=9)
    fig.supylabel("query: the token attending", fontsize=9)
    fig.colorbar(image, ax=axes, shrink=min(0.6, 0.3 + 0.15 * len(layers)), label="attention weight")
    save(fig, path)


def logit_lens(top_lt: np.ndarray, prob_lt: np.ndarray, tokens: list[str], vocab: list[str], stages: list[str],
               actual_next: list[int], path: str) -> None:
    """The logit lens as a grid: a row per stage (embeddings at the bottom, last layer at the top),
    a column per prompt position; each cell names its top token, coloured by that token's
    probability, framed where it is the prompt's actual next token."""
    L, T = top_lt.shape
    fig, ax = plt.subplots(figsize=(0.42 * T + 1.6, 0.42 * L + 1.2), layout="constrained")
    image = ax.imshow(prob_lt, cmap="Blues", vmin=0, vmax=1, origin="lower", aspect="auto")
    for l in range(L):
        for t in range(T):
            hit = t < len(actual_next) and top_lt[l, t] == actual_next[t]
            ax.text(t, l, label(vocab[top_lt[l, t]]), ha="center", va="center", fontsize=8,
                    color="white" if prob_lt[l, t] > 0.6 else "black", fontweight="bold" if hit else "normal")
            if hit:
                ax.add_patch(plt.Rectangle((t - 0.45, l - 0.45), 0.9, 0.9, fill=False, edgecolor="darkorange", lw=1.5))
    ax.set_xticks(range(T), [label(t) for t in tokens], fontsize=8)
    ax.set_yticks(range(L), stages, fontsize=8)
    ax.set_xlabel("input token at each position")
    top = ax.secondary_xaxis("top")
    top.set_xticks(range(T), [label(vocab[i]) for i in actual_next] + [""] * (T - len(actual_next)), fontsize=8)
    top.set_xlabel("actual next token (a framed cell predicts it)")
    fig.colorbar(image, ax=ax, label="probability of the top token", fraction=0.03)
    save(fig, path)
