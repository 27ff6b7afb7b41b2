"""Process set-up: XLA flags never override the user's, and JAX picks up the gptjax compilation cache."""

import os
import subprocess
import sys

from gptjax import runtime


def test_user_flags_win_and_ours_are_added_once():
    given = "--xla_cpu_a=1 --xla_force_host_platform_device_count=2"
    out = runtime.with_flags(given, ("--xla_cpu_a=0", "--xla_cpu_b=true"))
    assert out.split() == ["--xla_cpu_a=1", "--xla_force_host_platform_device_count=2", "--xla_cpu_b=true"]
    assert runtime.with_flags(out, ("--xla_cpu_a=0", "--xla_cpu_b=true")) == out


def test_cache_goes_under_gptjax_cache_unless_the_user_chose_one(monkeypatch, tmp_path):
    monkeypatch.setenv("GPTJAX_CACHE", str(tmp_path))
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # restored after the test
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    runtime.configure(compilation_cache=False)
    assert "JAX_COMPILATION_CACHE_DIR" not in os.environ
    runtime.configure()
    assert os.environ["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "jax")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "mine"))
    runtime.configure()
    assert os.environ["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "mine")


def test_a_configured_process_writes_compiled_programs_to_the_cache(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    code = ("from gptjax import runtime; runtime.configure(); import jax, jax.numpy as jnp; "
            "jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((64, 64))).block_until_ready()")
    # A floor of 0 keeps even this small program, which compiles under configure's 0.1 s on a quiet machine.
    env |= {"GPTJAX_CACHE": str(tmp_path), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    assert any((tmp_path / "jax").iterdir())
