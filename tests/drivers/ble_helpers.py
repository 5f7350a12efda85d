"""Shared pieces of the BLE tests: the spec vectors, a collecting sink, a fast driver."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from drivers.base import Reading
from drivers.ble.fake import FakeAir
from drivers.ble.scanner import BleDriver, BleOptions

#: the spec vectors, vendored into the repository (provenance: tests/data/README.md)
VECTORS_PATH = Path(__file__).resolve().parents[1] / "data" / "ble" / "vectors.json"
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))

BTHOME = 0xFCD2
ENV = 0x181A
RUUVI = 0x0499

_air_seq = 0


def fresh_air() -> FakeAir:
    """A radio of its own for one test (named airs are process-wide)."""
    from drivers.ble.fake import air

    global _air_seq
    _air_seq += 1
    return air(f"test-{_air_seq}-{time.monotonic_ns()}")


class FastBle(BleDriver):
    """The real driver with test-sized timings (the base loop reads these class vars)."""

    read_timeout_s = 0.02
    backoff_base_s = 0.005
    backoff_cap_s = 0.02


def make_driver(air: FakeAir, sensors: list[dict[str, Any]], **opts: Any) -> FastBle:
    return FastBle("ble", BleOptions.model_validate({"sensors": sensors, **opts}), scanner_backend=air.backend)


class CollectingSink:
    """A Sink that keeps everything and lets a test await a condition (no sleeps)."""

    def __init__(self) -> None:
        self.readings: list[Reading] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._changed = asyncio.Event()

    def reading(self, reading: Reading) -> None:
        self.readings.append(reading)
        self._changed.set()

    def driver_event(self, driver: str, event: str, details: Any) -> None:
        self.events.append((event, dict(details)))
        self._changed.set()

    def event_names(self) -> list[str]:
        return [e for e, _ in self.events]

    async def wait_for(self, cond: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not cond():
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TimeoutError(f"condition not met in {timeout} s; events={self.event_names()}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                continue


class Running:
    """``async with Running(driver) as sink``: the driver's public run loop as a task."""

    def __init__(self, driver: BleDriver, sink: CollectingSink | None = None) -> None:
        self.driver = driver
        self.sink = sink or CollectingSink()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> CollectingSink:
        self.task = asyncio.create_task(self.driver.run(self.sink))
        return self.sink

    async def __aexit__(self, *exc: object) -> None:
        self.driver.stop()
        assert self.task is not None
        await asyncio.wait_for(self.task, 5.0)
