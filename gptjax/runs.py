"""Reading a run directory back: its config, tokenizer and a checkpoint's parameters."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import yaml
from flax import nnx

from gptjax import config as config_lib
from gptjax import tokenizer as tokenizers
from gptjax.checkpoint import CheckpointError, Checkpoints
from gptjax.model import GPT
from gptjax.trainer import CONFIG_FILE, TOKENIZER_FILE


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


def load(run_dir: str | Path, step: int | str | None = None) -> Run:
    """The run's parameters at `step` (default: latest; "best": lowest val loss), on the default device."""
    run_dir = Path(run_dir)
    cfg = load_config(run_dir)
    tokenizer = tokenizers.load(run_dir / TOKENIZER_FILE)
    ckpts = Checkpoints(run_dir, read_only=True)
    try:
        step = _pick_step(ckpts, step, run_dir)
        graphdef, abstract = nnx.split(nnx.eval_shape(lambda: GPT(cfg.model, rngs=nnx.Rngs(0))), nnx.Param)
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract)
        params, _, meta = ckpts.restore(step, abstract)
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
        return config_lib.from_dict(yaml.safe_load((run_dir / CONFIG_FILE).read_text()))
    except yaml.YAMLError as e:
        raise CheckpointError(f"{run_dir / CONFIG_FILE} is damaged: {str(e).splitlines()[0]}") from None


def _pick_step(ckpts: Checkpoints, step, run_dir: Path) -> int:
    steps = ckpts.steps()
    if not steps:
        raise CheckpointError(f"{run_dir} has no checkpoint yet; train it first (python train.py ...)")
    if step in (None, "latest"):
        return max(steps)
    if step == "best":
        return ckpts.best_step() or max(steps)
    if int(step) not in steps:
        raise CheckpointError(f"{run_dir} has no checkpoint at step {step}; it has {', '.join(map(str, steps))}")
    return int(step)
