"""The daemon in-process: clock correction, config reload, driver failure isolation, shutdown."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from agent import config as configmod
from agent.daemon import Agent, running_pid
from agent.store import Store
from agent.timebase import Clock

BASE = """
gateway_id = "gw-daemon"
[store]
path = "store.db"
commit_interval_s = 0.1
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
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


def records(path: Path, **kw: Any) -> list[dict[str, Any]]:
    with Store.open(path, gateway_id="gw-daemon", create=False, check=False) as s:
        return s.records(**kw)


def write(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "c.toml"
    f.write_text(text)
    return f


async def run_agent(agent: Agent) -> asyncio.Task[int]:
    task = asyncio.create_task(agent.run())
    await poll(lambda: agent.store is not None)
    return task


def test_readings_stamped_unsynced_are_corrected_by_a_clock_step_event_when_the_clock_syncs(tmp_path: Path) -> None:
    cfg_path = write(tmp_path, BASE + SIM.format(name="sim", speed=1, extra="", sensor="p1"))
    cfg = configmod.load(cfg_path)
    clock = SteppableClock(error_s=-86_400.0)  # booted a day behind
    store_path = tmp_path / "store.db"

    started = time.time()

    async def scenario() -> None:
        agent = Agent(cfg, config_path=cfg_path, clock=clock)
        task = await run_agent(agent)
        await poll(lambda: len(records(store_path, type="reading")) >= 20)
        clock.sync()
        step = await poll(lambda: [r for r in records(store_path, type="event") if r["event"] == "clock_step"])
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


def test_reload_applies_a_valid_config_and_rejects_a_broken_one_keeping_the_running_config(tmp_path: Path) -> None:
    cfg_path = write(tmp_path, BASE + SIM.format(name="sim", speed=1, extra="", sensor="p1"))
    store_path = tmp_path / "store.db"

    async def scenario() -> None:
        agent = Agent(configmod.load(cfg_path), config_path=cfg_path)
        task = await run_agent(agent)
        await poll(lambda: records(store_path, type="reading"))
        cfg_path.write_text(BASE + SIM.format(name="sim2", speed=1, extra="", sensor="p2"))
        assert await agent.reload() is True
        await poll(lambda: any(r["sensor_id"] == "p2" for r in records(store_path, type="reading")))
        cfg_path.write_text(BASE + "bogus_key = 1\n" + SIM.format(name="sim3", speed="-1", extra="", sensor="p3"))
        assert await agent.reload() is False
        assert set(agent.drivers) == {"sim2"}
        before = len(records(store_path, type="reading", sensor_id="p2"))
        await poll(lambda: len(records(store_path, type="reading", sensor_id="p2")) > before)
        agent.stop()
        await task
        events = [r for r in records(store_path, type="event")]
        applied = [e for e in events if e["event"] == "config_applied"]
        rejected = [e for e in events if e["event"] == "config_rejected"]
        assert [a["details"]["at"] for a in applied] == ["start", "reload"]
        assert len(rejected) == 1
        problems = " ".join(rejected[0]["details"]["problems"])
        assert "bogus_key" in problems and "speed" in problems

    asyncio.run(scenario())


def test_a_failing_driver_is_reported_and_restarted_while_the_others_go_on(tmp_path: Path) -> None:
    text = BASE + SIM.format(name="good", speed=1, extra="", sensor="ok") + SIM.format(
        name="flaky", speed=0, extra="limit = 100000\nfault_after_readings = 30\nchunk = 10", sensor="bad")
    cfg_path = write(tmp_path, text)
    store_path = tmp_path / "store.db"

    async def scenario() -> None:
        agent = Agent(configmod.load(cfg_path), config_path=cfg_path)
        agent_drivers_backoff = 0.01
        task = await run_agent(agent)
        agent.drivers["flaky"].backoff_base_s = agent_drivers_backoff  # type: ignore[misc]
        await poll(lambda: len([e for e in records(store_path, type="event") if e["event"] == "driver_error"]) >= 2)
        await poll(lambda: agent.drivers["flaky"].status.restarts >= 2)
        good_before = len(records(store_path, type="reading", sensor_id="ok"))
        await poll(lambda: len(records(store_path, type="reading", sensor_id="ok")) > good_before)
        agent.stop()
        await task
        errors = [e for e in records(store_path, type="event") if e["event"] == "driver_error"]
        assert all(e["details"]["driver"] == "flaky" for e in errors)
        assert "simulated fault" in errors[0]["details"]["message"]

    asyncio.run(scenario())


def test_stop_commits_everything_buffered_and_releases_the_pid_lock(tmp_path: Path) -> None:
    cfg_path = write(tmp_path, BASE.replace("commit_interval_s = 0.1", "commit_interval_s = 1.0")
                     + SIM.format(name="sim", speed=0, extra="limit = 5000", sensor="p1"))
    store_path = tmp_path / "store.db"

    async def scenario() -> None:
        agent = Agent(configmod.load(cfg_path), config_path=cfg_path)
        task = await run_agent(agent)
        assert running_pid(store_path) is not None
        await poll(lambda: agent.drivers["sim"].status.counters["readings"] >= 5000)
        agent.stop()
        assert await task == 0
        assert running_pid(store_path) is None
        assert len(records(store_path, type="reading")) == 5000

    asyncio.run(scenario())


def test_a_second_agent_on_the_same_store_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    cfg_path = write(tmp_path, BASE + SIM.format(name="sim", speed=1, extra="", sensor="p1"))

    async def scenario() -> None:
        first = Agent(configmod.load(cfg_path), config_path=cfg_path)
        task = await run_agent(first)
        from agent.exc import StoreError

        with pytest.raises(StoreError, match="another coldgate"):
            await Agent(configmod.load(cfg_path), config_path=cfg_path).run()
        first.stop()
        await task

    asyncio.run(scenario())


def test_a_full_disk_keeps_readings_in_memory_until_it_can_write_and_counts_any_overflow_as_data_loss(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import agent.daemon as daemon_mod

    monkeypatch.setattr(daemon_mod, "MAX_BUFFER", 300)
    cfg_path = write(tmp_path, BASE + SIM.format(name="sim", speed=0, extra="limit = 2000\nchunk = 50",
                                                 sensor="p1"))
    store_path = tmp_path / "store.db"

    async def scenario() -> None:
        agent = Agent(configmod.load(cfg_path), config_path=cfg_path)
        # the store's file may not grow: SQLite answers "database or disk is full", as on a full disk
        task = await run_agent(agent)
        assert agent.store is not None
        conn = agent.store.conn
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")
        await poll(lambda: agent.drivers["sim"].status.counters["readings"] >= 2000)
        await poll(lambda: agent._store_error is not None)
        assert "full" in agent._store_error
        conn.execute("PRAGMA max_page_count = 1073741823")  # space again
        await poll(lambda: agent._store_error is None and not agent._pending_retry)
        agent.stop()
        await task
        kept = records(store_path, type="reading")
        losses = [e for e in records(store_path, type="event") if e["event"] == "data_loss"]
        assert len(losses) == 1
        d = losses[0]["details"]
        assert d["reason"] == "store_unwritable" and "full" in d["error"]
        # every reading is either stored or counted, none vanished silently
        assert len(kept) + d["count"] == 2000 and d["sensors"] == {"p1": d["count"]}
        assert d["count"] > 0

    asyncio.run(scenario())


def test_an_unexpected_error_in_a_commit_keeps_the_readings_and_the_writer_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg_path = write(tmp_path, BASE + SIM.format(name="sim", speed=0, extra="limit = 500\nchunk = 50",
                                                 sensor="p1"))
    store_path = tmp_path / "store.db"

    async def scenario() -> None:
        agent = Agent(configmod.load(cfg_path), config_path=cfg_path)
        task = await run_agent(agent)
        assert agent.store is not None
        real = agent.store.append
        failures = {"left": 3}

        def flaky(items: Any, **kw: Any) -> Any:
            if failures["left"]:
                failures["left"] -= 1
                raise RuntimeError("a bug, not a disk")
            return real(items, **kw)

        monkeypatch.setattr(agent.store, "append", flaky)
        await poll(lambda: agent.drivers["sim"].status.counters["readings"] >= 500)
        await poll(lambda: failures["left"] == 0 and agent._store_error is None and not agent._pending_retry)
        agent.stop()
        await task
        assert len(records(store_path, type="reading")) == 500

    asyncio.run(scenario())
