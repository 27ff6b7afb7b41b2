"""Sweep planning, pure: a base config and swept keys -> the grid's points, their run directories, matched widths.

A sweep is a base config, axes (`model.n_head=2,4,8`: a key and its values), fixed settings
(`train.steps=500`: one value for every point) and a number of seeds. Every combination of
axis values is a point; seed i of a point trains with the point's train.seed + i. A point
that no config allows (n_embd % n_head != 0, ...) keeps its reason in `Point.error`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from gptjax import config, yaml_io
from gptjax.config import Config, ConfigError, ModelConfig
from gptjax.errors import did_you_mean

MATCHES = ("params",)
MATCH_TOLERANCE = 0.05  # --match params: the largest relative gap to the base's parameter count we accept
SWEEP_DIR = Path("runs") / "sweeps"
SWEEP_FILE = "sweep.json"       # in the sweep directory: the plan (axes, points, invalid ones and why)
WALL_FILE = "wall_time.json"    # in each run directory: seconds spent training it, summed over resumes
FILE_KEYS = {"base", "grid", "set", "seeds", "match", "out", "vary", "budgets", "aspect", "head_size"}
BUDGET = "train.flops_budget"  # --budgets B1,B2,...: an axis of this key, first, so every shape trains to each budget
LENGTHS = ("train.steps", "train.flops_budget", "train.tokens_per_param")
VARIES = ("grid", "one")  # every combination of the axes' values | the base, and each value alone on it
UNSWEPT = {"run.out_dir": "the sweep sets it per point", "train.seed": "use --seeds N (seed i = train.seed + i)"}


@dataclasses.dataclass(frozen=True)
class Spec:
    base: str                              # the base config: a preset name or a path
    axes: dict[str, list]                  # swept key -> its values, in the order given
    fixed: dict[str, Any]                  # keys set to one value at every point
    seeds: int = 1
    match: str | None = None               # "params": choose n_embd so the parameter count stays the base's
    out: str = ""                          # the sweep directory
    vary: str = "grid"                     # one of VARIES
    aspect: int | None = None              # depth family: n_embd = aspect x n_layer ...
    head_size: int | None = None           # ... and n_head = n_embd / head_size (nanochat's --depth)

    @property
    def budgets(self) -> list[float]:
        return list(self.axes.get(BUDGET, []))


@dataclasses.dataclass(frozen=True)
class Point:
    values: dict[str, Any]                 # swept key -> this point's value
    name: str                              # its directory name, e.g. n_head=2,n_layer=4
    cfg: Config | None                     # its config (seed offset 0, run.out_dir unset), None if invalid
    error: str | None = None               # why it cannot run

    def run_dir(self, sweep_dir: Path, seed_index: int) -> Path:
        return Path(sweep_dir) / self.name / f"seed={seed_index}"


# ---------------------------------------------------------------------------
# Reading the sweep: command-line items and sweep files

def check_key(key: str) -> str:
    keys = config.all_keys()
    if key not in keys:
        raise ConfigError(f"unknown config key {key!r}{did_you_mean(key, keys)}")
    if key in UNSWEPT:
        raise ConfigError(f"{key} cannot be set in a sweep: {UNSWEPT[key]}")
    return key


def parse_item(item: str) -> tuple[str, list]:
    """`model.n_head=2,4,8` -> ("model.n_head", [2, 4, 8]); values parse as YAML scalars, as in train.py."""
    key, sep, text = item.partition("=")
    if not sep or key.count(".") != 1:
        raise ConfigError(f"{item!r} must look like section.key=value or section.key=v1,v2,... e.g. model.n_head=2,4")
    values = [config.parse_overrides([f"{key}={piece}"])[key.split(".")[0]][key.split(".")[1]]
              for piece in text.split(",")]
    return check_key(key), values


def is_sweep_file(target: str) -> Path | None:
    """A YAML file with `base:` or `grid:` (a path, or a name in configs/ablations/), else None (a base config)."""
    for path in (Path(target), config.CONFIG_DIR / "ablations" / f"{target}.yaml"):
        if path.is_file() and path.suffix in (".yaml", ".yml"):
            try:
                raw = yaml_io.load(path)  # bounded: a sweep file is read as a config is
            except (yaml.YAMLError, OSError, UnicodeDecodeError):
                return None  # not ours to judge: config.load reports it as a base config
            return path if isinstance(raw, dict) and ("grid" in raw or "base" in raw) else None
    return None


def read_sweep_file(path: Path) -> Spec:
    raw = yaml_io.load(path)
    if unknown := set(raw) - FILE_KEYS:
        raise ConfigError(f"sweep file {path}: unknown keys {sorted(unknown)}; it may hold {sorted(FILE_KEYS)}")
    grid, fixed = raw.get("grid"), raw.get("set") or {}
    if not isinstance(raw.get("base"), str) or not isinstance(grid, dict) or not isinstance(fixed, dict):
        raise ConfigError(f"sweep file {path} needs base: CONFIG and grid: {{section.key: [values]}} (set: optional)")
    axes = {check_key(k): v if isinstance(v, list) else [v] for k, v in grid.items()}
    if raw.get("budgets") is not None:
        axes = {BUDGET: parse_budgets(raw["budgets"]), **axes}
    return Spec(raw["base"], axes, {check_key(k): v for k, v in fixed.items()}, raw.get("seeds", 1),
                raw.get("match"), raw.get("out") or str(SWEEP_DIR / path.stem), raw.get("vary", "grid"),
                raw.get("aspect"), raw.get("head_size"))


def parse_budgets(text) -> list[float]:
    """`3e13,1e14` (or a YAML list) -> [3e13, 1e14]: the FLOP budgets every point trains to."""
    pieces = text if isinstance(text, list) else str(text).split(",")
    try:
        budgets = [float(b) for b in pieces]
    except (TypeError, ValueError):
        raise ConfigError(f"budgets must be FLOP counts like 3e13,1e14, got {text!r}") from None
    if not budgets or not all(0 < b < float("inf") for b in budgets):
        raise ConfigError(f"budgets must be positive FLOP counts like 3e13,1e14, got {text!r}")
    return budgets


def make_spec(target: str, items: list[str], seeds: int | None, out: str | None, match: str | None,
              vary: str | None = None, settings: tuple[str, ...] = (), budgets: str | None = None,
              aspect: int | None = None, head_size: int | None = None) -> Spec:
    """The sweep from a sweep file or a base config, with command-line items and flags on top.

    `settings` (--set) are one value for every point; one-at-a-time sweeps need them, since there a
    single value is a point of its own. `budgets` (--budgets 3e13,1e14) trains every point to each."""
    path = is_sweep_file(target)
    spec = read_sweep_file(path) if path else Spec(target, {}, {})
    if budgets is not None:
        # First, and replacing a sweep file's budgets: the command line wins over the file.
        rest = {k: v for k, v in spec.axes.items() if k != BUDGET}
        spec = dataclasses.replace(spec, axes={BUDGET: parse_budgets(budgets), **rest})
    vary = vary or spec.vary
    if vary not in VARIES:
        raise ConfigError(f"vary must be one of {', '.join(VARIES)}, got {vary!r}")
    axes, fixed = dict(spec.axes), dict(spec.fixed)
    for key, values in map(parse_item, items):  # the command line wins over the file
        fixed.pop(key, None)
        axes[key] = values
    for key in [k for k, v in axes.items() if len(v) == 1 and vary == "grid" and k != BUDGET]:  # a setting
        fixed[key] = axes.pop(key)[0]
    for key, values in map(parse_item, settings):
        if len(values) != 1:
            raise ConfigError(f"--set {key}= takes one value, not {len(values)}; sweep a key without --set")
        axes.pop(key, None)
        fixed[key] = values[0]
    default_out = SWEEP_DIR / "-".join([Path(target).stem, *(k.split(".")[1] for k in axes)])
    spec = Spec(spec.base, axes, fixed, spec.seeds if seeds is None else seeds, match or spec.match,
                out or spec.out or str(default_out), vary, aspect or spec.aspect, head_size or spec.head_size)
    check_lengths(spec)
    check_family(spec)
    if not isinstance(spec.seeds, int) or spec.seeds < 1:
        raise ConfigError(f"seeds must be a positive integer, got {spec.seeds!r}")
    if not isinstance(spec.out, str):
        raise ConfigError(f"out must be a folder path, got {spec.out!r}; quote it if it looks like a number")
    if spec.match not in (None, *MATCHES):
        raise ConfigError(f"match must be one of {', '.join(MATCHES)}, got {spec.match!r}")
    if spec.match == "params" and "model.n_embd" in {**axes, **fixed}:
        raise ConfigError("--match params chooses model.n_embd per point; do not set or sweep it")
    return spec


def check_lengths(spec: Spec) -> None:
    if spec.budgets and (clash := [k for k in LENGTHS if k != BUDGET and k in {**spec.axes, **spec.fixed}]):
        raise ConfigError(f"--budgets sets each point's train.steps from its budget; do not also set {clash[0]}")


def check_family(spec: Spec) -> None:
    """The depth family (--aspect, --head-size) sets n_embd and n_head from n_layer: neither may be set too."""
    if spec.aspect is None and spec.head_size is None:
        return
    if spec.aspect is None or spec.head_size is None:
        raise ConfigError("the depth family needs both --aspect R (n_embd = R x n_layer) and --head-size K "
                          "(n_head = n_embd / K)")
    for name, v in (("aspect", spec.aspect), ("head_size", spec.head_size)):
        if not isinstance(v, int) or v < 1:
            raise ConfigError(f"{name} must be a positive integer, got {v!r}")
    if spec.match:
        raise ConfigError("--match params and the depth family (--aspect) both choose n_embd; use one")
    if clash := [k for k in ("model.n_embd", "model.n_head") if k in {**spec.axes, **spec.fixed}]:
        raise ConfigError(f"the depth family sets {clash[0]} from model.n_layer; do not set or sweep it")


def family(cfg: Config, spec: Spec) -> list[str]:
    """The depth family's width and heads for a config's depth, as overrides (none without --aspect)."""
    if spec.aspect is None:
        return []
    width = spec.aspect * cfg.model.n_layer
    if width % spec.head_size:
        raise ConfigError(f"the depth family's width {spec.aspect} x n_layer={cfg.model.n_layer} = {width} is not "
                          f"a multiple of the head size {spec.head_size}")
    return [f"model.n_embd={width}", f"model.n_head={width // spec.head_size}"]


# ---------------------------------------------------------------------------
# Planning the grid

def short_key(key: str) -> str:
    """`model.n_head` -> `n_head` where no other section has that name."""
    name = key.split(".")[1]
    return name if [k.split(".")[1] for k in config.all_keys()].count(name) == 1 else key


def point_name(values: dict[str, Any]) -> str:
    # Safe on every filesystem: letters, digits and . _ + - = , only; "base" for a sweep without axes.
    parts = [f"{short_key(k)}={value_text(v)}" for k, v in values.items()]
    return re.sub(r"[^A-Za-z0-9._+\-=,]", "_", ",".join(parts)) or "base"


def value_text(value: Any) -> str:
    # Budgets (3e13) as 3e+13, not JSON's 30000000000000.0; other numbers as JSON writes them.
    if isinstance(value, float) and abs(value) >= 1e6:
        return f"{value:g}"
    return value if isinstance(value, str) else json.dumps(value)


def overrides(settings: dict[str, Any]) -> list[str]:
    # JSON scalars are YAML scalars, so each value reaches config.load with the type it was given.
    return [f"{k}={json.dumps(v)}" for k, v in settings.items()]


def matched_width(model: ModelConfig, target: int) -> int:
    """The multiple of n_head for n_embd whose parameter count is nearest `target`."""
    h = model.n_head
    params = lambda k: dataclasses.replace(model, n_embd=k * h).n_params  # noqa: E731 - grows with k
    lo, hi = 1, 2
    while params(hi) < target:
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # smallest k with params(k) >= target lies in (lo, hi]
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if params(mid) < target else (lo, mid)
    return h * min((lo, hi), key=lambda k: abs(params(k) - target))


def _match(cfg: Config, target: int, with_vocab: Callable[[Config], Config]) -> Config:
    model = with_vocab(cfg).model
    width = matched_width(model, target)
    got = dataclasses.replace(model, n_embd=width).n_params
    if abs(got - target) > MATCH_TOLERANCE * target:
        raise ConfigError(f"no n_embd keeps the parameter count within {MATCH_TOLERANCE:.0%} of the base's "
                          f"{target:,}: the nearest multiple of n_head={model.n_head}, {width}, gives {got:,} "
                          f"({got / target - 1:+.1%}); use fewer heads or a wider base")
    return cfg.replace(model={"n_embd": width})


def plan(spec: Spec, with_vocab: Callable[[Config], Config]) -> list[Point]:
    """Every point of the grid, in order, each with its config or the reason it cannot run.

    with_vocab(cfg) resolves n_vocab from the data (and the steps from a budget), needed by --match params (it
    counts parameters) and --budgets (a budget too small for a shape makes that point invalid).
    """
    fixed = overrides(spec.fixed)
    base = _matched_base(spec, fixed) if spec.match == "params" else None
    target = with_vocab(base).model.n_params if base else 0
    points = []
    for values in combinations(spec, fixed):
        # Under --match, n_embd = n_head is a placeholder that always divides; _match replaces it.
        width = [f"model.n_embd={values.get('model.n_head', base.model.n_head)}"] if base else []
        try:
            cfg = config.load(spec.base, [*fixed, *width, *overrides(values)])
            cfg = _match(cfg, target, with_vocab) if base else cfg
            if spec.aspect:  # width and heads follow the depth; placeholders above always divide
                cfg = config.load(spec.base, [*fixed, *overrides(values), *family(cfg, spec)])
            if BUDGET in values:
                with_vocab(cfg)  # a budget that buys no step of this shape makes the point invalid, saying so
            values = {key: value_of(cfg, key) for key in values}  # as the config reads them: 1e-3 -> 0.001
            points.append(Point(values, point_name(values), cfg))
        except ConfigError as e:
            points.append(Point(values, point_name(values), None, str(e)))
    if len({p.name for p in points}) < len(points):
        raise ConfigError("two points of the grid get the same directory name; make the swept values differ "
                          "in letters, digits or . _ + -")
    return points


def combinations(spec: Spec, fixed: list[str]) -> list[dict[str, Any]]:
    """Each point's swept values: every combination (vary: grid), or the base ({}) and then each value
    that differs from the base's, alone (vary: one), as a one-at-a-time ablation of knobs."""
    if spec.vary == "grid":
        return [dict(zip(spec.axes, combo)) for combo in itertools.product(*spec.axes.values())]
    if spec.budgets:  # one knob at a time, at every budget
        knobs = dataclasses.replace(spec, axes={k: v for k, v in spec.axes.items() if k != BUDGET})
        return [{BUDGET: b, **c} for b in spec.budgets for c in combinations(knobs, fixed)]

    def is_base(key: str, value) -> bool:  # as the config reads it: 1e-3 is 0.001
        try:
            return value_of(config.load(spec.base, [*fixed, *overrides({key: value})]), key) == \
                value_of(config.load(spec.base, fixed), key)
        except ConfigError:
            return False  # an invalid point: plan says why
    return [{}, *({key: v} for key, values in spec.axes.items() for v in values if not is_base(key, v))]


def _matched_base(spec: Spec, fixed: list[str]) -> Config:
    try:
        return config.load(spec.base, fixed)
    except ConfigError as e:
        raise ConfigError(f"--match params holds the base config's size, but the base with the fixed settings is "
                          f"invalid: {e}") from None


def value_of(cfg: Config, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def run_config(point: Point, seed_index: int, sweep_dir: Path) -> Config:
    """Seed `seed_index` of a point: train.seed + seed_index, its own run directory, the sweep's wandb group."""
    cfg = point.cfg
    return cfg.replace(train={"seed": cfg.train.seed + seed_index},
                       run={"out_dir": str(point.run_dir(sweep_dir, seed_index)),
                            "wandb_group": cfg.run.wandb_group or Path(sweep_dir).name})
