"""Checkpoints: an orbax CheckpointManager holding the named bundle {params, opt_state, meta}.

`meta` is JSON: step, RNG key, resolved config, val loss, and a checksum of each array
item and of the meta itself (a folder whose name is not its meta's step counts as damaged).
The step fixes the rest of what the next update depends on: the data order is a pure
function of (seed, step), the learning-rate schedule reads the optimizer's count.
Restores go into abstract targets (shapes, dtypes and shardings), so a checkpoint lands
on whatever mesh is current.

Crash safety: orbax writes each step to a temporary folder and renames it on commit, so
a kill mid-save leaves the previous checkpoint as the latest (the leftover folder is
removed when training restarts). A checksum is taken before saving and checked after
restoring, so bytes damaged on disk fail loudly instead of loading silently, and a
non-finite state is never saved.

Which checkpoints stay: the `keep` latest and the best by val loss. Orbax only remembers the
val losses of the steps this process saved, so those of earlier runs of the command are
read from their meta when the folder is opened: a resume never deletes the best.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
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


def meta_checksum(meta: dict) -> str:
    """sha256 of the meta as saved, less this checksum itself."""
    rest = {**meta, "checksums": {k: v for k, v in (meta.get("checksums") or {}).items() if k != "meta"}}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()


@dataclasses.dataclass
class KeepBest(policies.PreservationPolicy):
    """Keep the step with the lowest val loss: orbax's metrics where it has them, else `known` (read from meta)."""
    known: dict[int, float]

    def should_preserve(self, checkpoints, *, context) -> list[bool]:
        scored = [(loss, i) for i, c in enumerate(checkpoints)
                  if (loss := (c.metrics or {}).get("val_loss", self.known.get(c.step))) is not None]
        best = min(scored)[1] if scored else None
        return [i == best for i in range(len(checkpoints))]


def _check_meta(meta, step: int, where: Path) -> None:
    """A meta edited or moved since it was saved is damage: its step and config steer the resumed run."""
    if not isinstance(meta, dict) or not isinstance(meta.get("checksums") or {}, dict):
        raise CheckpointError(f"checkpoint {where} is damaged: its meta is not a JSON object")
    expected = (meta.get("checksums") or {}).get("meta")
    if expected is not None and meta_checksum(meta) != expected:
        raise CheckpointError(f"checkpoint {where} is damaged: its meta (step, config, RNG key) does not match "
                              f"the checksum taken when it was saved")
    if meta.get("step") != step:
        raise CheckpointError(f"checkpoint {where} holds step {meta.get('step')!r}, not {step} (its folder was "
                              f"renamed or its meta edited); name it after its own step, or move it aside")


class Checkpoints:
    def __init__(self, run_dir: Path, keep: int = 2, read_only: bool = False):
        self.run_dir = Path(run_dir).resolve()
        self.directory = self.run_dir / CHECKPOINT_DIR
        self.keep, self.read_only = keep, read_only
        self.manager = self._open()

    def _open(self) -> ocp.CheckpointManager:
        keep_best = KeepBest({})
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policies.AnyPreservationPolicy([policies.LatestN(n=self.keep), keep_best]),
            best_fn=lambda m: m["val_loss"], best_mode="min",  # so orbax writes each step's metrics too
            create=not self.read_only, read_only=self.read_only, enable_async_checkpointing=True,
            cleanup_tmp_directories=not self.read_only)
        manager = ocp.CheckpointManager(self.directory, options=options, item_names=("params", "opt_state", "meta"))
        if not self.read_only:
            keep_best.known.update(self._val_losses(manager))
        return manager

    def _val_losses(self, manager: ocp.CheckpointManager) -> dict[int, float]:
        """Val losses of the steps saved before, by their meta (runs before orbax's metrics were written have
        only that); a step whose meta cannot be read competes for nothing."""
        losses = {}
        for step in manager.all_steps():
            try:
                loss = self._read_meta(manager, step).get("val_loss")
            except CheckpointError:
                continue
            if loss is not None:
                losses[step] = loss
        return losses

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
        meta = {**meta, "step": step, "checksums": checksums}
        meta["checksums"]["meta"] = meta_checksum(meta)
        args = ocp.args.Composite(**items, meta=ocp.args.JsonSave(meta))
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
        _check_meta(restored.meta, step, self.directory / str(step))
        for name in items.keys() - {"meta"}:
            expected = (restored.meta.get("checksums") or {}).get(name)
            if expected is not None and int(digest(restored[name])[0]) != expected:
                raise CheckpointError(f"checkpoint {self.directory / str(step)} is damaged: its {name} do not "
                                      f"match the checksum taken when it was saved")
        return restored.params, restored.get("opt_state"), restored.meta

    def meta(self, step: int) -> dict:
        """The step's meta, checked: readable, unchanged since it was saved, and saved as this step."""
        return self._read_meta(self.manager, step)

    def _read_meta(self, manager: ocp.CheckpointManager, step: int) -> dict:
        where = self.directory / str(step)
        try:
            meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        except Exception as e:  # a missing, truncated or unparsable file: orbax raises many types
            raise CheckpointError(f"checkpoint {where} cannot be restored: its meta cannot be read "
                                  f"({_reason(e)})") from None
        _check_meta(meta, step, where)
        return meta

    def best_step(self) -> int | None:
        """The kept step with the lowest val loss (orbax's best_step ignores preservation policies); a step
        whose meta is damaged is passed over (loading it says why, if asked for by number)."""
        scored = []
        for step in self.steps():
            try:
                loss = self.meta(step).get("val_loss")
            except CheckpointError:
                continue
            if loss is not None:
                scored.append((loss, step))
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
