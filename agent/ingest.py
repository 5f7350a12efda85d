"""From a driver's reading to a store item: calibrate, judge, decide to record.

Runs on the writer's thread (:mod:`agent.writer`), one entry of the intake at a time, so
the rule engine and the records it produced are always consistent when committed.
Readings arrive stamped (:mod:`agent.intake` stamps them on arrival). Every sample goes
to the rules (they see all of them); the store keeps one reading per sensor and quantity
per ``record_interval_s``, and every sample while the sensor is out of range. Decimation
compares the readings' own timestamps, never the order of arrival.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from agent.config import Config, SensorConfig
from agent.stamp import Stamper
from drivers.base import Reading

log = logging.getLogger(__name__)

_BIG = 2**53  # beyond, JSON numbers are not exact (and RFC 8785 refuses them)


class Judge(Protocol):
    """What the ingest needs of the rule engine (see :mod:`agent.rules.engine`)."""

    def observe(self, sample: Any) -> list[dict[str, Any]]: ...

    def out_of_range(self, sensor_id: str) -> bool: ...


class Ingest:
    """Turns readings into store items in :attr:`items`; the writer takes them to commit."""

    def __init__(self, config: Config, stamper: Stamper, *, judge: Judge | None = None,
                 sample_factory: Callable[..., Any] | None = None,
                 on_alarm: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.stamper = stamper
        self.judge = judge
        self.sample_factory = sample_factory
        self.on_alarm = on_alarm
        self.items: list[dict[str, Any]] = []
        #: sensors the judge has rules for (the others skip it)
        self.judged: frozenset[str] = frozenset()
        self.configure(config)
        self._last_recorded: dict[tuple[str, str], float] = {}
        self._invalid_values: dict[str | None, dict[str, Any]] = {}
        self._excursions: set[str] = set()
        self._invalid_reported: dict[str | None, float] = {}
        #: the newest sample of each sensor and quantity, recorded or not, for status:
        #: ``{sensor: {quantity: (value, unit, ts, rssi)}}``
        self.last_seen: dict[str, dict[str, tuple[float, str, float, int | None]]] = {}
        #: readings taken, per driver and sensor (metrics: one dict increment a reading)
        self.received: dict[str | None, dict[str, int]] = {}

    def configure(self, config: Config) -> None:
        self.config = config
        self.default_interval = config.recording.record_interval_s
        self.sensors: Mapping[str, SensorConfig] = {s.id: s for s in config.sensors}

    def set_judge(self, judge: Any, sample_factory: Callable[..., Any] | None) -> None:
        """Judge samples with ``judge`` (the rule engine) from now on; None for no rules."""
        self.judge = judge
        self.sample_factory = sample_factory
        self.judged = frozenset(judge.sensors()) if judge is not None else frozenset()

    def time_quality(self) -> str:
        return self.stamper.quality

    def reading(self, r: Reading, driver: str | None = None) -> None:
        """Take one reading, stamped now."""
        self.readings((r,), driver)

    def readings(self, batch: Sequence[Reading], driver: str | None = None) -> None:
        """Take readings that arrive now (stamped now)."""
        s = self.stamper
        self.stamped(driver, batch, s.now(), s.mono_ns(), s.quality)

    def stamped(self, driver: str | None, batch: Sequence[Reading], now: float, mono: int, tq: str) -> None:
        """Take what one driver read delivered, stamped on arrival with ``now`` (wall),
        ``mono`` (boottime ns) and ``tq``: readings without a time of their own take
        ``now``, since they were received at the same moment."""
        sensors, last_seen, items = self.sensors, self.last_seen, self.items
        last_recorded, default_interval = self._last_recorded, self.default_interval
        judge, judged, make_sample = self.judge, self.judged, self.sample_factory
        boot = self.stamper.boot_id
        counts = self.received.get(driver)
        if counts is None:
            counts = self.received[driver] = {}
        for r in batch:
            sid, quantity, unit = r.sensor_id, r.quantity, r.unit
            counts[sid] = counts.get(sid, 0) + 1
            ts = r.ts
            if ts is None:
                ts = now
            sensor = sensors.get(sid)
            value, raw, cert = r.value, r.raw, None
            if not (type(value) in (float, int) and -_BIG < value < _BIG):  # NaN fails the comparison
                self._invalid(driver, sid, quantity, value)
                continue
            if not (type(ts) in (float, int) and 0.0 <= ts < 1e11):  # a driver's own time that is no time (NaN, negative, year 5138)
                self._invalid(driver, sid, quantity, f"ts={ts!r}")
                continue
            if sensor is not None and sensor.calibration is not None:
                cal = sensor.calibration
                raw = value if raw is None else raw
                value = round(value * cal.slope + cal.offset, 6)
                cert = cal.certificate
            seen = last_seen.get(sid)
            if seen is None:
                seen = last_seen[sid] = {}
            seen[quantity] = (value, unit, ts, r.rssi)
            if judge is not None and make_sample is not None and sid in judged:
                for change in judge.observe(make_sample(sid, quantity, value, unit, ts)):
                    self.alarm(change)
            # decimation, by the readings' own time: one per interval, all while out of range
            interval = default_interval if sensor is None or sensor.record_interval_s is None \
                else sensor.record_interval_s
            if interval > 0:
                key = (sid, quantity)
                last = last_recorded.get(key)
                if last is not None and last <= ts < last + interval and not self._in_excursion(sid):
                    continue
                last_recorded[key] = ts
            item: dict[str, Any] = {"type": "reading", "ts": ts, "time_quality": tq, "sensor_id": sid,
                                    "quantity": quantity, "value": value, "unit": unit, "mono_ns": mono,
                                    "boot_id": boot}
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
            items.append(item)

    def _in_excursion(self, sensor_id: str) -> bool:
        """Out of range now, or until this sample: the sample that ends an excursion is kept
        too, so the record shows when it ended."""
        now = self.judge is not None and self.judge.out_of_range(sensor_id)
        was = sensor_id in self._excursions
        if now:
            self._excursions.add(sensor_id)
        elif was:
            self._excursions.discard(sensor_id)
        return now or was

    def _invalid(self, driver: str | None, sensor_id: str, quantity: str, value: object) -> None:
        """A value no record can carry (NaN, infinite, not a number, beyond 2**53): its loss is
        counted and said in a ``data_loss`` event, at most once a minute per driver."""
        lost = self._invalid_values.setdefault(driver, {"count": 0, "examples": []})
        lost["count"] += 1
        if len(lost["examples"]) < 5:
            lost["examples"].append({"sensor_id": sensor_id, "quantity": quantity, "value": repr(value)[:40]})
        now = time.monotonic()
        if now - self._invalid_reported.get(driver, -60.0) >= 60.0:
            self._invalid_reported[driver] = now
            self.report_invalid()

    def report_invalid(self) -> None:
        """Write the ``data_loss`` events for invalid values counted so far."""
        for driver, lost in self._invalid_values.items():
            log.warning("%d reading(s) from %s with values no record can carry, e.g. %s", lost["count"],
                        driver, lost["examples"][0])
            self.event("data_loss", {"reason": "invalid_value", "what": "readings", "driver": driver, **lost})
        self._invalid_values = {}

    def alarm(self, change: Mapping[str, Any]) -> None:
        item = self.stamper.alarm(change)
        self.items.append(item)
        if self.on_alarm is not None:
            self.on_alarm(item)

    def event(self, name: str, details: Mapping[str, Any], *, ts: float | None = None) -> None:
        self.items.append(self.stamper.event(name, details, ts=ts))

    def take(self) -> list[dict[str, Any]]:
        items, self.items = self.items, []
        return items
