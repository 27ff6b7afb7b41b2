"""Files written whole or not at all (a kill mid-write leaves the old file or the new one, never half of
either), and files read with bounds (a FIFO, a device, a huge or deeply nested file is refused in one line)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from gptjax.errors import UserError

# Far deeper than any file gptjax reads (a config is 3 levels, a Hugging Face tokenizer.json about 6),
# far shallower than what makes a parser or a recursive walk of the tree overflow Python's stack.
MAX_DEPTH = 32


class ReadError(UserError):
    """A file that cannot be read as what it should be; the message names it and says why (the caller
    says how to fix it)."""


def atomic_write(path: str | Path, text: str) -> None:
    """Write `text` to a temporary sibling, then rename it over `path` (atomic on POSIX filesystems).

    The data reaches the disk before the rename, and the rename before we return: without the
    first fsync a power cut can leave the new name pointing at an empty file; without the second,
    the old file back. A failed write leaves no temporary file behind.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (a no-op where directories cannot be opened, as on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def follow_umask(path: str | Path) -> None:
    """Give a file the mode a plain open() would have: libraries that write through a temporary file
    (safetensors) leave it 0600, unreadable to the group that reads the file's 0644 neighbours."""
    mask = os.umask(0)  # the only way to read the umask; set straight back
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def read_bytes(path: str | Path, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most `max_bytes`. Anything else (a FIFO, whose open would wait for a
    writer forever, a device, a socket) is refused: it is opened non-blocking and checked before any read.
    A missing file raises FileNotFoundError, so callers can tell "absent" from "damaged"."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ReadError(f"{path} is {_kind(mode)}, not a regular file")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ReadError(f"{path} is over {_size(max_bytes)}, far larger than such a file ever is")
    return data


def read_json(path: str | Path, max_bytes: int = 1 << 20):
    """A JSON file's tree, as `read_bytes` reads it, refused (ReadError) if it is not UTF-8 JSON or is
    nested deeper than MAX_DEPTH. FileNotFoundError passes through."""
    text = read_bytes(path, max_bytes)
    try:
        tree = json.loads(text.decode("utf-8"))
    except RecursionError:  # json's parser stops itself at Python's recursion limit
        raise ReadError(f"{path} is nested deeper than {MAX_DEPTH} levels") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise ReadError(f"{path} is not a JSON file ({str(e)[:100]})") from None
    check_tree(tree, path)
    return tree


def tree_size(tree, max_values: int) -> tuple[int, int]:
    """(values, depth) of a parsed tree, every alias expanded, counting no further than past `max_values`
    values or MAX_DEPTH levels: iterative, so neither a deep nor a self-referencing tree overflows."""
    count, depth, stack = 1, 1, [(tree, 1)]
    while stack and count <= max_values and depth <= MAX_DEPTH:
        node, level = stack.pop()
        depth = max(depth, level)
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        count += len(children)  # leaves are counted here and never pushed: a big vocabulary walks fast
        stack.extend((child, level + 1) for child in children if isinstance(child, (dict, list)))
    return count, depth


def check_tree(tree, path, max_values: int = 1 << 62) -> None:
    values, depth = tree_size(tree, max_values)
    if depth > MAX_DEPTH:
        raise ReadError(f"{path} is nested deeper than {MAX_DEPTH} levels")
    if values > max_values:
        raise ReadError(f"{path} holds over {max_values} values (with its aliases expanded)")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISDIR, "a folder"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"
