"""Process set-up the entry points apply before JAX starts: XLA:CPU flags and the persistent compilation cache."""

from __future__ import annotations

import os
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
