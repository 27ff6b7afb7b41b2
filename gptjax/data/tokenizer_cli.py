"""`gptjax tokenizer train SOURCE --vocab-size N` and `gptjax tokenizer eval TOKENIZER... --source SOURCE`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from gptjax import errors
from gptjax.config import DataConfig
from gptjax.data import sources, tokenizer_train
from gptjax.data import tokenizer as tokenizers
from gptjax.files import atomic_write

DOC = """Your own tokenizer:
  gptjax tokenizer train SOURCE --vocab-size N [--out DIR]   a byte-level BPE learnt from SOURCE's training text
  gptjax tokenizer eval TOKENIZER... --source SOURCE         bytes per token on SOURCE's held-out text

SOURCE is anything data.source takes; a trained DIR/tokenizer.json is then data.tokenizer=DIR/tokenizer.json."""


def parser() -> errors.ArgumentParser:
    p = errors.ArgumentParser(prog="gptjax tokenizer", description=DOC,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = p.add_subparsers(dest="command", required=True, parser_class=errors.ArgumentParser)
    train = commands.add_parser("train", help="train a byte-level BPE on a data source")
    train.add_argument("source", help="shakespeare, a .txt/.jsonl/.parquet file, glob, folder, or hf:NAME")
    train.add_argument("--vocab-size", type=int, required=True, help=f"tokens, at least {tokenizer_train.MIN_VOCAB}")
    train.add_argument("--out", help="folder for tokenizer.json (default: bpe-N)")
    ev = commands.add_parser("eval", help="compression (bytes per token) on a source's held-out text")
    ev.add_argument("tokenizers", nargs="+", metavar="TOKENIZER", help="tokenizer.json files (or their folders)")
    ev.add_argument("--source", required=True, help="the data source whose held-out text is measured")
    ev.add_argument("--max-chars", type=int, default=5_000_000, help="measure at most this much held-out text")
    for sub in (train, ev):
        sub.add_argument("--text-field", default="text", help="column holding the text in .jsonl/.parquet/hub data")
        sub.add_argument("--val-fraction", type=float, default=0.1,
                         help="share held out, as data.val_fraction (the tokenizer never trains on it)")
        sub.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    return errors.run_cli(lambda: (train if args.command == "train" else evaluate)(args), debug=args.debug)


def _data(args) -> tuple[DataConfig, sources.Source]:
    cfg = DataConfig(source=args.source, text_field=args.text_field, val_fraction=args.val_fraction)
    return cfg, sources.resolve(cfg.source)


def train(args) -> None:
    if args.vocab_size < tokenizer_train.MIN_VOCAB:
        raise errors.UserError(f"--vocab-size must be at least {tokenizer_train.MIN_VOCAB} (the 256 bytes and "
                               f"<|endoftext|>), got {args.vocab_size}")
    out = Path(args.out or f"bpe-{args.vocab_size}").expanduser()
    if out.exists() and not out.is_dir():
        raise errors.UserError(f"--out {str(out)!r} is a file; give a folder for tokenizer.json")
    cfg, src = _data(args)
    t0 = time.perf_counter()
    total = src.total_bytes * (1 - cfg.val_fraction) if src.total_bytes else None
    stream = tokenizer_train.with_progress(tokenizer_train.texts(src, cfg, "train"), total, _say)
    text = tokenizer_train.train_bpe(stream, args.vocab_size)
    tok = tokenizers.from_json(json.loads(text))
    if tok.vocab_size < 2:
        raise errors.UserError(f"data.source {args.source!r} has no training text; give it some")
    out.mkdir(parents=True, exist_ok=True)  # only now: a failed training leaves nothing behind
    atomic_write(out / "tokenizer.json", text)
    short = f" (the text has no more pairs to merge than that; asked {args.vocab_size})" \
        if tok.vocab_size < args.vocab_size else ""
    _say(f"tokenizer: wrote {out / 'tokenizer.json'}: vocabulary {tok.vocab_size:,}{short}, "
         f"{time.perf_counter() - t0:.1f}s; use it with data.tokenizer={out / 'tokenizer.json'}")


def evaluate(args) -> None:
    cfg, src = _data(args)
    named = [(name, tokenizers.load_path(name)) for name in args.tokenizers]
    sample = list(tokenizer_train.texts(src, cfg, "val", max_chars=args.max_chars))
    if not sum(map(len, sample)):
        raise errors.UserError(f"data.source {args.source!r} has no held-out text to measure")
    builtin = [("char", tokenizers.CharTokenizer.fit("".join(sample))), ("gpt2", tokenizers.GPT2Tokenizer())]
    rows = [tokenizer_train.compression(name, tok, sample) for name, tok in builtin + named]
    print(f"held-out text of {args.source}: {rows[0].chars:,} characters, {rows[0].bytes:,} bytes")
    print(tokenizer_train.table(rows))


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
