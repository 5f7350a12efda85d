"""The driver read loop reports a failure as an episode: it began, it was retried N times,
it recovered; not one ``driver_error`` per retry."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

import pytest

from drivers.base import Driver, Options, Reading
from drivers.exc import DriverIOError, DriverUnavailable
from tests.drivers.serial_helpers import CollectingSink, wait_until


class Flaky(Driver):
    """A device that cannot be opened ``fail_opens`` times, then reads one value a read."""

    type_name = "flaky"
    read_timeout_s = 0.01
    backoff_base_s = 0.001
    backoff_cap_s = 0.002

    def __init__(self, fail_opens: int, *, quiet: bool = False) -> None:
        super().__init__("flaky", Options())
        self.fail_opens = fail_opens
        self.quiet = quiet
        self.opens = 0

    def _open(self) -> None:
        self.opens += 1
        if self.opens <= self.fail_opens:
            raise DriverUnavailable(f"/dev/ttyUSB0: no such device (attempt {self.opens})", driver=self.name)

    def _read(self, timeout: float) -> Iterable[Reading]:
        if self.quiet:
            return []
        return [Reading("s1", "temperature", 4.0, "Cel")]


async def run_until(driver: Driver, sink: CollectingSink, cond, what: str) -> None:
    task = asyncio.create_task(driver.run(sink))
    try:
        await wait_until(cond, what=what)
    finally:
        driver.stop()
        await asyncio.wait_for(task, 5)


def test_a_failure_is_one_error_event_then_one_recovered_event_with_the_retries(caplog):
    driver = Flaky(fail_opens=10)
    sink = CollectingSink()
    with caplog.at_level(logging.INFO, logger="coldgate.driver.flaky"):
        asyncio.run(run_until(driver, sink, lambda: len(sink.readings) >= 3, "readings after recovery"))
    assert sink.event_names() == ["driver_error", "driver_recovered"]
    began, ended = sink.events[0][2], sink.events[1][2]
    assert began["error"] == "DriverUnavailable" and "attempt 1" in began["message"] and began["phase"] == "open"
    assert ended["retries"] == 10 and ended["duration_s"] >= 0
    assert "attempt 10" in ended["last_error"] and ended["failing_since"].endswith("Z")
    # the log: the beginning, at most one "still failing" line a minute, the recovery
    lines = [r.getMessage() for r in caplog.records]
    assert len([m for m in lines if "still failing" in m]) <= 1
    assert len(lines) <= 3 and "recovered after 10 retries" in lines[-1]
    # status keeps the latest error and its time, and says the episode is over
    st = driver.status
    assert "attempt 10" in st.last_error and st.last_error_at is not None
    assert st.failing_since is None and st.recovered_at is not None and st.retries == 10
    assert st.counters["errors"] == 10 and st.restarts == 10


def test_status_says_a_driver_is_failing_while_it_is():
    driver = Flaky(fail_opens=10**6)
    sink = CollectingSink()
    asyncio.run(run_until(driver, sink, lambda: driver.status.retries >= 20, "many retries"))
    assert sink.event_names() == ["driver_error"]
    assert driver.status.failing_since is not None and driver.status.recovered_at is None
    assert driver.status.as_dict()["failing_since"] == driver.status.failing_since


def test_a_quiet_device_has_recovered_once_it_stays_open():
    class QuietFlaky(Flaky):
        recovered_after_s = 0.05

    driver = QuietFlaky(fail_opens=2, quiet=True)
    sink = CollectingSink()
    asyncio.run(run_until(driver, sink, lambda: "driver_recovered" in sink.event_names(), "recovered"))
    assert sink.event_names() == ["driver_error", "driver_recovered"] and sink.events[1][2]["retries"] == 2


def test_each_failure_after_data_flowed_again_is_an_episode_of_its_own():
    class Flapping(Driver):
        type_name = "flapping"
        read_timeout_s = 0.01
        backoff_base_s = 0.001
        backoff_cap_s = 0.002

        def __init__(self) -> None:
            super().__init__("flapping", Options())
            self.reads = 0

        def _read(self, timeout: float) -> Iterable[Reading]:
            self.reads += 1
            if self.reads % 2 == 0:
                raise DriverIOError("read failed", driver=self.name)
            return [Reading("s1", "temperature", 4.0, "Cel")]

    driver = Flapping()
    sink = CollectingSink()
    asyncio.run(run_until(driver, sink, lambda: len(sink.readings) >= 3, "three readings"))
    names = sink.event_names()
    assert names[:4] == ["driver_error", "driver_recovered", "driver_error", "driver_recovered"]
    assert all(d["retries"] == 1 for _, e, d in sink.events if e == "driver_recovered")


@pytest.mark.parametrize("fail_opens", [1, 3])
def test_retries_count_the_reopen_attempts(fail_opens):
    driver = Flaky(fail_opens=fail_opens)
    sink = CollectingSink()
    asyncio.run(run_until(driver, sink, lambda: "driver_recovered" in sink.event_names(), "recovered"))
    assert sink.events[-1][2]["retries"] == fail_opens == driver.opens - 1
