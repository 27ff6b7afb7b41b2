"""Stopping on request: SIGTERM (a scheduler's preemption notice) or SIGINT ends training with a checkpoint."""

from __future__ import annotations

import os
import signal
import sys
import threading

from gptjax.errors import Interrupted  # noqa: F401 (raised by the loop)


class StopRequests:
    """While active, the first SIGTERM/SIGINT only sets `signum` (the loop saves and stops at the next step);
    a second one exits at once, as a kill would, which the checkpoints survive."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, active: bool = True):
        self.signum: int | None = None
        self.previous: dict = {}
        self.active = active

    def __enter__(self) -> StopRequests:
        # Handlers can only be set from the main thread; a run started in another thread keeps the defaults.
        if self.active and threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *_) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        self.previous = {}

    def _handle(self, signum, _frame) -> None:
        if self.signum is not None:
            print(f"{signal.Signals(signum).name} again: exiting now, without waiting for the save",
                  file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.signum = signum
        print(f"{signal.Signals(signum).name}: saving a checkpoint before exiting (send it again to exit now)",
              file=sys.stderr, flush=True)
