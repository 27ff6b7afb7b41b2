"""Your own tokenizer's speed, side by side in one command: training an 8k byte-level BPE on 100 MB, and
preparing a 1 GB jsonl corpus with it through gptjax's pipeline against GPT-2's tiktoken path, same cores.

    python benchmarks/tokenizer_speed.py [--train-mb 100] [--prepare-mb 1024] [--vocab-size 8192] [--repeat 4]

The corpora are prepare_data.py's (jsonl shards of the machine's licence and documentation texts, cycled),
built under --work once. The tokenizer is trained by `gptjax tokenizer train` in a fresh process (start-up
included). Each encoder then runs alone on 20 MB in one process, and each preparation in a fresh process
with a fresh cache and data.num_proc processes (0: one per core), GPT-2 and the BPE in --repeat rounds
(which goes first alternates). Prints one JSON line per measurement (with the load average), then the
summary: tokens/s of each and their ratio round by round (target >= 1.0x), and the training time (< 60 s).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prepare_data import build_corpus  # noqa: E402

PREPARE = """
import json, sys, time
from gptjax.config import DataConfig
from gptjax.data import dataset, tokenizer
t0 = time.perf_counter()
cfg = DataConfig(source=sys.argv[1], tokenizer=sys.argv[2], cache_dir=sys.argv[3], num_proc=int(sys.argv[4]))
ds = dataset.prepare(cfg)
wall = time.perf_counter() - t0
tok = tokenizer.GPT2Tokenizer() if cfg.tokenizer == "gpt2" else tokenizer.load_path(cfg.tokenizer)
print(json.dumps({"tokens": len(ds.train) + len(ds.val), "wall_s": wall, "engine": getattr(tok, "engine", "tiktoken")}))
"""


def corpus(work: Path, size_mb: int) -> Path:
    folder = work / f"corpus-{size_mb}mb"
    if not folder.is_dir():
        build_corpus(folder, size_mb)
    return folder


def load() -> float:
    return round(os.getloadavg()[0], 2)


def train(corpus_dir: Path, out: Path, vocab_size: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    before, t0 = load(), time.perf_counter()
    subprocess.run([sys.executable, "-m", "gptjax", "tokenizer", "train", str(corpus_dir), "--vocab-size",
                    str(vocab_size), "--out", str(out), "--val-fraction", "0.001"], check=True)
    return {"wall_s": round(time.perf_counter() - t0, 1), "load_before": before, "load_after": load()}


def prepare(corpus_dir: Path, tokenizer: str, cache: Path, num_proc: int) -> dict:
    shutil.rmtree(cache, ignore_errors=True)
    before = load()
    out = subprocess.run([sys.executable, "-c", PREPARE, str(corpus_dir), tokenizer, str(cache), str(num_proc)],
                         check=True, capture_output=True, text=True).stdout
    shutil.rmtree(cache, ignore_errors=True)
    row = json.loads(out.strip().splitlines()[-1])
    mb = sum(f.stat().st_size for f in corpus_dir.iterdir()) / 2**20
    return {**row, "wall_s": round(row["wall_s"], 1), "tokens_per_s": round(row["tokens"] / row["wall_s"]),
            "mb_per_s": round(mb / row["wall_s"], 2), "load_before": before, "load_after": load()}


ENGINES = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from prepare_data import stock_gpt2_encoding
from gptjax.data import tokenizer
texts = [json.loads(line)["text"] for path in sorted(Path(sys.argv[1]).glob("*.jsonl")) for line in open(path)]
texts = texts[:next(i for i, n in enumerate(__import__("itertools").accumulate(map(len, texts))) if n > 20e6)]
bpe = tokenizer.load_path(sys.argv[2])
engines = {"gpt2, tiktoken's r50k pattern": stock_gpt2_encoding(), "gpt2, GPT2_SPLIT": tokenizer.gpt2_encoding(),
           "bpe, tiktoken + GPT2_SPLIT": bpe.fast, "bpe, tokenizers": bpe.tok}
for name, enc in engines.items():
    best = float("inf")
    for _ in range(1 if name.endswith("tokenizers") else 3):
        t0 = time.perf_counter()
        if name.endswith("tokenizers"):
            n = sum(len(e.ids) for e in enc.encode_batch_fast(texts, add_special_tokens=False))
        else:
            n = sum(len(enc.encode_to_numpy(t, allowed_special=set(), disallowed_special=())) for t in texts)
        best = min(best, time.perf_counter() - t0)
    print(json.dumps({"engine": name, "chars": sum(map(len, texts)), "tokens": n, "wall_s": round(best, 3)}))
"""


def engines(corpus_dir: Path, bpe: Path) -> list[dict]:
    """Each encoder alone on 20 MB of the corpus, in one process (the best of 3; `tokenizers` runs once, on
    every core): what the pipeline's workers spend their time on."""
    out = subprocess.run([sys.executable, "-c", ENGINES, str(corpus_dir), str(bpe / "tokenizer.json"),
                          str(Path(__file__).resolve().parent)], check=True, capture_output=True, text=True).stdout
    rows = [json.loads(line) for line in out.strip().splitlines()]
    return [{**r, "mb_per_s": round(r["chars"] / r["wall_s"] / 2**20, 2),
             "tokens_per_s": round(r["tokens"] / r["wall_s"])} for r in rows]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-mb", type=int, default=100, help="corpus the tokenizer is trained on")
    p.add_argument("--prepare-mb", type=int, default=1024, help="corpus both tokenizers prepare")
    p.add_argument("--size-mb", type=int, help="one corpus of this size for both (the 2026-12-06 measurement)")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--num-proc", type=int, default=0)
    p.add_argument("--repeat", type=int, default=4, help="preparation rounds, GPT-2 and the BPE alternating")
    p.add_argument("--work", type=Path, default=Path("/tmp/gptjax-tokenizer-speed"))
    args = p.parse_args()
    if args.size_mb:
        args.train_mb = args.prepare_mb = args.size_mb
    small, big, bpe = corpus(args.work, args.train_mb), corpus(args.work, args.prepare_mb), args.work / "bpe"
    print(json.dumps({"cpus": os.cpu_count(), "load": load()}), flush=True)
    trained = train(small, bpe, args.vocab_size)
    print(json.dumps({"what": f"train {args.vocab_size} BPE on {args.train_mb} MB (process included)", **trained}),
          flush=True)
    for row in engines(small, bpe):
        print(json.dumps({"what": "encode 20 MB in one process", **row, "load": load()}), flush=True)
    runs = {"gpt2": [], "bpe": []}
    for i in range(args.repeat):  # the order alternates, so neither side always meets the cold page cache
        for name, tok in (("gpt2", "gpt2"), ("bpe", str(bpe / "tokenizer.json")))[::1 if i % 2 == 0 else -1]:
            row = prepare(big, tok, args.work / "cache", args.num_proc)
            runs[name].append(row)
            print(json.dumps({"what": f"prepare {args.prepare_mb} MB jsonl, {name}", **row}), flush=True)
    mean = {name: sum(r["tokens_per_s"] for r in rows) / len(rows) for name, rows in runs.items()}
    ratios = [b["tokens_per_s"] / g["tokens_per_s"] for g, b in zip(runs["gpt2"], runs["bpe"])]
    print(f"\ntokenizer training, {args.vocab_size} BPE on {args.train_mb} MB: {trained['wall_s']} s "
          f"(target < 60 s: {'met' if trained['wall_s'] < 60 else 'NOT met'})")
    engine = runs["bpe"][0]["engine"]
    for name, label in (("gpt2", "GPT-2 (tiktoken)"), ("bpe", f"{args.vocab_size} BPE ({engine})")):
        rates = ", ".join(f"{r['tokens_per_s'] / 1e6:.2f}" for r in runs[name])
        print(f"prepare {args.prepare_mb} MB, {label:<22} {runs[name][0]['tokens']:>12,} tokens, "
              f"mean {mean[name] / 1e6:.2f}M tokens/s (rounds: {rates}M)")
    print(f"BPE / GPT-2 tokens/s: {mean['bpe'] / mean['gpt2']:.3f}x of the means (target >= 1.0x: "
          f"{'met' if mean['bpe'] >= mean['gpt2'] else 'NOT met'}); round by round "
          f"{', '.join(f'{r:.3f}x' for r in ratios)}")


if __name__ == "__main__":
    main()
