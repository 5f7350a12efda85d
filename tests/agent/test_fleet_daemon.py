"""Fleet configs with a running agent: signed applies (``config apply`` and the inbox),
refusals that leave the running config untouched, key rotation, health-checked rollback
with no gap in the readings of the drivers that did not change, and a trial interrupted
by a stop or a crash.

The agent runs in-process with the shipped simulated driver and fake transport, over the
real control socket; the CLI is the real ``coldgate`` entry point. Keyring files belong to
the user running the tests, who stands in for root (``trusted_uid``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agent import config as configmod
from agent.cli import main
from agent.daemon import Agent
from agent.fleet.trust import signature_path
from agent.timebase import parse_rfc3339
from agent.uplink.fake import FakeTransport
from tests.agent.fleet_helpers import Fleet, fleet_section
from tests.agent.test_daemon import ask, events, poll, records, start

UID = os.getuid()

BASE = """
gateway_id = "gw-daemon"
config_version = {version}
[store]
path = "store.db"
commit_interval_s = 0.05
[control]
socket = "control.sock"
[time]
sync_source = "assume_synced"
[recording]
record_interval_s = 0
[identity]
checkpoint_interval_s = 0
[[drivers]]
name = "a"
type = "sim"
seed = 1
sensors = [{{ id = "p1", interval_s = 0.05 }}]
"""

#: a driver that cannot start: its serial port does not exist
BROKEN = """
[[drivers]]
name = "b"
type = "nmea"
port = "/dev/coldgate-test-no-such-port"
sensor_id = "gps"
"""


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def text(version: int | str, fleet_sec: str, extra: str = "") -> str:
    v = f'"{version}"' if isinstance(version, str) else version
    return BASE.format(version=v) + extra + fleet_sec


def drop(inbox: Path, name: str, data: bytes, sig: bytes | None) -> None:
    """As a careful fleet tool drops: the signature first, then the config renamed into place."""
    inbox.mkdir(exist_ok=True)
    if sig is not None:
        (inbox / f"{name}.sig").write_bytes(sig)
    tmp = inbox / f".{name}.part"
    tmp.write_bytes(data)
    os.replace(tmp, inbox / name)


def running(status: dict[str, Any]) -> dict[str, Any]:
    return dict(status["fleet"]["running"])


def test_a_signed_config_applies_through_config_apply_and_the_inbox_and_its_version_is_reported_everywhere(
        tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    kid = fleet.key("fleet-2025")
    inbox = tmp_path / "inbox"
    live = tmp_path / "coldgate.toml"
    section = fleet_section(fleet, window=5.0, inbox=inbox)
    live.write_text(text(1, section))
    fleet.sign(live, "fleet-2025")
    transport = FakeTransport()

    async def scenario() -> None:
        agent = Agent(configmod.load(live), config_path=live, transport=lambda: transport, trusted_uid=UID)
        task = await start(agent)
        assert running(await ask(agent, "status")) == {"version": 1, "sha256": sha(live), "signer": kid,
                                                       "source": str(live)}
        # 1. coldgate config apply, as a fleet tool runs it
        v2 = tmp_path / "v2.toml"
        v2.write_text(text(2, section))
        fleet.sign(v2, "fleet-2025")
        digest = sha(v2)
        assert await asyncio.to_thread(main, ["config", "apply", str(v2), "-c", str(live), "--json"]) == 0
        assert live.read_bytes() == v2.read_bytes() and signature_path(live).exists()
        status = await ask(agent, "status")
        assert running(status) == {"version": 2, "sha256": digest, "signer": kid, "source": str(live)}
        applied = events(tmp_path / "store.db", "config_applied")[-1]["details"]
        assert applied["version"] == 2 and applied["signer"] == kid and applied["sha256"] == digest
        assert applied["previous"]["version"] == 1
        # every batch from now on names what runs
        await poll(lambda: any(b.config == {"version": 2, "sha256": digest, "signer": kid}
                               for b in transport.batches))
        await poll(lambda: events(tmp_path / "store.db", "config_confirmed"))  # it passed its check
        # 2. the inbox
        v3 = tmp_path / "v3.toml"
        v3.write_text(text(3, section))
        fleet.sign(v3, "fleet-2025")
        drop(inbox, "v3.toml", v3.read_bytes(), signature_path(v3).read_bytes())
        done = await poll(lambda: list((inbox / "applied").glob("*-v3.toml.result.json")))
        result = json.loads(done[0].read_text())
        assert result["verdict"] == "applied" and result["version"] == 3 and result["signer"] == kid
        assert result["health"]["passed"] is True
        assert not (inbox / "v3.toml").exists() and list((inbox / "applied").glob("*-v3.toml.sig"))
        assert running(await ask(agent, "status"))["version"] == 3
        agent.stop()
        assert await task == 0
        # the kept copy survives a restart: the inbox cannot rewrite the live file, the state can
        again = Agent(configmod.load(live), config_path=live, transport=lambda: transport, trusted_uid=UID)
        task = await start(again)
        assert running(await ask(again, "status"))["version"] == 3
        again.stop()
        assert await task == 0

    asyncio.run(scenario())


def test_the_last_good_config_is_kept_with_its_signature_beside_it_after_a_signed_apply(tmp_path: Path) -> None:
    """``fleet/last-good.toml.sig`` beside ``last-good.toml``: the start config's signature
    at start, the applied file's once it passed its check; byte for byte what the fleet
    signed, still verifying under the keyring."""
    from agent.fleet.trust import Keyring

    fleet = Fleet(tmp_path)
    kid = fleet.key("fleet")
    section = fleet_section(fleet, window=5.0)
    live = tmp_path / "coldgate.toml"
    live.write_text(text(1, section))
    fleet.sign(live, "fleet")
    v2 = tmp_path / "v2.toml"
    v2.write_text(text(2, section))
    fleet.sign(v2, "fleet")
    state = tmp_path / "fleet"  # the default state directory, beside the store
    store = tmp_path / "store.db"

    def kept(stem: str) -> tuple[bytes, bytes, dict[str, Any]]:
        return ((state / f"{stem}.toml").read_bytes(), (state / f"{stem}.toml.sig").read_bytes(),
                json.loads((state / f"{stem}.json").read_text())["provenance"])

    async def scenario() -> None:
        agent = Agent(configmod.load(live), config_path=live, transport=FakeTransport, trusted_uid=UID)
        task = await start(agent)
        data, sig, prov = kept("last-good")
        assert data == live.read_bytes() and sig == signature_path(live).read_bytes()
        assert prov["version"] == 1 and prov["signer"] == kid
        verdict = await ask(agent, "apply", path=str(v2), signature=str(signature_path(v2)))
        assert verdict["applied"] is True and verdict["health_window_s"] == 5.0
        await poll(lambda: events(store, "config_confirmed"))
        data, sig, prov = kept("last-good")
        assert data == v2.read_bytes() and sig == signature_path(v2).read_bytes()
        assert prov == {"version": 2, "sha256": sha(v2), "signer": kid, "source": str(v2)}
        assert Keyring.load(fleet.keyring, trusted_uid=UID).verify(data, sig, source="last-good.toml") == kid
        assert not list(state.glob("trial.*"))  # the trial's files became the last good ones
        assert (await ask(agent, "status"))["fleet"]["last_good"]["version"] == 2
        agent.stop()
        assert await task == 0

    asyncio.run(scenario())


def test_unsigned_wrongly_signed_tampered_and_older_configs_are_refused_with_their_reason_and_nothing_changes(
        tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    kid = fleet.key("fleet")
    fleet.key("rogue", trusted=False)
    inbox = tmp_path / "inbox"
    section = fleet_section(fleet, inbox=inbox)
    live = tmp_path / "coldgate.toml"
    live.write_text(text(5, section))
    fleet.sign(live, "fleet")
    cases = {}
    for name, version in (("unsigned", 6), ("wrong_key", 6), ("tampered", 6), ("downgrade", 4)):
        p = tmp_path / f"{name}.toml"
        p.write_text(text(version, section))
        if name != "unsigned":
            fleet.sign(p, "rogue" if name == "wrong_key" else "fleet")
        if name == "tampered":
            p.write_bytes(p.read_bytes().replace(b"interval_s = 0.05", b"interval_s = 0.06"))
        cases[name] = p
    expected = {"unsigned": "unsigned", "wrong_key": "untrusted_key", "tampered": "bad_signature",
                "downgrade": "downgrade"}

    async def scenario() -> None:
        agent = Agent(configmod.load(live), config_path=live, transport=FakeTransport, trusted_uid=UID)
        task = await start(agent)
        before = running(await ask(agent, "status"))
        assert before["version"] == 5 and before["signer"] == kid
        driver = agent.drivers.drivers["a"]
        for name, p in cases.items():
            verdict = await ask(agent, "apply", path=str(p), signature=str(signature_path(p)))
            assert verdict["applied"] is False and verdict["reason"] == expected[name], name
            assert verdict["problems"] and verdict["running"]["version"] == 5
            assert running(await ask(agent, "status")) == before, name
        assert agent.drivers.drivers["a"] is driver  # nothing restarted
        rejected = [e["details"] for e in events(tmp_path / "store.db", "config_rejected")]
        assert [r["reason"] for r in rejected] == list(expected.values())
        assert all(r["running"] == {"version": 5, "sha256": before["sha256"], "signer": kid} for r in rejected)
        # the CLI says why and leaves the live file alone
        assert await asyncio.to_thread(main, ["config", "apply", str(cases["wrong_key"]), "-c", str(live)]) == 1
        assert "version" in live.read_text() and b"5" in live.read_bytes()
        # and the same through the inbox: rejected/ with the reason beside it
        drop(inbox, "t.toml", cases["tampered"].read_bytes(), signature_path(cases["tampered"]).read_bytes())
        found = await poll(lambda: list((inbox / "rejected").glob("*-t.toml.result.json")))
        result = json.loads(found[0].read_text())
        assert result["verdict"] == "rejected" and result["reason"] == "bad_signature" and result["problems"]
        assert running(await ask(agent, "status")) == before
        agent.stop()
        assert await task == 0

    asyncio.run(scenario())


def test_config_apply_refuses_a_lower_version_unless_allow_downgrade_and_then_records_the_downgrade(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Through the real CLI against the running agent: version 3 after version 5 is refused
    (exit 1, reason and hint given, live file and running config untouched), then applied
    with ``--allow-downgrade`` (status, the live file, ``config_applied`` with ``previous``),
    and it stays: it passes its check and the next start runs it, not the higher kept one."""
    fleet = Fleet(tmp_path)
    kid = fleet.key("fleet")
    section = fleet_section(fleet, window=5.0)
    live = tmp_path / "coldgate.toml"
    live.write_text(text(5, section))
    fleet.sign(live, "fleet")
    live_bytes, live_sig = live.read_bytes(), signature_path(live).read_bytes()
    older = tmp_path / "v3.toml"
    older.write_text(text(3, section))
    fleet.sign(older, "fleet")
    store = tmp_path / "store.db"

    def apply(*flags: str) -> tuple[int, str]:
        capsys.readouterr()
        code = main(["config", "apply", str(older), "-c", str(live), *flags])
        return code, capsys.readouterr().out

    async def scenario() -> None:
        agent = Agent(configmod.load(live), config_path=live, transport=FakeTransport, trusted_uid=UID)
        task = await start(agent)
        before = running(await ask(agent, "status"))
        assert before == {"version": 5, "sha256": sha(live), "signer": kid, "source": str(live)}
        driver = agent.drivers.drivers["a"]
        # 1. without the flag: refused by the running agent, with its reason
        code, out = await asyncio.to_thread(apply, "--json")
        verdict = json.loads(out)
        assert code == 1 and verdict["applied"] is False and verdict["via"] == "the running agent"
        assert verdict["reason"] == "downgrade"
        assert verdict["problems"] == ["config_version: 3 is lower than the running 5 (raise config_version, or "
                                       "apply with --allow-downgrade to go back on purpose)"]
        assert verdict["running"] == {"version": 5, "sha256": before["sha256"], "signer": kid}
        code, out = await asyncio.to_thread(apply)  # the text form says the same to a person
        assert code == 1 and f"{live} left unchanged" in out and "3 is lower than the running 5" in out
        assert live.read_bytes() == live_bytes and signature_path(live).read_bytes() == live_sig
        assert running(await ask(agent, "status")) == before and agent.drivers.drivers["a"] is driver
        assert [e["details"]["reason"] for e in events(store, "config_rejected")] == ["downgrade", "downgrade"]
        assert not [e for e in events(store, "config_applied") if e["details"]["at"] == "apply"]
        # 2. with it: applied, reported, recorded as going from 5 back to 3
        code, out = await asyncio.to_thread(apply, "--allow-downgrade", "--json")
        verdict = json.loads(out)
        assert code == 0 and verdict["applied"] is True and verdict["version"] == 3 and verdict["signer"] == kid
        assert live.read_bytes() == older.read_bytes()
        assert signature_path(live).read_bytes() == signature_path(older).read_bytes()
        assert running(await ask(agent, "status")) == {"version": 3, "sha256": sha(older), "signer": kid,
                                                       "source": str(live)}
        applied = events(store, "config_applied")[-1]["details"]
        assert applied["at"] == "apply" and applied["version"] == 3 and applied["sha256"] == sha(older)
        assert applied["previous"] == {"version": 5, "sha256": before["sha256"], "signer": kid}
        confirmed = await poll(lambda: events(store, "config_confirmed"))
        assert confirmed[-1]["details"]["version"] == 3 and not events(store, "config_rolled_back")
        agent.stop()
        assert await task == 0
        again = Agent(configmod.load(live), config_path=live, transport=FakeTransport, trusted_uid=UID)
        task = await start(again)
        assert running(await ask(again, "status"))["version"] == 3  # not the kept version 5
        again.stop()
        assert await task == 0

    asyncio.run(scenario())


def test_key_rotation_both_keys_trusted_then_the_old_one_removed(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    old, new = fleet.key("old"), fleet.key("new")
    section = fleet_section(fleet)
    live = tmp_path / "coldgate.toml"
    live.write_text(text(1, section))

    def candidate(version: int, key: str) -> Path:
        p = tmp_path / f"v{version}-{key}.toml"
        p.write_text(text(version, section))
        fleet.sign(p, key)
        return p

    async def scenario() -> None:
        agent = Agent(configmod.load(live), config_path=live, transport=FakeTransport, trusted_uid=UID)
        task = await start(agent)

        async def apply(p: Path) -> dict[str, Any]:
            return dict(await ask(agent, "apply", path=str(p), signature=str(signature_path(p))))

        assert (await apply(candidate(2, "old")))["signer"] == old
        assert (await apply(candidate(3, "new")))["signer"] == new  # both trusted during the rotation
        fleet.distrust("old")
        refused = await apply(candidate(4, "old"))
        assert refused["applied"] is False and refused["reason"] == "untrusted_key"
        assert old in refused["problems"][0] and new in refused["problems"][0]  # says which it knows
        assert (await apply(candidate(4, "new")))["signer"] == new
        assert running(await ask(agent, "status")) == {"version": 4, "sha256": sha(tmp_path / "v4-new.toml"),
                                                       "signer": new, "source": str(tmp_path / "v4-new.toml")}
        agent.stop()
        assert await task == 0

    asyncio.run(scenario())


def test_a_config_whose_driver_cannot_start_rolls_back_by_itself_and_the_other_drivers_never_stop(
        tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    fleet.key("fleet")
    section = fleet_section(fleet, window=1.0)
    live = tmp_path / "coldgate.toml"
    live.write_text(text(1, section))
    fleet.sign(live, "fleet")
    bad = tmp_path / "v2.toml"
    bad.write_text(text(2, section, BROKEN))
    fleet.sign(bad, "fleet")
    store = tmp_path / "store.db"

    async def scenario() -> None:
        agent = Agent(configmod.load(live), config_path=live, transport=FakeTransport, trusted_uid=UID)
        task = await start(agent)
        good = running(await ask(agent, "status"))
        await poll(lambda: len(records(store, type="reading")) > 20)
        driver = agent.drivers.drivers["a"]
        t0 = time.monotonic()
        verdict = await ask(agent, "apply", path=str(bad), signature=str(signature_path(bad)))
        assert verdict["applied"] is True and verdict["health_window_s"] == 1.0
        back = await poll(lambda: events(store, "config_rolled_back"), timeout=15)
        assert time.monotonic() - t0 < 10
        details = back[0]["details"]
        assert details["rolled_back"] is True and details["from"]["version"] == 2 and details["to"] == {
            "version": 1, "sha256": good["sha256"], "signer": good["signer"]}
        assert any(f.startswith("driver b:") and "no-such-port" in f for f in details["failures"])
        assert Path(details["kept_aside"]).read_bytes() == bad.read_bytes()  # the bad file kept aside
        status = await ask(agent, "status")
        assert running(status)["version"] == 1 and "b" not in status["drivers"]
        assert status["fleet"]["last_rollback"]["failures"] == details["failures"]
        assert agent.drivers.drivers["a"] is driver  # never restarted, by the apply nor the rollback
        # the same file again is refused: it failed its check once
        again = await ask(agent, "apply", path=str(bad), signature=str(signature_path(bad)))
        assert again["applied"] is False and again["reason"] == "rolled_back_before"
        n = len(records(store, type="reading"))
        await poll(lambda: len(records(store, type="reading")) > n + 10)
        agent.stop()
        assert await task == 0
        ts = [parse_rfc3339(r["ts"]) for r in records(store, type="reading", sensor_id="p1")]
        gaps = [b - a for a, b in zip(ts, ts[1:], strict=False)]
        assert max(gaps) < 0.5  # 20 readings a second before, during and after: no gap

    asyncio.run(scenario())


def test_a_trial_interrupted_by_a_clean_stop_is_checked_again_at_the_next_start(tmp_path: Path) -> None:
    """Stopped mid-check, the config on trial runs again at the next start and its check
    starts over (here it cannot pass: driver b never starts, so it is rolled back then)."""
    live = tmp_path / "coldgate.toml"
    live.write_text(text(1, "[fleet]\nhealth_window_s = 30\n"))
    v2 = tmp_path / "v2.toml"
    v2.write_text(text(2, "[fleet]\nhealth_window_s = 3\n", BROKEN))
    store = tmp_path / "store.db"

    async def scenario() -> None:
        agent = Agent(configmod.load(live), config_path=live, transport=FakeTransport)
        task = await start(agent)
        assert (await ask(agent, "apply", path=str(v2)))["applied"]
        agent.stop()  # within v2's 3 s window: no verdict yet
        assert await task == 0
        assert not events(store, "config_rolled_back") and not events(store, "config_confirmed")
        again = Agent(configmod.load(live), config_path=live, transport=FakeTransport)
        task = await start(again)
        assert running(await ask(again, "status"))["version"] == 2
        started = events(store, "config_applied")[-1]["details"]
        assert started["at"] == "start" and started["resumed_trial"] is True
        back = await poll(lambda: events(store, "config_rolled_back"))
        assert any(f.startswith("driver b:") for f in back[0]["details"]["failures"])
        assert running(await ask(again, "status"))["version"] == 1
        again.stop()
        assert await task == 0

    asyncio.run(scenario())


@pytest.mark.slow
def test_an_agent_killed_during_the_health_check_starts_again_on_the_last_good_config(tmp_path: Path) -> None:
    """A config that crashes the agent: the next start finds its trial and rolls it back."""
    section = "[fleet]\nhealth_window_s = 600\n"
    live = tmp_path / "coldgate.toml"
    live.write_text(text(1, section))
    v2 = tmp_path / "v2.toml"
    v2.write_text(text(2, section, BROKEN))  # its check cannot pass before the kill
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "agent", "run", "-c", str(live)]

    def status() -> dict[str, Any]:
        out = subprocess.run([sys.executable, "-m", "agent", "status", "-c", str(live), "--json"],
                             capture_output=True, text=True, timeout=30)
        return dict(json.loads(out.stdout))

    def wait(pred: Any, timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                v = pred()
            except (ValueError, KeyError):
                v = None
            if v:
                return v
            time.sleep(0.1)
        raise AssertionError("not in time")

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait(lambda: status().get("answering"))
        out = subprocess.run([sys.executable, "-m", "agent", "config", "apply", str(v2), "-c", str(live), "--json"],
                             capture_output=True, text=True, timeout=60)
        assert json.loads(out.stdout)["applied"] is True
        assert status()["fleet"]["trial"] is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        st = wait(lambda: (s := status()).get("ready") and s)
        assert st["fleet"]["running"]["version"] == 1  # even though config apply installed v2 as the live file
        assert st["fleet"]["last_rollback"]["failures"][0].startswith("the agent stopped during the health check")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    rolled = [e for e in records(tmp_path / "store.db", type="event") if e["event"] == "config_rolled_back"]
    assert rolled and rolled[0]["details"]["reason"] == "agent_restarted"
