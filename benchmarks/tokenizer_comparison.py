"""Char-level vs BPE 512/2048/8192 on the built-in Shakespeare at one equal compute budget, in bits per byte.

    python benchmarks/tokenizer_comparison.py --out /tmp/tokcmp [--flops 3e12] [--seeds 2]

Each tokenizer trains the same model shape (the CPU preset; only n_vocab follows the tokenizer) for
the steps that spend the FLOP budget (ModelConfig.flops_per_token x tokens per step), N seeds at once.
Every run is then scored on the same text, the play's last 8% (inside every run's validation split
and never seen by the BPEs, which learn from the first 90%): summed next-token loss over
non-overlapping n_ctx windows, in bits, divided by the UTF-8 bytes those tokens stand for.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import optax

from gptjax import api, config
from gptjax.data import tokenizer as tokenizers

PRESET = "shakespeare_char_cpu"
VOCABS = (512, 2048, 8192)
EVAL_TAIL = 0.08


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)


def steps_for(budget: float, tokenizer: str, cfg) -> int:
    n_vocab = tokenizers.load_path(tokenizer).vocab_size if tokenizers.is_path(tokenizer) else 65
    model = dataclasses.replace(cfg.model, n_vocab=n_vocab)
    return max(1, round(budget / (model.flops_per_token() * cfg.train.batch_size * cfg.model.n_ctx)))


def bits_per_byte(run_dir: Path, text: str) -> tuple[float, float]:
    """Bits per byte of `text` under the run's model, and its tokenizer's bytes per token there."""
    r = api.load_run(run_dir)
    tok, n_ctx = r.tokenizer, r.cfg.model.n_ctx
    ids = np.asarray(tok.encode(text), dtype=np.int32)
    n = (len(ids) - 1) // n_ctx
    x = ids[:n * n_ctx].reshape(n, n_ctx)
    y = ids[1:n * n_ctx + 1].reshape(n, n_ctx)
    model = r.model()
    nats = 0.0
    for i in range(0, n, 64):
        logits = model(jnp.asarray(x[i:i + 64]))[..., :tok.vocab_size]
        nats += float(optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(y[i:i + 64])).sum())
    n_bytes = int(tokenizers.token_bytes(tok)[y].sum())  # the byte table evaluation's val_bpb uses
    return nats / math.log(2) / n_bytes, n_bytes / y.size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--flops", type=float, default=3e12, help="training FLOPs per run (6N+12LTD per token)")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--sample-bytes", type=int, default=300)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    gptjax = [sys.executable, "-m", "gptjax"]
    names = {"char": "char"}
    for v in VOCABS:
        path = args.out / f"bpe-{v}" / "tokenizer.json"
        if not path.is_file():
            run([*gptjax, "tokenizer", "train", "shakespeare", "--vocab-size", str(v), "--out", str(path.parent)])
        names[f"bpe-{v}"] = str(path)
    cfg = config.load(PRESET, [])
    play = (tokenizers.ASSETS / "tinyshakespeare.txt").read_text(encoding="utf-8")
    tail = play[int(len(play) * (1 - EVAL_TAIL)):]
    results = {}
    for name, tok in names.items():
        steps = steps_for(args.flops, tok, cfg)
        out = args.out / "runs" / name
        run([*gptjax, "train", PRESET, f"data.tokenizer={tok}", f"train.steps={steps}", "train.eval_every=100000",
             "train.eval_batches=10", "run.progress=false",
             f"train.warmup_steps={min(100, steps // 10)}", f"run.out_dir={out}", "--seeds", str(args.seeds)])
        seeds = []
        for s in range(args.seeds):
            bpb, bytes_per_token = bits_per_byte(out / f"seed={s}", tail)
            r = api.load_run(out / f"seed={s}")
            text = api.sample(r, max_new_tokens=max(1, int(args.sample_bytes / bytes_per_token)), seed=0)[0]
            seeds.append({"bpb": bpb, "sample": text})
        results[name] = {"steps": steps, "bytes_per_token": bytes_per_token, "seeds": seeds}
        print(json.dumps({name: [round(s["bpb"], 4) for s in seeds], "steps": steps}), flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\n| tokenizer | steps | bytes/token | bits per byte ({args.seeds} seeds) | mean |\n|---|---|---|---|---|")
    for name, r in results.items():
        bpbs = [s["bpb"] for s in r["seeds"]]
        print(f"| {name} | {r['steps']} | {r['bytes_per_token']:.2f} | {', '.join(f'{b:.3f}' for b in bpbs)} | "
              f"{np.mean(bpbs):.3f} |")
    for name, r in results.items():
        print(f"\n{name}, seed 0:\n{r['seeds'][0]['sample']}")


if __name__ == "__main__":
    main()
