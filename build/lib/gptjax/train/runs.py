"""Run directories: the checks before training writes to one, its files, and reading it back."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import tempfile
from pathlib import Path

import jax
import yaml
from flax import nnx

from gptjax import config as config_lib
from gptjax.data import tokenizer as tokenizers
from gptjax.errors import UserError, first_line
from gptjax.files import atomic_write
from gptjax.model import GPT, abstract_model
from gptjax.train.checkpoint import CheckpointError, Checkpoints

CONFIG_FILE = "config.yaml"
TOKENIZER_FILE = "tokenizer.json"


class RunError(UserError):
    """A run directory or setup that cannot be used as asked; the message says how to fix it."""


# ---------------------------------------------------------------------------
# Before training: nothing is written until all of these pass.

def check_run_dir(cfg: config_lib.Config) -> Path:
    """The run directory, checked before anything is written: writable, and holding this model if any."""
    run_dir = Path(cfg.run.out_dir)
    saved = run_dir / CONFIG_FILE
    if saved.is_file():
        old, new = _read_config_tree(run_dir), cfg.to_dict()
        for section, keys in (("model", None), ("data", ("source", "tokenizer", "val_fraction", "text_field"))):
            for key in keys or new[section]:
                if old.get(section, {}).get(key) != new[section][key]:
                    raise RunError(f"{run_dir} holds a run with {section}.{key}={old.get(section, {}).get(key)!r}, "
                                   f"but this config says {new[section][key]!r}; "
                                   f"use another run.out_dir to start a new run")
    check_writable(run_dir)
    return run_dir


def check_writable(run_dir: Path) -> None:
    """Try to write where the run will go, leaving no trace (an unnamed temporary file)."""
    probe = run_dir if run_dir.exists() else next(p for p in run_dir.absolute().parents if p.exists())
    fix = "set run.out_dir to a folder you can write"
    if not probe.is_dir():
        raise RunError(f"run directory {run_dir} cannot be made: {probe} is a file, not a folder; {fix}")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise RunError(f"run directory {run_dir} is not writable ({e.strerror or e} in {probe}); {fix}") from None


def check_disk_space(run_dir: Path, state_bytes: int, keep: int) -> None:
    """Room for the checkpoints this run will hold at once: `keep` latest, the best, one being written."""
    existing = len([p for p in (run_dir / "checkpoints").glob("*") if p.name.isdigit()]) if run_dir.exists() else 0
    need = max(0, keep + 2 - existing) * state_bytes
    probe = run_dir if run_dir.exists() else next(p for p in run_dir.absolute().parents if p.exists())
    free = shutil.disk_usage(probe).free
    if need > free:
        raise RunError(f"not enough disk space in {probe} for this run's checkpoints: each takes about "
                       f"{_size(state_bytes)} and up to {keep + 2} exist at once ({_size(need)} needed, "
                       f"{_size(free)} free); free some space, lower run.keep_checkpoints, "
                       f"or set run.out_dir elsewhere")


def _size(n: int) -> str:
    exp = min(int(math.log(max(n, 1), 1024)), 4)
    return f"{n / 1024 ** exp:.1f} {('B', 'KiB', 'MiB', 'GiB', 'TiB')[exp]}"


def write_run_files(run_dir: Path, cfg: config_lib.Config, tokenizer) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / CONFIG_FILE, cfg.to_yaml())
    atomic_write(run_dir / TOKENIZER_FILE, json.dumps(tokenizer.to_json()))


# ---------------------------------------------------------------------------
# Reading a run back

@dataclasses.dataclass
class Run:
    cfg: config_lib.Config
    tokenizer: object
    graphdef: nnx.GraphDef
    params: nnx.State
    step: int
    meta: dict

    def model(self) -> GPT:
        return nnx.merge(self.graphdef, self.params)


def _read_config_tree(run_dir: Path) -> dict:
    try:
        tree = yaml.safe_load((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise RunError(f"{run_dir / CONFIG_FILE} is damaged ({first_line(e)}); "
                       f"restore it or use another run.out_dir") from None
    if not isinstance(tree, dict):
        raise RunError(f"{run_dir / CONFIG_FILE} is damaged (not a mapping); restore it or use another run.out_dir")
    return tree


def read_files(run_dir: str | Path) -> tuple[config_lib.Config, object]:
    """The run's config and tokenizer: cheap, so a sampler can check its flags before loading weights."""
    run_dir = Path(run_dir)
    return load_config(run_dir), tokenizers.load(run_dir / TOKENIZER_FILE)


def load(run_dir: str | Path, step: int | str | None = None) -> Run:
    """The run's parameters at `step` (default: latest; "best": lowest val loss), on the default device."""
    run_dir = Path(run_dir)
    cfg, tokenizer = read_files(run_dir)
    ckpts = Checkpoints(run_dir, read_only=True)
    try:
        step = _pick_step(ckpts, step, run_dir)
        graphdef, abstract = nnx.split(abstract_model(cfg.model), nnx.Param)
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract)
        try:
            params, _, meta = ckpts.restore(step, abstract)
        except CheckpointError as e:
            others = [s for s in ckpts.steps() if s != step]
            hint = f"; try --step {others[-1]} (this run also has {', '.join(map(str, others))})" if others else ""
            raise CheckpointError(f"{e}{hint}") from None
    finally:
        ckpts.close()
    return Run(cfg, tokenizer, graphdef, params, step, meta)


def load_config(run_dir: str | Path) -> config_lib.Config:
    """The run's resolved config, without touching its checkpoints."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise CheckpointError(f"{run_dir} is not a run directory (no {CONFIG_FILE}); "
                              f"give the out_dir of a train.py run")
    try:
        return config_lib.from_dict(_read_config_tree(run_dir))
    except config_lib.ConfigError as e:
        raise RunError(f"{run_dir / CONFIG_FILE} is damaged: {e}") from None


def _pick_step(ckpts: Checkpoints, step, run_dir: Path) -> int:
    steps = ckpts.steps()
    if not steps:
        raise CheckpointError(f"{run_dir} has no checkpoint yet; train it first (python train.py ...)")
    if step in (None, "latest"):
        return max(steps)
    if step == "best":
        return ckpts.best_step() or max(steps)
    if not str(step).isdigit():
        raise CheckpointError(f"--step must be latest, best or a step number, got {step!r}")
    if int(step) not in steps:
        raise CheckpointError(f"{run_dir} has no checkpoint at step {step}; it has {', '.join(map(str, steps))}")
    return int(step)
