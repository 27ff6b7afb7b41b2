"""How far a loop dispatches ahead of the devices: far enough that they always have the next program, and
never so far that XLA:CPU deadlocks on cores split into devices.

XLA:CPU's client launches a program over several devices from a pool of as many threads as cores, and
lets each device hold 32 programs in flight: the launch of a 33rd blocks its pool thread until one ends.
When the program it waits for is an all-reduce whose other half needs that thread, neither ever runs,
and after 40 s XLA aborts the process with "Termination timeout for all reduce" (reproduced in a few
seconds with 100 evaluation batches dispatched at once: BENCHMARKS.md, "The two-device split by
default"). So a loop that runs ahead waits for its program IN_FLIGHT back before it goes on.
"""

from __future__ import annotations

import collections

import jax

IN_FLIGHT = 8  # programs a loop keeps queued: enough to hide the host's work, far from XLA:CPU's 32


class Paced:
    """Outputs of the programs a loop dispatched, waited for once IN_FLIGHT newer ones are queued."""

    def __init__(self, limit: int = IN_FLIGHT):
        self.limit = limit
        self.queue: collections.deque = collections.deque()

    def add(self, out):
        """`out` (an output the program does not donate later), after waiting for the one `limit` back."""
        self.queue.append(out)
        if len(self.queue) > self.limit:
            jax.block_until_ready(self.queue.popleft())
        return out
