"""The store's schema (through sqlite-utils' table API), its full-disk check, and the
queries behind ``coldgate readings`` and ``coldgate events``."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agent.exc import StoreError, StoreFull
from agent.store import MIGRATIONS, Store, _migrate
from agent.timebase import Clock

#: The schema as migrations 1 and 2 wrote it by hand before they used sqlite-utils: a
#: store made by either must be the same database.
HAND_WRITTEN = [
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE records (seq INTEGER PRIMARY KEY, type TEXT NOT NULL, ts REAL NOT NULL, tq TEXT NOT NULL,
        sensor_id TEXT, quantity TEXT, body TEXT NOT NULL, hash TEXT NOT NULL, mono_ns INTEGER, boot_id TEXT,
        state INTEGER NOT NULL DEFAULT 0)""",
    "CREATE INDEX records_pending_urgent ON records(seq) WHERE state = 0 AND type != 'reading'",
    "CREATE TABLE set_aside (seq INTEGER PRIMARY KEY, reason TEXT NOT NULL, at REAL NOT NULL)",
    "CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE latest (sensor_id TEXT, quantity TEXT, seq INTEGER, ts REAL, value REAL, unit TEXT,"
    " PRIMARY KEY (sensor_id, quantity))",
    "CREATE TABLE commands (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, payload TEXT NOT NULL,"
    " created REAL NOT NULL, done INTEGER NOT NULL DEFAULT 0)",
]


def schema(conn: sqlite3.Connection) -> dict[str, object]:
    """Everything SQLite knows of the tables and indexes, less the text they were made with."""
    out: dict[str, object] = {"user_version": conn.execute("PRAGMA user_version").fetchone()[0]}
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    for t in tables:
        out[t] = {
            "columns": conn.execute(f"PRAGMA table_xinfo({t})").fetchall(),
            "indexes": sorted(
                (name, unique, origin, partial, conn.execute(f"PRAGMA index_xinfo({name})").fetchall(),
                 conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (name,)).fetchone()[0])
                for _, name, unique, origin, partial in conn.execute(f"PRAGMA index_list({t})")),
            "without_rowid": conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (t,)).fetchone()[0]
            .upper().rstrip().endswith("WITHOUT ROWID"),
        }
    return out


def test_the_migrations_make_the_schema_the_hand_written_sql_made(tmp_path: Path) -> None:
    ours = sqlite3.connect(tmp_path / "ours.db", isolation_level=None)
    _migrate(ours)
    theirs = sqlite3.connect(tmp_path / "theirs.db", isolation_level=None)
    for sql in HAND_WRITTEN:
        theirs.execute(sql)
    theirs.execute("PRAGMA user_version = 2")
    _migrate(theirs)  # the migrations after the first two, on the hand-made store
    assert theirs.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert schema(ours) == schema(theirs)
    ours.close()
    theirs.close()


def test_a_store_made_by_the_first_migration_alone_is_brought_up_to_date(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "old.db", isolation_level=None)
    for sql in HAND_WRITTEN[:2] + ["CREATE INDEX records_pending ON records(seq) WHERE state = 0"] + HAND_WRITTEN[2:]:
        conn.execute(sql)
    conn.execute("PRAGMA user_version = 1")
    _migrate(conn)
    indexes = {r[1] for r in conn.execute("PRAGMA index_list(records)")}
    assert indexes == {"records_pending_urgent"}
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    conn.close()


def test_a_migration_that_fails_leaves_the_store_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(db: object) -> None:
        db.table("half_done").create({"x": int})  # type: ignore[attr-defined]
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr("agent.store.MIGRATIONS", [*MIGRATIONS, ("broken", broken)])
    conn = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    with pytest.raises(sqlite3.OperationalError):
        _migrate(conn)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'half_done'").fetchone()[0] == 0
    assert not conn.in_transaction
    conn.close()


# -- a full disk, by SQLite's code ------------------------------------------------------


def reading(i: int) -> dict:
    return {"type": "reading", "ts": 1_790_000_000.0 + i, "time_quality": "synced", "sensor_id": "p1",
            "quantity": "temperature", "value": 4.0, "unit": "Cel"}


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store.open(tmp_path / "store.db", gateway_id="gw-test", clock=Clock("assume_synced"))
    yield s
    s.close()


def test_a_full_database_is_store_full_and_nothing_is_written(store: Store) -> None:
    head = store.head()
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    store.conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLite answers SQLITE_FULL past this
    with pytest.raises(StoreFull):
        store.append([{**reading(i), "note": "x" * 2000} for i in range(50)])
    assert store.head() == head


def test_an_error_that_only_mentions_full_is_not_a_full_disk(store: Store) -> None:
    """The old check looked for the word "full" in SQLite's message."""
    store.conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON records "
                       "BEGIN SELECT RAISE(ABORT, 'the shipper is full of dry ice'); END")
    with pytest.raises(StoreError, match="full of dry ice") as caught:
        store.append([reading(1)])
    assert not isinstance(caught.value, StoreFull)


# -- reading back: readings and events --------------------------------------------------


def event(name: str, ts: float, **details: object) -> dict:
    return {"type": "event", "event": name, "ts": ts, "time_quality": "synced", "details": details}


def test_events_are_the_newest_first_limited_then_given_oldest_first(store: Store) -> None:
    t0 = 3_000_000_000.0  # after the stream_started event, stamped now
    store.append([event("driver_error", t0, driver="gps"), reading(1), event("clock_step", t0 + 10, offset_s=3.0),
                  reading(2), event("driver_recovered", t0 + 20, driver="gps"), event("data_loss", t0 + 30)])
    assert [e["event"] for e in store.events()] == [
        "stream_started", "driver_error", "clock_step", "driver_recovered", "data_loss"]
    assert [e["event"] for e in store.events(limit=2)] == ["driver_recovered", "data_loss"]
    assert [e["event"] for e in store.events(names=["driver_error", "driver_recovered"])] == [
        "driver_error", "driver_recovered"]
    assert [e["event"] for e in store.events(since_ts=t0 + 10)] == ["clock_step", "driver_recovered", "data_loss"]
    assert store.events(names=["clock_step"])[0]["details"] == {"offset_s": 3.0}
    assert all(e["type"] == "event" and "hash" in e for e in store.events())


def test_readings_query_filters_by_sensor_and_seq(store: Store) -> None:
    store.append([reading(i) for i in range(5)] + [{**reading(9), "sensor_id": "p2"}])
    newest = store.records(type="reading", sensor_id="p1", limit=2, descending=True)
    assert [r["ts"] for r in newest] == ["2026-09-21T14:13:24.000Z", "2026-09-21T14:13:23.000Z"]
    after = store.records(type="reading", since_seq=newest[0]["seq"])
    assert [r["sensor_id"] for r in after] == ["p2"]
    assert store.records(type="reading", with_state=True)[0]["_state"] == "pending"
