"""What ``coldgate demo`` says of the trip report when it stops: where it is, or plainly
that it could not be written and why. The real ``coldgate report`` runs on a real store."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli.demo_cmd import _report, _say_report
from tests.report.trip import GATEWAY
from tests.report.trip import build as build_trip


@pytest.fixture()
def config(tmp_path: Path) -> Path:
    build_trip(tmp_path / "store.db", hours=2, ack=False, handover=False).store.close()
    cfg = tmp_path / "demo.toml"
    cfg.write_text(f'gateway_id = "{GATEWAY}"\n[store]\npath = "{tmp_path / "store.db"}"\n')
    return cfg


def test_demo_names_the_trip_report_files_it_wrote(config: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    written, failed = _report(config, "SHP-TRIP-1", tmp_path)
    html, pdf = tmp_path / "SHP-TRIP-1.html", tmp_path / "SHP-TRIP-1.pdf"  # the test extra has coldgate[report]
    assert written == [str(html), str(pdf)] and failed == []
    assert "SHP-TRIP-1" in html.read_text() and pdf.read_bytes().startswith(b"%PDF")
    _say_report("SHP-TRIP-1", written, failed)
    out = capsys.readouterr()
    assert out.out == f"trip report of SHP-TRIP-1: {html} and {pdf}\n" and out.err == ""


def test_demo_says_a_trip_report_that_failed_was_not_written_and_why(config: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """``coldgate report`` exits 1 (no such shipment in the store): nothing is claimed written."""
    written, failed = _report(config, "SHP-NEVER", tmp_path)
    assert written == [] and not list(tmp_path.glob("SHP-NEVER.*"))
    assert [f.split(":")[0] for f in failed] == [f"HTML {tmp_path / 'SHP-NEVER.html'}",
                                                 f"PDF {tmp_path / 'SHP-NEVER.pdf'}"]
    assert all("no shipment 'SHP-NEVER'" in f for f in failed), failed
    _say_report("SHP-NEVER", written, failed)
    out = capsys.readouterr()
    assert out.out == ""  # no "trip report of SHP-NEVER: …" line
    lines = out.err.splitlines()
    assert len(lines) == 2 and all(line.startswith("coldgate demo: the trip report of SHP-NEVER could not be "
                                                   "written: ") for line in lines)
    assert "SHP-NEVER.html: no shipment 'SHP-NEVER'" in lines[0]
