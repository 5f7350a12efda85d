"""The agent in-process: its parts wired by the supervisor, driven through the control socket.

Real SQLite in ``tmp_path``, the shipped simulated driver, and the shipped fake transport
behind the uplink seam (``Agent(..., transport=...)``); the systemd manager is a real
datagram socket passed as ``NOTIFY_SOCKET``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from agent import config as configmod
from agent.control import ControlClient
from agent.daemon import Agent
from agent.exc import ColdgateError, SyncTransient
from agent.store import Store
from agent.timebase import Clock
from agent.uplink.base import Answer, Batch
from agent.uplink.fake import FakeTransport

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
"""

SIM = """
[[drivers]]
name = "{name}"
type = "sim"
seed = 1
speed = {speed}
{extra}
sensors = [{{ id = "{sensor}", interval_s = 0.05 }}]
"""


class SteppableClock(Clock):
    """A clock whose wall time is wrong by ``error_s`` until it is 'synchronised'."""

    def __init__(self, error_s: float) -> None:
        super().__init__("assume_unsynced")
        self.error_s = error_s
        self.is_synced = False

    def now(self) -> float:
        return time.time() + self.error_s

    def synced(self) -> bool:
        return self.is_synced

    def sync(self) -> None:
        self.error_s = 0.0
        self.is_synced = True


async def poll(predicate: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


def records(path: Path, **kw: Any) -> list[dict[str, Any]]:
    with Store.open(path, gateway_id="gw-daemon", create=False, check=False) as s:
        return s.records(**kw)


def events(path: Path, name: str) -> list[dict[str, Any]]:
    return [r for r in records(path, type="event") if r["event"] == name]


def write(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "c.toml"
    f.write_text(text)
    return f


async def start(agent: Agent) -> asyncio.Task[int]:
    task = asyncio.create_task(agent.run())
    await poll(lambda: agent.ready.is_set() or task.done())
    if task.done():
        task.result()
    return task


async def ask(agent: Agent, cmd: str, **args: Any) -> Any:
    """A request over the real control socket, as the CLI makes it."""
    client = ControlClient(agent.config.control.socket, timeout=30)
    return await asyncio.to_thread(client.request, cmd, **args)


def test_readings_stamped_unsynced_are_corrected_by_a_clock_step_event_when_the_clock_syncs(tmp_path: Path) -> None:
    cfg_path = write(tmp_path, BASE + SIM.format(name="sim", speed=1, extra="", sensor="p1"))
    cfg = configmod.load(cfg_path)
    clock = SteppableClock(error_s=-86_400.0)  # booted a day behind
    store_path = tmp_path / "store.db"
    started = time.time()

    async def scenario() -> None:
        agent = Agent(cfg, config_path=cfg_path, clock=clock)
        task = await start(agent)
        await poll(lambda: len(records(store_path, type="reading")) >= 20)
        clock.sync()
        step = await poll(lambda: events(store_path, "clock_step"))
        await poll(lambda: any(r["time_quality"] == "synced" for r in records(store_path, type="reading")))
        agent.stop()
        assert await task == 0
        details = step[0]["details"]
        unsynced = [r for r in records(store_path) if r["time_quality"] == "unsynced"]
        offsets = {}
        for c in details["corrections"]:
            for seq in range(c["first_seq"], c["last_seq"] + 1):
                offsets[seq] = c["offset_s"]
        assert {r["seq"] for r in unsynced} <= set(offsets)
        # records stamped by the wrong clock get a day added; any stamped after the clock was
        # set but before the agent noticed get ~0: every corrected time is when it really happened
        assert any(o == pytest.approx(86_400.0, abs=0.5) for o in offsets.values())
        from agent.timebase import parse_rfc3339

        for r in unsynced:
            assert started - 1 <= parse_rfc3339(r["ts"]) + offsets[r["seq"]] <= time.time() + 1
        assert all(r["time_quality"] in ("synced", "corrected") for r in records(store_path, type="reading")
                   if r["seq"] > step[0]["seq"])

    asyncio.run(scenario())


def test_readings_not_yet_committed_when_the_clock_syncs_are_restamped_and_marked_corrected(tmp_path: Path) -> None:
    """What the writer still holds when the clock becomes synchronised is stamped right."""
    cfg_path = write(tmp_path, BASE.replace("commit_interval_s = 0.05", "commit_interval_s = 1.0")
                     + SIM.format(name="sim", speed=1, extra="", sensor="p1"))
    clock = SteppableClock(error_s=-3600.0)
    store_path = tmp_path / "store.db"

    async def scenario() -> None:
        agent = Agent(configmod.load(cfg_path), config_path=cfg_path, clock=clock)
        task = await start(agent)
        await poll(lambda: records(store_path, type="reading"))
        # a commit just happened; the next waits up to a second: readings are held now
        await poll(lambda: agent.ingest.items)
        clock.sync()
        await poll(lambda: events(store_path, "clock_step"))
        agent.stop()
        await task
        corrected = [r for r in records(store_path, type="reading") if r["time_quality"] == "corrected"]
        assert corrected, "readings held at the moment of sync were not restamped"
        from agent.timebase import parse_rfc3339

        for r in corrected:  # restamped: the right time, not an hour early
            assert abs(parse_rfc3339(r["ts"]) - time.time()) < 60

    asyncio.run(scenario())


def test_reload_applies_a_valid_config_and_rejects_a_broken_one_keeping_the_running_config(tmp_path: Path) -> None:
    cfg_path = write(tmp_path, BASE + SIM.format(name="sim", speed=1, extra="", sensor="p1"))
    store_path = tmp_path / "store.db"

    async def scenario() -> None:
        agent = Agent(configmod.load(cfg_path), config_path=cfg_path)
        task = await start(agent)
        await poll(lambda: records(store_path, type="reading"))
        cfg_path.write_text(BASE + SIM.format(name="sim2", speed=1, extra="", sensor="p2"))
        verdict = await ask(agent, "reload")
        assert verdict["applied"] is True and verdict["drivers"]["started"] == ["sim2"]
        await poll(lambda: any(r["sensor_id"] == "p2" for r in records(store_path, type="reading")))
        cfg_path.write_text(BASE + "bogus_key = 1\n" + SIM.format(name="sim3", speed="-1", extra="", sensor="p3"))
        verdict = await ask(agent, "reload")
        assert verdict["applied"] is False
        assert set(agent.drivers.drivers) == {"sim2"}
        before = len(records(store_path, type="reading", sensor_id="p2"))
        await poll(lambda: len(records(store_path, type="reading", sensor_id="p2")) > before)
        agent.stop()
        await task
        applied, rejected = events(store_path, "config_applied"), events(store_path, "config_rejected")
        assert [a["details"]["at"] for a in applied] == ["start", "reload"]
        assert len(rejected) == 1
        problems = " ".join(rejected[0]["details"]["problems"])
        assert "bogus_key" in problems and "speed" in problems

    asyncio.run(scenario())


def test_a_reload_that_changes_only_rules_keeps_every_driver_running(tmp_path: Path) -> None:
    """Finding 10: a reload restarted every driver (readings in flight at risk, BLE scan stopped)."""
    drivers = SIM.format(name="a", speed=1, extra="", sensor="p1") + SIM.format(name="b", speed=1, extra="",
                                                                                  sensor="p2")
    sensors = '\n[[sensors]]\nid = "p1"\nprofile = "{p}"\n'
    cfg_path = write(tmp_path, BASE + drivers + sensors.format(p="2-8C"))
    store_path = tmp_path / "store.db"

    async def scenario() -> None:
        agent = Agent(configmod.load(cfg_path), config_path=cfg_path)
        task = await start(agent)
        before = dict(agent.drivers.drivers)
        await poll(lambda: records(store_path, type="reading", sensor_id="p2"))
        cfg_path.write_text(BASE + drivers + sensors.format(p="15-25C"))
        verdict = await ask(agent, "reload")
        assert verdict["applied"] and verdict["drivers"] == {"started": [], "stopped": [], "restarted": [],
                                                             "kept": ["a", "b"]}
        assert agent.drivers.drivers == before  # the same driver objects, never stopped
        assert all(d.status.state == "running" for d in before.values())
        assert agent.engine.sensors() == {"p1": "15-25C"}
        # a changed option restarts that driver only
        cfg_path.write_text(BASE + drivers.replace("seed = 1", "seed = 2", 1) + sensors.format(p="15-25C"))
        verdict = await ask(agent, "reload")
        assert verdict["drivers"]["restarted"] == ["a"] and verdict["drivers"]["kept"] == ["b"]
        assert agent.drivers.drivers["b"] is before["b"] and agent.drivers.drivers["a"] is not before["a"]
        agent.stop()
        await task

    asyncio.run(scenario())


def test_a_failing_driver_is_reported_once_and_restarted_while_the_others_go_on(tmp_path: Path) -> None:
    text = BASE + SIM.format(name="good", speed=1, extra="", sensor="ok") + SIM.format(
        name="flaky", speed=0, extra="limit = 100000\nfault_after_readings = 30\nchunk = 10", sensor="bad")
    cfg_path = write(tmp_path, text)
    store_path = tmp_path / "store.db"

    async def scenario() -> None:
        agent = Agent(configmod.load(cfg_path), config_path=cfg_path)
        task = await start(agent)
        await poll(lambda: agent.drivers.drivers["flaky"].status.restarts >= 1)
        good_before = len(records(store_path, type="reading", sensor_id="ok"))
        await poll(lambda: len(records(store_path, type="reading", sensor_id="ok")) > good_before)
        agent.stop()
        await task
        errors = events(store_path, "driver_error")
        assert errors and all(e["details"]["driver"] == "flaky" for e in errors)
        assert "simulated fault" in errors[0]["details"]["message"]

    asyncio.run(scenario())


def test_stop_commits_everything_taken_and_frees_the_store_for_the_next_agent(tmp_path: Path) -> None:
    cfg_path = write(tmp_path, BASE.replace("commit_interval_s = 0.05", "commit_interval_s = 1.0")
                     + SIM.format(name="sim", speed=0, extra="limit = 5000", sensor="p1"))
    store_path = tmp_path / "store.db"

    async def scenario() -> None:
        agent = Agent(configmod.load(cfg_path), config_path=cfg_path)
        task = await start(agent)
        await poll(lambda: agent.drivers.drivers["sim"].status.counters["readings"] >= 5000)
        agent.stop()
        assert await task == 0
        assert len(records(store_path, type="reading")) == 5000
        assert not agent.config.control.socket.exists()
        names = [e["event"] for e in records(store_path, type="event")]
        assert names[:3] == ["stream_started", "agent_started", "config_applied"]
        assert names[-2:] == ["agent_stopped", "chain_checkpoint"]  # the stop is signed
        again = Agent(configmod.load(cfg_path), config_path=cfg_path)  # the lock and the socket are free
        task = await start(again)
        again.stop()
        assert await task == 0

    asyncio.run(scenario())


def test_a_second_agent_on_the_same_store_or_socket_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    cfg_path = write(tmp_path, BASE + SIM.format(name="sim", speed=1, extra="", sensor="p1"))
    other = tmp_path / "other"
    other.mkdir()
    other_cfg = write(other, BASE.replace('path = "store.db"', f'path = "{tmp_path}/x.db"')
                      .replace('socket = "control.sock"', f'socket = "{tmp_path}/control.sock"'))

    async def scenario() -> None:
        first = Agent(configmod.load(cfg_path), config_path=cfg_path)
        task = await start(first)
        with pytest.raises(ColdgateError, match="another coldgate"):
            await Agent(configmod.load(cfg_path), config_path=cfg_path).run()
        with pytest.raises(ColdgateError, match="another coldgate already runs: it answers on"):
            await Agent(configmod.load(other_cfg), config_path=other_cfg).run()
        assert (await ask(first, "ping"))["pid"] == os.getpid()  # the first one is unharmed
        first.stop()
        await task

    asyncio.run(scenario())


def test_a_stale_socket_left_by_a_killed_agent_is_replaced(tmp_path: Path) -> None:
    cfg_path = write(tmp_path, BASE + SIM.format(name="sim", speed=1, extra="", sensor="p1"))
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "control.sock"))
    stale.close()  # the file stays; nobody listens

    async def scenario() -> None:
        agent = Agent(configmod.load(cfg_path), config_path=cfg_path)
        task = await start(agent)
        assert (await ask(agent, "ping"))["gateway_id"] == "gw-daemon"
        assert oct((tmp_path / "control.sock").stat().st_mode & 0o777) == oct(0o660)
        agent.stop()
        await task

    asyncio.run(scenario())


def test_a_commit_wakes_the_uplink_at_once_instead_of_waiting_for_the_idle_interval(tmp_path: Path) -> None:
    """Finding 4: a reading waited for ``uplink.interval_s`` after each pass."""
    cfg_path = write(tmp_path, BASE + '\n[uplink]\nurl = "http://unused.invalid"\ninterval_s = 3600\n'
                     + SIM.format(name="sim", speed=1, extra="", sensor="p1"))
    fake = FakeTransport()

    async def scenario() -> None:
        agent = Agent(configmod.load(cfg_path), config_path=cfg_path, transport=lambda: fake)
        task = await start(agent)
        first = await poll(lambda: len(fake.stored) >= 1)
        assert first
        # with an hour between idle polls, new readings still go out within moments of their commit
        n = len(fake.stored)
        t0 = time.monotonic()
        await poll(lambda: len(fake.stored) >= n + 20, timeout=10)
        assert time.monotonic() - t0 < 10
        agent.stop()
        await task

    asyncio.run(scenario())


def test_sync_over_the_control_socket_runs_a_pass_and_answers_with_its_result(tmp_path: Path) -> None:
    cfg_path = write(tmp_path, BASE + '\n[uplink]\nurl = "http://unused.invalid"\nbackoff_base_s = 600\n'
                     'backoff_cap_s = 600\n' + SIM.format(name="sim", speed=1, extra="", sensor="p1"))
    down = {"on": True}

    def handler(fake: FakeTransport, batch: Batch) -> Answer:
        if down["on"]:
            raise SyncTransient("connection refused")
        return fake.store(batch)

    fake = FakeTransport(handler)

    async def scenario() -> None:
        agent = Agent(configmod.load(cfg_path), config_path=cfg_path, transport=lambda: fake)
        task = await start(agent)
        await poll(lambda: agent.uplink.state.result == "transient")
        assert agent.uplink.state.next_retry_mono is not None  # backing off for minutes
        down["on"] = False
        answer = await ask(agent, "sync", timeout=10)
        assert answer["result"] in ("ok", "idle") and answer["last_error"] is None
        assert fake.stored
        agent.stop()
        await task

    asyncio.run(scenario())


def test_an_alarm_is_acknowledged_through_the_control_socket_with_who_and_why(tmp_path: Path) -> None:
    text = BASE + SIM.format(name="sim", speed=1, extra="", sensor="p1").replace(
        'interval_s = 0.05 }', 'interval_s = 0.05, setpoint = 12.0 }') + """
[rules.profiles.fast]
extends = "2-8C"
[rules.profiles.fast.rules.high]
type = "above"
limit = 8.0
delay_s = 0
[[sensors]]
id = "p1"
profile = "fast"
"""
    cfg_path = write(tmp_path, text)
    store_path = tmp_path / "store.db"

    async def scenario() -> None:
        agent = Agent(configmod.load(cfg_path), config_path=cfg_path)
        task = await start(agent)
        raised = await poll(lambda: [r for r in records(store_path, type="alarm") if r["state"] == "raised"])
        alarm_id = raised[0]["alarm_id"]
        from agent.exc import ControlRefused

        with pytest.raises(ControlRefused, match="non-empty"):
            await ask(agent, "alarm_ack", alarm_id=alarm_id, by="qa", reason=" ")
        with pytest.raises(ControlRefused, match="no active alarm"):
            await ask(agent, "alarm_ack", alarm_id="nope", by="qa", reason="checked")
        change = await ask(agent, "alarm_ack", alarm_id=alarm_id, by="qa.lead", reason="probe checked, box closed")
        assert change["state"] == "acknowledged"
        acks = [r for r in records(store_path, type="alarm") if r["state"] == "acknowledged"]
        assert acks and acks[0]["by"] == "qa.lead" and acks[0]["reason"] == "probe checked, box closed"
        agent.stop()
        await task

    asyncio.run(scenario())


def test_status_over_the_control_socket_shows_every_part(tmp_path: Path) -> None:
    cfg_path = write(tmp_path, BASE + SIM.format(name="sim", speed=1, extra="", sensor="p1"))

    async def scenario() -> None:
        agent = Agent(configmod.load(cfg_path), config_path=cfg_path)
        task = await start(agent)
        await poll(lambda: agent.ingest.last_seen)
        st = await ask(agent, "status")
        assert st["running"] and st["answering"] and st["ready"] and st["stale"] == []
        assert st["drivers"]["sim"]["state"] == "running"
        assert st["store"]["head_seq"] >= 3 and st["writer"]["error"] is None
        assert "temperature" in st["sensors"]["p1"]["readings"]
        assert st["sync"]["result"] in ("offline", "never")
        agent.stop()
        await task

    asyncio.run(scenario())


class NotifySocket:
    """The systemd manager's end of ``NOTIFY_SOCKET``: a real datagram socket."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.path = path
        self.messages: list[dict[str, str]] = []

    def drain(self) -> list[dict[str, str]]:
        while True:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                return self.messages
            self.messages.append(dict(line.split("=", 1) for line in data.decode().splitlines()))

    def count(self, key: str) -> int:
        return sum(1 for m in self.drain() if key in m)

    def close(self) -> None:
        self.sock.close()


def test_systemd_hears_ready_once_the_store_is_open_and_the_drivers_started_then_watchdog_pings(
        tmp_path: Path) -> None:
    cfg_path = write(tmp_path, BASE + SIM.format(name="sim", speed=1, extra="", sensor="p1"))
    manager = NotifySocket(tmp_path / "notify.sock")
    env = {"NOTIFY_SOCKET": str(manager.path), "WATCHDOG_USEC": "400000"}

    async def scenario() -> None:
        agent = Agent(configmod.load(cfg_path), config_path=cfg_path, env=env)
        task = await start(agent)
        ready = await poll(lambda: [m for m in manager.drain() if "READY" in m])
        assert agent.writer.store is not None and agent.drivers.drivers["sim"].status.state in ("starting", "running")
        assert "gateway gw-daemon" in ready[0]["STATUS"]
        await poll(lambda: manager.count("WATCHDOG") >= 3, timeout=10)
        agent.stop()
        await task
        assert any("STOPPING" in m for m in manager.drain())

    try:
        asyncio.run(scenario())
    finally:
        manager.close()


def test_a_stuck_writer_stops_the_watchdog_feed_so_systemd_restarts_the_agent(tmp_path: Path) -> None:
    """Finding 6: nothing fed a watchdog; a frozen agent looked healthy."""
    import threading

    cfg_path = write(tmp_path, BASE + SIM.format(name="sim", speed=1, extra="", sensor="p1"))
    manager = NotifySocket(tmp_path / "notify.sock")
    env = {"NOTIFY_SOCKET": str(manager.path), "WATCHDOG_USEC": "400000"}  # stuck after 0.2 s
    release = threading.Event()

    async def scenario() -> None:
        agent = Agent(configmod.load(cfg_path), config_path=cfg_path, env=env)
        task = await start(agent)
        await poll(lambda: manager.count("WATCHDOG") >= 2)
        agent.intake.call(lambda: release.wait(30))  # the writer hangs, as on a dead SD card
        await poll(lambda: agent.stuck is not None)
        assert "writer stuck" in agent.stuck
        manager.drain()
        manager.messages.clear()
        await asyncio.sleep(1.0)  # the feed interval is 0.2 s: five pings would have come
        msgs = manager.drain()
        assert not [m for m in msgs if "WATCHDOG" in m]
        assert any("STUCK" in m.get("STATUS", "") for m in msgs) or agent.stuck
        release.set()
        await poll(lambda: agent.stuck is None)
        await poll(lambda: manager.count("WATCHDOG") >= 1)
        agent.stop()
        await task

    try:
        asyncio.run(scenario())
    finally:
        release.set()
        manager.close()
