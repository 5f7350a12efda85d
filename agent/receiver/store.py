"""The receiver's SQLite database: every statement the receiver runs is in this module.

Tables (``PRAGMA user_version`` 1):

``records``
    one row per ``(gateway_id, stream, seq)``: ``body`` is the record without its ``hash``
    in RFC 8785 canonical JSON, i.e. the very bytes the hash covers, so an auditor can
    check any row with ``sha256(prev_hash || body) == hash`` and nothing else; a few
    columns pulled out for the report; ``hash_ok``, the record's own hash checked once, on
    arrival. Never updated, never deleted.
``conflicts``
    a record re-sent under a key already stored but with a different ``hash``: kept here,
    never over the stored one. One row per distinct ``(key, hash)``, counting repeats.
``duplicates``
    per stream, how many identical re-sends arrived (the at-least-once tax).

WAL with ``synchronous=FULL``: a batch is committed, to the platter, before the HTTP
response goes out. One connection, used under a lock: SQLite serialises writers anyway.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.exc import ReceiverError

SCHEMA_VERSION = 1

_MIGRATIONS: list[str] = [
    # 0 -> 1
    """
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
    """,
]


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _with_hash(body: str, hash_: str) -> dict[str, Any]:
    record = json.loads(body)
    record["hash"] = hash_
    return dict(record)


class ReceiverStore:
    """The receiver's database. Thread-safe; :meth:`close` when done."""

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.exists():
            raise ReceiverError(f"{self.path}: no such receiver database")
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self.close()
            raise ReceiverError(f"{self.path}: cannot open the receiver database: {exc}") from None

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise ReceiverError(f"{self.path}: schema version {version} is newer than this receiver ({SCHEMA_VERSION})")
        for v in range(version, SCHEMA_VERSION):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for stmt in _MIGRATIONS[v].split(";"):
                    if stmt.strip():
                        self._db.execute(stmt)
                self._db.execute(f"PRAGMA user_version={v + 1}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        db = getattr(self, "_db", None)
        if db is not None:
            with self._lock:
                db.close()
                self._db = None  # type: ignore[assignment]

    # -- writing ----------------------------------------------------------------------

    def store_batch(
        self, gateway_id: str, stream: str, records: Sequence[dict[str, Any]], checked: Sequence[tuple[str, bool]]
    ) -> dict[str, int]:
        """Store a validated batch idempotently and commit. Returns stored/duplicates/conflicts counts.

        ``checked`` is, per record, its canonical body without ``hash`` and whether the hash matched.
        """
        now = now_iso()
        first, last = records[0]["seq"], records[-1]["seq"]
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                existing = dict(
                    db.execute(
                        "SELECT seq, hash FROM records WHERE gateway_id=? AND stream=? AND seq BETWEEN ? AND ?",
                        (gateway_id, stream, first, last),
                    ).fetchall()
                )
                new_rows: list[tuple[Any, ...]] = []
                conflict_rows: list[tuple[Any, ...]] = []
                duplicates = 0
                for r, (body, ok) in zip(records, checked, strict=True):
                    seq = r["seq"]
                    stored = existing.get(seq)
                    if stored is None:
                        new_rows.append(
                            (
                                gateway_id,
                                stream,
                                seq,
                                r["type"],
                                r.get("event") if r["type"] == "event" else None,
                                r["ts"],
                                r["time_quality"],
                                r["prev_hash"],
                                r["hash"],
                                int(ok),
                                now,
                                body,
                            )
                        )
                    elif stored == r["hash"]:
                        duplicates += 1
                    else:
                        conflict_rows.append((gateway_id, stream, seq, r["hash"], now, now, body))
                db.executemany("INSERT INTO records VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", new_rows)
                db.executemany(
                    "INSERT INTO conflicts VALUES (?,?,?,?,1,?,?,?) ON CONFLICT DO UPDATE SET "
                    "times = times + 1, last_received_at = excluded.last_received_at",
                    conflict_rows,
                )
                if duplicates:
                    db.execute(
                        "INSERT INTO duplicates VALUES (?,?,?) ON CONFLICT DO UPDATE SET count = count + excluded.count",
                        (gateway_id, stream, duplicates),
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return {"stored": len(new_rows), "duplicates": duplicates, "conflicts": len(conflict_rows)}

    # -- reading ----------------------------------------------------------------------

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def records(self, gateway_id: str | None = None, stream: str | None = None) -> list[dict[str, Any]]:
        """Stored records as received, ascending by gateway, stream and seq."""
        rows = self._query(
            "SELECT body, hash FROM records WHERE (?1 IS NULL OR gateway_id=?1) AND (?2 IS NULL OR stream=?2) "
            "ORDER BY gateway_id, stream, seq",
            (gateway_id, stream),
        )
        return [_with_hash(b, h) for b, h in rows]

    def streams(self, gateway_id: str | None = None) -> list[tuple[str, str]]:
        """Every ``(gateway_id, stream)`` that has records or conflicts."""
        rows = self._query(
            "SELECT gateway_id, stream FROM records WHERE ?1 IS NULL OR gateway_id=?1 GROUP BY gateway_id, stream "
            "UNION SELECT gateway_id, stream FROM conflicts WHERE ?1 IS NULL OR gateway_id=?1 ORDER BY 1, 2",
            (gateway_id,),
        )
        return [(g, s) for g, s in rows]

    def stream_summary(self, gateway_id: str, stream: str) -> dict[str, Any]:
        """Counts, first/last seq and ts, last arrival; by type and by time_quality."""
        ((count, first, last, first_ts, last_ts, last_rx),) = self._query(
            "SELECT count(*), min(seq), max(seq), min(ts), max(ts), max(received_at) FROM records "
            "WHERE gateway_id=? AND stream=?",
            (gateway_id, stream),
        )
        by_type = dict(
            self._query(
                "SELECT type, count(*) FROM records WHERE gateway_id=? AND stream=? GROUP BY type ORDER BY type",
                (gateway_id, stream),
            )
        )
        tq = dict(
            self._query(
                "SELECT time_quality, count(*) FROM records WHERE gateway_id=? AND stream=? GROUP BY time_quality "
                "ORDER BY time_quality",
                (gateway_id, stream),
            )
        )
        dups = self._query("SELECT count FROM duplicates WHERE gateway_id=? AND stream=?", (gateway_id, stream))
        return {
            "records": count,
            "first_seq": first,
            "last_seq": last,
            "first_ts": first_ts,
            "last_ts": last_ts,
            "last_received_at": last_rx,
            "by_type": by_type,
            "time_quality": tq,
            "duplicates": dups[0][0] if dups else 0,
        }

    def gaps(self, gateway_id: str, stream: str) -> list[list[int]]:
        """Missing seq ranges ``[first, last]`` between 1 and the highest seq received."""
        rows = self._query(
            "SELECT prev + 1, seq - 1 FROM (SELECT seq, coalesce(lag(seq) OVER (ORDER BY seq), 0) AS prev "
            "FROM records WHERE gateway_id=? AND stream=?) WHERE seq > prev + 1 ORDER BY seq",
            (gateway_id, stream),
        )
        return [[a, b] for a, b in rows]

    def link_checks(self, gateway_id: str, stream: str) -> Iterator[tuple[int, bool, str, int | None, str | None]]:
        """``(seq, hash_ok, prev_hash, seq of predecessor, its hash)`` for every record that may break the chain.

        Only rows that fail something are returned: a bad own hash, a ``prev_hash`` that
        differs from the stored hash of ``seq - 1``, or seq 1 not starting from zeros. The
        check runs over what is stored now, so a link is judged as soon as both ends are
        in, whichever arrived first.
        """
        rows = self._query(
            "SELECT seq, hash_ok, prev_hash, pseq, phash FROM ("
            " SELECT seq, hash_ok, prev_hash, lag(seq) OVER w AS pseq, lag(hash) OVER w AS phash"
            " FROM records WHERE gateway_id=? AND stream=? WINDOW w AS (ORDER BY seq))"
            " WHERE hash_ok = 0 OR (pseq = seq - 1 AND prev_hash != phash)"
            " OR (seq = 1 AND prev_hash != ?) ORDER BY seq",
            (gateway_id, stream, "0" * 64),
        )
        for seq, ok, prev_hash, pseq, phash in rows:
            yield seq, bool(ok), prev_hash, pseq, phash

    def conflicts(self, gateway_id: str, stream: str) -> list[dict[str, Any]]:
        rows = self._query(
            "SELECT c.seq, r.hash, c.hash, c.times, c.first_received_at, c.last_received_at FROM conflicts c "
            "LEFT JOIN records r USING (gateway_id, stream, seq) WHERE c.gateway_id=? AND c.stream=? "
            "ORDER BY c.seq, c.first_received_at",
            (gateway_id, stream),
        )
        return [
            {
                "seq": s,
                "stored_hash": sh,
                "received_hash": rh,
                "times": t,
                "first_received_at": f,
                "last_received_at": la,
            }
            for s, sh, rh, t, f, la in rows
        ]

    def stream_started(self, gateway_id: str, stream: str) -> list[tuple[int, dict[str, Any]]]:
        """``(seq, details)`` of each ``stream_started`` event in the stream (normally one, at seq 1)."""
        rows = self._query(
            "SELECT seq, body FROM records WHERE gateway_id=? AND stream=? AND event='stream_started' ORDER BY seq",
            (gateway_id, stream),
        )
        out = []
        for seq, body in rows:
            details = json.loads(body).get("details")
            out.append((seq, details if isinstance(details, dict) else {}))
        return out
