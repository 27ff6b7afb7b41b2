"""User errors: every mistake a user can make is a UserError whose message is one line saying what to fix."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable


class UserError(ValueError):
    """Bad input from the user (config, data, run directory, checkpoint, flags)."""


def run_cli(main: Callable[[], None], debug: bool = False) -> int:
    """Run an entry point: user errors become one line on stderr and exit code 2."""
    # orbax logs routine notices through absl at WARNING; a user only needs errors.
    logging.getLogger("absl").setLevel(logging.ERROR)
    try:
        main()
        return 0
    except UserError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume from the last checkpoint", file=sys.stderr)
        return 130


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one `error:` line (exit 2) like every other user error, not a usage dump."""

    def error(self, message: str):
        print(f"error: {message}; see {self.prog} --help", file=sys.stderr)
        sys.exit(2)
