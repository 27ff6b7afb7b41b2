"""The first hour, again (issue 29): the command line, nothing silent, files a user can read."""

import importlib
import os
import re
import time

import pytest

import gptjax
from gptjax import bench, cli, config
from gptjax.ablate import sweep
from gptjax.data.tokenizer import ASSETS, GPT2Tokenizer
from gptjax.interop import convert
from gptjax.train import trainer
from gptjax.train.tracking import Tracker, read_metrics
from tests.conftest import run_in_process, run_main
from tests.test_convert import write_hf_folder


def test_gptjax_help_lists_every_command_with_one_line():
    result = run_main(cli.main, ["--help"])
    assert result.returncode == 0
    for name in cli.COMMANDS:
        [line] = [line for line in result.stdout.splitlines() if line.split()[:1] == [name]]
        assert len(line.split()) > 3, line  # a summary, not just the name


def test_gptjax_version():
    result = run_main(cli.main, ["--version"])
    assert result.returncode == 0 and result.stdout.startswith("gptjax ") and result.stdout.count("\n") == 1


def test_train_help_names_the_command_and_the_default_presets_values():
    out = run_main(cli.train, ["--help"]).stdout
    assert out.startswith("usage: gptjax train ") and "train.py" not in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ") and "." in line.split()[0]}
    # shakespeare_char_cpu's own values, the ones `gptjax train` with no config trains with
    assert "-> 128" in lines["model.n_embd"] and "-> 2000" in lines["train.steps"]
    assert "usage: gptjax sample " in run_main(cli.sample, ["--help"]).stdout


@pytest.mark.parametrize("main, argv", [
    (sweep.main, ["tiny", "--bogus"]),
    (sweep.report_main, ["--bogus"]),
    (bench.main, ["--bogus"]),
    (convert.main, ["--bogus"]),
    (convert.main, ["to-hf", "run"]),
])
def test_bad_flags_are_one_error_line(main, argv):
    result = run_main(main, argv)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr


def test_the_old_module_paths_are_gone():
    assert len(gptjax.__path__) == 1
    for old in ("gptjax.convert", "gptjax.inspect", "gptjax.sweep"):
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(old)


# ---------------------------------------------------------------------------
# Files a user can read: a folder of runs named, exports that follow the umask and carry their tokenizer

def test_sample_on_a_folder_of_seeds_names_the_runs_inside(tmp_path):
    for i in (0, 1, 2, 10):
        (tmp_path / f"seed={i}").mkdir()
        (tmp_path / f"seed={i}" / "config.yaml").write_text("{}")
    result = run_in_process("sample.py", tmp_path)
    assert result.returncode == 2
    assert result.stderr == (f"error: {tmp_path} is not a run directory (no config.yaml); it holds 4 runs "
                             f"(seed=0, seed=1, seed=2, seed=10): give one of them, e.g. {tmp_path / 'seed=0'}\n")


@pytest.fixture(scope="module")
def char_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("char") / "run"
    trainer.train(config.load("tiny", [f"run.out_dir={run}", "train.steps=10"]))
    return run


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory):
    """A GPT-2-vocabulary model with random weights, as `convert from-hf` makes one."""
    src = write_hf_folder(tmp_path_factory.mktemp("bpe") / "hf", n_layer=1, n_head=2, n_embd=16, vocab_size=50257,
                          n_positions=24)
    return convert.from_hf(str(src), src.parent / "run")


def test_exported_files_follow_the_umask(bpe_run, tmp_path):
    old = os.umask(0o002)
    try:
        out = convert.to_hf(bpe_run, tmp_path / "out")
    finally:
        os.umask(old)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in out.iterdir()}
    assert "model.safetensors" in modes and set(modes.values()) == {"0o664"}, modes


@pytest.mark.parametrize("which, prompt, files", [
    ("char_run", "ROMEO:", {"tokenizer.json"}),
    ("bpe_run", "Hello, world", {"vocab.json", "merges.txt"}),
])
def test_the_exported_pipeline_writes_what_greedy_sample_py_writes(which, prompt, files, request, tmp_path):
    transformers = pytest.importorskip("transformers", reason="needs the [hf] extra")
    run = request.getfixturevalue(which)
    out = convert.to_hf(run, tmp_path / "out")
    assert files <= {p.name for p in out.iterdir()}
    new = 12
    ours = run_in_process("sample.py", run, "--prompt", prompt, "--temperature", "0", "--max-new-tokens", new)
    assert ours.returncode == 0, ours.stderr
    pipe = transformers.pipeline("text-generation", model=str(out), device="cpu")
    theirs = pipe(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False)[0]["generated_text"]
    assert ours.stdout == theirs + "\n"


def test_exported_gpt2_tokenizer_encodes_as_tiktoken_does(bpe_run, tmp_path):
    transformers = pytest.importorskip("transformers", reason="needs the [hf] extra")
    out = convert.to_hf(bpe_run, tmp_path / "out")
    tok = transformers.AutoTokenizer.from_pretrained(out)
    text = (ASSETS / "tinyshakespeare.txt").read_text()[:5000] + "  It's 42 ℃ — naïve café 😀\n\n\t end "
    ids = GPT2Tokenizer().encode(text)
    assert tok.encode(text) == ids and tok.decode(ids) == text and tok.eos_token_id == 50256


# ---------------------------------------------------------------------------
# Training's first screen and last line

def test_training_says_what_it_does_first_and_ends_with_one_summary_line(tmp_path):
    result = run_in_process("train.py", "tiny", f"run.out_dir={tmp_path}", "run.progress=true")
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert re.fullmatch(r"step 0: train loss \d\.\d{4}, val loss \d\.\d{4}", out[0]), out
    assert out[1] == "compiling the train step..."
    rows = read_metrics(tmp_path)
    best = min((r for r in rows if "val_loss" in r), key=lambda r: r["val_loss"])
    assert re.fullmatch(rf"done: step 20 \(20 steps in [\d.]+s, [\d,]+ tokens/s\); best val loss "
                        rf"{best['val_loss']:.4f} at step {best['step']}; run dir {re.escape(str(tmp_path))}", out[-1])
    assert sum(line.startswith("done:") for line in out) == 1
    # The bar's first line after the compile has no rate yet, rather than one that counts the compile.
    assert "1/20 [00:00<?, ?step/s" in result.stderr.replace("\r", "\n"), result.stderr


def test_the_bar_leaves_the_compile_out_of_its_rate_and_eta(tmp_path):
    cfg = config.load("tiny", ["run.progress=true", f"run.out_dir={tmp_path}"])
    tracker = Tracker(tmp_path, cfg, 0, 1000)
    time.sleep(0.5)  # the first step, compiling
    tracker.compiled(1)
    for _ in range(20):
        time.sleep(0.01)
        tracker.advance()
    shown = tracker.bar.format_dict
    assert shown["n"] == 21 and shown["elapsed"] < 0.45
    assert shown["rate"] > 20  # steps of about 10 ms: a rate near 100/s, not the 2/s a 0.5 s compile would give
    tracker.close()
