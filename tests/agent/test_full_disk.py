"""Issue 9 item 6 end to end: the agent on a real filesystem that fills up, then has room again.

The agent runs in-process (``agent.daemon.Agent``) with the shipped simulated driver and
the shipped fake transport, its store on a small tmpfs (``disk_helpers``). The disk is
filled to the last byte with a ballast file while readings and acknowledgements flow; the
uplink goes down and comes back while the disk is still full; then the ballast goes. 0.1
livelocked here: acknowledgements failed, the head never moved, 50,000 duplicate
receipts, 101 tracebacks, and the readings buffered were dropped at SIGTERM unsaid.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from agent import config as configmod
from agent.daemon import Agent
from agent.exc import SyncTransient
from agent.store import Store, spare_path
from agent.uplink.base import Answer, Batch
from agent.uplink.fake import FakeTransport
from tests.agent.disk_helpers import fill, free_bytes, tmpfs

CONFIG = """
gateway_id = "gw-full"
[store]
path = "{disk}/store.db"
quota_mb = 8
commit_interval_s = 0.05
[control]
socket = "{tmp}/control.sock"
[time]
sync_source = "assume_synced"
[recording]
record_interval_s = 0
[uplink]
batch_size = 200
interval_s = 0.05
backoff_base_s = 0.01
backoff_cap_s = 0.05
[[drivers]]
name = "sim"
type = "sim"
seed = 3
speed = 1
sensors = [{sensors}]
"""


async def poll(predicate: Any, timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"{what} not met in {timeout:g} s")


class Uplink:
    """The fake central side, switchable down (every send a transient failure) and up."""

    def __init__(self) -> None:
        self.up = True
        self.fake = FakeTransport(self.answer)

    def answer(self, fake: FakeTransport, batch: Batch) -> Answer:
        if not self.up:
            raise SyncTransient("central side down (test)")
        return fake.store(batch)


def test_a_full_disk_is_survived_and_the_agent_recovers_by_itself(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with tmpfs(tmp_path / "disk", 8 << 20) as disk:
        sensors = ", ".join(f'{{ id = "p{i}", interval_s = 0.01 }}' for i in range(5))
        cfg_path = tmp_path / "c.toml"
        cfg_path.write_text(CONFIG.format(disk=disk, tmp=tmp_path, sensors=sensors))
        cfg = configmod.load(cfg_path)
        uplink = Uplink()
        store_path = disk / "store.db"

        async def scenario() -> dict[str, Any]:
            agent = Agent(cfg, config_path=cfg_path, transport=lambda: uplink.fake)
            task = asyncio.create_task(agent.run())
            await poll(lambda: agent.ready.is_set() or task.done(), what="agent ready")

            def writer_store() -> Store:
                store = agent.writer.store
                assert store is not None
                return store

            def head() -> int:
                return writer_store().head()[0]

            await poll(lambda: uplink.fake.stored and head() > 300, what="records flowing and acknowledged")
            # the uplink goes down, and something fills the disk to the last byte
            uplink.up = False
            ballast = fill(disk)
            assert free_bytes(disk) < (64 << 10)
            await poll(lambda: writer_store().refusals.active, what="readings refused on the full disk")
            full_head = head()
            # an event (an alarm would do the same) still goes in, into what the disk keeps for them
            agent.intake.put_item(agent.stamper.event("operator_note", {"text": "disk full drill"}))
            await poll(lambda: head() > full_head, what="the head moving on the full disk")
            # the central side answers again while the disk is still full: acknowledgements
            # go through, acknowledged records make room, readings go in again
            uplink.up = True
            agent.uplink.sync_now()
            await poll(lambda: not writer_store().refusals.active, what="refusal ending with the disk still full")
            back_head = head()
            await poll(lambda: head() > back_head + 200, what="readings accepted again")
            assert ballast.exists()
            ballast.unlink()  # and the disk has room again
            await poll(lambda: spare_path(store_path).exists(), what="the spare made again")
            room_head = head()
            await poll(lambda: head() > room_head + 200, what="the head moving after the disk has room")
            await poll(lambda: writer_store().stats()["pending"] < 50 and uplink.fake.stored, what="uplink drained")
            produced = agent.drivers.status()["sim"]["counters"]["readings"]
            agent.stop()
            assert await task == 0
            return {"produced": produced}

        result = asyncio.run(scenario())
        with Store.open(store_path, gateway_id="gw-full", create=False, check=False) as s:
            stream, head_seq, pending = s.stream_id, s.head()[0], s.pending(10**6)
        # what the central side holds, and what is still pending locally, is every seq once
        sent = {r["seq"]: r for r in uplink.fake.records(stream)}
        kept = {seq for seq, _, _ in pending}
        assert set(sent) | kept == set(range(1, head_seq + 1))
        losses = [r["details"] for r in sent.values() if r["type"] == "event" and r["event"] == "data_loss"]
        assert losses and losses[0]["reason"] == "store_full" and losses[0]["limit"] == "filesystem"
        assert any(not d["still_refusing"] for d in losses)
        lost = sum(d.get("readings", d["count"]) for d in losses)
        readings = sum(1 for r in sent.values() if r["type"] == "reading") + sum(
            1 for seq, body, _ in pending if '"type":"reading"' in body)
        # nothing lost unsaid: every reading the driver delivered is stored or counted (the
        # last moments' readings may still be on their way in at stop: a few of them)
        assert result["produced"] - 20 <= readings + lost <= result["produced"] + 20
        assert uplink.fake.duplicates < 2000  # 0.1: 50,000 duplicate receipts
        tracebacks = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
        assert not tracebacks, [r.getMessage() for r in tracebacks]


def test_an_agent_restarted_on_a_disk_already_full_runs_says_so_and_takes_readings_when_room_returns(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # 0.1 could not be restarted out of a full disk: "a restart does not help".
    caplog.set_level(logging.INFO)
    with tmpfs(tmp_path / "disk", 8 << 20) as disk:
        sensors = ", ".join(f'{{ id = "p{i}", interval_s = 0.01 }}' for i in range(3))
        cfg_path = tmp_path / "c.toml"
        cfg_path.write_text(CONFIG.format(disk=disk, tmp=tmp_path, sensors=sensors))
        cfg = configmod.load(cfg_path)
        uplink = Uplink()
        store_path = disk / "store.db"

        async def first_run() -> None:
            agent = Agent(cfg, config_path=cfg_path, transport=lambda: uplink.fake)
            task = asyncio.create_task(agent.run())
            await poll(lambda: agent.ready.is_set() and agent.writer.store is not None
                       and agent.writer.store.head()[0] > 100, what="a first run's records")
            agent.stop()
            assert await task == 0

        asyncio.run(first_run())
        uplink.up = False  # nothing acknowledged on the full disk: no room made by the uplink
        ballast = fill(disk)
        assert free_bytes(disk) < (64 << 10)

        async def second_run() -> dict[str, Any]:
            agent = Agent(cfg, config_path=cfg_path, transport=lambda: uplink.fake)
            task = asyncio.create_task(agent.run())
            await poll(lambda: agent.ready.is_set() or task.done(), what="agent ready on the full disk")
            assert not task.done(), "the agent must run on a full disk, not exit"
            await poll(lambda: agent.drivers.status()["sim"]["counters"]["readings"] > 300,
                       what="readings produced while the disk is full")
            status = await agent.status()
            assert status["ready"] is True
            ballast.unlink()
            store = await poll(lambda: agent.writer.store, what="the store open")
            room_head = store.head()[0]
            await poll(lambda: store.head()[0] > room_head + 200 and agent.writer.store_error is None,
                       what="the head moving once the disk has room")
            produced = agent.drivers.status()["sim"]["counters"]["readings"]
            agent.stop()
            assert await task == 0
            return {"produced": produced}

        result = asyncio.run(second_run())
        with Store.open(store_path, gateway_id="gw-full", create=False, check=False) as s:
            records = [r for r in s.records()]
        events = [(r["event"], r.get("details", {})) for r in records if r["type"] == "event"]
        started = [d for e, d in events if e == "agent_started"]
        assert len(started) == 2, "the run on the full disk shows in the stream"
        second = max(r["seq"] for r in records if r["type"] == "event" and r["event"] == "agent_started")
        readings = sum(1 for r in records if r["type"] == "reading" and r["seq"] > second)
        lost = sum(d.get("readings", d.get("count", 0)) for e, d in events if e == "data_loss")
        # every reading of the second run is stored or counted in a data_loss event
        assert result["produced"] - 20 <= readings + lost <= result["produced"] + 20
        tracebacks = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
        assert not tracebacks, [r.getMessage() for r in tracebacks]
