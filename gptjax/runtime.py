"""Process set-up the entry points apply before JAX starts (XLA:CPU flags, the persistent compilation cache),
and a quick end for a command that has nothing left to write."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

# XLA:CPU flags that measured faster for the small models gptjax trains on CPU (BENCHMARKS.md, "Levers").
CPU_FLAGS: tuple[str, ...] = ()


def cache_dir() -> Path:
    """gptjax's cache folder: $GPTJAX_CACHE, else ~/.cache/gptjax."""
    return Path(os.environ.get("GPTJAX_CACHE") or Path.home() / ".cache" / "gptjax")


def with_flags(xla_flags: str, flags: tuple[str, ...]) -> str:
    """`xla_flags` plus each of `flags` whose name it does not already set (the user's setting wins)."""
    given = {f.split("=", 1)[0] for f in xla_flags.split()}
    return " ".join([*xla_flags.split(), *(f for f in flags if f.split("=", 1)[0] not in given)])


def configure(*, compilation_cache: bool = True) -> None:
    """Set XLA:CPU flags and JAX's persistent compilation cache through the environment, before JAX reads it.

    Nothing the user set is overridden; the xla_cpu_* flags only reach the CPU backend, so a GPU or TPU
    run is unchanged. The cache is keyed by program, shapes, flags and jax version: safe to share.
    """
    flags = with_flags(os.environ.get("XLA_FLAGS", ""), CPU_FLAGS)
    if flags:
        os.environ["XLA_FLAGS"] = flags
    if not compilation_cache or "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir() / "jax")
    # Sampling's loop compiles in about a second on CPU; the default 1 s floor would skip it.
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")


def exit_at_once(code: int) -> None:
    """End the process now, skipping the interpreter's teardown: for a command with nothing left to write.

    Tearing down JAX's CPU client, orbax and the imported modules takes 0.2-0.3 s after a sampler
    has printed everything (a tenth of a warm `sample.py`, BENCHMARKS.md); a trainer, whose
    checkpoints may still be in flight, exits the ordinary way.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError):  # a reader that went away (`| head`): nothing more can reach it
            stream.flush()
    os._exit(code)
