"""Run by tests/test_scale.py in a subprocess that sees 8 CPU devices; prints one JSON object.

python -m tests.multidevice_worker RUN_DIR MESH [MESH ...]

Trains the same tiny model for 5 steps on each named mesh (some on only 1 or 4 of the
devices) from the same initial state, and reports the losses. For `fsdp8` it also reports
every parameter's and Adam moment's per-device shards, and saves the run at step 3 into
RUN_DIR (a checkpoint written by 8 devices). It also reports the error for a batch that
does not split over 8 devices.
"""

import json
import sys

import jax
import optax

from gptjax import config, sharding
from gptjax.train import trainer
from gptjax.train.checkpoint import Checkpoints

# A fixed schedule (not tied to train.steps) with no warmup, so runs of different lengths
# agree and the first update already moves the weights; the meshes split sizes of 8.
COMMON = ["train.warmup_steps=0", "train.lr_decay_steps=10", "train.eval_every=3", "train.log_every=1"]
MESHES = {"one_device": (1, 1), "data8": (8, 1), "fsdp8": (1, 8), "data2_fsdp4": (2, 4), "four_devices": (2, 2)}
STEPS, SAVE_AT = 5, 3


def shards(tree) -> dict:
    """Per leaf: global shape, spec, the per-device shard shapes and how many distinct shards."""
    return {jax.tree_util.keystr(path): {
        "shape": list(x.shape), "spec": str(x.sharding.spec), "devices": len(x.addressable_shards),
        "shard_shapes": sorted({tuple(s.data.shape) for s in x.addressable_shards}),
        "distinct_shards": len({str(s.index) for s in x.addressable_shards})}
        for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def train_on(name: str, cfg, ds, initial, report: dict) -> None:
    data, fsdp = MESHES[name]
    mesh = sharding.make_mesh(config.MeshConfig(data=data, fsdp=fsdp), jax.devices()[:data * fsdp])
    pieces = trainer.build(cfg, mesh)
    state = jax.device_put(initial, pieces.state_shardings)  # the same start everywhere, re-laid out
    losses = []
    for step in range(STEPS):
        state, metrics = pieces.train_step(state, *trainer.train_batch(cfg, ds, step, mesh))
        losses.append(float(metrics["train_loss"]))
        if name == "fsdp8" and step + 1 == SAVE_AT:
            save(cfg, ds, state)
    report["losses"][name] = losses
    if name == "fsdp8":
        report["fsdp8"] = {"params": shards(state.params), **{
            moment: shards(optax.tree_utils.tree_get(state.opt_state, moment)) for moment in ("mu", "nu")}}


def save(cfg, ds, state) -> None:
    run_dir = trainer.check_run_dir(cfg)
    trainer.write_run_files(run_dir, cfg.replace(mesh={"data": 1, "fsdp": 8}), ds.tokenizer)
    ckpts = Checkpoints(run_dir)
    trainer.save(ckpts, cfg, state, SAVE_AT, {})
    ckpts.close()


def main(run_dir: str, names: list[str]) -> None:
    cfg, ds, _ = trainer.setup(config.load("tiny", [f"run.out_dir={run_dir}", *COMMON]))
    one = trainer.build(cfg, sharding.make_mesh(config.MeshConfig(), jax.devices()[:1]))
    initial = jax.device_get(trainer.init_state(cfg, one))  # initialised once: init compiles slowly
    report = {"devices": jax.device_count(), "losses": {}}
    for name in names:
        train_on(name, cfg, ds, initial, report)
    try:
        trainer.setup(cfg.replace(train={"batch_size": 12}))
    except config.ConfigError as e:
        report["batch_error"] = str(e)
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
