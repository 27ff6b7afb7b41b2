"""Runs that share a folder, get preempted, fill the disk or meet a hostile file lose nothing (issue #20).

The lock, the save on SIGTERM and the full disk run real training processes; the rest call the
same code in this process.
"""

import errno
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gptjax import config
from gptjax.ablate import sweep
from gptjax.interop import convert
from gptjax.look import cli as inspect_cli
from gptjax.train import runs, trainer
from gptjax.train.checkpoint import Checkpoints
from gptjax.train.tracking import Tracker, read_metrics
from tests.conftest import ROOT, run_in_process, run_main
from tests.test_bad_input import snapshot
from tests.test_convert import write_hf_folder
from tests.test_inspect import run_dir  # noqa: F401 (a fixture: a run of a hand-set model)

LONG = ["tiny", "train.steps=100000", "train.eval_every=100000", "train.log_every=1"]


def start(run: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *LONG, *args, f"run.out_dir={run}"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(proc: subprocess.Popen, ready, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"training ended or stalled first: {proc.communicate()[1][-2000:]}")
        time.sleep(0.05)


def error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert lines[-1].startswith("error: ") and sum(line.startswith("error: ") for line in lines) == 1, result.stderr
    return lines[-1]


def test_second_trainer_is_refused_and_sigterm_saves_then_resumes(tmp_path):
    run = tmp_path / "run"
    first = start(run)
    try:
        wait_for(first, lambda: len(read_metrics(run)) >= 3)
        second = run_in_process("train.py", *LONG, f"run.out_dir={run}")  # another process: the lock tells
        assert re.search(f"{run} is in use by another training run \\(pid {first.pid} on .*\\); wait for it",
                         error_line(second))
        assert first.poll() is None  # the first trains on, its metrics untouched
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 128 + signal.SIGTERM, err
    saved = re.fullmatch(r"interrupted: saved step (\d+); re-run the same command to resume from step \1",
                         err.strip().splitlines()[-1])
    assert saved, err
    step = int(saved[1])
    with Checkpoints(run, read_only=True) as ckpts:
        assert ckpts.latest_step() == step and step > len(read_metrics(run)) - 3
    runs.lock(run).close()  # the OS released the lock with the process
    again = run_in_process("train.py", *LONG, f"train.steps={step + 1}", f"run.out_dir={run}")
    assert again.returncode == 0 and f"resuming from step {step} of {step + 1}" in again.stdout, again.stderr
    assert [r["step"] for r in read_metrics(run)] == list(range(step + 2))


def test_a_second_signal_exits_at_once():
    script = ("import os, signal, time\nfrom gptjax.train.stopping import StopRequests\n"
              "with StopRequests() as stop:\n"
              "    os.kill(os.getpid(), signal.SIGTERM); time.sleep(0.2); assert stop.signum == signal.SIGTERM\n"
              "    os.kill(os.getpid(), signal.SIGINT); time.sleep(10)\nprint('still running')")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 128 + signal.SIGINT and "still running" not in result.stdout, result.stderr
    assert "SIGINT again: exiting now" in result.stderr


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def fill(path: Path) -> None:
    """Write zeros to `path` until its disk refuses more (the run's own saves race for the same space)."""
    try:
        with path.open("wb", buffering=0) as f:
            while True:
                f.write(bytes(64 * 1024))
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise


def test_disk_filling_mid_run_is_one_line_and_a_rerun_resumes(small_disk):
    run = small_disk / "run"
    proc = start(run, "train.checkpoint_every=2")
    wait_for(proc, lambda: (run / "checkpoints" / "4").is_dir())
    fill(small_disk / "filler")  # someone else fills the disk
    out, err = proc.communicate(timeout=120)
    line = error_line(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    assert re.search(r"cannot write (checkpoints )?in .*(no space left on device|No space left on device); "
                     r"the checkpoints already saved are intact: free some space and re-run", line), line
    said = [line for line in err.strip().splitlines() if not line.startswith("data: ")]  # a cold cache's progress
    assert len(said) <= 2, err  # no pages of orbax tracebacks
    with Checkpoints(run, read_only=True) as ckpts:
        step = ckpts.latest_step()
    assert step >= 4
    (small_disk / "filler").unlink(missing_ok=True)
    again = run_in_process("train.py", *LONG, f"train.steps={step + 1}", "train.checkpoint_every=2",
                           f"run.out_dir={run}")
    assert again.returncode == 0 and f"resuming from step {step} of {step + 1}" in again.stdout, again.stderr


def test_resume_refuses_data_edited_in_place(tmp_path):
    corpus, run = tmp_path / "corpus.txt", tmp_path / "run"
    corpus.write_text("To be, or not to be, that is the question.\n" * 30)
    args = ["train.py", "tiny", f"data.source={corpus}", "train.steps=2", "train.eval_every=2", f"run.out_dir={run}"]
    assert run_in_process(*args).returncode == 0
    corpus.write_text("To be, or not to be: that is the question!\n" * 30)  # same length, other ids
    before = snapshot(run)
    line = error_line(run_in_process(*args))
    assert f"{run} was trained on other data than data.source={corpus} now holds" in line
    assert snapshot(run) == before


def test_a_folder_with_no_checkpoint_pins_nothing(tmp_path):
    run = tmp_path / "run"
    cfg = config.load("tiny", [f"run.out_dir={run}"])
    runs.write_run_files(run, cfg.replace(model={"n_vocab": 65}), trainer.data.prepare(cfg.data).tokenizer)
    assert runs.check_run_dir(cfg.replace(model={"n_layer": 3})) == run  # a start killed before any save


def test_skipped_updates_in_a_row_are_capped(tmp_path):
    result = run_in_process("train.py", "tiny", "train.lr=1e39", "train.on_nonfinite=skip", "train.max_skips=3",
                            "train.log_every=1", f"run.out_dir={tmp_path / 'run'}")
    assert "4 updates in a row skipped up to step 4 (train.max_skips=3); training stopped and no checkpoint " \
           "was saved" in error_line(result)


def test_wandb_online_without_a_key_logs_offline_at_once(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    (tmp_path / "netrc").write_text("")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    cfg = config.load("tiny", [f"run.out_dir={tmp_path / 'run'}", "run.wandb=online"])
    (tmp_path / "run").mkdir()
    began = time.monotonic()
    Tracker(tmp_path / "run", cfg, 0, 10).close()
    assert time.monotonic() - began < 60  # wandb.init online with no network waits far longer
    assert "run.wandb=online but no wandb API key is set" in capsys.readouterr().out
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))


@pytest.mark.parametrize("weight_map, message", [
    (None, 'has no "weight_map" of tensor names to shard files'),
    ({"transformer.wte.weight": "../outside/model.safetensors"}, "names a shard outside"),
    ({"transformer.wte.weight": "/etc/passwd"}, "names a shard outside"),
])
def test_shard_index_is_checked_and_never_leaves_the_folder(tmp_path, weight_map, message):
    src = write_hf_folder(tmp_path / "src", n_layer=1, n_head=2, n_embd=8, vocab_size=11, n_positions=16)
    (tmp_path / "outside").mkdir()
    shutil.move(src / "model.safetensors", tmp_path / "outside" / "model.safetensors")
    index = {"metadata": {}} if weight_map is None else {"weight_map": weight_map}
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    result = run_main(convert.main, ["from-hf", str(src), str(tmp_path / "run")])
    assert message in error_line(result)
    assert not (tmp_path / "run").exists()


def test_sweep_counts_the_wall_time_of_a_killed_session_and_locks_its_out(tmp_path, monkeypatch):
    run = tmp_path / "point" / "seed=0"
    run.mkdir(parents=True)
    monkeypatch.setattr(sweep.WallClock, "EVERY_S", 0.05)
    clock = sweep.WallClock(run).__enter__()
    time.sleep(0.5)
    clock.done.set()  # as if killed here: __exit__ never runs
    clock.thread.join()
    killed = json.loads((run / "wall_time.json").read_text())
    assert killed["sessions"] == 1 and 0.3 < killed["wall_s"] < 1.5
    with sweep.WallClock(run):
        time.sleep(0.1)
    assert json.loads((run / "wall_time.json").read_text())["wall_s"] > killed["wall_s"] + 0.05
    with runs.lock(tmp_path, "sweep"):
        result = run_main(sweep.main, ["tiny", "model.n_layer=1,2", "--out", str(tmp_path)])
    assert f"{tmp_path} is in use by another sweep (pid" in error_line(result)


def test_inspect_refuses_a_tokenizer_the_run_was_not_trained_with(run_dir, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    shutil.copytree(run_dir[0], run)
    (run / "tokenizer.json").write_text(json.dumps({"kind": "char", "chars": list("KMWQXYZ!")}))  # same size
    before = snapshot(run)
    line = error_line(run_main(inspect_cli.main, ["next", str(run)]))
    assert f"{run / 'tokenizer.json'} is not the tokenizer the run was trained with" in line
    assert snapshot(run) == before
