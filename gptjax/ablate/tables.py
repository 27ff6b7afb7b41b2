"""A report's tables: results.md (the points, main effects, comparisons) and results.csv (one row per point)."""

from __future__ import annotations

import csv
import math

from gptjax import units
from gptjax.ablate import grid

CSV_FIELDS = ("params", "flops_per_token", "tokens_seen", "flops", "steps", "seeds", "final_val_loss_mean",
              "final_val_loss_std", "best_val_loss_mean", "best_val_loss_std", "best_val_loss_ci95",
              "final_val_bpb_mean", "best_val_bpb_mean", "best_val_bpb_ci95", "tokens_per_sec", "wall_s")
NAMES = {"val_loss": "val loss", "val_bpb": "val bpb"}


def row(p) -> dict:
    cfg = p.runs[0].cfg
    out = {"params": cfg.model.n_params, "flops_per_token": cfg.model.flops_per_token(),
           "tokens_seen": int(p.mean("tokens")), "flops": p.mean("flops"), "steps": int(p.mean("steps")),
           "seeds": len(p.runs), "tokens_per_sec": p.mean("tokens_per_sec"), "wall_s": p.mean("wall_s")}
    for m in ("final_val_loss", "best_val_loss", "final_val_bpb", "best_val_bpb"):
        out[f"{m}_mean"], out[f"{m}_ci95"] = p.interval(m)
        out[f"{m}_std"] = p.std(m)
    return out


def vs_base(report) -> dict[str, object]:
    """One-at-a-time sweeps: point -> its comparison against the base."""
    return {c.against_base: c for c in report.comparisons if c.against_base}


def write_csv(report, path) -> None:
    extra = ["p_vs_base", "p_vs_base_holm"] if report.one_at_a_time else []
    base = vs_base(report)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["point", *report.columns, *CSV_FIELDS, *extra])
        for p in report.points:
            r, c = row(p), base.get(p.name)
            writer.writerow([p.name, *(p.values[k] for k in report.columns), *(_csv(r[k]) for k in CSV_FIELDS),
                             *([c.test.p if c else "", c.p_holm if c else ""] if extra else [])])


def _csv(v):
    return "" if isinstance(v, float) and math.isnan(v) else v


def both_columns(report) -> bool:
    """Final and best differ somewhere (the last evaluation was not the best): show both."""
    m = report.metric
    return any(getattr(r, f"final_{m}") != getattr(r, f"best_{m}") for p in report.points for r in p.runs)


def markdown(report, command: str) -> str:
    name, base = NAMES[report.metric], vs_base(report)
    bpb = report.metric != "val_bpb" and any(math.isfinite(r.best_val_bpb) for p in report.points for r in p.runs)
    scores = [f"final {name}", f"best {name}"] if both_columns(report) else [name]
    head = [*(["point"] if report.one_at_a_time else []), *(grid.short_key(k) for k in report.columns), "params",
            "FLOPs", "tokens", *scores, *(["val bpb"] if bpb else []),
            *(["p vs base (Holm)"] if report.one_at_a_time else []), "tokens/s", "wall time"]
    lines = ["| " + " | ".join(head) + " |", "|" + " ---: |" * len(head)]
    for i, p in enumerate(report.points):
        r, c = row(p), base.get(p.name)
        cells = [_pm(r[f"{s.split()[0]}_{report.metric}_mean"], r[f"{s.split()[0]}_{report.metric}_ci95"])
                 for s in (scores if len(scores) == 2 else [f"best {name}"])]
        cells[-1] = f"**{cells[-1]}**" if i == 0 else cells[-1]
        lines.append("| " + " | ".join([
            *([p.name] if report.one_at_a_time else []), *(text(p.values[k]) for k in report.columns),
            f"{r['params']:,}", _si(r["flops"]), _si(r["tokens_seen"]), *cells,
            *([_pm(r["best_val_bpb_mean"], r["best_val_bpb_ci95"])] if bpb else []),
            *([_p(c.p_holm) if c else "—"] if report.one_at_a_time else []),
            _num(r["tokens_per_sec"], ",.0f"), units.duration(r["wall_s"])]) + " |")
    seeds = sorted({len(p.runs) for p in report.points})
    spread = ("one seed per point, so no intervals" if seeds == [1] else
              f"mean ± half-width of the 95% t-interval over {'/'.join(map(str, seeds))} seeds")
    notes = [f"Sorted by best {name}; {spread}; FLOPs and tokens: what each run trained on; wall time per run."]
    return "\n".join([*([f"`{command}`", ""] if command else []), *(f"> {w}" for w in report.warnings),
                      *([""] if report.warnings else []), *lines, "", *notes, *_effects(report),
                      *_comparisons(report), *(f"Skipped {n}: {why}" for n, why in report.skipped)]) + "\n"


def text(value) -> str:
    """A config value in a table: budgets (3e13) as 3e+13, not 30000000000000.0."""
    return f"{value:.3g}" if isinstance(value, float) and abs(value) >= 1e6 else str(value)


def _effects(report) -> list[str]:
    if not report.effects:
        return []
    name = NAMES[report.metric]
    lines = ["", "### Main effects", "",
             f"Each swept value's best {name}, averaged over the points that have it (the other axes' values), "
             f"with the 95% t-interval over seeds of the per-seed averages.", "",
             f"| axis | value | best {name} | points averaged |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {grid.short_key(e.axis)} | {text(e.level)} | {_pm(e.mean, e.half)} | {e.cells} |"
              for e in report.effects]
    return lines


def _comparisons(report) -> list[str]:
    name = NAMES[report.metric]
    if not report.comparisons:
        why = ("one seed per point gives no spread to test against; use --seeds 3 or more"
               if max(len(p.runs) for p in report.points) < 2 else "nothing to compare")
        return ["", "### Comparisons", "", f"No tests: {why}.", ""]
    kinds = sorted({c.test.kind for c in report.comparisons})
    lines = ["", "### Comparisons", "",
             f"{len(report.comparisons)} comparison{'s' * (len(report.comparisons) > 1)} of best {name} (difference: "
             f"first minus second; below 0 the first is better). {' and '.join(_KINDS[k] for k in kinds)}. "
             f"p (Holm): corrected for making all {len(report.comparisons)} at once (bold: below 0.05, a difference "
             f"that holds with a family-wise error rate under 5%).", "",
             "| comparison | difference | 95% interval | test | t | df | p | p (Holm) |",
             "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |"]
    for c in report.comparisons:
        t = c.test
        lines.append(f"| {c.label} | {t.diff:+.4f} | {_interval(t.diff, t.half)} | {t.kind} | {t.t:.2f} | "
                     f"{t.df:.1f} | {t.p:.2g} | {_p(c.p_holm)} |")
    return [*lines, ""]


_KINDS = {"paired": "Paired t-test by seed where the points share seeds and draw the same batches (seed i: the "
                    "same data order, and the same initial draw for same-shaped points)",
          "Welch": "Welch's t-test where they do not"}


def _interval(diff: float, half: float) -> str:
    return "—" if math.isnan(half) else f"[{diff - half:+.4f}, {diff + half:+.4f}]"


def _pm(mean: float, half: float) -> str:
    if math.isnan(mean):
        return "—"
    return f"{mean:.4f}" if math.isnan(half) else f"{mean:.4f} ± {half:.4f}"


def _p(p: float | None) -> str:
    return "—" if p is None or math.isnan(p) else f"**{p:.2g}**" if p < 0.05 else f"{p:.2g}"


def _num(v: float, spec: str) -> str:
    return "—" if v is None or math.isnan(v) else format(v, spec)


def _si(v: float) -> str:
    if math.isnan(v):
        return "—"
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= 0.9995 * scale:  # 999.99G prints as 1T, not 1e+03G
            return f"{v / scale:.3g}{unit}"
    return f"{v:g}"

