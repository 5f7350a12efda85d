"""The trip report of a replayed trip: PDF text field by field against the store, the PDF
rendered to an image, gateway and receiver agreeing, the CLI, the export re-verified."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
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
from tests.report.trip import GATEWAY, T0, H, make_gap
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
