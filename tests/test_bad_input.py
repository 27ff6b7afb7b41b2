"""Every bad input, through the real CLIs: one `error:` line, exit code 2, no traceback, run directory untouched.

Each case gets its own copy of a trained run, so the cases are independent. A few of every
kind go through a fresh Python process, for what only a whole process shows (its exit code,
what it prints as it shuts down); the rest call the same main() in this process, which saves
starting Python and JAX thirty times.
"""

import json
import os
import pickle
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gptjax import config
from gptjax.train import trainer
from gptjax.train.checkpoint import Checkpoints
from tests.conftest import run_in_process, run_script


def largest_file(run: Path, step: int, item: str = "params") -> Path:
    return max((run / "checkpoints" / str(step) / item).rglob("d/*"), key=lambda p: p.stat().st_size)


def truncate(run, trained):  # a copy cut short, as a full disk or a bad transfer leaves it
    path = largest_file(run, 4)
    path.write_bytes(path.read_bytes()[:1000])


def swap_params(run, trained):  # a botched copy: every file parses, only the checksum tells step 2's weights from 4's
    shutil.rmtree(run / "checkpoints" / "4" / "params")
    shutil.copytree(run / "checkpoints" / "2" / "params", run / "checkpoints" / "4" / "params")


def damage_all(run, trained):
    for step in (2, 4):
        largest_file(run, step, "opt_state").write_bytes(b"not a checkpoint")


def no_checkpoints(run, trained):
    shutil.rmtree(run / "checkpoints")


def unwritable(tmp: Path) -> str:
    if os.geteuid() == 0:  # root writes through any mode bits; /proc refuses everyone
        return "/proc/gptjax-no-such-dir/run"
    (tmp / "ro").mkdir(mode=0o500)
    return str(tmp / "ro" / "run")


def file_parent(tmp: Path) -> str:
    (tmp / "a_file").write_text("x")
    return str(tmp / "a_file" / "run")


def write_tokenizer(content: bytes):
    def damage(run, trained):
        (run / "tokenizer.json").write_bytes(content)
    return damage


def other_inputs(run, trained):  # as if the data file or the fitted tokenizer had changed since the run started
    inputs = json.loads((run / "inputs.json").read_text())
    (run / "inputs.json").write_text(json.dumps({**inputs, "tokenizer_sha256": "0" * 64, "vocab_size": 60}))


def laughs(tmp: Path) -> str:  # nested aliases: 10^9 values once expanded
    rows = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    rows += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    (tmp / "laughs.yaml").write_text("model:\n  " + "\n  ".join(rows) + "\n")
    return str(tmp / "laughs.yaml")


def huge_yaml(tmp: Path) -> str:
    (tmp / "huge.yaml").write_text("train:\n" + "".join(f"  k{i}: {i}\n" for i in range(800_000)))
    return str(tmp / "huge.yaml")


TRAIN = ["train.py", "tiny", "run.out_dir={run}"]
# id -> (command line, expected message, damage done to the run copy first)
CASES = {
    "config file missing": (["train.py", "{tmp}/nope.yaml", "run.out_dir={run}"], "config file '{tmp}/nope.yaml' not found; give a path or one of the presets", None),
    "yaml syntax error": (["train.py", "{tmp}/bad.yaml", "run.out_dir={run}"], "YAML syntax error at line 3", None),
    "unknown key": ([*TRAIN, "model.n_layr=3"], "unknown config key 'model.n_layr'; did you mean model.n_layer?", None),
    "wrong type": ([*TRAIN, "model.n_layer=two"], "bad value for model.n_layer: Value 'two'", None),
    "zero size": ([*TRAIN, "model.n_embd=0"], "model.n_embd must be positive, got 0", None),
    "negative size": ([*TRAIN, "train.batch_size=-4"], "train.batch_size must be positive, got -4", None),
    "n_embd not divisible by n_head": ([*TRAIN, "model.n_head=5"], "model.n_embd=32 is not divisible by model.n_head=5", None),
    "dataset path missing": ([*TRAIN, "data.source={tmp}/missing.txt"], "dataset file '{tmp}/missing.txt' not found", None),
    "empty dataset": ([*TRAIN, "data.source={tmp}/empty.txt"], "dataset '{tmp}/empty.txt' is empty", None),
    "dataset shorter than a window": ([*TRAIN, "data.source={tmp}/short.txt"], "tokens, fewer than model.n_ctx+1=33; use more data or a smaller model.n_ctx", None),
    "data vocabulary above n_vocab": ([*TRAIN, "model.n_vocab=50"], "model.n_vocab=50 is smaller than the data's vocabulary of 65", None),
    "text not utf-8": ([*TRAIN, "data.source={tmp}/latin1.txt"], "is not UTF-8 text", None),
    "jsonl row whose text is a number": ([*TRAIN, "data.source={tmp}/number.jsonl"], "dataset '{tmp}/number.jsonl' row 1: 'text' holds int '1', not text", None),
    "folder with no shards": ([*TRAIN, "data.source={tmp}/no_shards"], "data.source '{tmp}/no_shards' is an empty folder", None),
    "resume with a changed model shape": ([*TRAIN, "model.n_layer=3"], "holds a run trained with model.n_layer=2, but this config says 3", None),
    "resume from damaged checkpoints": (TRAIN, "cannot be restored: .*no checkpoint of this run restores", damage_all),
    "sample a truncated checkpoint": (["sample.py", "{run}"], "checkpoint .*/4 cannot be restored: .*; try --step 2", truncate),
    "sample a corrupt checkpoint": (["sample.py", "{run}"], "checkpoint .*/4 is damaged: its params do not match the checksum", swap_params),
    "run directory with no checkpoint": (["sample.py", "{run}"], "has no checkpoint yet; train it first", no_checkpoints),
    "not a run directory": (["sample.py", "{tmp}"], "is not a run directory", None),
    "temperature below 0": (["sample.py", "{run}", "--temperature", "-0.5"], "--temperature must be >= 0", None),
    "top-k 0": (["sample.py", "{run}", "--top-k", "0"], "--top-k must be between 1 and the vocabulary size 65, got 0", None),
    "top-k above the vocab": (["sample.py", "{run}", "--top-k", "66"], "--top-k must be between 1 and the vocabulary size 65, got 66", None),
    "top-p 0": (["sample.py", "{run}", "--top-p", "0"], "--top-p must be in (0, 1], got 0.0", None),
    "top-p above 1": (["sample.py", "{run}", "--top-p", "1.5"], "--top-p must be in (0, 1], got 1.5", None),
    "prompt outside the char vocabulary": (["sample.py", "{run}", "--prompt", "ROMEO: ✓"], "1 character(s) outside the char vocabulary: '✓'", None),
    "negative max-new-tokens": (["sample.py", "{run}", "--max-new-tokens", "-1"], "--max-new-tokens must be >= 0, got -1", None),
    "bad --step": (["sample.py", "{run}", "--step", "last"], "--step must be latest, best or a step number, got 'last'", None),
    "flag of the wrong type": (["sample.py", "{run}", "--max-new-tokens", "many"], "argument --max-new-tokens: invalid int value: 'many'", None),
    "unwritable out_dir": (["train.py", "tiny", "run.out_dir={unwritable}"], "run directory {unwritable} is not writable", None),
    "out_dir inside a file": (["train.py", "tiny", "run.out_dir={file_parent}"], "{tmp}/a_file is a file, not a folder", None),
    "out_dir a folder that is not a run": (["train.py", "tiny", "run.out_dir={tmp}"], "run.out_dir {tmp} is a folder that is not a gptjax run", None),
    "resume with another tokenizer": (TRAIN, "was trained with another tokenizer than this data gives (vocabulary 60 then, 65 now)", other_inputs),
    "model too big for memory": (["train.py", "tiny", "run.out_dir={tmp}/new", "model.n_layer=100000"], "this run needs about .* per device .*, more than the", None),
    "batch too big for memory": (["train.py", "tiny", "run.out_dir={tmp}/new", "train.batch_size=1000000000"], "this run needs about .* per device .*, more than the", None),
    "yaml with nested aliases": (["train.py", "{laughs}", "run.out_dir={run}"], "holds over 10000 values (with its aliases expanded)", None),
    "yaml of 800k keys": (["train.py", "{huge_yaml}", "run.out_dir={run}"], "is over 64 KiB", None),
    "sample more than memory holds": (["sample.py", "{run}", "--num-samples", "100000000"], "--num-samples 100000000 with --max-new-tokens 500 needs about", None),
    "sample with a tokenizer of another size": (["sample.py", "{run}"], "has a vocabulary of 3, but the run was trained with 65", write_tokenizer(b'{"kind": "char", "chars": ["a", "b", "c"]}')),
    "tokenizer.json of garbage bytes": (["sample.py", "{run}"], "cannot read tokenizer file .*tokenizer.json", write_tokenizer(bytes(range(256)) * 4)),
    "tokenizer.json of wrong types": (["sample.py", "{run}"], "is damaged: char tokenizer's \"chars\" must be a list of distinct single characters", write_tokenizer(b'{"kind": "char", "chars": [1, 2, 3]}')),
    "tokenizer.json with a 10^12 vocabulary": (["sample.py", "{run}"], "ids tokenizer's vocab_size must be an integer in", write_tokenizer(b'{"kind": "ids", "vocab_size": 1000000000000}')),
    "disk too small for the checkpoints": (["train.py", "tiny", "run.out_dir={tmp}/new", "model.n_embd=1024",
                                            "run.keep_checkpoints=100000"], "not enough disk space in {tmp} for this run's checkpoints", None),
}

# One of each kind: config, data, run directory, flags, and a damaged checkpoint, whose failed
# reads orbax leaves to fail again, noisily, as the process exits.
FRESH_PROCESS = {"config file missing", "dataset path missing", "unwritable out_dir", "flag of the wrong type",
                 "sample a truncated checkpoint", "sample a corrupt checkpoint"}


def snapshot(path: Path) -> dict:
    if not path.exists():
        return {}
    return {p: (p.stat().st_mode, p.read_bytes() if p.is_file() else None) for p in [path, *path.rglob("*")]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("bad-input") / "trained"
    trainer.train(config.load("tiny", [f"run.out_dir={run}", "train.steps=4", "train.eval_every=2"]))
    return run


@pytest.fixture(scope="module")
def outcomes(trained, tmp_path_factory):
    def run_case(name):
        args, message, damage = CASES[name]
        tmp = tmp_path_factory.mktemp("case")
        (tmp / "bad.yaml").write_text("model:\n  n_layer: [1,\n")
        (tmp / "empty.txt").write_text("")
        (tmp / "short.txt").write_text("a tiny corpus\n")
        (tmp / "latin1.txt").write_bytes("café olé, " .encode("latin-1") * 100)
        (tmp / "number.jsonl").write_text('{"text": "a row"}\n{"text": 1}\n')
        (tmp / "no_shards").mkdir()
        run = tmp / "run"
        shutil.copytree(trained, run)
        if damage:
            damage(run, trained)
        names = {"tmp": str(tmp), "run": str(run)}
        for key, make in (("unwritable", unwritable), ("file_parent", file_parent), ("laughs", laughs),
                          ("huge_yaml", huge_yaml)):
            if f"{{{key}}}" in " ".join(args):
                names[key] = make(tmp)
        watched = [tmp, *([Path(names["unwritable"])] if "unwritable" in names else [])]
        before = [snapshot(p) for p in watched]
        run = run_script if name in FRESH_PROCESS else run_in_process
        result = run(*[a.format(**names) for a in args])
        return result, message.format(**names), before == [snapshot(p) for p in watched]

    with ThreadPoolExecutor(max_workers=2) as pool:  # the fresh processes start while the rest run here
        started = {name: pool.submit(run_case, name) for name in CASES if name in FRESH_PROCESS}
        here = {name: run_case(name) for name in CASES if name not in FRESH_PROCESS}
        return {name: started[name].result() if name in started else here[name] for name in CASES}


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_clear_line(outcomes, name):
    result, message, unchanged = outcomes[name]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0] == lines[-1], result.stderr
    assert re.search(message if ".*" in message else re.escape(message), errors[0]), errors[0]
    assert unchanged, "the command changed files it should not have touched"


@pytest.mark.slow  # a fresh train.py process
def test_debug_shows_the_traceback():
    result = run_script("train.py", "tiny", "model.n_layr=3", "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr and "ConfigError" in result.stderr


def test_no_load_path_unpickles_or_evaluates(trained, tmp_path, monkeypatch):
    """Configs, token caches, tokenizers and checkpoints are read as data: a pickle call anywhere fails."""
    from gptjax import data
    from gptjax.train import runs

    def refuse(*_, **__):
        raise AssertionError("a load path used pickle")

    class RefusingUnpickler(pickle.Unpickler):
        load = refuse

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", RefusingUnpickler)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("To be, or not to be, that is the question.\n" * 20)
    cfg = config.load(str(trained / "config.yaml"), [f"data.source={corpus}", f"data.cache_dir={tmp_path}"])
    data.prepare(cfg.data), data.prepare(cfg.data)  # built, then read back from the cache
    assert runs.load(trained).step == 4
    cfg = config.load(str(trained / "config.yaml"))
    cfg, _, mesh = trainer.setup(cfg)
    with Checkpoints(trained, read_only=True) as ckpts:
        state, step = trainer.resume(ckpts, trainer.build(cfg, mesh))
    assert step == 4
    import gptjax
    files = list(Path(gptjax.__file__).parent.rglob("*.py"))  # the whole package, not one folder
    assert len(files) > 40
    source = "\n".join(p.read_text() for p in files)
    assert not re.search(r"\b(pickle|eval|exec)\(|yaml\.(unsafe_)?load\(|allow_pickle|import pickle", source)
