"""Shared fixtures: a session-wide data cache, tiny configs in temporary run directories."""

import atexit
import contextlib
import functools
import importlib.util
import io
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import pytest

from gptjax import config
from gptjax.runtime import CPU_FLAGS, with_flags

ROOT = Path(__file__).resolve().parent.parent

# One compilation cache for the session, shared by the tests, the CLI processes they start
# and pytest-xdist's workers (which inherit it from the process that started them): the
# tiny preset's step then compiles once, not once per test and per process. It is set
# before any test compiles, and removed with the session by the process that made it.
_JAX_CACHE = os.environ.get("GPTJAX_TEST_JAX_CACHE")
if _JAX_CACHE is None:
    _JAX_CACHE = os.environ["GPTJAX_TEST_JAX_CACHE"] = tempfile.mkdtemp(prefix="gptjax-test-jax-cache-")
    atexit.register(shutil.rmtree, _JAX_CACHE, ignore_errors=True)
for key, value in (("jax_compilation_cache_dir", _JAX_CACHE), ("jax_persistent_cache_min_compile_time_secs", 0),
                   ("jax_persistent_cache_min_entry_size_bytes", 0)):
    jax.config.update(key, value)
    os.environ[key.upper()] = str(value)

# Tests train tiny models, whose time goes to compiling rather than running: XLA's cheapest
# backend optimisation compiles them faster. Set (with the flags the entry points add) before
# JAX starts its backend, so this process, xdist's workers and every CLI process a test starts
# build the same programs, and a run in this process equals a train.py process bit for bit.
FAST_COMPILE = "--xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = with_flags(os.environ.get("XLA_FLAGS", ""), (FAST_COMPILE, *CPU_FLAGS))
# This process keeps one CPU device, whichever test first runs the CLI in it (train.py splits the cores of a
# process whose JAX has not started: gptjax.sharding.split_cores); the processes tests start decide for themselves.
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"] and "JAX_NUM_CPU_DEVICES" not in os.environ:
    jax.config.update("jax_num_cpu_devices", 1)


# The files that take longest, longest first (BENCHMARKS.md, "Test suite"): xdist hands whole
# files to its workers in collection order, so starting with these lets the workers finish
# together instead of one running the last long file alone. The rest keep their order.
LONGEST_FIRST = ("test_modern.py", "test_scale.py", "test_trust.py", "test_trust3.py", "test_sampling.py", "test_sweep.py",
                 "test_model.py", "test_crash.py", "test_train.py", "test_cli.py", "test_seeds.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


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


def run_script(script: str, *args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """Run train.py / sample.py as a user would, in a clean process (`env`: extra variables)."""
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **env})


@functools.cache
def script_module(script: str):
    spec = importlib.util.spec_from_file_location(f"gptjax_script_{Path(script).stem}", ROOT / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_main(main, argv: list[str]) -> subprocess.CompletedProcess:
    """A CLI's main(argv) in this process, its stdout and stderr captured as run_script would see
    them, without starting Python and JAX again: for checks of what a command says, not of how
    a process ends."""
    out, err, hook = io.StringIO(), io.StringIO(), sys.unraisablehook
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as e:  # argparse's exits
                code = e.code
    finally:
        sys.unraisablehook = hook  # run_cli quiets orbax's leftover reads for the process; not for pytest's
    return subprocess.CompletedProcess([main.__module__, *argv], code, out.getvalue(), err.getvalue())


def run_in_process(script: str, *args: str) -> subprocess.CompletedProcess:
    """train.py / sample.py's main() in this process (see run_main)."""
    return run_main(script_module(script).main, list(map(str, args)))
