"""The clock watch: is the wall clock synchronised, and did it step?

Every ``CHECK_EVERY_S`` the watch asks the clock (the configured ``sync_source``) and
compares ``wall - boottime`` with the last look: that difference changes only when the
wall clock is set. Two things can happen:

the clock became synchronised
    records stamped before, in this boot, keep their stamp and ``time_quality:
    unsynced`` (the chain is append-only); the writer restamps what it has not committed
    yet and appends a ``clock_step`` event that says, per run of such records, the
    ``offset_s`` to add (:meth:`agent.writer.Writer.correct_clock`);
the clock stepped by more than ``STEP_THRESHOLD_S``
    a ``clock_step`` event records the step.

Nothing in the agent waits on the wall clock (deadlines and retries run on the monotonic
clock), so a step delays nothing; the rules judge elapsed time the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from agent.stamp import Stamper

log = logging.getLogger("coldgate.clock")

CHECK_EVERY_S = 2.0
STEP_THRESHOLD_S = 2.0


class ClockWatch:
    """Watches one stamper's clock; ``on_synced(rel)`` and ``post(item)`` act on what it sees."""

    def __init__(self, stamper: Stamper, *, on_synced: Callable[[float], Any],
                 post: Callable[[dict[str, Any]], None]) -> None:
        self.stamper = stamper
        self.on_synced = on_synced
        self.post = post
        self.rel = stamper.wall_minus_boot()
        self.steps = 0

    def check(self) -> None:
        s = self.stamper
        was = s.synced
        synced = s.probe()
        rel = s.wall_minus_boot()
        step = rel - self.rel
        self.rel = rel
        if synced and not was:
            self.on_synced(rel)
        elif abs(step) > STEP_THRESHOLD_S:
            self.steps += 1
            log.warning("system clock stepped by %.3f s", step)
            self.post(s.event("clock_step", {"offset_s": round(step, 3), "synced": synced, "boot_id": s.boot_id,
                                             "corrections": []}))
        if was and not synced:
            log.warning("system clock lost synchronisation; records are stamped 'unsynced'")
