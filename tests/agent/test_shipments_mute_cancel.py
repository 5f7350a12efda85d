"""Shipments on a running agent: a leg that mutes a rule, and a cancel through the CLI.

The in-process agent with the simulated logger and a real store, driven by the CLI's own
``coldgate shipment …`` commands over the real control socket (as in test_shipments_live).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from agent import config as configmod
from agent.daemon import Agent
from agent.report import build
from agent.report.source import from_store, source_of_store
from agent.store import Store
from tests.agent.test_daemon import ask, events, poll, records, start, write
from tests.agent.test_shipments_live import BASE, cli

#: test_shipments_live's agent, its p1 judged by a profile whose "high" alarms at once
CONFIG = BASE.replace('profile = "2-8C"', 'profile = "fast"') + """
[rules.profiles.fast]
extends = "2-8C"
[rules.profiles.fast.rules.high]
type = "above"
limit = 8.0
delay_s = 0
"""


def _report(store_path: Path, shipment: str) -> dict[str, Any]:
    with Store.open(store_path, gateway_id="gw-daemon", create=False, check=False) as store:
        return build(from_store(store, shipment), source=source_of_store(store))


def _high_row(model: dict[str, Any]) -> dict[str, Any]:
    return next(a for a in model["alarms"] if a["sensor_id"] == "p1" and a["rule"] == "high")


def test_an_excursion_in_a_leg_that_mutes_the_rule_is_recorded_muted_and_reported_muted_and_alarms_in_the_next_leg(
        tmp_path: Path) -> None:
    """Leg 'tarmac' mutes 'high': p1 at 12 °C raises an alarm recorded ``muted: tarmac`` and
    the report lists the rule as MUTED (the verdict is not ALARM for it). Back in range, leg
    'air' (no mute), 12 °C again: the alarm is recorded without ``muted`` and the report says ALARM."""
    cfg_path = write(tmp_path, CONFIG.replace("{setpoint}", "12.0"))
    store = tmp_path / "store.db"
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"id": "SHP-M", "sensors": ["p1"], "profile": "fast", "ignore_s": 0, "legs": [
        {"name": "tarmac", "kind": "origin", "mode": "road", "mute": ["high"]},
        {"name": "air", "kind": "transit", "mode": "air"}]}))

    def raised(muted: bool) -> list[dict[str, Any]]:
        return [r for r in records(store, type="alarm") if r["rule"] == "high" and r["state"] == "raised"
                and r.get("shipment") == "SHP-M" and ("muted" in r) == muted]

    async def scenario() -> None:
        agent = Agent(configmod.load(cfg_path), config_path=cfg_path)
        task = await start(agent)
        # p1 is above 8 °C before the shipment starts: that alarm is outside any shipment; let it clear first
        cfg_path.write_text(CONFIG.replace("{setpoint}", "5.0"))
        assert (await ask(agent, "reload"))["applied"]
        await poll(lambda: not agent.engine.out_of_range("p1"))
        code, started = await asyncio.to_thread(cli, cfg_path, "start", "SHP-M", "--spec", str(spec))
        assert code == 0 and started["shipment"]["leg"]["name"] == "tarmac", started
        cfg_path.write_text(CONFIG.replace("{setpoint}", "12.0"))
        assert (await ask(agent, "reload"))["applied"]
        muted = await poll(lambda: raised(True))
        assert muted[0]["muted"] == "tarmac" and muted[0]["severity"] == "alarm"
        so_far = _report(store, "SHP-M")
        row = _high_row(so_far)
        assert row["status"] == "MUTED" and row["alarm_ids"] == [muted[0]["alarm_id"]]
        assert [x["muted"] for x in row["raised"]] == ["tarmac"]
        assert not any("p1 high" in r for r in so_far["verdict"]["reasons"])
        assert so_far["legs"][0]["mute"] == ["high"]
        # back in range, the next leg, the same excursion again
        cfg_path.write_text(CONFIG.replace("{setpoint}", "5.0"))
        assert (await ask(agent, "reload"))["applied"]
        await poll(lambda: [r for r in records(store, type="alarm") if r["rule"] == "high"
                            and r["state"] == "cleared" and r.get("shipment") == "SHP-M"])
        code, leg = await asyncio.to_thread(cli, cfg_path, "leg", "SHP-M")
        assert code == 0 and leg["shipment"]["leg"]["name"] == "air"
        cfg_path.write_text(CONFIG.replace("{setpoint}", "12.0"))
        assert (await ask(agent, "reload"))["applied"]
        loud = await poll(lambda: raised(False))
        code, _ = await asyncio.to_thread(cli, cfg_path, "stop", "SHP-M")
        assert code == 0
        agent.stop()
        await task
        leg_air = events(store, "shipment_leg")[-1]
        assert leg_air["details"]["leg"] == "air" and loud[0]["seq"] > leg_air["seq"] > muted[0]["seq"]
        model = _report(store, "SHP-M")
        row = _high_row(model)
        assert row["status"] == "ALARM" and model["verdict"]["status"] == "ALARM"
        assert [(x["alarm_id"], x["muted"]) for x in row["raised"]] == [(muted[0]["alarm_id"], "tarmac"),
                                                                         (loud[0]["alarm_id"], None)]
        assert any(r.startswith(f"p1 high: alarm raised at {row['raised'][1]['at']}")
                   for r in model["verdict"]["reasons"])

    asyncio.run(scenario())


def test_a_shipment_cancelled_through_the_cli_is_cancelled_in_the_stream_and_its_sensors_are_free(
        tmp_path: Path) -> None:
    cfg_path = write(tmp_path, CONFIG.replace("{setpoint}", "5.0"))
    store = tmp_path / "store.db"

    async def scenario() -> None:
        agent = Agent(configmod.load(cfg_path), config_path=cfg_path)
        task = await start(agent)
        code, _ = await asyncio.to_thread(cli, cfg_path, "start", "SHP-C", "--sensor", "p1", "--sensor", "p2",
                                          "--ignore", "0")
        assert code == 0
        await poll(lambda: any(r.get("shipment") == "SHP-C" for r in records(store, type="reading")))
        code, cancelled = await asyncio.to_thread(cli, cfg_path, "cancel", "SHP-C", "--by", "dispatch",
                                                  "--why", "order withdrawn")
        assert code == 0 and cancelled["shipment"]["state"] == "cancelled", cancelled
        assert [r["event"] for r in cancelled["records"]][-2:] == ["shipment_state", "shipment_stopped"]
        code, st = await asyncio.to_thread(cli, cfg_path, "status", "SHP-C")
        assert code == 0 and st["state"] == "cancelled"
        # its sensors are free: a new shipment takes both
        code, again = await asyncio.to_thread(cli, cfg_path, "start", "SHP-D", "--sensor", "p1", "--sensor", "p2",
                                              "--ignore", "0")
        assert code == 0 and again["shipment"]["state"] == "in_transit", again
        await poll(lambda: {r["sensor_id"] for r in records(store, type="reading") if r.get("shipment") == "SHP-D"}
                   == {"p1", "p2"})
        agent.stop()
        await task
        stop = events(store, "shipment_stopped")
        assert len(stop) == 1 and stop[0]["details"]["shipment"] == "SHP-C"
        assert (stop[0]["details"]["reason"], stop[0]["details"]["by"], stop[0]["details"]["why"]) == (
            "cancelled", "dispatch", "order withdrawn")
        state = [e["details"] for e in events(store, "shipment_state") if e["details"]["shipment"] == "SHP-C"]
        assert (state[-1]["to"], state[-1]["cause"]) == ("cancelled", "cancelled")
        readings = records(store, type="reading")
        assert not any(r.get("shipment") == "SHP-C" for r in readings if r["seq"] > stop[0]["seq"])
        # read from the store once the agent has stopped: still cancelled
        code, st = cli(cfg_path, "status", "SHP-C")
        assert code == 0 and st["state"] == "cancelled"
        code, listed = cli(cfg_path, "list")
        assert code == 0 and {s["shipment"]: s["state"] for s in listed} == {"SHP-C": "cancelled",
                                                                             "SHP-D": "in_transit"}

    asyncio.run(scenario())
