"""The planted-bug check (benchmarks/planted_bugs.py) stays runnable: every bug's original line is still in
its file exactly once, and every test named to catch it exists. Without this, a change to a planted line
(the loop's first line, the schedule's call) leaves the check refusing to run, noticed only when someone
runs it; here it fails the suite at once, naming the bug to update."""

import importlib.util
import sys

from tests.conftest import ROOT


def planted_bugs():
    spec = importlib.util.spec_from_file_location("planted_bugs", ROOT / "benchmarks" / "planted_bugs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # its dataclasses look their module up while being made
    spec.loader.exec_module(module)
    return module


def test_every_planted_line_is_in_its_file_exactly_once():
    module = planted_bugs()
    assert len(module.BUGS) >= 20
    assert module.stale(module.BUGS, ROOT) == []


def test_every_test_named_to_catch_a_bug_exists():
    missing = []
    for bug in planted_bugs().BUGS:
        for node in bug.tests:
            file, _, name = node.partition("::")
            source = (ROOT / file).read_text() if (ROOT / file).is_file() else ""
            if not source or (name and f"def {name.split('[')[0]}(" not in source):
                missing.append(f"{bug.name}: {node}")
    assert missing == []
