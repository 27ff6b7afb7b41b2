"""What `gptjax inspect heads|roles|attribute` show: layer x head tables and heatmaps, and attribution rows."""

from __future__ import annotations

import base64
import io

import numpy as np

from gptjax.look import heads, render
from gptjax.look.render import plt, table


def knockout_table(k: heads.Knockouts) -> str:
    """A row per layer: the loss change from knocking out each head, the whole attention, the MLP."""
    H = k.heads_lh.shape[1]
    rows = [[l, *(f"{d:+.4f}" for d in k.heads_lh[l]), f"{k.attn_l[l]:+.4f}", f"{k.mlp_l[l]:+.4f}"]
            for l in range(len(k.attn_l))]
    return "\n".join([
        f"loss {k.base:.4f} with nothing knocked out; the change when one part is {k.ablation}-ablated "
        f"(its output replaced by {'zero' if k.ablation == 'zero' else 'its mean over the same batches'}):",
        table(["layer", *(f"head {h}" for h in range(H)), "attention", "MLP"], rows, right=set(range(H + 3)))])


def roles_table(scores: dict[str, np.ndarray]) -> str:
    L, H = next(iter(scores.values())).shape
    rows = [[l, h, *(f"{scores[r][l, h]:.3f}" for r in heads.ROLES)] for l in range(L) for h in range(H)]
    return "\n".join(["head roles on repeated random tokens: the share of each head's attention on the keys the "
                      "role names (1: all of it)",
                      table(["layer", "head", *heads.ROLES], rows, right=set(range(2 + len(heads.ROLES))))])


def attribution_table(a, token: str) -> str:
    rows = [[part, f"{v:+.4f}"] for part, v in a.rows()]
    return "\n".join([
        f"direct logit attribution of {token} at position {a.position}: logit {a.logit:.4f}{before_cap(a)}, "
        f"parts sum to {a.total():.4f} ({a.note()})",
        table(["part", "contribution"], rows, right={1})])


def before_cap(a) -> str:
    return f" ({a.uncapped:.4f} before the soft cap)" if a.softcap else ""


def heatmaps(panels: list[tuple[str, np.ndarray, list[str]]], rows: list[str], label: str, diverging: bool):
    """Side-by-side heatmaps sharing their rows, each cell printed; returns the figure."""
    fig, axes = plt.subplots(1, len(panels), squeeze=False, layout="constrained",
                             figsize=(sum(0.8 * m.shape[1] + 1.2 for _, m, _ in panels) + 1, 0.55 * len(rows) + 1.4),
                             width_ratios=[m.shape[1] for _, m, _ in panels])
    peak = max(float(np.abs(m).max()) for _, m, _ in panels) or 1.0
    scale = dict(cmap="RdBu_r", vmin=-peak, vmax=peak) if diverging else dict(cmap="viridis", vmin=0, vmax=1)
    for ax, (title, m, cols) in zip(axes[0], panels):
        image = ax.imshow(m, aspect="auto", **scale)
        for (r, c), v in np.ndenumerate(m):
            # Light text on the dark ends: both ends of RdBu, the low end of viridis.
            dark = abs(v) > 0.6 * peak if diverging else v < 0.6
            ax.text(c, r, f"{v:.3g}", ha="center", va="center", fontsize=8, color="white" if dark else "black")
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(len(cols)), cols, fontsize=8)
        ax.set_yticks(range(len(rows)), rows, fontsize=8)
        ax.label_outer()
    fig.colorbar(image, ax=axes, label=label, fraction=0.05)
    return fig


def knockout_figure(k: heads.Knockouts):
    L, H = k.heads_lh.shape
    sub = np.stack([k.attn_l, k.mlp_l], 1)
    return heatmaps([("each head", k.heads_lh, [f"head {h}" for h in range(H)]),
                     ("each sublayer", sub, ["attention", "MLP"])],
                    [f"layer {l}" for l in range(L)], f"loss change ({k.ablation} ablation)", diverging=True)


def roles_figure(scores: dict[str, np.ndarray]):
    L, H = next(iter(scores.values())).shape
    return heatmaps([(role, scores[role], [f"head {h}" for h in range(H)]) for role in heads.ROLES],
                    [f"layer {l}" for l in range(L)], "role score", diverging=False)


def data_uri(fig) -> str:
    """The figure as an inline PNG (data: URI), for a report that needs no other file."""
    buffer = io.BytesIO()
    render.save(fig, buffer)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
