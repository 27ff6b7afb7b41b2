"""The first hour, again (issue 29): the command line, nothing silent, files a user can read."""

import importlib

import pytest

import gptjax
from gptjax import bench, cli
from gptjax.ablate import sweep
from gptjax.interop import convert
from tests.conftest import run_main


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
