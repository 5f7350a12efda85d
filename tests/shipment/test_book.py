"""The shipment book: lifecycle, legs and custody, busy sensors, the stability budget, snapshots."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.exc import SensorBusy, ShipmentError
from agent.shipment import ShipmentBook, ShipmentSpec, stamp

H = 3600.0


def spec(**kw: Any) -> ShipmentSpec:
    base: dict[str, Any] = {"id": "SHP-1", "sensors": ["p1", "p2"], "profile": "2-8C", "ignore_s": 0}
    return ShipmentSpec.model_validate({**base, **kw})


def events(records: list[dict[str, Any]]) -> list[str]:
    return [r.get("event") or f"alarm:{r['rule']}:{r['state']}" for r in records]


def states(records: list[dict[str, Any]]) -> list[str]:
    return [r["details"]["to"] for r in records if r.get("event") == "shipment_state"]


def test_lifecycle_start_legs_handover_stop_records_every_transition():
    book = ShipmentBook(gateway_id="gw-1", agent_version="0.1.0")
    legs = [{"name": "packing", "kind": "origin", "mode": "road"}, {"name": "LHR-JFK", "kind": "transit", "mode": "air"},
            {"name": "receiving", "kind": "destination", "mode": "road"}]
    out = book.start(spec(legs=legs, ignore_s=600, custodian="Pharma Ltd"), elapsed=100.0, by="qa")
    assert events(out) == ["shipment_started", "shipment_state", "shipment_leg"]
    started = out[0]["details"]
    assert started["shipment"] == "SHP-1" and started["gateway"] == "gw-1" and started["ignore_s"] == 600
    assert [leg["name"] for leg in started["legs"]] == ["packing", "LHR-JFK", "receiving"]
    assert book.status(100.0)[0]["state"] == "created"
    assert book.tag("p1") == "SHP-1" and book.tag("other") is None

    assert states(book.tick(699.0)) == []
    assert states(book.tick(700.0)) == ["in_transit"]  # the ignore period is over
    out = book.leg("SHP-1", elapsed=2 * H)  # the next planned leg
    assert out[0]["details"].items() >= {"leg": "LHR-JFK", "kind": "transit", "mode": "air", "previous": "packing"}.items()
    out = book.handover("SHP-1", from_party="Pharma Ltd", to_party="AirCargo", signed_by="J. Doe", elapsed=2 * H + 5)
    assert out[0]["event"] == "custody_transferred"
    assert out[0]["details"]["from"] == "Pharma Ltd" and out[0]["details"]["where"] is None  # no GPS fix yet
    out = book.leg("SHP-1", elapsed=10 * H)
    assert states(out) == ["delivered"]  # the destination leg
    out = book.stop("SHP-1", elapsed=11 * H, by="qa")
    assert events(out) == ["shipment_state", "shipment_stopped"] and states(out) == ["closed"]
    assert out[1]["details"]["reason"] == "manual" and out[1]["details"]["duration_s"] == pytest.approx(11 * H - 100)
    assert book.tag("p1") is None  # the sensors are free again
    assert book.shipments()[0]["state"] == "closed"


def test_a_second_shipment_with_a_busy_sensor_is_refused_and_nothing_changes():
    book = ShipmentBook()
    book.start(spec(), elapsed=0.0)
    with pytest.raises(SensorBusy) as exc:
        book.start(spec(id="SHP-2", sensors=["p3", "p2"]), elapsed=10.0)
    assert exc.value.sensor_id == "p2" and exc.value.holder == "SHP-1"
    assert "p2" in str(exc.value) and "SHP-1" in str(exc.value)
    assert book.tag("p3") is None and [s["shipment"] for s in book.shipments()] == ["SHP-1"]
    book.stop("SHP-1", elapsed=20.0)
    book.start(spec(id="SHP-2", sensors=["p3", "p2"]), elapsed=30.0)  # free once the first stopped
    assert book.tag("p2") == "SHP-2"


def test_cancel_frees_the_sensors_and_says_cancelled():
    book = ShipmentBook()
    book.start(spec(), elapsed=0.0)
    out = book.cancel("SHP-1", elapsed=50.0, by="ops", why="order withdrawn")
    assert out[1]["details"]["reason"] == "cancelled" and out[1]["details"]["why"] == "order withdrawn"
    assert states(out) == ["cancelled"] and book.tag("p1") is None
    with pytest.raises(ShipmentError, match="cancelled"):
        book.leg("SHP-1", elapsed=60.0, name="late")
    with pytest.raises(ShipmentError, match="used once"):
        book.start(spec(), elapsed=70.0)


def test_unknown_shipment_and_missing_handover_fields_are_clear_errors():
    book = ShipmentBook()
    with pytest.raises(ShipmentError, match="no shipment 'X'"):
        book.stop("X", elapsed=0.0)
    book.start(spec(), elapsed=0.0)
    with pytest.raises(ShipmentError, match="signed_by"):
        book.handover("SHP-1", from_party="a", to_party="b", signed_by=" ", elapsed=1.0)
    with pytest.raises(ShipmentError, match="no planned leg"):
        book.leg("SHP-1", elapsed=2.0)


def test_ignore_period_records_and_tags_but_does_not_judge_or_spend():
    book = ShipmentBook()
    book.start(spec(ignore_s=600, stability={"budget_s": 3600, "above": 8.0, "below": 2.0}), elapsed=0.0)
    assert book.tag("p1") == "SHP-1" and not book.judged("p1", 10.0)
    book.observe("p1", "temperature", 20.0, 10.0)  # a warm probe settling
    assert book.status(300.0)[0]["stability"]["spent_s"] == 0.0
    assert book.judged("p1", 600.0) and book.judged("unassigned", 0.0)
    book.observe("p1", "temperature", 9.0, 700.0)  # still out at the end of the ignore period: counts from 600
    assert book.status(700.0)[0]["stability"]["spent_s"] == pytest.approx(100.0)


def test_budget_carried_in_from_upstream_runs_out_at_the_right_second():
    book = ShipmentBook()
    # 4 h allowed, 3 h 50 min already spent upstream: 600 s left
    book.start(spec(stability={"budget_s": 4 * H, "spent_upstream_s": 4 * H - 600, "above": 8.0}), elapsed=1000.0)
    assert book.observe("p1", "temperature", 5.0, 1000.0) == []
    assert book.observe("p1", "temperature", 8.4, 2000.0) == []  # out from 2000 s
    assert book.tick(2500.0) == []
    out = book.observe("p2", "temperature", 9.0, 2700.0)  # the tick at 2600 s was missed: stamped exactly
    (alarm,) = [r for r in out if r["type"] == "alarm"]
    assert alarm["rule"] == "stability_budget" and alarm["_elapsed"] == pytest.approx(2600.0)
    assert alarm["_started_elapsed"] == pytest.approx(2000.0) and alarm["remaining_s"] == 0.0
    assert alarm["spent_upstream_s"] == pytest.approx(4 * H - 600)
    (rec,) = stamp([alarm], wall_now=1_800_000_000.0, elapsed_now=2700.0)
    assert rec["ts"] == pytest.approx(1_800_000_000.0 - 100) and rec["started_at"] == pytest.approx(1_800_000_000.0 - 700)
    assert "_elapsed" not in rec and book.tick(5000.0) == []  # raised once
    stop = book.stop("SHP-1", elapsed=5000.0)[-1]["details"]["stability"]
    assert stop["remaining_s"] == 0.0 and stop["exhausted"] and stop["spent_s"] == pytest.approx(3000.0)


def test_two_probes_out_together_spend_the_budget_once():
    book = ShipmentBook()
    book.start(spec(stability={"budget_s": H, "above": 8.0}), elapsed=0.0)
    book.observe("p1", "temperature", 9.0, 0.0)
    book.observe("p2", "temperature", 9.0, 0.0)
    book.observe("p1", "temperature", 5.0, 600.0)
    book.observe("p2", "temperature", 5.0, 900.0)
    assert book.status(2000.0)[0]["stability"]["spent_s"] == pytest.approx(900.0)


def test_a_shipment_started_with_its_budget_spent_upstream_alarms_at_once():
    book = ShipmentBook()
    out = book.start(spec(stability={"budget_s": H, "spent_upstream_s": H, "above": 8.0}), elapsed=50.0)
    assert [r["rule"] for r in out if r["type"] == "alarm"] == ["stability_budget"]


def test_snapshot_and_restore_mid_leg_keeps_budget_legs_custody_and_busy_sensors():
    book = ShipmentBook()
    book.start(spec(legs=[{"name": "a", "kind": "origin"}, {"name": "b", "kind": "transit", "mode": "sea"}],
                    stability={"budget_s": 2 * H, "spent_upstream_s": 1800, "above": 8.0}), elapsed=0.0)
    book.leg("SHP-1", elapsed=100.0)
    book.handover("SHP-1", from_party="x", to_party="y", signed_by="z", elapsed=150.0)
    book.observe("p1", "temperature", 9.0, 200.0)
    book.observe("p1", "temperature", 9.5, 1200.0)  # 1000 s spent, still out
    snap = json.loads(json.dumps(book.snapshot()))  # what the store keeps
    again = ShipmentBook(state=snap)
    assert again.status(1200.0) == book.status(1200.0)
    assert again.tag("p2") == "SHP-1"
    with pytest.raises(SensorBusy):
        again.start(spec(id="SHP-9", sensors=["p1"]), elapsed=1300.0)
    # the budget goes on from where it was: 2 h - 30 min - 1000 s = 4400 s left at 1200 s
    out = again.tick(1200.0 + 4400.0)
    assert [r["_elapsed"] for r in out if r["type"] == "alarm"] == [pytest.approx(5600.0)]
    assert again.status(5600.0)[0]["leg"]["name"] == "b" and again.status(5600.0)[0]["handovers"] == 1


def test_rebase_after_a_reboot_holds_the_state_across_the_downtime():
    book = ShipmentBook()
    book.start(spec(stability={"budget_s": 2 * H, "above": 8.0}), elapsed=5000.0)
    book.observe("p1", "temperature", 9.0, 6000.0)
    again = ShipmentBook(state=book.snapshot())
    again.rebase(elapsed_now=30.0, downtime_s=600.0)  # rebooted: the timeline starts again
    assert again.status(30.0)[0]["stability"]["spent_s"] == pytest.approx(600.0)  # down while out: spent
    assert again.status(30.0)[0]["elapsed_s"] == pytest.approx(1600.0)


def test_duration_stop_condition_stops_at_the_planned_second():
    book = ShipmentBook()
    book.start(spec(stop={"duration_s": 3 * H}), elapsed=10.0)
    assert book.tick(3 * H) == []
    out = book.tick(4 * H)
    assert out[-1]["event"] == "shipment_stopped" and out[-1]["details"]["reason"] == "duration"
    assert out[-1]["_elapsed"] == pytest.approx(3 * H + 10) and book.tag("p1") is None


def test_arrival_in_the_geofence_from_gps_readings_delivers_and_stops():
    book = ShipmentBook()
    book.start(spec(stop={"geofence": {"lat": 40.6413, "lon": -73.7781, "radius_m": 1000, "name": "JFK"}}),
               elapsed=0.0)
    assert book.observe("gps", "latitude", 51.47, 100.0) == []
    assert book.observe("gps", "longitude", -0.45, 100.5) == []  # a fix far away
    out = book.handover("SHP-1", from_party="a", to_party="b", signed_by="c", elapsed=200.0)
    assert out[0]["details"]["where"]["lat"] == 51.47 and out[0]["details"]["where_source"] == "gps"
    book.observe("gps", "latitude", 40.6420, 9000.0)
    out = book.observe("gps", "longitude", -73.7790, 9000.2)
    assert states(out) == ["delivered", "closed"]
    stopped = next(r for r in out if r.get("event") == "shipment_stopped")["details"]
    assert stopped["reason"] == "geofence" and stopped["where"]["distance_m"] < 1000


def test_a_position_without_a_fix_is_not_one():
    book = ShipmentBook()
    book.start(spec(stop={"geofence": {"lat": 1.0, "lon": 1.0, "radius_m": 500}}), elapsed=0.0)
    book.observe("gps", "latitude", 1.0, 10.0)
    book.observe("gps", "gnss_fix", 0, 10.1)
    assert book.observe("gps", "longitude", 1.0, 10.2) == []
    assert book.status(11.0)[0]["state"] == "in_transit"


def test_freeze_thaw_cycles_counted_with_hysteresis_and_alarm_past_the_maximum():
    book = ShipmentBook()
    book.start(spec(freeze_thaw={"freeze_at": 0.0, "thaw_at": 2.0, "max_cycles": 1}), elapsed=0.0)
    values = [5.0, -0.5, 0.5, -0.2, 1.9, 2.5, 4.0, -1.0, 3.0]  # dithering near 0 is one freeze
    out: list[dict[str, Any]] = []
    for i, v in enumerate(values):
        out += book.observe("p1", "temperature", v, 60.0 * i)
    assert [r["details"]["cycles"] for r in out if r.get("event") == "freeze_thaw_cycle"] == [1, 2]
    assert [r["rule"] for r in out if r["type"] == "alarm"] == ["freeze_thaw"]
    assert book.status(600.0)[0]["freeze_thaw"]["cycles"] == {"p1": 2, "p2": 0}


def test_leg_settings_mute_rules_for_that_leg_only():
    book = ShipmentBook()
    book.start(spec(legs=[{"name": "packing", "kind": "origin", "mute": ["light"]}, {"name": "road"}]), elapsed=0.0)
    assert book.muted("p1", "light") == "packing" and book.muted("p1", "high") is None
    book.leg("SHP-1", elapsed=100.0)
    assert book.muted("p1", "light") is None


def test_the_books_own_alarm_is_acknowledged_once():
    book = ShipmentBook()
    out = book.start(spec(stability={"budget_s": 60, "spent_upstream_s": 60, "above": 8.0}), elapsed=0.0)
    alarm_id = next(r["alarm_id"] for r in out if r["type"] == "alarm")
    assert book.knows_alarm(alarm_id)
    rec = book.acknowledge(alarm_id, by="qa", reason="product quarantined", elapsed=10.0)
    assert rec["state"] == "acknowledged" and rec["by"] == "qa" and rec["_started_elapsed"] == 0.0
    with pytest.raises(KeyError):
        book.acknowledge(alarm_id, by="qa", reason="again", elapsed=11.0)


def test_start_records_an_en12830_warning_for_a_slow_sensor():
    book = ShipmentBook()
    sensors = [{"id": "p1", "record_interval_s": 600.0}, {"id": "p2", "record_interval_s": 60.0}]
    out = book.start(spec(planned_duration_s=12 * H), elapsed=0.0, sensors=sensors)
    check = out[0]["details"]["en12830"]
    assert check["max_interval_s"] == 300.0
    assert len(check["warnings"]) == 1 and check["warnings"][0].startswith("p1: records every 600 s")


@pytest.mark.parametrize(("planned_h", "allowed_s"), [
    (23.9, 300.0),      # up to 24 h: 5 min
    (24.0, 300.0),      # a trip of exactly one day is still "up to 1 day"
    (24.5, 900.0),      # 1 to 7 days: 15 min
    (7 * 24, 900.0),    # exactly 7 days is still "1 to 7 days"
    (8 * 24, 3600.0),   # beyond 7 days: 60 min
    (30 * 24, 3600.0),
])
def test_en12830_allows_5_15_or_60_min_by_trip_length_and_warns_of_a_sensor_slower_than_that(
        planned_h: float, allowed_s: float) -> None:
    sensors = [{"id": "at", "record_interval_s": allowed_s}, {"id": "over", "record_interval_s": allowed_s + 60}]
    out = ShipmentBook().start(spec(sensors=["at", "over"], planned_duration_s=planned_h * H), elapsed=0.0,
                               sensors=sensors)
    check = out[0]["details"]["en12830"]
    assert check["max_interval_s"] == allowed_s
    assert check["warnings"] == [f"over: records every {allowed_s + 60:g} s; EN 12830 allows at most {allowed_s:g} s "
                                 f"for a {planned_h:g} h trip"]
