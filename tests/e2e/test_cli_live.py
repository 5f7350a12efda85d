"""The diagnostics CLI against a running agent, as a technician would use it."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.harness import AgentProcess, ReceiverProcess, wait_until, write_config
from tests.e2e.harness import cli as coldgate

pytestmark = pytest.mark.slow



@pytest.fixture
def running(tmp_path: Path):
    receiver = ReceiverProcess(tmp_path / "receiver.db").start()
    cfg = write_config(tmp_path, receiver.url, sim="speed = 20")
    agent = AgentProcess(cfg).start()
    yield agent, receiver, cfg
    agent.stop()
    receiver.stop()


def test_status_text_shows_the_running_agent_its_driver_sensors_store_and_uplink(running) -> None:
    agent, receiver, cfg = running
    wait_until(lambda: (s := agent.status()).get("sensors", {}).get("p2") and s["sync"].get("last_success_at"),
               30, "a status with sensors and a good sync")
    out = coldgate("status", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "running (pid" in text and "driver sim (sim): running" in text
    assert "sensor p1:" in text and " °C" in text and "Cel" not in text  # units as people write them
    assert "in memory:" in text and "of 512 MiB" in text
    assert (f"uplink: {receiver.url}: ok" in text or f"uplink: {receiver.url}: idle" in text)
    assert "last success 20" in text and "clock: synchronised" in text  # a date, not epoch seconds


def test_readings_csv_export_replays_through_a_rule_profile(running, tmp_path: Path) -> None:
    agent, _, cfg = running
    wait_until(lambda: agent.head() > 200, 30, "readings")
    out = coldgate("readings", "--config", str(cfg), "--csv", "--sensor", "p1", "-n", "50")
    assert out.returncode == 0, out.stderr
    rows = list(csv.reader(io.StringIO(out.stdout)))
    assert rows[0] == ["ts", "sensor_id", "quantity", "value", "unit"] and len(rows) == 51
    assert {r[1] for r in rows[1:]} == {"p1"}
    trip = tmp_path / "trip.csv"
    trip.write_text(out.stdout)
    replay = coldgate("rules", "replay", "--profile", "2-8C", "--csv", str(trip), "--json")
    assert replay.returncode == 0, replay.stderr
    assert "p1" in json.loads(replay.stdout)["mkt"]


def test_readings_follow_prints_new_readings_as_they_are_stored(running) -> None:
    agent, _, cfg = running
    proc = subprocess.Popen([sys.executable, "-m", "agent", "readings", "--config", str(cfg), "-n", "1", "-f",
                             "--json"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        seqs = [json.loads(proc.stdout.readline())["seq"] for _ in range(30)]
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
    assert seqs == sorted(seqs) and len(set(seqs)) == 30


def test_sync_now_goes_through_the_running_agent_and_reports_its_answer(running) -> None:
    agent, receiver, cfg = running
    wait_until(lambda: agent.status().get("sync", {}).get("last_success_at"), 30, "a first sync")
    out = coldgate("sync", "--now", "--config", str(cfg), "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    data = json.loads(out.stdout)
    # readings go out as they are committed: a pass now finds little or nothing left
    assert data["via"] == "the running agent" and data["result"] in ("ok", "idle")
    assert isinstance(data["pending"], int) and data["last_error"] is None
