"""What `gptjax inspect` shows: plain-text tables, and attention heatmaps and the logit lens as PNGs."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from gptjax import units  # noqa: E402
from gptjax.errors import UserError  # noqa: E402
from gptjax.look import analysis  # noqa: E402


def show(text: str) -> str:
    """A token as a quoted literal, so spaces and newlines stay visible: ' the', '\\n'."""
    return repr(text)


def table(headers: list[str], rows: list[list], right: set[int] = frozenset()) -> str:
    """A plain-text table: columns padded to their widest cell; columns in `right` right-aligned."""
    cells = [[str(c) for c in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    fmt = lambda row: "  ".join(c.rjust(w) if i in right else c.ljust(w)
                                for i, (c, w) in enumerate(zip(row, widths))).rstrip()
    return "\n".join(fmt(row) for row in cells)


def shape_text(shapes) -> str:
    return " + ".join(" x ".join(map(str, s)) for s in shapes)


def params_rows(groups, total: int, all_layers: bool) -> list[list]:
    """Table rows: every group with its share, a total per layer, all layers, and the grand total.
    Identical layers are shown once unless `all_layers` (GPT-3 would take 800 rows)."""
    share = lambda n: f"{100 * n / total:.2f}%"
    per_layer = analysis.layer_totals(groups)
    layout = {layer: [(g.name, g.shapes) for g in groups if g.layer == layer] for layer in per_layer}
    collapse = not all_layers and len(per_layer) > 1 and all(v == layout[0] for v in layout.values())
    rows = []
    for g in groups:
        shown = g.layer is None or not collapse or g.layer == 0
        if shown:
            label = g.name if g.layer is None else f"layer {g.layer}: {g.name}"
            count = f"{g.count:,}" if g.count else "0 (shares W_E)"
            rows.append([label, shape_text(g.shapes), count, share(g.count) if g.count else "-"])
        if g.layer is None or g.name != layout[g.layer][-1][0]:
            continue
        if shown:  # the layer's last group: close the layer with its total
            rows.append([f"layer {g.layer} total", "", f"{per_layer[g.layer]:,}", share(per_layer[g.layer])])
        if g.layer == max(per_layer):
            n, blocks = len(per_layer), sum(per_layer.values())
            if collapse:
                rows.append([f"layers 1-{n - 1}: each the same as layer 0", "", f"{per_layer[0]:,} each", ""])
            rows.append([f"all {n} layers", "", f"{blocks:,}", share(blocks)])
    rows.append(["total", "", f"{total:,}", share(total)])
    return rows


def params_text(cfg, source: str, groups, all_layers: bool = False) -> str:
    total = sum(g.count for g in groups)
    return "\n".join([
        f"{source}: {cfg.n_layer} layers, {cfg.n_head} heads of size {cfg.head_dim}, n_embd {cfg.n_embd}, "
        f"n_ctx {cfg.n_ctx}, n_vocab {cfg.n_vocab}, biases {'on' if cfg.bias else 'off'}",
        table(["group", "shape", "count", "share"], params_rows(groups, total, all_layers), right={2, 3}),
        f"{total:,} parameters ({units.count(total, giga='B')})"])


def next_table(tok, ids: list[int], logits_v: np.ndarray, probs: dict[float, np.ndarray], top: np.ndarray) -> str:
    """The top tokens with their logit and their probability at each temperature, side by side."""
    rows = [[rank + 1, show(tok.decode([i])), i, f"{logits_v[i]:.3f}", *(f"{p[i]:.4f}" for p in probs.values())]
            for rank, i in enumerate(top)]
    rows.append(["", f"top-{len(top)} mass", "", "", *(f"{p[top].sum():.4f}" for p in probs.values())])
    headers = ["rank", "token", "id", "logit", *(f"p(T={t:g})" for t in probs)]
    return "\n".join([f"after {show(tok.decode(ids))} ({len(ids)} tokens), the {len(top)} most likely next tokens:",
                      table(headers, rows, right=set(range(2, len(headers))))])


def lens_table(tok, ids: list[int], top_lt: np.ndarray, prob_lt: np.ndarray, stages: list[str]) -> str:
    """A row per prompt position: the top next token after each stage with its probability."""
    rows = []
    for t, i in enumerate(ids):
        actual = ids[t + 1] if t + 1 < len(ids) else None
        cells = [f"{show(tok.decode([top_lt[l, t]]))} {prob_lt[l, t]:.2f}" + ("*" if top_lt[l, t] == actual else "")
                 for l in range(len(stages))]
        rows.append([t, show(tok.decode([i])), *cells])
    return "\n".join(["logit lens: the top next token (and its probability) read off the residual stream after "
                      "each stage, through ln_f and W_U; * marks the prompt's actual next token",
                      table(["pos", "token", *stages], rows)])


# ---------------------------------------------------------------------------
# Pictures


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


def attention_png(attn_lhts: np.ndarray, tokens: list[str], layers: list[int], heads: list[int], path: str) -> None:
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


def lens_png(top_lt: np.ndarray, prob_lt: np.ndarray, tokens: list[str], vocab: list[str], stages: list[str],
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
