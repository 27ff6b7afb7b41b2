"""Your own tokenizer's speed: training an 8k byte-level BPE on a jsonl corpus, and preparing that corpus
with it through gptjax's pipeline against GPT-2's tiktoken path, on the same cores.

    python benchmarks/tokenizer_speed.py [--size-mb 100] [--vocab-size 8192] [--num-proc 0]

The corpus is prepare_data.py's (jsonl shards of the machine's licence and documentation texts,
repeated). Each preparation runs in a fresh process with a fresh cache, data.num_proc processes
(0: one per core). Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
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
from gptjax.data import dataset
t0 = time.perf_counter()
ds = dataset.prepare(DataConfig(source=sys.argv[1], tokenizer=sys.argv[2], cache_dir=sys.argv[3],
                                num_proc=int(sys.argv[4])))
print(json.dumps({"tokens": len(ds.train) + len(ds.val), "wall_s": time.perf_counter() - t0}))
"""


def prepare(corpus: Path, tokenizer: str, cache: Path, num_proc: int) -> dict:
    shutil.rmtree(cache, ignore_errors=True)
    out = subprocess.run([sys.executable, "-c", PREPARE, str(corpus), tokenizer, str(cache), str(num_proc)],
                         check=True, capture_output=True, text=True).stdout
    shutil.rmtree(cache, ignore_errors=True)
    row = json.loads(out.strip().splitlines()[-1])
    return {**row, "tokens_per_s": row["tokens"] / row["wall_s"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-mb", type=int, default=100)
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--num-proc", type=int, default=0)
    p.add_argument("--work", type=Path, default=Path("/tmp/gptjax-tokenizer-speed"))
    args = p.parse_args()
    corpus = args.work / f"corpus-{args.size_mb}mb"
    if not corpus.is_dir():
        build_corpus(corpus, args.size_mb)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "gptjax", "tokenizer", "train", str(corpus), "--vocab-size",
                    str(args.vocab_size), "--out", str(args.work / "bpe"), "--val-fraction", "0.001"], check=True)
    print(json.dumps({"what": f"train {args.vocab_size} BPE on {args.size_mb} MB (process included)",
                      "wall_s": round(time.perf_counter() - t0, 1)}), flush=True)
    for name, tok in (("gpt2 (tiktoken)", "gpt2"), (f"bpe {args.vocab_size} (tokenizers)",
                                                      str(args.work / "bpe" / "tokenizer.json"))):
        row = prepare(corpus, tok, args.work / "cache", args.num_proc)
        print(json.dumps({"what": f"prepare {args.size_mb} MB jsonl, {name}", **row}), flush=True)


if __name__ == "__main__":
    main()
