"""The receiver's fleet view of real gateways: two agents, each with its own gateway id
and config version, sending to one reference receiver on loopback; ``coldgate receiver
fleet`` (``--json`` and text) says what each one runs, when its last batch came, and its
stream's verdict — and follows a gateway whose config changes while the other's stays.

The configs are unsigned (a subprocess agent trusts only root-owned keyrings, which the
e2e harness does not make): the view says "signed by nobody"; the signer's column is
covered with hand-built batches in tests/receiver/test_storage.py.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from agent.timebase import parse_rfc3339
from tests.e2e.harness import (
    AgentProcess,
    ReceiverProcess,
    assert_receiver_holds_everything,
    wait_until,
    write_config,
)
from tests.e2e.harness import (
    cli as coldgate,
)

pytestmark = pytest.mark.slow

VERIFIED = "complete-and-verified"
#: a real-time simulated logger: readings keep coming, so every config's health check can pass
SIM = "speed = 1"



def fleet_json(receiver: ReceiverProcess) -> dict[str, Any]:
    out = coldgate("receiver", "fleet", "--db", str(receiver.db), "--json")
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout)["gateways"])


def fleet_text(receiver: ReceiverProcess) -> str:
    out = coldgate("receiver", "fleet", "--db", str(receiver.db))
    assert out.returncode == 0, out.stderr
    return out.stdout


def config_in(folder: Path, url: str, gateway_id: str, version: int | str) -> Path:
    folder.mkdir(exist_ok=True)
    return write_config(folder, url, sim=SIM, gateway_id=gateway_id, config_version=version)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def reports(receiver: ReceiverProcess, gateway: str, version: int | str) -> Any:
    """The fleet view, once ``gateway`` reported ``version`` and its stream is verified."""
    if not receiver.db.exists():
        return None
    view = fleet_json(receiver)
    g = view.get(gateway)
    return view if g and (g["config"] or {}).get("version") == version and g["verdict"] == VERIFIED else None


def test_the_fleet_view_shows_each_running_gateways_config_version_and_hash_last_batch_and_verdict(
        tmp_path: Path) -> None:
    receiver = ReceiverProcess(tmp_path / "receiver.db").start()
    versions: dict[str, int | str] = {"gw-north": 7, "gw-south": "2026.11.2"}
    configs = {gw: config_in(tmp_path / gw, receiver.url, gw, v) for gw, v in versions.items()}
    agents: dict[str, AgentProcess] = {}
    try:
        for gw, cfg in configs.items():
            agents[gw] = AgentProcess(cfg).start()
        started = min(parse_rfc3339(a.all_records()[0]["ts"]) for a in agents.values())
        for gw, v in versions.items():
            wait_until(lambda gw=gw, v=v: reports(receiver, gw, v), 60, f"{gw}'s config in the fleet view")
        view = fleet_json(receiver)
        assert set(view) == set(versions)
        for gw, agent in agents.items():
            running = agent.status()["fleet"]["running"]
            assert running["version"] == versions[gw] and running["sha256"] == sha256(configs[gw])
            g = view[gw]
            # the version and hash the gateway runs (its status says the same), unsigned
            assert g["config"] == {"version": versions[gw], "sha256": running["sha256"], "signer": None}
            assert g["batches"] >= 1 and started <= parse_rfc3339(g["last_batch_at"])
            assert g["verdict"] == VERIFIED and g["active_alarms"] == []
            (stream,) = {r["stream"] for r in agent.all_records()}
            assert g["streams"][stream]["verdict"] == VERIFIED and g["streams"][stream]["reasons"] == []
            assert g["streams"][stream]["last_seq"] >= 1

        # gw-north moves to version 8 through `config apply`; the view follows, gw-south's stays
        north = configs["gw-north"]
        candidate = config_in(tmp_path / "next", receiver.url, "gw-north", 8)
        applied = coldgate("config", "apply", str(candidate), "--config", str(north), "--json")
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert json.loads(applied.stdout)["version"] == 8
        before = view["gw-north"]
        view = wait_until(lambda: reports(receiver, "gw-north", 8), 60, "gw-north's version 8 in the fleet view")
        assert view["gw-north"]["config"] == {"version": 8, "sha256": sha256(candidate), "signer": None}
        assert agents["gw-north"].status()["fleet"]["running"]["sha256"] == sha256(candidate) == sha256(north)
        assert view["gw-north"]["batches"] > before["batches"]
        assert parse_rfc3339(view["gw-north"]["last_batch_at"]) >= parse_rfc3339(before["last_batch_at"])
        assert view["gw-south"]["config"] == {"version": "2026.11.2", "sha256": sha256(configs["gw-south"]),
                                              "signer": None}
    finally:
        codes = {gw: a.stop() for gw, a in agents.items()}
        receiver.stop()
    assert codes == {gw: 0 for gw in agents}
    for agent in agents.values():
        assert_receiver_holds_everything(agent, receiver)  # what the view judged is all there, once

    # after the stop: the last batch each sent, the text form a person reads
    view = fleet_json(receiver)
    text = fleet_text(receiver)
    for gw, version in (("gw-north", 8), ("gw-south", "2026.11.2")):
        g = view[gw]
        assert g["config"]["version"] == version and g["verdict"] == VERIFIED
        stream = agents[gw].all_records()[-1]
        assert g["streams"][stream["stream"]]["last_seq"] == stream["seq"]  # the stop's checkpoint arrived
        assert (f"{gw}: {VERIFIED}; config {version} ({g['config']['sha256'][:12]}…, signed by nobody); "
                f"last batch {g['last_batch_at']} ({g['batches']} batches); active alarms: none") in text
