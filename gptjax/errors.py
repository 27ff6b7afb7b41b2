"""User errors: every mistake a user can make is a UserError whose message is one line saying what to fix."""

from __future__ import annotations

import argparse
import difflib
import logging
import sys
import warnings
from collections.abc import Callable


class UserError(ValueError):
    """Bad input from the user (config, data, run directory, checkpoint, flags)."""

    def __init__(self, message: str):
        # Always one line: a key, value or path the user typed may hold a newline or a
        # control character, and is shown escaped rather than breaking the line.
        super().__init__("".join(c if c.isprintable() else repr(c)[1:-1] for c in str(message)))


def first_line(e: BaseException) -> str:
    """An exception's message cut to its first line (libraries add pages of detail), or its type's name."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def did_you_mean(word: str, choices) -> str:
    """"; did you mean X?" for the closest choice, or "" when none is close."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f"; did you mean {match[0]}?" if match else ""


class Interrupted(Exception):
    """Training stopped on a signal (SIGTERM, SIGINT); the message says what was saved and how to resume."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


_line_open = False  # a progress line on stderr waits for its next redraw (no newline yet)


def show_progress(text: str, done: bool = False) -> None:
    """A progress line on stderr, redrawn in place; whatever run_cli prints next starts on a line of its own."""
    global _line_open
    print(f"\r{text}", end="\n" if done else "", file=sys.stderr, flush=True)
    _line_open = not done


def _end_progress_line() -> None:
    global _line_open
    if _line_open:
        print(file=sys.stderr, flush=True)
        _line_open = False


def run_cli(main: Callable[[], None], debug: bool = False) -> int:
    """Run an entry point: user errors become one line on stderr and exit code 2."""
    # orbax logs routine notices through absl at WARNING; a user only needs errors.
    logging.getLogger("absl").setLevel(logging.ERROR)
    if not debug:
        _hide_leftovers_of_failed_reads()
        # orbax also logs each failed background write (a full disk: dozens of tracebacks); the
        # failure itself reaches the caller and becomes one line.
        logging.getLogger("absl").setLevel(logging.CRITICAL)
    try:
        try:
            main()
        finally:  # what follows (an error, "interrupted") is not appended to a progress line
            _end_progress_line()
        return 0
    except UserError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"interrupted: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:  # before training started, or in a command that saves nothing
        print("interrupted; nothing new was saved", file=sys.stderr)
        return 130


def _hide_leftovers_of_failed_reads() -> None:
    """When orbax fails to read a damaged checkpoint, its other reads still in flight fail
    later, in other threads and at exit, each printing pages of TensorStore detail after the
    one line that matters. Drop exactly those; anything else reaches the default hook."""
    default = sys.unraisablehook

    def hook(unraisable):
        code = getattr(unraisable.object, "cr_code", None)
        if ("Event loop is closed" in str(unraisable.exc_value)
                or (code is not None and "orbax" in code.co_filename)):
            return
        default(unraisable)

    sys.unraisablehook = hook
    warnings.filterwarnings("ignore", message="coroutine '_read_array_index_and_device_put' was never awaited")
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # "Task exception was never retrieved"


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one `error:` line (exit 2) like every other user error, not a usage dump."""

    def error(self, message: str):
        print(f"error: {message}; see {self.prog} --help", file=sys.stderr)
        sys.exit(2)
