"""What a new user trips on (issue 19): decay over the run's own steps, one meaning per metrics key, --help."""

import json
import logging
import re
import subprocess
import sys
import time

import pytest

from gptjax import cli, config
from gptjax.train import optim, trainer
from gptjax.train.tracking import Tracker
from tests.conftest import ROOT, run_main

# The CPU preset as a user shortens it, on a model small enough to train in seconds.
SHORT = ["train.steps=150", "train.eval_every=150", "train.log_every=50", "train.eval_batches=2",
         "model.n_layer=1", "model.n_embd=32", "model.n_head=2", "run.progress=false"]


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("first_use") / "run"
    cfg = config.load("shakespeare_char_cpu", [*SHORT, f"run.out_dir={run}"])
    trainer.train(cfg)
    return cfg, [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_shortened_preset_run_decays_to_min_lr_over_its_own_steps(short_run):
    cfg, rows = short_run
    assert cfg.train.decay_steps == 150  # the preset pins no decay length of its own
    assert float(optim.schedule(cfg.train)(150)) == pytest.approx(cfg.train.min_lr)
    last = rows[-1]
    assert last["step"] == 150 and "lr" not in last  # no update follows the last row
    # Each row's lr is the one its own update used: row 100's, on the way down to min_lr.
    row = next(r for r in rows if r["step"] == 100)
    assert row["lr"] == pytest.approx(float(optim.schedule(cfg.train)(100)), rel=1e-6)
    assert row["lr"] > cfg.train.min_lr


def test_step_zero_row_keys_mean_what_they_mean_on_every_other_row(short_run):
    _, rows = short_run
    first, last = rows[0], rows[-1]
    assert first["step"] == 0 and first["lr"] == 0.0  # warmup starts from 0
    assert {"eval_train_loss", "val_loss", "train_loss"} <= first.keys()
    # train_loss is a training batch's loss before its update on every row; at step 0 that is one batch of
    # the training split at the initial parameters, so it sits beside the eval batches' mean on that split.
    assert abs(first["train_loss"] - first["eval_train_loss"]) < 0.1
    assert "tokens_per_sec" not in first  # no tokens were trained on
    assert {"eval_train_loss", "val_loss", "train_loss", "tokens_per_sec"} <= last.keys() and "lr" not in last
    # Evaluations are timed apart (minutes at GPT-2's vocabulary on a CPU), and only on eval rows.
    assert first["eval_s"] > 0 and last["eval_s"] > 0 and "eval_s" not in rows[1]


def test_help_after_a_config_shows_its_resolved_values():
    out = run_main(cli.train, ["shakespeare_char_cpu", "train.steps=150", "--help"]).stdout
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ") and "." in line.split()[0]}
    assert "5000" in lines["train.steps"] and "-> 150" in lines["train.steps"]  # the default and this run's value
    assert "-> 128" in lines["model.n_embd"] and "->" not in lines["train.lr"]  # the preset keeps lr's default
    assert "->" not in run_main(cli.train, ["--help"]).stdout.split("config keys")[1]


def test_inspect_attention_without_out_writes_into_the_run_not_the_cwd(short_run, tmp_path, monkeypatch):
    from gptjax.look import cli as inspect

    cfg, _ = short_run
    monkeypatch.chdir(tmp_path)
    result = run_main(inspect.main, ["attention", cfg.run.out_dir, "--prompt", "ROMEO:"])
    assert result.returncode == 0, result.stderr
    png = f"{cfg.run.out_dir}/attention.png"
    assert result.stdout.startswith(f"wrote {png}:") and list(tmp_path.iterdir()) == []
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def docs_python_block() -> str:
    text = (ROOT / "docs/index.md").read_text()
    return text.split("## From Python", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]


def test_docs_python_api_example_runs(tmp_path, monkeypatch, capsys, caplog):
    code = docs_python_block()
    assert '"shakespeare_char_cpu", "train.steps=500"' in code  # the lines swapped below for a seconds-long run
    monkeypatch.chdir(tmp_path)
    exec(compile(code.replace('"shakespeare_char_cpu", "train.steps=500"', '"tiny"'), "docs/index.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert any(re.fullmatch(r"step 20: val loss \d\.\d{4}", line) for line in out), out
    assert sum(line.startswith("ROMEO:") for line in out) >= 2 and (tmp_path / "runs/notebook/metrics.jsonl").is_file()
    assert not [r for r in caplog.records if r.name.startswith("absl") and r.levelno >= logging.WARNING]


def test_import_gptjax_loads_no_jax():
    code = "import sys, gptjax; assert callable(gptjax.load_config); print(sorted(m for m in sys.modules if m in "
    code += "('jax', 'flax', 'orbax', 'omegaconf', 'tiktoken')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr


def test_a_long_evaluation_moves_on_the_bar_and_stays_out_of_its_step_time(tmp_path):
    """At GPT-2's vocabulary on a CPU the step-0 evaluation takes minutes: the bar shows it batch by batch,
    and its s/step (tqdm's clock) leaves the evaluation out, so step 1 does not read as 370 s/step."""
    cfg = config.load("tiny", ["run.progress=true", "train.eval_batches=3", f"run.out_dir={tmp_path}"])
    tracker = Tracker(tmp_path, cfg, 0, 10)
    shown = []
    tracker.bar.display = lambda *a, **k: shown.append(str(tracker.bar))  # what the terminal would get
    start = tracker.bar.format_dict["elapsed"]
    for done in range(1, 6):
        tracker.evaluating(done, 6)
        time.sleep(0.1)
    tracker.evaluated()
    tracker.advance()
    assert [line.split(":")[0] for line in shown[:5]] == [f"eval {k}/6" for k in range(1, 6)]
    assert tracker.bar.format_dict["elapsed"] - start < 0.25  # the half second spent evaluating is not counted
    tracker.close()
