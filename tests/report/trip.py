"""A replayed trip written into a real store the way the agent's writer does it.

Every sample goes to the shipment book (budget, GPS), is tagged with its shipment and
recorded, and, outside the ignore period, judged by the real rule engine; alarm records
get the shipment id (and ``muted`` from the leg settings) as the runtime adds them. Book
records are stamped with :func:`agent.shipment.stamp`. Time: ``T0`` + seconds, and the
monotonic timeline is the same seconds (``elapsed``).

``clock=(synced_at_s, behind_s)``: the gateway's clock reads ``behind_s`` seconds behind, and
unsynchronised, until ``synced_at_s``; its records carry ``time_quality: unsynced``, the
monotonic time and boot id as the agent's stamper gives them, and at ``synced_at_s`` a
``clock_step`` event says how to correct them, made as :meth:`agent.writer.Writer.correct_clock`
makes it (the runs from :meth:`agent.store.Store.unsynced_segments`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.rules.config import RulesConfig
from agent.rules.engine import RuleEngine, Sample
from agent.shipment import ShipmentBook, ShipmentSpec, stamp
from agent.store import Store

T0 = 1_795_000_000.0  # 2026-11-18T11:06:40Z
GATEWAY = "gw-trip-1"
H = 3600.0
BOOT = "boot-trip-1"
BOOT_MONO_S = 120.0  # the boottime clock read 120 s at T0

def profiles(name: str) -> dict[str, Any]:
    """The ``rule_profiles`` of ``shipment_started`` for the preset ``name``, as the agent writes it."""
    return {name: {"description": f"{name} preset", "mkt_max_gap_s": 3600.0, "rules": {
        n: r.model_dump(mode="json") for n, r in RulesConfig().profile(name).active_rules().items()}}}


PROFILES = profiles("2-8C")


@dataclass
class Trip:
    store: Store
    book: ShipmentBook
    engine: RuleEngine
    items: list[dict[str, Any]] = field(default_factory=list)
    seqs: dict[str, int] = field(default_factory=dict)  # named moments -> seq of the record
    behind_s: float | None = None  # the clock reads this far behind, unsynchronised (None: synced)

    def add(self, recs: list[dict[str, Any]], t: float) -> None:
        for r in stamp(recs, wall_now=T0 + t, elapsed_now=t):
            self.items.append({"time_quality": "synced", **r})

    def flush(self) -> None:
        if self.behind_s is not None:
            for item in self.items:  # stamped by the unsynchronised clock, as the agent's stamper does
                true = float(item["ts"])
                item.update(ts=true - self.behind_s, time_quality="unsynced", boot_id=BOOT,
                            mono_ns=round((true - T0 + BOOT_MONO_S) * 1e9))
                if item.get("started_at") is not None:
                    item["started_at"] = float(item["started_at"]) - self.behind_s
        if self.items:
            self.store.append(self.items)
            self.items = []

    def sample(self, sid: str, q: str, v: float, unit: str, t: float) -> None:
        self.add(self.book.observe(sid, q, v, t), t)
        tag = self.book.tag(sid)
        item = {"type": "reading", "ts": T0 + t, "time_quality": "synced", "sensor_id": sid, "quantity": q,
                "value": v, "unit": unit}
        if tag:
            item["shipment"] = tag
        if sid == "p2":
            item["calibration"] = "CAL-2025-0042"
        self.items.append(item)
        if self.book.judged(sid, t):
            for a in self.engine.observe(Sample(sid, q, v, unit, T0 + t)):
                self.items.append(self._alarm(a))

    def _alarm(self, a: dict[str, Any]) -> dict[str, Any]:
        item = {"type": "alarm", "time_quality": "synced", **a}
        tag = self.book.tag(a["sensor_id"])
        if tag:
            item["shipment"] = tag
            muted = self.book.muted(a["sensor_id"], a["rule"])
            if muted:
                item["muted"] = muted
        return item

    def clock_synced(self, t: float) -> None:
        """The clock becomes synchronised at ``t``: the ``clock_step`` event of the writer."""
        self.flush()
        self.behind_s = None
        rel_now = T0 - BOOT_MONO_S  # wall minus boottime, once the clock is right
        corrections = [{"first_seq": a, "last_seq": b, "count": n, "offset_s": round(rel_now - base, 3)}
                       for a, b, n, base in self.store.unsynced_segments(BOOT)]
        self.items.append({"type": "event", "event": "clock_step", "ts": T0 + t, "time_quality": "synced",
                           "boot_id": BOOT, "mono_ns": round((t + BOOT_MONO_S) * 1e9), "details": {
                               "synced": True, "boot_id": BOOT, "corrections": corrections,
                               "method": "monotonic (CLOCK_BOOTTIME)"}})
        self.flush()
        self.seqs["clock_step"] = self.store.head()[0]

    def tick(self, t: float) -> None:
        self.add(self.book.tick(t), t)
        for a in self.engine.tick(T0 + t):
            self.items.append(self._alarm(a))


def temperature(sid: str, t: float) -> float:
    """Two probes near 5 °C; p1 warms to 9.5 °C for 40 min at 2 h, p2 cools to 1.5 °C for 30 min at 6 h."""
    base = 5.0 + 0.3 * math.sin(t / 1800.0) + (0.2 if sid == "p2" else 0.0)
    if sid == "p1" and 2 * H <= t < 2 * H + 2400:
        return 9.5
    if sid == "p2" and 6 * H <= t < 6 * H + 1800:
        return 1.5
    return round(base, 3)


def build(path: Path, *, hours: float = 12.0, interval_s: float = 60.0, sensors: tuple[str, ...] = ("p1", "p2"),
          gps_every_s: float = 300.0, value: Callable[[str, float], float] = temperature,
          ack: bool = True, handover: bool = True, stop: bool = True,
          spec_extra: dict[str, Any] | None = None, clock: tuple[float, float] | None = None,
          profile: str = "2-8C") -> Trip:
    """Write the trip into a new store at ``path``; returns it (store left open).

    ``spec_extra``: more of the shipment's spec (``freeze_thaw``, …), over the defaults here.
    """
    store = Store.open(path, gateway_id=GATEWAY)
    book = ShipmentBook(gateway_id=GATEWAY, agent_version="0.1.0")
    engine = RuleEngine(RulesConfig(), {s: profile for s in sensors})
    trip = Trip(store, book, engine, behind_s=clock[1] if clock else None)
    spec = ShipmentSpec.model_validate({
        "id": "SHP-TRIP-1", "sensors": list(sensors), "profile": profile, "planned_duration_s": hours * H,
        "ignore_s": 600, "custodian": "Pharma Ltd", "product": "Vaccine X, lot 42", "origin": "Basel",
        "destination": "New York",
        "legs": [{"name": "packing", "kind": "origin", "mode": "road", "mute": ["pre_high"]},
                 {"name": "BSL-JFK", "kind": "transit", "mode": "air"},
                 {"name": "receiving", "kind": "destination", "mode": "road"}],
        "stability": {"budget_s": 4 * H, "spent_upstream_s": 1800, "above": 8.0, "below": 2.0},
        **(spec_extra or {})})
    infos = [{"id": s, "label": f"probe {s}", "record_interval_s": interval_s, "profile": profile,
              "calibration": {"certificate": f"CAL-{s}", "due": "2026-01-31" if s == "p2" else "2027-06-30"}}
             for s in sensors]
    trip.add(book.start(spec, elapsed=0.0, wall=T0, by="qa.lead", sensors=infos, profiles=profiles(profile)), 0.0)
    trip.flush()
    steps = int(hours * H / interval_s)
    lat, lon = 47.56, 7.59
    for i in range(1, steps + 1):
        t = i * interval_s
        for s in sensors:
            trip.sample(s, "temperature", value(s, t), "Cel", t)
        if gps_every_s and t % gps_every_s == 0:
            f = t / (hours * H)
            trip.sample("gps", "latitude", round(lat + (40.64 - lat) * f, 6), "lat", t)
            trip.sample("gps", "longitude", round(lon + (-73.78 - lon) * f, 6), "lon", t + 0.5)
        trip.tick(t)
        if clock and t == clock[0]:
            trip.clock_synced(t)
        if t == 1 * H:
            trip.add(book.leg("SHP-TRIP-1", elapsed=t, by="dispatch"), t)
        if handover and t == 4 * H:
            trip.add(book.handover("SHP-TRIP-1", from_party="Pharma Ltd", to_party="AirCargo AG",
                                   signed_by="J. Doe", elapsed=t), t)
            trip.flush()
            trip.seqs["handover"] = store.head()[0]
        if ack and t == 3 * H:
            alarm_id = next(a["alarm_id"] for a in engine.active() if a["sensor_id"] == "p1" and a["rule"] == "high")
            trip.items.append({"type": "alarm", "time_quality": "synced", "shipment": "SHP-TRIP-1",
                               **engine.acknowledge(alarm_id, "qa.lead", "product quarantined for QA review", T0 + t)})
        if t == hours * H - H:
            trip.add(book.leg("SHP-TRIP-1", elapsed=t), t)
        if len(trip.items) > 2000:
            trip.flush()
    if stop:
        trip.add(book.stop("SHP-TRIP-1", elapsed=hours * H, by="receiving clerk", wall=T0 + hours * H), hours * H)
    trip.flush()
    return trip


def make_gap(store: Store, first: int, last: int) -> None:
    """Delete seqs first..last the only way the store deletes: acknowledged, then pruned."""
    store.ack(range(first, last + 1))
    keep = store.keep_acked
    store.keep_acked = 0
    store.prune()
    store.keep_acked = keep
