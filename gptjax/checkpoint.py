"""Checkpoints: an orbax CheckpointManager holding the named bundle {params, opt_state, meta}.

`meta` is JSON: step, RNG key, resolved config, val loss. Restores go into abstract
targets (shapes, dtypes and shardings), so a checkpoint lands on whatever mesh is current.
Orbax writes each step to a temporary folder and renames it on commit, so a crash
mid-save leaves the previous checkpoint as the latest.
"""

from __future__ import annotations

from pathlib import Path

import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies
from gptjax.errors import UserError

CHECKPOINT_DIR = "checkpoints"


class CheckpointError(UserError):
    """A checkpoint that cannot be used; the message says why."""


class Checkpoints:
    def __init__(self, run_dir: Path, keep: int = 2, read_only: bool = False):
        keep_latest = policies.LatestN(n=keep)
        keep_best = policies.BestN(get_metric_fn=lambda m: m["val_loss"], reverse=True, n=1,
                                   keep_checkpoints_without_metrics=False)
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policies.AnyPreservationPolicy([keep_latest, keep_best]),
            create=not read_only, read_only=read_only, enable_async_checkpointing=True)
        self.directory = Path(run_dir).resolve() / CHECKPOINT_DIR
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("params", "opt_state", "meta"))

    def steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, params, opt_state, meta: dict, val_loss: float | None) -> None:
        """opt_state None writes weights only (a converted checkpoint); its meta must say "opt_state": false."""
        items = {"params": ocp.args.StandardSave(params), "meta": ocp.args.JsonSave(meta)}
        if opt_state is not None:
            items["opt_state"] = ocp.args.StandardSave(opt_state)
        self.manager.save(step, args=ocp.args.Composite(**items),
                          metrics=None if val_loss is None else {"val_loss": val_loss})

    def restore(self, step: int, abstract_params, abstract_opt_state=None):
        """(params, opt_state or None, meta) at `step`, placed as the abstract targets say."""
        items = {"params": ocp.args.StandardRestore(abstract_params), "meta": ocp.args.JsonRestore()}
        if abstract_opt_state is not None:
            items["opt_state"] = ocp.args.StandardRestore(abstract_opt_state)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # orbax raises many types for damaged or mismatched files
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CheckpointError(f"checkpoint {self.directory / str(step)} cannot be restored: {msg[:300]}") from None
        return restored.params, restored.get("opt_state"), restored.meta

    def meta(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

    def best_step(self) -> int | None:
        """The kept step with the lowest val loss (orbax's best_step ignores preservation policies)."""
        scored = [(meta["val_loss"], step) for step in self.steps()
                  if (meta := self.meta(step)).get("val_loss") is not None]
        return min(scored)[1] if scored else None

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
