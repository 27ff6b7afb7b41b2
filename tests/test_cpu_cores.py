"""CPU cores as devices: train.py splits the cores, the batch decides how many a run uses,
and a device count the user asked for is kept and must fit."""

import os
import subprocess
import sys

import jax

from gptjax import sharding
from gptjax.config import MeshConfig
from tests.conftest import ROOT, run_in_process

CORES = sharding.cpu_cores()
COUNT = "from gptjax import sharding; sharding.use_cpu_cores(); import jax; print(jax.device_count())"


def device_count(xla_flags: str, **env: str) -> int:
    env = {**os.environ, "XLA_FLAGS": xla_flags, **env}
    out = subprocess.run([sys.executable, "-c", COUNT], capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    return int(out.stdout.strip())


def test_every_core_is_a_device_unless_the_user_set_a_count():
    assert device_count("") == CORES
    assert device_count("--xla_force_host_platform_device_count=3") == 3
    assert device_count("", JAX_NUM_CPU_DEVICES="3") == 3


def test_split_cores_follow_the_batch_and_explicit_meshes_keep_every_device():
    assert jax.device_count() == CORES  # conftest split them, as train.py does
    for rows in (1, 2, 3, 4, 6, 12):
        used = len(sharding.mesh_devices(MeshConfig(), rows))
        assert rows % used == 0 and used <= CORES
        assert not any(rows % n == 0 for n in range(used + 1, CORES + 1))  # the most cores that fit
    assert len(sharding.mesh_devices(MeshConfig(), 1)) == 1
    assert len(sharding.mesh_devices(MeshConfig(data=1, fsdp=-1), 1)) == CORES  # asked for: all, or an error later


def test_train_runs_a_batch_the_cores_do_not_divide(tmp_path):
    result = run_in_process("train.py", "tiny", f"run.out_dir={tmp_path / 'run'}", "train.batch_size=3",
                        "train.steps=2", "train.eval_every=2", "train.eval_batches=1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "done: step 2" in result.stdout
