"""Hugging Face GPT-2 checkpoints in and out of gptjax run directories.

  gptjax convert from-hf SRC RUN_DIR   SRC: a local HF GPT-2 folder, or gpt2[-medium|-large|-xl] (hub)
  gptjax convert to-hf RUN_DIR OUT     writes OUT/config.json + OUT/model.safetensors

A converted run directory is an ordinary one whose step-0 checkpoint holds weights only:
sample.py reads it as is, and training it (in place, or as `train.init_from`) starts a
fresh optimizer on those weights.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from gptjax import errors
from gptjax.config import Config, DataConfig, RunConfig
from gptjax.data import tokenizer as tokenizers
from gptjax.interop import hf
from gptjax.interop.hf import ConvertError
from gptjax.model import abstract_model
from gptjax.train import runs
from gptjax.train.checkpoint import Checkpoints
from gptjax.train.step import initial_rng


def hf_tokenizer(n_vocab: int):
    """GPT-2 BPE for GPT-2's vocabulary; any other size gets token ids as text (gptjax cannot know its tokenizer)."""
    return tokenizers.GPT2Tokenizer() if n_vocab == hf.GPT2_VOCAB else tokenizers.IdsTokenizer(n_vocab)


def as_state(abstract: nnx.State, params: dict) -> nnx.State:
    """`abstract` (left untouched) with its leaves replaced by the pure dict's arrays."""
    state = jax.tree.map(lambda leaf: leaf, abstract)  # a copy: replace_by_pure_dict works in place
    nnx.replace_by_pure_dict(state, params)
    return state


def check_target(path: Path, name: str) -> None:
    """A folder the command may write in (or make), checked before anything is read: not a file, writable."""
    if path.exists() and not path.is_dir():
        raise ConvertError(f"{name} {path} is a file, not a folder; give a new folder")
    probe = path if path.exists() else next(p for p in path.absolute().parents if p.exists())
    if not probe.is_dir():
        raise ConvertError(f"{name} {path} cannot be made: {probe} is a file, not a folder; give another folder")
    try:
        with tempfile.TemporaryFile(dir=probe):  # unnamed: leaves no trace
            pass
    except OSError as e:
        raise ConvertError(f"{name} {path} is not writable ({e.strerror or e} in {probe}); "
                           f"give a folder you can write") from None


def from_hf(spec: str, run_dir: str | Path) -> Path:
    """Write a run directory (config, tokenizer, weights-only step-0 checkpoint) for a HF GPT-2."""
    run_dir = Path(run_dir)
    check_target(run_dir, "RUN_DIR")
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ConvertError(f"{run_dir} exists and is not empty; give a new RUN_DIR so no run is overwritten")
    src = hf.locate(spec)
    model_cfg = hf.model_config(hf.load_config(src), src)
    params = hf.to_params(hf.read_tensors(src), model_cfg, src)
    tok = hf_tokenizer(model_cfg.n_vocab)
    cfg = Config(model=model_cfg, data=DataConfig(tokenizer="gpt2" if tok.kind == "gpt2" else "char"),
                 run=RunConfig(out_dir=str(run_dir)))
    abstract = nnx.state(abstract_model(cfg.model), nnx.Param)
    meta = {"step": 0, "rng": np.asarray(initial_rng(cfg.train.seed)).tolist(), "config": cfg.to_dict(),
            "val_loss": None, "train_loss": None, "opt_state": False, "converted_from": str(spec)}
    with runs.scratch_dir(run_dir) as scratch:  # a refused weight (NaN) leaves no half-written run
        runs.write_run_files(scratch, cfg, tok)
        with Checkpoints(scratch) as ckpts:
            ckpts.save(0, as_state(abstract, params), None, meta, None)
    return run_dir


def to_hf(run_dir: str | Path, out: str | Path, step: int | str | None = None) -> Path:
    """Write a run's checkpoint as config.json + model.safetensors for transformers' GPT2LMHeadModel."""
    out = Path(out)
    check_target(out, "OUT")  # before the run's weights are read
    run = runs.load(run_dir, step)
    if (out / runs.CONFIG_FILE).exists():
        raise ConvertError(f"{out} is a gptjax run directory; give a separate OUT folder for the Hugging Face files")
    params = jax.tree.map(np.asarray, nnx.to_pure_dict(run.params))
    hf.write(out, run.cfg.model, params, run.tokenizer.eot_id)
    return out


def main(argv: list[str]) -> int:
    parser = errors.ArgumentParser(prog="gptjax convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)
    pull = commands.add_parser("from-hf", help="Hugging Face GPT-2 -> gptjax run directory")
    pull.add_argument("src", help="local folder with config.json + model.safetensors (or pytorch_model.bin), "
                                  f"or a hub name: {', '.join(hf.HUB_NAMES)}")
    pull.add_argument("run_dir", help="new run directory to write")
    push = commands.add_parser("to-hf", help="gptjax run directory -> Hugging Face GPT-2")
    push.add_argument("run_dir", help="a run directory written by train.py or from-hf")
    push.add_argument("out", help="folder for config.json + model.safetensors")
    push.add_argument("--step", default="latest", help="checkpoint to export: latest, best, or a step number")
    args = parser.parse_args(argv)

    def run():
        if args.command == "from-hf":
            print(f"wrote {from_hf(args.src, args.run_dir)}: sample with python sample.py {args.run_dir}")
        else:
            print(f"wrote {to_hf(args.run_dir, args.out, args.step)}: load with "
                  f"GPT2LMHeadModel.from_pretrained({str(args.out)!r})")

    return errors.run_cli(run, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
