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


class KeptInterrupt:
    """Ctrl-C before training (while data is prepared): raised at once as usual, and also remembered, so one
    that Python could not deliver stops the command all the same, at the next `check()` or on leaving.

    Python drops an exception raised inside a gc callback ("Exception ignored in: _xla_gc_callback"): a
    SIGINT that lands while JAX's callback runs would otherwise vanish, and training would go on."""

    def __init__(self):
        self.signum: int | None = None
        self.previous = None

    def __enter__(self) -> KeptInterrupt:
        # Only over Python's own handler: an ignored SIGINT (nohup, `&`) or a caller's handler stays as it is.
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        self.signum = signum
        raise KeyboardInterrupt

    def check(self) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt

    def __exit__(self, _kind, value, _tb) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        if self.signum is not None and not isinstance(value, KeyboardInterrupt):
            raise KeyboardInterrupt from None  # instead of returning, or of what the interrupt broke (a pool)
