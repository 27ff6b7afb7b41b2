"""The two entry points as a user runs them: train, sample, resume, and one-line errors.

The training run is a real process, as a user starts it; the checks after it call the same
main() in this process (conftest.run_in_process), except one sample that crosses processes.
"""

import pytest

from tests.conftest import run_in_process, run_script


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "run"
    result = run_script("train.py", "tiny", f"run.out_dir={run}", "train.steps=30", "train.eval_every=15")
    assert result.returncode == 0, result.stderr
    assert "done: step 30" in result.stdout
    return run


@pytest.mark.slow  # the trained fixture is a train.py process
def test_sample_prints_text_and_same_seed_repeats(trained):
    args = ["sample.py", trained, "--max-new-tokens", "40", "--seed", "3", "--num-samples", "2"]
    a, b = run_script(*args), run_in_process(*args)  # the same text in another process, too
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout and len(a.stdout) > 60
    assert run_in_process("sample.py", trained, "--max-new-tokens", "40", "--seed", "4").stdout != a.stdout


@pytest.mark.slow  # the trained fixture is a train.py process
def test_greedy_is_deterministic_and_keeps_the_prompt(trained):
    args = ["sample.py", trained, "--prompt", "ROMEO:", "--temperature", "0", "--max-new-tokens", "20"]
    a, b = run_in_process(*args, "--seed", "1"), run_in_process(*args, "--seed", "2")
    assert a.returncode == 0 and a.stdout == b.stdout and a.stdout.startswith("ROMEO:")


@pytest.mark.slow  # the trained fixture is a train.py process
def test_rerun_resumes_from_saved_step(trained):
    result = run_in_process("train.py", "tiny", f"run.out_dir={trained}", "train.steps=45", "train.eval_every=15")
    assert result.returncode == 0, result.stderr
    assert "resuming from step 30 of 45" in result.stdout + result.stderr  # resumed, not trained afresh to 45
    assert "done: step 45" in result.stdout


def test_help_lists_keys():
    result = run_in_process("train.py", "--help")
    assert result.returncode == 0 and "model.n_head" in result.stdout and "train.grad_accum" in result.stdout
