"""gptjax's train step against the PyTorch reference, interleaved on one machine.

    python benchmarks/vs_pytorch.py cpu_recipe|baby_gpt [--rounds R] [--steps N] [--train-py]

A shared or throttled machine drifts by tens of percent between minutes, so single runs
of each cannot be compared; this alternates the two (`python -m gptjax.bench PRESET
--only train` and `benchmarks/pytorch_reference.py`) for R rounds, each in a fresh
process, and prints every figure and one JSON summary line with the medians and the
speed-up (PyTorch ms / gptjax ms; above 1 means gptjax is faster).

With --train-py gptjax's figure is a user's: a whole `train.py` run of N steps (its loop, data, logging
and checks around the step, on the devices it picks by default), the median `tokens_per_sec` of its
metrics.jsonl rows from step 10 on, as ms per step; PyTorch's stays the bare step.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PRESETS = {"cpu_recipe": "shakespeare_char_cpu", "baby_gpt": "shakespeare_char"}


def last_json(cmd: list[str]) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=HERE.parent).stdout
    return json.loads(out.strip().splitlines()[-1])


def train_py_row(preset: str, steps: int) -> dict:
    """A train.py run's median ms per step (from the tokens_per_sec of its metrics.jsonl rows from step 10 on),
    its tokens per step and the devices it chose."""
    with tempfile.TemporaryDirectory() as out:
        said = subprocess.run([sys.executable, "train.py", preset, f"train.steps={steps}", f"train.eval_every={steps}",
                               "train.eval_batches=1", "run.progress=false", f"run.out_dir={out}"], check=True,
                              cwd=HERE.parent, capture_output=True, text=True).stdout
        rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    tokens = rows[-1]["tokens"] // rows[-1]["step"]  # `tokens` counts every step's, from 0
    rate = statistics.median(r["tokens_per_sec"] for r in rows if r["step"] >= 10 and "tokens_per_sec" in r)
    split = re.search(r"training on (\d+) CPU cores", said)
    return {"ms_per_step": tokens / rate * 1e3, "tokens_per_step": tokens, "devices": int(split[1]) if split else 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shapes", choices=PRESETS)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--train-py", action="store_true", help="gptjax: a whole train.py run, as a user sees it")
    args = parser.parse_args()
    steps = str(args.steps)
    times = {"gptjax": [], "pytorch": []}
    for r in range(args.rounds):
        jax_row = (train_py_row(PRESETS[args.shapes], args.steps) if args.train_py else
                   last_json([sys.executable, "-m", "gptjax.bench", PRESETS[args.shapes], "--only", "train",
                              "--steps", steps]))
        torch_row = last_json([sys.executable, str(HERE / "pytorch_reference.py"), args.shapes, "--steps", steps])
        times["gptjax"].append(jax_row["ms_per_step"])
        times["pytorch"].append(torch_row["ms_per_step"])
        print(f"round {r + 1}: gptjax {jax_row['ms_per_step']:.1f} ms ({jax_row['devices']} devices), "
              f"pytorch {torch_row['ms_per_step']:.1f} ms", flush=True)
    jax_ms, torch_ms = statistics.median(times["gptjax"]), statistics.median(times["pytorch"])
    tokens = jax_row.get("tokens_per_step") or jax_row["batch_size"] * jax_row["n_ctx"]
    print(json.dumps({"shapes": args.shapes, "rounds": args.rounds, "steps": args.steps, "train_py": args.train_py,
                      "gptjax_ms": jax_ms, "pytorch_ms": torch_ms,
                      "gptjax_tokens_per_sec": round(tokens / jax_ms * 1e3),
                      "pytorch_tokens_per_sec": round(tokens / torch_ms * 1e3),
                      "speedup": round(torch_ms / jax_ms, 3)}))


if __name__ == "__main__":
    main()
