"""scaling.png, in the style of Chinchilla's figure 3: isoFLOP curves with their minima, then N_opt and
D_opt against C on log-log axes with the fitted power laws carried on to the predicted budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gptjax.ablate import plots, scaling
from gptjax.ablate.scaling_report import FIGURE_SIZE, NAMES

plt = plots.plt


def figure(fit, path: Path) -> None:
    fig = plots.new_figure(FIGURE_SIZE)
    isoflop, n_ax, d_ax = fig.subplots(1, 3)
    colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, max(2, len(fit.profiles))))
    for p, color in zip(fit.profiles, colors):
        _profile(isoflop, p, color)
    isoflop.set_xscale("log")
    isoflop.set_xlabel("parameters N")
    isoflop.set_ylabel(f"final {NAMES[fit.metric]}")
    isoflop.set_title("isoFLOP curves (dots: runs; star: minimum)")
    isoflop.legend(title="budget C (FLOPs)", fontsize="small")
    for ax, law, column, label in ((n_ax, fit.n_law, 0, "N_opt (parameters)"), (d_ax, fit.d_law, 1, "D_opt (tokens)")):
        _law(ax, fit, law, column, colors)
        ax.set_ylabel(label)
    n_ax.set_title("optimal size against compute")
    d_ax.set_title("optimal tokens against compute")
    fig.savefig(path, dpi=plots.DPI)
    plt.close(fig)


def _profile(ax, p: scaling.Profile, color) -> None:
    label = f"{p.budget:.2g}"
    for size in np.unique(p.n):
        ys = p.loss[p.n == size]
        ax.errorbar(size, ys.mean(), yerr=[[ys.mean() - ys.min()], [ys.max() - ys.mean()]] if len(ys) > 1 else None,
                    fmt="o", color=color, markersize=4, capsize=2)
    if p.coef is not None:
        x = np.linspace(np.log10(p.n.min()) - 0.1, np.log10(p.n.max()) + 0.1, 100)
        ax.plot(10 ** x, np.polyval(p.coef, x), color=color, label=label)
    else:
        ax.plot([], [], "o", color=color, label=f"{label} (no parabola: {len(np.unique(p.n))} sizes)")
    if p.n_opt is not None:
        ax.plot(p.n_opt.value, p.loss_min, "*", color=color, markersize=14, markeredgecolor="black")
        if np.isfinite(p.n_opt.lo):
            ax.hlines(p.loss_min, p.n_opt.lo, p.n_opt.hi, color=color, linewidth=3, alpha=0.5)


def _law(ax, fit, law, column: int, colors) -> None:
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("compute C (FLOPs)")
    ax.grid(alpha=0.3, which="both")
    for p, color in zip(fit.profiles, colors):
        if p.n_opt is None:
            continue
        e = (p.n_opt, p.d_opt)[column]
        err = None if np.isnan(e.lo) else [[e.value - e.lo], [e.hi - e.value]]
        ax.errorbar(p.budget, e.value, yerr=err, fmt="*", color=color, markersize=12, markeredgecolor="black",
                    capsize=3)
    if isinstance(law, str):
        ax.text(0.5, 0.5, f"no power law:\n{law}", transform=ax.transAxes, ha="center", va="center", wrap=True,
                fontsize="small")
        return
    c = np.logspace(np.log10(min(p.budget for p in fit.profiles)), np.log10(fit.target), 50)
    name = "a" if column == 0 else "b"
    e = law.exponent
    interval = "" if np.isnan(e.lo) else f" [{e.lo:.2f}, {e.hi:.2f}]"
    ax.plot(c, [law.at(x).value for x in c], "k--", linewidth=1, label=f"fit: ∝ C^{e.value:.2f}{interval} ({name})")
    predicted = law.at(fit.target)
    err = None if np.isnan(predicted.lo) else [[predicted.value - predicted.lo], [predicted.hi - predicted.value]]
    ax.errorbar(fit.target, predicted.value, yerr=err, fmt="o", mfc="none", color="red", capsize=3,
                label=f"prediction at {fit.target:.2g} (extrapolation)")
    ax.legend(fontsize="small")
