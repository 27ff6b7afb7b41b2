"""Scale-out: meshes agree with one device, FSDP splits weights and Adam moments, checkpoints
move between device counts, and two real processes train as one.

Devices are virtual CPUs (XLA_FLAGS) in subprocesses: this pytest process keeps its single
device, as train.py has by default, for the other tests. Independent subprocesses run two at
a time (the CPU has 2 cores).
"""

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from gptjax import sharding
from gptjax.train.tracking import read_metrics
from tests.conftest import FAST_COMPILE, ROOT
from tests.multidevice_worker import COMMON, SAVE_AT, STEPS

TIMEOUT = 240


def start(args: list[str], devices: int, **env: str) -> subprocess.Popen:
    inherited = {k: v for k, v in os.environ.items() if k not in sharding.COORDINATOR_ENV}
    env = {**inherited, "PYTHONUNBUFFERED": "1", **env,
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}"}
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, text=True, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(*procs: subprocess.Popen, timeout: float = TIMEOUT) -> list[str]:
    """Every process's stdout once all exit 0; a hang or failure kills them all and fails the test."""
    deadline, outputs = time.monotonic() + timeout, []
    try:
        for p in procs:
            out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            assert p.returncode == 0, f"{p.args} exited {p.returncode}:\n{err[-3000:]}"
            outputs.append(out)
    except subprocess.TimeoutExpired:
        pytest.fail(f"subprocesses still running after {timeout}s: {[p.args for p in procs]}")
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)  # its own session: the worker and anything it started
                p.wait()
    return outputs


def worker(run_dir, *meshes: str) -> subprocess.Popen:
    return start(["-m", "tests.multidevice_worker", str(run_dir), *meshes], devices=8)


def train(run_dir, devices: int, *overrides: str, **env: str) -> subprocess.Popen:
    return start([str(ROOT / "train.py"), "tiny", f"run.out_dir={run_dir}", *COMMON, *overrides], devices, **env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers are not listeners
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def two_processes(run_dir, *overrides: str, port: int | None = None) -> list[subprocess.Popen]:
    """One run as two processes of 2 devices each, joined by jax.distributed on loopback."""
    env = {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port or free_port()}", "JAX_NUM_PROCESSES": "2"}
    return [train(run_dir, 2, "mesh.data=2", "mesh.fsdp=2", *overrides, **env, JAX_PROCESS_ID=str(i)) for i in range(2)]


@pytest.fixture(scope="module")
def eight(tmp_path_factory):
    """Reports of the worker on 8 devices; its run dir holds a checkpoint written by all 8."""
    tmp = tmp_path_factory.mktemp("eight")
    outs = finish(worker(tmp / "saved_on_8", "one_device", "data8", "fsdp8"),
                  worker(tmp / "unused", "data2_fsdp4", "four_devices"))
    first, second = (json.loads(out.strip().splitlines()[-1]) for out in outs)
    assert first["devices"] == second["devices"] == 8
    return {**first, "losses": {**first["losses"], **second["losses"]}, "run_dir": tmp / "saved_on_8"}


@pytest.mark.slow  # fresh processes on 2 to 8 CPU devices
def test_every_mesh_gives_the_one_device_losses(eight):
    losses = eight["losses"]
    one = np.asarray(losses["one_device"])
    assert len(one) == STEPS and one[-1] < one[0] - 0.2  # it really trains
    for mesh in ("data8", "fsdp8", "data2_fsdp4", "four_devices"):
        np.testing.assert_allclose(losses[mesh], one, rtol=0, atol=1e-5, err_msg=mesh)


@pytest.mark.slow  # fresh processes on 2 to 8 CPU devices
def test_fsdp8_holds_an_eighth_of_every_weight_and_adam_moment_per_device(eight):
    trees = eight["fsdp8"]
    assert trees["mu"].keys() == trees["nu"].keys() == trees["params"].keys()
    for name, tree in trees.items():
        weights = {path: leaf for path, leaf in tree.items() if math.prod(leaf["shape"]) >= 32 * 32}  # >= D²
        # wte, wpe, and per layer W_Q, W_K, W_V, W_O, W_up, W_down
        assert len(weights) == 2 + 6 * 2, (name, sorted(weights))
        for path, leaf in weights.items():
            assert leaf["devices"] == 8 and leaf["distinct_shards"] == 8, (name, path, leaf)
            [shard] = leaf["shard_shapes"]
            assert math.prod(shard) * 8 == math.prod(leaf["shape"]), (name, path, leaf)
            assert "fsdp" in leaf["spec"], (name, path, leaf)
        # What stays whole on every device (biases over heads or the MLP width) is a sliver.
        whole = sum(math.prod(leaf["shape"]) for leaf in tree.values() if leaf["distinct_shards"] == 1)
        assert whole < 0.03 * sum(math.prod(leaf["shape"]) for leaf in tree.values()), name


@pytest.mark.slow  # fresh processes on 2 to 8 CPU devices
def test_batch_that_does_not_split_over_the_devices_is_one_clear_error(eight):
    assert eight["batch_error"] == ("micro-batch of 12 sequences (train.batch_size / train.grad_accum) does not "
                                    "split over 8 devices; make it a multiple of 8")


@pytest.mark.slow  # fresh processes on 2 to 8 CPU devices
def test_two_processes_on_loopback_match_one_process_on_four_devices(eight, tmp_path):
    port, run, steps = free_port(), tmp_path / "two", 3
    outs = finish(*two_processes(run, f"train.steps={steps}", port=port))
    rows = read_metrics(run)  # row k: batch k's loss at the parameters after k updates (the last measured alone)
    assert [r["step"] for r in rows] == list(range(steps + 1))  # one writer: no line twice
    np.testing.assert_allclose([r["train_loss"] for r in rows], eight["losses"]["four_devices"][:steps + 1],
                               rtol=0, atol=1e-5)
    assert "done: step 3" in outs[0] and "done" not in outs[1]  # only process 0 reports
    assert (run / "checkpoints" / str(steps) / "commit_success.txt").is_file()  # the collective save completed
    assert port_is_free(port)


@pytest.mark.slow  # fresh processes on 2 to 8 CPU devices
def test_checkpoint_saved_on_8_devices_resumes_on_1_and_on_4(eight, tmp_path):
    # 4 devices as 2 processes x 2: the restore onto a new mesh is collective too.
    runs = {1: tmp_path / "on_1", 4: tmp_path / "on_4"}
    for run in runs.values():
        shutil.copytree(eight["run_dir"], run)
    finish(train(runs[1], 1, "mesh.data=1", "mesh.fsdp=1", f"train.steps={STEPS}"),
           *two_processes(runs[4], f"train.steps={STEPS}"))
    uninterrupted = eight["losses"]["fsdp8"][SAVE_AT:]
    for devices, run in runs.items():
        rows = read_metrics(run)  # row k: the update from the parameters after k updates, the checkpoint's first
        assert [r["step"] for r in rows] == list(range(SAVE_AT, STEPS + 1)), devices  # resumed, not restarted
        np.testing.assert_allclose([r["train_loss"] for r in rows[:-1]], uninterrupted, rtol=0, atol=1e-5,
                                   err_msg=f"resumed on {devices} devices")


def test_multi_host_variables_must_come_together_and_one_host_needs_none(monkeypatch):
    for name in (*sharding.COORDINATOR_ENV, "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES"):
        monkeypatch.delenv(name, raising=False)
    assert sharding.initialize_distributed() is False  # a single host: nothing to join
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1234")
    monkeypatch.setenv("JAX_PROCESS_ID", "0")
    with pytest.raises(sharding.MeshError, match="JAX_NUM_PROCESSES missing or not a number"):
        sharding.initialize_distributed()
