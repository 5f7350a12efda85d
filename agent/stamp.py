"""The one stamping factory: every record's ``ts``, ``time_quality``, monotonic time and boot id.

Readings, alarms and events — those the daemon makes, those the store makes itself
(``stream_started``, ``data_loss``), those the uplink makes (``batch_set_aside``) and
those the CLI makes offline (an alarm acknowledged while the agent is stopped) — are
stamped here and nowhere else, so that they all honour ``[time] sync_source`` and all
carry the monotonic time (``CLOCK_BOOTTIME``) and boot id a later ``clock_step``
correction needs.

Whether the clock is synchronised is probed when the stamper is made and again by the
clock watch (:mod:`agent.clockwatch`, every few seconds), never per record: stamping is on
the hot path, a probe is a system call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.timebase import Clock, boot_id


class Stamper:
    """Stamps records from one :class:`~agent.timebase.Clock`. Thread-safe (plain reads)."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or Clock()
        self.boot_id = boot_id()
        self.synced = bool(self.clock.synced())

    @classmethod
    def for_source(cls, sync_source: str) -> Stamper:
        """A stamper on the system clock with the configured ``[time] sync_source``."""
        return cls(Clock(sync_source))

    # -- the clock ---------------------------------------------------------------------
    def now(self) -> float:
        """Wall-clock time, UTC epoch seconds (for ``ts`` only, never for deadlines)."""
        return self.clock.now()

    def mono_ns(self) -> int:
        return self.clock.mono_ns()

    def probe(self) -> bool:
        """Ask the clock again whether it is synchronised (the clock watch does, every few s)."""
        self.synced = bool(self.clock.synced())
        return self.synced

    @property
    def quality(self) -> str:
        return "synced" if self.synced else "unsynced"

    def wall_minus_boot(self) -> float:
        """``wall - boottime`` in seconds: it changes only when the wall clock steps."""
        return self.clock.now() - self.clock.mono_ns() / 1e9

    # -- records -----------------------------------------------------------------------
    def stamp(self, fields: Mapping[str, Any], *, ts: float | None = None) -> dict[str, Any]:
        """``fields`` (with ``type``) stamped now; ``ts`` keeps a time the caller knows better."""
        item = dict(fields)
        item["ts"] = self.clock.now() if ts is None else ts
        item["time_quality"] = self.quality
        item["mono_ns"] = self.clock.mono_ns()
        item["boot_id"] = self.boot_id
        return item

    def event(self, name: str, details: Mapping[str, Any], *, ts: float | None = None) -> dict[str, Any]:
        """An ``event`` record ``name`` with ``details``."""
        return self.stamp({"type": "event", "event": name, "details": dict(details)}, ts=ts)

    def alarm(self, change: Mapping[str, Any]) -> dict[str, Any]:
        """An ``alarm`` record from a rule engine change (which carries its own ``ts``)."""
        ts = change.get("ts")
        return self.stamp({"type": "alarm", **{k: v for k, v in change.items() if k != "ts"}},
                          ts=ts if isinstance(ts, (int, float)) else None)


__all__ = ["Stamper"]
