"""From a driver's reading to a store item: stamping, calibration, decimation, bad values."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from freezegun import freeze_time

from agent import config as configmod
from agent.ingest import Ingest
from agent.rules.engine import RuleEngine, Sample
from agent.stamp import Stamper
from agent.timebase import Clock
from drivers.base import Reading

CFG = """
gateway_id = "gw"
[recording]
record_interval_s = 60
[[sensors]]
id = "cal"
calibration = { offset = -0.5, slope = 1.01, certificate = "CAL-7" }
shipment = "SHP-1"
[[sensors]]
id = "fast"
record_interval_s = 10
[[sensors]]
id = "lane"
profile = "2-8C"
"""


def make(judge: bool = False) -> Ingest:
    cfg = configmod.loads(CFG)
    ingest = Ingest(cfg, Stamper(Clock("assume_synced")))
    if judge:
        ingest.set_judge(RuleEngine(cfg.rules, {"lane": "2-8C"}), Sample)
    return ingest


def temps(ingest: Ingest) -> list[tuple[str, float, float]]:
    return [(i["sensor_id"], i["ts"], i["value"]) for i in ingest.take() if i["type"] == "reading"]


def test_one_reading_per_interval_is_kept_judged_by_the_readings_own_time() -> None:
    ingest = make()
    ingest.readings([Reading("fast", "temperature", 5.0, "Cel", 1000.0 + t) for t in range(0, 35)])
    assert [ts for _, ts, _ in temps(ingest)] == [1000.0, 1010.0, 1020.0, 1030.0]
    ingest.readings([Reading("other", "temperature", 5.0, "Cel", 1000.0 + t) for t in range(0, 125, 5)])
    assert [ts for _, ts, _ in temps(ingest)] == [1000.0, 1060.0, 1120.0]  # the [recording] default


def test_every_sample_is_kept_while_the_sensor_is_out_of_range() -> None:
    ingest = make(judge=True)
    values = [5.0, 5.0, 9.0, 9.5, 9.0, 5.0, 5.0]
    ingest.readings([Reading("lane", "temperature", v, "Cel", 1000.0 + 5 * i) for i, v in enumerate(values)])
    kept = [(ts - 1000.0, v) for _, ts, v in temps(ingest)]
    # the first, then every sample from the excursion's start until it is back in range
    assert kept == [(0.0, 5.0), (10.0, 9.0), (15.0, 9.5), (20.0, 9.0), (25.0, 5.0)]


def test_calibration_is_applied_and_the_raw_value_and_certificate_kept() -> None:
    ingest = make()
    ingest.reading(Reading("cal", "temperature", 10.0, "Cel", 1000.0))
    (item,) = ingest.take()
    assert item["value"] == round(10.0 * 1.01 - 0.5, 6) and item["raw"] == 10.0
    assert item["calibration"] == "CAL-7" and item["shipment"] == "SHP-1"


@freeze_time("2026-11-23 08:15:02.125")
def test_readings_received_together_share_one_stamp_and_quality() -> None:
    ingest = make()
    ingest.readings([Reading("x", q, 1.0, "count") for q in ("a", "b", "c")], driver="d1")
    items = ingest.take()
    when = datetime(2026, 11, 23, 8, 15, 2, 125000, tzinfo=UTC).timestamp()
    assert {i["ts"] for i in items} == {when} and {i["mono_ns"] for i in items} == {items[0]["mono_ns"]}
    assert {i["time_quality"] for i in items} == {"synced"} and {i["driver"] for i in items} == {"d1"}


def test_values_no_record_can_carry_are_counted_in_a_data_loss_event_and_the_rest_kept() -> None:
    ingest = make()
    bad = [math.nan, math.inf, -math.inf, 1e300, 2.0**53, True, "7"]
    batch = [Reading("p", "temperature", v, "Cel", 1000.0 + i) for i, v in enumerate(bad)]  # type: ignore[arg-type]
    ingest.readings([*batch, Reading("p", "humidity", 40.0, "%RH", 1000.0)])
    ingest.report_invalid()
    items = ingest.take()
    assert [i["quantity"] for i in items if i["type"] == "reading"] == ["humidity"]
    losses = [i for i in items if i["type"] == "event" and i["event"] == "data_loss"]
    assert sum(e["details"]["count"] for e in losses) == len(bad)
    assert all(e["details"]["reason"] == "invalid_value" for e in losses)
    assert "nan" in losses[0]["details"]["examples"][0]["value"]
