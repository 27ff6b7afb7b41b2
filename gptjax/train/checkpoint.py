"""Checkpoints: an orbax CheckpointManager holding the named bundle {params, opt_state, meta}.

`meta` is JSON: step, RNG key, resolved config, val loss, and a checksum of each array
item. The step fixes the rest of what the next update depends on: the data order is a
pure function of (seed, step), the learning-rate schedule reads the optimizer's count.
Restores go into abstract targets (shapes, dtypes and shardings), so a checkpoint lands
on whatever mesh is current.

Crash safety: orbax writes each step to a temporary folder and renames it on commit, so
a kill mid-save leaves the previous checkpoint as the latest (the leftover folder is
removed when training restarts). A checksum is taken before saving and checked after
restoring, so bytes damaged on disk fail loudly instead of loading silently, and a
non-finite state is never saved.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from gptjax.errors import UserError, first_line

CHECKPOINT_DIR = "checkpoints"
DAMAGED_DIR = "checkpoints-damaged"
_UINT = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}


class CheckpointError(UserError):
    """A checkpoint that cannot be used; the message says why."""


@jax.jit
def digest(tree) -> tuple[jax.Array, jax.Array]:
    """(checksum, all finite) of a pytree of arrays, computed where the arrays live.

    The checksum is a position-weighted sum of every leaf's bits mod 2**32, so a changed,
    zeroed or shifted byte changes it; positions come from iotas in the leaf's own shape,
    so a sharded leaf is never reshaped (which could gather it onto one device).
    """
    total, finite = jnp.uint32(0), jnp.bool_(True)
    for x in jax.tree.leaves(tree):
        bits = jax.lax.bitcast_convert_type(x.astype(jnp.uint8) if x.dtype == jnp.bool_ else x,
                                            _UINT[x.dtype.itemsize]).astype(jnp.uint32)
        pos, stride = jnp.zeros(bits.shape, jnp.uint32), 1
        for d in reversed(range(bits.ndim)):
            pos = pos + jax.lax.broadcasted_iota(jnp.uint32, bits.shape, d) * jnp.uint32(stride % 2**32)
            stride *= bits.shape[d]
        total = total * jnp.uint32(1_000_003) + jnp.sum(bits * (2 * pos + 1), dtype=jnp.uint32)
        if jnp.issubdtype(x.dtype, jnp.inexact):
            finite &= jnp.isfinite(x).all()
    return total, finite


def _reason(e: Exception) -> str:
    """The first line of an orbax / TensorStore error, without its pages of details."""
    text = first_line(e)
    return text.split(". See full", 1)[0].split(" See full", 1)[0].strip(" '\"")[:200]


class Checkpoints:
    def __init__(self, run_dir: Path, keep: int = 2, read_only: bool = False):
        self.run_dir = Path(run_dir).resolve()
        self.directory = self.run_dir / CHECKPOINT_DIR
        self.keep, self.read_only = keep, read_only
        self.manager = self._open()

    def _open(self) -> ocp.CheckpointManager:
        keep_latest = policies.LatestN(n=self.keep)
        keep_best = policies.BestN(get_metric_fn=lambda m: m["val_loss"], reverse=True, n=1,
                                   keep_checkpoints_without_metrics=False)
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policies.AnyPreservationPolicy([keep_latest, keep_best]),
            create=not self.read_only, read_only=self.read_only, enable_async_checkpointing=True,
            cleanup_tmp_directories=not self.read_only)
        return ocp.CheckpointManager(self.directory, options=options, item_names=("params", "opt_state", "meta"))

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, params, opt_state, meta: dict, val_loss: float | None) -> None:
        """opt_state None writes weights only (a converted checkpoint); its meta must say "opt_state": false."""
        trees = {"params": params} if opt_state is None else {"params": params, "opt_state": opt_state}
        checksums = {}
        for name, tree in trees.items():
            checksum, finite = digest(tree)
            if not finite:
                raise CheckpointError(f"refusing to save step {step}: its {name} hold non-finite values")
            checksums[name] = int(checksum)
        items = {name: ocp.args.StandardSave(tree) for name, tree in trees.items()}
        args = ocp.args.Composite(**items, meta=ocp.args.JsonSave({**meta, "checksums": checksums}))
        try:
            self.manager.save(step, args=args, metrics=None if val_loss is None else {"val_loss": val_loss})
        except Exception as e:  # this save, or the one before it still being written in the background
            raise self._write_error(e) from None

    def restore(self, step: int, abstract_params, abstract_opt_state=None):
        """(params, opt_state or None, meta) at `step`, placed as the abstract targets say, checksums verified."""
        items = {"params": ocp.args.StandardRestore(abstract_params), "meta": ocp.args.JsonRestore()}
        if abstract_opt_state is not None:
            items["opt_state"] = ocp.args.StandardRestore(abstract_opt_state)
        self.manager.wait_until_finished()  # a save still in flight may be the step asked for
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # orbax raises many types for damaged or mismatched files
            raise CheckpointError(f"checkpoint {self.directory / str(step)} cannot be restored: {_reason(e)}") from None
        for name in items.keys() - {"meta"}:
            expected = (restored.meta.get("checksums") or {}).get(name)
            if expected is not None and int(digest(restored[name])[0]) != expected:
                raise CheckpointError(f"checkpoint {self.directory / str(step)} is damaged: its {name} do not "
                                      f"match the checksum taken when it was saved")
        return restored.params, restored.get("opt_state"), restored.meta

    def meta(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

    def best_step(self) -> int | None:
        """The kept step with the lowest val loss (orbax's best_step ignores preservation policies)."""
        scored = [(meta["val_loss"], step) for step in self.steps()
                  if (meta := self.meta(step)).get("val_loss") is not None]
        return min(scored)[1] if scored else None

    def set_aside(self, steps: list[int]) -> Path:
        """Move damaged steps out of the way (kept for inspection), so training can save them again."""
        self.manager.wait_until_finished()
        self.manager.close()
        target = self.run_dir / DAMAGED_DIR
        for step in steps:
            dest, n = target / str(step), 1
            while dest.exists():
                dest, n = target / f"{step}.{n}", n + 1
            target.mkdir(exist_ok=True)
            shutil.move(self.directory / str(step), dest)
        self.manager = self._open()  # the manager caches its step list
        return target

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # an async save failed (e.g. the disk filled up)
            raise self._write_error(e) from None
        finally:
            self.manager.close()

    def _write_error(self, e: Exception) -> Exception:
        """A failed write as one line; orbax reports a full disk as OSError or TensorStore's RESOURCE_EXHAUSTED."""
        text = str(e)
        if isinstance(e, OSError) or "RESOURCE_EXHAUSTED" in text or "No space left" in text:
            kept = self.manager.latest_step()
            where = f"re-run the same command to resume from step {kept}" if kept else "re-run the same command"
            why = "no space left on device" if "No space left" in text or "RESOURCE_EXHAUSTED" in text else _reason(e)
            return CheckpointError(f"cannot write checkpoints in {self.directory}: {why}; the checkpoints already "
                                   f"saved are intact: free some space and {where}")
        return e
