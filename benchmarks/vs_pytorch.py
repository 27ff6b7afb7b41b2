"""gptjax's train step against the PyTorch reference, interleaved on one machine.

    python benchmarks/vs_pytorch.py cpu_recipe|baby_gpt [--rounds R] [--steps N]

A shared or throttled machine drifts by tens of percent between minutes, so single runs
of each cannot be compared; this alternates the two (`python -m gptjax.bench PRESET
--only train` and `benchmarks/pytorch_reference.py`) for R rounds, each in a fresh
process, and prints every figure and one JSON summary line with the medians and the
speed-up (PyTorch ms / gptjax ms; above 1 means gptjax is faster).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PRESETS = {"cpu_recipe": "shakespeare_char_cpu", "baby_gpt": "shakespeare_char"}


def last_json(cmd: list[str]) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=HERE.parent).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shapes", choices=PRESETS)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    steps = str(args.steps)
    times = {"gptjax": [], "pytorch": []}
    for r in range(args.rounds):
        jax_row = last_json([sys.executable, "-m", "gptjax.bench", PRESETS[args.shapes], "--only", "train",
                             "--steps", steps])
        torch_row = last_json([sys.executable, str(HERE / "pytorch_reference.py"), args.shapes, "--steps", steps])
        times["gptjax"].append(jax_row["ms_per_step"])
        times["pytorch"].append(torch_row["ms_per_step"])
        print(f"round {r + 1}: gptjax {jax_row['ms_per_step']:.1f} ms ({jax_row['devices']} devices), "
              f"pytorch {torch_row['ms_per_step']:.1f} ms", flush=True)
    jax_ms, torch_ms = statistics.median(times["gptjax"]), statistics.median(times["pytorch"])
    tokens = jax_row["batch_size"] * jax_row["n_ctx"]
    print(json.dumps({"shapes": args.shapes, "rounds": args.rounds, "steps": args.steps,
                      "gptjax_ms": jax_ms, "pytorch_ms": torch_ms,
                      "gptjax_tokens_per_sec": round(tokens / jax_ms * 1e3),
                      "pytorch_tokens_per_sec": round(tokens / torch_ms * 1e3),
                      "speedup": round(torch_ms / jax_ms, 3)}))


if __name__ == "__main__":
    main()
