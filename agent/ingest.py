"""From a driver's reading to a store item: stamp, calibrate, judge, decide to record.

Every sample goes to the rules (they see all of them); the store keeps one reading per
sensor and quantity per ``record_interval_s``, and every sample while the sensor is out
of range. Decimation compares the readings' own timestamps, never the order of arrival.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from agent.config import Config, SensorConfig
from agent.timebase import Clock, boot_id
from drivers.base import Reading

log = logging.getLogger(__name__)


class Judge(Protocol):
    """What the ingest needs of the rule engine (see :mod:`agent.rules.engine`)."""

    def observe(self, sample: Any) -> list[dict[str, Any]]: ...

    def out_of_range(self, sensor_id: str) -> bool: ...


class Ingest:
    """Turns readings into store items; the daemon flushes :attr:`items` by group commit."""

    def __init__(self, config: Config, clock: Clock, *, judge: Judge | None = None,
                 sample_factory: Callable[..., Any] | None = None,
                 on_alarm: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.clock = clock
        self.boot_id = boot_id()
        self.judge = judge
        self.sample_factory = sample_factory
        self.on_alarm = on_alarm
        self.items: list[dict[str, Any]] = []
        self.synced = clock.synced()
        self.configure(config)
        self._last_recorded: dict[tuple[str, str], float] = {}
        #: the newest sample of each sensor and quantity (status), recorded or not
        self.last_seen: dict[str, dict[str, Any]] = {}

    def configure(self, config: Config) -> None:
        self.config = config
        self.default_interval = config.recording.record_interval_s
        self.sensors: Mapping[str, SensorConfig] = {s.id: s for s in config.sensors}

    def time_quality(self) -> str:
        return "synced" if self.synced else "unsynced"

    def reading(self, r: Reading, driver: str | None = None) -> None:
        """Take one reading from a driver (on the event loop)."""
        ts = r.ts if r.ts is not None else self.clock.now()
        sensor = self.sensors.get(r.sensor_id)
        value, raw, cert = r.value, r.raw, None
        if sensor is not None and sensor.calibration is not None:
            cal = sensor.calibration
            raw = value if raw is None else raw
            value = round(value * cal.slope + cal.offset, 6)
            cert = cal.certificate
        seen = self.last_seen.setdefault(r.sensor_id, {})
        seen[r.quantity] = {"value": value, "unit": r.unit, "ts": ts, "rssi": r.rssi, "driver": driver}
        judge = self.judge
        if judge is not None and self.sample_factory is not None:
            for change in judge.observe(self.sample_factory(r.sensor_id, r.quantity, value, r.unit, ts)):
                self.alarm(change)
        if not self._should_record(r.sensor_id, r.quantity, ts, sensor):
            return
        item: dict[str, Any] = {
            "type": "reading", "ts": ts, "time_quality": self.time_quality(),
            "sensor_id": r.sensor_id, "quantity": r.quantity, "value": value, "unit": r.unit,
            "mono_ns": self.clock.mono_ns(), "boot_id": self.boot_id,
        }
        if raw is not None:
            item["raw"] = raw
        if cert is not None:
            item["calibration"] = cert
        if r.rssi is not None:
            item["rssi"] = r.rssi
        if driver is not None:
            item["driver"] = driver
        if sensor is not None and sensor.shipment:
            item["shipment"] = sensor.shipment
        self.items.append(item)

    def _should_record(self, sensor_id: str, quantity: str, ts: float, sensor: SensorConfig | None) -> bool:
        interval = sensor.record_interval_s if sensor is not None and sensor.record_interval_s is not None \
            else self.default_interval
        key = (sensor_id, quantity)
        last = self._last_recorded.get(key)
        if (interval <= 0 or last is None or ts - last >= interval or ts < last
                or (self.judge is not None and self.judge.out_of_range(sensor_id))):
            self._last_recorded[key] = ts
            return True
        return False

    def alarm(self, change: Mapping[str, Any]) -> None:
        item = {"type": "alarm", "time_quality": self.time_quality(), "mono_ns": self.clock.mono_ns(),
                "boot_id": self.boot_id, **change}
        item.setdefault("ts", self.clock.now())
        self.items.append(item)
        if self.on_alarm is not None:
            self.on_alarm(item)

    def event(self, name: str, details: Mapping[str, Any], *, ts: float | None = None) -> None:
        self.items.append({
            "type": "event", "event": name, "details": dict(details),
            "ts": self.clock.now() if ts is None else ts, "time_quality": self.time_quality(),
            "mono_ns": self.clock.mono_ns(), "boot_id": self.boot_id,
        })

    def take(self) -> list[dict[str, Any]]:
        items, self.items = self.items, []
        return items
