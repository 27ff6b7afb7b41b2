"""nanoGPT's CPU recipe trained for real, in PyTorch: the wall time a modern gptjax preset must beat.

    python benchmarks/nanogpt_recipe.py [--steps 2000] [--eval-every 250] [--eval-iters 20] [--seed 1337]
                                        [--target LOSS]

nanoGPT's README trains this on a CPU with `config/train_shakespeare_char.py --device=cpu
--compile=False --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4
--n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0` and reaches a
val loss of about 1.88. This is that run on gptjax's embedded Shakespeare with nanoGPT's
choices: characters as sorted ids, the first 90% to train and the rest to validate, random
windows, warm-up 100 steps to lr 1e-3 then cosine to 1e-4, AdamW (0.9, 0.99), weight decay
0.1 on matrices, clipping at 1, and an estimate over --eval-iters random batches of each
split every --eval-every steps. The model and step are benchmarks/pytorch_reference.py's.
Prints one JSON line per evaluation (wall seconds since the process started, imports
included) and a final line with the whole run's wall time and a steadier val loss over
100 batches. With --target the run stops at its first evaluation whose val loss is at or below
it, as a time-to-target run (benchmarks/speedrun.py) does, and its last line says where.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

STARTED = time.monotonic()

import torch  # noqa: E402  (after the clock starts: the import is part of a user's wait)
from pytorch_reference import GPT, SHAPES, adamw, train_step  # noqa: E402

# gptjax's embedded copy, read as a file: importing gptjax would bill JAX's import to PyTorch.
SHAKESPEARE = Path(__file__).resolve().parent.parent / "gptjax" / "assets" / "tinyshakespeare.txt"


def nanogpt_init(model, n_layer: int) -> None:
    """nanoGPT's initialisation: N(0, 0.02) weights, zero biases, residual projections 0.02/sqrt(2L)."""
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            torch.nn.init.zeros_(p)
        elif p.dim() >= 2:
            std = 0.02 / math.sqrt(2 * n_layer) if name.endswith(("proj.weight", "down.weight")) else 0.02
            torch.nn.init.normal_(p, 0.0, std)


def lr_at(step: int, steps: int, warmup: int = 100, lr: float = 1e-3, min_lr: float = 1e-4) -> float:
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (lr - min_lr)


@torch.no_grad()
def estimate(model, splits: dict, batches: int, s: dict, gen: torch.Generator) -> dict:
    model.eval()
    out = {name: sum(model(*window(ids, s, gen)).item() for _ in range(batches)) / batches
           for name, ids in splits.items()}
    model.train()
    return out


def window(ids: torch.Tensor, s: dict, gen: torch.Generator):
    starts = torch.randint(len(ids) - s["n_ctx"], (s["batch"],), generator=gen)
    x = torch.stack([ids[i:i + s["n_ctx"]] for i in starts])
    return x, torch.stack([ids[i + 1:i + 1 + s["n_ctx"]] for i in starts])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--eval-iters", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--target", type=float, default=0.0, help="stop at the first val loss <= this; 0: off")
    args = parser.parse_args()
    s, text = SHAPES["cpu_recipe"], SHAKESPEARE.read_text()
    lookup = {c: i for i, c in enumerate(sorted(set(text)))}
    ids = torch.tensor([lookup[c] for c in text], dtype=torch.long)
    cut = int(0.9 * len(ids))
    splits = {"train": ids[:cut], "val": ids[cut:]}
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    model = GPT(s["n_layer"], s["n_head"], s["n_embd"], s["n_ctx"], s["bias"], s["dropout"])
    nanogpt_init(model, s["n_layer"])
    opt = adamw(model)
    for step in range(args.steps + 1):
        if step % args.eval_every == 0 or step == args.steps:
            losses = estimate(model, splits, args.eval_iters, s, gen)
            print(json.dumps({"step": step, **losses, "wall_s": round(time.monotonic() - STARTED, 1)}), flush=True)
            if args.target and (losses["val"] <= args.target or step == args.steps):
                reached = losses["val"] <= args.target  # else the whole run was waited for in vain
                print(json.dumps({"measurement": "nanogpt_cpu_recipe_to_target", "target": args.target,
                                  "reached_step": step if reached else None, "val_loss": round(losses["val"], 4),
                                  "wall_s": round(time.monotonic() - STARTED, 1)}))
                return
        if step == args.steps:
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps)
        train_step(model, opt, *window(splits["train"], s, gen))
    wall = time.monotonic() - STARTED
    steady = estimate(model, {"val": splits["val"]}, 100, s, gen)["val"]
    print(json.dumps({"measurement": "nanogpt_cpu_recipe", "steps": args.steps, "wall_s": round(wall, 1),
                      "val_loss_100_batches": round(steady, 4), "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
