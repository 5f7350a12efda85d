"""The CLI's contract: ``--json`` errors as one JSON object, a closed pipe is a quiet exit,
``config schema`` spells out every driver's options, and ``coldgate events``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
from freezegun import freeze_time

from agent.cli import main
from agent.cli.events_cmd import since
from agent.config import json_schema
from agent.store import Store
from agent.timebase import Clock
from drivers import registry

ROOT = Path(__file__).resolve().parents[2]
COLDGATE = Path(sys.executable).with_name("coldgate")


def make_store(tmp_path: Path, items: list[dict] | None = None) -> Path:
    db = tmp_path / "store.db"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'gateway_id = "gw-t"\n[store]\npath = "{db}"\n')
    with Store.open(db, gateway_id="gw-t", clock=Clock("assume_synced")) as store:
        if items:
            store.append(items)
    return cfg


def reading(i: int) -> dict:
    return {"type": "reading", "ts": 1_790_000_000.0 + i, "time_quality": "synced", "sensor_id": "probe-1",
            "quantity": "temperature", "value": 4.0 + (i % 10) / 10, "unit": "Cel"}


def event(name: str, ts: float, tq: str = "synced", **details: object) -> dict:
    return {"type": "event", "event": name, "ts": ts, "time_quality": tq, "details": details}


# -- errors under --json ------------------------------------------------------------------


def test_an_error_under_json_is_one_json_object_on_stdout_with_the_exit_code(tmp_path, capsys):
    assert main(["readings", "--config", str(tmp_path / "absent.toml"), "--json"]) == 1
    out, err = capsys.readouterr()
    answer = json.loads(out)
    assert answer["exit_code"] == 1 and answer["error_type"] == "ConfigError" and err == ""
    assert answer["problems"][0]["message"].startswith("cannot read")

    cfg = tmp_path / "c.toml"
    cfg.write_text(f'gateway_id = "g"\n[store]\npath = "{tmp_path / "none.db"}"\n')
    assert main(["events", "--config", str(cfg), "--json"]) == 1
    answer = json.loads(capsys.readouterr().out)
    assert answer == {"error": answer["error"], "error_type": "StoreError", "exit_code": 1}
    assert "no store at" in answer["error"]


def test_a_usage_error_under_json_is_json_too_and_text_otherwise(capsys):
    assert main(["readings", "--limit", "many", "--json"]) == 2
    answer = json.loads(capsys.readouterr().out)
    assert answer["exit_code"] == 2 and "invalid int value" in answer["error"]
    assert main(["readings", "--limit", "many"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "usage: coldgate readings" in err and "invalid int value" in err


def test_without_json_an_error_is_one_line_on_stderr(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'gateway_id = "g"\n[store]\npath = "{tmp_path / "none.db"}"\n')
    assert main(["events", "--config", str(cfg)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("coldgate: no store at")


# -- a closed pipe --------------------------------------------------------------------------


def test_a_closed_pipe_ends_the_command_quietly(tmp_path):
    """``coldgate readings | head -1``: before, BrokenPipeError fell into the OSError branch."""
    cfg = make_store(tmp_path, [reading(i) for i in range(20_000)])  # far beyond a pipe's buffer
    proc = subprocess.Popen([str(COLDGATE), "readings", "-n", "0", "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # head -1 is done
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 141
    assert b"probe-1" in first and err == b""


def test_a_pipe_closed_before_anything_is_written_fails_no_flush_at_exit(tmp_path):
    """Output held in the buffer is flushed at exit; a reader already gone must not make
    the interpreter print 'Exception ignored … BrokenPipeError'."""
    cfg = make_store(tmp_path, [reading(i) for i in range(3)])
    read, write = os.pipe()
    os.close(read)  # nobody will ever read
    proc = subprocess.run([str(COLDGATE), "readings", "--config", str(cfg)], stdout=write,
                          stderr=subprocess.PIPE, timeout=60)
    os.close(write)
    assert proc.returncode == 141 and proc.stderr == b""


# -- config schema --------------------------------------------------------------------------


def test_config_schema_takes_json_and_spells_out_every_driver_s_options(capsys):
    assert main(["config", "schema", "--json"]) == 0
    schema = json.loads(capsys.readouterr().out)
    items = schema["properties"]["drivers"]["items"]
    assert set(items["discriminator"]["mapping"]) == set(registry.names())
    for ref in items["discriminator"]["mapping"].values():
        member = schema["$defs"][ref.rsplit("/", 1)[1]]
        assert member["additionalProperties"] is False
        assert {"name", "type", "enabled"} <= set(member["properties"])
    ble = schema["$defs"]["BleDriverConfig"]["properties"]
    assert "sensors" in ble and "missing_after_s" in ble


@pytest.mark.parametrize("path", sorted((ROOT / "config").glob("*.toml")), ids=lambda p: p.name)
def test_the_schema_accepts_every_example_config(path):
    jsonschema.validate(tomllib.loads(path.read_text()), json_schema())


def test_the_schema_refuses_a_misspelt_driver_option():
    data = tomllib.loads((ROOT / "config" / "demo.toml").read_text())
    sim = next(d for d in data["drivers"] if d["type"] == "sim")
    sim["sped"] = 2.0
    with pytest.raises(jsonschema.ValidationError, match="sped"):
        jsonschema.validate(data, json_schema())


# -- coldgate events -----------------------------------------------------------------------


T = 1_790_000_000.0  # 2026-09-21T14:13:20Z


@pytest.fixture
def events_store(tmp_path):
    return make_store(tmp_path, [
        event("driver_error", T, driver="gps", type="nmea", error="DriverIOError",
              message="/dev/ttyUSB0: device disconnected", phase="read"),
        reading(1),
        event("clock_step", T + 60, offset_s=-2.5, synced=True),
        event("driver_recovered", T + 120, driver="gps", type="nmea", retries=4, duration_s=120.0,
              failing_since="2026-09-21T14:13:20.000Z", last_error="DriverUnavailable: no such device"),
        event("data_loss", T + 180, tq="unsynced", reason="store_full", what="readings", count=12,
              sensors={"probe-1": 12}, **{"from": "2026-09-21T14:15:00.000Z", "to": "2026-09-21T14:16:20.000Z"}),
        event("batch_set_aside", T + 240, first_seq=2, last_seq=5, count=4, status=422, reason="bad unit"),
    ])


def test_events_lists_what_happened_with_dates_in_words(events_store, capsys):
    assert main(["events", "--config", str(events_store)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[3] == "stream_started"
    assert lines[1].startswith("2026-09-21T14:13:20.000Z  seq 2 ")
    assert "driver_error" in lines[1] and "gps (nmea): DriverIOError: /dev/ttyUSB0: device disconnected" in lines[1]
    assert "the system clock stepped by -2.5 s" in lines[2]
    assert "gps (nmea): recovered after 4 retries in 2.0 min; last error: DriverUnavailable" in lines[3]
    assert "store_full: 12 readings lost" in lines[4] and lines[4].endswith("[unsynced]")
    assert "seq 2-5 (4 records) kept locally, server answered 422: bad unit" in lines[5]
    assert not any(str(int(T)) in line for line in lines)  # never epoch seconds


def test_events_filters_by_type_since_and_count(events_store, capsys):
    assert main(["events", "--config", str(events_store), "--type", "driver_error,driver_recovered",
                 "--json"]) == 0
    assert [e["event"] for e in json.loads(capsys.readouterr().out)] == ["driver_error", "driver_recovered"]
    assert main(["events", "--config", str(events_store), "--type", "data_loss", "--type", "clock_step",
                 "--json"]) == 0
    assert [e["event"] for e in json.loads(capsys.readouterr().out)] == ["clock_step", "data_loss"]
    assert main(["events", "--config", str(events_store), "--since", "2026-09-21T14:16:20Z", "--json"]) == 0
    got = [e["event"] for e in json.loads(capsys.readouterr().out) if e["event"] != "stream_started"]
    assert got == ["data_loss", "batch_set_aside"]
    assert main(["events", "--config", str(events_store), "-n", "2", "--json"]) == 0
    assert [e["event"] for e in json.loads(capsys.readouterr().out)] == ["data_loss", "batch_set_aside"]
    assert main(["events", "--config", str(events_store), "--type", "nothing_like_it"]) == 0
    assert capsys.readouterr().out.strip() == "no events of type nothing_like_it"


@freeze_time("2026-09-21T16:00:00Z")
def test_since_takes_a_duration_before_now_or_an_rfc3339_time():
    now = 1_790_006_400.0  # 2026-09-21T16:00:00Z
    assert since("2h") == now - 7200
    assert since("1d12h") == now - 36 * 3600
    assert since("90s") == now - 90
    assert since("2026-09-21T14:00:00Z") == now - 7200
    assert since("2026-09-21T16:00:00+02:00") == now - 7200


@pytest.mark.parametrize("bad", ["yesterday", "2h30", "2026-09-21T14:00:00", "-2h"])
def test_a_since_that_is_neither_is_a_usage_error(bad, capsys):
    assert main(["events", f"--since={bad}"]) == 2
    err = capsys.readouterr().err
    assert "--since" in err and ("time zone" in err or "neither" in err)
