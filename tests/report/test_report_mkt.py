"""The report of a trip under a controlled-room-temperature profile: USP <1079.2>'s 30-day
MKT window, its figure computed here from the trip's own readings."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.report import build, render_html, render_pdf
from agent.report.pdf import num, when
from agent.report.source import from_store, source_of_store
from agent.timebase import rfc3339
from tests.report.trip import T0, H
from tests.report.trip import build as build_trip

DAY = 24 * H


def _crt(sid: str, t: float) -> float:
    """The first day at 2 °C, then 10 days at 25 °C and 20 days at 20 °C (a reading every 10 min)."""
    return 2.0 if t < 25 * H else 25.0 if t < 265 * H else 20.0


def _mkt(parts: list[tuple[float, float]]) -> float:
    """MKT of (hours, Cel) by its definition: ΔH/R = 83.144 kJ/mol / 8.3144 J/(mol K) = 10000 K."""
    total = sum(h for h, _ in parts)
    mean = sum(h * math.exp(-10000.0 / (c + 273.15)) for h, c in parts) / total
    return 10000.0 / -math.log(mean) - 273.15


@pytest.mark.parametrize("profile", ["15-25C", "crt"])
def test_report_of_a_controlled_room_temperature_trip_gives_the_worst_30_day_window_mkt(
        profile: str, tmp_path: Path) -> None:
    """745 h, a reading every 10 min: the worst 30-day window is the one after the cold first
    day, 240 h at 25 °C and 480 h at 20 °C; the trip figure, with the cold day (from the first
    reading, 10 min in), is lower."""
    t = build_trip(tmp_path / "s.db", hours=745, interval_s=600.0, sensors=("p1",), gps_every_s=0, value=_crt,
                   ack=False, handover=False, profile=profile)
    model = build(from_store(t.store, "SHP-TRIP-1"), source=source_of_store(t.store), generated_at=T0 + 746 * H)
    t.store.close()
    mkt = model["sensors"][0]["quantities"]["temperature"]["mkt"]
    assert mkt["class"] == "controlled room temperature"
    usp = mkt["usp"]
    assert usp["window_s"] == 30 * DAY and usp["complete"] is True
    assert (usp["start"], usp["end"]) == (rfc3339(T0 + 25 * H), rfc3339(T0 + 745 * H))
    assert usp["mkt"] == pytest.approx(_mkt([(240, 25.0), (480, 20.0)]), abs=1e-6)
    assert mkt["trip"]["mkt"] == pytest.approx(_mkt([(25 - 600 / H, 2.0), (240, 25.0), (480, 20.0)]), abs=1e-6)
    assert mkt["trip"]["mkt"] < usp["mkt"]
    assert f"30 days window {num(usp['mkt'])}" in render_html(model)  # not "720 h"
    if shutil.which("pdftotext") is None:
        pytest.skip("poppler-utils (pdftotext) not installed")
    pdf = tmp_path / "r.pdf"
    render_pdf(model, str(pdf))
    flat = re.sub(r"\s+", " ", subprocess.run(["pdftotext", "-layout", str(pdf), "-"], check=True,
                                              capture_output=True, text=True).stdout).replace("\u2206", "\u0394")  # the font's ∆ for Δ
    assert (f"p1: trip {num(mkt['trip']['mkt'])} Cel; USP <1079.2> 30 days window {num(usp['mkt'])} Cel "
            f"(worst window from {when(usp['start'])}); ΔH 83.144 kJ/mol") in flat


def test_a_rule_that_fired_hundreds_of_times_lists_a_few_alarm_ids_and_counts_them_all(tmp_path: Path) -> None:
    # Hourly readings under a 15 min "missing" rule: an alarm every hour of a 10-day trip.
    # Its summary row had every id in one cell: a row some 300 pages long.
    t = build_trip(tmp_path / "s.db", hours=240, interval_s=3600.0, sensors=("p1",), gps_every_s=0,
                   ack=False, handover=False)
    model = build(from_store(t.store, "SHP-TRIP-1"), source=source_of_store(t.store), generated_at=T0 + 241 * H)
    t.store.close()
    row = max(model["alarms"], key=lambda a: len(a["alarm_ids"]))
    n = len(row["alarm_ids"])
    assert n > 100
    if shutil.which("pdftotext") is None:
        pytest.skip("poppler-utils (pdftotext) not installed")
    pdf = tmp_path / "r.pdf"
    render_pdf(model, str(pdf))
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], check=True, capture_output=True, text=True).stdout
    flat = re.sub(r"\s+", " ", text)
    assert f"({n} in all)" in flat and row["alarm_ids"][0] in flat
    assert row["alarm_ids"][-1] not in flat.split("Excursions")[0]  # not listed whole in the summary row
    assert text.count("\f") <= 5, f"{text.count(chr(12))} pages"  # 60 before
