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
* a batch is three round trips to the server (:class:`_Batched`): ``BEGIN``, the stream's
  lock and the look at what is stored go together; then the new records by ``COPY``
  (under the stream's lock they are known to be new); then every other write and
  ``COMMIT``. All go through libpq directly (``PQexec``, values quoted by libpq's
  ``PQescapeLiteral``, ``COPY``'s text written here), which spares psycopg's
  per-statement work: on the 2-core reference machine the store's CPU per batch fell
  from 1.2 to 0.65 ms;
* a small pool of connections, one per concurrent request, re-opened after an error;
* SHA-256 for re-verification is the server's ``sha256()`` (PostgreSQL 11+).

Database errors become :class:`~agent.receiver.storage.StorageUnavailable` (answered 503,
which a gateway retries), never a traceback to the client.
"""

from __future__ import annotations

import queue
import re
import select
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from agent.receiver.storage import Cursor, ReceiverError, SqlStorage, StorageUnavailable

try:
    import psycopg
    from psycopg import pq
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
        with self._connection() as conn:
            cur = _Batched(conn.pgconn)
            yield cur
            cur.commit()

    def _insert_records(self, cur: Cursor, rows: list[tuple[Any, ...]]) -> None:
        """COPY the batch's new rows: the fastest way in, and safe: under the stream's lock they are new.

        Each row is written as one line of COPY's text format here (a Python loop over every
        value cost more than the rest of the batch): the batch's gateway, stream and arrival
        time once, each text value escaped (:func:`_copy_text`), NULL as ``\\N``.
        """
        if not rows:
            return
        esc, null = _copy_text, "\\N"
        gw, stream, now = esc(rows[0][0]), esc(rows[0][1]), esc(rows[0][13])
        lines = []
        for (_, _, seq, kind, event, alarm_id, state, ts, tq, prev, hash_, ok, link, _, body) in rows:
            fields = (
                gw, stream, str(int(seq)), esc(kind),
                null if event is None else esc(event),
                null if alarm_id is None else esc(alarm_id),
                null if state is None else esc(state),
                esc(ts), esc(tq), esc(prev), esc(hash_),
                "t" if ok else "f", null if link is None else ("t" if link else "f"), now, esc(body),
            )
            lines.append("\t".join(fields))
        lines.append("")
        lines = ["\n".join(lines)]
        cur.copy_rows(  # type: ignore[attr-defined]
            "COPY records (gateway_id, stream, seq, type, event, alarm_id, state, ts, time_quality, prev_hash,"
            " hash, hash_ok, link_ok, received_at, body) FROM STDIN",
            lines,
        )

    def _lock_stream(self, cur: Cursor, gateway_id: str, stream: str) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"{gateway_id}\x1f{stream}",))

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._connection() as conn:
            return list(conn.execute(self._sql(sql), params).fetchall())


class _Batched:
    """A transaction on libpq itself, values quoted by libpq: a batch is three round trips.

    Statements are held until the caller reads a result (:meth:`fetchall`), copies rows
    (:meth:`copy_rows`, its own round trip) or commits;
    then everything held goes in one ``PQexec`` (several statements, one round trip, the
    GIL released while it waits): ``BEGIN`` with the first, ``COMMIT`` with the last. Each
    ``%s`` takes a value's SQL literal: strings by ``PQescapeLiteral`` (which knows the
    connection's encoding and ``standard_conforming_strings``), integers and booleans as
    their digits and words, None as NULL, a list of integers as a ``bigint[]``. A failing
    statement fails the whole transaction, raised as psycopg's error for its SQLSTATE; the
    connection is then discarded (see :meth:`PgStorage._connection`), which rolls it back.
    """

    def __init__(self, pgconn: Any) -> None:
        self._pg = pgconn
        self._escape = pq.Escaping(pgconn).escape_literal
        self._held: list[str] = ["BEGIN"]

    def literal(self, v: Any) -> str:
        t = type(v)
        if t is str:
            return self._escape(v.encode("utf-8")).decode("utf-8")
        if v is None:
            return "NULL"
        if t is bool:
            return "true" if v else "false"
        if t is int:
            return str(v)
        if t is list and all(type(x) is int for x in v):
            return f"ARRAY[{','.join(map(str, v))}]::bigint[]"
        raise TypeError(f"no SQL literal for a {t.__name__}")

    def _bind(self, sql: str, params: Sequence[Any]) -> str:
        pieces = sql.split("%s")
        if len(pieces) != len(params) + 1:
            raise TypeError(f"{len(params)} values for {len(pieces) - 1} placeholders")
        out = [pieces[0]]
        for v, piece in zip(params, pieces[1:], strict=True):
            out.append(self.literal(v))
            out.append(piece)
        return "".join(out)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._held.append(self._bind(sql, params) if params else sql)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._held.extend(self._bind(sql, row) for row in rows)

    def copy_rows(self, statement: str, lines: Sequence[str]) -> None:
        """``COPY … FROM STDIN`` of ``lines`` (rows in COPY's text format), after what is held.

        The GIL is released while waiting: on the socket for the copy's result (libpq's
        ``PQgetResult`` would wait holding it), and inside ``PQexec`` for the rest.
        """
        if self._held:
            self._flush()
        pg = self._pg
        self._check(pg.exec_(statement.encode("utf-8")), pq.ExecStatus.COPY_IN)
        data = "".join(lines).encode("utf-8")
        while pg.put_copy_data(data) == 0:
            _wait(pg.socket, write=True)
        while pg.put_copy_end() == 0:
            _wait(pg.socket, write=True)
        while pg.flush() == 1:
            _wait(pg.socket, write=True)
        self._check(self._result(), pq.ExecStatus.COMMAND_OK)
        while self._result() is not None:
            pass

    def _result(self) -> Any:
        """The next result, waiting for it on the socket with the GIL released."""
        pg = self._pg
        pg.consume_input()
        while pg.is_busy():
            _wait(pg.socket)
            pg.consume_input()
        return pg.get_result()

    def fetchall(self) -> list[tuple[Any, ...]]:
        """Send what is held; the rows of the last statement, as text (None for NULL)."""
        res = self._flush()
        kinds = [_FROM_TEXT.get(res.ftype(j), _as_str) for j in range(res.nfields)]
        return [tuple(kind(res.get_value(i, j)) for j, kind in enumerate(kinds)) for i in range(res.ntuples)]

    def commit(self) -> None:
        self._held.append("COMMIT")
        self._flush()

    def _flush(self) -> Any:
        text, self._held = "; ".join(self._held), []
        return self._check(self._pg.exec_(text.encode("utf-8")), pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK)

    def _check(self, res: Any, *ok: Any) -> Any:
        """``res`` if its status is one of ``ok``; else psycopg's error for its SQLSTATE."""
        if res is not None and res.status in ok:
            return res
        message = ""
        if res is not None:
            message = res.error_message.decode("utf-8", "replace").strip()
        message = message or self._pg.error_message.decode("utf-8", "replace").strip() or "no answer from the database"
        sqlstate = res.error_field(pq.DiagnosticField.SQLSTATE) if res is not None else None
        cls: type[Exception] = psycopg.OperationalError
        if sqlstate:
            try:
                cls = psycopg.errors.lookup(sqlstate.decode())
            except KeyError:  # a SQLSTATE this psycopg does not know
                cls = psycopg.DatabaseError
        raise cls(message)


def _copy_text(v: str) -> str:
    """A text value as COPY's text format writes it: backslash, newline, carriage return and tab
    escaped (NUL cannot occur: validated ids and canonical JSON hold none). Checked before
    replacing: most values hold none of them, and ``str.translate`` costs 20 times more."""
    if "\\" in v:
        v = v.replace("\\", "\\\\")
    if "\n" in v or "\r" in v or "\t" in v:
        v = v.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return v


def _wait(fd: int, *, write: bool = False) -> None:
    """Until the socket is readable (or writable), or 30 s; the GIL is released meanwhile.
    ``poll``, not ``select``: a busy receiver's descriptors may lie beyond ``FD_SETSIZE``."""
    p = select.poll()
    p.register(fd, (select.POLLOUT if write else select.POLLIN) | select.POLLERR | select.POLLHUP)
    p.poll(30_000)


def _as_str(v: bytes | None) -> str | None:
    return None if v is None else v.decode("utf-8")


def _as_int(v: bytes | None) -> int | None:
    return None if v is None else int(v)


def _as_bool(v: bytes | None) -> bool | None:
    return None if v is None else v == b"t"


#: text-format values by column type OID (int2, int4, int8, bool); anything else is a string
_FROM_TEXT = {21: _as_int, 23: _as_int, 20: _as_int, 16: _as_bool}


def _reason(exc: BaseException) -> str:
    """psycopg's message in one line, without the connection string."""
    text = " ".join(str(exc).split())
    return re.sub(r"password=\S+", "password=***", text)[:300] or type(exc).__name__
