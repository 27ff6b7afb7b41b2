"""YAML read as data only, bounded in size, depth and expansion before it is parsed or copied.

Every YAML file gptjax reads (configs, a run's config.yaml, sweep files) goes through `load`.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from gptjax.errors import UserError
from gptjax.files import MAX_DEPTH, ReadError, read_bytes, tree_size

# A config sets a few dozen keys: anything far larger is a mistake or an attack (nested aliases
# expand to billions of values when the tree is copied).
MAX_BYTES = 64 * 1024
MAX_VALUES = 10_000
_OPENS, _CLOSES = (yaml.SequenceStartEvent, yaml.MappingStartEvent), (yaml.SequenceEndEvent, yaml.MappingEndEvent)


class YAMLBoundsError(UserError):
    """A YAML file far larger or deeper than any config; the message says which bound it passed."""


def load(path: Path):
    """The file's tree (yaml.safe_load: no code runs), refused if oversized, too deep, or not a regular file."""
    fix = "a config or sweep file sets a few dozen keys, give the right file"
    try:
        text = read_bytes(path, MAX_BYTES).decode("utf-8")
    except ReadError as e:  # over MAX_BYTES, or a FIFO or device whose read would never end
        raise YAMLBoundsError(f"config file {e}; give the right file") from None
    if _depth(text) > MAX_DEPTH:  # safe_load's composer recurses once per level: 20,000 `[` overflow it
        raise YAMLBoundsError(f"config file {path} is nested deeper than {MAX_DEPTH} levels; {fix}")
    tree = yaml.safe_load(text)
    values, depth = tree_size(tree, MAX_VALUES)
    if values > MAX_VALUES:
        raise YAMLBoundsError(f"config file {path} holds over {MAX_VALUES} values (with its aliases expanded); {fix}")
    if depth > MAX_DEPTH:  # an alias of a deep part inside another
        raise YAMLBoundsError(f"config file {path} is nested deeper than {MAX_DEPTH} levels; {fix}")
    return tree


def _depth(text: str) -> int:
    """How deep the document nests, from the parser's events (a loop, not recursion), stopping past MAX_DEPTH."""
    depth = deepest = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, _OPENS):
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_DEPTH:
                break
        elif isinstance(event, _CLOSES):
            depth -= 1
    return deepest
