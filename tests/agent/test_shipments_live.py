"""Shipments on a running agent: the book on the writer's thread, driven over the control socket.

The in-process agent with the simulated logger and a real store; the CLI's own commands
(``coldgate shipment …``) talk to it over the real control socket.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from agent import config as configmod
from agent.cli import main
from agent.daemon import Agent
from agent.timebase import parse_rfc3339
from tests.agent.test_daemon import ask, events, poll, records, start, write

BASE = """
gateway_id = "gw-daemon"
[store]
path = "store.db"
commit_interval_s = 0.05
[control]
socket = "control.sock"
[time]
sync_source = "assume_synced"
[recording]
record_interval_s = 0
[[drivers]]
name = "sim"
type = "sim"
seed = 3
speed = 1
sensors = [{ id = "p1", interval_s = 0.1, setpoint = {setpoint} }, { id = "p2", interval_s = 0.1 }]
[[sensors]]
id = "p1"
profile = "2-8C"
"""


def cli(cfg: Path, *args: str) -> tuple[int, Any]:
    """``coldgate shipment …`` as a technician types it (``--json``), its exit code and answer."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["shipment", *args, "--config", str(cfg), "--json"])
    return code, json.loads(out.getvalue())


def test_a_shipment_started_followed_and_stopped_through_the_cli_is_in_the_stream(tmp_path: Path) -> None:
    cfg_path = write(tmp_path, BASE.replace("{setpoint}", "5.0"))
    store = tmp_path / "store.db"

    async def scenario() -> None:
        agent = Agent(configmod.load(cfg_path), config_path=cfg_path)
        task = await start(agent)
        code, started = await asyncio.to_thread(
            cli, cfg_path, "start", "SHP-1", "--sensor", "p1", "--profile", "2-8C", "--planned", "20h",
            "--ignore", "0", "--custodian", "Pharma Ltd", "--by", "anna")
        assert code == 0 and started["shipment"]["state"] == "in_transit"
        assert [r["event"] for r in started["records"]][:2] == ["shipment_started", "shipment_state"]
        # a sensor belongs to one shipment at a time
        code, busy = await asyncio.to_thread(cli, cfg_path, "start", "SHP-2", "--sensor", "p1")
        assert code == 1 and "already belongs to shipment 'SHP-1'" in busy["error"]
        await poll(lambda: any(r.get("shipment") == "SHP-1" for r in records(store, type="reading")))
        code, leg = await asyncio.to_thread(cli, cfg_path, "leg", "SHP-1", "--name", "air", "--mode", "air")
        assert code == 0 and leg["shipment"]["leg"]["name"] == "air"
        code, ho = await asyncio.to_thread(cli, cfg_path, "handover", "SHP-1", "--from", "Pharma Ltd", "--to",
                                           "AirCargo", "--signed-by", "J. Doe", "--where", "BSL")
        assert code == 0 and ho["shipment"]["custodian"] == "AirCargo"
        st = await ask(agent, "status")
        assert [s["shipment"] for s in st["shipments"]] == ["SHP-1"]
        code, stopped = await asyncio.to_thread(cli, cfg_path, "stop", "SHP-1", "--by", "bob")
        assert code == 0 and stopped["shipment"]["state"] == "closed"
        n = len(records(store, type="reading"))
        await poll(lambda: len(records(store, type="reading")) > n + 5)
        agent.stop()
        await task
        ends = [e for e in records(store, type="event") if e["event"] in ("shipment_stopped", "chain_checkpoint")]
        stop_at = next(i for i, e in enumerate(ends) if e["event"] == "shipment_stopped")
        # the end of the shipment is sealed by a signed checkpoint covering it
        seal = ends[stop_at + 1]
        assert seal["event"] == "chain_checkpoint" and seal["details"]["head_seq"] >= ends[stop_at]["seq"]
        names = [e["event"] for e in records(store, type="event") if "shipment" in e["event"] or "custody" in
                 e["event"]]
        assert names[0] == "shipment_started" and "shipment_leg" in names and "custody_transferred" in names
        assert names[-1] == "shipment_stopped" or "shipment_stopped" in names
        handover = events(store, "custody_transferred")[0]["details"]
        assert (handover["from"], handover["to"], handover["signed_by"]) == ("Pharma Ltd", "AirCargo", "J. Doe")
        readings = records(store, type="reading")
        ship_start = events(store, "shipment_started")[0]["seq"]
        ship_stop = events(store, "shipment_stopped")[0]["seq"]
        inside = [r for r in readings if ship_start < r["seq"] < ship_stop and r["sensor_id"] == "p1"]
        assert inside and all(r.get("shipment") == "SHP-1" for r in inside)  # every reading taken for it
        assert all("shipment" not in r for r in readings if r["sensor_id"] == "p2")  # outside any: still recorded
        assert all("shipment" not in r for r in readings if r["seq"] > ship_stop)
        # status and list read the store while the agent is stopped
        code, listed = await asyncio.to_thread(cli, cfg_path, "list")
        assert code == 0 and listed[0]["shipment"] == "SHP-1" and listed[0]["state"] == "closed"

    asyncio.run(scenario())


def test_the_stability_budget_carried_from_upstream_runs_out_and_alarms_at_its_second(tmp_path: Path) -> None:
    """A product that spent 3 s of its 5 s upstream, and a probe above 8 °C: the budget runs
    out 2 s (of elapsed time) after the shipment is armed, and the alarm says so."""
    cfg_path = write(tmp_path, BASE.replace("{setpoint}", "12.0"))
    store = tmp_path / "store.db"

    async def scenario() -> None:
        agent = Agent(configmod.load(cfg_path), config_path=cfg_path)
        task = await start(agent)
        code, started = await asyncio.to_thread(
            cli, cfg_path, "start", "SHP-B", "--sensor", "p1", "--ignore", "0", "--budget", "5",
            "--spent-upstream", "3", "--above", "8")
        assert code == 0, started
        alarm = await poll(lambda: [r for r in records(store, type="alarm") if r.get("shipment") == "SHP-B"
                                    and r["rule"] == "stability_budget" and r["state"] == "raised"], timeout=20)
        t0 = parse_rfc3339(events(store, "shipment_started")[0]["ts"])
        assert parse_rfc3339(alarm[0]["ts"]) - t0 == pytest.approx(2.0, abs=0.3)
        st = (await ask(agent, "shipment", action="status", shipment="SHP-B"))["stability"]
        assert st["remaining_s"] == 0 and st["exhausted"]
        acked = await ask(agent, "alarm_ack", alarm_id=alarm[0]["alarm_id"], by="qa", reason="product quarantined")
        assert acked["state"] == "acknowledged"
        code, stopped = await asyncio.to_thread(cli, cfg_path, "stop", "SHP-B")
        agent.stop()
        await task
        stop = events(store, "shipment_stopped")[0]["details"]
        assert stop["stability"]["remaining_s"] == 0

    asyncio.run(scenario())


def test_a_shipment_in_the_config_starts_with_the_agent_once_and_survives_a_restart(tmp_path: Path) -> None:
    text = BASE.replace("{setpoint}", "5.0") + """
[[shipments]]
id = "SHP-CFG"
sensors = ["p1"]
profile = "2-8C"
ignore_s = 0
legs = [{ name = "road", kind = "origin", mode = "road" }, { name = "air", kind = "transit", mode = "air" }]
stability = { budget_s = 3600, above = 8.0 }
"""
    cfg_path = write(tmp_path, text)
    store = tmp_path / "store.db"

    async def run_once(then: Any = None) -> None:
        agent = Agent(configmod.load(cfg_path), config_path=cfg_path)
        task = await start(agent)
        await poll(lambda: any(r.get("shipment") == "SHP-CFG" for r in records(store, type="reading")))
        if then is not None:
            await then(agent)
        agent.stop()
        await task

    async def next_leg(agent: Agent) -> None:
        await ask(agent, "shipment", action="leg", shipment="SHP-CFG")

    asyncio.run(run_once(next_leg))
    asyncio.run(run_once())  # a restart: the same shipment goes on, not a second start
    assert len(events(store, "shipment_started")) == 1
    legs = [e["details"]["leg"] for e in events(store, "shipment_leg")]
    assert legs == ["road", "air"]
    code, st = cli(cfg_path, "status", "SHP-CFG")
    assert code == 0 and st["leg"]["name"] == "air" and st["state"] == "in_transit"


def text_cli(cfg: Path, *args: str) -> tuple[int, str, str]:
    """A ``coldgate`` command in text mode, as a technician reads it: exit code, stdout, stderr."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*args, "--config", str(cfg)])
    return code, out.getvalue(), err.getvalue()


def test_status_text_shows_each_active_shipment_with_its_leg_sensors_and_budget_left(tmp_path: Path) -> None:
    """4 h of budget, 30 min spent upstream and a probe in range: 3 h 30 min left, while the
    agent runs and, as last committed, once it has stopped; a probe out of range spends live."""
    cfg_path = write(tmp_path, BASE.replace("{setpoint}", "5.0"))

    async def scenario() -> None:
        agent = Agent(configmod.load(cfg_path), config_path=cfg_path)
        task = await start(agent)
        code, _ = await asyncio.to_thread(cli, cfg_path, "start", "SHP-S", "--sensor", "p1", "--ignore", "0",
                                          "--budget", "4h", "--spent-upstream", "30m", "--above", "8")
        assert code == 0
        code, _ = await asyncio.to_thread(cli, cfg_path, "leg", "SHP-S", "--name", "transit", "--mode", "road")
        assert code == 0
        # p2 is always "out of range" for this budget (at or above -100 °C): it spends while we look
        code, _ = await asyncio.to_thread(cli, cfg_path, "start", "SHP-OUT", "--sensor", "p2", "--ignore", "0",
                                          "--budget", "1h", "--above", "-100")
        assert code == 0
        for _ in range(400):  # the budget is spent from the first sample on: within 20 s at most
            if any(s["shipment"] == "SHP-OUT" and s["stability"]["spent_s"] > 0
                   for s in (await ask(agent, "status"))["shipments"]):
                break
            await asyncio.sleep(0.05)
        code, text, _ = await asyncio.to_thread(text_cli, cfg_path, "status")
        assert code == 0, text
        lines = {line.split(":")[0]: line for line in text.splitlines() if line.startswith("shipment ")}
        assert lines["shipment SHP-S"] == ("shipment SHP-S: in_transit, leg transit (road), sensors p1, "
                                           "budget 3 h 30 min of 4 h left")
        assert lines["shipment SHP-OUT"] == ("shipment SHP-OUT: in_transit, leg -, sensors p2, "
                                             "budget 59 min of 60 min left, being spent (out of range now)")
        agent.stop()
        await task

    asyncio.run(scenario())
    code, text, _ = text_cli(cfg_path, "status")
    assert code == 3 and "NOT RUNNING" in text  # read from the store: the shipments as last committed
    assert "shipment SHP-S: in_transit, leg transit (road), sensors p1, budget 3 h 30 min of 4 h left" in text


def test_shipment_start_in_text_mode_warns_on_stderr_of_an_interval_en12830_does_not_allow(tmp_path: Path) -> None:
    """p1 keeps one reading in 600 s; a 12 h trip allows 5 min (EN 12830): the technician who
    types ``shipment start`` is told, not only the log. p2 records every sample: no warning."""
    cfg_path = write(tmp_path, BASE.replace("{setpoint}", "5.0") + "record_interval_s = 600\n")

    async def scenario() -> None:
        agent = Agent(configmod.load(cfg_path), config_path=cfg_path)
        task = await start(agent)
        code, out, err = await asyncio.to_thread(text_cli, cfg_path, "shipment", "start", "SHP-W", "--sensor", "p1",
                                                 "--planned", "12h")
        assert code == 0 and "recorded: shipment_started" in out
        assert err == ("coldgate: warning: shipment SHP-W: p1: records every 600 s; EN 12830 allows at most 300 s "
                       "for a 12 h trip\n")
        code, out, err = await asyncio.to_thread(text_cli, cfg_path, "shipment", "start", "SHP-OK", "--sensor", "p2",
                                                 "--planned", "12h")
        assert code == 0 and "recorded: shipment_started" in out and err == ""
        agent.stop()
        await task

    asyncio.run(scenario())
