"""The agent timeline: elapsed seconds that never step, within a boot and across restarts.

The wall clock of a gateway steps: a Pi without a real-time clock boots with the time of
its last shutdown and jumps when NTP (or GNSS) sets it; a bad source can step it while it
is "synchronised". Delays, budgets, rates, MKT weights and data-missing timeouts are
*durations*, so they are measured here, never as differences of wall-clock stamps:

``elapsed = base + CLOCK_BOOTTIME``
    within one boot (same kernel boot id) the timeline is the boot-time clock plus a
    constant: monotonic, counts suspend, never steps. A restart of the agent in the same
    boot resumes exactly (the boot-time clock kept counting while it was down).
after a reboot (a new boot id)
    the boot-time clock starts again from zero, so the timeline goes on from the value
    saved last, plus the downtime *as the wall clock tells it* — only when the clock was
    synchronised both when that value was saved and now. Otherwise the downtime counts as
    nothing (see :meth:`Timeline.resume` for why).

Only differences of elapsed times mean anything. A new timeline starts at the wall time
(elapsed = wall at its first start), which makes its figures readable and lets a saved
rule state of version 1 (whose times were wall-clock times) go on unchanged.

The wall time is kept for display and records only: :class:`WallMap` learns, from pairs
seen together, which wall time an elapsed instant had, step by step, so that an instant
computed on the timeline (a delay that ran out, a budget spent between two samples) can
be stamped as the clock read at that moment (:meth:`Timeline.ts_of`).

The writer's thread owns the timeline (:class:`agent.ingest.Ingest` holds it); its state
is committed with the rule state (state key ``timeline``), so the two always agree.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("coldgate.timeline")

STATE_VERSION = 1
#: A change of ``wall - elapsed`` beyond this is a step of the wall clock: a new piece of
#: the map begins. Below it (NTP slewing, the microseconds between two clock reads), the
#: newest pair wins.
STEP_S = 1.0
#: Pieces of a wall map kept; instants older than the oldest piece use its offset.
MAX_PIECES = 16


class WallMap:
    """Elapsed → wall, piecewise ``wall = elapsed + offset``, learnt from pairs seen together.

    Pure and small (at most ``limit`` pieces), JSON-able through :meth:`state`.
    """

    __slots__ = ("starts", "offsets", "limit")

    def __init__(self, pieces: Any = None, *, limit: int = MAX_PIECES) -> None:
        self.limit = limit
        self.starts: list[float] = []
        self.offsets: list[float] = []
        for start, offset in pieces or ():
            start, offset = float(start), float(offset)
            if not (math.isfinite(start) and math.isfinite(offset)) or (self.starts and start < self.starts[-1]):
                raise ValueError(f"wall map piece {[start, offset]!r} is not a time after the one before")
            self.starts.append(start)
            self.offsets.append(offset)
        del self.starts[:-limit], self.offsets[:-limit]

    def __bool__(self) -> bool:
        return bool(self.starts)

    def note(self, elapsed: float, wall: float) -> None:
        """``wall`` was the wall time at ``elapsed`` (pairs older than the newest piece are ignored)."""
        offset = wall - elapsed
        starts = self.starts
        if starts:
            if elapsed < starts[-1]:
                return
            if abs(offset - self.offsets[-1]) <= STEP_S:
                self.offsets[-1] = offset
                return
        starts.append(elapsed)
        self.offsets.append(offset)
        if len(starts) > self.limit:
            del starts[0], self.offsets[0]

    def ts_of(self, elapsed: float) -> float:
        """The wall time the clock read at ``elapsed`` (``elapsed`` itself with nothing learnt)."""
        if not self.starts:
            return elapsed
        i = bisect.bisect_right(self.starts, elapsed) - 1
        return elapsed + self.offsets[max(i, 0)]

    def state(self) -> list[list[float]]:
        return [[a, b] for a, b in zip(self.starts, self.offsets, strict=True)]


class Timeline:
    """One agent's timeline (see the module docstring). Not thread-safe: one owner thread."""

    def __init__(self, boot_id: str, base: float, *, walls: WallMap | None = None) -> None:
        self.boot_id = boot_id
        #: elapsed = base + boottime seconds, in this boot
        self.base = base
        self.walls = walls if walls is not None else WallMap()
        #: the newest (elapsed, wall, synced) noted: what a reboot measures its downtime from
        self.last: tuple[float, float, bool] | None = None
        #: sensors whose readings carry the device's own time: elapsed = device ts + offset
        self._devices: dict[str, float] = {}

    @classmethod
    def start(cls, *, boot_id: str, mono_ns: int, wall: float, synced: bool) -> Timeline:
        """A new timeline, starting at the wall time."""
        tl = cls(boot_id, wall - mono_ns / 1e9)
        tl.note(tl.at(mono_ns), wall, synced)
        return tl

    # -- reading it --------------------------------------------------------------------
    def at(self, mono_ns: int) -> float:
        """The elapsed time of a boot-time reading (``mono_ns``, CLOCK_BOOTTIME ns) of this boot."""
        return self.base + mono_ns / 1e9

    def note(self, elapsed: float, wall: float, synced: bool) -> None:
        """The wall clock read ``wall`` at ``elapsed`` (``synced``: and was synchronised)."""
        if self.last is None or elapsed >= self.last[0]:
            self.last = (elapsed, wall, synced)
        self.walls.note(elapsed, wall)

    def ts_of(self, elapsed: float) -> float:
        """The wall time at an elapsed instant, as the clock read then (for display, records)."""
        return self.walls.ts_of(elapsed)

    def place(self, sensor_id: str, device_ts: float, elapsed: float, wall: float) -> float:
        """The elapsed time of a reading stamped by its device (a logger's memory, the
        accelerated simulator), received at ``elapsed``/``wall``.

        The device's clock is the sensor's own timeline: its first such reading is put on
        the agent's by its age on arrival (``wall - device_ts``, never negative: a reading is
        not taken after it arrived), and from then on differences of the device's time are
        differences of elapsed time. A step of the gateway's clock does not move it; a
        device time that runs back is a late sample (the engine holds the sensor's
        present). Not saved: after a restart the first reading places the device anew.
        """
        offset = self._devices.get(sensor_id)
        if offset is None:
            offset = self._devices[sensor_id] = elapsed - max(0.0, wall - device_ts) - device_ts
        return device_ts + offset

    # -- saving and resuming -------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        last = self.last
        return {"version": STATE_VERSION, "boot_id": self.boot_id, "base": self.base,
                "elapsed": None if last is None else last[0], "wall": None if last is None else last[1],
                "synced": None if last is None else last[2], "walls": self.walls.state()}

    @classmethod
    def resume(cls, saved: Mapping[str, Any] | None, *, boot_id: str, mono_ns: int, wall: float,
               synced: bool) -> tuple[Timeline, dict[str, Any]]:
        """The timeline a saved state continues into now; and what happened, for an event.

        - nothing saved (a new store, or a rule state of version 1 whose times are wall
          times): a new timeline at the wall time;
        - the same boot: the same base, exact (the boot-time clock counted the downtime);
        - a reboot: the saved elapsed plus the downtime by the wall clock, when the clock was
          synchronised when it was saved and is now; else plus nothing.

        *Why nothing*, without a synchronised clock: on a Pi without RTC the wall clock after
        a reboot reads roughly the time of the last shutdown (fake-hwclock) or 1970, so its
        difference is no measurement — it is as likely to be zero or negative as to be
        hours. Counting nothing is the conservative choice for delay rules (a delay counts
        only time the agent saw, so no alarm is raised from a value held through a downtime
        nobody measured), but *not* for budgets: time out of range during the downtime is
        not spent, so a budget can under-count. The agent therefore never guesses the
        figure and says it instead: the ``timeline_resumed`` event records the downtime as
        the wall clock tells it and ``counted: false``, for the reviewer to weigh.

        A saved state that cannot be read is logged and replaced by a new timeline (the
        resumed rule state then times from now), never a crash.
        """
        mono = mono_ns / 1e9
        if saved is None:
            return cls.start(boot_id=boot_id, mono_ns=mono_ns, wall=wall, synced=synced), {"resumed": "new"}
        try:
            if saved.get("version") != STATE_VERSION:
                raise ValueError(f"version {saved.get('version')!r}, expected {STATE_VERSION}")
            old_boot, base = str(saved["boot_id"]), _finite(saved["base"])
            last_el, last_wall = _finite(saved["elapsed"]), _finite(saved["wall"])
            was_synced = saved["synced"] is True
            walls = WallMap(saved.get("walls", []))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            log.error("saved timeline unreadable (%s): the rules time from now on a new timeline", exc)
            tl = cls.start(boot_id=boot_id, mono_ns=mono_ns, wall=wall, synced=synced)
            return tl, {"resumed": "unreadable", "error": str(exc)[:200]}
        wall_downtime = wall - last_wall
        if old_boot == boot_id and base + mono >= last_el:
            tl = cls(boot_id, base, walls=walls)
            info: dict[str, Any] = {"resumed": "same_boot", "downtime_s": round(base + mono - last_el, 3),
                                    "counted": True}
        else:
            counted = was_synced and synced and wall_downtime >= 0.0
            downtime = wall_downtime if counted else 0.0
            tl = cls(boot_id, last_el + downtime - mono, walls=walls)
            info = {"resumed": "reboot", "previous_boot_id": old_boot, "counted": counted,
                    "downtime_s": round(downtime, 3), "wall_downtime_s": round(wall_downtime, 3),
                    "synced_then": was_synced, "synced_now": synced}
            if not counted:
                log.warning("rebooted: the downtime cannot be measured (clock %s when saved, %s now; the wall clock "
                            "says %.0f s) and counts as nothing on the rules' timeline",
                            "synchronised" if was_synced else "unsynchronised",
                            "synchronised" if synced else "unsynchronised", wall_downtime)
        tl.last = (last_el, last_wall, was_synced)
        tl.note(tl.at(mono_ns), wall, synced)
        info["elapsed"] = round(tl.at(mono_ns), 3)
        return tl, info


def _finite(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{v!r} is not a finite number")
    return float(v)


__all__ = ["MAX_PIECES", "STEP_S", "Timeline", "WallMap"]
