"""Time: wall clock, boot-time monotonic clock, boot id, and whether the clock is synced.

A Raspberry Pi usually boots without a real-time clock: until NTP (or GNSS) sets it, the
wall clock starts from the last saved time and is wrong. Every record therefore carries
``time_quality`` and the store keeps, beside the wall time, the monotonic time
(``CLOCK_BOOTTIME``, which also counts suspend) and the kernel's boot id.

How synchronisation is detected (``[time] sync_source``):

``adjtimex`` (default)
    the kernel's own flag. ``adjtimex(2)`` returns ``TIME_ERROR`` (5) while the clock is
    unsynchronised (``STA_UNSYNC`` set); chrony, ntpd and systemd-timesyncd all clear it
    once they discipline the clock. This is what ``timedatectl``'s "System clock
    synchronized" reads.
``timesyncd``
    the file ``/run/systemd/timesync/synchronized``, which systemd-timesyncd creates
    at its first successful sync (for systems where the flag is not kept).
``assume_synced`` / ``assume_unsynced``
    fixed answers, for benches and tests.

When the clock becomes synchronised, records stamped earlier in the same boot are
corrected from the monotonic clock: see :mod:`agent.daemon` (``clock_step``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

TIMESYNCD_FLAG = Path("/run/systemd/timesync/synchronized")
_TIME_ERROR = 5


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h> (x86-64 and aarch64/armhf layouts agree on the
    # leading fields we read; the padding covers the rest).
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_pad", ctypes.c_int * 11),
    ]


def adjtimex_synced() -> bool | None:
    """The kernel's view: True synced, False unsynced, None when it cannot be asked."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        tx = _Timex()
        state = libc.adjtimex(ctypes.byref(tx))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return state != _TIME_ERROR


def boot_id() -> str:
    """The kernel's id of this boot (a fresh random id where there is none)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return _FALLBACK_BOOT_ID


_FALLBACK_BOOT_ID = str(uuid.uuid4())


def boottime_ns() -> int:
    """Monotonic nanoseconds since boot, counting suspend (CLOCK_BOOTTIME)."""
    try:
        return time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):
        return time.monotonic_ns()


@dataclass
class Clock:
    """The agent's clock. Tests pass their own ``sync_source`` or freeze the wall clock."""

    sync_source: str = "adjtimex"

    def now(self) -> float:
        return time.time()

    def mono_ns(self) -> int:
        return boottime_ns()

    def synced(self) -> bool:
        src = self.sync_source
        if src == "assume_synced":
            return True
        if src == "assume_unsynced":
            return False
        if src == "timesyncd":
            return TIMESYNCD_FLAG.exists()
        answer = adjtimex_synced()
        return bool(answer) if answer is not None else TIMESYNCD_FLAG.exists()


_last_day: tuple[int, str] = (-1, "")
_HH_MM = [f"{m // 60:02d}:{m % 60:02d}:" for m in range(1440)]
_SS = [f"{s:02d}." for s in range(60)]
_MMM = [f"{ms:03d}Z" for ms in range(1000)]


def rfc3339(ts: float) -> str:
    """``2026-11-23T08:15:02.125Z``: UTC, milliseconds, ``Z`` (docs/protocol.md).

    On the store's hot path: the date is formatted once a day, the time of day by
    arithmetic (UTC has no leap seconds in epoch time, so a day is 86,400 s).
    """
    global _last_day
    ms = round(ts * 1000)
    sec, milli = divmod(ms, 1000)
    day, rest = divmod(sec, 86400)
    cached = _last_day
    if cached[0] != day:
        # one tuple, swapped whole: safe when several threads format at once
        cached = _last_day = (day, time.strftime("%Y-%m-%dT", time.gmtime(day * 86400)))
    minute, s = divmod(rest, 60)
    return cached[1] + _HH_MM[minute] + _SS[s] + _MMM[milli]


def parse_rfc3339(text: str) -> float:
    """Epoch seconds from an RFC 3339 timestamp (``Z`` or an offset)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC).timestamp()
