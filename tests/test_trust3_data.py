"""Data you can trust (issue #28): the token cache is pinned by content and checked at every open, a damaged
one is rebuilt, a cache that cannot be written is one line, hostile files (FIFOs, depth and alias bombs)
are refused at once, and Ctrl-C or a script without a __main__ guard never leaves preparation running.
"""

import contextlib
import gc
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gptjax import config, data
from gptjax.ablate import grid
from gptjax.config import DataConfig
from gptjax.data import DataError, digests, pipeline, sources
from gptjax.data import tokenizer as tokenizers
from gptjax.interop import convert
from gptjax.interop.hf import ConvertError
from gptjax.train import runs
from gptjax.yaml_io import YAMLBoundsError
from tests.conftest import ROOT, run_in_process
from tests.test_convert import SHAPE, write_hf_folder

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 60


class Blocked(BaseException):
    """Not an OSError (as TimeoutError is), which the code under test might catch and go on."""


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail, rather than hang the suite, if the body blocks (as a read of a FIFO does)."""
    def expire(*_):
        raise Blocked(f"blocked for over {seconds} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def mounted(folder: Path, *options: str):
    """A small tmpfs at `folder` (root only: skips elsewhere); `remount(...)` changes its options."""
    folder.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options or ("size=4m",)), "tmpfs", str(folder)],
                      capture_output=True).returncode:
        pytest.skip("needs root to mount a tmpfs")
    try:
        yield lambda *opts: subprocess.run(["mount", "-o", ",".join(("remount", *opts)), str(folder)], check=True)
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def corpus(tmp_path: Path, text: str = TEXT) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(text)
    return path


def entry(cache: Path) -> Path:
    (folder,) = [p for p in (cache / "data").iterdir() if not p.name.startswith(".")]
    return folder


# ---------------------------------------------------------------------------
# The token cache: checked at open, rebuilt when damaged

def overwrite_middle(folder):  # same size, other ids: only the fingerprint tells
    with open(folder / "train.bin", "r+b") as f:
        f.seek(1000)
        f.write(bytes(100))


DAMAGE = {
    "train.bin truncated": (lambda f: os.truncate(f / "train.bin", 4000), "train.bin has 4000 bytes"),
    "val.bin empty": (lambda f: os.truncate(f / "val.bin", 0), "val.bin has 0 bytes"),
    "train.bin overwritten": (overwrite_middle, "train.bin does not match its fingerprint"),
    "no meta.json": (lambda f: (f / "meta.json").unlink(), "no meta.json"),
    "meta.json truncated": (lambda f: os.truncate(f / "meta.json", 20), "meta.json cannot be read"),
    "val.bin a FIFO": (lambda f: ((f / "val.bin").unlink(), os.mkfifo(f / "val.bin")),
                       "val.bin is missing or not a regular file"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_cache_entry_is_rebuilt_with_a_line_saying_so(tmp_path, damage):
    cfg = DataConfig(source=str(corpus(tmp_path)), cache_dir=str(tmp_path / "cache"))
    first = data.prepare(cfg)
    train, val = np.array(first.train), np.array(first.val)
    do, why = DAMAGE[damage]
    do(entry(tmp_path / "cache"))
    reports = []
    with deadline(60):
        again = data.prepare(cfg, progress=reports.append)
    np.testing.assert_array_equal(again.train, train)  # never trained on what is left
    np.testing.assert_array_equal(again.val, val)
    notes = [p.line() for p in reports if p.stage == "note"]
    assert len(notes) == 1 and "is damaged (" in notes[0] and why in notes[0] and "rebuilding it" in notes[0], notes
    assert [p.name for p in (tmp_path / "cache" / "data").iterdir()] == [entry(tmp_path / "cache").name]
    reports.clear()
    data.prepare(cfg, progress=reports.append)
    assert not reports  # now intact: opened, not rebuilt


def test_the_cache_is_keyed_by_content_and_hashes_a_file_only_when_its_stat_changes(tmp_path, monkeypatch):
    path = corpus(tmp_path)
    cfg = DataConfig(source=str(path), cache_dir=str(tmp_path / "cache"))
    first = data.prepare(cfg)
    hashed = []
    real = digests._hash
    monkeypatch.setattr(digests, "_hash", lambda p, report: hashed.append(p) or real(p, report))
    data.prepare(cfg)
    assert hashed == []  # the stat is unchanged: the remembered digest stands
    os.utime(path, ns=(1, 1))  # touch
    assert data.prepare(cfg).meta["source_sha256"] == first.meta["source_sha256"] and hashed == [path]
    copy = tmp_path / "elsewhere" / "copy.txt"  # cp without -p: another path, inode and mtime
    copy.parent.mkdir()
    shutil.copyfile(path, copy)
    moved = data.prepare(DataConfig(source=str(copy), cache_dir=str(tmp_path / "cache")))
    np.testing.assert_array_equal(moved.train, first.train)
    assert len(list((tmp_path / "cache" / "data").iterdir())) == 1  # the same entry: not tokenized again
    copy.write_text(TEXT.replace("question", "Question"))  # same size, other content
    os.utime(copy, ns=(1, 1))
    assert data.prepare(DataConfig(source=str(copy), cache_dir=str(tmp_path / "cache"))).meta["source_sha256"] \
        != first.meta["source_sha256"]


def fake_run(tmp_path: Path, source: Path | None = None) -> tuple[Path, config.Config, data.Dataset]:
    """A run directory as train.py leaves it once it has saved (the files, a checkpoint folder), without training."""
    run = tmp_path / "run"
    overrides = [f"run.out_dir={run}", f"data.cache_dir={tmp_path / 'cache'}"]
    cfg = config.load("tiny", overrides + ([f"data.source={source}"] if source else []))
    ds = data.prepare(cfg.data)
    runs.write_run_files(run, cfg.resolve_vocab(ds.vocab_size), ds.tokenizer, ds.meta.get("source_sha256"))
    (run / "checkpoints" / "2").mkdir(parents=True)
    return run, cfg.resolve_vocab(ds.vocab_size), ds


def test_a_resumed_run_accepts_its_data_touched_or_copied_to_a_new_node(tmp_path):
    path = corpus(tmp_path)
    run, cfg, ds = fake_run(tmp_path, path)
    os.utime(path)  # touch
    assert runs.check_run_dir(cfg, data.prepare(cfg.data)) == run
    shutil.copyfile(path, tmp_path / "copy.txt")  # cp without -p, then over the original: a new inode
    os.replace(tmp_path / "copy.txt", path)
    assert runs.check_run_dir(cfg, data.prepare(cfg.data)) == run
    assert len(list((tmp_path / "cache" / "data").iterdir())) == 1  # nor tokenized again
    assert json.loads((run / "inputs.json").read_text())["data_sha256"] == ds.meta["source_sha256"]
    path.write_text(TEXT.replace("question", "Question"))  # same length, other content
    with pytest.raises(runs.RunError, match=r"was trained on other data .* \(its content changed"):
        runs.check_run_dir(cfg, data.prepare(cfg.data))


def test_a_run_pinned_by_mtime_before_resumes_while_its_stat_holds_and_says_what_to_do_after(tmp_path):
    path = corpus(tmp_path)
    run, cfg, ds = fake_run(tmp_path, path)
    old = runs.inputs(None, ds.tokenizer)
    del old["data_sha256"]
    (run / "inputs.json").write_text(json.dumps({**old, "data": sources.stat_identity(sources.resolve(str(path)))}))
    assert runs.check_run_dir(cfg, ds) == run
    os.utime(path, ns=(1, 1))
    with pytest.raises(runs.RunError, match=f"started by an older gptjax, which pinned data.source={path} by "
                                            f"modification time, and that changed since; if the content is the "
                                            f"same, delete {run}/inputs.json"):
        runs.check_run_dir(cfg, ds)
    (run / "inputs.json").unlink()
    assert runs.check_run_dir(cfg, ds) == run


def test_a_cache_that_cannot_be_written_is_one_line(tmp_path, monkeypatch):
    path = corpus(tmp_path)
    monkeypatch.delenv("GPTJAX_CACHE")
    (tmp_path / "home_file").write_text("x")
    for home, why in ((tmp_path / "home_file", "Not a directory"), ("", "HOME is empty")):
        monkeypatch.setenv("HOME", str(home))
        with pytest.raises(DataError, match=why):
            data.prepare(DataConfig(source=str(path)))
    with mounted(tmp_path / "full", "size=64k"):
        full = f"cannot write the token cache in {tmp_path / 'full'}: No space left on device; free some space"
        with pytest.raises(DataError, match=full):
            data.prepare(DataConfig(source=str(corpus(tmp_path, TEXT * 20)), cache_dir=str(tmp_path / "full")))
        assert not list((tmp_path / "full" / "data").iterdir())  # the scratch is gone too


def test_a_read_only_cache_serves_what_it_holds_and_refuses_a_build_in_one_line(tmp_path, monkeypatch):
    path = corpus(tmp_path)
    with mounted(tmp_path / "home") as remount:
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        monkeypatch.delenv("GPTJAX_CACHE")
        built = data.prepare(DataConfig(source=str(path)))
        remount("ro")
        np.testing.assert_array_equal(data.prepare(DataConfig(source=str(path))).train, built.train)
        with pytest.raises(DataError, match="cannot write the token cache in .*: Read-only file system; set "
                                            "data.cache_dir \\(or GPTJAX_CACHE\\) to a folder you can write"):
            data.prepare(DataConfig(source=str(path), tokenizer="gpt2"))


# ---------------------------------------------------------------------------
# Hostile files: a FIFO, 20,000 nested `[`, an alias bomb; each refused at once in one line

def fifo(path: Path) -> None:
    path.unlink(missing_ok=True)
    os.mkfifo(path)


def deep(path: Path) -> None:
    path.write_text("[" * 20_000)


@pytest.mark.parametrize("plant, says", [(fifo, "is a FIFO (named pipe), not a regular file"),
                                         (deep, "is nested deeper than 32 levels")], ids=["fifo", "depth"])
def test_hostile_run_and_model_files_are_refused_at_once(tmp_path, plant, says):
    run, _, _ = fake_run(tmp_path)
    with deadline(60):
        plant(run / "inputs.json")  # train.py resuming the run reads it
        result = run_in_process("train.py", "tiny", f"run.out_dir={run}", f"data.cache_dir={tmp_path / 'cache'}")
        assert result.returncode == 2 and says in result.stderr.strip().splitlines()[-1], result.stderr
        plant(run / "tokenizer.json")  # sample.py reads it
        result = run_in_process("sample.py", str(run))
        assert result.returncode == 2 and says in result.stderr.strip().splitlines()[-1], result.stderr
        hf = write_hf_folder(tmp_path / "hf", **SHAPE)
        plant(hf / "config.json")
        with pytest.raises(ConvertError, match=re.escape(says)):
            convert.from_hf(str(hf), tmp_path / "converted")
        with pytest.raises(tokenizers.TokenizerError, match=re.escape(says)):
            tokenizers.load(run / "tokenizer.json")


def test_a_config_of_20000_brackets_is_one_line(tmp_path):
    deep(tmp_path / "deep.yaml")
    with deadline(60):
        result = run_in_process("train.py", str(tmp_path / "deep.yaml"), f"run.out_dir={tmp_path / 'run'}")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"error: config file {tmp_path / 'deep.yaml'} is nested deeper "
                                                  f"than 32 levels; a config or sweep file sets a few dozen keys, "
                                                  f"give the right file"]
    with pytest.raises(config.ConfigError, match="override model.n_layer=... is nested deeper than 32 levels"):
        config.load("tiny", ["model.n_layer=" + "[" * 200 + "]" * 200])  # a command line is YAML too


def test_a_sweep_file_alias_bomb_is_refused_before_it_expands(tmp_path):
    # 524 bytes that expand to 10^9 values: under grid:, every point's config would be copied from them.
    levels = ["&a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"] + [f"&a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    (tmp_path / "bomb.yaml").write_text("base: tiny\ngrid:\n  model.n_layer: [" + ", ".join(levels) + "]\n")
    with deadline(60), pytest.raises(YAMLBoundsError, match="holds over 10000 values"):
        grid.make_spec(str(tmp_path / "bomb.yaml"), [], None, None, None)


# ---------------------------------------------------------------------------
# Stopping: Ctrl-C during preparation, and spawn workers that re-run the user's script

def gpt2_corpus(tmp_path: Path) -> Path:
    return corpus(tmp_path, " ".join(f"word{i % 97} of the play," for i in range(4000)))  # ~80 KB: many chunks


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowing itself
def test_ctrl_c_that_python_swallows_still_stops_the_run(tmp_path, monkeypatch):
    # A SIGINT that lands while a gc callback runs (JAX has one) raises inside it, and Python only prints
    # "Exception ignored in: ..."; raise_signal makes that moment certain, during a parallel preparation.
    fired, write = [], pipeline.Splits.write

    def swallow(phase, _info):
        if phase == "start":
            signal.raise_signal(signal.SIGINT)

    def write_then_interrupt(self, enc):
        write(self, enc)
        if not fired:
            fired.append(True)
            gc.callbacks.append(swallow)
            try:
                gc.collect()
            finally:
                gc.callbacks.remove(swallow)

    monkeypatch.setattr(pipeline.Splits, "write", write_then_interrupt)
    # A train.py process starts with Python's own SIGINT handler, the one KeptInterrupt replaces (it leaves a
    # caller's handler alone); a test worker's may be another, so the run here gets Python's, as a process would.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        result = run_in_process("train.py", "tiny", f"data.source={gpt2_corpus(tmp_path)}", "data.tokenizer=gpt2",
                            "data.num_proc=2", "data.chunk_chars=4096", f"data.cache_dir={tmp_path / 'cache'}",
                                "train.steps=2", f"run.out_dir={tmp_path / 'run'}")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert fired and result.returncode == 130, result.stderr
    assert "interrupted; nothing new was saved" in result.stderr and not (tmp_path / "run").exists()


SCRIPT = """
import gptjax

cfg = gptjax.load_config("tiny", "data.source={source}", "data.tokenizer=gpt2", "data.num_proc=2",
                         "data.chunk_chars=4096", "data.cache_dir={cache}", "train.steps=1", "run.out_dir={run}")
gptjax.fit(cfg)
"""


@pytest.mark.slow  # a script in a fresh process, and its two spawned workers
def test_a_script_without_a_main_guard_stops_with_a_line_saying_to_add_one(tmp_path):
    script = tmp_path / "notebook.py"
    script.write_text(SCRIPT.format(source=gpt2_corpus(tmp_path), cache=tmp_path / "cache", run=tmp_path / "run"))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("gptjax.data.sources.DataError: data preparation's worker processes stopped: each "
                           f"starts by running {script} again") and 'if __name__ == "__main__":' in last, last
    assert result.stderr.count("Traceback") == 1  # the parent's; the workers leave quietly
