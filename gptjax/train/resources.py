"""What a run needs before it starts: a writable folder, disk for its checkpoints, memory for its state."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from gptjax import config as config_lib
from gptjax import sharding
from gptjax.errors import UserError
from gptjax.units import size


class ResourceError(UserError):
    """The machine cannot hold or store the run as configured; the message says what to change."""


def check_writable(run_dir: Path) -> None:
    """Try to write where the run will go, leaving no trace (an unnamed temporary file)."""
    probe = run_dir if run_dir.exists() else next(p for p in run_dir.absolute().parents if p.exists())
    fix = "set run.out_dir to a folder you can write"
    if not probe.is_dir():
        raise ResourceError(f"run directory {run_dir} cannot be made: {probe} is a file, not a folder; {fix}")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise ResourceError(f"run directory {run_dir} is not writable ({e.strerror or e} in {probe}); {fix}") from None


def check_disk_space(run_dir: Path, state_bytes: int, keep: int) -> None:
    """Room for the checkpoints this run will hold at once: `keep` latest, the best, one being written."""
    existing = len([p for p in (run_dir / "checkpoints").glob("*") if p.name.isdigit()]) if run_dir.exists() else 0
    need = max(0, keep + 2 - existing) * state_bytes
    probe = run_dir if run_dir.exists() else next(p for p in run_dir.absolute().parents if p.exists())
    free = shutil.disk_usage(probe).free
    if need > free:
        raise ResourceError(f"not enough disk space in {probe} for this run's checkpoints: each takes about "
                       f"{size(state_bytes)} and up to {keep + 2} exist at once ({size(need)} needed, "
                       f"{size(free)} free); free some space, lower run.keep_checkpoints, "
                       f"or set run.out_dir elsewhere")


def memory_needed(cfg: config_lib.Config, n_batch_shards: int = 1, n_fsdp: int = 1) -> tuple[int, int]:
    """(state, activations) bytes one device holds at once, roughly: float32 params, grads and two Adam
    moments; per layer and token the backward keeps ~16 D floats plus H·T attention weights, and the
    logits take 2 V."""
    m, rows = cfg.model, -(-cfg.train.micro_batch_size // n_batch_shards)
    state = 16 * m.n_params // n_fsdp
    activations = 4 * rows * m.n_ctx * (m.n_layer * (16 * m.n_embd + 2 * m.n_head * m.n_ctx) + 2 * m.n_vocab)
    return state, activations


def device_memory(device) -> tuple[int, str]:
    """(bytes, what) a device can hold: an accelerator's own memory, else the machine's RAM."""
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), f"{device.device_kind} memory"
    try:  # what the kernel can give without swapping or killing (Linux); else all of it
        with open("/proc/meminfo") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
        return kib * 1024, "RAM available on this machine"
    except (OSError, StopIteration, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "RAM of this machine"


def check_memory(cfg: config_lib.Config, mesh, copies: int = 1) -> None:
    """Refuse, before anything is allocated, a run that cannot fit (a page-out or OOM kill later loses more).

    `copies`: runs trained together (gptjax.train.seeds), each holding its own state and activations."""
    state, activations = (copies * n for n in memory_needed(cfg, sharding.n_batch_shards(mesh),
                                                             dict(mesh.shape).get("fsdp", 1)))
    have, what = device_memory(mesh.devices.flat[0])
    if state + activations > have:
        who, fewer = ("this run", "") if copies == 1 else (f"these {copies} seeds together", "fewer seeds, ")
        raise ResourceError(f"{who} need{'s' if copies == 1 else ''} about {size(state + activations)} per device "
                       f"({size(state)} parameters and optimizer state, {size(activations)} activations), more "
                       f"than the {size(have)} {what}; {fewer}lower train.batch_size (or raise train.grad_accum), "
                       f"or the model's size")
