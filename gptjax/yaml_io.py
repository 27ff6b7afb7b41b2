"""YAML read as data only, bounded in size and in expansion before it is parsed or copied."""

from __future__ import annotations

from pathlib import Path

import yaml

from gptjax.errors import UserError

# A config sets a few dozen keys: anything far larger is a mistake or an attack (nested aliases
# expand to billions of values when the tree is copied).
MAX_BYTES = 64 * 1024
MAX_VALUES = 10_000


class YAMLBoundsError(UserError):
    """A YAML file far larger than any config; the message says which bound it passed."""


def count_values(tree, limit: int) -> int:
    """Values in the tree with every alias expanded, counting no further than past `limit`."""
    count, stack = 0, [tree]
    while stack and count <= limit:
        node = stack.pop()
        count += 1
        stack.extend(node.values() if isinstance(node, dict) else node if isinstance(node, list) else ())
    return count


def load(path: Path):
    """The file's tree (yaml.safe_load: no code runs), refused if oversized."""
    with open(path, "rb") as f:
        text = f.read(MAX_BYTES + 1)
    if len(text) > MAX_BYTES:
        raise YAMLBoundsError(f"config file {path} is over {MAX_BYTES // 1024} KiB; a config sets a few dozen "
                              f"keys, give the right file")
    tree = yaml.safe_load(text.decode("utf-8"))
    if count_values(tree, MAX_VALUES) > MAX_VALUES:
        raise YAMLBoundsError(f"config file {path} holds over {MAX_VALUES} values (with its aliases expanded); "
                              f"a config sets a few dozen keys, give the right file")
    return tree
