"""The README's first command: `coldgate demo`, stopped by time and by Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.harness import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def demo_config(tmp_path: Path) -> Path:
    """config/demo.toml as shipped, on a free port and with its data in tmp_path."""
    text = (ROOT / "config" / "demo.toml").read_text()
    assert 'url = "http://127.0.0.1:8765"' in text and 'path = "../demo-data/store.db"' in text
    cfg = tmp_path / "conf" / "demo.toml"
    cfg.parent.mkdir()
    cfg.write_text(text.replace("8765", str(free_port())).replace("../demo-data/", "../data/"))
    return cfg


def test_demo_shows_data_flowing_and_ends_with_a_verified_receiver_report(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "agent", "demo", "--config", str(demo_config(tmp_path)),
                          "--seconds", "8", "--every", "2"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    progress = [line for line in out.stdout.splitlines() if line.startswith("[")]
    assert len(progress) >= 3 and "probe-3" in progress[-1] and "complete-and-verified" in progress[-1]
    assert "gateway demo-gw-01: complete-and-verified" in out.stdout
    assert (tmp_path / "data" / "store.db").exists() and (tmp_path / "data" / "receiver.db").exists()
    # the demo runs a shipment, with the simulated excursion inside it, and says where its report is
    started = [line for line in out.stdout.splitlines() if line.startswith("shipment SHP-DEMO-")]
    sid = started[0].split()[1]
    report_line = next(line for line in out.stdout.splitlines() if line.startswith(f"trip report of {sid}"))
    html = tmp_path / "data" / f"{sid}.html"
    assert str(html) in report_line and html.exists() and "probe-3" in html.read_text()
    pdf = tmp_path / "data" / f"{sid}.pdf"
    assert str(pdf) in report_line and pdf.read_bytes().startswith(b"%PDF")  # the test extra has coldgate[report]


def test_ctrl_c_stops_the_demo_and_both_processes_cleanly(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "agent", "demo", "--config", str(demo_config(tmp_path)),
                             "--every", "1"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:  # wait until data flows, then press Ctrl-C
        seen.append(line)
        if line.startswith("[") and "complete-and-verified" in line:
            break
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130  # interrupted, as the README says, "".join(seen) + rest
    assert "stopping" in rest and "complete-and-verified" in rest
    log = (tmp_path / "data" / "demo.log").read_text()
    assert "stopping: committing what is held" in log  # the agent shut down, not killed


def test_a_demo_whose_port_is_taken_says_so_and_starts_nothing(tmp_path: Path) -> None:
    import re
    import socket

    cfg = demo_config(tmp_path)
    port = int(re.search(r'url = "http://127\.0\.0\.1:(\d+)"', cfg.read_text()).group(1))  # type: ignore[union-attr]
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        out = subprocess.run([sys.executable, "-m", "agent", "demo", "--config", str(cfg), "--seconds", "5"],
                             capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert f"127.0.0.1:{port} is already in use" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "data" / "store.db").exists(), "no agent was started"


def test_sigterm_to_the_demo_stops_both_processes_cleanly_and_json_progress_is_one_object_a_line(
        tmp_path: Path) -> None:
    import json

    proc = subprocess.Popen([sys.executable, "-m", "agent", "demo", "--config", str(demo_config(tmp_path)),
                             "--every", "1", "--json"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    progress = []
    for line in proc.stdout:
        progress.append(json.loads(line))  # every line is one JSON object
        if len(progress) >= 2:
            break
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, rest  # stopped as by Ctrl-C
    final = [json.loads(x) for x in rest.splitlines() if x.strip()]
    assert final and "receiver" in final[-1] and "trip_report" in final[-1]
    log = (tmp_path / "data" / "demo.log").read_text()
    assert "stopping: committing what is held" in log  # the agent shut down, not killed
    assert final[-1]["receiver"]["gateways"]["demo-gw-01"]["verdict"] == "complete-and-verified"


def test_the_demos_shipment_holds_probe_3s_excursion_and_its_trip_report_shows_the_alarm(tmp_path: Path) -> None:
    import json

    cfg = demo_config(tmp_path)
    text = cfg.read_text()
    shipped = "{ at_s = 60, duration_s = 120, to = 11.0, ramp_s = 20 }"
    assert shipped in text
    # the shipped excursion, sooner (60 s in as shipped): it starts once the shipment judges
    cfg.write_text(text.replace(shipped, "{ at_s = 15, duration_s = 50, to = 11.0, ramp_s = 5 }"))
    out = subprocess.run([sys.executable, "-m", "agent", "demo", "--config", str(cfg), "--seconds", "75",
                          "--every", "5", "--json"], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    final = json.loads(out.stdout.splitlines()[-1])
    assert final["receiver"]["gateways"]["demo-gw-01"]["verdict"] == "complete-and-verified"
    sid = final["shipment"]
    report = subprocess.run([sys.executable, "-m", "agent", "report", sid, "--config", str(cfg), "--json"],
                            capture_output=True, text=True, timeout=120)
    model = json.loads(report.stdout)
    high = [a for a in model["alarms"] if a["sensor_id"] == "probe-3" and a["rule"] == "high"]
    assert high and high[0]["alarm_ids"] and high[0]["excursions"], model["alarms"]
    assert model["verdict"]["status"] != "OK"
    assert any(str(tmp_path / "data" / f"{sid}.html") == f for f in final["trip_report"])
