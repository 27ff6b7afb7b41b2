"""Run directories: the checks before training writes to one, its files, and reading it back."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import uuid
from pathlib import Path

import jax
import yaml
from flax import nnx

from gptjax import config as config_lib
from gptjax import yaml_io
from gptjax.data import sources
from gptjax.data import tokenizer as tokenizers
from gptjax.errors import UserError, first_line
from gptjax.files import ReadError, atomic_write, read_json
from gptjax.model import GPT, abstract_model
from gptjax.train.checkpoint import CHECKPOINT_DIR, DAMAGED_DIR, CheckpointError, Checkpoints
from gptjax.train.resources import check_writable

CONFIG_FILE = "config.yaml"
TOKENIZER_FILE = "tokenizer.json"
INPUTS_FILE = "inputs.json"  # what the run trains on: the data's identity and the tokenizer's
LOCK_FILE = ".lock"
# What a run directory may hold before its config.yaml is written (a run killed while starting).
_NAMES = {CONFIG_FILE, TOKENIZER_FILE, INPUTS_FILE, "metrics.jsonl", "wandb_id", "wall_time.json"}
RUN_FILES = {*_NAMES, *(f".{n}.tmp" for n in _NAMES), "metrics.tmp", LOCK_FILE, CHECKPOINT_DIR, DAMAGED_DIR, "wandb"}


class RunError(UserError):
    """A run directory or setup that cannot be used as asked; the message says how to fix it."""


# ---------------------------------------------------------------------------
# Before training: nothing is written until all of these pass.

def check_run_dir(cfg: config_lib.Config, ds=None) -> Path:
    """The run directory, checked before anything is written: writable, a run's if not empty, and
    (once it holds a checkpoint) trained on this model, data and tokenizer."""
    run_dir = Path(cfg.run.out_dir)
    if owner := _owning_run(run_dir):
        raise RunError(f"run.out_dir {run_dir} lies inside the checkpoints of the run {owner}; "
                       f"give a folder outside it")
    strangers = sorted(p.name for p in run_dir.iterdir() if p.name not in RUN_FILES) if run_dir.is_dir() else []
    if strangers and not (run_dir / CONFIG_FILE).is_file():
        raise RunError(f"run.out_dir {run_dir} is a folder that is not a gptjax run (it holds {strangers[0]!r}"
                       f"{f' and {len(strangers) - 1} more' if len(strangers) > 1 else ''}); "
                       f"give an empty or new folder, or the out_dir of a run")
    if has_checkpoint(run_dir) and (run_dir / CONFIG_FILE).is_file():  # until then, nothing pins the run
        if ds is not None:  # first: edited data also shows as another n_vocab, a less telling message
            _check_inputs(run_dir, inputs(ds.meta.get("source_sha256"), ds.tokenizer), cfg.data.source)
        old, new = _read_config_tree(run_dir), cfg.to_dict()
        if newest := _newest_meta(run_dir):
            check_saved_model(run_dir, old.get("model") or {}, *newest)
        for section, keys in PINNED.items():
            for key in keys or new[section]:
                was = (old.get(section) or {}).get(key, new[section][key])
                if was != new[section][key]:
                    raise RunError(_changed(run_dir, f"{section}.{key}", was, new[section][key]))
    check_writable(run_dir)
    return run_dir


# What a started run keeps: the model and the optimizer shape its checkpoints; the data its token ids.
PINNED = {"model": None, "train": ("optimizer", "muon_iteration", "normuon"),  # these three shape its state
          "data": ("source", "tokenizer", "val_fraction", "text_field")}


def _changed(run_dir: Path, key: str, was, now) -> str:
    weights = (f" (train.init_from={run_dir} starts it from this run's weights)"
               if not key.startswith("data.") else "")
    return (f"{run_dir} holds a run trained with {key}={was!r}, but this config says {now!r}; set {key}={was} "
            f"to resume it (its checkpoints are intact), or use another run.out_dir to start a new run{weights}")


def check_saved_model(run_dir: Path, model: dict, step: int, meta: dict) -> None:
    """config.yaml's model is the one its checkpoint holds: an edited file would fail to restore as if damaged."""
    saved = (meta.get("config") or {}).get("model") or {}
    for key, value in model.items():
        if key in saved and saved[key] != value:
            raise RunError(f"{run_dir / CONFIG_FILE} says model.{key}={value!r}, but checkpoint {step} was saved "
                           f"with {saved[key]!r} (the file was edited); set model.{key}: {saved[key]!r} in it again")


def _newest_meta(run_dir: Path) -> tuple[int, dict] | None:
    """(step, meta) of the newest checkpoint whose meta reads intact, if any."""
    with Checkpoints(run_dir, read_only=True) as ckpts:
        for step in reversed(ckpts.steps()):
            try:
                return step, ckpts.meta(step)
            except CheckpointError:
                continue
    return None


def _owning_run(run_dir: Path) -> Path | None:
    """The run whose checkpoint folders hold run_dir, if any (a run there would be taken for a checkpoint)."""
    for folder in (run_dir.absolute(), *run_dir.absolute().parents):
        if folder.name in (CHECKPOINT_DIR, DAMAGED_DIR) and (folder.parent / CONFIG_FILE).is_file():
            return folder.parent
    return None


def has_checkpoint(run_dir: Path) -> bool:
    return any(p.name.isdigit() for p in (run_dir / CHECKPOINT_DIR).glob("*"))


def inputs(data_sha256: str | None, tokenizer) -> dict:
    """The run's data (its content digest, gptjax.data.digests) and tokenizer, as inputs.json records them."""
    spec = json.dumps(tokenizer.to_json(), sort_keys=True).encode()
    return {"data_sha256": data_sha256, "tokenizer_sha256": hashlib.sha256(spec).hexdigest(),
            "vocab_size": tokenizer.vocab_size}


def read_inputs(run_dir: Path) -> dict:
    """inputs.json, or {} for a run from before it (or converted); one that is there but damaged (a FIFO,
    20,000 nested `[`, not an object) is refused rather than read as "nothing pinned"."""
    try:
        was = read_json(run_dir / INPUTS_FILE)
    except FileNotFoundError:
        return {}
    except (OSError, ReadError) as e:
        raise RunError(f"{run_dir / INPUTS_FILE} is damaged ({e}); restore it, or delete it (then only "
                       f"{TOKENIZER_FILE} is checked)") from None
    if not isinstance(was, dict):
        raise RunError(f"{run_dir / INPUTS_FILE} is damaged (not a JSON object); restore it, or delete it (then "
                       f"only {TOKENIZER_FILE} is checked)")
    return was


def _check_inputs(run_dir: Path, now: dict, source: str) -> None:
    """A resumed run trains on what it started with: an edited data file or refitted tokenizer would remap ids."""
    was = read_inputs(run_dir)
    if not was and (run_dir / TOKENIZER_FILE).is_file():  # a run from before inputs.json: its tokenizer tells
        was = {"tokenizer_sha256": inputs(None, tokenizers.load(run_dir / TOKENIZER_FILE))["tokenizer_sha256"]}
    fix = "put back the data it was trained on, or use another run.out_dir to start a new run"
    if "data_sha256" not in was and was.get("data") is not None:
        _check_mtime_pin(run_dir, was["data"], source, fix)
    elif was.get("data_sha256") not in (None, now["data_sha256"]):
        raise RunError(f"{run_dir} was trained on other data than data.source={source} now holds "
                       f"(its content changed since the run started); {fix}")
    if was.get("tokenizer_sha256") not in (None, now["tokenizer_sha256"]):
        raise RunError(f"{run_dir} was trained with another tokenizer than this data gives "
                       f"(vocabulary {was.get('vocab_size', '?')} then, {now['vocab_size']} now); {fix}")


def _check_mtime_pin(run_dir: Path, pinned, source: str, fix: str) -> None:
    """A run started before data was pinned by content recorded each file's path, size and mtime: the same
    stat still means the same data (this resume then pins it by content); another cannot be told apart
    from an edit."""
    if pinned != sources.stat_identity(sources.resolve(source)):
        raise RunError(f"{run_dir} was started by an older gptjax, which pinned data.source={source} by "
                       f"modification time, and that changed since; if the content is the same, delete "
                       f"{run_dir / INPUTS_FILE} to pin it by content from now on, else {fix}")


def lock(run_dir: Path, what: str = "training run"):
    """Hold run_dir for this process: the OS drops the lock when the process dies, so none is ever stale.

    Returns the open lock file (keep it open for as long as the run lasts)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RunError(f"{run_dir} is in use by another {what} ({holder}); wait for it to finish, "
                       f"or use another directory") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
    handle.flush()
    return handle


@contextlib.contextmanager
def scratch_dir(run_dir: Path):
    """A folder to write a new run in, renamed to run_dir once complete: a failure leaves nothing behind
    (a half-written run would be refused by the fixed re-run, and read as untrained by sample.py)."""
    run_dir = Path(run_dir).absolute()
    made = [p for p in run_dir.parents if not p.exists()]  # innermost first, so they can be removed in order
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    scratch = run_dir.parent / f".{uuid.uuid4().hex[:12]}.partial"
    scratch.mkdir()
    try:
        yield scratch
        os.replace(scratch, run_dir)  # also over an empty folder
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        for folder in made:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def write_run_files(run_dir: Path, cfg: config_lib.Config, tokenizer, data_sha256: str | None = None) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / CONFIG_FILE, cfg.to_yaml())
    atomic_write(run_dir / TOKENIZER_FILE, json.dumps(tokenizer.to_json()))
    atomic_write(run_dir / INPUTS_FILE, json.dumps(inputs(data_sha256, tokenizer)))


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
        tree = yaml_io.load(run_dir / CONFIG_FILE)
    except yaml_io.YAMLBoundsError as e:
        raise RunError(f"{run_dir / CONFIG_FILE} is damaged: {e}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise RunError(f"{run_dir / CONFIG_FILE} is damaged ({first_line(e)}); "
                       f"restore it or use another run.out_dir") from None
    if not isinstance(tree, dict):
        raise RunError(f"{run_dir / CONFIG_FILE} is damaged (not a mapping); restore it or use another run.out_dir")
    return tree


def read_files(run_dir: str | Path) -> tuple[config_lib.Config, object]:
    """The run's config and tokenizer: cheap, so a sampler can check its flags before loading weights."""
    run_dir = Path(run_dir)
    cfg, tok = load_config(run_dir), tokenizers.load(run_dir / TOKENIZER_FILE)
    was = read_inputs(run_dir)  # {} for a run from before inputs.json, or converted: only the size can tell
    trained = was.get("vocab_size") if isinstance(was, dict) else None
    if tok.vocab_size > (cfg.model.n_vocab or 0) or trained not in (None, tok.vocab_size):
        raise RunError(f"{run_dir / TOKENIZER_FILE} has a vocabulary of {tok.vocab_size}, but the run was trained "
                       f"with {trained or f'at most {cfg.model.n_vocab}'}; put back the run's own {TOKENIZER_FILE}")
    if isinstance(was, dict) and was.get("tokenizer_sha256") not in (None, inputs(None, tok)["tokenizer_sha256"]):
        raise RunError(f"{run_dir / TOKENIZER_FILE} is not the tokenizer the run was trained with; "
                       f"put back the run's own {TOKENIZER_FILE}")
    return cfg, tok


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
            check_saved_model(run_dir, cfg.to_dict()["model"], step, ckpts.meta(step))
            params, _, meta = ckpts.restore(step, abstract)
        except CheckpointError as e:
            others = [s for s in ckpts.steps() if s != step and _meta_reads(ckpts, s)]  # never one as broken
            hint = f"; try --step {others[-1]} (this run also has {', '.join(map(str, others))})" if others else ""
            raise CheckpointError(f"{e}{hint}") from None
    finally:
        ckpts.close()
    return Run(cfg, tokenizer, graphdef, params, step, meta)


def _meta_reads(ckpts: Checkpoints, step: int) -> bool:
    try:
        ckpts.meta(step)
    except CheckpointError:
        return False
    return True


def load_config(run_dir: str | Path) -> config_lib.Config:
    """The run's resolved config, without touching its checkpoints."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise CheckpointError(f"{run_dir} is not a run directory (no {CONFIG_FILE}); {_runs_inside(run_dir)}")
    try:
        return config_lib.from_dict(_read_config_tree(run_dir))
    except config_lib.ConfigError as e:
        raise RunError(f"{run_dir / CONFIG_FILE} is damaged: {e}") from None


def _runs_inside(folder: Path) -> str:
    """What to give instead of a folder of runs (a --seeds run's seed=i, a sweep's points), or the usual hint."""
    inside = sorted((p for p in folder.glob("*") if (p / CONFIG_FILE).is_file()), key=lambda p: _natural(p.name))
    if not inside:
        return "give the out_dir of a train.py run"
    names = ", ".join(p.name for p in inside[:6]) + (", ..." if len(inside) > 6 else "")
    return f"it holds {len(inside)} runs ({names}): give one of them, e.g. {inside[0]}"


def _natural(name: str) -> tuple:
    # seed=10 after seed=9
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def _pick_step(ckpts: Checkpoints, step, run_dir: Path) -> int:
    steps = ckpts.steps()
    if not steps:
        raise CheckpointError(f"{run_dir} has no checkpoint yet; train it first (python train.py ...)")
    if step in (None, "latest"):
        return max(steps)
    if step == "best":
        return ckpts.best_step() or max(steps)
    if not (str(step).isascii() and str(step).isdigit()):  # "²".isdigit() is True
        raise CheckpointError(f"--step must be latest, best or a step number, got {step!r}")
    if int(step) not in steps:
        raise CheckpointError(f"{run_dir} has no checkpoint at step {step}; it has {', '.join(map(str, steps))}")
    return int(step)
