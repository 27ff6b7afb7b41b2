"""Compute budgets: train.flops_budget and train.tokens_per_param set train.steps; rows count tokens and FLOPs."""

import math

import pytest

from gptjax import cli, config
from gptjax.train import optim, runs, trainer
from gptjax.train.tracking import read_metrics
from tests.conftest import run_main


def resolved(cfg: config.Config) -> config.Config:
    return cfg.resolve_vocab(65).resolve_steps()  # the tiny preset's char-level Shakespeare has 65 symbols


def test_a_flops_budget_sets_the_steps_rounded_down(tiny):
    step_cost = resolved(tiny()).model.flops_per_token() * tiny().tokens_per_step
    for budget, steps in ((12 * step_cost, 12), (12.9 * step_cost, 12), (step_cost, 1)):
        cfg = resolved(tiny(f"train.flops_budget={budget!r}"))
        assert cfg.train.steps == steps and cfg.train.decay_steps == steps  # the cosine follows the new length


def test_tokens_per_param_counts_the_flop_counts_n(tiny):
    cfg = resolved(tiny("train.tokens_per_param=20"))
    n = cfg.model.n_compute_params
    assert n == cfg.model.n_params - 32 * 32  # the tiny model's learned positions are only looked up
    assert cfg.train.steps == math.floor(20 * n / cfg.tokens_per_step)
    # The same run said as a FLOP budget: 20 tokens per parameter at this model's FLOPs per token.
    same = resolved(tiny(f"train.flops_budget={20 * n * cfg.model.flops_per_token()!r}"))
    assert same.train.steps == cfg.train.steps


@pytest.mark.parametrize("overrides, message", [
    (["train.flops_budget=1e12", "train.steps=50"], "train.steps and train.flops_budget both set on the command line"),
    (["train.tokens_per_param=20", "train.steps=50"], "train.steps and train.tokens_per_param both set"),
    (["train.flops_budget=1e12", "train.tokens_per_param=20"], "train.flops_budget and train.tokens_per_param both"),
    (["train.flops_budget=-1"], "train.flops_budget must be a number >= 0"),
    (["train.tokens_per_param=.nan"], "train.tokens_per_param must be a number >= 0"),
])
def test_two_lengths_are_an_error(tiny, overrides, message):
    with pytest.raises(config.ConfigError, match=message):
        tiny(*overrides)


def test_a_budget_and_steps_in_one_config_file_are_an_error(tmp_path):
    path = tmp_path / "both.yaml"
    path.write_text("train: {steps: 100, flops_budget: 1.0e+12}\n")
    with pytest.raises(config.ConfigError, match=f"both set in config file {path}"):
        config.load(str(path))


def test_a_command_line_length_replaces_the_config_files(tmp_path):
    # The preset says train.steps=20: a budget given on the command line is the run's length instead.
    assert config.load("tiny", ["train.flops_budget=1e12"]).train.flops_budget == 1e12
    path = tmp_path / "budget.yaml"
    path.write_text("train: {flops_budget: 1.0e+12}\n")
    cfg = config.load(str(path), ["train.steps=7"])
    assert cfg.train.steps == 7 and cfg.train.flops_budget == 0


def test_a_budget_below_one_step_is_an_error(tiny):
    with pytest.raises(config.ConfigError, match=r"train.flops_budget=1e\+06 buys no step: one step costs"):
        resolved(tiny("train.flops_budget=1e6"))


def test_the_command_line_says_one_error_line(tmp_path):
    out = tmp_path / "run"
    done = run_main(cli.main, ["train", "tiny", "train.flops_budget=1e12", "train.steps=5", f"run.out_dir={out}"])
    assert done.returncode == 2 and not out.exists()
    assert done.stderr.strip().count("\n") == 0 and done.stderr.startswith("error: train.steps and train.flops_budget")
    helped = run_main(cli.main, ["train", "--help"]).stdout
    assert "train.flops_budget" in helped and "train.tokens_per_param" in helped


def test_a_budgeted_run_trains_its_steps_and_counts_tokens_and_flops(tiny, tmp_path, capsys):
    plain = resolved(tiny())
    per_token, per_step = plain.model.flops_per_token(), plain.tokens_per_step
    trainer.train(tiny(f"train.flops_budget={15.5 * per_token * per_step!r}"))
    assert f"budget: 15 steps x 256 tokens x {per_token:,} FLOPs per token" in capsys.readouterr().err
    run = runs.load_config(tmp_path / "run")
    assert run.train.steps == 15 and run.train.flops_budget == 15.5 * per_token * per_step
    assert float(optim.schedule(run.train)(15)) == pytest.approx(run.train.min_lr)  # decayed over its own 15 steps
    rows = read_metrics(tmp_path / "run")
    assert rows[-1]["step"] == 15
    for row in rows:  # cumulative: the tokens and FLOPs of the updates before the row's parameters
        assert row["tokens"] == row["step"] * per_step and row["flops"] == row["tokens"] * per_token
