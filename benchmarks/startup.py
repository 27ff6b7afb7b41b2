"""What a user waits for, gptjax next to the PyTorch reference: sample.py's whole process and train.py's first step.

    python benchmarks/startup.py [--rounds R] [--max-new-tokens N]

On the CPU recipe's shapes, alternating the two frameworks in fresh processes for R rounds:
- sample: wall of `python sample.py RUN_DIR --max-new-tokens N` (imports, restore, compile,
  generate) against nanoGPT's sample loop on a torch.save'd checkpoint of the same shapes
  (`pytorch_reference.py --sample`), one sample each;
- first step: wall from `python train.py shakespeare_char_cpu train.eval_batches=20` until
  metrics.jsonl holds step 1 against the reference until its first step is printed, both after
  evaluating 20 batches of each split first, as nanoGPT's CPU recipe (eval_iters=20) does at iter 0.
gptjax runs twice per round: "first" with an empty compilation cache, "warm" reusing it.
Prints each figure and one JSON summary line of medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TORCH = [sys.executable, str(HERE / "pytorch_reference.py"), "cpu_recipe"]
TRAIN = [sys.executable, str(ROOT / "train.py"), "shakespeare_char_cpu"]


def wall(cmd: list[str], env: dict) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT, env=env)
    return time.perf_counter() - t


def until(cmd: list[str], env: dict, ready) -> float:
    """Seconds from starting `cmd` until ready() is true; the process is then stopped."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        while not ready(proc):
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd} exited with {proc.returncode} before its first step")
            time.sleep(0.05)
        return time.perf_counter() - t
    finally:
        proc.kill()
        proc.wait()


def logged_step_one(metrics: Path):
    def ready(_proc) -> bool:
        return metrics.is_file() and any(json.loads(line)["step"] >= 1 for line in metrics.read_text().splitlines()
                                         if line.endswith("}"))
    return ready


def torch_first_step(proc) -> bool:
    return "first_step" in proc.stdout.readline()


def one_round(tmp: Path, r: int, new_tokens: int) -> dict:
    env = dict(os.environ, GPTJAX_CACHE=str(tmp / f"cache{r}"))
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    run_dir, ckpt = tmp / f"run{r}", tmp / f"ckpt{r}.pt"
    subprocess.run([*TRAIN, "train.steps=1", "train.eval_batches=1", f"run.out_dir={run_dir}"], check=True,
                   capture_output=True, cwd=ROOT, env=dict(env, GPTJAX_CACHE=str(tmp / "setup-cache")))
    subprocess.run([*TORCH, "--steps", "1", "--save", str(ckpt)], check=True, capture_output=True, cwd=ROOT)
    row = {}
    for kind in ("first", "warm"):
        row[f"sample_{kind}"] = wall([sys.executable, str(ROOT / "sample.py"), str(run_dir), "--max-new-tokens",
                                      str(new_tokens)], env)
    row["sample_torch"] = wall([*TORCH, "--sample", str(ckpt), "--max-new-tokens", str(new_tokens)], env)
    for kind in ("first", "warm"):
        out = tmp / f"train{r}-{kind}"
        row[f"step_{kind}"] = until([*TRAIN, "train.log_every=1", "train.eval_batches=20", f"run.out_dir={out}"], env,
                                    logged_step_one(out / "metrics.jsonl"))
    row["step_torch"] = until([*TORCH, "--steps", "1", "--eval-batches", "20"], env, torch_first_step)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=500)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="gptjax-startup-") as tmp:
        for r in range(args.rounds):
            rows.append(one_round(Path(tmp), r, args.max_new_tokens))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v:.1f} s" for k, v in rows[-1].items()), flush=True)
    med = {k: round(statistics.median(row[k] for row in rows), 2) for k in rows[0]}
    ratios = {f"{what}_{kind}_vs_torch": round(med[f"{what}_torch"] / med[f"{what}_{kind}"], 3)
              for what in ("sample", "step") for kind in ("first", "warm")}
    print(json.dumps({"rounds": args.rounds, "new_tokens": args.max_new_tokens, **med, **ratios}))


if __name__ == "__main__":
    main()
