"""Comparing runs: one row per point (mean and 95% interval over seeds) in results.csv and results.md,
sorted by best val loss (bits per byte where the points' tokenizers differ); main effects per swept axis
and every comparison of interest with Holm's correction (gptjax.ablate.effects); curves.png (val loss
against tokens seen) and heatmap.png (over two swept axes).

Works on a sweep directory or on any run directories: runs whose configs differ only in
train.seed and run.* are seeds of one point, and the keys that differ between points are its columns.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from gptjax import config
from gptjax.ablate import effects, grid, stats, tables
from gptjax.errors import UserError
from gptjax.train import runs
from gptjax.train.tracking import read_metrics

NOT_THE_POINT = ("train.seed", "data.cache_dir")  # nor anything under run.*: they don't change what is learned
LN2 = math.log(2)


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
    tokens: int = 0                   # tokens trained on (metrics' cumulative `tokens`, else steps x batch)
    flops: float = math.nan           # training FLOPs (metrics' cumulative `flops`, else tokens x FLOPs/token)
    final_val_bpb: float = math.nan   # bits per byte, where the run logged val_bpb
    best_val_bpb: float = math.nan
    bpb_curve: list[tuple[int, float]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class PointResult:
    name: str
    values: dict                      # column key -> value
    runs: list[RunResult]

    def _values(self, attr: str) -> list[float]:
        return [v for r in self.runs if (v := getattr(r, attr)) is not None and not math.isnan(v)]

    def mean(self, attr: str) -> float:
        xs = self._values(attr)
        return float(np.mean(xs)) if xs else math.nan

    def std(self, attr: str) -> float:  # sample std (n - 1): the spread a second set of seeds would show
        xs = self._values(attr)
        return float(np.std(xs, ddof=1)) if len(xs) > 1 else math.nan

    def interval(self, attr: str) -> tuple[float, float]:
        """(mean, half-width of its 95% t-interval) over seeds."""
        return stats.t_interval(self._values(attr))


@dataclasses.dataclass
class Report:
    points: list[PointResult]          # best first
    columns: list[str]                 # the keys that tell points apart
    skipped: list[tuple[str, str]]     # (point, reason) for invalid or not yet trained points
    metric: str = "val_loss"           # what points are compared by: val_loss, or val_bpb across tokenizers
    comparisons: list[effects.Comparison] = dataclasses.field(default_factory=list)
    effects: list[effects.Effect] = dataclasses.field(default_factory=list)
    one_at_a_time: bool = False
    warnings: list[str] = dataclasses.field(default_factory=list)  # said above the table, and on stdout
    summary: str = ""
    files: list[str] = dataclasses.field(default_factory=list)  # what write() wrote, in order
    notices: list[str] = dataclasses.field(default_factory=list)  # what it left out, and why

    def written(self, out: Path) -> str:
        return f"report written to {out}: {', '.join(self.files)}"

    @property
    def key(self) -> str:
        """The per-run number compared: the best evaluation of the metric."""
        return f"best_{self.metric}"

    def value(self, run: RunResult) -> float:
        return getattr(run, self.key)


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
    evals = [r for r in rows if _finite(r.get("val_loss"))]
    if not evals:
        return None
    speeds = [r["tokens_per_sec"] for r in rows if r.get("tokens_per_sec")]
    wall = run_dir / grid.WALL_FILE
    tokens = lambda r: r["tokens"] if _finite(r.get("tokens")) else r["step"] * cfg.tokens_per_step  # noqa: E731
    seen = tokens(rows[-1])
    flops = rows[-1].get("flops")
    bpb = [(tokens(r), r["val_bpb"]) for r in evals if _finite(r.get("val_bpb"))]
    return RunResult(run_dir, cfg, steps=rows[-1]["step"], final_val_loss=evals[-1]["val_loss"],
                     best_val_loss=min(r["val_loss"] for r in evals),
                     tokens_per_sec=float(np.mean(speeds)) if speeds else None,
                     wall_s=json.loads(wall.read_text())["wall_s"] if wall.is_file() else None,
                     curve=[(tokens(r), r["val_loss"]) for r in evals], tokens=int(seen),
                     flops=float(flops) if _finite(flops) else seen * _flops_per_token(cfg),
                     final_val_bpb=bpb[-1][1] if bpb else math.nan, best_val_bpb=min(b for _, b in bpb) if bpb
                     else math.nan, bpb_curve=bpb)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _flops_per_token(cfg: config.Config) -> float:
    return cfg.model.flops_per_token() if cfg.model.n_vocab else math.nan


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
    return points, columns


def choose_metric(runs: list[RunResult]) -> tuple[str, list[str]]:
    """val_bpb where the runs' tokenizers differ (loss per token is not comparable across them), else val_loss;
    and what the report should say about it."""
    tokenizers = sorted({r.cfg.data.tokenizer for r in runs})
    if len(tokenizers) < 2:
        return "val_loss", []
    if all(math.isfinite(r.best_val_bpb) for r in runs):
        return "val_bpb", [f"Compared by val bits per byte, not val loss: the points' tokenizers differ "
                           f"({', '.join(tokenizers)}), and loss per token is not comparable across them."]
    return "val_loss", [f"Warning: the points' tokenizers differ ({', '.join(tokenizers)}) but not every run logged "
                        f"val_bpb, so they are compared by loss per token, which is not comparable across tokenizers."]


# ---------------------------------------------------------------------------
# Writing the report

def analyse(paths: list[Path]) -> tuple[Report, dict]:
    """Read the runs in `paths` into a Report (points, metric, statistics) and the sweep's plan, if any."""
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
    metric, said = choose_metric(runs)
    report = Report(points, columns, skipped, metric, one_at_a_time=plan.get("vary") == "one", warnings=said)
    axes = list(plan["axes"]) if plan.get("axes") else columns
    within = [grid.BUDGET] if grid.BUDGET in axes else []  # a budget is a block to compare within, not an effect
    points.sort(key=lambda p: (*(p.values[k] for k in within), math.isnan(p.mean(report.key)), p.mean(report.key)))
    report.effects = [] if report.one_at_a_time else effects.main_effects(points, axes, report.value, within)
    report.comparisons = effects.comparisons(points, axes, report.value, grid.short_key, report.one_at_a_time,
                                             within)
    seeds = min(len(p.runs) for p in points)
    if seeds < stats.FEW_SEEDS:
        report.warnings.append(f"Warning: {seeds} seed{'s' * (seeds != 1)} per point: "
                               + ("no interval or test can be had; " if seeds == 1 else
                                  "intervals are wide and tests weak; ") + f"use --seeds {stats.FEW_SEEDS} or more.")
    return report, plan


def write(paths: list[Path], out: Path) -> Report:
    """Read the runs in `paths` and write results.csv, results.md, curves.png and heatmap.png to `out`."""
    from gptjax.ablate import plots  # matplotlib only where a report is made

    report, plan = analyse(paths)
    report.summary = tables.markdown(report, plan.get("command", ""))
    out.mkdir(parents=True, exist_ok=True)
    tables.write_csv(report, out / "results.csv")
    (out / "results.md").write_text(report.summary)
    plots.curves(report.points, out / "curves.png", report.metric)
    report.files = ["results.csv", "results.md", "curves.png"]
    report.notices += report.warnings
    axes = list(plan["axes"]) if plan.get("axes") else report.columns
    if report.one_at_a_time:
        (out / "heatmap.png").unlink(missing_ok=True)
        report.notices.append("no heatmap.png: a one-at-a-time sweep varies one key per point, not a grid")
    elif plots.heatmap(report.points, axes, plan.get("points", []), out / "heatmap.png", report):
        report.files.append("heatmap.png")
    else:
        swept = f"{len(axes)} swept axis" + ("" if len(axes) == 1 else "es")
        report.notices.append(f"no heatmap.png: it plots two swept axes and these runs differ in {swept}")
    if grid.BUDGET in axes and not report.one_at_a_time:  # an isoFLOP sweep: its scaling laws too
        from gptjax.ablate import fit, scaling_report

        found = fit.fit([r.run_dir for p in report.points for r in p.runs], report.metric)
        report.files += scaling_report.write(found, out, plan.get("command", ""))
    return report


def _read_plan(paths: list[Path]) -> dict:
    path = paths[0] / grid.SWEEP_FILE
    return json.loads(path.read_text()) if len(paths) == 1 and path.is_file() else {}
