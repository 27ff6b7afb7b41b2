"""Data preparation at scale: gptjax against nanoGPT's prepare approach on a local corpus of system texts.

Builds a corpus of jsonl shards (default ~1 GB) under /tmp from the licence and documentation texts
on the machine, repeated, then times each way of tokenizing it with GPT-2 BPE in a fresh process,
sampling the whole process tree's resident memory:

  gptjax     data.prepare with data.num_proc = all cores (a process pool fed in chunks)
  nanogpt    nanoGPT's data/openwebtext/prepare.py approach, reimplemented: datasets.load_dataset,
             train_test_split, datasets.map(num_proc) with tiktoken encode_ordinary, np.memmap write
  single     data.prepare with data.num_proc=1

    python benchmarks/prepare_data.py [--size-mb 1024] [--runs gptjax,nanogpt,single] [--repeat N] [--keep]

Prints one JSON line per run: tokens, wall_s, tokens_per_s, peak_rss_mb (the sum over the process
and its children, so pages a forked child shares with its parent count twice).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TEXTS = [Path("/usr/share/common-licenses"), Path("/usr/share/doc")]
SHARD_MB = 64


def system_texts() -> list[str]:
    docs = []
    for folder in TEXTS:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.is_symlink() and path.suffix not in (".gz", ".png", ".jpg", ".html"):
                try:
                    text = path.read_text(encoding="utf-8")
                except (UnicodeDecodeError, OSError):
                    continue
                if text.strip():
                    docs.append(text)
    return docs


def build_corpus(folder: Path, size_mb: int) -> None:
    """jsonl shards of the system texts, repeated until the corpus holds `size_mb` MB."""
    folder.mkdir(parents=True)
    docs, written, shard = system_texts(), 0, 0
    lines = (json.dumps({"text": doc}) + "\n" for _ in iter(int, 1) for doc in docs)  # the texts, cycled
    while written < size_mb << 20:
        with open(folder / f"shard_{shard:04d}.jsonl", "w", encoding="utf-8") as f:
            start = written
            while written - start < SHARD_MB << 20 and written < size_mb << 20:
                written += f.write(next(lines))
        shard += 1


def run_gptjax(corpus: Path, out: Path, num_proc: int) -> int:
    from gptjax import data
    from gptjax.config import DataConfig

    ds = data.prepare(DataConfig(source=str(corpus), tokenizer="gpt2", cache_dir=str(out), num_proc=num_proc))
    return len(ds.train) + len(ds.val)


@functools.cache
def stock_gpt2_encoding():
    """tiktoken.get_encoding("gpt2") without the download: tiktoken's own r50k pattern (gptjax's GPT2_SPLIT gives
    the same ids faster), so nanoGPT's approach is timed as nanoGPT runs it."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe
    from tiktoken_ext.openai_public import r50k_pat_str

    from gptjax.data import tokenizer

    ranks = load_tiktoken_bpe(str(tokenizer.GPT2_RANKS), expected_hash=tokenizer.GPT2_RANKS_SHA256)
    return tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={tokenizer.EOT: tokenizer.GPT2_VOCAB - 1})


def _nanogpt_encode(example):
    enc = stock_gpt2_encoding()
    ids = enc.encode_ordinary(example["text"])
    ids.append(enc.eot_token)
    return {"ids": ids, "len": len(ids)}


def run_nanogpt(corpus: Path, out: Path, num_proc: int) -> int:
    import datasets

    shards = sorted(str(p) for p in corpus.glob("*.jsonl"))
    dataset = datasets.load_dataset("json", data_files=shards, split="train", cache_dir=str(out / "hf"),
                                    num_proc=num_proc)
    split = dataset.train_test_split(test_size=0.0005, seed=2357, shuffle=True)
    split["val"] = split.pop("test")
    tokenized = split.map(_nanogpt_encode, remove_columns=["text"], num_proc=num_proc)
    total = 0
    for name, dset in tokenized.items():
        n = int(np.sum(dset["len"], dtype=np.uint64))
        arr = np.memmap(out / f"{name}.bin", dtype=np.uint16, mode="w+", shape=(n,))
        batches, idx = min(1024, len(dset)), 0
        for i in range(batches):
            batch = dset.shard(num_shards=batches, index=i, contiguous=True).with_format("numpy")
            ids = np.concatenate(batch["ids"])
            arr[idx:idx + len(ids)] = ids
            idx += len(ids)
        arr.flush()
        total += n
    return total


def measure(kind: str, corpus: Path, out: Path, num_proc: int) -> dict:
    """One run in a fresh process, its process tree's RSS sampled every 50 ms."""
    import psutil

    cmd = [sys.executable, __file__, "--child", kind, "--corpus", str(corpus), "--out", str(out),
           "--num-proc", str(num_proc)]
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    peak, parent = 0, psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            tree = [parent, *parent.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    tokens = int(proc.stdout.read().split()[-1]) if proc.returncode == 0 else 0
    return {"run": kind, "num_proc": num_proc, "rc": proc.returncode, "tokens": tokens, "wall_s": round(wall, 1),
            "tokens_per_s": round(tokens / wall), "peak_rss_mb": round(peak / 2**20)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-mb", type=int, default=1024, help="corpus size to build")
    p.add_argument("--runs", default="gptjax,nanogpt,single", help="comma-separated: gptjax, nanogpt, single")
    p.add_argument("--workdir", default="/tmp/gptjax-prepare-bench", help="corpus and outputs (never commit)")
    p.add_argument("--repeat", type=int, default=1, help="run the list this many times, interleaved")
    p.add_argument("--keep", action="store_true", help="keep the corpus for another run")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--corpus", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--num-proc", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        run = run_nanogpt if args.child == "nanogpt" else run_gptjax
        print(run(Path(args.corpus), Path(args.out), args.num_proc))
        return
    from gptjax.data.sources import cpu_count

    work = Path(args.workdir)
    corpus = work / f"corpus-{args.size_mb}mb"
    if not corpus.is_dir():
        build_corpus(corpus, args.size_mb)
    size = sum(f.stat().st_size for f in corpus.iterdir())
    print(json.dumps({"corpus_mb": round(size / 2**20), "shards": len(list(corpus.iterdir())), "cores": cpu_count(),
                      "load_avg": os.getloadavg()[0]}), flush=True)
    for kind in args.runs.split(",") * args.repeat:
        out = work / f"out-{kind}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        row = measure(kind, corpus, out, 1 if kind == "single" else cpu_count())
        print(json.dumps({**row, "load_avg": round(os.getloadavg()[0], 1)}), flush=True)
        shutil.rmtree(out, ignore_errors=True)
    if not args.keep:
        shutil.rmtree(corpus)


if __name__ == "__main__":
    main()
