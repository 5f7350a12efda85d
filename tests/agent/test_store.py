"""The store: gap-free seq, a verifiable chain, nothing unsent deleted, quota, self-healing."""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.canonical import ZERO_HASH, verify
from agent.exc import StoreError
from agent.store import MIGRATIONS, Store
from agent.timebase import Clock


def reading(i: int, sensor: str = "probe-1", ts: float | None = None) -> dict:
    return {"type": "reading", "ts": ts if ts is not None else 1_790_000_000.0 + i, "time_quality": "synced",
            "sensor_id": sensor, "quantity": "temperature", "value": 4.0 + (i % 10) / 10, "unit": "Cel"}


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store.open(tmp_path / "store.db", gateway_id="gw-test", clock=Clock("assume_synced"))
    yield s
    s.close()


def assert_chain(records: list[dict]) -> None:
    prev = ZERO_HASH
    for expected_seq, rec in enumerate(records, start=records[0]["seq"]):
        assert rec["seq"] == expected_seq
        assert rec["prev_hash"] == prev
        assert verify(rec), rec
        prev = rec["hash"]


def test_new_store_starts_a_stream_with_a_stream_started_event(store: Store) -> None:
    first = store.records()[0]
    assert first["seq"] == 1 and first["prev_hash"] == ZERO_HASH
    assert first["event"] == "stream_started" and first["details"]["reason"] == "new"
    assert first["stream"] == store.stream_id and first["time_quality"] == "synced"


def test_appended_records_get_gap_free_seqs_and_a_valid_hash_chain(store: Store) -> None:
    seqs = store.append([reading(i) for i in range(100)])
    seqs += store.append([reading(i) for i in range(100, 150)])
    assert seqs == list(range(2, 152))
    assert_chain(store.records())


def test_records_carry_ts_in_rfc3339_with_milliseconds(store: Store) -> None:
    ts = datetime(2026, 11, 23, 8, 15, 2, 125400, tzinfo=UTC).timestamp()
    store.append([reading(0, ts=ts)])
    assert store.records(type="reading")[0]["ts"] == "2026-11-23T08:15:02.125Z"


def test_local_only_fields_are_kept_out_of_the_record(store: Store) -> None:
    store.append([{**reading(0), "mono_ns": 123, "boot_id": "b"}])
    rec = store.records(type="reading")[0]
    assert "mono_ns" not in rec and "boot_id" not in rec


def test_seq_continues_after_reopen_and_is_never_reused_after_pruning(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Store.open(path, gateway_id="gw", keep_acked=0) as s:
        s.append([reading(i) for i in range(10)])
        s.ack(range(1, 12))
        assert s.prune() == 11
        assert s.records() == []
    with Store.open(path, gateway_id="gw", keep_acked=0) as s:
        assert s.append([reading(99)]) == [12]
        assert s.records()[0]["prev_hash"] != ZERO_HASH  # chained to the pruned record 11


def test_prune_deletes_only_acknowledged_records_keeping_the_newest_keep_acked(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.db", gateway_id="gw", keep_acked=3) as s:
        s.append([reading(i) for i in range(20)])  # seqs 2..21
        s.ack([5, 6, 7, 8, 9, 10])
        s.prune()
        left = [r["seq"] for r in s.records()]
        assert left == [1, 2, 3, 4, 8, 9, 10, *range(11, 22)]


def test_pending_puts_alarms_and_events_ahead_of_the_reading_backlog(store: Store) -> None:
    store.append([reading(i) for i in range(50)])  # 2..51
    store.append([{"type": "alarm", "ts": 1_790_000_100.0, "time_quality": "synced", "alarm_id": "a1",
                   "rule": "high", "sensor_id": "probe-1", "state": "raised", "severity": "alarm",
                   "started_at": 1_790_000_050.0}])  # 52
    batch = store.pending(5)
    assert [seq for seq, _, _ in batch] == [1, 52]  # the stream_started event and the alarm, on their own
    store.ack(seq for seq, _, _ in batch)
    assert [seq for seq, _, _ in store.pending(3)] == [2, 3, 4]


def test_alarm_started_at_epoch_is_formatted_like_ts(store: Store) -> None:
    started = datetime(2026, 11, 23, 6, 0, 50, tzinfo=UTC).timestamp()
    store.append([{"type": "alarm", "ts": started + 50, "time_quality": "synced", "alarm_id": "a1",
                   "rule": "high", "sensor_id": "p", "state": "raised", "severity": "alarm",
                   "started_at": started}])
    rec = store.records(type="alarm")[0]
    assert (rec["started_at"], rec["ts"]) == ("2026-11-23T06:00:50.000Z", "2026-11-23T06:01:40.000Z")


def test_set_aside_records_leave_the_queue_but_are_kept(store: Store) -> None:
    store.append([reading(i) for i in range(5)])
    store.set_aside([2, 3], "HTTP 400")
    assert [s for s, _, _ in store.pending(10)] == [1]
    store.ack([1])
    assert [s for s, _, _ in store.pending(10)] == [4, 5, 6]
    kept = store.records(with_state=True)
    assert [r["_state"] for r in kept if r["seq"] in (2, 3)] == ["set_aside", "set_aside"]
    assert store.stats()["set_aside"] == 2


def test_state_is_saved_in_the_same_transaction_as_the_records(store: Store) -> None:
    store.append([reading(0)], state={"rules": {"budget_s": 42}})
    assert store.load_state("rules") == {"budget_s": 42}


def test_two_writers_on_one_store_keep_one_gap_free_chain(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    a = Store.open(path, gateway_id="gw")
    b = Store.open(path, gateway_id="gw")
    try:
        for i in range(20):
            (a if i % 2 else b).append([reading(i), reading(i + 100)])
        assert_chain(a.records())
        assert a.head()[0] == 41
    finally:
        a.close()
        b.close()


def test_quota_full_of_unsent_data_refuses_readings_but_keeps_alarms_and_says_what_was_lost(tmp_path: Path) -> None:
    s = Store.open(tmp_path / "s.db", gateway_id="gw", quota_bytes=400_000, reserve_pct=20)
    try:
        stored = 0
        for k in range(200):
            stored += len([x for x in s.append([reading(k * 50 + i) for i in range(50)])])
            if s.stats()["refusing_readings"]:
                break
        assert s.stats()["refusing_readings"], "the quota was never reached"
        before = s.head()[0]
        s.append([reading(1), reading(2), {"type": "alarm", "ts": 1.0, "time_quality": "synced", "alarm_id": "x",
                                            "rule": "r", "sensor_id": "probe-1", "state": "raised",
                                            "severity": "alarm", "started_at": 1.0}])
        recs = s.records(since_seq=before - 5)
        assert any(r["type"] == "alarm" for r in recs)
        losses = [r for r in s.records(type="event") if r["event"] == "data_loss"]
        assert losses and losses[0]["details"]["reason"] == "store_full"
        assert losses[0]["details"]["sensors"] == {"probe-1": losses[0]["details"]["count"]}
        # nothing committed was deleted: every seq is still there
        assert [r["seq"] for r in s.records()] == list(range(1, s.head()[0] + 1))
    finally:
        s.close()


def test_quota_frees_acknowledged_records_before_refusing_anything(tmp_path: Path) -> None:
    s = Store.open(tmp_path / "s.db", gateway_id="gw", quota_bytes=600_000, reserve_pct=5, keep_acked=10**9)
    try:
        for k in range(60):
            seqs = s.append([reading(k * 50 + i) for i in range(50)])
            s.ack(seqs)
        assert not s.stats()["refusing_readings"]
        assert not [r for r in s.records(type="event") if r["event"] == "data_loss"]
        assert s.stats()["acked_kept"] < 3000  # some acknowledged records made room
    finally:
        s.close()


def test_corrupt_database_is_set_aside_and_a_new_stream_names_the_old_one(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Store.open(path, gateway_id="gw") as s:
        s.append([reading(i) for i in range(10)])
        old_stream = s.stream_id
    path.write_bytes(b"this is not a database" * 100)
    with Store.open(path, gateway_id="gw") as s:
        first = s.records()[0]
        assert s.stream_id != old_stream
        d = first["details"]
        assert first["event"] == "stream_started" and d["reason"] == "corrupt"
        assert d["previous_stream"] == old_stream and d["previous_last_seq"] == 11
        assert Path(d["set_aside"]).read_bytes().startswith(b"this is not a database")


def test_deleted_database_starts_a_stream_that_says_the_store_went_missing(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Store.open(path, gateway_id="gw") as s:
        old = s.stream_id
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    with Store.open(path, gateway_id="gw") as s:
        d = s.records()[0]["details"]
        assert d["reason"] == "store_missing" and d["previous_stream"] == old


def test_schema_version_is_recorded_and_a_newer_schema_is_refused_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    Store.open(path, gateway_id="gw").close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with Store.open(path, gateway_id="gw") as s:  # set aside, never migrated down or wiped
        assert s.records()[0]["details"]["reason"] == "corrupt"
    assert list(tmp_path.glob("s.db.corrupt-*"))


def test_open_without_create_refuses_a_missing_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no store"):
        Store.open(tmp_path / "nope.db", gateway_id="gw", create=False)


def test_durable_settings_are_wal_and_synchronous_full(store: Store) -> None:
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == 2


def test_unsynced_segments_split_where_the_unsynced_clock_stepped(store: Store) -> None:
    base = time.time()
    items = []
    for i in range(6):
        step = 0 if i < 3 else 3600  # the clock jumped an hour between the 3rd and 4th reading
        items.append({**reading(i, ts=base + i + step), "time_quality": "unsynced", "mono_ns": i * 10**9,
                      "boot_id": "boot-1"})
    store.append(items)
    segs = store.unsynced_segments("boot-1")
    assert [(a, b, n) for a, b, n, _ in segs] == [(2, 4, 3), (5, 7, 3)]
    assert segs[1][3] - segs[0][3] == pytest.approx(3600, abs=0.01)


def test_processes_opening_a_new_store_at_once_share_one_stream_and_set_nothing_aside(tmp_path: Path) -> None:
    import multiprocessing

    path = tmp_path / "s.db"
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        streams = pool.map(_open_and_report, [str(path)] * 8)
    assert len(set(streams)) == 1
    assert not list(tmp_path.glob("*.corrupt-*"))
    with Store.open(path, gateway_id="gw") as s:
        assert [r["event"] for r in s.records()] == ["stream_started"]


def _open_and_report(path: str) -> str:
    with Store.open(path, gateway_id="gw") as s:
        return s.stream_id


def test_a_reader_never_sets_aside_or_creates_anything(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(b"not a database" * 100)
    with pytest.raises(StoreError, match="unreadable"):
        Store.open(path, gateway_id="gw", create=False)
    assert path.read_bytes().startswith(b"not a database") and not list(tmp_path.glob("*.corrupt-*"))


def test_reading_bodies_written_from_templates_are_exactly_rfc8785(tmp_path: Path) -> None:
    """Plain readings are written from a template per sensor; whatever the names and values,
    the stored body must be the library's canonical form of the record."""
    import json

    import rfc8785
    from hypothesis import given, settings
    from hypothesis import strategies as st

    store = Store.open(tmp_path / "s.db", gateway_id="gw")
    names = st.text(min_size=1, max_size=12)  # quotes, %, backslashes, control and non-ASCII characters
    values = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-(2**53) + 1, 2**53 - 1))

    @settings(max_examples=300, deadline=None)
    @given(names, names, names, values, st.sampled_from([None, "sim", "ble-1"]))
    def check(sensor: str, quantity: str, unit: str, value: float, driver: str | None) -> None:
        item = {"type": "reading", "ts": 1_790_000_000.5, "time_quality": "synced", "sensor_id": sensor,
                "quantity": quantity, "value": value, "unit": unit, "driver": driver}
        (seq,) = store.append([item])
        (body,) = store.conn.execute("SELECT body FROM records WHERE seq = ?", (seq,)).fetchone()
        record = json.loads(body)
        assert body.encode() == rfc8785.dumps(record)
        if abs(value) >= 2**53:  # beyond what JSON numbers carry exactly: its loss is recorded instead
            assert record["event"] == "data_loss" and record["details"]["reason"] == "unencodable"
        else:
            assert (record["type"], record["sensor_id"], record["value"]) == ("reading", sensor, value)

    try:
        check()
        assert_chain(store.records())
    finally:
        store.close()


def test_a_failed_commit_while_refusing_readings_counts_each_refused_reading_once(tmp_path: Path) -> None:
    s = Store.open(tmp_path / "s.db", gateway_id="gw", quota_bytes=400_000, reserve_pct=20)
    try:
        k = 0
        while not s.stats()["refusing_readings"]:
            s.append([reading(k * 50 + i) for i in range(50)])
            k += 1
        s.report_losses()

        def counted() -> int:
            return sum(r["details"]["count"] for r in s.records(type="event") if r["event"] == "data_loss")

        before = counted()
        pages = s.conn.execute("PRAGMA page_count").fetchone()[0]
        s.conn.execute(f"PRAGMA max_page_count = {pages}")  # the next commit fails: disk full
        batch = [reading(100_000 + i) for i in range(40)] + [
            {"type": "event", "event": "x", "details": {"pad": "y" * 20_000}, "ts": 1.0, "time_quality": "synced"}]
        with pytest.raises(StoreError):
            s.append(batch)
        s.conn.execute("PRAGMA max_page_count = 1073741823")
        s.append(batch)  # the same batch, retried
        s.report_losses()
        assert counted() - before == 40  # the 40 refused readings counted once, not once per attempt
    finally:
        s.close()


def test_a_batchs_first_and_last_seq_always_name_the_same_records(store: Store) -> None:
    """The Idempotency-Key is <first>-<last>: a resent key must mean the same records, however
    alarms, acknowledgements, lost responses and batch sizes (a 413 halves one) interleave."""
    alarm = {"type": "alarm", "ts": 1_790_000_000.0, "time_quality": "synced", "alarm_id": "a", "rule": "high",
             "sensor_id": "probe-1", "state": "raised", "severity": "alarm", "started_at": 1_790_000_000.0}
    named: dict[tuple[int, int], list[int]] = {}
    store.append([reading(i) for i in range(100)])
    for step in range(40):
        batch = [seq for seq, _, _ in store.pending(17 if step % 2 else 11)]
        if not batch:
            break
        key = (batch[0], batch[-1])
        assert named.setdefault(key, batch) == batch, f"key {key} named two different batches"
        if step % 4 == 1:
            store.append([alarm, reading(1000 + step)])  # news while the answer was lost
        elif step % 4 == 3:
            store.ack(batch)
    assert named
