"""Time: wall clock, boot-time monotonic clock, boot id, and whether the clock is synced.

A Raspberry Pi usually boots without a real-time clock: until NTP (or GNSS) sets it, the
wall clock starts from the last saved time and is wrong. Every record therefore carries
``time_quality`` and the store keeps, beside the wall time, the monotonic time
(``CLOCK_BOOTTIME``, which also counts suspend) and the kernel's boot id.

How synchronisation is detected (``[time] sync_source``, see :func:`probe_synced`):

``auto`` (default)
    the kernel's flag through ``adjtimex`` where the process may ask; where it may not
    (the shipped unit sets ``ProtectClock=yes``, whose seccomp filter fails every
    ``@clock`` call with EPERM), the systemd-timesyncd flag. The fallback is logged once.
``adjtimex``
    the kernel's own flag. ``adjtimex(2)`` returns ``TIME_ERROR`` (5) while the clock is
    unsynchronised (``STA_UNSYNC`` set); chrony, ntpd and systemd-timesyncd all clear it
    once they discipline the clock. This is what ``timedatectl``'s "System clock
    synchronized" reads. Refused by a seccomp filter, it falls back like ``auto``.
``timesyncd``
    the file ``/run/systemd/timesync/synchronized``, which systemd-timesyncd (the NTP
    client of Raspberry Pi OS and Debian) creates at its first successful sync. Needs no
    system call a hardened unit filters.
``assume_synced`` / ``assume_unsynced``
    fixed answers, for benches and tests.

A probe never raises and never kills the process: a filtered call fails with EPERM
(the unit sets ``SystemCallErrorNumber=EPERM``; without it the kernel sends SIGSYS and
the agent dies before its first log line, as 0.1.0 did).

When the clock becomes synchronised, records stamped earlier in the same boot are
corrected from the monotonic clock: see :mod:`agent.daemon` (``clock_step``).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)

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


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library, loaded once. ``CDLL(None)`` is the process's own symbol table, which
    holds libc's ``adjtimex``: no ``ctypes.util.find_library``, which runs
    ``/sbin/ldconfig -p`` in a child process on every call (0.1.0 did that every 2 s)."""
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def adjtimex_synced() -> bool | None:
    """The kernel's view: True synced, False unsynced, None when it cannot be asked.

    ``modes = 0`` only reads, which needs no privilege; a seccomp filter may still refuse
    the call (EPERM, or ENOSYS), and then the answer is None, not a dead process.
    """
    libc = _libc()
    fn = getattr(libc, "adjtimex", None) if libc is not None else None
    if fn is None:
        _note_once("adjtimex-missing", "adjtimex is not available in this C library")
        return None
    tx = _Timex()
    state = fn(ctypes.byref(tx))
    if state < 0:
        err = ctypes.get_errno()
        _note_once(f"adjtimex-{err}", f"adjtimex refused: {errno.errorcode.get(err, err)} "
                                       "(a seccomp filter such as the unit's ProtectClock=yes)")
        return None
    return bool(state != _TIME_ERROR)


def timesyncd_synced(flag: Path | None = None) -> bool | None:
    """systemd-timesyncd's view: True once it has synchronised the clock, False while it
    runs and has not, None when it does not run here (its runtime directory, which it
    holds while it runs, is absent). ``flag`` defaults to :data:`TIMESYNCD_FLAG`."""
    flag = flag if flag is not None else TIMESYNCD_FLAG
    try:
        if flag.exists():
            return True
        return False if flag.parent.is_dir() else None
    except OSError:
        return None


def probe_synced(source: str) -> bool:
    """Whether the system clock is synchronised, by ``[time] sync_source``. Never raises.

    ``auto`` and ``adjtimex`` ask the kernel and fall back to the timesyncd flag when the
    kernel may not be asked; with no source at all the answer is False (records are
    marked ``unsynced``, the conservative reading) and a warning says so once.
    """
    if source == "assume_synced":
        return True
    if source == "assume_unsynced":
        return False
    if source in ("auto", "adjtimex"):
        answer = adjtimex_synced()
        if answer is not None:
            return answer
        _note_once("fallback", "clock sync: the kernel flag cannot be read here; using the "
                               f"systemd-timesyncd flag {TIMESYNCD_FLAG}")
    elif source != "timesyncd":
        _note_once(f"unknown-{source}", f"unknown clock sync source {source!r}; using the timesyncd flag")
    flag = timesyncd_synced()
    if flag is None:
        why = "systemd-timesyncd is not running" if source == "timesyncd" else (
            "the kernel flag cannot be read and systemd-timesyncd is not running")
        _note_once(f"no-source-{source}", f"clock sync: no source answers ({why}); records are marked "
                                          "unsynced. Set [time] sync_source (see README, Time)",
                   level=logging.WARNING)
        return False
    return flag


_noted: set[str] = set()


def _note_once(key: str, message: str, level: int = logging.INFO) -> None:
    """Log ``message`` the first time ``key`` comes up: a probe runs every 2 s."""
    if key not in _noted:
        _noted.add(key)
        log.log(level, "%s", message)


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

    sync_source: str = "auto"

    def now(self) -> float:
        return time.time()

    def mono_ns(self) -> int:
        return boottime_ns()

    def synced(self) -> bool:
        return probe_synced(self.sync_source)


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
