"""The trip report of a replayed trip: PDF text field by field against the store, the PDF
rendered to an image, gateway and receiver agreeing, the CLI, the export re-verified."""

from __future__ import annotations

import hashlib
import html
import json
import math
import re
import shutil
import statistics
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.receiver import Receiver
from agent.receiver.validate import Batch
from agent.report import build, render_html, render_pdf
from agent.report.pdf import dur, num, short, when
from agent.report.source import from_receiver, from_store, source_of_store
from agent.store import Store
from agent.timebase import parse_rfc3339, rfc3339
from tests.report.trip import GATEWAY, T0, H, make_gap, temperature
from tests.report.trip import build as build_trip

pytestmark = pytest.mark.skipif(shutil.which("pdftotext") is None or shutil.which("pdftoppm") is None,
                                reason="poppler-utils (pdftotext, pdftoppm) not installed; .ci/run installs them")
SHIPMENT = "SHP-TRIP-1"
FIXED = T0 + 13 * H  # generated_at of every model here: reports compared must not differ by the clock


@pytest.fixture(scope="module")
def trip(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 12 h trip: two excursions, an acknowledgement, a handover, and three records missing."""
    d = tmp_path_factory.mktemp("trip")
    t = build_trip(d / "store.db")
    readings = [r["seq"] for r in t.store.records(type="reading") if r["seq"] > t.seqs["handover"] + 20]
    gap = (readings[0], readings[2])
    assert readings[2] - readings[0] == 2
    make_gap(t.store, *gap)
    records = t.store.records()
    t.store.close()
    config = d / "coldgate.toml"
    config.write_text(f'gateway_id = "{GATEWAY}"\n[store]\npath = "{d / "store.db"}"\n')
    return {"dir": d, "db": d / "store.db", "config": config, "records": records, "gap": gap}


def _pdf_text(path: Path) -> str:
    out = subprocess.run(["pdftotext", "-layout", str(path), "-"], check=True, capture_output=True, text=True).stdout
    return re.sub(r"[ \t]+", " ", out)


def _gateway_model(trip: dict[str, Any]) -> dict[str, Any]:
    with Store.open(trip["db"], gateway_id=GATEWAY, create=False, check=False) as store:
        sel = from_store(store, SHIPMENT)
        return build(sel, source=source_of_store(store), generated_at=FIXED)


def test_pdf_text_states_each_field_as_the_store_holds_it(trip: dict[str, Any], tmp_path: Path) -> None:
    model = _gateway_model(trip)
    pdf = tmp_path / "r.pdf"
    render_pdf(model, str(pdf))
    text = _pdf_text(pdf)
    flat = " ".join(text.split())
    recs = trip["records"]
    started = next(r for r in recs if r.get("event") == "shipment_started")
    stopped = next(r for r in recs if r.get("event") == "shipment_stopped")
    # first page: the status and why
    assert "ALARM" in text.split("Why")[0] and "the product left its limits" in text
    assert "Trip report SHP-TRIP-1" in text and f"gateway {GATEWAY}" in text
    # header
    assert when(started["ts"]) in text and when(stopped["ts"]) in text and "receiving clerk" not in text.split("Why")[0]
    for leg, mode in (("packing", "road"), ("BSL-JFK", "air"), ("receiving", "road")):
        assert re.search(rf"{leg} \S+ {mode}", text), leg
    assert "time base UTC" in text and "agent version 0.1.0" in text
    assert re.search(r"p2 probe p2 2-8C 60 s / 60 s CAL-p2 2026-01-31 PAST DUE", text)
    assert re.search(r"p1 probe p1 2-8C 60 s / 60 s CAL-p1 2027-06-30\s", text)
    # summary per sensor, against the readings in the store
    for sid in ("p1", "p2"):
        pts = [(r["ts"], r["value"]) for r in recs if r.get("type") == "reading" and r.get("sensor_id") == sid]
        lo, hi = min(pts, key=lambda p: p[1]), max(pts, key=lambda p: p[1])
        assert f"{num(float(lo[1]))} {short(lo[0])}" in flat, sid
        assert f"{num(float(hi[1]))} {short(hi[0])}" in flat, sid
        assert re.search(rf"{sid} temperature \(Cel\).*? {len(pts)} ", flat), sid
    p1 = next(s for s in model["sensors"] if s["id"] == "p1")["quantities"]["temperature"]
    assert re.search(rf"p1: trip {num(p1['mkt']['trip']['mkt'])} Cel; USP <1079.2> 24 h window", flat)
    assert re.search(r"[∆Δ] ?H 83.144 kJ/mol", flat)
    # alarm table: each excursion with its start and end, the acknowledgement with who and why
    ack = next(r for r in recs if r.get("type") == "alarm" and r["state"] == "acknowledged")
    assert ack["alarm_id"] == "p1:high:1"
    high = next(r for r in recs if r.get("type") == "alarm" and r["alarm_id"] == "p1:high:1" and r["state"] == "raised")
    cleared = next(r for r in recs if r.get("type") == "alarm" and r["alarm_id"] == "p1:high:1" and r["state"] == "cleared")
    assert re.search(r"p1 high single limit 8 15 min 00 s 40 min 00 s 1 ALARM p1:high:1", flat)
    assert f"p1 high 1 {short(high['started_at'])} {short(cleared['ts'])} 40 min 00 s 9.50" in flat
    assert f"p1:high:1 qa.lead {short(ack['ts'])} product quarantined for QA review" in flat
    low = next(r for r in recs if r.get("type") == "alarm" and r["alarm_id"] == "p2:low:1" and r["state"] == "raised")
    assert re.search(r"p2 low single limit 2 15 min 00 s 30 min 00 s 1 ALARM p2:low:1", flat)
    assert f"p2 low 1 {short(low['started_at'])}" in flat
    # chain of custody
    handover = next(r for r in recs if r.get("event") == "custody_transferred")["details"]
    assert re.search(rf"1 {re.escape(short(next(r for r in recs if r.get('event') == 'custody_transferred')['ts']))}"
                     r" Pharma Ltd AirCargo AG J. Doe", flat)
    assert f"{handover['where']['lat']:.5f}, {handover['where']['lon']:.5f}" in flat
    # completeness and integrity: the range, the gap, the head hash, the verdict
    first, last = started["seq"], stopped["seq"]
    a, b = trip["gap"]
    assert f"seq range {first} - {last} ({last - first + 1 - 3} records" in flat
    assert f"gaps {a}-{b}" in flat and "not-verified" in flat
    assert f"head hash {stopped['hash']}" in flat
    stability = stopped["details"]["stability"]
    assert f"{dur(stability['remaining_s'])} left of {dur(stability['budget_s'])}" in flat


def test_pdf_renders_to_pages_that_are_not_blank(trip: dict[str, Any], tmp_path: Path) -> None:
    from PIL import Image, ImageChops

    pdf = tmp_path / "r.pdf"
    render_pdf(_gateway_model(trip), str(pdf))
    subprocess.run(["pdftoppm", "-r", "40", "-png", str(pdf), str(tmp_path / "page")], check=True)
    pages = sorted(tmp_path.glob("page-*.png"))
    assert len(pages) >= 3
    for page in pages:
        with Image.open(page) as img:
            hist = img.convert("L").histogram()
            dark = sum(hist[:200])
        assert dark > 500, page.name  # text, tables, charts: far more than a blank page's nothing
    with Image.open(pages[0]) as img:  # the status box is red on page 1
        r, g, bl = img.convert("RGB").split()
        red = Image.eval(r, lambda v: 255 if v > 150 else 0)
        not_green = Image.eval(g, lambda v: 255 if v < 60 else 0)
        assert ImageChops.multiply(red, not_green).histogram()[255] > 1000


def test_report_from_the_receivers_copy_agrees_with_the_gateways(trip: dict[str, Any], tmp_path: Path) -> None:
    recs = trip["records"]
    with Receiver(tmp_path / "rx.db") as rx:
        for i in range(0, len(recs), 400):  # batches, as the uplink sends them
            rx.store_batch(Batch(GATEWAY, recs[0]["stream"], recs[i:i + 400]))
        sel = from_receiver(rx, SHIPMENT)
    from_rx = build(sel, source={"kind": "reference receiver"}, generated_at=FIXED)
    from_gw = _gateway_model(trip)
    assert {k: v for k, v in from_rx.items() if k != "source"} == {k: v for k, v in from_gw.items() if k != "source"}
    assert main(["receiver", "report", "--db", str(tmp_path / "rx.db"), "--shipment", SHIPMENT,
                 "--pdf", str(tmp_path / "rx.pdf")]) == 0
    render_pdf(from_gw, str(tmp_path / "gw.pdf"))
    drop = re.compile(r".*(generated|source).*\n")
    assert drop.sub("", _pdf_text(tmp_path / "rx.pdf")) == drop.sub("", _pdf_text(tmp_path / "gw.pdf"))


def test_cli_report_writes_pdf_html_and_json(trip: dict[str, Any], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(trip["config"])
    assert main(["report", SHIPMENT, "-c", cfg, "--pdf", str(tmp_path / "a.pdf")]) == 0
    assert "ALARM" in capsys.readouterr().out and (tmp_path / "a.pdf").stat().st_size > 5000
    assert main(["report", SHIPMENT, "-c", cfg, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["shipment"]["id"] == SHIPMENT and data["verdict"]["status"] == "ALARM"
    assert main(["report", SHIPMENT, "-c", cfg, "--html", str(tmp_path / "a.html")]) == 0
    page = (tmp_path / "a.html").read_text()
    assert "<svg" in page and "PAST DUE" in page and "ΔH 83.144" in page
    capsys.readouterr()
    assert main(["report", "NO-SUCH", "-c", cfg, "--json"]) == 1
    answer = json.loads(capsys.readouterr().out)  # under --json the error is a JSON object on stdout
    assert answer["exit_code"] == 1 and "no shipment 'NO-SUCH'" in answer["error"]


def test_export_is_reverified_with_the_plain_python_of_its_readme(trip: dict[str, Any], tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "export"
    assert main(["export", SHIPMENT, "-c", str(trip["config"]), "--out", str(out), "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert set(manifest["files"]) == {"records.jsonl", "chain.jsonl", "hashes.txt", "report.json", "report.pdf",
                                      "README.txt"}
    readme = (out / "README.txt").read_text()
    snippet = "\n".join(line[4:] for line in readme.split("standard library only)", 1)[1].splitlines()
                        if line.startswith("    "))
    assert snippet.startswith("import hashlib, json")
    code = snippet.replace('open("records.jsonl", "rb")', f'open({str(out / "records.jsonl")!r}, "rb")')
    result = subprocess.run(["python3", "-c", code], capture_output=True, text=True, check=True).stdout
    a, b = trip["gap"]
    assert f"gap before seq {b + 1}" in result and "chain break" not in result
    assert f"head {manifest['head_hash']} expected {manifest['head_hash']}" in result
    for line, h in zip((out / "records.jsonl").read_bytes().splitlines(), (out / "hashes.txt").read_text().split("\n"),
                       strict=False):
        rec = json.loads(line)
        assert hashlib.sha256(rec["prev_hash"].encode() + line).hexdigest() == h.split()[1]
    # one value changed in the export: the same few lines of Python find it
    lines = (out / "records.jsonl").read_bytes().splitlines(keepends=True)
    i = next(n for n, x in enumerate(lines) if b'"value":9.5' in x)
    lines[i] = lines[i].replace(b'"value":9.5', b'"value":7.5')
    (out / "records.jsonl").write_bytes(b"".join(lines))
    result = subprocess.run(["python3", "-c", code], capture_output=True, text=True, check=True).stdout
    assert "chain break at seq" in result


def test_a_shipment_in_progress_is_reported_so_far(tmp_path: Path) -> None:
    t = build_trip(tmp_path / "s.db", hours=2, stop=False, ack=False, handover=False)
    sel = from_store(t.store, SHIPMENT)
    model = build(sel, source=source_of_store(t.store), generated_at=FIXED)
    t.store.close()
    assert sel.stopped is None and model["shipment"]["stopped_at"] is None
    assert any("has not been stopped" in r for r in model["verdict"]["reasons"])
    assert model["integrity"]["verdict"] == "complete-and-verified"
    assert "<h1>Trip report SHP-TRIP-1</h1>" in render_html(model)


# -- each field of the header, summary, alarm table and standards, computed from the trip ---------------------


def _flat_pdf(model: dict[str, Any], tmp_path: Path) -> str:
    pdf = tmp_path / "r.pdf"
    render_pdf(model, str(pdf))
    return " ".join(_pdf_text(pdf).split())


def _readings(recs: list[dict[str, Any]], sid: str) -> list[tuple[float, float]]:
    """``(t, value)`` of the sensor's readings in the store, oldest first."""
    return sorted((parse_rfc3339(r["ts"]), float(r["value"])) for r in recs
                  if r.get("type") == "reading" and r.get("sensor_id") == sid)


def _spans(pts: list[tuple[float, float]], end: float) -> list[tuple[float, float]]:
    """``(seconds held, value)`` of each reading: a value holds until the next one (or the end)."""
    return [((pts[i + 1][0] if i + 1 < len(pts) else end) - t, v) for i, (t, v) in enumerate(pts)]


def _stopped_at(recs: list[dict[str, Any]]) -> float:
    return parse_rfc3339(next(r for r in recs if r.get("event") == "shipment_stopped")["ts"])


def test_pdf_header_gives_each_leg_its_start_end_and_duration_from_the_leg_events(
        trip: dict[str, Any], tmp_path: Path) -> None:
    flat = _flat_pdf(_gateway_model(trip), tmp_path)
    recs = trip["records"]
    legs = [r for r in recs if r.get("event") == "shipment_leg"]
    stopped = next(r for r in recs if r.get("event") == "shipment_stopped")
    assert [leg["ts"] for leg in legs] == [rfc3339(T0), rfc3339(T0 + H), rfc3339(T0 + 11 * H)]  # as the trip ran
    for leg, end in zip(legs, [x["ts"] for x in legs[1:]] + [stopped["ts"]], strict=True):
        d = leg["details"]
        took = parse_rfc3339(end) - parse_rfc3339(leg["ts"])
        row = (f"{d['index']} {d['leg']} {d['kind']} {d['mode']} {short(leg['ts'])} {short(end)} {dur(took)} "
               f"{', '.join(d['alarms']['mute']) or '-'}")
        assert row in flat, row


def test_pdf_header_lists_each_sensors_limits_as_its_profile_sets_them(trip: dict[str, Any], tmp_path: Path) -> None:
    from agent.rules.config import RulesConfig

    flat = _flat_pdf(_gateway_model(trip), tmp_path)
    rules = {n: r.model_dump(mode="json") for n, r in RulesConfig().profile("2-8C").active_rules().items()}
    keys = ("limit", "above", "below", "low", "high", "delay_s", "budget_s", "window_s", "hysteresis", "severity")
    want = {n: {"type": r["type"], **{k: r[k] for k in keys if r.get(k) is not None}} for n, r in rules.items()
            if r["type"] in ("above", "below", "budget", "mkt")}
    assert {"high", "low", "pre_high", "time_out_of_range", "mkt"} <= set(want)

    def value(v: str) -> Any:
        try:
            return float(v)
        except ValueError:
            return v

    for sid in ("p1", "p2"):
        found = re.search(rf"{sid} limits \(2-8C\): (.*?)(?= p\d limits \(| Summary per sensor)", flat)
        assert found, sid
        shown = {}
        for part in found.group(1).split("; "):
            name, rest = part.split(": ", 1)
            typ, *kv = rest.split(" ")
            shown[name] = {"type": typ, **{kv[i]: value(kv[i + 1]) for i in range(0, len(kv), 2)}}
        assert shown == {n: {k: value(str(v)) for k, v in r.items()} for n, r in want.items()}, sid


def test_pdf_summary_gives_each_sensors_time_weighted_mean_elapsed_time_and_time_in_each_zone(
        trip: dict[str, Any], tmp_path: Path) -> None:
    """From the readings in the store: a value holds until the next reading; the zones lie
    between the profile's temperature bounds (2, 7.5, 8 °C; a value on a bound is above it)."""
    flat = _flat_pdf(_gateway_model(trip), tmp_path)
    recs = trip["records"]
    end = _stopped_at(recs)
    zones = (("< 2", -math.inf, 2.0), ("2 .. < 7.5", 2.0, 7.5), ("7.5 .. < 8", 7.5, 8.0), (">= 8", 8.0, math.inf))
    for sid in ("p1", "p2"):
        pts = _readings(recs, sid)
        spans = _spans(pts, end)
        mean = sum(s * v for s, v in spans) / sum(s for s, _ in spans)
        elapsed = pts[-1][0] - pts[0][0]
        in_zone = [(label, sum(s for s, v in spans if lo <= v < hi)) for label, lo, hi in zones]
        zone_text = "; ".join(f"{label}: {dur(t)}" for label, t in in_zone if t)
        row = f"{num(mean)} {len(pts)} {dur(elapsed)} {zone_text}"
        assert re.search(rf"{sid} temperature \(Cel\) \S+ \S+ \S+ \S+ \S+ \S+ {re.escape(row)}", flat), (sid, row)
    # the excursions are where the trip put them: p1 40 min at or above 8 °C, p2 30 min below 2 °C
    assert ">= 8: 40 min 00 s" in flat and "< 2: 30 min 00 s" in flat


def test_pdf_alarm_table_gives_the_cumulative_rule_its_budget_time_out_excursions_and_status(
        trip: dict[str, Any], tmp_path: Path) -> None:
    """``time_out_of_range`` (2-8C: 1 h at or beyond 8 °C or 2 °C, in total): the time out
    summed from the readings, each excursion, and OK where no alarm of it was recorded."""
    from agent.rules.config import RulesConfig

    flat = _flat_pdf(_gateway_model(trip), tmp_path)
    recs = trip["records"]
    end = _stopped_at(recs)
    rule = RulesConfig().profile("2-8C").active_rules()["time_out_of_range"].model_dump(mode="json")
    above, below, budget = rule["above"], rule["below"], rule["budget_s"]
    for sid in ("p1", "p2"):
        pts = _readings(recs, sid)
        time_out = sum(s for s, v in _spans(pts, end) if v >= above or v <= below)
        runs: list[tuple[int, int]] = []  # (first, last) index of consecutive readings out of range
        for i, (_, v) in enumerate(pts):
            if v >= above or v <= below:
                if runs and runs[-1][1] == i - 1:
                    runs[-1] = (runs[-1][0], i)
                else:
                    runs.append((i, i))
        raised = [r for r in recs if r.get("type") == "alarm" and r.get("sensor_id") == sid
                  and r.get("rule") == "time_out_of_range" and r["state"] == "raised"]
        status = "ALARM" if raised else "OK"
        assert time_out < budget and status == "OK"  # the trip spends 40 and 30 min of the hour
        row = (f"{sid} time_out_of_range cumulative above {above:g} below {below:g} {dur(budget)} {dur(time_out)} "
               f"{len(runs)} {status} -")
        assert row in flat, row
        for n, (first, last) in enumerate(runs, 1):
            begin, back = pts[first][0], pts[last + 1][0]  # back: the first reading in range again
            peak = max((v for _, v in pts[first:last + 1]), key=lambda v: abs(v - (above if v >= above else below)))
            line = (f"{sid} time_out_of_range {n} {short(rfc3339(begin))} {short(rfc3339(back))} {dur(back - begin)} "
                    f"{num(peak)}")
            assert line in flat, line


FREEZES = ((6 * H, 6 * H + 1200), (8 * H, 8 * H + 1200))  # p2 below 0 °C twice for 20 min


def _freezing(sid: str, t: float) -> float:
    if sid == "p2" and any(a <= t < b for a, b in FREEZES):
        return -1.0
    return temperature(sid, t)


@pytest.mark.parametrize("max_cycles", [1, None])
def test_pdf_counts_the_freeze_thaw_cycles_the_readings_show_against_the_cycles_allowed(
        tmp_path: Path, max_cycles: int | None) -> None:
    ft = {"freeze_at": 0.0, "thaw_at": 2.0, "max_cycles": max_cycles}
    t = build_trip(tmp_path / "s.db", value=_freezing, ack=False, spec_extra={"freeze_thaw": ft})
    model = build(from_store(t.store, SHIPMENT), source=source_of_store(t.store), generated_at=FIXED)
    recs = t.store.records()
    t.store.close()
    flat = _flat_pdf(model, tmp_path)
    armed = T0 + 600  # cycles count once the ignore period is over
    cycles = {}
    for sid in ("p1", "p2"):
        frozen, n = False, 0
        for ts, v in _readings(recs, sid):
            if v <= ft["freeze_at"]:
                frozen = True
            elif v >= ft["thaw_at"] and frozen:
                frozen, n = False, n + (ts >= armed)
        cycles[sid] = n
    assert cycles == {"p1": 0, "p2": 2}
    allowed = "no limit set" if max_cycles is None else f"{max_cycles}"
    line = (f"Freeze-thaw cycles (frozen <= 0 Cel, thawed >= 2 Cel): p1 {cycles['p1']}, p2 {cycles['p2']}; "
            f"allowed {allowed}.")
    assert line in flat
    assert line in html.unescape(render_html(model)), "the HTML report says it too"
    reason = f"{max(cycles.values())} freeze-thaw cycle(s)" + (f", more than the {max_cycles} allowed"
                                                                if max_cycles is not None else "")
    assert reason in model["verdict"]["reasons"] and reason in flat


def test_pdf_marks_a_recording_interval_too_long_for_en12830_and_says_why(tmp_path: Path) -> None:
    """A 12 h trip recorded every 10 min: EN 12830 allows 5 min for trips under 24 h."""
    t = build_trip(tmp_path / "s.db", interval_s=600.0, ack=False)
    model = build(from_store(t.store, SHIPMENT), source=source_of_store(t.store), generated_at=FIXED)
    recs = t.store.records()
    t.store.close()
    flat = _flat_pdf(model, tmp_path)
    started = next(r for r in recs if r.get("event") == "shipment_started")["details"]
    assert started["planned_duration_s"] == 12 * H
    allowed = 300.0  # EN 12830: 5 min for a trip shorter than 24 h
    used = {}
    for sid in ("p1", "p2"):
        pts = _readings(recs, sid)
        used[sid] = statistics.median(b[0] - a[0] for a, b in zip(pts, pts[1:], strict=False))
    assert used == {"p1": 600.0, "p2": 600.0}
    line = (f"EN 12830 (transport recorders): a trip of {dur(12 * H)} allows a recording interval of at most "
            f"{dur(allowed)}. p1 {used['p1']:.0f} s TOO LONG; p2 {used['p2']:.0f} s TOO LONG")
    assert line in flat
    assert line in html.unescape(render_html(model)), "the HTML report says it too"
    for sid in ("p1", "p2"):
        reason = f"{sid}: recorded every {used[sid]:g} s, EN 12830 allows {allowed:g} s for this trip"
        assert reason in model["verdict"]["reasons"] and reason in flat
    # the warning given at start, in the stream
    assert [w.split(":")[0] for w in started["en12830"]["warnings"]] == ["p1", "p2"]
