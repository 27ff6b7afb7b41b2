"""Ablations: a real 2 x 2 sweep (heads x layers, 2 seeds, half its points invalid) end to end, its report against its runs,
re-runs that train nothing, --match params, sweep files, Welch's t-test and one-line errors."""

import csv
import math
import struct

import matplotlib.image
import numpy as np
import pytest
import yaml

from gptjax import config
from gptjax.ablate import grid, plots, report, stats, sweep
from gptjax.train import trainer
from gptjax.train.checkpoint import Checkpoints
from gptjax.train.tracking import read_metrics
from tests.conftest import run_main

STEPS = 6
GRID = ["model.n_head=2,3", "model.n_layer=1,2"]  # n_head=3 does not divide the tiny model's n_embd=32
SETTINGS = [f"train.steps={STEPS}", f"train.lr_decay_steps={STEPS}", "train.eval_every=6", "train.log_every=3",
            "train.eval_batches=1"]
VALID = ["n_head=2,n_layer=1", "n_head=2,n_layer=2"]


def files(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and ".jax_cache" not in p.parts}


@pytest.fixture(scope="module")
def swept(tmp_path_factory, data_cache):
    """The sweep, run once; one of its runs was interrupted at step 3 beforehand (same LR schedule, fewer steps)."""
    out = tmp_path_factory.mktemp("sweep") / "heads_layers"
    argv = ["tiny", *GRID, *SETTINGS, "--seeds", "2", "--out", str(out)]
    spec = grid.make_spec("tiny", [*GRID, *SETTINGS], 2, str(out), None)
    first = next(p for p in grid.plan(spec, sweep.with_vocab) if p.cfg)
    with sweep.compile_cache(out / ".jax_cache"):  # as the sweep would have: its resume compiles nothing
        trainer.train(grid.run_config(first, 0, out).replace(train={"steps": 3}))
    result = run_main(sweep.main, argv)
    assert result.returncode == 0, result.stderr
    return out, argv, result.stdout


def seed_dirs(out, point):
    return [out / point / f"seed={i}" for i in range(2)]


def test_sweep_trains_the_valid_points_and_reports_the_invalid(swept):
    out, _, stdout = swept
    for layers in (1, 2):
        assert (f"skipped n_head=3,n_layer={layers}: model.n_embd=32 is not divisible by model.n_head=3"
                in stdout)
    assert sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")) == VALID
    assert "Skipped n_head=3,n_layer=1: model.n_embd=32 is not divisible" in (out / "results.md").read_text()
    progress = [line for line in stdout.splitlines() if line.startswith("[")]
    # Each point's two seeds train together; the first point's are at different steps (3 and 0).
    assert [line.split("]")[0] for line in progress] == ["[1-2/4", "[3-4/4"]
    assert progress[0].startswith("[1-2/4] n_head=2,n_layer=1 seeds 0-1 together (train.seed=1337-1338): "
                                  "resuming from steps 3, 0, 2 more to train after it, ETA")
    assert progress[1].startswith("[3-4/4] n_head=2,n_layer=2 seeds 0-1 together (train.seed=1337-1338): "
                                  "training, 0 more to train after it, ETA ")


def test_runs_are_ordinary_run_directories_with_seeds_and_wandb_group(swept):
    out, *_ = swept
    for point in VALID:
        for seed, run_dir in enumerate(seed_dirs(out, point)):
            cfg = config.from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
            assert cfg.train.seed == 1337 + seed
            assert cfg.run.wandb_group == "heads_layers"
            assert f"n_head={cfg.model.n_head},n_layer={cfg.model.n_layer}" == point
            assert Checkpoints(run_dir).latest_step() == STEPS
    # The interrupted run resumed: every step logged exactly once.
    steps = [r["step"] for r in read_metrics(out / VALID[0] / "seed=0")]
    assert steps == sorted(set(steps)) and steps[0] == 0 and steps[-1] == STEPS


def test_results_csv_matches_the_runs_metrics(swept):
    out, *_ = swept
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert sorted(r["point"] for r in rows) == VALID
    best = [float(r["best_val_loss_mean"]) for r in rows]
    assert best == sorted(best)
    for row in rows:
        runs = seed_dirs(out, row["point"])
        vals = [[r["val_loss"] for r in read_metrics(d) if "val_loss" in r] for d in runs]
        speed = [np.mean([r["tokens_per_sec"] for r in read_metrics(d) if "tokens_per_sec" in r]) for d in runs]
        cfg = config.load("tiny", [f"model.n_head={row['model.n_head']}", f"model.n_layer={row['model.n_layer']}",
                                   "model.n_vocab=65"])
        assert int(row["params"]) == cfg.model.n_params and int(row["flops_per_token"]) == cfg.model.flops_per_token()
        assert int(row["tokens_seen"]) == STEPS * 8 * 32 and row["seeds"] == "2"
        for name, per_run in (("final", [v[-1] for v in vals]), ("best", [min(v) for v in vals])):
            assert float(row[f"{name}_val_loss_mean"]) == pytest.approx(np.mean(per_run), abs=1e-12)
            assert float(row[f"{name}_val_loss_std"]) == pytest.approx(np.std(per_run, ddof=1), abs=1e-12)
        assert float(row["tokens_per_sec"]) == pytest.approx(np.mean(speed))
        assert float(row["wall_s"]) > 0


def png_size(path):
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_plots_open_and_have_the_expected_size(swept):
    out, *_ = swept
    for name, size in (("curves.png", plots.CURVES_SIZE), ("heatmap.png", plots.HEATMAP_SIZE)):
        assert png_size(out / name) == size
        image = matplotlib.image.imread(out / name)
        assert image.shape[:2] == size[::-1] and image.std() > 0.05  # decoded, and not a blank canvas


def test_curves_title_stays_clear_of_the_legend(swept):
    out, *_ = swept
    runs = [r for r in map(report.read_run, report.find_runs([out])) if r is not None]
    fig = plots.curves_figure(report.group(runs, ["model.n_head", "model.n_layer"])[0])
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)  # the layout engine places title and legend at draw time
    title, legend = (a.get_window_extent(renderer) for a in (fig.axes[0].title, fig.legends[0]))
    assert "mean of 2 seeds" in fig.axes[0].get_title()  # the long title: several seeds and a zoomed y axis
    assert title.x1 < legend.x0 and title.x0 >= 0 and title.y1 <= fig.bbox.y1
    plots.plt.close(fig)


def test_comparisons_are_paired_by_seed_and_holm_corrected(swept):
    """The sweep's points share seeds and batches: each comparison is a paired t-test on the runs' own best
    losses (the axis one on per-seed means over the other axis), with Holm's correction over the family."""
    out, *_ = swept
    text = (out / "results.md").read_text()
    assert text.count("\n| ") == 2 + 2 + 2 + 2 + 2 + 1  # points, main effects (n_layer 1, 2), one comparison
    assert "> Warning: 2 seeds per point: intervals are wide and tests weak; use --seeds 3 or more." in text
    best = {p: [min(r["val_loss"] for r in read_metrics(d) if "val_loss" in r) for d in seed_dirs(out, p)]
            for p in VALID}
    t, df, p = stats.paired(best[VALID[0]], best[VALID[1]])
    row = next(line for line in text.splitlines() if line.startswith("| n_layer=1 vs 2 (mean over 1 cell) |"))
    assert f"| paired | {t:.2f} | 1.0 | {p:.2g} |" in row
    assert "mean ± half-width of the 95% t-interval over 2 seeds" in text
    mean, half = stats.t_interval(best[VALID[0]])
    assert f"{mean:.4f} ± {half:.4f}" in text


def test_rerun_trains_nothing_and_changes_no_run(swept):
    out, argv, _ = swept
    before = {p: b for p, b in files(out).items() if "seed=" in str(p)}
    result = run_main(sweep.main, argv)
    assert result.returncode == 0, result.stderr
    progress = [line for line in result.stdout.splitlines() if line.startswith("[")]
    assert len(progress) == 4 and all(line.endswith(": finished, skipped") for line in progress)
    assert {p: b for p, b in files(out).items() if "seed=" in str(p)} == before


def test_report_on_a_list_of_run_directories(swept, tmp_path):
    out, *_ = swept
    runs = [*seed_dirs(out, "n_head=2,n_layer=1"), *seed_dirs(out, "n_head=2,n_layer=2")]
    result = run_main(sweep.main, ["report", *map(str, runs), "--out", str(tmp_path)])
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert sorted(r["point"] for r in rows) == ["n_layer=1", "n_layer=2"]
    assert all(r["seeds"] == "2" for r in rows) and "model.n_head" not in rows[0]  # only what differs
    assert not (tmp_path / "heatmap.png").exists()  # one axis: no heatmap
    lines = result.stdout.splitlines()  # and none reported: the notice says why, before the table
    assert lines[:2] == ["Warning: 2 seeds per point: intervals are wide and tests weak; use --seeds 3 or more.",
                         "no heatmap.png: it plots two swept axes and these runs differ in 1 swept axis"]
    assert lines[-1] == f"report written to {tmp_path}: results.csv, results.md, curves.png"
    result = run_main(sweep.main, ["report", *map(str, runs)])
    assert result.returncode == 2
    assert result.stderr.strip() == "error: several directories given: say where the report goes with --out DIR"


def test_match_params_keeps_every_point_within_5_percent():
    spec = grid.make_spec("shakespeare_char_cpu", ["model.n_head=1,2,4,8", "model.n_layer=1,2,4,6"], None, "x",
                          "params")
    points = grid.plan(spec, sweep.with_vocab)
    base = config.load("shakespeare_char_cpu", ["model.n_vocab=65"]).model.n_params
    assert len(points) == 16 and all(p.error is None for p in points)
    for p in points:
        model = p.cfg.replace(model={"n_vocab": 65}).model
        assert model.n_embd % model.n_head == 0
        assert abs(model.n_params / base - 1) <= 0.05, p.name
    widths = {p.cfg.model.n_layer: p.cfg.model.n_embd for p in points if p.cfg.model.n_head == 4}
    assert widths[1] > widths[2] > widths[4] == 128 > widths[6]  # fewer layers, wider: the size is held


def test_match_params_reports_points_it_cannot_match():
    spec = grid.make_spec("tiny", ["model.n_head=8", "model.n_layer=1,2"], None, "x", "params")
    bad, good = grid.plan(spec, sweep.with_vocab)
    assert good.error is None and good.cfg.model.n_embd == 32
    assert bad.cfg is None and bad.error.startswith("no n_embd keeps the parameter count within 5% of the base's")
    with pytest.raises(config.ConfigError, match="chooses model.n_embd per point"):
        grid.make_spec("tiny", ["model.n_embd=32,64"], None, "x", "params")


def test_sweep_file_with_command_line_on_top():
    spec = grid.make_spec("heads_layers_cpu", [], None, None, None)
    assert spec.base == "shakespeare_char_cpu"
    assert spec.axes == {"model.n_head": [1, 2, 4, 8], "model.n_layer": [1, 2, 4]}
    assert spec.out == "runs/sweeps/heads_layers_cpu" and spec.seeds == 1
    spec = grid.make_spec(str(config.CONFIG_DIR / "ablations" / "heads_layers_cpu.yaml"),
                          ["model.n_layer=2", "train.lr=1e-3,3e-3"], 3, "elsewhere", None)
    assert spec.axes == {"model.n_head": [1, 2, 4, 8], "train.lr": [0.001, 0.003]}
    assert spec.fixed == {"model.n_layer": 2} and spec.seeds == 3 and spec.out == "elsewhere"
    assert grid.plan(spec, sweep.with_vocab)[0].name == "n_head=1,lr=0.001"  # values as the config reads them


@pytest.mark.parametrize("items, message", [
    (["model.n_haed=2,4"], "unknown config key 'model.n_haed'; did you mean model.n_head?"),
    (["train.seed=1,2"], "train.seed cannot be set in a sweep: use --seeds N"),
    (["model.n_head"], "must look like section.key=value"),
    (["model.n_head=3,5"], "every point of the grid is invalid"),
    (["model.n_head=2,4", "--seeds", "0"], "seeds must be a positive integer, got 0"),
])
def test_bad_sweeps_fail_with_one_line(items, message, tmp_path):
    result = run_main(sweep.main, ["tiny", *items, "--out", str(tmp_path / "s")])
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()  # nothing written for a sweep that cannot run


def test_point_names_are_safe_directory_names():
    assert grid.point_name({"model.n_head": 2, "data.source": "data/my file.txt"}) == "n_head=2,source=data_my_file.txt"
    assert grid.point_name({"train.lr": 0.001, "model.bias": False}) == "lr=0.001,bias=false"
    assert grid.point_name({}) == "base"


def test_welch_matches_the_closed_form_at_df_4():
    # Equal variances and sizes give df = 2 (n - 1) = 4, where P(|T| < t) = sqrt(x) (3 - x) / 2, x = t² / (4 + t²).
    t, df, p = stats.welch([1.0, 2.0, 3.0], [2.0, 3.0, 4.0])
    assert (t, df) == (pytest.approx(-math.sqrt(1.5)), pytest.approx(4.0))
    x = t * t / (4 + t * t)
    assert p == pytest.approx(1 - math.sqrt(x) * (3 - x) / 2, rel=1e-10)
    # No spread at all: equal means are certainly equal, different ones certainly different.
    assert stats.welch([1.0, 1.0], [2.0, 2.0])[2] == 0.0 and stats.welch([1.0, 1.0], [1.0, 1.0])[2] == 1.0


def test_one_at_a_time_trains_the_base_and_each_knob_alone_and_tests_each_against_the_base(tmp_path):
    """--one-at-a-time: the base, then each value alone on it; a value equal to the base's is the base, not a
    point; the report has Welch's p of each point against the base, matching the runs' own losses."""
    out = tmp_path / "knobs"
    settings = [word for item in SETTINGS for word in ("--set", item)]
    result = run_main(sweep.main, ["tiny", "model.mlp=relu2", "model.norm=layernorm", "train.lr=3e-3",
                                   *settings, "--seeds", "2", "--one-at-a-time", "--out", str(out)])
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")) == [
        "base", "mlp=relu2"]  # norm=layernorm and lr=3e-3 are the tiny preset's own: the base
    cfgs = {name: config.from_dict(yaml.safe_load((out / name / "seed=1" / "config.yaml").read_text()))
            for name in ("base", "mlp=relu2")}
    assert [(c.model.mlp, c.train.lr, c.train.steps) for c in cfgs.values()] == [
        ("gelu", 3e-3, STEPS), ("relu2", 3e-3, STEPS)]
    rows = {r["point"]: r for r in csv.DictReader((out / "results.csv").open())}
    best = {name: [min(r["val_loss"] for r in read_metrics(d) if "val_loss" in r) for d in seed_dirs(out, name)]
            for name in rows}
    for name in ("mlp=relu2",):
        # Seed i of both points draws the same batches: paired by seed.
        assert float(rows[name]["p_vs_base"]) == pytest.approx(stats.paired(best[name], best["base"])[2])
        assert float(rows[name]["p_vs_base_holm"]) == pytest.approx(float(rows[name]["p_vs_base"]))  # one test
    assert rows["base"]["p_vs_base"] == ""
    assert "| point | mlp | norm |" in (out / "results.md").read_text() and "p vs base (Holm)" in (out / "results.md").read_text()
    assert "no heatmap.png: a one-at-a-time sweep varies one key per point, not a grid" in result.stdout
