"""Ablations in one command: train every point of a grid of config values, then compare them.

  gptjax sweep BASE_CONFIG model.n_head=2,4,8 model.n_layer=2,4,6 [section.key=value ...]
                         [--seeds N] [--one-at-a-time] [--set KEY=VALUE] [--separately] [--out SWEEP_DIR]
                         [--match params] [--budgets 3e13,1e14,...] [--aspect R --head-size K]
  gptjax sweep BASE --budgets 3e13,1e14,3e14 model.n_layer=2,3,4,6 --aspect 32 --head-size 16 --seeds 2
                         (isoFLOP profiles: every shape trained to every budget, then scaling laws fitted)
  gptjax sweep configs/ablations/heads_layers_cpu.yaml      (a sweep file: base, grid, set, ...)
  gptjax sweep report SWEEP_DIR | RUN_DIR ... [--out DIR]   (results.csv/.md, curves.png, heatmap.png)
  gptjax sweep fit SWEEP_DIR | RUN_DIR ... [--out DIR]      (scaling laws: scaling.md/.csv/.png)

A comma sweeps a key; any key can be swept. --budgets trains every point to each FLOP budget
(train.flops_budget: its own steps); --aspect/--head-size tie width and heads to depth.
Seed i of a point trains with train.seed + i, in SWEEP_DIR/POINT/seed=i: an ordinary run
directory (sample.py and train.py work on it). A point's seeds train together, one vmapped step
for all (gptjax.train.seeds), unless --separately.
Re-running the command skips finished runs and resumes interrupted ones.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
import time
from pathlib import Path

from gptjax import errors, units
from gptjax.ablate import grid
from gptjax.config import Config, warmup
from gptjax.errors import UserError
from gptjax.files import atomic_write


def main(argv: list[str]) -> int:
    if argv[:1] == ["report"]:
        return report_main(argv[1:])
    if argv[:1] == ["fit"]:
        from gptjax.ablate import fit

        return fit.main(argv[1:])
    parser = errors.ArgumentParser(prog="gptjax sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", help="base config (preset name or path) or sweep file (configs/ablations/*.yaml)")
    parser.add_argument("items", nargs="*", help="section.key=v1,v2,... sweeps a key; section.key=value sets it")
    parser.add_argument("--seeds", type=int, help="runs per point, seed i = train.seed + i (default 1)")
    parser.add_argument("--out", help="sweep directory (default runs/sweeps/NAME)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting for every point (needed with --one-at-a-time, where a lone value is a point)")
    parser.add_argument("--one-at-a-time", action="store_true",
                        help="the base config, then each swept value alone on it (a knob-by-knob ablation), "
                             "not every combination; the report tests each point against the base")
    parser.add_argument("--separately", action="store_true",
                        help="train a point's seeds one after another, not together in one vmapped step "
                             "(which needs N times the memory of one run)")
    parser.add_argument("--match", choices=grid.MATCHES, help="params: pick n_embd per point to keep the base's size")
    parser.add_argument("--budgets", metavar="C1,C2,...",
                        help="train every point to each FLOP budget (train.flops_budget; its steps follow from its "
                             "FLOPs per token); the report adds scaling laws (scaling.md, scaling.png)")
    parser.add_argument("--aspect", type=int, metavar="R",
                        help="depth family: n_embd = R x n_layer, so sweeping model.n_layer spans sizes (nanochat's "
                             "--depth); needs --head-size")
    parser.add_argument("--head-size", type=int, metavar="K", help="depth family: n_head = n_embd / K")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    args = parser.parse_intermixed_args(argv)
    command = " ".join(["gptjax sweep", *argv])
    vary = "one" if args.one_at_a_time else None
    return errors.run_cli(lambda: run(grid.make_spec(args.target, args.items, args.seeds, args.out, args.match, vary,
                                                     args.set, args.budgets, args.aspect, args.head_size),
                                      command, together=not args.separately), debug=args.debug)


def report_main(argv: list[str]) -> int:
    parser = errors.ArgumentParser(prog="gptjax sweep report",
                                     description="Compare runs: results.csv, results.md, curves.png, heatmap.png.")
    parser.add_argument("paths", nargs="+", help="a sweep directory, or run directories (folders of them work too)")
    parser.add_argument("--out", help="where to write the report (default: the one directory given)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    args = parser.parse_args(argv)

    def make():
        from gptjax.ablate import report

        out = output_dir(args.paths, args.out, "the report")
        show(report.write([Path(p) for p in args.paths], out), out)
    return errors.run_cli(make, debug=args.debug)


def output_dir(paths: list[str], out: str | None, what: str) -> Path:
    """Where a report on `paths` goes: --out, or the one directory given."""
    if out is None and len(paths) > 1:
        raise UserError(f"several directories given: say where {what} goes with --out DIR")
    return Path(out or paths[0])


def show(report, out: Path) -> None:
    """Notices first, so the report's table ends the output, then the files actually written."""
    for notice in report.notices:
        print(notice, flush=True)
    print(report.summary)
    print(report.written(out), flush=True)


# ---------------------------------------------------------------------------
# Running a sweep

def with_vocab(cfg: Config) -> Config:
    """cfg with model.n_vocab resolved from its data, and train.steps from its budget, as training will."""
    from gptjax import data

    return cfg.resolve_vocab(data.vocab_size(cfg.data)).resolve_steps()


def run(spec: grid.Spec, command: str = "", together: bool = True) -> None:
    """Train every run of the sweep that is not finished, then write the report (`together`: each point's
    seeds in one vmapped step)."""
    if together and spec.seeds > 1:
        from gptjax import sharding

        sharding.split_cores_for_runs()  # before JAX starts: the stacks may spread over the CPU cores
    sweep_dir = Path(spec.out)
    points = grid.plan(spec, with_vocab)
    for point in points:
        if point.error:
            print(f"skipped {point.name}: {point.error}", flush=True)
    jobs = [(p, i, grid.run_config(p, i, sweep_dir)) for p in points if p.cfg for i in range(spec.seeds)]
    if not jobs:
        raise UserError(f"every point of the grid is invalid (see above); nothing to train in {sweep_dir}")
    from gptjax.train import runs

    with runs.lock(sweep_dir, "sweep"):  # two sweeps into one --out would train and count the same runs twice
        write_plan(sweep_dir, spec, points, command)
        with compile_cache(sweep_dir / ".jax_cache"):
            failed = train_all(jobs, together)
    from gptjax.ablate import report  # after training: plotting libraries are not needed before

    show(report.write([sweep_dir], sweep_dir), sweep_dir)
    if failed:
        raise UserError(f"{len(failed)} run(s) failed: " + "; ".join(failed))


def write_plan(sweep_dir: Path, spec: grid.Spec, points: list[grid.Point], command: str) -> None:
    plan = {"base": spec.base, "axes": spec.axes, "fixed": spec.fixed, "seeds": spec.seeds, "match": spec.match,
            "vary": spec.vary, "aspect": spec.aspect, "head_size": spec.head_size, "command": command,
            "points": [{"name": p.name, "values": p.values, "error": p.error} for p in points]}
    sweep_dir.mkdir(parents=True, exist_ok=True)
    _write_json(sweep_dir / grid.SWEEP_FILE, plan)


def _write_json(path: Path, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=1) + "\n")


def steps_done(cfg: Config) -> int:
    """The latest checkpoint's step, read without building the model (0: none yet)."""
    from gptjax.train.checkpoint import Checkpoints

    run_dir = Path(cfg.run.out_dir)
    if not (run_dir / "checkpoints").is_dir():
        return 0
    ckpts = Checkpoints(run_dir, read_only=True)
    try:
        return ckpts.latest_step() or 0
    finally:
        ckpts.close()


def train_all(jobs: list[tuple[grid.Point, int, Config]], together: bool = True) -> list[str]:
    """Train the unfinished runs with a progress line each; returns the failures.

    With `together`, the unfinished seeds of a point train as one stack (gptjax.train.seeds).
    """
    started = [steps_done(cfg) for _, _, cfg in jobs]
    # FLOPs still to do per run: the ETA scales the time spent so far by them, since a 4-layer
    # point costs about four 1-layer ones.
    todo = [_flops(cfg, start) for (_, _, cfg), start in zip(jobs, started)]
    spent = done = 0.0
    failed = []
    for group in _groups(jobs, todo, together):
        (point, first, cfg), (_, last, last_cfg) = jobs[group[0]], jobs[group[-1]]
        one = len(group) == 1
        seeds = f"seed={first}" if one else f"seeds {first}-{last} together"
        where = f"{group[0] + 1}" if one else f"{group[0] + 1}-{group[-1] + 1}"
        numbers = f"{cfg.train.seed}" if one else f"{cfg.train.seed}-{last_cfg.train.seed}"
        head = f"[{where}/{len(jobs)}] {point.name} {seeds} (train.seed={numbers})"
        if not todo[group[0]]:
            print(f"{head}: finished, skipped", flush=True)
            continue
        left = sum(1 for f in todo[group[-1] + 1:] if f)
        eta = units.duration(spent / done * sum(todo[group[0]:])) if done else "after the first run"
        starts = sorted({started[k] for k in group}, reverse=True)
        resume = ("training" if starts == [0] else f"resuming from step {starts[0]}" if len(starts) == 1
                  else f"resuming from steps {', '.join(str(started[k]) for k in group)}")
        print(f"{head}: {resume}, {left} more to train after it, ETA {eta}", flush=True)
        seconds, error = timed_train([jobs[k][2] for k in group])
        if error:
            failed.append(f"{point.name} {seeds}: {error}")
            print(f"{head}: failed: {error}", file=sys.stderr, flush=True)
        spent, done = spent + seconds, done + sum(todo[k] for k in group)
    return failed


def _groups(jobs, todo: list[float], together: bool) -> list[list[int]]:
    """Job indices to train at once: a point's unfinished seeds (with `together`), else one each."""
    groups: list[list[int]] = []
    for k, (point, _, _) in enumerate(jobs):
        prev = groups[-1][-1] if groups else None
        if together and prev is not None and jobs[prev][0] is point and todo[prev] and todo[k]:
            groups[-1].append(k)
        else:
            groups.append([k])
    return groups


def _flops(cfg: Config, start: int) -> float:
    """The FLOPs a run has left from step `start` (its steps from its budget, if it has one)."""
    cfg = with_vocab(cfg)
    return max(0, warmup.flops_before(cfg, cfg.train.steps) - warmup.flops_before(cfg, start))


@contextlib.contextmanager
def compile_cache(path: Path):
    """JAX's persistent compilation cache in `path` while the sweep trains, unless the user set one.

    The seeds of a point compile the same steps: with the cache only the first seed pays for
    compiling (half the CPU time of a small run), and a re-run or resume compiles nothing.
    """
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    old = {name: getattr(jax.config, name) for name in names}
    if old["jax_compilation_cache_dir"]:
        yield
        return
    for name, value in zip(names, (str(path), 0.0, 0)):
        jax.config.update(name, value)
    compilation_cache.reset_cache()  # JAX decides once per process whether to use the cache: ask again
    try:
        yield
    finally:
        for name, value in old.items():
            jax.config.update(name, value)
        compilation_cache.reset_cache()


def timed_train(cfgs: list[Config]) -> tuple[float, str | None]:
    """Train runs in this process (several: a point's seeds, together); each run's share of the wall time
    is added to its grid.WALL_FILE, even if it stops early."""
    # In-process, not a subprocess per run: importing JAX and preparing the data once saves
    # seconds per run, which dominate a sweep of small models. Each run compiles new
    # executables, so the compile caches are cleared after it to keep memory flat over a long sweep.
    import jax

    from gptjax.train import seeds

    error, clocks = None, [WallClock(Path(cfg.run.out_dir), share=1 / len(cfgs)) for cfg in cfgs]
    try:
        with contextlib.ExitStack() as timing:
            for clock in clocks:
                timing.enter_context(clock)
            seeds.train(cfgs)
    except UserError as e:  # one bad run (a checkpoint from another shape, ...) should not stop the others
        error = str(e)
    finally:
        jax.clear_caches()
    return clocks[0].seconds / clocks[0].share, error


class WallClock:
    """Adds this session's wall time (times `share`, when runs train together) to the run's grid.WALL_FILE,
    rewritten every few seconds while it trains, so a session killed mid-run still counts (up to the last
    write)."""

    EVERY_S = 5.0

    def __init__(self, run_dir: Path, share: float = 1.0):
        self.run_dir, self.share, self.seconds, self.done = run_dir, share, 0.0, threading.Event()
        path = run_dir / grid.WALL_FILE
        self.before = json.loads(path.read_text()) if path.is_file() else {"wall_s": 0.0, "sessions": 0}

    def __enter__(self) -> WallClock:
        self.start = time.perf_counter()
        self.thread = threading.Thread(target=self._beat, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *_) -> None:
        self.done.set()
        self.thread.join()
        self._write()

    def _beat(self) -> None:
        while not self.done.wait(self.EVERY_S):
            self._write()

    def _write(self) -> None:
        self.seconds = (time.perf_counter() - self.start) * self.share
        if self.run_dir.is_dir():
            _write_json(self.run_dir / grid.WALL_FILE, {"wall_s": self.before["wall_s"] + self.seconds,
                                                         "sessions": self.before["sessions"] + 1})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
