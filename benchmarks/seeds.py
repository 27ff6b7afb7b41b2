"""Seeds together against seeds one by one: the wall time of an N-seed point, three ways.

    python benchmarks/seeds.py [--seeds 4] [--steps 500] [--ways separate,sweep,together] [CONFIG] [key=value ...]

Each in fresh processes with an empty compilation cache, on the same config (default: the CPU
recipe, shakespeare_char_cpu, cut to --steps steps and decayed over them):
  separate   N x `python train.py CONFIG train.seed=S+i`: what a user would otherwise run
  sweep      `gptjax sweep CONFIG --seeds N --separately`: the seeds one after another in one
             process, sharing imports, data and compiled programs through the compilation cache
  together   `python train.py CONFIG --seeds N`: one vmapped step for all N seeds
Prints each wall time and one JSON line with the speed-ups of `together` over the other two, and
checks that each seed ended at the same val loss all three ways (to 1e-4).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def final_val(run_dir: Path) -> float:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["val_loss"] for r in rows if "val_loss" in r][-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default="shakespeare_char_cpu")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--ways", default="separate,sweep,together", help="which of the three to run")
    args = parser.parse_args()
    settings = [f"train.steps={args.steps}", f"train.lr_decay_steps={args.steps}", "run.progress=false",
                *args.overrides]
    with tempfile.TemporaryDirectory(prefix="gptjax-seeds-") as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "GPTJAX_CACHE": str(tmp / "cache"), "PYTHONUNBUFFERED": "1"}
        # Data prepared once, outside the timings: every way reads the same cached token files.
        timed([sys.executable, "train.py", args.config, *settings, "train.steps=1", "train.eval_batches=1",
                f"run.out_dir={tmp / 'warm'}"], env)
        walls, vals = {}, {}
        for way in args.ways.split(","):
            env["JAX_COMPILATION_CACHE_DIR"] = str(tmp / f"jax-{way}")  # empty for each way
            out = tmp / way
            if way == "separate":
                walls[way] = sum(timed([sys.executable, "train.py", args.config, *settings,
                                        f"train.seed={1337 + i}", f"run.out_dir={out / f'seed={i}'}"], env)
                                 for i in range(args.seeds))
            elif way == "sweep":
                walls[way] = timed([sys.executable, "-m", "gptjax", "sweep", args.config, *settings,
                                    "--seeds", str(args.seeds), "--separately", "--out", str(out)], env)
                out = out / next(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))
            else:
                walls[way] = timed([sys.executable, "train.py", args.config, *settings, "train.seed=1337",
                                    f"run.out_dir={out}", "--seeds", str(args.seeds)], env)
            vals[way] = [final_val(out / f"seed={i}") for i in range(args.seeds)]
            print(f"{way}: {walls[way]:.1f} s, final val loss {' '.join(f'{v:.4f}' for v in vals[way])}", flush=True)
    same = all(abs(a - b) < 1e-4 for way in vals for a, b in zip(vals[way], next(iter(vals.values()))))
    print(json.dumps({"config": args.config, "steps": args.steps, "seeds": args.seeds,
                      **{f"{k}_s": round(v, 1) for k, v in walls.items()},
                      **{f"speedup_vs_{k}": round(v / walls["together"], 2) for k, v in walls.items()
                         if k != "together" and "together" in walls},
                      "same_val_loss": same, "load_avg": round(os.getloadavg()[0], 1)}))


if __name__ == "__main__":
    main()
