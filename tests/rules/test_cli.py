"""``coldgate rules replay|profiles`` and ``coldgate alarms [ack]``, through the real CLI and store."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import main
from agent.rules.config import RulesConfig
from agent.rules.engine import RuleEngine, Sample
from agent.rules.replay import format_ts
from tests.rules.helpers import T0

ROOT = Path(__file__).resolve().parents[2]
COLDGATE = Path(sys.executable).with_name("coldgate")


def write_trip(path: Path) -> None:
    """A 4 h trip sampled every minute: one excursion to 9.6 °C from minute 60 to minute 100."""
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["ts", "sensor_id", "quantity", "value", "unit"])
        for k in range(240):
            v = 9.6 if 60 <= k < 100 else 5.0
            w.writerow([format_ts(T0 + 60.0 * k), "probe-1", "temperature", v, "Cel"])
            w.writerow([format_ts(T0 + 60.0 * k), "probe-1", "humidity", 45.0, "%RH"])


def test_replay_reports_the_excursion_with_its_start_and_duration(tmp_path, capsys):
    trip = tmp_path / "trip.csv"
    write_trip(trip)
    assert main(["rules", "replay", "--profile", "2-8C", "--csv", str(trip), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    high = [a for a in report["alarms"] if a["rule"] == "high"]
    assert len(high) == 1
    assert high[0]["started_at"] == format_ts(T0 + 3600)
    assert high[0]["raised_at"] == format_ts(T0 + 3600 + 900)  # the 15 min delay of the preset
    assert high[0]["cleared_at"] == format_ts(T0 + 6000)
    assert high[0]["duration_s"] == 2400.0
    assert {a["rule"] for a in report["alarms"]} >= {"pre_high", "high", "trend"}
    assert "time_out_of_range" not in {a["rule"] for a in report["alarms"]}  # 40 min < 60 min budget
    assert report["samples"] == 480
    assert 5.0 < report["mkt"]["probe-1"]["mkt"] < 9.6


def test_replay_text_output_and_a_config_profile(tmp_path, capsys):
    trip = tmp_path / "trip.csv"
    write_trip(trip)
    cfg = tmp_path / "c.toml"
    cfg.write_text('gateway_id = "g"\n[rules.profiles.strict]\nextends = "2-8C"\n'
                   '[rules.profiles.strict.rules.time_out_of_range]\nbudget_s = 1800.0\n')
    assert main(["rules", "replay", "--profile", "strict", "--csv", str(trip), "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "probe-1 time_out_of_range: started 2026-11-18T" in out
    assert "duration 40m00s" in out and "MKT probe-1:" in out


def test_replay_refuses_an_unknown_profile_and_a_bad_csv_in_one_line(tmp_path, capsys):
    trip = tmp_path / "trip.csv"
    write_trip(trip)
    assert main(["rules", "replay", "--profile", "2-8", "--csv", str(trip)]) == 1
    assert "unknown rule profile '2-8'" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("ts,sensor_id,quantity,value,unit\nyesterday,p,temperature,5,Cel\n")
    assert main(["rules", "replay", "--profile", "2-8C", "--csv", str(bad)]) == 1
    assert "line 2" in capsys.readouterr().err


def test_replay_runs_as_a_real_process(tmp_path):
    trip = tmp_path / "trip.csv"
    write_trip(trip)
    proc = subprocess.run([str(COLDGATE), "rules", "replay", "--profile", "2-8C", "--csv", str(trip), "--json"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={**os.environ, "COLDGATE_CONFIG": str(tmp_path / "absent.toml")})
    assert proc.returncode == 1  # an explicitly named config that does not exist is an error
    proc = subprocess.run([str(COLDGATE), "rules", "replay", "--profile", "2-8C", "--csv", str(trip), "--json"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={k: v for k, v in os.environ.items() if k != "COLDGATE_CONFIG"})
    assert proc.returncode == 0, proc.stderr
    high = [a for a in json.loads(proc.stdout)["alarms"] if a["rule"] == "high"]
    assert (high[0]["started_at"], high[0]["duration_s"]) == (format_ts(T0 + 3600), 2400.0)


def test_profiles_lists_presets_and_config_profiles(tmp_path, capsys):
    cfg = ROOT / "config" / "rules-example.toml"
    assert main(["rules", "profiles", "--config", str(cfg), "--json"]) == 0
    data = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert {"2-8C", "crt", "ln2", "vaccines", "handling"} <= set(data)
    assert data["vaccines"]["extends"] == "2-8C" and data["vaccines"]["source"] == "config"
    assert data["vaccines"]["rules"]["high"]["delay_s"] == 600.0
    assert main(["rules", "profiles", "--config", str(cfg)]) == 0
    assert "vaccines     config (extends 2-8C)" in capsys.readouterr().out


@pytest.fixture
def store_with_alarm(tmp_path):
    """A config and a store holding one raised, latching alarm and the engine state behind it."""
    from agent.store import Store

    db = tmp_path / "store.db"
    cfg = tmp_path / "c.toml"
    # the control socket of no agent (the default one may be another agent's on a shared machine)
    cfg.write_text(f'gateway_id = "gw-t"\n[store]\npath = "{db}"\n[time]\nsync_source = "assume_synced"\n'
                   '[[sensors]]\nid = "s"\nprofile = "h"\n'
                   '[rules.profiles.h.rules.high]\ntype = "above"\nlimit = 8.0\nlatching = true\n'
                   f'[control]\nsocket = "{tmp_path / "none.sock"}"\n')
    rules = RulesConfig(profiles={"h": {"rules": {"high": {"type": "above", "limit": 8.0, "latching": True}}}})
    e = RuleEngine(rules, {"s": "h"})
    changes = e.observe(Sample("s", "temperature", 9.0, "Cel", T0)) + \
        e.observe(Sample("s", "temperature", 5.0, "Cel", T0 + 60))
    with Store.open(db, gateway_id="gw-t") as store:
        store.append([{"type": "alarm", "time_quality": "synced", **c} for c in changes],
                     state={"rules": e.snapshot()})
    return cfg, db


def test_alarms_lists_active_and_recent(store_with_alarm, capsys):
    cfg, _ = store_with_alarm
    assert main(["alarms", "--config", str(cfg), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [a["alarm_id"] for a in data["active"]] == ["s:high:1"]
    assert data["active"][0]["started_at"] == format_ts(T0)
    assert [r["state"] for r in data["recent"]] == ["raised"]
    assert main(["alarms", "--config", str(cfg)]) == 0
    assert "s:high:1" in capsys.readouterr().out


def test_ack_without_a_daemon_appends_the_audit_record_with_the_new_state(store_with_alarm, capsys):
    from agent.store import Store

    cfg, db = store_with_alarm
    assert main(["alarms", "ack", "s:high:1", "--by", "anna", "--reason", "probe re-seated", "--config", str(cfg),
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["via"] == "store" and result["state"] == "acknowledged"
    with Store.open(db, gateway_id="gw-t") as store:
        acks = [r for r in store.records(type="alarm") if r["state"] == "acknowledged"]
        state = store.load_state("rules")
    assert len(acks) == 1 and acks[0]["by"] == "anna" and acks[0]["reason"] == "probe re-seated"
    assert acks[0]["seq"] == result["seq"]
    resumed = RuleEngine(RulesConfig(profiles={"h": {"rules": {"high": {"type": "above", "limit": 8.0,
                                                                         "latching": True}}}}), {"s": "h"},
                         state=state)
    assert [c["state"] for c in resumed.tick(T0 + 1e6)] == ["cleared"]  # the latch released, once
    # acknowledged and ended: no longer active, a second acknowledgement is refused
    assert main(["alarms", "ack", "s:high:1", "--by", "anna", "--reason", "again", "--config", str(cfg)]) == 1
    assert "no active alarm 's:high:1'" in capsys.readouterr().err


def test_ack_with_a_running_agent_goes_over_the_control_socket_and_shows_its_answer(store_with_alarm, capsys):
    """The CLI hands the acknowledgement to whoever answers on the configured socket."""
    import asyncio
    import threading

    from agent.control import ControlServer
    from agent.store import Store

    cfg, db = store_with_alarm
    sock = cfg.parent / "control.sock"
    cfg.write_text(cfg.read_text().replace(str(cfg.parent / "none.sock"), str(sock)))
    asked: list[dict] = []
    loop = asyncio.new_event_loop()
    up = threading.Event()

    async def ack(req):
        asked.append(dict(req))
        return {"alarm_id": req["alarm_id"], "state": "acknowledged", "by": req["by"], "reason": req["reason"]}

    server = ControlServer(sock, {"alarm_ack": ack})

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        up.set()
        loop.run_forever()
        loop.run_until_complete(server.close())

    t = threading.Thread(target=serve)
    t.start()
    try:
        assert up.wait(10)
        assert main(["alarms", "ack", "s:high:1", "--by", "anna", "--reason", "ok", "--config", str(cfg),
                     "--json"]) == 0
    finally:
        loop.call_soon_threadsafe(loop.stop)
        t.join()
        loop.close()
    result = json.loads(capsys.readouterr().out)
    assert result["via"] == "agent" and result["state"] == "acknowledged" and result["by"] == "anna"
    assert asked == [{"cmd": "alarm_ack", "alarm_id": "s:high:1", "by": "anna", "reason": "ok"}]
    with Store.open(db, gateway_id="gw-t") as store:  # the agent records it, not the CLI
        assert [r["state"] for r in store.records(type="alarm")] == ["raised"]


@pytest.fixture
def store_with_open_excursion(tmp_path):
    """A store with an auto-clearing alarm raised at 9.0 °C that peaked at 9.6 °C, still open."""
    from agent.store import Store

    db = tmp_path / "store.db"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'gateway_id = "gw-t"\n[store]\npath = "{db}"\n[time]\nsync_source = "assume_synced"\n'
                   '[[sensors]]\nid = "s"\nprofile = "h"\n'
                   '[rules.profiles.h.rules.high]\ntype = "above"\nlimit = 8.0\n')
    e = RuleEngine(RULES_AUTO, {"s": "h"})
    changes = e.observe(Sample("s", "temperature", 9.0, "Cel", T0)) + \
        e.observe(Sample("s", "temperature", 9.6, "Cel", T0 + 60))
    with Store.open(db, gateway_id="gw-t") as store:
        store.append([{"type": "alarm", "time_quality": "synced", **c} for c in changes],
                     state={"rules": e.snapshot()})
    return cfg, db


RULES_AUTO = RulesConfig(profiles={"h": {"rules": {"high": {"type": "above", "limit": 8.0}}}})


def end_excursion(db: Path, at: float) -> None:
    """The probe is back in range: the engine (with its saved state) clears the alarm."""
    from agent.store import Store

    with Store.open(db, gateway_id="gw-t") as store:
        e = RuleEngine(RULES_AUTO, {"s": "h"}, state=store.load_state("rules"))
        changes = e.observe(Sample("s", "temperature", 5.0, "Cel", at))
        assert [c["state"] for c in changes] == ["cleared"]
        store.append([{"type": "alarm", "time_quality": "synced", **c} for c in changes],
                     state={"rules": e.snapshot()})


@pytest.mark.parametrize("reason", ["", "   "])
def test_ack_refuses_an_empty_reason_and_records_nothing(store_with_alarm, capsys, reason):
    from agent.store import Store

    cfg, db = store_with_alarm
    assert main(["alarms", "ack", "s:high:1", "--by", "anna", "--reason", reason, "--config", str(cfg)]) == 2
    assert "--reason must not be empty" in capsys.readouterr().err
    assert main(["alarms", "ack", "s:high:1", "--by", " ", "--reason", "ok", "--config", str(cfg), "--json"]) == 2
    answer = json.loads(capsys.readouterr().out)
    assert answer["exit_code"] == 2 and "--by must not be empty" in answer["error"]
    with Store.open(db, gateway_id="gw-t") as store:
        assert [r["state"] for r in store.records(type="alarm")] == ["raised"]


def test_a_second_acknowledgement_is_recorded_and_shown_in_the_history(store_with_open_excursion, capsys):
    cfg, db = store_with_open_excursion
    assert main(["alarms", "ack", "s:high:1", "--by", "anna", "--reason", "door closed", "--config", str(cfg)]) == 0
    capsys.readouterr()
    assert main(["alarms", "ack", "s:high:1", "--by", "ben", "--reason", "load checked", "--config", str(cfg)]) == 0
    assert "also acknowledged before, by anna" in capsys.readouterr().out
    assert main(["alarms", "--config", str(cfg), "--json"]) == 0
    (h,) = json.loads(capsys.readouterr().out)["history"]
    assert [(a["by"], a["reason"]) for a in h["acknowledgements"]] == [("anna", "door closed"), ("ben", "load checked")]
    assert main(["alarms", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "by anna: door closed" in out and "by ben: load checked" in out


def test_alarms_show_each_excursion_s_end_duration_and_peak(store_with_open_excursion, capsys):
    cfg, db = store_with_open_excursion
    assert main(["alarms", "--config", str(cfg), "--json"]) == 0
    (h,) = json.loads(capsys.readouterr().out)["history"]
    assert h["ongoing"] and h["ended_at"] is None and h["peak"] == 9.0  # as recorded when raised
    end_excursion(db, T0 + 1500)
    assert main(["alarms", "--config", str(cfg), "--json"]) == 0
    (h,) = json.loads(capsys.readouterr().out)["history"]
    assert h["started_at"] == format_ts(T0) and h["ended_at"] == format_ts(T0 + 1500)
    assert h["duration_s"] == 1500.0 and h["peak"] == 9.6 and h["limit"] == 8.0 and not h["ongoing"]
    assert main(["alarms", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert f"started {format_ts(T0)}, ended {format_ts(T0 + 1500)}, lasted 25m00s, peak 9.6 (limit 8)" in out


def test_a_latched_alarm_shows_when_its_condition_ended(store_with_alarm, capsys):
    cfg, _ = store_with_alarm  # latching: raised at 9.0, back to 5.0 a minute later, not acknowledged
    assert main(["alarms", "--config", str(cfg), "--json"]) == 0
    (h,) = json.loads(capsys.readouterr().out)["history"]
    assert h["ended_at"] == format_ts(T0 + 60) and h["duration_s"] == 60.0 and h["state"] == "raised"


def test_an_offline_ack_is_stamped_by_the_configured_sync_source_with_boot_time_and_boot_id(store_with_alarm, capsys):
    """0.1.0's CLI asked adjtimex whatever [time] sync_source said, and its offline
    acknowledgement carried no monotonic time or boot id, so no clock_step could cover it."""
    import sqlite3

    from agent.timebase import boot_id

    cfg, db = store_with_alarm
    cfg.write_text(cfg.read_text().replace('sync_source = "assume_synced"', 'sync_source = "assume_unsynced"'))
    assert main(["alarms", "ack", "s:high:1", "--by", "anna", "--reason", "seen", "--config", str(cfg),
                 "--json"]) == 0
    seq = json.loads(capsys.readouterr().out)["seq"]
    with sqlite3.connect(db) as conn:
        tq, mono_ns, boot = conn.execute("SELECT tq, mono_ns, boot_id FROM records WHERE seq = ?", (seq,)).fetchone()
    assert tq == "unsynced"
    assert isinstance(mono_ns, int) and mono_ns > 0
    assert boot == boot_id()
