"""The receiver on PostgreSQL (psycopg 3): several receiver processes, one database.

``--db postgresql://user@host/dbname`` (install ``coldgate[receiver-pg]``). The SQL is
:class:`~agent.receiver.storage.SqlStorage`'s, shared with SQLite; what is PostgreSQL's
own is here:

* a batch takes ``pg_advisory_xact_lock`` on its ``(gateway_id, stream)`` first, so
  concurrent batches of one stream — from any number of HTTP receivers and MQTT consumers
  — are stored one after another (nothing counted twice, every link judged by whichever
  batch brings its second end), while other streams proceed in parallel;
* ``synchronous_commit`` is left on: a batch is durable before it is answered;
* migrations are versioned in ``coldgate_schema`` and run under an advisory lock, so
  receivers starting together migrate once;
* a batch's new records go in by ``COPY`` (under the stream's lock they are known to be new);
* a batch is four round trips to the server, not seven (:class:`_Batched`): ``BEGIN``, the
  stream's lock and the look at what is stored go together, then the ``COPY`` (two), then
  every other write with ``COMMIT`` — a round trip costs the receiver about 175 µs of CPU
  on the 2-core reference machine, most of a small batch's cost;
* a small pool of connections, one per concurrent request, re-opened after an error;
* SHA-256 for re-verification is the server's ``sha256()`` (PostgreSQL 11+).

Database errors become :class:`~agent.receiver.storage.StorageUnavailable` (answered 503,
which a gateway retries), never a traceback to the client.
"""

from __future__ import annotations

import queue
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from agent.receiver.storage import Cursor, ReceiverError, SqlStorage, StorageUnavailable

try:
    import psycopg
except ImportError:  # pragma: no cover - depends on the install
    psycopg = None  # type: ignore[assignment]

SCHEMA_VERSION = 1
_MIGRATION_LOCK = 0x636F6C64  # "cold": one migrating process at a time

MIGRATIONS: list[str] = [
    # 0 -> 1
    """
    CREATE TABLE records (
        gateway_id   text    NOT NULL,
        stream       text    NOT NULL,
        seq          bigint  NOT NULL,
        type         text    NOT NULL,
        event        text,
        alarm_id     text,
        state        text,
        ts           text    NOT NULL,
        time_quality text    NOT NULL,
        prev_hash    text    NOT NULL,
        hash         text    NOT NULL,
        hash_ok      boolean NOT NULL,
        link_ok      boolean,
        received_at  text    NOT NULL,
        body         text    NOT NULL,
        PRIMARY KEY (gateway_id, stream, seq)
    );
    CREATE INDEX records_events ON records (gateway_id, stream, event, seq) WHERE event IS NOT NULL;
    CREATE INDEX records_alarms ON records (gateway_id, stream, alarm_id, seq) WHERE type = 'alarm';
    CREATE TABLE conflicts (
        gateway_id        text   NOT NULL,
        stream            text   NOT NULL,
        seq               bigint NOT NULL,
        hash              text   NOT NULL,
        times             bigint NOT NULL,
        first_received_at text   NOT NULL,
        last_received_at  text   NOT NULL,
        body              text   NOT NULL,
        PRIMARY KEY (gateway_id, stream, seq, hash)
    );
    CREATE TABLE duplicates (
        gateway_id text   NOT NULL,
        stream     text   NOT NULL,
        count      bigint NOT NULL,
        PRIMARY KEY (gateway_id, stream)
    );
    CREATE TABLE gateways (
        gateway_id     text PRIMARY KEY,
        first_batch_at text   NOT NULL,
        last_batch_at  text   NOT NULL,
        last_sent_at   text,
        batches        bigint NOT NULL,
        config         text,
        config_at      text
    );
    """,
]
assert len(MIGRATIONS) == SCHEMA_VERSION


def masked(url: str) -> str:
    """The URL without its password, for reports and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


class PgStorage(SqlStorage):
    """The receiver's PostgreSQL database. Thread-safe; :meth:`close` when done."""

    SHA = "encode(sha256(convert_to({}, 'UTF8')), 'hex')"
    GREATEST = "greatest"

    def __init__(self, url: str, *, create: bool = True, pool_size: int = 8) -> None:
        if psycopg is None:
            raise ReceiverError("PostgreSQL storage needs psycopg: pip install 'coldgate[receiver-pg]'")
        self.url = url
        self.path = masked(url)
        self._pool: queue.LifoQueue[Any] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(pool_size)
        self._closed = False
        with self._connection() as conn:
            self._migrate(conn, create)

    # -- connections ----------------------------------------------------------------------

    def _connect(self) -> Any:
        try:
            return psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            raise StorageUnavailable(f"{self.path}: cannot connect to PostgreSQL: {_reason(exc)}") from None

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        if self._closed:
            raise ReceiverError(f"{self.path}: the receiver database is closed")
        with self._slots:
            try:
                conn = self._pool.get_nowait()
            except queue.Empty:
                conn = self._connect()
            try:
                yield conn
            except psycopg.Error as exc:
                conn.close()  # its state is unknown: a fresh one next time
                if isinstance(exc, psycopg.errors.UndefinedTable):
                    raise ReceiverError(f"{self.path}: not a coldgate receiver database") from None
                raise StorageUnavailable(f"{self.path}: {_reason(exc)}") from None
            except BaseException:
                conn.close()
                raise
            else:
                if self._closed or conn.closed:
                    conn.close()
                else:
                    self._pool.put(conn)

    def _migrate(self, conn: Any, create: bool) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS coldgate_schema (version integer NOT NULL)")
            row = conn.execute("SELECT max(version) FROM coldgate_schema").fetchone()
            version = row[0] or 0
            if version > SCHEMA_VERSION:
                raise ReceiverError(
                    f"{self.path}: schema version {version} is newer than this receiver ({SCHEMA_VERSION})"
                )
            if version < SCHEMA_VERSION and not create and version == 0:
                raise ReceiverError(f"{self.path}: no receiver database here (no schema)")
            for v in range(version, SCHEMA_VERSION):
                conn.execute(MIGRATIONS[v])
                conn.execute("INSERT INTO coldgate_schema (version) VALUES (%s)", (v + 1,))

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                self._pool.get_nowait().close()
            except queue.Empty:
                break

    # -- what SqlStorage asks of a backend ------------------------------------------------

    def _sql(self, sql: str) -> str:
        sql = super()._sql(sql).replace("? IS NULL", "?::text IS NULL")
        return sql.replace("?", "%s")

    def _seq_in(self, seqs: Sequence[int]) -> tuple[str, list[Any]]:
        return "seq = ANY(?)", [list(seqs)]

    @contextmanager
    def _transaction(self) -> Iterator[Cursor]:
        with self._connection() as conn, conn.cursor() as raw:
            cur = _Batched(raw, psycopg.ClientCursor(conn).mogrify)
            yield cur
            cur.commit()

    def _insert_records(self, cur: Cursor, rows: list[tuple[Any, ...]]) -> None:
        """COPY the batch's new rows: the fastest way in, and safe: under the stream's lock they are new."""
        with cur.copy(  # type: ignore[attr-defined]
            "COPY records (gateway_id, stream, seq, type, event, alarm_id, state, ts, time_quality, prev_hash,"
            " hash, hash_ok, link_ok, received_at, body) FROM STDIN"
        ) as copy:
            for row in rows:
                copy.write_row(row)

    def _lock_stream(self, cur: Cursor, gateway_id: str, stream: str) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"{gateway_id}\x1f{stream}",))

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._connection() as conn:
            return list(conn.execute(self._sql(sql), params).fetchall())


class _Batched:
    """A transaction's statements sent together, with client-side binding.

    Statements are held until the caller reads a result (:meth:`fetchall`) or commits;
    then everything held goes in one simple query (several statements, one round trip):
    ``BEGIN`` with the first, ``COMMIT`` with the last. A failing statement fails the
    whole transaction, as it would one by one; the connection is then discarded (see
    :meth:`PgStorage._connection`), which rolls it back.
    """

    def __init__(self, cur: Any, mogrify: Any) -> None:
        self._cur, self._mogrify = cur, mogrify
        self._held: list[str] = ["BEGIN"]

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._held.append(self._mogrify(sql, params) if params else sql)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._held.extend(self._mogrify(sql, row) for row in rows)

    def copy(self, statement: str) -> Any:
        """``COPY … FROM STDIN`` on the connection, after what is held (it cannot share a query)."""
        if self._held:
            self._flush()
        return self._cur.copy(statement)

    def fetchall(self) -> list[tuple[Any, ...]]:
        """Send what is held; the rows of the last statement."""
        return self._flush()

    def commit(self) -> None:
        self._held.append("COMMIT")
        self._flush()

    def _flush(self) -> list[tuple[Any, ...]]:
        text, self._held = "; ".join(self._held), []
        cur = self._cur
        cur.execute(text)
        rows: list[tuple[Any, ...]] = []
        while True:  # one result per statement: the last one's rows are the answer
            rows = cur.fetchall() if cur.description is not None else []
            if not cur.nextset():
                return rows


def _reason(exc: BaseException) -> str:
    """psycopg's message in one line, without the connection string."""
    text = " ".join(str(exc).split())
    return re.sub(r"password=\S+", "password=***", text)[:300] or type(exc).__name__
