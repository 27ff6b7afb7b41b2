"""The benchmark CLI: one JSON line per measurement, figures that agree with the config and each other."""

import json

import pytest

from gptjax import bench, config
from gptjax.train import trainer
from tests.conftest import run_main


def test_bench_prints_one_consistent_json_line_per_measurement():
    result = run_main(bench.main, ["tiny", "--steps", "3", "--sample-tokens", "40", "--num-samples", "2"])
    assert result.returncode == 0, result.stderr
    rows = {row["measurement"]: row for row in map(json.loads, result.stdout.splitlines())}
    assert list(rows) == ["train_step", "eval_step", "sample_inside_window_cache", "sample_inside_window_recompute",
                          "sample_past_window_cache", "sample_past_window_cache_shift", "sample_past_window_recompute",
                          "sample_compilations"]
    cfg, _, _ = trainer.setup(config.load("tiny"))  # n_vocab comes from the data
    train, evaluation = rows["train_step"], rows["eval_step"]
    assert train["device"] == "cpu" and train["mfu"] is None  # CPUs have no honest peak to divide by
    assert train["flops_per_token"] == cfg.model.flops_per_token() == 3 * evaluation["flops_per_token"]
    for row, tokens in ((train, cfg.tokens_per_step), (evaluation, cfg.train.micro_batch_size * cfg.model.n_ctx)):
        assert row["ms_per_step"] > 0 and row["compile_s"] >= 0 and row["peak_memory_mb"] > 0
        assert row["tokens_per_sec"] == pytest.approx(tokens / row["ms_per_step"] * 1e3, rel=1e-3)
        assert row["batch_size"] == cfg.train.batch_size
    # Sampler rows name what they measure: samples and new tokens per call, not the training batch or a "step".
    for name, sampled in rows.items():
        if name.startswith("sample_") and name != "sample_compilations":
            assert {"batch_size", "ms_per_step", "mfu"}.isdisjoint(sampled), name
            assert sampled["num_samples"] == 2 and sampled["ms_per_call"] > 0 and sampled["compile_s"] >= 0
            assert sampled["ms_per_token"] == pytest.approx(sampled["ms_per_call"] / sampled["new_tokens"], rel=1e-3)
            assert sampled["tokens_per_sec"] == pytest.approx(2 * sampled["new_tokens"] / sampled["ms_per_call"] * 1e3,
                                                              rel=1e-3)
    assert rows["sample_past_window_cache"]["new_tokens"] == 40
    assert 0 < rows["sample_inside_window_cache"]["new_tokens"] < cfg.model.n_ctx
    # Minutes of timing on a large config are never silent: a bar on stderr names the part being timed.
    assert "timing the train step (3 steps)" in result.stderr and "3/3" in result.stderr
