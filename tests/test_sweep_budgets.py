"""isoFLOP sweeps with real training on tiny shapes: --budgets trains every shape of a depth-tied family to
each FLOP budget, the report gives each point's FLOPs, tokens and bits per byte, and the scaling fit reads the
run directories (and says why, in one line, where it cannot fit: one budget, one size, NaN runs)."""

import csv
import json
import shutil

import pytest

from gptjax.ablate import fit, grid, sweep
from gptjax.config import ConfigError
from gptjax.train import runs
from gptjax.train.tracking import read_metrics
from tests.conftest import run_main

BUDGETS = (3e8, 9e8)
LAYERS = (1, 2, 3)
SETTINGS = ["train.eval_every=1000", "train.eval_batches=1", "train.log_every=1000", "train.warmup_steps=1"]


@pytest.fixture(scope="module")
def iso(tmp_path_factory, data_cache):
    out = tmp_path_factory.mktemp("iso") / "sweep"
    argv = ["tiny", "--budgets", ",".join(map(str, BUDGETS)), f"model.n_layer={','.join(map(str, LAYERS))}",
            "--aspect", "16", "--head-size", "8", *SETTINGS, "--seeds", "2", "--out", str(out)]
    result = run_main(sweep.main, argv)
    assert result.returncode == 0, result.stderr
    return out, result.stdout


def point(budget, layers):
    return grid.point_name({grid.BUDGET: budget, "model.n_layer": layers})


def test_every_shape_trains_to_every_budget_in_its_own_steps(iso):
    out, _ = iso
    for budget in BUDGETS:
        for layers in LAYERS:
            for seed in range(2):
                run_dir = out / point(budget, layers) / f"seed={seed}"
                cfg = runs.load_config(run_dir)
                assert (cfg.model.n_layer, cfg.model.n_embd, cfg.model.n_head) == (layers, 16 * layers, 2 * layers)
                assert cfg.train.flops_budget == budget and cfg.train.seed == 1337 + seed
                last = read_metrics(run_dir)[-1]
                step_flops = cfg.tokens_per_step * cfg.model.flops_per_token()
                # Its own steps: as many as the budget buys, and no more.
                assert last["step"] == cfg.train.steps and budget - step_flops < last["flops"] <= budget


def test_the_report_gives_flops_tokens_and_bpb_beside_the_loss(iso):
    out, stdout = iso
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == len(BUDGETS) * len(LAYERS)
    for row in rows:
        run_dir = out / row["point"] / "seed=0"
        last = [r for r in read_metrics(run_dir) if "val_loss" in r][-1]
        assert float(row["flops"]) == pytest.approx(last["flops"]) and int(row["tokens_seen"]) == last["tokens"]
        assert float(row["best_val_bpb_mean"]) > 0
    text = (out / "results.md").read_text()
    assert "| flops_budget | n_layer |" in text and "| FLOPs | tokens |" in text and "| val bpb |" in text
    assert "| 3e+08 | 1 |" in text  # budgets as numbers people write, not 300000000.0
    # Shapes are compared within a budget: no test of one budget against another.
    assert "flops_budget=3e+08 vs" not in text and "n_layer=1 vs 2 (mean over 2 cells)" in text
    assert stdout.rstrip().endswith("scaling.md, scaling.csv, scaling.png")


def test_the_fit_reads_n_c_and_d_from_the_run_directories(iso):
    out, _ = iso
    found = fit.fit([out], resamples=20)
    assert sorted({o.budget for o in found.runs}) == list(BUDGETS) and len(found.runs) == 12
    for o in found.runs:
        cfg = runs.load_config(o.run)
        last = read_metrics(o.run)[-1]
        assert (o.n, o.d, o.c) == (cfg.model.n_params, last["tokens"], last["flops"])
    assert [len(p.n) for p in found.profiles] == [6, 6]
    rows = list(csv.DictReader((out / "scaling.csv").open()))
    assert {"N_opt", "a (N_opt ~ C^a)", "alpha", "approach 3: loss (predicted)"} <= {r["quantity"] for r in rows}
    assert all("extrapolation" in r["note"] for r in rows if "predicted" in r["quantity"])


def test_degenerate_fits_say_why_in_one_line(iso, tmp_path):
    """One budget, one size and a NaN run: the fit writes its files and says why for each missing number."""
    out, _ = iso
    one_budget = tmp_path / "one_budget"
    for layers in LAYERS:
        shutil.copytree(out / point(BUDGETS[0], layers), one_budget / point(BUDGETS[0], layers))
    nan_run = one_budget / point(BUDGETS[0], 1) / "seed=1"
    lines = (nan_run / "metrics.jsonl").read_text().splitlines()
    last = json.loads(lines[-1]) | {"val_loss": float("nan")}
    (nan_run / "metrics.jsonl").write_text("\n".join([*lines[:-1], json.dumps(last)]) + "\n")
    result = run_main(fit.main, [str(one_budget)])
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert f"Left out {nan_run}: its final val_loss is nan" in result.stdout
    assert "a = — (1 budget with a minimum inside its sizes: a power law needs 2 or more)" in result.stdout or \
        "a = — (0 budgets with a minimum inside its sizes: a power law needs 2 or more)" in result.stdout
    assert "No fit: 5 runs, 3 sizes, 3 token counts: the five-parameter fit needs 6 or more runs" in result.stdout
    one_size = tmp_path / "one_size"
    for budget in BUDGETS:
        shutil.copytree(out / point(budget, 2), one_size / point(budget, 2))
    result = run_main(fit.main, [str(one_size), "--out", str(tmp_path / "fit")])
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("1 size at this budget: a parabola needs 3 or more") == 2
    assert {p.name for p in (tmp_path / "fit").iterdir()} == {"scaling.md", "scaling.csv", "scaling.png"}
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_main(fit.main, [str(empty)])
    assert result.returncode == 2 and result.stderr.startswith("error: no run directories")


def test_one_at_a_time_at_a_budget_tests_each_knob_against_the_base_of_its_budget(tmp_path):
    out = tmp_path / "knobs"
    settings = [w for item in ["train.eval_every=1000", "train.eval_batches=1", "train.warmup_steps=1"]
                for w in ("--set", item)]
    result = run_main(sweep.main, ["tiny", "model.mlp=relu2", "--one-at-a-time", "--budgets", "3e8", *settings,
                                   "--seeds", "2", "--out", str(out)])
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")) == [
        "flops_budget=3e+08", "flops_budget=3e+08,mlp=relu2"]
    rows = {r["point"]: r for r in csv.DictReader((out / "results.csv").open())}
    assert rows["flops_budget=3e+08,mlp=relu2"]["p_vs_base"] != "" and rows["flops_budget=3e+08"]["p_vs_base"] == ""
    for row in rows.values():  # each trained to the budget: a relu2 MLP costs what a GELU one does
        assert 3e8 - 2e7 < float(row["flops"]) <= 3e8
    assert "flops_budget=3e+08,mlp=relu2 vs base at flops_budget=3e+08" in (out / "results.md").read_text()


@pytest.mark.parametrize("kwargs, message", [
    ({"items": ["train.steps=50"], "budgets": "1e12"}, "--budgets sets each point's train.steps"),
    ({"budgets": "1e12,lots"}, "budgets must be FLOP counts like 3e13,1e14"),
    ({"budgets": "-1e12"}, "budgets must be positive FLOP counts"),
    ({"aspect": 16}, "the depth family needs both --aspect R"),
    ({"aspect": 16, "head_size": 8, "items": ["model.n_head=2,4"]}, "the depth family sets model.n_head"),
])
def test_bad_budget_sweeps_are_one_clear_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        grid.make_spec("tiny", kwargs.pop("items", []), None, "x", None, **kwargs)


def test_command_line_budgets_replace_a_sweep_files(tmp_path):
    """`gptjax sweep FILE --budgets B` trains to B only: the file's budgets once won silently, so a
    one-budget re-check of the isoFLOP study ran all three."""
    path = tmp_path / "iso.yaml"
    path.write_text("base: tiny\nbudgets: [3.0e+11, 1.0e+12]\ngrid:\n  model.n_embd: [16, 32]\n")
    spec = grid.make_spec(str(path), [], None, None, None, budgets="3e11,3e12")
    assert list(spec.axes) == [grid.BUDGET, "model.n_embd"] and spec.budgets == [3e11, 3e12]
    assert grid.make_spec(str(path), [], None, None, None).budgets == [3e11, 1e12]
