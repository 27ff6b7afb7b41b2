"""Comparing runs: one row per point (mean ± std over seeds) in results.csv and results.md, sorted by
best val loss; curves.png (val loss against tokens seen); heatmap.png (best val loss over two swept
axes); Welch's t-test of the best point against the runner-up, and of each point against the base
in a one-at-a-time sweep.

Works on a sweep directory or on any run directories: runs whose configs differ only in
train.seed and run.* are seeds of one point, and the keys that differ between points are its columns.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from gptjax import config, units
from gptjax.ablate import grid
from gptjax.ablate.stats import welch
from gptjax.errors import UserError
from gptjax.train import runs
from gptjax.train.tracking import read_metrics

NOT_THE_POINT = ("train.seed", "data.cache_dir")  # nor anything under run.*: they don't change what is learned
CSV_FIELDS = ("params", "flops_per_token", "tokens_seen", "steps", "seeds", "final_val_loss_mean",
              "final_val_loss_std", "best_val_loss_mean", "best_val_loss_std", "tokens_per_sec", "wall_s")


@dataclasses.dataclass
class RunResult:
    run_dir: Path
    cfg: config.Config
    steps: int
    final_val_loss: float
    best_val_loss: float
    tokens_per_sec: float | None      # mean over logged rows (the compile step is timed apart)
    wall_s: float | None              # from grid.WALL_FILE: sweeps write it, plain train.py runs have none
    curve: list[tuple[int, float]]    # (tokens seen, val loss) at each evaluation


@dataclasses.dataclass
class PointResult:
    name: str
    values: dict                      # column key -> value
    runs: list[RunResult]

    def _stat(self, attr: str, fn) -> float:
        xs = [getattr(r, attr) for r in self.runs if getattr(r, attr) is not None]
        return float(fn(xs)) if xs else math.nan

    def mean(self, attr: str) -> float:
        return self._stat(attr, np.mean)

    def std(self, attr: str) -> float:  # sample std (n - 1): the spread a second set of seeds would show
        return self._stat(attr, lambda xs: np.std(xs, ddof=1) if len(xs) > 1 else math.nan)

    def row(self) -> dict:
        cfg = self.runs[0].cfg
        return {"params": cfg.model.n_params, "flops_per_token": cfg.model.flops_per_token(),
                "tokens_seen": int(self.mean("steps")) * cfg.tokens_per_step, "steps": int(self.mean("steps")),
                "seeds": len(self.runs),
                **{f"{m}_{s}": getattr(self, s)(m)
                   for m in ("final_val_loss", "best_val_loss") for s in ("mean", "std")},
                "tokens_per_sec": self.mean("tokens_per_sec"), "wall_s": self.mean("wall_s")}


@dataclasses.dataclass
class Report:
    points: list[PointResult]          # best first
    columns: list[str]                 # the keys that tell points apart
    skipped: list[tuple[str, str]]     # (point, reason) for invalid or not yet trained points
    significance: str
    summary: str
    vs_base: dict[str, float] | None = None  # one-at-a-time sweeps: point -> Welch's p against the base
    files: list[str] = dataclasses.field(default_factory=list)  # what write() wrote, in order
    notices: list[str] = dataclasses.field(default_factory=list)  # what it left out, and why

    def written(self, out: Path) -> str:
        return f"report written to {out}: {', '.join(self.files)}"


# ---------------------------------------------------------------------------
# Reading runs

def find_runs(paths: list[Path]) -> list[Path]:
    """Run directories in `paths`: each one given, or every run directory below a folder."""
    found = []
    for path in paths:
        if not path.is_dir():
            raise UserError(f"{path} is not a directory; give a sweep directory or run directories")
        # A run directory has a tokenizer.json beside its config.yaml (wandb's files/config.yaml has not).
        found += [c.parent for c in sorted(path.rglob(runs.CONFIG_FILE)) if (c.parent / runs.TOKENIZER_FILE).is_file()]
    if not found:
        raise UserError(f"no run directories (config.yaml + tokenizer.json) in {', '.join(map(str, paths))}")
    return list(dict.fromkeys(found))


def read_run(run_dir: Path) -> RunResult | None:
    """A run's numbers from its config.yaml and metrics.jsonl; None before its first evaluation."""
    cfg = runs.load_config(run_dir)
    rows = read_metrics(run_dir)
    evals = [(r["step"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
    if not evals:
        return None
    speeds = [r["tokens_per_sec"] for r in rows if r.get("tokens_per_sec")]
    wall = run_dir / grid.WALL_FILE
    return RunResult(run_dir, cfg, steps=rows[-1]["step"], final_val_loss=evals[-1][1],
                     best_val_loss=min(v for _, v in evals), tokens_per_sec=float(np.mean(speeds)) if speeds else None,
                     wall_s=json.loads(wall.read_text())["wall_s"] if wall.is_file() else None,
                     curve=[(step * cfg.tokens_per_step, v) for step, v in evals])


def _identity(cfg: config.Config) -> dict:
    flat = {f"{s}.{k}": v for s, keys in cfg.to_dict().items() for k, v in keys.items()}
    return {k: v for k, v in flat.items() if k not in NOT_THE_POINT and not k.startswith("run.")}


def group(runs: list[RunResult], axes: list[str]) -> tuple[list[PointResult], list[str]]:
    """Runs -> points (runs equal but for seed and run.*), and the columns: axes, then other keys that vary."""
    by_point: dict[str, list[RunResult]] = {}
    for run in runs:
        by_point.setdefault(json.dumps(_identity(run.cfg), sort_keys=True), []).append(run)
    identities = [_identity(rs[0].cfg) for rs in by_point.values()]
    varying = [k for k in identities[0] if len({json.dumps(i[k]) for i in identities}) > 1]
    columns = list(dict.fromkeys([*axes, *varying]))
    points = []
    for rs in by_point.values():
        values = {k: grid.value_of(rs[0].cfg, k) for k in columns}
        points.append(PointResult(grid.point_name({k: values[k] for k in axes or columns}), values, rs))
    points.sort(key=lambda p: (math.isnan(p.mean("best_val_loss")), p.mean("best_val_loss")))
    return points, columns


# ---------------------------------------------------------------------------
# Writing the report

def write(paths: list[Path], out: Path) -> Report:
    """Read the runs in `paths` and write results.csv, results.md, curves.png and heatmap.png to `out`."""
    from gptjax.ablate import plots  # matplotlib only where a report is made

    plan = _read_plan(paths)
    runs_dirs = find_runs(paths)
    if plan:  # only this sweep's points: an earlier grid in the same directory may have left others
        runs_dirs = [d for d in runs_dirs if d.parent.name in {p["name"] for p in plan["points"] if not p["error"]}]
    runs = [r for r in map(read_run, runs_dirs) if r is not None]
    if not runs:
        raise UserError(f"none of the {len(runs_dirs)} runs has been evaluated yet; train them first")
    points, columns = group(runs, list(plan.get("axes", {})))
    for p in points if plan else []:  # a sweep's points by their directories (one-at-a-time: "base", "mlp=relu2")
        p.name = p.runs[0].run_dir.parent.name
    trained = {p.name for p in points}
    skipped = [(p["name"], p["error"] or "not trained yet") for p in plan.get("points", [])
               if p["error"] or p["name"] not in trained]
    one_at_a_time = plan.get("vary") == "one"
    report = Report(points, columns, skipped, significance(points), "", against_base(points) if one_at_a_time else None)
    report.summary = markdown(report, plan.get("command", ""))
    out.mkdir(parents=True, exist_ok=True)
    write_csv(report, out / "results.csv")
    (out / "results.md").write_text(report.summary)
    plots.curves(points, out / "curves.png")
    report.files = ["results.csv", "results.md", "curves.png"]
    axes = list(plan["axes"]) if plan.get("axes") else columns
    if one_at_a_time:
        (out / "heatmap.png").unlink(missing_ok=True)
        report.notices.append("no heatmap.png: a one-at-a-time sweep varies one key per point, not a grid")
    elif plots.heatmap(points, axes, plan.get("points", []), out / "heatmap.png"):
        report.files.append("heatmap.png")
    else:
        swept = f"{len(axes)} swept axis" + ("" if len(axes) == 1 else "es")
        report.notices.append(f"no heatmap.png: it plots two swept axes and these runs differ in {swept}")
    return report


def _read_plan(paths: list[Path]) -> dict:
    path = paths[0] / grid.SWEEP_FILE
    return json.loads(path.read_text()) if len(paths) == 1 and path.is_file() else {}


def significance(points: list[PointResult]) -> str:
    if len(points) < 2:
        return "One point: nothing to compare."
    best, second = points[0], points[1]
    a, b = ([r.best_val_loss for r in p.runs] for p in (best, second))
    if min(len(a), len(b)) < 2:
        return "One seed per point: no significance test (use --seeds 2 or more)."
    t, df, p = welch(a, b)
    verdict = "significant" if p < 0.05 else "not significant"
    return (f"Best point {best.name} vs the runner-up {second.name}: the difference is {verdict} at the 5% level "
            f"(Welch's t-test on best val loss: p = {p:.3g}, two-sided, t = {t:.2f}, df = {df:.1f}, "
            f"{len(a)} and {len(b)} seeds).")


def against_base(points: list[PointResult]) -> dict[str, float]:
    """Each point's two-sided p against the base point (Welch's t-test on best val loss), where both have 2+ seeds."""
    base = next((p for p in points if p.name == "base"), None)
    if base is None or len(base.runs) < 2:
        return {}
    ref = [r.best_val_loss for r in base.runs]
    return {p.name: welch([r.best_val_loss for r in p.runs], ref)[2] for p in points
            if p is not base and len(p.runs) >= 2}


def write_csv(report: Report, path: Path) -> None:
    extra = ["p_vs_base"] if report.vs_base is not None else []
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["point", *report.columns, *CSV_FIELDS, *extra])
        for p in report.points:
            row = p.row()
            writer.writerow([p.name, *(p.values[k] for k in report.columns), *(_csv(row[k]) for k in CSV_FIELDS),
                             *([report.vs_base.get(p.name, "")] if extra else [])])


def _csv(v):
    return "" if isinstance(v, float) and math.isnan(v) else v


def markdown(report: Report, command: str) -> str:
    vs = report.vs_base
    head = [*(["point"] if vs is not None else []), *(grid.short_key(k) for k in report.columns), "params",
            "FLOPs/token", "tokens seen", "final val loss", "best val loss", *(["p vs base"] if vs is not None else []),
            "tokens/s", "wall time"]
    lines = ["| " + " | ".join(head) + " |", "|" + " ---: |" * len(head)]
    for i, p in enumerate(report.points):
        r = p.row()
        best = _pm(r["best_val_loss_mean"], r["best_val_loss_std"])
        cells = [*([p.name] if vs is not None else []), *(str(p.values[k]) for k in report.columns),
                 f"{r['params']:,}", units.count(r["flops_per_token"]), units.count(r["tokens_seen"]),
                 _pm(r["final_val_loss_mean"], r["final_val_loss_std"]), f"**{best}**" if i == 0 else best,
                 *([_p(vs.get(p.name))] if vs is not None else []), _num(r["tokens_per_sec"], ",.0f"),
                 units.duration(r["wall_s"])]
        lines.append("| " + " | ".join(cells) + " |")
    seeds = sorted({len(p.runs) for p in report.points})
    spread = "one seed per point" if seeds == [1] else f"mean ± std over {'/'.join(map(str, seeds))} seeds"
    against = ([] if vs is None else ["p vs base: Welch's t-test of the point's best val loss against the base's, "
                                      "two-sided (bold: below 0.05)."])
    notes = [f"Sorted by best val loss; {spread}; wall time per run.", *against,
             report.significance, *(f"Skipped {name}: {why}" for name, why in report.skipped)]
    return "\n".join(([f"`{command}`", ""] if command else []) + lines + [""] + notes) + "\n"


def _pm(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "—"
    return f"{mean:.4f}" if math.isnan(std) else f"{mean:.4f} ± {std:.4f}"


def _p(p: float | None) -> str:
    return "—" if p is None else f"**{p:.2g}**" if p < 0.05 else f"{p:.2g}"


def _num(v: float, spec: str) -> str:
    return "—" if v is None or math.isnan(v) else format(v, spec)
