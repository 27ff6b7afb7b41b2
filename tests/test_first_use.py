"""What a new user trips on (issue 19): decay over the run's own steps, one meaning per metrics key, --help."""

import json

import pytest

from gptjax import cli, config
from gptjax.train import optim, trainer
from tests.conftest import run_main

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
    assert last["step"] == 150
    # The last update's lr is the schedule one step before its end: within 1% of the cosine's span of min_lr.
    assert last["lr"] - cfg.train.min_lr < 0.01 * (cfg.train.lr - cfg.train.min_lr)


def test_step_zero_row_keys_mean_what_they_mean_on_every_other_row(short_run):
    _, rows = short_run
    first, last = rows[0], rows[-1]
    assert first["step"] == 0 and first["lr"] == 0.0  # warmup starts from 0
    assert {"eval_train_loss", "val_loss"} <= first.keys() and "train_loss" not in first  # nothing trained yet
    assert "tokens_per_sec" not in first  # no tokens were trained on
    assert {"eval_train_loss", "val_loss", "train_loss", "lr", "tokens_per_sec"} <= last.keys()


def test_help_after_a_config_shows_its_resolved_values():
    out = run_main(cli.train, ["shakespeare_char_cpu", "train.steps=150", "--help"]).stdout
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ") and "." in line.split()[0]}
    assert "5000" in lines["train.steps"] and "-> 150" in lines["train.steps"]  # the default and this run's value
    assert "-> 128" in lines["model.n_embd"] and "->" not in lines["train.lr"]  # the preset keeps lr's default
    assert "->" not in run_main(cli.train, ["--help"]).stdout.split("config keys")[1]
