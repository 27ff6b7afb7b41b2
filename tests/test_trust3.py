"""Runs, checkpoints, resume, sampling and the CLI under an adversarial user (issue #28).

Each test names the item of the issue it holds to. Training and sampling run in this process
(run_in_process), on copies of one tiny run trained once.
"""

import shutil

import numpy as np
import pytest

from gptjax import api, config, errors
from gptjax.ablate import sweep
from gptjax.bench import main as bench_main
from gptjax.interop import convert
from gptjax.sampling import SamplerError
from gptjax.train import runs, trainer
from gptjax.train.checkpoint import Checkpoints
from gptjax.train.tracking import read_metrics
from tests.conftest import run_in_process, run_main
from tests.test_bad_input import snapshot
from tests.test_convert import write_hf_folder
from tests.test_trust import error_line

TRAIN = ["tiny", "train.steps=4", "train.eval_every=2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run with checkpoints at steps 2 and 4."""
    run = tmp_path_factory.mktemp("trust3") / "run"
    trainer.train(config.load(TRAIN[0], [*TRAIN[1:], f"run.out_dir={run}"]))
    return run


@pytest.fixture
def run(trained, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def meta_file(run, step):
    return run / "checkpoints" / str(step) / "meta" / "metadata"


# ---------------------------------------------------------------------------
# 1. The best checkpoint survives resumes


def test_best_checkpoint_survives_every_resume(tmp_path):
    run = tmp_path / "run"
    # A learning rate warming up to 10 makes every val loss after step 2 worse, so step 2 stays the best; one
    # schedule for all three commands, so one compiled step.
    common = ["run.keep_checkpoints=1", "train.eval_every=2", "train.on_nonfinite=skip", "train.lr=10",
              "train.warmup_steps=50", "train.lr_decay_steps=100", f"run.out_dir={run}"]
    trainer.train(config.load("tiny", [*common, "train.steps=2"]))
    # Each resume opens the folder anew, as the process after a kill does.
    for steps in (4, 6):
        trainer.train(config.load("tiny", [*common, f"train.steps={steps}"]))
        with Checkpoints(run, read_only=True) as ckpts:
            assert ckpts.steps() == [2, steps] and ckpts.best_step() == 2
    best = runs.load(run, "best")
    val = {r["step"]: r["val_loss"] for r in read_metrics(run) if "val_loss" in r}
    assert best.step == 2 and best.meta["val_loss"] == val[2] == min(val[s] for s in (2, 4, 6))
    with Checkpoints(run, read_only=True) as ckpts:
        assert ckpts.manager.metrics(2) == {"val_loss": val[2]}  # orbax's own record too


def test_best_of_an_older_run_without_orbax_metrics_is_kept(trained, tmp_path):
    """Runs saved before orbax's metrics were written have only their meta's val loss: it is enough."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    for step in (2, 4):
        shutil.rmtree(run / "checkpoints" / str(step) / "metrics", ignore_errors=True)
    with Checkpoints(run, keep=1) as ckpts:
        meta = ckpts.meta(4)
        params, opt_state, _ = ckpts.restore(4, *_abstract(meta))
        for step, loss in ((6, 9.0), (8, 9.5)):
            ckpts.save(step, params, opt_state, {**meta, "val_loss": loss}, loss)
    with Checkpoints(run, read_only=True) as ckpts:
        assert ckpts.steps() == [4, 8] and ckpts.best_step() == 4


def _abstract(meta):
    cfg = config.from_dict(meta["config"])
    pieces = trainer.build(cfg, trainer.sharding.make_mesh(cfg.mesh))
    return pieces.abstract_state.params, pieces.abstract_state.opt_state


# ---------------------------------------------------------------------------
# 5, 11. A checkpoint's meta is checked; one that cannot be read gives way to the intact step


def resume_to_6(run):
    return run_in_process("train.py", *TRAIN, "train.steps=6", f"run.out_dir={run}")


def test_an_edited_meta_is_damage_and_resume_falls_back(run):
    meta_file(run, 4).write_text(meta_file(run, 4).read_text().replace('"step": 4', '"step": 5', 1))
    result = resume_to_6(run)
    assert result.returncode == 0, result.stderr
    assert "its meta (step, config, RNG key) does not match the checksum" in result.stderr
    assert "resuming from step 2 of 6" in result.stdout


def test_a_renamed_checkpoint_folder_is_not_taken_at_its_name(run):
    shutil.move(run / "checkpoints" / "4", run / "checkpoints" / "45")
    result = resume_to_6(run)
    assert result.returncode == 0 and "already trained" not in result.stdout, result.stderr
    assert "holds step 4, not 45" in result.stderr and "resuming from step 2 of 6" in result.stdout
    assert (run / "checkpoints-damaged" / "45").is_dir()


@pytest.mark.parametrize("damage", ["empty folder", "truncated meta"])
def test_unreadable_meta_falls_back_to_the_intact_step(run, damage):
    if damage == "empty folder":
        (run / "checkpoints" / "50").mkdir()
        expect = "resuming from step 4 of 6"
    else:
        meta_file(run, 4).write_text(meta_file(run, 4).read_text()[:50])
        expect = "resuming from step 2 of 6"
    result = resume_to_6(run)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert expect in result.stdout


def test_a_run_inside_a_runs_checkpoints_is_refused(run):
    before = snapshot(run)
    line = error_line(run_in_process("train.py", *TRAIN, f"run.out_dir={run / 'checkpoints' / '50'}"))
    assert f"lies inside the checkpoints of the run {run}" in line
    assert snapshot(run) == before


def test_step_best_passes_over_a_damaged_meta(run):
    meta_file(run, 2).write_text("{")
    assert runs.load(run, "best").step == 4
    result = run_in_process("sample.py", run, "--step", "best", "--max-new-tokens", "5")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    from gptjax.look import cli as inspect_cli
    shown = run_main(inspect_cli.main, ["next", str(run), "--step", "best", "--prompt", "a"])
    assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stderr


def test_sample_suggests_no_step_whose_meta_is_damaged_too(run):
    truncated = max((run / "checkpoints" / "4" / "params").rglob("d/*"), key=lambda p: p.stat().st_size)
    truncated.write_bytes(truncated.read_bytes()[:100])
    line = error_line(run_in_process("sample.py", run, "--max-new-tokens", "5"))
    assert "try --step 2" in line
    meta_file(run, 2).write_text("{")
    line = error_line(run_in_process("sample.py", run, "--max-new-tokens", "5"))
    assert "checkpoints/4" in line and "--step" not in line


# ---------------------------------------------------------------------------
# 10, 13, 18. Nothing left behind; seeds, names and steps in range


def test_from_hf_with_a_nan_weight_leaves_nothing_and_the_fixed_rerun_works(tmp_path):
    src = write_hf_folder(tmp_path / "hf", n_layer=1, n_head=2, n_embd=8, vocab_size=11, n_positions=16)
    good = (src / "model.safetensors").read_bytes()
    from safetensors.numpy import load_file, save_file
    tensors = load_file(src / "model.safetensors")
    tensors["transformer.h.0.mlp.c_fc.weight"][0, 0] = np.nan
    save_file(tensors, src / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "new" / "run"
    assert "non-finite" in error_line(run_main(convert.main, ["from-hf", str(src), str(out)]))
    assert not (tmp_path / "new").exists()
    (src / "model.safetensors").write_bytes(good)
    assert run_main(convert.main, ["from-hf", str(src), str(out)]).returncode == 0
    assert runs.load(out).step == 0 and sorted(p.name for p in out.parent.iterdir()) == ["run"]


@pytest.mark.parametrize("seed", ["-1", "99999999999999999999"])
def test_train_seed_out_of_range_is_one_line_and_writes_nothing(tmp_path, seed):
    line = error_line(run_in_process("train.py", *TRAIN, f"train.seed={seed}", f"run.out_dir={tmp_path / 'run'}"))
    assert f"train.seed must be between 0 and {2**63 - 1}, got {seed}" in line
    assert not (tmp_path / "run").exists()


def test_sample_seed_out_of_range(trained):
    assert "--seed must be between 0" in error_line(run_in_process("sample.py", trained, "--seed", str(10**20)))


def test_a_superscript_step_is_not_a_number(trained):
    assert "--step must be latest, best or a step number, got '²'" in error_line(
        run_in_process("sample.py", trained, "--step", "²"))


def test_inputs_json_holding_a_list(run):
    (run / "inputs.json").write_text("[1, 2]")
    before = snapshot(run)
    assert f"{run / 'inputs.json'} is damaged (not a JSON object)" in error_line(resume_to_6(run))
    assert snapshot(run) == before


def test_an_out_dir_name_over_255_bytes(tmp_path):
    line = error_line(run_in_process("train.py", *TRAIN, f"run.out_dir={tmp_path / ('é' * 130)}"))
    assert "run.out_dir has a folder name of 260 bytes, more than the 255" in line


def test_sweep_file_with_a_number_for_out(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("base: tiny\ngrid: {model.n_layer: [1, 2]}\nout: 5\n")
    assert "out must be a folder path, got 5" in error_line(run_main(sweep.main, [str(spec)]))


# ---------------------------------------------------------------------------
# 19. The Python API checks memory as sample.py does


def test_api_sample_refuses_what_memory_cannot_hold(trained):
    run = api.load_run(trained)
    with pytest.raises(SamplerError, match="needs about .* GiB, more than the"):
        api.sample(run, "RO", max_new_tokens=100_000, num_samples=100_000)


# ---------------------------------------------------------------------------
# 20. A config change on resume is named, with how to go on


def test_another_optimizer_on_resume_names_the_key(run):
    before = snapshot(run)
    line = error_line(run_in_process("train.py", *TRAIN, "train.steps=6", "train.optimizer=lion",
                                     f"run.out_dir={run}"))
    assert (f"{run} holds a run trained with train.optimizer='adamw', but this config says 'lion'; "
            f"set train.optimizer=adamw to resume it") in line
    assert "move" not in line and "damaged" not in line
    assert snapshot(run) == before


def test_an_edited_config_yaml_names_the_key_and_suggests_no_other_step(run):
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("n_layer: 2", "n_layer: 4"))
    before = snapshot(run)
    for result in (run_in_process("sample.py", run), resume_to_6(run)):
        line = error_line(result)
        assert "config.yaml says model.n_layer=4, but checkpoint 4 was saved with 2" in line, line
        assert "--step" not in line and "move" not in line
    assert snapshot(run) == before


# ---------------------------------------------------------------------------
# 21. Messages


def test_a_hostile_pickle_is_refused_without_torch_advice(tmp_path):
    torch = pytest.importorskip("torch")
    src = write_hf_folder(tmp_path / "hf", n_layer=1, n_head=2, n_embd=8, vocab_size=11, n_positions=16)
    (src / "model.safetensors").unlink()
    torch.save({"x": Hostile()}, src / "pytorch_model.bin")
    line = error_line(run_main(convert.main, ["from-hf", str(src), str(tmp_path / "run")]))
    assert "holds objects other than tensors, which gptjax never unpickles" in line
    assert "weights_only" not in line and "False" not in line
    assert not (tmp_path / "run").exists()


class Hostile:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize("main, argv", [(sweep.main, ["tiny", "--no-such-flag"]), (sweep.main, ["report"]),
                                        (bench_main, ["--steps", "x"]), (convert.main, ["from-hf"]),
                                        (convert.main, ["sideways"])])
def test_bad_flags_are_one_error_line(main, argv):
    result = run_main(main, argv)
    assert result.returncode == 2 and "usage:" not in result.stderr, result.stderr
    assert [line for line in result.stderr.splitlines() if line] == [result.stderr.strip()]
    assert result.stderr.startswith("error: ")


@pytest.mark.parametrize("override", ["train.lr=inf", "model.logit_softcap=inf", "train.min_lr=.inf"])
def test_infinite_rates_and_caps_are_refused(override):
    with pytest.raises(config.ConfigError, match="must be a finite number >= 0"):
        config.load("tiny", [override])


def preparing():
    """Data preparation's progress line, left open as a Ctrl-C in the middle of it leaves it."""
    trainer.show_data_progress(trainer.data.Progress("tokens", 3, 300, 900, 9000, 1.0))


def test_interrupted_prints_on_its_own_line(capsys):
    def main():
        preparing()
        raise KeyboardInterrupt

    assert errors.run_cli(main) == 130
    err = capsys.readouterr().err
    assert err.endswith("\ninterrupted; nothing new was saved\n") and err.startswith("\rdata"), err


def test_an_error_after_a_progress_line_starts_a_line_of_its_own(capsys):
    def main():
        preparing()
        raise errors.UserError("bad")

    assert errors.run_cli(main) == 2
    assert capsys.readouterr().err.endswith("\nerror: bad\n")
