"""Many runs over the CPU cores split into devices, under load: does any all-reduce abort or stall?

    python benchmarks/split_stress.py [--runs 12] [--parallel 3] [--busy 2] [--terminate 5] [--sigterm 0.5]
                                      [--set key=value ...]

Each run is a fresh `train.py` (by default the CPU recipe, which train.py splits over the cores by
itself: its step is over sharding.SPLIT_MIN_STEP_FLOPS), made to dispatch as far ahead as it can:
no progress bar (evaluation batches go out at once), metrics read every 50 steps, an evaluation of
100 batches per split and a checkpoint every 10 steps. `--parallel` runs share the cores at a time,
beside `--busy` busy loops. XLA aborts an all-reduce that waits `--terminate` seconds (40 by
default in XLA, a day in gptjax) and warns after 1 s, so a starved rendezvous shows. A share of the runs
(`--sigterm`) get SIGTERM 0-5 s into training and are then run again, to resume, as a user would.

Prints one JSON line per process (exit code, aborted, stall warnings, whether the batch was split) and a
summary line.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPIN = "while True: pass"
AHEAD = ["run.progress=false", "train.eval_every=10", "train.log_every=50", "train.eval_batches=100"]


def one(run_dir: Path, args, term_after: float | None) -> dict:
    """One train.py process (SIGTERM after `term_after` seconds if given): what it said and how it ended."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_collective_call_terminate_timeout_seconds="
                        f"{args.terminate} --xla_cpu_collective_call_warn_stuck_timeout_seconds=1"}
    cmd = [sys.executable, str(ROOT / "train.py"), args.config, *AHEAD, f"train.steps={args.steps}", *args.set,
           f"run.out_dir={run_dir}"]
    began = time.monotonic()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err, text=True)
        if term_after is not None:  # mid-training: `term_after` seconds after its first metrics row
            while proc.poll() is None and not (run_dir / "metrics.jsonl").is_file():
                time.sleep(0.05)
            time.sleep(term_after)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        proc.wait()
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    return {"run": run_dir.name, "returncode": proc.returncode, "sigterm": term_after is not None,
            "aborted": "Termination timeout" in stderr, "stall_warnings": stderr.count("may be stuck"),
            "split": "CPU cores, the batch split" in stdout,
            "finished": "done: step" in stdout or "already trained" in stdout,
            "wall_s": round(time.monotonic() - began, 1),
            **({"stderr_tail": stderr[-1500:]} if proc.returncode not in (0, 128 + signal.SIGTERM) else {})}


def run_to_the_end(i: int, out: Path, args) -> list[dict]:
    rng = random.Random(i)
    term = rng.uniform(0, 5) if rng.random() < args.sigterm else None
    rows = [one(out / f"run{i}", args, term)]
    if term is not None and not rows[-1]["aborted"]:
        rows.append(one(out / f"run{i}", args, None))  # re-run the same command: it resumes
    for row in rows:
        print(json.dumps(row), flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="shakespeare_char_cpu")
    parser.add_argument("--runs", type=int, default=12)
    parser.add_argument("--steps", type=int, default=60, help="steps per run")
    parser.add_argument("--parallel", type=int, default=3, help="runs at a time")
    parser.add_argument("--busy", type=int, default=2, help="busy loops beside them")
    parser.add_argument("--terminate", type=int, default=5, help="XLA's all-reduce rendezvous timeout, seconds")
    parser.add_argument("--sigterm", type=float, default=0.5, help="share of runs stopped with SIGTERM, then resumed")
    parser.add_argument("--set", nargs="*", default=[], help="more key=value overrides for every run")
    args = parser.parse_args()
    loops = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(args.busy)]
    began = time.monotonic()
    try:
        with tempfile.TemporaryDirectory() as tmp, concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
            rows = [r for rs in pool.map(lambda i: run_to_the_end(i, Path(tmp), args), range(args.runs)) for r in rs]
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()
    ends = [rs for rs in rows if not rs["sigterm"]]
    print(json.dumps({"runs": args.runs, "processes": len(rows), "parallel": args.parallel, "busy": args.busy,
                      "terminate_s": args.terminate, "aborted": sum(r["aborted"] for r in rows),
                      "stall_warnings": sum(r["stall_warnings"] for r in rows),
                      "split": sum(r["split"] for r in rows), "finished": sum(r["finished"] for r in ends),
                      "sigterm_then_resumed": sum(r["sigterm"] for r in rows),
                      "wall_s": round(time.monotonic() - began),
                      "load_average": [round(x, 2) for x in os.getloadavg()]}))
    return 0 if not any(r["aborted"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
