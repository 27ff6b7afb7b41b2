"""The README and the docs site name only what exists: every repository path, command, flag and preset
they mention is checked against the tree and the command line's own --help, and the site builds strictly."""

from __future__ import annotations

import functools
import os
import re
import shlex

import pytest

from gptjax import cli
from tests.conftest import ROOT, run_main

# The README's two set-up commands: what a newcomer pastes first. .ci/run runs the second.
TRAIN_COMMAND = ("python3 -m venv .venv && . .venv/bin/activate && pip install -e . && python train.py && "
                 "python sample.py runs/shakespeare_char_cpu")
TEST_COMMAND = ('python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && '
                'pip install -e ".[dev,hf]" && ruff check . && pytest')

# BENCHMARKS.md is part of the site (docs/benchmarks.md includes it).
DOCS = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
REPO_DIRS = ("gptjax", "tests", "benchmarks", "configs", "docs", ".ci")
PRESETS = ROOT / "gptjax" / "presets"
OVERRIDE = re.compile(r"(?:model|data|train|mesh|run)\.\w+=.*")
KEY = re.compile(r"((?:model|data|train|mesh|run)\.\w+)(=\S*)?")
# Spans of that shape that are not config keys: files, and attributes of the Python API's objects.
NOT_KEYS = re.compile(r".*\.(py|bin|safetensors|json|jsonl|yaml|txt|png)|run\.cfg|model\.causal_attention")
OTHER_TOOLS_FLAGS = {"--find-links", "--index-url"}  # pip's, named in docs/index.md
PLACEHOLDER = re.compile(r"[A-Z][A-Z_]+")  # RUN_DIR, CONFIG, FILE.txt: a word the reader fills in
PRESET_TAKERS = {("train",), ("sweep",), ("bench",)}  # commands whose first word is a config


# ---------------------------------------------------------------------------
# What the pages name


def code_of(text: str) -> tuple[list[str], list[str]]:
    """(inline code spans, command lines of the shell blocks) of a Markdown text."""
    commands = []
    for block in re.split(r"^```", text, flags=re.M)[1::2]:
        lang, _, body = block.partition("\n")
        lines = body.splitlines()
        prompts = [line[2:] for line in lines if line.startswith("$ ")]  # a shown session: only its commands
        if prompts:
            commands += prompts
        elif lang.strip() in ("bash", "sh", "shell"):
            commands += [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.findall(r"(?<!`)`([^`\n]+)`(?!`)", prose), commands


def invocations(line: str) -> list[list[str]]:
    """The simple commands of a shell line, each as words: env assignments, srun and comments dropped."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:  # an unbalanced quote in an illustrative span
        words = line.split()
    found, current = [], []
    for word in [*words, "&&"]:
        if word in ("&&", "||", "|", ";"):
            while current and (re.fullmatch(r"[A-Z_]+=.*", current[0]) or current[0] in ("srun", "timeout")):
                current = current[1:]
            if current:
                found.append(current)
            current = []
        else:
            current.append(word)
    return found


@functools.cache
def everything() -> list[tuple[str, str, str]]:
    """(page, kind, text) for every span and command line of every page; kind is 'span' or 'command'."""
    out = []
    for page in DOCS:
        spans, commands = code_of(page.read_text(encoding="utf-8"))
        out += [(page.name, "span", s) for s in spans] + [(page.name, "command", c) for c in commands]
    return out


# ---------------------------------------------------------------------------
# What exists


@functools.cache
def help_text(*argv: str) -> str:
    """`gptjax ARGV --help`, as a user would see it (in this process; the environment left as it was)."""
    saved = dict(os.environ)
    try:
        result = run_main(cli.main, [*argv, "--help"])
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert result.returncode == 0, (argv, result.stderr)
    return result.stdout


def subcommands(*argv: str) -> set[str]:
    """The subcommands `gptjax ARGV --help` lists (argparse indents each by four spaces)."""
    return set(re.findall(r"^ {4}([a-z][\w-]*)(?:\s|$)", help_text(*argv), re.M))


@functools.cache
def config_keys() -> frozenset[str]:
    """Every section.key, as `gptjax train --help` lists them."""
    keys = frozenset(re.findall(r"^ +((?:model|data|train|mesh|run)\.\w+) ", help_text("train"), re.M))
    assert len(keys) > 20, "gptjax train --help no longer lists the config keys one a line"
    return keys


def has_flag(text: str, flag: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text) is not None


def preset_exists(name: str) -> bool:
    return (PRESETS / f"{name}.yaml").is_file() or (PRESETS / "ablations" / f"{name}.yaml").is_file()


class NoSuchCommand(Exception):
    pass


def parser_of(words: list[str]) -> tuple[tuple[str, ...], list[str]] | None:
    """(the `gptjax ...` words whose --help lists this command's flags, the words after them), or None
    for a command that is not ours. Raises NoSuchCommand for a subcommand the CLI does not have."""
    if words[0] in ("python", "python3") and words[1:2] and words[1] in ("train.py", "sample.py"):
        words = words[1:]
    if words[0] in ("python", "python3") and words[1:3] == ["-m", "gptjax.bench"]:  # gptjax bench, by module
        return ("bench",), words[3:]
    if words[0] in ("train.py", "sample.py"):
        return (words[0].removesuffix(".py"),), words[1:]
    if words[0] != "gptjax" or len(words) < 2 or words[1].startswith("-"):
        return None
    sub, rest = words[1], words[2:]
    if not has_flag(help_text(), sub):
        raise NoSuchCommand(f"`gptjax {sub}` is not a subcommand (see gptjax --help)")
    nested = {"inspect": None, "convert": None, "tokenizer": None, "sweep": ("report", "fit")}
    if sub in nested and rest and not rest[0].startswith("-") and not PLACEHOLDER.fullmatch(rest[0]):
        allowed = nested[sub]
        if allowed is None or rest[0] in allowed:
            if rest[0] not in subcommands(sub) and f"gptjax {sub} {rest[0]} " not in help_text(sub):
                raise NoSuchCommand(f"`gptjax {sub} {rest[0]}` is not a command (see gptjax {sub} --help)")
            return (sub, rest[0]), rest[1:]
    return (sub,), rest


# ---------------------------------------------------------------------------
# The checks


def test_every_repository_path_named_exists():
    """In code, links and prose alike: `gptjax/interop/hf.py`, tests/test_seeds.py, docs/heads.png."""
    pattern = re.compile(rf"(?<![\w./~$-])(?:{'|'.join(map(re.escape, REPO_DIRS))})/[\w./*-]*")
    missing = []
    for page in DOCS:
        for path in pattern.findall(page.read_text(encoding="utf-8")):
            path = path.rstrip(".")
            if PLACEHOLDER.search(path) or "*" in path:
                continue
            if not (ROOT / path).exists():
                missing.append(f"{page.name}: {path}")
    assert not missing, "named in the docs but not in the repository:\n" + "\n".join(missing)


def test_every_layout_entry_exists():
    """docs/index.md's map of gptjax/: each top-level entry, and each module named beside a subpackage."""
    text = (ROOT / "docs/index.md").read_text(encoding="utf-8")
    block = text.split("## Layout", 1)[1].split("```\n", 2)[1]
    missing, package = [], None
    for line in block.splitlines():
        top = re.match(r"  (\w+/|\w+\.py)\s", line)
        if top:
            package = top.group(1).rstrip("/") if top.group(1).endswith("/") else None
            if not (ROOT / "gptjax" / top.group(1)).exists():
                missing.append(f"gptjax/{top.group(1)}")
        folder = ROOT / "gptjax" / (package or "")
        missing += [f"{folder.relative_to(ROOT)}/{m}" for m in re.findall(r"\b(\w+\.py)\b", line)
                    if not (folder / m).is_file() and m not in ("train.py", "sample.py")]
    assert not missing, "the layout names what is not there:\n" + "\n".join(sorted(set(missing)))


def test_every_command_flag_and_preset_named_exists():
    wrong = []
    for page, kind, text in everything():
        for words in invocations(text):
            if words[0] in ("python", "python3") and words[1:2] and words[1].startswith("benchmarks/"):
                wrong += check_script(page, words[1], words[2:])
                continue
            if words[0] in ("train.py", "sample.py") and kind == "span" and len(words) == 1:
                continue  # the file named in prose
            try:
                found = parser_of(words)
            except NoSuchCommand as e:
                wrong.append(f"{page}: {e}")
                continue
            if found is None:
                continue
            command, rest = found
            wrong += [f"{page}: `{text}`: {e}" for e in check_arguments(command, rest)]
    assert not wrong, "\n".join(wrong)


def check_script(page: str, script: str, args: list[str]) -> list[str]:
    path = ROOT / script
    if not path.is_file():
        return [f"{page}: {script} does not exist"]
    source = path.read_text(encoding="utf-8")
    args = args[: args.index("--")] if "--" in args else args  # what follows is another command
    return [f"{page}: {script} has no flag {a}" for a in args
            if a.startswith("--") and f'"{a.split("=")[0]}"' not in source]


def check_arguments(command: tuple[str, ...], rest: list[str]) -> list[str]:
    helps = help_text(*command)
    errors = [f"no flag {w.split('=')[0]} in `gptjax {' '.join(command)} --help`" for w in rest
              if w.startswith("--") and not has_flag(helps, w.split("=")[0])]
    errors += [f"no flag {w} in `gptjax {' '.join(command)} --help`" for w in rest
               if re.fullmatch(r"-\w", w) and not has_flag(helps, w)]
    errors += [f"no config key {w.split('=')[0]}" for w in rest if OVERRIDE.fullmatch(w)
               and w.split("=")[0] not in config_keys()]
    words = [w for w in rest if not w.startswith("-")]
    if words and command in PRESET_TAKERS and bare_name(words[0]) and not preset_exists(words[0]):
        errors.append(f"no preset {words[0]!r} in gptjax/presets")
    if "--config" in rest and rest.index("--config") + 1 < len(rest):
        name = rest[rest.index("--config") + 1]
        if bare_name(name) and not preset_exists(name):
            errors.append(f"no preset {name!r} in gptjax/presets")
    return errors


def bare_name(word: str) -> bool:
    """A preset name rather than a path, an override or a placeholder."""
    return re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", word) is not None and not word.endswith((".yaml", ".yml"))


def test_every_flag_named_alone_belongs_to_some_command():
    """`--seeds N` in prose: some command of ours (or a benchmark script) takes it."""
    sources = [help_text(*c) for c in (("train",), ("sample",), ("sweep",), ("sweep", "report"), ("sweep", "fit"),
                                       ("bench",))]
    sources += [help_text(command, sub) for command in ("inspect", "convert", "tokenizer")
                for sub in subcommands(command)]
    sources += [p.read_text(encoding="utf-8") for p in (ROOT / "benchmarks").glob("*.py")]
    unknown = []
    for page, kind, text in everything():
        flag = re.match(r"(--[a-z][a-z0-9-]*)(?!\w)", text)  # --xla_... flags are XLA's
        if kind == "span" and flag and flag.group(1) not in OTHER_TOOLS_FLAGS \
                and not any(has_flag(s, flag.group(1)) for s in sources):
            unknown.append(f"{page}: `{text}`")
    assert not unknown, "flags no command takes:\n" + "\n".join(unknown)


def test_every_config_key_named_exists():
    """`train.init_from=SRC`, `model.n_kv_head` in prose: keys the config has (overrides in commands are
    checked with their command). BENCHMARKS.md's spans of this shape name functions (`model.normal`)."""
    unknown = [f"{page}: `{text}`" for page, kind, text in everything()
               if kind == "span" and page != "BENCHMARKS.md" and KEY.fullmatch(text) and not NOT_KEYS.fullmatch(text)
               and KEY.fullmatch(text).group(1) not in config_keys()]
    assert not unknown, "config keys that do not exist:\n" + "\n".join(unknown)


def test_configs_page_lists_every_preset_and_only_presets():
    text = (ROOT / "docs/configs.md").read_text(encoding="utf-8")
    listed = {name for row in re.findall(r"^\| (`.*?) \|", text, re.M) for name in re.findall(r"`([\w.-]+)`", row)}
    shipped = {p.stem for p in PRESETS.glob("*.yaml")}
    assert listed - shipped == set(), "listed in docs/configs.md but not shipped"
    assert shipped - listed == set(), "shipped but not in docs/configs.md's table"


def test_readme_is_one_screen_with_both_setup_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) < 200
    _, commands = code_of(readme)
    assert TRAIN_COMMAND in commands and TEST_COMMAND in commands
    ci = (ROOT / ".ci/run").read_text(encoding="utf-8").splitlines()
    assert TEST_COMMAND in ci, ".ci/run must run the README's test command, as is"
    assert any(re.search(r"\bmkdocs build --strict\b", line) for line in ci[ci.index(TEST_COMMAND):])


def github_slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_links_resolve():
    """The README is read on GitHub, outside the site: its relative links and anchors must hold there."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", readme):
        if re.match(r"\w+://", target):
            continue
        path, _, anchor = target.partition("#")
        file = ROOT / path
        if not file.exists():
            broken.append(target)
        elif anchor and file.is_file():
            headings = re.findall(r"^#+ (.+)$", re.sub(r"^```.*?^```", "", file.read_text(encoding="utf-8"),
                                                       flags=re.M | re.S), re.M)
            if anchor not in {github_slug(h) for h in headings}:
                broken.append(target)
    assert not broken, f"README links to what is not there: {broken}"


def test_site_builds_strictly(tmp_path):
    """mkdocs build --strict, as .ci/run does: a broken link or anchor, or a page outside the nav, fails."""
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[dev]')")
    pytest.importorskip("material", reason="mkdocs-material is not installed (pip install -e '.[dev]')")
    from mkdocs.commands.build import build
    from mkdocs.config import load_config

    build(load_config(str(ROOT / "mkdocs.yml"), site_dir=str(tmp_path / "site"), strict=True))
    assert (tmp_path / "site/benchmarks/index.html").read_text(encoding="utf-8").count("Seeds together")
