"""Scaling laws from any runs trained to compute budgets (gptjax.ablate.scaling), as tables and a figure.

  gptjax sweep fit DIR [DIR ...] [--out DIR] [--metric val_loss|val_bpb]

Each run gives N (its parameter count, from config.yaml), D (the cumulative `tokens` of its last
metrics line), C (its cumulative `flops`) and its final val loss (or bits per byte). Runs belong to
the budget in their config (train.flops_budget), or, for runs without one, to a group of runs whose
C lie within 15% of each other.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from gptjax.ablate import report as reports
from gptjax.ablate import scaling
from gptjax.errors import UserError
from gptjax.train.tracking import read_metrics

SAME_BUDGET = 1.15    # runs without a configured budget whose FLOPs lie within this factor share one
EXTRAPOLATE = 10.0    # the prediction is for this many times the largest budget


@dataclasses.dataclass(frozen=True)
class Obs:
    run: str
    budget: float
    n: float
    d: float
    c: float
    loss: float


@dataclasses.dataclass
class Fit:
    metric: str
    runs: list[Obs]
    left_out: list[str]                  # runs not used, and why
    profiles: list[scaling.Profile]
    n_law: scaling.PowerLaw | str        # or why there is none
    d_law: scaling.PowerLaw | str
    parametric: scaling.Parametric | str
    kappa: float                         # median C / (N D): this model's FLOPs per parameter per token
    target: float                        # the budget of the prediction

    def prediction(self) -> dict[str, scaling.Estimate | str]:
        """N_opt, D_opt and loss at the target budget: approach 2's power laws and approach 3's fit."""
        out: dict[str, scaling.Estimate | str] = {}
        for key, law in (("approach 2: N_opt", self.n_law), ("approach 2: D_opt", self.d_law)):
            out[key] = law.at(self.target) if isinstance(law, scaling.PowerLaw) else law
        p = self.parametric
        if isinstance(p, str):
            return {**out, **dict.fromkeys(("approach 3: N_opt", "approach 3: D_opt", "approach 3: loss"), p)}
        reps = np.full((len(p.replicates), 3), np.nan)
        for i, theta in enumerate(p.replicates):
            if np.isfinite(theta).all():
                n, d = p.optimum(self.target, self.kappa, theta)
                reps[i] = n, d, p.loss(n, d, theta)
        n, d = p.optimum(self.target, self.kappa)
        for i, (key, value) in enumerate((("N_opt", n), ("D_opt", d), ("loss", float(p.loss(n, d))))):
            found = scaling.interval(np.log(reps[:, i]), math.log(value), "the fit")
            out[f"approach 3: {key}"] = found.scaled(math.exp)
        return out


def observe(run_dir: Path, metric: str) -> Obs | str:
    """A run's (N, D, C, loss), or why it cannot be used."""
    run = reports.read_run(run_dir)
    if run is None:
        evals = [r for r in read_metrics(run_dir) if "val_loss" in r]
        return f"{run_dir}: " + ("its val loss is not finite" if evals else "not evaluated yet")
    last = [r for r in read_metrics(run_dir) if "val_loss" in r][-1]
    loss = last.get(metric)
    if not isinstance(loss, (int, float)) or not math.isfinite(loss):
        return f"{run_dir}: its final {metric} is {'missing' if loss is None else loss}"
    budget = getattr(run.cfg.train, "flops_budget", None)
    return Obs(str(run_dir), float(budget) if budget else math.nan, float(run.cfg.model.n_params), float(run.tokens),
               float(run.flops), float(loss))


def by_budget(runs: list[Obs]) -> dict[float, list[Obs]]:
    """Runs per budget: the configured one, else groups of runs whose FLOPs lie within SAME_BUDGET."""
    groups: dict[float, list[Obs]] = {}
    for r in (r for r in runs if not math.isnan(r.budget)):
        groups.setdefault(r.budget, []).append(r)
    loose: list[list[Obs]] = []
    for r in sorted((r for r in runs if math.isnan(r.budget)), key=lambda r: r.c):
        if loose and r.c <= SAME_BUDGET * loose[-1][0].c:
            loose[-1].append(r)
        else:
            loose.append([r])
    for group in loose:
        groups[float(np.exp(np.mean(np.log([r.c for r in group]))))] = group
    return dict(sorted(groups.items()))


def fit(paths: list[Path], metric: str | None = None, resamples: int = scaling.BOOTSTRAP, seed: int = 0) -> Fit:
    dirs = reports.find_runs(paths)
    if metric is None:
        metric = reports.choose_metric([r for r in map(reports.read_run, dirs) if r is not None])[0] \
            if any(reports.read_run(d) for d in dirs) else "val_loss"
    found = [observe(d, metric) for d in dirs]
    runs = [o for o in found if isinstance(o, Obs)]
    left_out = [o for o in found if isinstance(o, str)]
    if not runs:
        raise UserError(f"no run to fit in {', '.join(map(str, paths))}: " + "; ".join(left_out[:3]))
    rng = np.random.default_rng(seed)
    profiles = [scaling.profile(b, [r.n for r in rs], [r.d for r in rs], [r.loss for r in rs], rng, resamples)
                for b, rs in by_budget(runs).items()]
    n, d, loss = (np.array([getattr(r, k) for r in runs]) for k in ("n", "d", "loss"))
    return Fit(metric, runs, left_out, profiles, scaling.power_law(profiles, 0), scaling.power_law(profiles, 1),
               scaling.parametric(n, d, loss, rng, resamples), float(np.median([r.c / (r.n * r.d) for r in runs])),
               EXTRAPOLATE * max(p.budget for p in profiles))


def main(argv: list[str]) -> int:
    import argparse

    from gptjax import errors

    parser = errors.ArgumentParser(prog="gptjax sweep fit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="sweep directories or run directories (folders of them work too)")
    parser.add_argument("--out", help="where scaling.md, .csv and .png go (default: the one directory given)")
    parser.add_argument("--metric", choices=("val_loss", "val_bpb"),
                        help="what to fit (default: val_loss, or val_bpb where the runs' tokenizers differ)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    args = parser.parse_args(argv)

    def make():
        from gptjax.ablate import scaling_report, sweep

        out = sweep.output_dir(args.paths, args.out, "the fit")
        found = fit([Path(p) for p in args.paths], args.metric)
        files = scaling_report.write(found, out, " ".join(["gptjax sweep fit", *argv]))
        print(scaling_report.markdown(found), end="")
        print(f"fit written to {out}: {', '.join(files)}", flush=True)
    return errors.run_cli(make, debug=args.debug)
