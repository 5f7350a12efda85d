"""The store's room (issue 9 items 6 and 7): live pages, the filesystem, the spare, episodes.

Real SQLite; a full disk is a real tmpfs filled to the last byte with a ballast file
(``disk_helpers``), a quota is the store's own.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time

from agent.store import Store, spare_path
from agent.timebase import Clock
from tests.agent.disk_helpers import fill, free_bytes, tmpfs

T0 = 1_790_000_000.0


def reading(i: int, sensor: str = "p1") -> dict[str, Any]:
    return {"type": "reading", "ts": T0 + i * 0.1, "time_quality": "synced", "sensor_id": sensor,
            "quantity": "temperature", "value": 4.0 + (i % 10) / 10, "unit": "Cel"}


def alarm(i: int) -> dict[str, Any]:
    return {"type": "alarm", "ts": T0 + i, "time_quality": "synced", "alarm_id": f"a{i}", "rule": "high",
            "sensor_id": "p1", "state": "raised", "severity": "alarm", "started_at": T0 + i}


def event(i: int, pad: int = 200) -> dict[str, Any]:
    return {"type": "event", "ts": T0 + i, "time_quality": "synced", "event": "note", "details": {"pad": "x" * pad}}


#: what ``drain`` sent, by store and seq: the receiver's copy (the store deletes acknowledged
#: records, data_loss events included, when it needs room)
SENT: dict[str, dict[int, dict[str, Any]]] = {}


def losses(s: Store) -> list[dict[str, Any]]:
    """Every data_loss event's details, in the store or already sent."""
    recs = {**SENT.get(s.stream_id, {}), **{r["seq"]: r for r in s.records(type="event")}}
    return [r["details"] for _, r in sorted(recs.items()) if r.get("event") == "data_loss"]


def fill_with_unsent(s: Store, start: int = 0) -> int:
    """Append readings until the store refuses them; the next index."""
    i = start
    while not s.refusals.active:
        s.append([reading(i + j) for j in range(50)])
        i += 50
        assert i < 10**6, "the store never refused a reading"
    return i


def drain(s: Store, n: int = 500) -> int:
    """Send and acknowledge up to ``n`` records, as the uplink does; how many."""
    rows = s.pending(n)
    sent = SENT.setdefault(s.stream_id, {})
    for seq, body, _ in rows:
        sent[seq] = json.loads(body)
    s.ack(r[0] for r in rows)
    return len(rows)


# -- item 6: a full disk -----------------------------------------------------------------
def test_acknowledgements_and_checkpoints_go_through_on_a_filesystem_full_to_the_last_byte(tmp_path: Path) -> None:
    """0.1: with the disk full, acknowledgements were writes and failed, so nothing could be
    freed; the WAL could not be checkpointed either (it needed the database to grow)."""
    with tmpfs(tmp_path / "disk", 6 << 20) as disk:
        s = Store.open(disk / "store.db", gateway_id="gw", quota_bytes=8 << 20, clock=Clock("assume_synced"))
        try:
            s.append([reading(i) for i in range(2000)])  # new pages, still in the WAL
            fill(disk)
            assert free_bytes(disk) == 0
            acked = 0
            while drain(s):  # the uplink up: every batch acknowledged, none sent twice
                acked += 1
                assert acked < 100
            assert s.stats()["pending"] == 0 and s.stats()["acks_held"] == 0
            with sqlite3.connect(disk / "store.db") as other:  # durable: another connection sees it
                assert other.execute("SELECT count(*) FROM records WHERE state = 0").fetchone()[0] == 0
        finally:
            s.close()


def test_a_disk_filled_by_something_else_refuses_readings_keeps_alarms_and_recovers_by_itself(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", 6 << 20) as disk:
        s = Store.open(disk / "store.db", gateway_id="gw", quota_bytes=8 << 20, clock=Clock("assume_synced"))
        try:
            s.append([reading(i) for i in range(500)])
            ballast = fill(disk)
            head = s.head()[0]
            i = 500
            for k in range(40):  # the uplink is down: nothing is acknowledged
                s.append([reading(i + j) for j in range(50)] + ([alarm(k)] if k % 10 == 0 else []))
                i += 50
            assert s.refusals.active and s.head()[0] > head  # the head moves: alarms, the loss itself
            kept = {r["alarm_id"] for r in s.records(type="alarm")}
            assert kept == {"a0", "a10", "a20", "a30"}
            started = losses(s)
            assert started and started[0]["reason"] == "store_full" and started[0]["limit"] == "filesystem"
            ballast.unlink()  # space returns
            s.append([reading(i + j) for j in range(50)])
            assert not s.refusals.active and s.spare.present
            d = losses(s)
            assert d[-1]["still_refusing"] is False
            refused = sum(x["readings"] if x["what"] == "records" else x["count"] for x in d)
            stored = len(s.records(type="reading"))
            assert stored + refused == i + 50  # every reading stored or counted
            assert [r["seq"] for r in s.records()] == list(range(1, s.head()[0] + 1))
        finally:
            s.close()


def test_a_backlog_committed_when_space_returns_does_not_grow_the_wal_past_its_bound(tmp_path: Path) -> None:
    """0.1: one transaction of 77,000 held readings grew the WAL to 38 MB and filled the disk again."""
    with tmpfs(tmp_path / "disk", 12 << 20) as disk:
        s = Store.open(disk / "store.db", gateway_id="gw", quota_bytes=16 << 20, clock=Clock("assume_synced"))
        try:
            biggest = 0
            for k in range(20):  # the writer's bounded transactions of a held backlog
                s.append([reading(k * 2000 + j) for j in range(2000)])
                biggest = max(biggest, s.usage().wal)
            assert biggest <= 2 * s.budget.wal_bytes + (2 << 20)  # one transaction past the bound at most
            assert s.usage().wal <= 2 * s.budget.wal_bytes
        finally:
            s.close()


# -- item 7: the quota counts live pages --------------------------------------------------
def test_free_pages_left_by_acknowledged_records_are_room_not_use(tmp_path: Path) -> None:
    """0.1 counted the file size: readings refused with the uplink up, 407 of 423 pages free."""
    s = Store.open(tmp_path / "s.db", gateway_id="gw", quota_bytes=1 << 20, reserve_pct=10, keep_acked=0,
                   clock=Clock("assume_synced"))
    try:
        i = fill_with_unsent(s)
        while drain(s):
            pass
        s.prune()  # the acknowledged records go: their pages are free, the file is as large
        u = s.usage()
        assert u.free_pages > (u.file_bytes - u.wal) // 2
        i = s.append([reading(i + j) for j in range(50)]) and i + 50
        s.report_losses()
        assert not s.refusals.active and not s.stats()["refusing_readings"]
        assert losses(s)[-1]["still_refusing"] is False  # the episode ended, the readings went in
        assert s.stats()["disk_bytes"] < s.stats()["file_bytes"]
    finally:
        s.close()


def test_one_refusal_episode_while_acknowledgements_keep_a_store_at_its_quota(tmp_path: Path) -> None:
    """0.1: 113 separate data_loss events in 2 min while refusal flapped at the limit."""
    s = Store.open(tmp_path / "s.db", gateway_id="gw", quota_bytes=1 << 20, reserve_pct=10, keep_acked=10**9,
                   clock=Clock("assume_synced"))
    try:
        i = fill_with_unsent(s)
        for _ in range(300):  # the uplink comes back and keeps up; readings keep coming
            s.append([reading(i + j) for j in range(20)])
            i += 20
            drain(s, 40)
        s.report_losses()
        d = losses(s)
        assert sum(1 for x in d if not x["still_refusing"]) == 1  # it ended, once
        assert len(d) <= 3, d  # start (and the end); no episode per commit
        assert len({x["episode"]["started_at"] for x in d}) == 1
    finally:
        s.close()


def test_a_long_refusal_is_summarised_at_most_once_a_minute(tmp_path: Path) -> None:
    with freeze_time("2026-11-23 08:00:00") as frozen:
        s = Store.open(tmp_path / "s.db", gateway_id="gw", quota_bytes=1 << 20, reserve_pct=10,
                       clock=Clock("assume_synced"))
        try:
            i = fill_with_unsent(s)
            for _ in range(10 * 60):  # ten minutes, a commit a second
                frozen.tick(1.0)
                s.append([reading(i)])
                i += 1
            s.report_losses()
            d = losses(s)
            assert 10 <= len(d) <= 13, len(d)
            assert all(x["still_refusing"] for x in d)
            assert sum(x["count"] for x in d) + len(s.records(type="reading")) == i
        finally:
            s.close()


def test_alarms_and_events_use_the_reserve_and_beyond_it_are_refused_with_one_record_saying_so(tmp_path: Path) -> None:
    """0.1: while refusing readings, alarms and events grew the store to 2.8 MB of a 2 MB quota."""
    quota = 2 << 20
    s = Store.open(tmp_path / "s.db", gateway_id="gw", quota_bytes=quota, reserve_pct=10,
                   clock=Clock("assume_synced"))
    try:
        i = fill_with_unsent(s)
        for k in range(3000):  # an event storm while the uplink is down
            s.append([event(k, pad=500), reading(i)])
            i += 1
        s.report_losses()
        assert s.usage().live <= quota + (64 << 10)  # bounded: the quota and a few records beyond
        d = losses(s)
        beyond = [x for x in d if x["what"] == "records"]
        assert beyond and beyond[0]["refusing"] == "records" and beyond[0]["events"] >= 1
        assert [x["refusing"] for x in d[:2]] == ["readings", "records"]  # said at once, not at the summary
        assert len(d) <= 4
        refused_events = sum(x.get("events", 0) for x in d)
        stored_events = sum(1 for r in s.records(type="event") if r["event"] == "note")
        assert stored_events + refused_events == 3000
    finally:
        s.close()


@pytest.mark.parametrize("reserve_pct", [0.0, 40.0])
def test_reserve_pct_is_where_readings_stop(tmp_path: Path, reserve_pct: float) -> None:
    """Issue 10 item 12: a store that ignored reserve_pct passed every test."""
    quota = 2 << 20
    s = Store.open(tmp_path / "s.db", gateway_id="gw", quota_bytes=quota, reserve_pct=reserve_pct,
                   clock=Clock("assume_synced"))
    try:
        fill_with_unsent(s)
        used = s.usage().live
        expected = quota * (1 - reserve_pct / 100)
        assert abs(used - expected) <= 0.06 * quota, (used, expected)
    finally:
        s.close()


def test_a_reader_in_another_process_sees_that_the_owner_refuses(tmp_path: Path) -> None:
    s = Store.open(tmp_path / "s.db", gateway_id="gw", quota_bytes=1 << 20, clock=Clock("assume_synced"))
    try:
        fill_with_unsent(s)
        s.append([reading(0)])
        with Store.open(tmp_path / "s.db", gateway_id="gw", create=False, check=False) as r:
            st = r.stats()
            assert st["refusing_readings"] and st["refusing"] == "readings"
    finally:
        s.close()


def test_the_spare_is_made_while_the_disk_has_room_and_is_not_counted_in_the_quota(tmp_path: Path) -> None:
    s = Store.open(tmp_path / "s.db", gateway_id="gw", quota_bytes=8 << 20, clock=Clock("assume_synced"))
    try:
        assert spare_path(s.path).stat().st_size == s.budget.spare == 1 << 20
        used = s.usage().live
        spare_path(s.path).unlink()
        assert s.usage().live == used
    finally:
        s.close()


def test_the_agent_opens_its_store_with_the_configured_reserve(tmp_path: Path) -> None:
    """Issue 10 item 12, the other half: the config's reserve_pct must reach the store."""
    from agent import config as configmod
    from agent.daemon import Agent

    cfg = configmod.loads(f'gateway_id = "gw"\n[store]\npath = "{tmp_path}/s.db"\nquota_mb = 4\nreserve_pct = 40\n'
                          f'[control]\nsocket = "{tmp_path}/c.sock"\n')
    store = Agent(cfg)._open_store()  # noqa: SLF001 - the one place the agent opens its store
    try:
        assert store.budget.reserve == int((4 << 20) * 0.4)
    finally:
        store.close()


def test_an_acknowledgement_the_disk_cannot_take_is_held_and_written_when_it_can(tmp_path: Path) -> None:
    """The uplink's acknowledgement failed with a traceback and the batch went out again
    and again (0.1: 50,000 duplicate receipts); now it waits in memory, its records not resent."""
    with tmpfs(tmp_path / "disk", 4 << 20) as disk:
        s = Store.open(disk / "s.db", gateway_id="gw", quota_bytes=4 << 20, spare_bytes=0,
                       clock=Clock("assume_synced"))
        try:
            s.append([reading(i) for i in range(1000)])
            assert s.pending(10)[0][0] == 1  # the stream_started event goes first
            s.ack([1])
            s.conn.execute("PRAGMA journal_size_limit = 0")
            s.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # no WAL left to write into
            ballast = fill(disk)
            first = s.pending(300)
            s.ack(seq for seq, _, _ in first)  # does not raise
            assert s.stats()["acks_held"] == 300
            second = s.pending(300)
            assert second[0][0] == first[-1][0] + 1  # the held ones are not sent again
            s.ack(seq for seq, _, _ in second)
            assert s.stats()["acks_held"] == 600
            ballast.unlink()  # room again
            s.pending(10)
            assert s.stats()["acks_held"] == 0
            with sqlite3.connect(s.path) as other:
                assert other.execute("SELECT count(*) FROM records WHERE state = 1").fetchone()[0] == 601
        finally:
            s.close()
