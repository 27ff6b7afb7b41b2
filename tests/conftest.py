"""Shared fixtures: a session-wide data cache, tiny configs in temporary run directories."""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import pytest

from gptjax import config, sharding

# As train.py does: every CPU core a device, so runs in this process and in the CLI
# processes the tests start compare bit for bit.
sharding.use_cpu_cores()

ROOT = Path(__file__).resolve().parent.parent

# One compilation cache for the session, shared by the tests and the CLI processes they
# start: the tiny preset's step then compiles once, not once per test and per process.
# It is set before any test compiles, and removed with the session.
_JAX_CACHE = tempfile.mkdtemp(prefix="gptjax-test-jax-cache-")
atexit.register(shutil.rmtree, _JAX_CACHE, ignore_errors=True)
for key, value in (("jax_compilation_cache_dir", _JAX_CACHE), ("jax_persistent_cache_min_compile_time_secs", 0),
                   ("jax_persistent_cache_min_entry_size_bytes", 0)):
    jax.config.update(key, value)
    os.environ[key.upper()] = str(value)


@pytest.fixture(scope="session", autouse=True)
def data_cache(tmp_path_factory):
    # Tokenized data is shared across the session (and with subprocesses) but never
    # touches the user's ~/.cache; wandb stays offline and local.
    cache = tmp_path_factory.mktemp("gptjax-cache")
    os.environ["GPTJAX_CACHE"] = str(cache)
    os.environ["WANDB_MODE"] = "offline"
    os.environ["WANDB_SILENT"] = "true"
    return cache


@pytest.fixture
def tiny(tmp_path):
    """The tiny preset, writing to a fresh run directory."""
    def make(*overrides: str) -> config.Config:
        return config.load("tiny", [f"run.out_dir={tmp_path / 'run'}", *overrides])
    return make


def run_script(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run train.py / sample.py as a user would, in a clean process."""
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
