"""CPU cores as devices, opt-in: one device by default; with JAX_NUM_CPU_DEVICES the default
mesh takes the most cores the batch divides, and a count forced in XLA_FLAGS must fit."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, run_script

pytestmark = pytest.mark.slow  # every test here starts fresh processes: device counts are fixed at JAX start-up

MESH_SIZES = """
import json, jax
from gptjax import sharding
from gptjax.config import MeshConfig
print(json.dumps({"devices": jax.device_count(),
                  "default": [len(sharding.mesh_devices(MeshConfig(), rows)) for rows in (1, 2, 3, 4, 6, 12)],
                  "explicit": len(sharding.mesh_devices(MeshConfig(data=1, fsdp=-1), 1))}))
"""


def mesh_sizes(**env: str) -> dict:
    env = {**{k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}, **env}
    out = subprocess.run([sys.executable, "-c", MESH_SIZES], capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_one_device_unless_the_cores_are_split():
    assert mesh_sizes() == {"devices": 1, "default": [1] * 6, "explicit": 1}


def test_split_cores_follow_the_batch_and_forced_counts_keep_every_device():
    # The most of the 4 cores whose count divides the rows; an explicit mesh asks for all of them.
    assert mesh_sizes(JAX_NUM_CPU_DEVICES="4") == {"devices": 4, "default": [1, 2, 3, 4, 3, 4], "explicit": 4}
    forced = mesh_sizes(XLA_FLAGS="--xla_force_host_platform_device_count=4")
    assert forced == {"devices": 4, "default": [4] * 6, "explicit": 4}  # must fit: make_mesh says so if not


def test_train_runs_a_batch_the_split_cores_do_not_divide(tmp_path):
    result = run_script("train.py", "tiny", f"run.out_dir={tmp_path / 'run'}", "train.batch_size=3",
                        "train.steps=2", "train.eval_every=2", "train.eval_batches=1", JAX_NUM_CPU_DEVICES="2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "done: step 2" in result.stdout
