"""The receiver's embedded default: one SQLite file (the demo, the tests, a bench).

WAL with ``synchronous=FULL``: a batch is committed, to the platter, before the answer
goes out. One connection, used under a lock (SQLite serialises writers anyway);
``BEGIN IMMEDIATE`` takes the write lock before a batch reads what is stored, so another
process on the same file waits (``busy_timeout``) rather than racing it. Migrations are
versioned by ``PRAGMA user_version``; the later ones use sqlite-utils' table API.
SHA-256 for the report's re-verification is a Python function registered on the
connection (SQLite has none built in).
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlite_utils

from agent.receiver.storage import Cursor, ReceiverError, SqlStorage, StorageUnavailable

SCHEMA_VERSION = 2

_V1 = """
CREATE TABLE records (
    gateway_id   TEXT    NOT NULL,
    stream       TEXT    NOT NULL,
    seq          INTEGER NOT NULL,
    type         TEXT    NOT NULL,
    event        TEXT,
    ts           TEXT    NOT NULL,
    time_quality TEXT    NOT NULL,
    prev_hash    TEXT    NOT NULL,
    hash         TEXT    NOT NULL,
    hash_ok      INTEGER NOT NULL,
    received_at  TEXT    NOT NULL,
    body         TEXT    NOT NULL,
    PRIMARY KEY (gateway_id, stream, seq)
) WITHOUT ROWID;
CREATE INDEX records_stream_started ON records (gateway_id, stream, seq) WHERE event = 'stream_started';
CREATE TABLE conflicts (
    gateway_id        TEXT    NOT NULL,
    stream            TEXT    NOT NULL,
    seq               INTEGER NOT NULL,
    hash              TEXT    NOT NULL,
    times             INTEGER NOT NULL,
    first_received_at TEXT    NOT NULL,
    last_received_at  TEXT    NOT NULL,
    body              TEXT    NOT NULL,
    PRIMARY KEY (gateway_id, stream, seq, hash)
);
CREATE TABLE duplicates (
    gateway_id TEXT    NOT NULL,
    stream     TEXT    NOT NULL,
    count      INTEGER NOT NULL,
    PRIMARY KEY (gateway_id, stream)
);
"""


def _v1(db: sqlite_utils.Database) -> None:
    for stmt in _V1.split(";"):
        if stmt.strip():
            db.execute(stmt)


def _v2(db: sqlite_utils.Database) -> None:
    """Alarm columns and arrival-time link checks on records; the fleet's gateways table."""
    records = db.table("records")
    records.add_column("alarm_id", str)
    records.add_column("state", str)
    records.add_column("link_ok", int)
    db.execute(
        "UPDATE records SET alarm_id = json_extract(body, '$.alarm_id'), state = json_extract(body, '$.state')"
        " WHERE type = 'alarm'"
    )
    db.execute("DROP INDEX records_stream_started")
    db.execute("CREATE INDEX records_events ON records (gateway_id, stream, event, seq) WHERE event IS NOT NULL")
    db.execute("CREATE INDEX records_alarms ON records (gateway_id, stream, alarm_id, seq) WHERE type = 'alarm'")
    db.table("gateways").create(
        {
            "gateway_id": str,
            "first_batch_at": str,
            "last_batch_at": str,
            "last_sent_at": str,
            "batches": int,
            "config": str,
            "config_at": str,
        },
        pk="gateway_id",
        not_null={"first_batch_at", "last_batch_at", "batches"},
    )


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_v1, _v2]
assert len(MIGRATIONS) == SCHEMA_VERSION


def _sha256_hex(text: str | None) -> str | None:
    return None if text is None else hashlib.sha256(text.encode("utf-8")).hexdigest()


class SqliteStorage(SqlStorage):
    """The receiver's SQLite file. Thread-safe; :meth:`close` when done."""

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.exists():
            raise ReceiverError(f"{self.path}: no such receiver database")
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA busy_timeout=10000")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.create_function("coldgate_sha256", 1, _sha256_hex, deterministic=True)
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self.close()
            raise ReceiverError(f"{self.path}: cannot open the receiver database: {exc}") from None

    def _migrate(self) -> None:
        assert self._db is not None
        self._db.execute("BEGIN IMMEDIATE")  # one process migrates; another waits, then finds it done
        try:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ReceiverError(
                    f"{self.path}: schema version {version} is newer than this receiver ({SCHEMA_VERSION})"
                )
            db = sqlite_utils.Database(self._db)
            for v in range(version, SCHEMA_VERSION):
                MIGRATIONS[v](db)
                self._db.execute(f"PRAGMA user_version={v + 1}")
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        db = self._db
        if db is not None:
            with self._lock:
                db.close()
                self._db = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise ReceiverError(f"{self.path}: the receiver database is closed")
        return self._db

    @contextmanager
    def _transaction(self) -> Iterator[Cursor]:
        with self._lock:
            db = self._conn()
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:  # locked by another process past busy_timeout
                raise StorageUnavailable(f"{self.path}: {exc}") from None
            try:
                yield db.cursor()
                db.execute("COMMIT")
            except sqlite3.OperationalError as exc:  # disk full, I/O error: nothing of the batch is kept
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise StorageUnavailable(f"{self.path}: {exc}") from None
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn().execute(self._sql(sql), params).fetchall()
