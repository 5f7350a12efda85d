"""Room for the store: what it may still write, a spare for a full disk, and refusal episodes.

No SQL here (that is :mod:`agent.store`'s); the store measures, this module decides.

What counts
    The quota counts the store's *live* bytes: ``(page_count - freelist_count) x
    page_size`` plus the WAL file. Free pages (left by deleted acknowledged records) are
    room, not use: SQLite puts new rows in them before it grows the file. A store whose
    file is mostly free pages is not full (coldgate 0.1 counted the file size, and
    refused readings with 407 of 423 pages free).
The filesystem
    The quota cannot promise room the disk does not have. The store also stops short
    of the filesystem's end (``statvfs``): readings may grow the store while the disk
    keeps ``min_free`` free, alarms and events while it keeps ``min_free / 2``; the
    rest is for acknowledgements, checkpoints, the spill file at exit and the record of
    a refusal. Free pages inside the file are room either way.
Tiers
    Readings are accepted below ``quota - reserve`` (and the filesystem's limit for
    them); alarms and events use the reserve, up to ``quota``; beyond it even they are
    refused. Only the ``data_loss`` event that says so goes in beyond (one record per
    summary). Refusal ends once readings fit again with ``hysteresis`` to spare, so a
    store at its limit does not start and end an episode with every commit.
The spare
    A file of ``spare`` bytes beside the store (``<store>.spare``), allocated while the
    disk has room. When something else fills the disk (a log, a core dump) down to
    ``min_free / 4``, the store deletes it and has room to acknowledge, to checkpoint its WAL (which must copy new
    pages into the database file, and so grow it) and to say what it refused; it is
    made again once the disk has ``min_free + spare`` free.
Episodes
    :class:`Refusals` counts what is refused from the first refusal to the end, and
    says it in ``data_loss`` events: one when refusal starts, one at once when alarms
    and events are refused too, a summary at most every ``SUMMARY_S`` while it lasts,
    and one when it ends. The count survives a failed commit and a reopened connection.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.timebase import rfc3339

log = logging.getLogger("agent.store")

KIB, MIB = 1 << 10, 1 << 20
#: Bytes a record is taken to need before it is written (a reading's row is ~400 B).
EST_READING, EST_OTHER = 420, 1024
#: A refusal episode that lasts is summarised at most this often.
SUMMARY_S = 60.0
#: At most this many alarm ids are named in a refusal event.
MAX_NAMED = 20


def _clamp(v: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, v))


@dataclass(frozen=True)
class Budget:
    """The store's limits in bytes; :meth:`for_quota` derives them from the config."""

    quota: int
    reserve: int
    min_free: int
    spare: int
    hysteresis: int
    wal_bytes: int

    @classmethod
    def for_quota(cls, quota: int, reserve_pct: float, *, min_free: int | None = None,
                  spare: int | None = None, page_size: int = 4096) -> Budget:
        """Limits for a quota: the reserve is ``reserve_pct`` of it; the WAL is checkpointed
        at 1/16 of it (64 KiB to 1 MiB); spare and ``min_free`` are 1/8 of it (512 KiB to
        8 MiB), enough to checkpoint such a WAL with a transaction of records behind it."""
        quota = max(int(quota), 16 * page_size)
        reserve = int(quota * reserve_pct / 100.0)
        wal = _clamp(quota // 16, 64 * KIB, MIB)
        room = _clamp(quota // 8, 512 * KIB, 8 * MIB)
        hysteresis = _clamp(quota // 50, 8 * page_size, 4 * MIB)
        return cls(quota=quota, reserve=reserve, min_free=room if min_free is None else max(0, min_free),
                   spare=room if spare is None else max(0, spare), hysteresis=hysteresis,
                   wal_bytes=wal)


@dataclass(frozen=True)
class Usage:
    """One measurement of the store and its filesystem."""

    live: int  # live pages and the WAL: what the quota counts
    free_pages: int  # bytes of free pages inside the database file
    file_bytes: int  # database file and WAL as they sit on the disk
    wal: int
    fs_free: int | None  # bytes free on the filesystem for this process; None if unknown

    def caps(self, b: Budget) -> tuple[int, int, str]:
        """Bytes the store may hold in readings and in all records, and which limit binds
        (``quota`` or ``filesystem``). On the filesystem, readings stop ``min_free`` short of
        full and alarms and events ``min_free / 2`` short, so they keep room after readings."""
        readings, records = b.quota - b.reserve, b.quota
        if self.fs_free is None:
            return readings, records, "quota"
        base = self.live + self.free_pages
        fs_readings = base + max(0, self.fs_free - b.min_free)
        fs_records = base + max(0, self.fs_free - b.min_free // 2)
        limit = "filesystem" if fs_readings < readings else "quota"
        return min(readings, fs_readings), min(records, fs_records), limit


def fs_free(path: Path) -> int | None:
    """Free bytes for an unprivileged writer on the filesystem holding ``path``."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


class Spare:
    """The spare file: allocated while the disk has room, deleted when it is full."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self.released_at: float | None = None  # wall time, for status

    @property
    def present(self) -> bool:
        try:
            return self.path.stat().st_size >= self.size
        except OSError:
            return False

    def ensure(self, free: int | None, min_free: int) -> bool:
        """Make the spare if it is missing and the disk has ``min_free + size`` free."""
        if self.size <= 0 or self.present or free is None or free < min_free + self.size:
            return False
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.size)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("cannot allocate the spare %s (%d bytes): %s", self.path, self.size, exc)
            self.path.unlink(missing_ok=True)
            return False
        if self.released_at is not None:
            log.warning("disk has room again: spare %s allocated again", self.path)
        self.released_at = None
        return True

    def release(self) -> bool:
        """Delete the spare (the disk is full); True when that freed something."""
        if not self.present:
            return False
        try:
            self.path.unlink()
        except OSError as exc:
            log.error("cannot delete the spare %s: %s", self.path, exc)
            return False
        self.released_at = time.time()
        log.error("disk nearly full: spare %s (%d bytes) released so the store can acknowledge, "
                  "checkpoint and record what it refuses", self.path, self.size)
        return True


def tally_loss(lost: dict[str, Any], readings: Iterable[Mapping[str, Any]]) -> None:
    """Count lost readings into ``lost``: how many, per sensor, first and last time."""
    sensors = lost.setdefault("sensors", {})
    for item in readings:
        lost["count"] = lost.get("count", 0) + 1
        ts = float(item["ts"])
        lost["first_ts"] = min(lost.get("first_ts", ts), ts)
        lost["last_ts"] = max(lost.get("last_ts", ts), ts)
        sid = str(item.get("sensor_id"))
        sensors[sid] = sensors.get(sid, 0) + 1


def loss_details(lost: Mapping[str, Any]) -> dict[str, Any]:
    """The ``data_loss`` event details of a :func:`tally_loss` count."""
    return {"what": "readings", "count": lost["count"], "sensors": lost["sensors"],
            "from": rfc3339(lost["first_ts"]), "to": rfc3339(lost["last_ts"])}


class Refusals:
    """One refusal episode of the store; see the module docstring."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.active = False
        #: "readings" while only readings are refused, "records" once alarms and events are
        self.stage: str | None = None
        self.limit: str | None = None  # "quota" or "filesystem"
        self.started_at: float | None = None  # wall time, for the events only
        self.total = 0
        self.events_said = 0
        self._readings: dict[str, Any] = {}
        self._others: dict[str, Any] = {}
        self._said_at = -1e18  # monotonic

    # -- a failed commit takes nothing back ----------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        return copy.deepcopy(self.__dict__)

    def restore(self, snap: Mapping[str, Any]) -> None:
        self.__dict__.update(copy.deepcopy(dict(snap)))

    @property
    def unsaid(self) -> int:
        return self._readings.get("count", 0) + self._others.get("count", 0)

    def refuse(self, refused: list[Mapping[str, Any]], limit: str, now_wall: float) -> bool:
        """Count ``refused``; True when an event is due now (start, stage change, summary)."""
        readings = [i for i in refused if i.get("type") == "reading"]
        others = [i for i in refused if i.get("type") != "reading"]
        tally_loss(self._readings, readings)
        o = self._others
        for item in others:
            o["count"] = o.get("count", 0) + 1
            kind = str(item.get("type"))
            o[kind] = o.get(kind, 0) + 1
            if kind == "alarm":
                ids = o.setdefault("alarm_ids", [])
                if len(ids) < MAX_NAMED and item.get("alarm_id") not in ids:
                    ids.append(item.get("alarm_id"))
            else:
                names = o.setdefault("event_names", {})
                name = str(item.get("event"))
                names[name] = names.get(name, 0) + 1
        self.total += len(refused)
        due = False
        if not self.active:
            self.active, self.started_at, due = True, now_wall, True
            self.stage = None
        stage = "records" if others or self.stage == "records" else "readings"
        if stage != self.stage:
            self.stage, due = stage, True
        self.limit = limit
        return due or time.monotonic() - self._said_at >= SUMMARY_S

    def details(self, *, ended: bool, quota: int, usage: Usage | None) -> dict[str, Any] | None:
        """The next ``data_loss`` event's details (and the tallies start again), or None."""
        if not self.active and not self.unsaid:
            return None
        r, o = self._readings, self._others
        d: dict[str, Any] = {"reason": "store_full", "limit": self.limit or "quota"}
        if r.get("count"):
            d.update(loss_details(r))
        else:
            d.update({"what": "readings", "count": 0, "sensors": {}})
        if o.get("count"):
            d["what"] = "records"
            d["count"] = d["count"] + o["count"]
            d["readings"] = r.get("count", 0)
            for k in ("alarm", "event"):
                if o.get(k):
                    d[f"{k}s"] = o[k]
            if o.get("alarm_ids"):
                d["alarm_ids"] = o["alarm_ids"]
            if o.get("event_names"):
                d["event_names"] = o["event_names"]
        d["refusing"] = self.stage or "readings"
        d["episode"] = {"started_at": rfc3339(self.started_at) if self.started_at else None,
                        "refused_total": self.total, "event": self.events_said + 1}
        d["quota_bytes"] = quota
        if usage is not None:
            d["used_bytes"] = usage.live
            if usage.fs_free is not None:
                d["fs_free_bytes"] = usage.fs_free
        d["still_refusing"] = not ended
        self._readings, self._others = {}, {}
        self._said_at = time.monotonic()
        self.events_said += 1
        if ended:
            self._reset()  # the next episode starts afresh
        return d


__all__ = ["EST_OTHER", "EST_READING", "Budget", "Refusals", "Spare", "Usage", "fs_free", "loss_details",
           "tally_loss"]
