"""A scaling fit (gptjax.ablate.fit) written out: scaling.md (tables), scaling.csv (one number per row,
with its interval) and scaling.png (isoFLOP curves, then N_opt and D_opt against C, as Chinchilla's figure 3)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from gptjax.ablate import scaling
from gptjax.ablate.fit import Fit

NAMES = {"val_loss": "val loss", "val_bpb": "val bpb"}
FIGURE_SIZE = (1500, 480)   # pixels


def write(fit: Fit, out: Path, command: str = "") -> list[str]:
    """scaling.md, scaling.csv and scaling.png in `out`; returns the names written."""
    from gptjax.ablate import scaling_plot  # matplotlib only where a figure is made

    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling.md").write_text(markdown(fit, command))
    write_csv(fit, out / "scaling.csv")
    scaling_plot.figure(fit, out / "scaling.png")
    return ["scaling.md", "scaling.csv", "scaling.png"]


def rows(fit: Fit) -> list[tuple]:
    """(quantity, budget, value, lo, hi, note) for every number the fit gives."""
    out = []
    for p in fit.profiles:
        if p.n_opt is None:
            out.append(("N_opt", p.budget, math.nan, math.nan, math.nan, p.why))
            continue
        for name, e in (("N_opt", p.n_opt), ("D_opt", p.d_opt)):
            out.append((name, p.budget, e.value, e.lo, e.hi, "; ".join(filter(None, [p.why, e.why]))))
        out.append((f"{fit.metric}_at_N_opt", p.budget, p.loss_min, math.nan, math.nan, ""))
    for name, law in (("a (N_opt ~ C^a)", fit.n_law), ("b (D_opt ~ C^b)", fit.d_law)):
        e = law.exponent if isinstance(law, scaling.PowerLaw) else scaling.Estimate(math.nan, why=law)
        out.append((name, "", e.value, e.lo, e.hi, e.why))
    for name in scaling.NAMES:
        p = fit.parametric
        e = p.estimates[name] if isinstance(p, scaling.Parametric) else scaling.Estimate(math.nan, why=p)
        out.append((name, "", e.value, e.lo, e.hi, e.why))
    for name, e in fit.prediction().items():
        e = e if isinstance(e, scaling.Estimate) else scaling.Estimate(math.nan, why=e)
        out.append((f"{name} (predicted)", fit.target, e.value, e.lo, e.hi,
                    "; ".join(filter(None, ["extrapolation", e.why]))))
    return out


def write_csv(fit: Fit, path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["quantity", "budget", "value", "lo95", "hi95", "note"])
        for row in rows(fit):
            writer.writerow(["" if isinstance(v, float) and math.isnan(v) else v for v in row])


def _g(v: float) -> str:
    return "—" if v is None or math.isnan(v) else f"{v:.3g}"


def _est(e: scaling.Estimate | str) -> str:
    if isinstance(e, str):
        return f"— ({e})"
    return _g(e.value) + ("" if math.isnan(e.lo) else f" [{_g(e.lo)}, {_g(e.hi)}]") + (f" ({e.why})" if e.why else "")


def markdown(fit: Fit, command: str = "") -> str:
    name = NAMES[fit.metric]
    lines = [*([f"`{command}`", ""] if command else []),
             f"# Scaling laws: final {name} of {len(fit.runs)} runs at {len(fit.profiles)} budget"
             f"{'s' * (len(fit.profiles) != 1)}", "",
             f"N: parameters; D: tokens trained on; C: training FLOPs (C = {fit.kappa:.2f} N D here, the median over "
             f"the runs: 6 N D plus attention). Intervals: 95% bootstrap percentiles "
             f"(approach 2 resamples each size's seeds; approach 3 resamples runs).", ""]
    lines += [f"Left out {why}" for why in fit.left_out] + ([""] if fit.left_out else [])
    lines += ["## isoFLOP minima (approach 2)", "", f"| budget C | runs | sizes | N_opt | D_opt | D_opt / N_opt | "
              f"{name} at N_opt | note |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for p in fit.profiles:
        ratio = p.d_opt.value / p.n_opt.value if p.n_opt else math.nan
        lines.append(f"| {p.budget:.3g} | {len(p.n)} | {len(np.unique(p.n))} | {_est(p.n_opt) if p.n_opt else '—'} | "
                     f"{_est(p.d_opt) if p.d_opt else '—'} | {_g(ratio)} | {_g(p.loss_min)} | {p.why} |")
    lines += ["", "## Power laws", ""]
    for label, law in (("N_opt ∝ C^a: a", fit.n_law), ("D_opt ∝ C^b: b", fit.d_law)):
        lines.append(f"- {label} = {_est(law.exponent if isinstance(law, scaling.PowerLaw) else law)}")
    lines += ["", "Chinchilla found a ≈ 0.50 and b ≈ 0.50 (approach 2), Kaplan et al. a ≈ 0.73.", "",
              "## Parametric fit (approach 3): L(N, D) = E + A / N^alpha + B / D^beta", ""]
    p = fit.parametric
    if isinstance(p, str):
        lines.append(f"No fit: {p}.")
    else:
        lines += ["| E | A | B | alpha | beta |", "| ---: | ---: | ---: | ---: | ---: |",
                  "| " + " | ".join(_est(p.estimates[k]) for k in scaling.NAMES) + " |", "",
                  f"Implied exponents: a = beta / (alpha + beta) = {_est(implied(p, 4))}, "
                  f"b = alpha / (alpha + beta) = {_est(implied(p, 3))}."]
    lines += ["", f"## Prediction at C = {fit.target:.3g} ({scaling_target(fit)}): an extrapolation", "",
              "| quantity | predicted |", "| --- | ---: |"]
    lines += [f"| {k} | {_est(e)} |" for k, e in fit.prediction().items()]
    lines += ["", "An extrapolation past every budget trained: the further past them, the less the intervals "
                  "(which hold only the noise of these runs, not a change of regime) can be trusted.", ""]
    return "\n".join(lines) + "\n"


def implied(p: scaling.Parametric, top: int) -> scaling.Estimate:
    """Approach 3's exponent of N_opt (top=4: beta / (alpha + beta)) or D_opt (top=3), with its bootstrap interval."""
    ratio = lambda t: t[..., top] / (t[..., 3] + t[..., 4])  # noqa: E731
    with np.errstate(invalid="ignore", divide="ignore"):
        return scaling.interval(ratio(p.replicates), float(ratio(p.theta)), "the fit")


def scaling_target(fit: Fit) -> str:
    return f"{fit.target / max(p.budget for p in fit.profiles):.0f}x the largest budget"
