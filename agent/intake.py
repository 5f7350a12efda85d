"""The intake: the bounded queue between the drivers and the writer.

Drivers deliver here; the writer (:mod:`agent.writer`) takes from here. It is bounded in
readings: when the store falls behind (a flood on a serial line, a slow SD card) a
driver that delivers into a full intake waits — a blocking driver on its own thread, an
asyncio driver by awaiting :meth:`DriverSink.wait_room` — so memory stays bounded and
what a crash can lose stays bounded too (what is read but not committed is at most the
intake plus one transaction). Backpressure reaches the device: the tty's buffer fills
and a logger with flow control pauses.

Readings are stamped on arrival (:class:`agent.stamp.Stamper`), before they wait.

Entries, in arrival order (one tuple each, tagged by their first element):

``("r", driver, readings, ts, mono_ns, time_quality, state)``
    what one driver read delivered; counts ``len(readings)`` against the bound. ``state``
    (or None) is the driver's persisted state as of these readings: one entry, so the
    writer commits both in one transaction (:meth:`drivers.base.Driver.batch_state`)
``("i", item)``
    a stamped record (event or alarm) to append as it is; never waits
``("s", driver, state)``
    a driver's persisted state, committed with the readings before it
``("c", fn, future)``
    a call to run on the writer's thread (status questions, acknowledgements, reload);
    never waits
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from agent.stamp import Stamper
from drivers.base import Reading

Entry = tuple[Any, ...]

#: Default bound, in readings. A few thousand: large enough that the writer commits in
#: batches of a useful size at full speed, small enough that a flood holds little memory
#: and a SIGKILL during it loses well under half a second of input.
DEFAULT_CAPACITY = 4096


class Intake:
    """Thread-safe bounded queue of entries (see the module docstring)."""

    def __init__(self, stamper: Stamper, capacity: int = DEFAULT_CAPACITY) -> None:
        self.stamper = stamper
        self.capacity = capacity
        self._entries: deque[Entry] = deque()
        self._readings = 0
        self._cond = threading.Condition()
        self._closed = False
        #: the writer wants to be woken by any entry (it holds nothing), or only by an
        #: urgent one and a full intake (it is waiting out its commit interval)
        self._wake_on_any = True
        self._room_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        #: how often a driver had to wait for room (status, metrics)
        self.waits = 0
        #: when (monotonic) the oldest entry now waiting was put; and, after a take, when
        #: the oldest entry it returned was (the writer times its commit from that)
        self._since: float | None = None
        self.taken_since: float | None = None

    def sink(self, driver: str) -> DriverSink:
        return DriverSink(self, driver)

    # -- producers ---------------------------------------------------------------------
    def put_readings(self, driver: str | None, readings: Sequence[Reading], *, block: bool = True,
                     state: Mapping[str, Any] | None = None) -> None:
        """Readings of one read, stamped now; waits while the intake is full (``block``).
        ``state``: the driver's state as of these readings, committed with them."""
        s = self.stamper
        entry = ("r", driver, readings, s.clock.now(), s.clock.mono_ns(), s.quality, state)
        n = len(readings)
        with self._cond:
            if block and self._readings >= self.capacity and not self._closed:
                self.waits += 1
                while self._readings >= self.capacity and not self._closed:
                    self._cond.wait(0.5)
            if not self._entries:
                self._since = time.monotonic()
            self._entries.append(entry)
            self._readings += n
            if self._wake_on_any or self._readings >= self.capacity:
                self._cond.notify_all()

    def put(self, entry: Entry) -> None:
        """An event, state or call entry: never waits, always wakes the writer."""
        with self._cond:
            if not self._entries:
                self._since = time.monotonic()
            self._entries.append(entry)
            self._cond.notify_all()

    def put_item(self, item: Mapping[str, Any]) -> None:
        """A stamped record (see :class:`~agent.stamp.Stamper`) to append as it is."""
        self.put(("i", dict(item)))

    def call(self, fn: Any) -> Future[Any]:
        """Run ``fn()`` on the writer's thread; the future holds its result."""
        fut: Future[Any] = Future()
        self.put(("c", fn, fut))
        return fut

    @property
    def full(self) -> bool:
        return self._readings >= self.capacity

    async def wait_room(self) -> None:
        """For drivers on the event loop: return once the intake has room again."""
        if self._readings < self.capacity or self._closed:
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self._cond:
            if self._readings < self.capacity or self._closed:
                return
            self.waits += 1
            self._room_waiters.append((loop, fut))
        await fut

    # -- the writer --------------------------------------------------------------------
    def take(self, max_readings: int, timeout: float, *, wake_on_any: bool) -> list[Entry]:
        """Entries holding at most ``max_readings`` readings (at least one entry if any
        waits); waits up to ``timeout`` s for the first one. With ``wake_on_any`` false,
        the wait ends early only for an urgent entry or a full intake."""
        with self._cond:
            if not self._entries or not wake_on_any:
                self._wake_on_any = wake_on_any
                if not self._entries or (not wake_on_any and not self._urgent_waiting()):
                    self._cond.wait(timeout)
                self._wake_on_any = True
            out: list[Entry] = []
            n = 0
            entries = self._entries
            while entries:
                e = entries[0]
                if e[0] == "r":
                    k = len(e[2])
                    if out and n + k > max_readings:
                        break
                    n += k
                out.append(entries.popleft())
            self.taken_since = self._since if out else None
            if out:
                self._since = time.monotonic() if entries else None
            if n:
                self._readings -= n
                if self._readings < self.capacity:
                    self._cond.notify_all()  # drivers waiting for room
                    self._release_room_waiters()
            return out

    def _urgent_waiting(self) -> bool:
        return self._readings >= self.capacity or any(e[0] != "r" for e in self._entries)

    def _release_room_waiters(self) -> None:
        waiters, self._room_waiters = self._room_waiters, []
        for loop, fut in waiters:
            try:
                loop.call_soon_threadsafe(_done, fut)
            except RuntimeError:  # that loop is closed
                pass

    def close(self) -> None:
        """No more waiting: producers blocked on a full intake deliver and return."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            self._release_room_waiters()

    def reopen(self) -> None:
        with self._cond:
            self._closed = False

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def readings(self) -> int:
        """Readings waiting (the bounded quantity)."""
        return self._readings


def _done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class DriverSink:
    """The :class:`drivers.base.Sink` one driver delivers to."""

    def __init__(self, intake: Intake, driver: str) -> None:
        self.intake = intake
        self.driver = driver
        #: delivering from the event loop (an asyncio driver) never blocks the loop; the
        #: driver's read loop awaits :meth:`wait_room` instead
        self._loop_thread: int | None = None
        try:
            asyncio.get_running_loop()
            self._loop_thread = threading.get_ident()
        except RuntimeError:
            pass

    def reading(self, reading: Reading) -> None:
        self.reading_batch([reading])

    def reading_batch(self, batch: Sequence[Reading], state: Mapping[str, Any] | None = None) -> None:
        """One read's readings, and the driver's state as of them (one transaction)."""
        self.intake.put_readings(self.driver, batch, block=threading.get_ident() != self._loop_thread,
                                 state=None if state is None else dict(state))

    async def wait_room(self) -> None:
        await self.intake.wait_room()

    def driver_event(self, driver: str, event: str, details: Mapping[str, Any]) -> None:
        self.intake.put_item(self.intake.stamper.event(event, {"driver": driver, **details}))

    def driver_state(self, driver: str, state: Mapping[str, Any]) -> None:
        self.intake.put(("s", driver, dict(state)))


__all__ = ["DEFAULT_CAPACITY", "DriverSink", "Entry", "Intake"]
