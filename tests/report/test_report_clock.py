"""The trip report of a trip whose gateway clock was wrong at first: the integrity section's
``time_quality`` counts and ``clock_step`` corrections, and every time corrected by them."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from agent.report import build, render_pdf
from agent.report.source import from_store, source_of_store
from agent.timebase import parse_rfc3339, rfc3339
from tests.report.trip import T0, H
from tests.report.trip import build as build_trip

SHIPMENT = "SHP-TRIP-1"
SYNCED_AT = 2 * H + 30 * 60  # in the middle of p1's excursion (2 h to 2 h 40 min)
BEHIND = 2 * H  # the clock read two hours behind until then


@pytest.fixture(scope="module")
def trip(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("clock")
    t = build_trip(d / "store.db", hours=4, ack=False, handover=False, clock=(SYNCED_AT, BEHIND))
    model = build(from_store(t.store, SHIPMENT), source=source_of_store(t.store), generated_at=T0 + 5 * H)
    records = t.store.records()
    t.store.close()
    return {"db": d / "store.db", "model": model, "records": records, "step_seq": t.seqs["clock_step"]}


def test_integrity_counts_each_time_quality_and_gives_the_clock_steps_correction_of_the_unsynced_records(
        trip: dict[str, Any]) -> None:
    recs, integ = trip["records"], trip["model"]["integrity"]
    started = next(r["seq"] for r in recs if r.get("event") == "shipment_started")
    in_range = [r for r in recs if r["seq"] >= started]
    assert integ["time_quality"] == dict(Counter(r["time_quality"] for r in in_range))
    unsynced = [r for r in in_range if r["time_quality"] == "unsynced"]
    assert unsynced and all(r["seq"] < trip["step_seq"] for r in unsynced)
    assert integ["time_quality"]["synced"] == len(in_range) - len(unsynced)
    step = next(r for r in recs if r.get("event") == "clock_step")
    assert integ["clock_steps"] == [{"seq": step["seq"], "ts": step["ts"], "offset_s": None, "synced": True,
                                     "corrections": [{"first_seq": unsynced[0]["seq"], "last_seq": unsynced[-1]["seq"],
                                                      "count": len(unsynced), "offset_s": BEHIND}]}]
    readings = [r for r in unsynced if r["type"] == "reading" and r["sensor_id"] in ("p1", "p2")]
    assert integ["corrected_records"] == len(readings)
    assert integ["verdict"] == "complete-and-verified"
    # corrected by the event: the report does not call the unsynced stamps a finding
    assert not any("not synchronised" in r for r in trip["model"]["verdict"]["reasons"])


def test_times_stamped_by_the_wrong_clock_are_reported_corrected_by_the_clock_steps_offset(
        trip: dict[str, Any]) -> None:
    model, recs = trip["model"], trip["records"]
    started = next(r for r in recs if r.get("event") == "shipment_started")
    assert parse_rfc3339(started["ts"]) == pytest.approx(T0 - BEHIND)  # as the wrong clock stamped it
    assert model["shipment"]["started_at"] == rfc3339(T0)
    assert model["shipment"]["duration_s"] == pytest.approx(4 * H)
    assert [(leg["name"], leg["start"]) for leg in model["legs"]] == [
        ("packing", rfc3339(T0)), ("BSL-JFK", rfc3339(T0 + H)), ("receiving", rfc3339(T0 + 3 * H))]
    p1 = next(s for s in model["sensors"] if s["id"] == "p1")["quantities"]["temperature"]
    assert (p1["first_at"], p1["max_at"], p1["last_at"]) == (rfc3339(T0 + 60), rfc3339(T0 + 2 * H),
                                                             rfc3339(T0 + 4 * H))
    assert p1["count"] == 4 * 60
    high = next(a for a in model["alarms"] if a["sensor_id"] == "p1" and a["rule"] == "high")
    assert [(x["start"], x["end"]) for x in high["excursions"]] == [(rfc3339(T0 + 2 * H),
                                                                     rfc3339(T0 + 2 * H + 2400))]
    # raised 15 min into the excursion, stamped by the wrong clock, reported at the right time
    assert [x["at"] for x in high["raised"]] == [rfc3339(T0 + 2 * H + 900)]
    assert model["shipment"]["states"][0]["at"] == rfc3339(T0)


@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="poppler-utils (pdftotext) not installed")
def test_pdf_states_the_time_quality_counts_and_each_clock_step_correction(trip: dict[str, Any],
                                                                            tmp_path: Path) -> None:
    integ = trip["model"]["integrity"]
    pdf = tmp_path / "r.pdf"
    render_pdf(trip["model"], str(pdf))
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], check=True, capture_output=True,
                          text=True).stdout
    flat = re.sub(r"\s+", " ", text)
    tq = integ["time_quality"]
    assert f"time_quality {', '.join(f'{k} {v}' for k, v in tq.items())}" in flat
    c = integ["clock_steps"][0]["corrections"][0]
    assert (f"seq {c['first_seq']}-{c['last_seq']}: +7200 s ({integ['corrected_records']} readings corrected)"
            in flat)


def test_an_alarm_raised_by_the_wrong_clock_has_its_excursion_start_corrected_too(tmp_path: Path) -> None:
    """The stability budget (50 of 60 min spent upstream) runs out 10 min into p1's excursion,
    before the clock is set: the budget row's excursion starts when p1 left its range, 2 h in."""
    t = build_trip(tmp_path / "s.db", hours=4, ack=False, handover=False, clock=(SYNCED_AT, BEHIND),
                   spec_extra={"stability": {"budget_s": H, "spent_upstream_s": 50 * 60, "above": 8.0}})
    model = build(from_store(t.store, SHIPMENT), source=source_of_store(t.store), generated_at=T0 + 5 * H)
    raised = [r for r in t.store.records(type="alarm") if r["rule"] == "stability_budget"]
    t.store.close()
    assert [r["time_quality"] for r in raised] == ["unsynced"]
    assert parse_rfc3339(raised[0]["started_at"]) == pytest.approx(T0 + 2 * H - BEHIND)  # as stamped
    row = next(a for a in model["alarms"] if a["rule"] == "stability_budget")
    assert row["status"] == "ALARM" and [x["at"] for x in row["raised"]] == [rfc3339(T0 + 2 * H + 600)]
    assert [x["start"] for x in row["excursions"]] == [rfc3339(T0 + 2 * H)]
