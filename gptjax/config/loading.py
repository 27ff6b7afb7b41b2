"""Reading a config: a YAML file or preset, `section.key=value` overrides, OmegaConf's type checks, --help."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from gptjax import yaml_io
from gptjax.config.sections import Config, ConfigError
from gptjax.errors import did_you_mean, first_line
from gptjax.files import MAX_DEPTH

# Presets ship inside the package; a configs/ folder in the working directory (the repo's, or a
# user's edited copies) is looked in first.
CONFIG_DIR = Path(__file__).resolve().parent.parent / "presets"
USER_CONFIG_DIR = Path("configs")
DEFAULT_CONFIG = "shakespeare_char_cpu"

SECTIONS = tuple(f.name for f in dataclasses.fields(Config))


def all_keys() -> dict[str, dataclasses.Field]:
    """Every dotted key (`model.n_layer`, ...) with its dataclass field."""
    return {f"{section.name}.{f.name}": f
            for section in dataclasses.fields(Config)
            for f in dataclasses.fields(section.default_factory())}


def resolve_path(name_or_path: str | None) -> Path:
    """A config file from a path, or a preset name looked up in ./configs/, then the shipped presets."""
    name = name_or_path or DEFAULT_CONFIG
    path = Path(name)
    if path.is_file():
        return path
    for candidate in (folder / leaf for folder in (USER_CONFIG_DIR, CONFIG_DIR) for leaf in (f"{name}.yaml", name)):
        if candidate.is_file():
            return candidate
    presets = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise ConfigError(f"config file {name!r} not found; give a path or one of the presets: {presets}")


def _nearest(key: str) -> str:
    return did_you_mean(key, all_keys()) or "; see --help for every key"


def _one_line(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None)
    msg = first_line(getattr(err, "msg", None) or err)
    if isinstance(err, (ConfigKeyError, ConfigAttributeError)) and key:
        return f"unknown config key {key!r}{_nearest(key)}"
    if key:
        return f"bad value for {key}: {msg}"
    return f"bad config: {msg}"


def _read_yaml(path: Path) -> dict:
    try:
        raw = yaml_io.load(path)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or first_line(e)  # a ReaderError has no .problem
        raise ConfigError(f"config file {path}: YAML syntax error{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} cannot be read: {e}") from None
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must be a mapping of sections (model:, data:, train:, ...)")
    for section, values in raw.items():
        if section not in SECTIONS:
            raise ConfigError(f"config file {path}: unknown section {section!r}; "
                              f"sections are {', '.join(SECTIONS)}")
        if not isinstance(values, dict):
            raise ConfigError(f"config file {path}: section {section!r} must be a mapping of keys to values")
    return raw


def parse_overrides(overrides: list[str]) -> dict:
    """`section.key=value` strings into a nested dict, values parsed by OmegaConf's dotlist grammar."""
    items = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or key.count(".") != 1:
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. model.n_layer=4")
        if key.split(".")[0] not in SECTIONS:
            raise ConfigError(f"unknown config key {key!r}{_nearest(key)}")
        if _nesting(value) > MAX_DEPTH:  # OmegaConf recurses once per level: 200 `[` overflow it
            raise ConfigError(f"override {key}=... is nested deeper than {MAX_DEPTH} levels; give a plain value")
        items.append(item if value.strip() else f"{key}=''")  # `key=` clears a string, as in YAML
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist(items))
    except (OmegaConfBaseException, yaml.YAMLError) as e:  # values are read as YAML
        raise ConfigError(f"bad override in {' '.join(overrides)!r}: {first_line(e)}") from None


def _nesting(value: str) -> int:
    """How deep `[`/`{` nest in an override's value (quotes ignored: an upper bound, which is all a check needs)."""
    depth = deepest = 0
    for c in value:
        depth += (c in "[{") - (c in "]}")
        deepest = max(deepest, depth)
    return deepest


def from_dict(tree: dict) -> Config:
    """Build a Config from a (possibly partial) nested dict, checking every key and type."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.create(tree))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        cause = e.__cause__ or e.__context__
        if isinstance(cause, ConfigError):  # raised by a __post_init__ check
            raise ConfigError(str(cause)) from None
        raise ConfigError(_one_line(e)) from None


# The three ways to say how long a run is: one per layer, and a command-line one replaces the file's.
LENGTH_KEYS = ("steps", "flops_budget", "tokens_per_param")


def _one_length(train: dict, where: str) -> list[str]:
    """The run-length keys a layer sets (a budget of 0 is off), at most one."""
    named = [k for k in LENGTH_KEYS if train.get(k) not in (None, 0, "")]
    if len(named) > 1:
        raise ConfigError(f"{' and '.join(f'train.{k}' for k in named)} both set {where}: a budget computes "
                          f"train.steps, so set one of them")
    return named


def load(name_or_path: str | None = None, overrides: list[str] = ()) -> Config:
    """The config named on the command line, with overrides applied and checked."""
    path = resolve_path(name_or_path)
    tree = _read_yaml(path)
    _one_length(tree.get("train", {}), f"in config file {path}")
    given = parse_overrides(list(overrides))
    if _one_length(given.get("train", {}), "on the command line") and "train" in tree:
        tree["train"] = {k: v for k, v in tree["train"].items() if k not in LENGTH_KEYS}
    for section, values in given.items():
        tree.setdefault(section, {}).update(values)
    cfg = from_dict(tree)
    if not cfg.run.out_dir:
        cfg = cfg.replace(run={"out_dir": str(Path("runs") / path.stem)})
    return cfg


def help_text(cfg: Config | None = None, name: str = "") -> str:
    """Every key with its default and meaning; given a loaded config, its value too, where it differs."""
    lines = ["config keys (set in the YAML file or as section.key=value):"]
    if cfg is not None:
        lines.append(f"  ({name or 'the config'}'s own value is shown after '->' where it differs from the default)")
    for key, f in all_keys().items():
        section, leaf = key.split(".")
        value = getattr(getattr(cfg, section), leaf) if cfg is not None else f.default
        chosen = f" -> {value!s}" if value != f.default else ""
        lines.append(f"  {key:<24} {f.default!s:<12}{chosen} {f.metadata['help']}")
    return "\n".join(lines)
