"""From a driver's reading to a store item: calibrate, judge, decide to record.

Runs on the writer's thread (:mod:`agent.writer`), one entry of the intake at a time, so
the rule engine and the records it produced are always consistent when committed.
Readings arrive stamped (:mod:`agent.intake` stamps them on arrival). Every sample goes
to the rules (they see all of them); the store keeps one reading per sensor and quantity
per ``record_interval_s``, and every sample while the sensor is out of range. Decimation
compares the readings' own timestamps, never the order of arrival.

Shipments (:mod:`agent.shipment`) judge the stream beside the rules: every sample goes to
the shipment book too (stability budget, freeze–thaw, GPS arrival), each reading of a
sensor in an active shipment carries its id, a sensor's samples are not judged by the
rules during its shipment's ignore period, and an alarm of a rule its leg mutes is
recorded with ``muted`` (and runs no action).

The ingest holds the agent timeline (:mod:`agent.timeline`): each sample goes to the rules
with its elapsed time (from the boot-time clock stamped on arrival, or, for a reading
stamped by its device, placed by the device's own clock), and :meth:`Ingest.tick` lets
elapsed time pass for them. The writer commits the timeline's state with the rule state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from agent.config import Config, SensorConfig
from agent.shipment.book import stamp as stamp_book
from agent.stamp import Stamper
from agent.timeline import Timeline
from drivers.base import Reading

log = logging.getLogger(__name__)

_BIG = 2**53  # beyond, JSON numbers are not exact (and RFC 8785 refuses them)


class Judge(Protocol):
    """What the ingest needs of the rule engine (see :mod:`agent.rules.engine`)."""

    def observe(self, sample: Any) -> list[dict[str, Any]]: ...

    def tick(self, now: float, wall: float | None = None) -> list[dict[str, Any]]: ...

    def out_of_range(self, sensor_id: str) -> bool: ...

    def snapshot(self) -> dict[str, Any]: ...


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
        #: the shipment book (:class:`agent.shipment.book.ShipmentBook`), once the writer set it
        self.book: Any = None
        #: the book changed since its state was last committed (the writer saves it then)
        self.book_changed = False
        #: a shipment ended: the writer closes it with a signed checkpoint after the commit
        self.shipment_ended = False
        #: elapsed time for the rules; :meth:`resume_timeline` continues a saved one
        self.timeline = Timeline.start(boot_id=stamper.boot_id, mono_ns=stamper.mono_ns(), wall=stamper.now(),
                                       synced=stamper.synced)
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

    def resume_timeline(self, saved: Mapping[str, Any] | None) -> dict[str, Any]:
        """Continue the timeline saved with the rule state (None: start one at the wall time).

        After a reboot, or when the saved one is unreadable, a ``timeline_resumed`` event
        says how the downtime was counted (see :meth:`agent.timeline.Timeline.resume`).
        """
        s = self.stamper
        self.timeline, info = Timeline.resume(saved, boot_id=s.boot_id, mono_ns=s.mono_ns(), wall=s.now(),
                                              synced=s.synced)
        if info["resumed"] in ("reboot", "unreadable"):
            self.event("timeline_resumed", info)
        log.info("rules timeline: %s", ", ".join(f"{k}={v}" for k, v in info.items()))
        return info

    def tick(self) -> None:
        """Let elapsed time pass for the rules: delays run out, silent sensors go missing."""
        s = self.stamper
        wall, mono = s.now(), s.mono_ns()
        now = self.timeline.at(mono)
        self.timeline.note(now, wall, s.synced)
        if self.judge is not None:
            for change in self.judge.tick(now, wall):
                self.alarm(change)
        if self.book is not None:
            self.book_records(self.book.tick(now), wall, now)

    # -- shipments -----------------------------------------------------------------------
    def elapsed_now(self) -> tuple[float, float]:
        """``(wall, elapsed)`` now, on the timeline."""
        s = self.stamper
        wall = s.now()
        return wall, self.timeline.at(s.mono_ns())

    def book_records(self, records: list[dict[str, Any]], wall: float, elapsed: float) -> list[dict[str, Any]]:
        """Stamp what the shipment book returned and take it as records (alarms as alarms)."""
        if not records:
            return []
        self.book_changed = True
        out = []
        for rec in stamp_book(records, wall_now=wall, elapsed_now=elapsed, ts_of=self.timeline.ts_of):
            if rec.get("type") == "alarm":
                self.alarm({k: v for k, v in rec.items() if k != "type"})
                out.append(self.items[-1])
            else:
                if rec.get("event") == "shipment_stopped":
                    self.shipment_ended = True
                ts = rec.pop("ts")
                item = self.stamper.stamp(rec, ts=ts)
                self.items.append(item)
                out.append(item)
        return out

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
        timeline, book = self.timeline, self.book
        elapsed = timeline.at(mono)
        timeline.note(elapsed, now, tq == "synced")
        counts = self.received.get(driver)
        if counts is None:
            counts = self.received[driver] = {}
        for r in batch:
            sid, quantity, unit = r.sensor_id, r.quantity, r.unit
            counts[sid] = counts.get(sid, 0) + 1
            ts = own = r.ts
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
            at = elapsed if own is None else timeline.place(sid, ts, elapsed, now)
            shipment = None
            if book is not None:
                self.book_records(book.observe(sid, quantity, value, at), now, elapsed)
                shipment = book.tag(sid)
            if judge is not None and make_sample is not None and sid in judged and (
                    book is None or book.judged(sid, at)):
                for change in judge.observe(make_sample(sid, quantity, value, unit, ts, at)):
                    if shipment is not None:
                        change = {**change, "shipment": shipment}
                        muted = book.muted(sid, change.get("rule", ""))
                        if muted is not None:
                            change["muted"] = muted  # recorded, and no action runs
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
            if r.model is not None:  # the device model a decoder recognised (BLE via Theengs)
                item["model"] = r.model
                if r.brand is not None:
                    item["brand"] = r.brand
            if driver is not None:
                item["driver"] = driver
            if shipment is not None:
                item["shipment"] = shipment
            elif sensor is not None and sensor.shipment:
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
