"""A sweep report's statistics on numbers with known answers: t-intervals, the paired test, Holm's
correction, main effects as marginal means, and the figures that show them honestly."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from gptjax import config
from gptjax.ablate import effects, grid, plots, report, stats


def test_t_interval_is_the_student_t_interval():
    mean, half = stats.t_interval([1.0, 2.0, 3.0])  # s = 1, n = 3: half = t(0.975, 2) / sqrt(3)
    assert mean == 2.0 and half == pytest.approx(4.302652729911275 / math.sqrt(3))
    assert math.isnan(stats.t_interval([1.0])[1]) and math.isnan(stats.t_interval([])[0])


def test_paired_test_uses_the_differences():
    a, b = [1.0, 2.0, 3.0, 4.0], [1.5, 2.4, 3.6, 4.4]  # differences -0.5, -0.4, -0.6, -0.4
    t, df, p = stats.paired(a, b)
    d = np.subtract(a, b)
    assert t == pytest.approx(d.mean() / (d.std(ddof=1) / 2)) and df == 3
    assert p == pytest.approx(2 * scipy_stats.t.sf(abs(t), 3))
    # The same numbers unpaired: the points' shared seed-to-seed spread hides the difference.
    assert stats.compare(a, b, pair=False).p > 0.5 > 0.01 > p
    test = stats.compare(a, b, pair=True)
    assert test.kind == "paired" and test.diff == pytest.approx(-0.475)
    assert test.half == pytest.approx(scipy_stats.t.ppf(0.975, 3) * d.std(ddof=1) / 2)
    assert stats.compare([1.0], [2.0, 3.0], pair=False) is None
    assert stats.paired([1.0, 2.0], [1.0, 2.0])[2] == 1.0 and stats.paired([1.0, 2.0], [2.0, 3.0])[2] == 0.0


def test_holm_matches_the_step_down_procedure():
    # Sorted p: 0.01, 0.02, 0.03, 0.5 -> 4 x 0.01, 3 x 0.02, max(previous, 2 x 0.03), 1 x 0.5.
    assert stats.holm([0.03, 0.01, 0.5, 0.02]) == pytest.approx([0.06, 0.04, 0.5, 0.06])
    assert stats.holm([0.9, 0.8]) == [1.0, 1.0] and stats.holm([]) == []
    assert stats.holm([0.6, 0.7, 0.01]) == pytest.approx([1.0, 1.0, 0.03])


def fake_points(table: dict[tuple, list[float]], axes=("model.n_head", "model.n_layer"), batch=8):
    """Points from {(n_head, n_layer): [value of seed 0, seed 1, ...]}, with real configs for their seeds."""
    points = []
    for values, xs in table.items():
        cfg = config.load("tiny", [f"train.batch_size={batch}"])
        runs = [report.RunResult(None, cfg.replace(train={"seed": 1337 + i}), 6, x, x, None, None, [(0, x)])
                for i, x in enumerate(xs)]
        points.append(report.PointResult(str(values), dict(zip(axes, values)), runs))
    return points


def test_main_effects_are_marginal_means_with_intervals_over_seeds():
    # A shared seed effect (+0, +0.3, -0.2) on top of n_layer's true -0.1: paired, the effect is plain.
    seed, noise = np.array([0.0, 0.3, -0.2]), np.random.default_rng(0).normal(0, 0.01, (3, 2, 3))
    table = {(h, l): list(2.0 - 0.1 * (l == 2) + seed + noise[i, l - 1]) for i, h in enumerate((1, 2, 4)) for l in (1, 2)}
    points = sorted(fake_points(table), key=lambda p: p.mean("best_val_loss"))
    metric = lambda r: r.best_val_loss  # noqa: E731
    found = {(e.axis, e.level): e for e in effects.main_effects(points, ["model.n_head", "model.n_layer"], metric)}
    layer2 = found["model.n_layer", 2]
    assert layer2.cells == 3 and layer2.seeds == 3
    per_seed = np.mean([table[h, 2] for h in (1, 2, 4)], axis=0)
    assert (layer2.mean, layer2.half) == pytest.approx(stats.t_interval(per_seed))
    family = effects.comparisons(points, ["model.n_head", "model.n_layer"], metric, grid.short_key)
    assert [c.label for c in family] == [
        "n_head=1 vs 2 (mean over 2 cells)", "n_head=1 vs 4 (mean over 2 cells)", "n_head=2 vs 4 (mean over 2 cells)",
        "n_layer=1 vs 2 (mean over 3 cells)", f"best {points[0].name} vs runner-up {points[1].name}"]
    layers = family[3]
    assert layers.test.kind == "paired" and layers.test.diff == pytest.approx(0.1, abs=0.02)
    assert layers.test.p < 0.01 < min(c.test.p for c in family[:3])  # the real effect, found under the seed noise
    assert layers.p_holm == pytest.approx(min(1.0, len(family) * layers.test.p))  # the smallest p: times 5
    unpaired = stats.compare(effects.marginal([p for p in points if p.values["model.n_layer"] == 1], metric),
                             effects.marginal([p for p in points if p.values["model.n_layer"] == 2], metric), False)
    assert unpaired.p > 0.2  # Welch would have missed it


def test_points_that_draw_different_batches_are_compared_by_welch():
    points = fake_points({(4, 1): [2.0, 2.1, 2.2]}) + fake_points({(4, 2): [1.9, 2.1, 2.1]}, batch=16)
    family = effects.comparisons(points, ["model.n_layer"], lambda r: r.best_val_loss)
    assert [c.test.kind for c in family] == ["Welch"]
    assert family[0].test.p == pytest.approx(stats.welch([2.0, 2.1, 2.2], [1.9, 2.1, 2.1])[2])


def test_curves_draw_every_point_distinguishably_even_when_equal():
    points = fake_points({(h, 1): [2.0, 2.0] for h in (1, 2, 4, 8, 16)})
    for p in points:
        for r in p.runs:
            r.curve = [(t, 3.0 - t / 1000) for t in range(0, 1000, 100)]  # five identical curves
    fig = plots.curves_figure(points)
    looks = {(line.get_color(), line.get_linestyle(), line.get_marker()) for line in fig.axes[0].get_lines()}
    assert len(looks) == 5 and len({m for _, _, m in looks}) == 5 and len({s for _, s, _ in looks}) >= 4
    plots.plt.close(fig)


def test_heatmap_says_when_its_colours_are_zoomed(tmp_path):
    spec = {(h, l): [2.0 + 0.001 * h + 0.002 * l, 2.01 + 0.001 * h] for h in (1, 2) for l in (1, 2)}
    points = fake_points(spec)
    rep = report.Report(points, ["model.n_head", "model.n_layer"], [])
    texts = []
    original = plots.plt.close
    plots.plt.close = lambda fig: texts.extend([fig.axes[0].get_title(), *(t.get_text() for t in fig.axes[0].texts)])
    try:
        assert plots.heatmap(points, ["model.n_head", "model.n_layer"], [], tmp_path / "h.png", rep)
    finally:
        plots.plt.close = original
    assert "colour range zoomed to a spread of 0.0" in texts[0]
    mean, half = stats.t_interval(spec[1, 1])
    assert f"{mean:.3f}\n± {half:.3f}" in texts  # every cell annotated: mean and interval


def test_points_with_different_tokenizers_are_compared_by_bits_per_byte():
    char, bpe = (config.load("tiny", [f"data.tokenizer={t}"]) for t in ("char", "gpt2"))
    runs = [report.RunResult(None, cfg.replace(train={"seed": 1337 + i}), 6, loss, loss, None, None, [(0, loss)],
                             best_val_bpb=bpb, final_val_bpb=bpb)
            for cfg, loss, bpb in ((char, 1.5, 2.2), (char, 1.6, 2.3), (bpe, 4.5, 2.0), (bpe, 4.4, 1.9))
            for i in range(1)]
    metric, said = report.choose_metric(runs)
    assert metric == "val_bpb" and said[0].startswith("Compared by val bits per byte, not val loss: the points' "
                                                     "tokenizers differ (char, gpt2)")
    runs[0].best_val_bpb = float("nan")  # a run without val_bpb: loss it is, with a warning
    metric, said = report.choose_metric(runs)
    assert metric == "val_loss" and "not comparable across tokenizers" in said[0]
    assert report.choose_metric(runs[:2]) == ("val_loss", [])
