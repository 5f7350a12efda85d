"""The driver seam: one public read loop around the one method a driver writes.

A driver turns device bytes into :class:`Reading` values. The agent starts each
configured driver with :meth:`Driver.run`, which owns the lifecycle that every driver
needs and no driver should write again (after python-can's ``recv``/``_recv_internal``)::

    open ──► read, read, read … ──► error ──► close ──► report ──► back off ──► open …

A blocking driver (serial, Modbus) writes :meth:`Driver._read` and, where it holds a
device, :meth:`Driver._open` and :meth:`Driver._close`; they run in a worker thread so the
event loop never blocks. An asyncio-native driver (BLE) overrides the ``_a*`` twins
instead. A failing driver is reopened with full-jitter exponential backoff; one failing
driver never stops the others.

A failure is reported as an *episode*, not once per retry: the :class:`Sink` gets one
``driver_error`` event when it begins (with the error), the log says at most once a
minute that it goes on, and one ``driver_recovered`` event (how many retries, how long it
lasted, the last error) ends it, when the reopened driver delivers readings or has stayed
open for :attr:`Driver.recovered_after_s`. ``status`` always holds the latest error and
its time, and whether the driver is failing now.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import inspect
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, NamedTuple, Protocol, TypeVar

from drivers.exc import DecodeError, DriverError, DriverIOError, DriverUnavailable
from drivers.fields import StrictModel

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How long a sensor may stay silent before it counts as missing (seconds). The one
#: default of the BLE driver's ``missing_after_s``, the presets' ``missing`` rule and
#: ``coldgate status``, so that a sensor is never "missing" in one place and fine in
#: another. 15 minutes: the presets' excursion delay (a sensor silent that long is as
#: serious as an excursion that long), and well above the advertising interval of slow
#: battery loggers (a few minutes), so a sleepy sensor does not flap missing and back.
MISSING_AFTER_S = 900.0


class Reading(NamedTuple):
    """One measured value, in docs/protocol.md's quantities and SenML units.

    ``ts`` is the wall-clock time (UTC epoch seconds) when the device took it, where the
    driver knows it better than the agent (a simulated clock, a logger's own memory);
    ``None`` means "now": the agent stamps it on arrival. A value the device marked
    invalid or not available is never made into a Reading. Immutable; a named tuple
    because drivers make tens of thousands a second.
    """

    sensor_id: str
    quantity: str
    value: float
    unit: str
    ts: float | None = None
    raw: float | None = None
    rssi: int | None = None
    #: Driver-specific extras for diagnostics (``coldgate decode``, status), e.g. ``packet_id``;
    #: not part of the stored record.
    extra: Mapping[str, Any] | None = None
    #: The device model and brand, where the driver recognised them (BLE through Theengs
    #: Decoder: ``"Thermo-Hygrometer"``, ``"Govee"``); meant for the record, like ``rssi``
    #: (the ingest stores them as the reading's ``model`` and ``brand`` fields).
    model: str | None = None
    brand: str | None = None


class Sink(Protocol):
    """Where a running driver delivers what it has. Implemented by the agent."""

    def reading(self, reading: Reading) -> None:
        """Take one reading (called on the event loop).

        A sink may also offer ``reading_batch(batch)``; the read loop then hands it each
        read's readings at once. One that takes ``reading_batch(batch, state=…)`` also
        gets the driver's :meth:`Driver.batch_state` with the batch it belongs to, and
        commits both in one transaction.
        """

    def driver_event(self, driver: str, event: str, details: Mapping[str, Any]) -> None:
        """Record a driver lifecycle event: ``driver_error``, ``driver_recovered``."""

    # A sink may also offer ``driver_state(driver, state)``: the driver's own state (a
    # JSON-able mapping, e.g. BLE replay counters per device), committed to the store
    # with (or after) the readings delivered before the call, and handed back to
    # :meth:`Driver.load_state` when the agent starts the driver again (even after a
    # SIGKILL). Call it after delivering the readings the state admitted. A state that
    # belongs to a batch goes with the batch (:meth:`Driver.batch_state`): only then is
    # it committed in the *same* transaction, which replay protection needs (a stored
    # counter never behind a stored reading, whenever the agent is killed).


class Options(StrictModel):
    """Base of every driver's options model: unknown keys are refused, nothing is coerced,
    every number is finite and bounded (:mod:`drivers.fields`)."""


_Options = Options  # inside Driver, ``Options`` names the class variable


@dataclass
class DriverStatus:
    """What ``coldgate status`` shows of one driver."""

    state: str = "starting"  # starting | running | backoff | stopped
    counters: Counter[str] = field(default_factory=Counter)
    last_error: str | None = None
    last_error_at: float | None = None
    next_retry_at: float | None = None
    restarts: int = 0
    #: the failure episode in progress (epoch s), None while the driver works
    failing_since: float | None = None
    #: reopen attempts of the current (or, once recovered, the last) failure episode
    retries: int = 0
    #: when the last failure episode ended (epoch s)
    recovered_at: float | None = None
    #: Driver-specific status (per-sensor RSSI and last-heard, port names, …), JSON-able.
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "counters": dict(self.counters),
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "next_retry_at": self.next_retry_at,
            "restarts": self.restarts,
            "failing_since": self.failing_since,
            "retries": self.retries,
            "recovered_at": self.recovered_at,
            "details": self.details,
        }


class RateLimitedLog:
    """Log a recurring problem at most once per ``interval_s``, with the count since.

    Garbage on a serial line can arrive thousands of times a second; the log must say so
    without flooding the journal.
    """

    def __init__(self, logger: logging.Logger, interval_s: float = 60.0) -> None:
        self._logger = logger
        self._interval = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def warning(self, key: str, msg: str, *args: Any) -> None:
        self.log(logging.WARNING, key, msg, *args)

    def log(self, level: int, key: str, msg: str, *args: Any, exc_info: bool = False) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._suppressed[key] += 1
            return
        extra = self._suppressed.pop(key, 0)
        self._last[key] = now
        suffix = f" ({extra} more like this suppressed)" if extra else ""
        self._logger.log(level, msg + suffix, *args, exc_info=exc_info)

    def forget(self, key: str) -> None:
        """The problem is over: the next one is logged at once."""
        self._last.pop(key, None)
        self._suppressed.pop(key, None)


def backoff_delay(attempt: int, *, base: float = 1.0, cap: float = 60.0, rng: random.Random | None = None) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**attempt)]."""
    r = rng or random
    return r.uniform(0, min(cap, base * (2 ** min(attempt, 30))))


class Driver(abc.ABC):
    """Base class of every driver. Subclasses set ``type_name`` and ``Options``."""

    #: The name the registry and config files know this driver by.
    type_name: ClassVar[str] = ""
    #: The pydantic model of this driver's options (the keys of its ``[[drivers]]`` table).
    Options: ClassVar[type[Options]] = Options
    #: How long one ``_read`` call may wait for data before returning (seconds).
    read_timeout_s: ClassVar[float] = 1.0
    #: Backoff between reopen attempts.
    backoff_base_s: ClassVar[float] = 1.0
    backoff_cap_s: ClassVar[float] = 60.0
    #: A reopened driver that delivers nothing (a quiet bus, no sensor in range) has
    #: recovered once it stayed open this long without failing (seconds).
    recovered_after_s: ClassVar[float] = 10.0

    def __init__(self, name: str, options: _Options) -> None:
        self.name = name
        self.options = options
        self.status = DriverStatus()
        self.log = logging.getLogger(f"coldgate.driver.{name}")
        self.noisy = RateLimitedLog(self.log)
        self._stop_flag = threading.Event()
        self._stopping = asyncio.Event() if _has_loop() else None

    # -- what a driver writes -------------------------------------------------------
    def load_state(self, state: Mapping[str, Any]) -> None:  # noqa: B027 - optional hook
        """Take the state this driver last gave the agent (called before :meth:`run`)."""

    def batch_state(self) -> Mapping[str, Any] | None:
        """The driver's persisted state as of the batch its last read returned, if it changed.

        Asked by the read loop right after each read that returned readings; handed to the
        sink with that batch (``reading_batch(batch, state=…)``), so the agent commits the
        readings and the state that admitted them in one transaction. None: no change.
        """
        return None

    def _open(self) -> None:  # noqa: B027 - optional hook
        """Open the device (blocking). Raise DriverUnavailable when it cannot be had."""

    @abc.abstractmethod
    def _read(self, timeout: float) -> Iterable[Reading]:
        """Wait up to ``timeout`` s for data and return the readings it holds (blocking).

        Return an empty iterable on a timeout. Raise :class:`DriverIOError` when the device
        fails; count and swallow :class:`DecodeError` (bad bytes are never fatal).
        """

    def _close(self) -> None:  # noqa: B027 - optional hook
        """Release the device (blocking). Must not raise."""

    # -- asyncio twins: BLE overrides these; blocking drivers inherit threads ----------
    async def _aopen(self) -> None:
        await asyncio.to_thread(self._open)

    async def _aread(self, timeout: float) -> Iterable[Reading]:
        return await asyncio.to_thread(self._read, timeout)

    async def _aclose(self) -> None:
        await asyncio.to_thread(self._close)

    @property
    def blocking(self) -> bool:
        """True for a driver that reads with blocking calls (it does not override ``_aread``)."""
        return type(self)._aread is Driver._aread

    # -- the public loop --------------------------------------------------------------
    def stop(self) -> None:
        """Ask :meth:`run` to return after the current read (at most ``read_timeout_s``)."""
        self._stop_flag.set()
        if self._stopping is None:
            self._stopping = asyncio.Event()
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stop_flag.is_set()

    async def run(self, sink: Sink) -> None:
        """Open, read and deliver until :meth:`stop`; on failure report, back off, reopen.

        A blocking driver runs this whole loop on a thread of its own, so a read costs no
        hand-off between threads (at 100 lines/s a hand-off per read was most of the
        agent's CPU), and a sink that is full (the agent's bounded intake) simply makes
        the thread wait: backpressure reaches the device instead of growing memory. An
        asyncio driver runs it on the event loop and awaits the sink's room.
        """
        if self._stopping is None:
            self._stopping = asyncio.Event()
        if self.blocking:
            await run_in_thread(lambda: self._run_blocking(sink), name=f"coldgate-driver-{self.name}")
        else:
            await self._run_async(sink)
        self.status.state = "stopped"

    def _run_blocking(self, sink: Sink) -> None:
        life = _Lifecycle(self, sink)
        while not self.stopping:
            opened = False
            try:
                self.status.state = "starting"
                self._open()
                opened = True
                life.opened()
                while not self.stopping:
                    batch = self._read(self.read_timeout_s)
                    life.after_read(bool(batch))
                    if batch:
                        life.deliver(batch)
            except Exception as exc:  # noqa: BLE001 - every failure is reported, none is fatal
                delay = life.failed(exc, opened)
                self._stop_flag.wait(delay)
            finally:
                if opened:
                    with contextlib.suppress(Exception):
                        self._close()

    async def _run_async(self, sink: Sink) -> None:
        life = _Lifecycle(self, sink)
        wait_room = getattr(sink, "wait_room", None)
        while not self.stopping:
            opened = False
            try:
                self.status.state = "starting"
                await self._aopen()
                opened = True
                life.opened()
                while not self.stopping:
                    batch = await self._aread(self.read_timeout_s)
                    life.after_read(bool(batch))
                    if batch:
                        life.deliver(batch)
                        if wait_room is not None:
                            await wait_room()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure is reported, none is fatal
                delay = life.failed(exc, opened)
                assert self._stopping is not None
                await wait_event(self._stopping, delay)
            finally:
                if opened:
                    with contextlib.suppress(Exception):
                        await self._aclose()


class _Lifecycle:
    """What both read loops share: delivery, and failures reported as episodes.

    A device that stays unplugged for an hour is one ``driver_error`` (when the failure
    began, with the error) and one ``driver_recovered`` (how long it lasted, how many
    reopen attempts), not an event per retry: the stream and the journal say what
    happened without drowning the readings. While it lasts the log repeats the error at a
    limited rate and ``status`` shows the latest error, since when it fails and the
    retries. A reopened driver has recovered once it delivers, or has stayed open
    :attr:`Driver.recovered_after_s` (a port that opens and fails at once has not).
    """

    def __init__(self, driver: Driver, sink: Sink) -> None:
        self.driver, self.sink = driver, sink
        self.attempt = 0
        self.episode: _Episode | None = None
        self.opened_at = 0.0
        deliver_many = getattr(sink, "reading_batch", None)
        self.deliver_many = deliver_many if callable(deliver_many) else None
        self.batch_takes_state = self.deliver_many is not None and _takes_state(self.deliver_many)

    def opened(self) -> None:
        d = self.driver
        d.status.state = "running"
        d.status.next_retry_at = None
        self.opened_at = time.monotonic()

    def after_read(self, got: bool) -> None:
        if self.episode is not None and (got or time.monotonic() - self.opened_at >= self.driver.recovered_after_s):
            self.recovered(self.episode)
            self.episode = None

    def deliver(self, batch: Iterable[Reading]) -> None:
        d = self.driver
        state = d.batch_state()
        if self.deliver_many is not None:
            batch = list(batch)
            d.status.counters["readings"] += len(batch)
            if state is not None and self.batch_takes_state:
                self.deliver_many(batch, state=state)
                state = None
            else:
                self.deliver_many(batch)
        else:
            for reading in batch:
                d.status.counters["readings"] += 1
                self.sink.reading(reading)
        if state is not None:  # a sink without batches: the state right after its readings
            give = getattr(self.sink, "driver_state", None)
            if callable(give):
                give(d.name, state)
        self.attempt = 0

    def recovered(self, episode: _Episode) -> None:
        """The failure episode is over: one event says how long it lasted and how many retries it took."""
        d = self.driver
        duration = time.monotonic() - episode.began_mono
        retries = episode.retries + 1  # the reopen that worked is a retry too
        d.status.failing_since = None
        d.status.retries = retries
        d.status.recovered_at = time.time()
        d.noisy.forget("failing")
        d.log.info("%s recovered after %d retries in %.1f s", d.name, retries, duration)
        self.sink.driver_event(d.name, "driver_recovered", {
            "driver": d.name, "type": d.type_name, "retries": retries, "duration_s": round(duration, 3),
            "failing_since": _rfc3339(episode.began_at), "last_error": d.status.last_error,
        })

    def failed(self, exc: BaseException, opened: bool) -> float:
        """Count a failure; the first of an episode is an event, the rest rate-limited log
        lines. Returns the backoff delay before the next attempt."""
        d = self.driver
        kind, msg = _describe(exc, opened)
        now = time.time()
        d.status.last_error = f"{kind}: {msg}"
        d.status.last_error_at = now
        d.status.counters["errors"] += 1
        expected = isinstance(exc, (DriverUnavailable, DriverIOError))
        level = logging.WARNING if expected else logging.ERROR
        episode = self.episode
        if episode is not None:
            episode.retries += 1
            d.status.retries = episode.retries
            d.noisy.log(level, "failing", "%s still failing after %d retries in %.0f s: %s: %s (retrying with backoff)",
                        d.name, episode.retries, time.monotonic() - episode.began_mono, kind, msg)
        else:
            d.status.failing_since = now
            d.status.retries = 0
            d.noisy.forget("failing")
            d.noisy.log(level, "failing", "%s %s: %s (retrying with backoff)", d.name, kind, msg, exc_info=not expected)
            self.sink.driver_event(d.name, "driver_error", {
                "driver": d.name, "type": d.type_name, "error": kind, "message": msg,
                "phase": "read" if opened else "open"})
            self.episode = _Episode(began_at=now, began_mono=time.monotonic())
        delay = backoff_delay(self.attempt, base=d.backoff_base_s, cap=d.backoff_cap_s)
        self.attempt += 1
        d.status.restarts += 1
        d.status.state = "backoff"
        d.status.next_retry_at = time.time() + delay
        return delay


def _takes_state(fn: Callable[..., Any]) -> bool:
    """Whether a sink's ``reading_batch`` takes the batch's driver state (``state=``)."""
    try:
        return "state" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


@dataclass
class _Episode:
    """A failure in progress: since when, and how many reopen attempts failed since."""

    began_at: float  # wall clock, for the record
    began_mono: float  # monotonic, for the duration
    retries: int = 0


def _rfc3339(ts: float) -> str:
    """UTC, milliseconds, ``Z`` (as every record's ``ts``)."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _describe(exc: BaseException, opened: bool) -> tuple[str, str]:
    if isinstance(exc, DriverError):
        kind = type(exc).__name__
        return kind, str(exc.args[0]) if exc.args else kind
    if isinstance(exc, DecodeError):  # a driver let one escape: still not fatal
        return "DecodeError", str(exc)
    return ("DriverIOError" if opened else "DriverUnavailable"), f"{type(exc).__name__}: {exc}"


async def run_in_thread(fn: Callable[[], T], *, name: str) -> T:
    """Run ``fn`` on a new daemon thread of its own and await its result.

    Not the default executor: it has a handful of workers, and a gateway with more
    blocking drivers than that would starve the rest.
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def target() -> None:
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
                loop.call_soon_threadsafe(_settle, fut, None, exc)
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, fut, result, None)

    threading.Thread(target=target, name=name, daemon=True).start()
    return await fut


def _settle(fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait for ``event`` at most ``timeout`` seconds; True if it was set.

    Not ``asyncio.wait_for``: on Python 3.11 it can swallow a cancellation that arrives
    as the event is set, and a cancelled task would then loop on for ever.
    """
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


def _has_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
