"""Shared pieces of the serial driver tests: a real pty "device", a collecting sink.

:class:`PtyDevice` is a pty pair whose slave end the driver opens through a symlink, the
way a real gateway opens ``/dev/serial/by-id/...``: unplugging closes the master (the
driver's reads fail with EIO) and removes the link (reopening fails with ENOENT);
plugging in again makes a new pty and points the link at it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import operator
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from drivers.base import Driver, Reading

#: the test data vendored into the repository (provenance: tests/data/README.md)
DATA = Path(__file__).resolve().parents[1] / "data"
NMEA_DIR = DATA / "nmea"


class PtyDevice:
    """A serial device on a pty pair, reached through the symlink ``link``."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.master: int | None = None
        self.plug()

    def plug(self) -> None:
        master, slave = os.openpty()
        name = os.ttyname(slave)
        os.close(slave)  # the driver opens its own end by path
        self.master = master
        tmp = self.link.with_suffix(".new")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(name)
        tmp.replace(self.link)

    def unplug(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.link.unlink()
        if self.master is not None:
            os.close(self.master)
            self.master = None

    def write(self, data: bytes) -> None:
        """Write everything (blocking: call it through ``asyncio.to_thread``)."""
        assert self.master is not None
        view = memoryview(data)
        while view:
            n = os.write(self.master, view)
            view = view[n:]

    async def send(self, data: bytes) -> None:
        await asyncio.to_thread(self.write, data)

    def close(self) -> None:
        self.unplug()


class CollectingSink:
    """A Sink that keeps everything and lets a test await a condition (no sleeps)."""

    def __init__(self) -> None:
        self.readings: list[Reading] = []
        self.events: list[tuple[str, str, dict[str, Any]]] = []
        self._changed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def _notify(self) -> None:
        # blocking drivers deliver from their own thread: wake the loop thread-safely
        loop = self._loop
        if loop is None:
            self._changed.set()
        else:
            loop.call_soon_threadsafe(self._changed.set)

    def reading(self, reading: Reading) -> None:
        self.readings.append(reading)
        self._notify()

    def driver_event(self, driver: str, event: str, details: Any) -> None:
        self.events.append((driver, event, dict(details)))
        self._notify()

    def of(self, sensor_id: str, quantity: str) -> list[float]:
        return [r.value for r in self.readings if r.sensor_id == sensor_id and r.quantity == quantity]

    def event_names(self, driver: str | None = None) -> list[str]:
        return [e for d, e, _ in self.events if driver is None or d == driver]

    async def wait_for(self, cond: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until ``cond()`` holds, woken by every reading and event."""
        loop = self._loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not cond():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"condition not met in {timeout} s; events={self.events[-5:]}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.2))


async def wait_until(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``cond`` with a timeout (for state that no event announces, e.g. status)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise TimeoutError(f"{what} not met in {timeout} s")
        await asyncio.sleep(0.01)


class Running:
    """``async with Running(sink, d1, d2) :`` the drivers' public run loops as tasks."""

    def __init__(self, sink: CollectingSink, *drivers: Driver) -> None:
        self.sink = sink
        self.drivers = drivers
        self.tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Running:
        self.tasks = [asyncio.create_task(d.run(self.sink)) for d in self.drivers]
        await wait_until(lambda: all(d.status.state == "running" for d in self.drivers), what="drivers running")
        return self

    async def __aexit__(self, *exc: object) -> None:
        for d in self.drivers:
            d.stop()
        await asyncio.wait_for(asyncio.gather(*self.tasks), 10.0)


def fast(cls: type[Driver]) -> type[Driver]:
    """The real driver class with test-sized timings (the base loop reads these class vars)."""
    return type(f"Fast{cls.__name__}", (cls,), {"read_timeout_s": 0.05, "backoff_base_s": 0.01, "backoff_cap_s": 0.05})


def nmea_checksum_ok(line: str) -> bool:
    """NMEA XOR checksum, computed here independently of drivers.checksums."""
    if not line.startswith("$") or "*" not in line:
        return False
    body, cs = line[1:].rsplit("*", 1)
    return functools.reduce(operator.xor, body.encode(), 0) == int(cs[:2], 16)


def dm(value: str, hemi: str) -> float:
    """ddmm.mmmm / dddmm.mmmm + hemisphere -> signed degrees, computed independently."""
    dot = value.index(".")
    deg = int(value[: dot - 2])
    minutes = float(value[dot - 2 :])
    sign = -1.0 if hemi in "SW" else 1.0
    return sign * (deg + minutes / 60.0)


def capture_lines(name: str) -> list[str]:
    """The receiver's own lines of a capture (notes dropped), terminators kept."""
    with open(NMEA_DIR / name, newline="", encoding="ascii") as f:
        return [line for line in f if not line.startswith("#")]


def expected_fixes(lines: list[str]) -> list[tuple[str, float, float, float]]:
    """(time, lat, lon, altitude) of every epoch with a real fix, worked out from the raw text.

    A fix: the GGA quality is 1-5, and the RMC of the same time says A with a mode
    indicator (where present) that is not N, E, M or S.
    """
    gga: dict[str, list[str]] = {}
    rmc: dict[str, list[str]] = {}
    order: list[str] = []
    for raw in lines:
        line = raw.strip()
        if not nmea_checksum_ok(line):
            continue
        f = line.split("*")[0].split(",")
        kind = f[0][3:]
        if f[0][1:3] not in ("GP", "GN", "GL", "GA", "GB"):
            continue
        if kind in ("GGA", "RMC"):
            t = f[1]
            if t not in order:
                order.append(t)
            (gga if kind == "GGA" else rmc)[t] = f
    out = []
    for t in order:
        g, r = gga.get(t), rmc.get(t)
        if g is None or not g[6] or int(g[6]) not in (1, 2, 3, 4, 5):
            continue
        if r is not None and (r[2] != "A" or (len(r) > 12 and r[12] in ("N", "E", "M", "S"))):
            continue
        out.append((t, dm(g[2], g[3]), dm(g[4], g[5]), float(g[9])))
    return out
