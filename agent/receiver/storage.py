"""The receiver's storage: one interface, one set of SQL, two backends (SQLite, PostgreSQL).

:class:`Storage` is everything the receiver asks of a database; :class:`SqlStorage`
implements it once, in SQL both engines run, and the backends
(:mod:`agent.receiver.sqlite_backend`, :mod:`agent.receiver.pg_backend`) supply the
connection, the schema migrations and the few words that differ (the placeholder, the
SHA-256 function, a per-stream lock). :func:`agent.receiver.backends.open_storage` picks one from ``--db``.

Tables (both engines):

``records``
    one row per ``(gateway_id, stream, seq)``: ``body`` is the record without its ``hash``
    in RFC 8785 canonical JSON — the very bytes the hash covers, so an auditor checks any
    row with ``sha256(prev_hash || body) == hash`` and nothing else — plus columns pulled
    out for the report (type, event, alarm id and state, ts, time quality), and what was
    found on arrival (``hash_ok``, ``link_ok``: NULL until the predecessor is stored).
    Never updated but for ``link_ok``, never deleted. The report does not trust the
    arrival flags: it re-verifies from the stored bytes, in SQL.
``conflicts``
    a record re-sent under a stored key with a different ``hash``: kept here, never over
    the stored one; one row per distinct ``(key, hash)``, counting repeats.
``duplicates``
    per stream, how many identical re-sends arrived.
``gateways``
    per gateway: first and last batch, batches received, and the ``config`` it last
    reported (``{"version", "sha256", "signer"}``), for the fleet view.

Concurrency: a batch is one transaction, under a lock on its stream (SQLite: the database
write lock; PostgreSQL: a transaction-scoped advisory lock on the stream), so several
receiver processes storing overlapping batches of the same stream neither lose an update
nor count a record twice, and a link is checked by whichever batch brings its second end.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from agent.exc import ReceiverError, StorageUnavailable  # noqa: F401 - the receiver's modules take them from here
from agent.protocol import ZERO_HASH


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def with_hash(body: str, hash_: str) -> dict[str, Any]:
    record = json.loads(body)
    record["hash"] = hash_
    return dict(record)


class Cursor(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ...) -> Any: ...
    def executemany(self, sql: str, params: Any) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class Storage(Protocol):
    """What the receiver needs of a database. Thread-safe; :meth:`close` when done."""

    #: where the data lives, for the report (a file path, or a URL without its password)
    path: str | Path

    def store_batch(
        self,
        gateway_id: str,
        stream: str,
        records: Sequence[Mapping[str, Any]],
        checked: Sequence[tuple[str, bool]],
        *,
        config: Mapping[str, Any] | None = None,
        sent_at: str | None = None,
    ) -> dict[str, int]: ...
    def records(self, gateway_id: str | None = None, stream: str | None = None) -> list[dict[str, Any]]: ...
    def export_lines(self, gateway_id: str, stream: str | None = None) -> Iterator[str]: ...
    def streams(self, gateway_id: str | None = None) -> list[tuple[str, str]]: ...
    def stream_summary(self, gateway_id: str, stream: str) -> dict[str, Any]: ...
    def gaps(self, gateway_id: str, stream: str) -> list[list[int]]: ...
    def link_checks(self, gateway_id: str, stream: str) -> Iterator[tuple[int, bool, str, int | None, str | None]]: ...
    def conflicts(self, gateway_id: str, stream: str) -> list[dict[str, Any]]: ...
    def events(self, gateway_id: str, stream: str, event: str) -> list[tuple[int, dict[str, Any]]]: ...
    def hashes_at(self, gateway_id: str, stream: str, seqs: Sequence[int]) -> dict[int, str]: ...
    def active_alarms(self, gateway_id: str) -> list[dict[str, Any]]: ...
    def gateways(self, gateway_id: str | None = None) -> list[dict[str, Any]]: ...
    def close(self) -> None: ...


class SqlStorage:
    """:class:`Storage` in SQL that SQLite and PostgreSQL both run; subclasses bind it to an engine.

    SQL here is written with ``?`` placeholders; a backend whose driver wants ``%s``
    rewrites them in :meth:`_sql`. ``{sha}`` stands for the engine's "lowercase hex
    SHA-256 of this text" and ``{greatest}`` for its two-argument maximum.
    """

    path: str | Path
    SHA = "coldgate_sha256({})"
    GREATEST = "max"

    # -- what a backend provides ----------------------------------------------------------

    def _transaction(self) -> AbstractContextManager[Cursor]:
        raise NotImplementedError

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _lock_stream(self, cur: Cursor, gateway_id: str, stream: str) -> None:
        """Serialise batches of one stream across processes (SQLite's write lock already does)."""

    def _seq_in(self, seqs: Sequence[int]) -> tuple[str, list[Any]]:
        """``seq IN (...)`` for this engine, and its parameters."""
        return "seq IN (" + ",".join("?" * len(seqs)) + ")", list(seqs)

    def close(self) -> None:
        raise NotImplementedError

    def _sql(self, sql: str) -> str:
        return sql.replace("{greatest}", self.GREATEST)

    def _sha(self, expr: str) -> str:
        return self.SHA.format(expr)

    # -- writing --------------------------------------------------------------------------

    def store_batch(
        self,
        gateway_id: str,
        stream: str,
        records: Sequence[Mapping[str, Any]],
        checked: Sequence[tuple[str, bool]],
        *,
        config: Mapping[str, Any] | None = None,
        sent_at: str | None = None,
    ) -> dict[str, int]:
        """Store a validated batch idempotently and commit; the stored/duplicates/conflicts counts.

        ``checked`` is, per record, its canonical body without ``hash`` and whether its
        hash matched on arrival. The links into and out of the new records are checked in
        the same transaction, against whatever neighbours are stored by then.
        """
        now = now_iso()
        seqs = [int(r["seq"]) for r in records]
        with self._transaction() as cur:
            self._lock_stream(cur, gateway_id, stream)
            # what is stored of these seqs and of their neighbours: one look serves both the
            # idempotency check and the links at the batch's edges
            held = self._held(cur, gateway_id, stream, seqs)
            hashes = {seq: h for seq, (h, _) in held.items()}  # each seq's stored hash, once committed
            new_rows: list[list[Any]] = []
            new: list[Mapping[str, Any]] = []
            conflict_rows: list[tuple[Any, ...]] = []
            duplicates = 0
            for r, (body, ok) in zip(records, checked, strict=True):
                seq = int(r["seq"])
                stored = hashes.get(seq)
                if stored is None:
                    hashes[seq] = r["hash"]
                    new.append(r)
                    kind = r["type"]
                    new_rows.append(
                        [
                            gateway_id, stream, seq, kind,
                            r.get("event") if kind == "event" else None,
                            r.get("alarm_id") if kind == "alarm" else None,
                            r.get("state") if kind == "alarm" else None,
                            r["ts"], r["time_quality"], r["prev_hash"], r["hash"], ok, None, now, body,
                        ]
                    )
                elif stored == r["hash"]:
                    duplicates += 1
                else:
                    conflict_rows.append((gateway_id, stream, seq, r["hash"], now, now, body))
            # the link into each new record, where its predecessor is known (stored, or in this batch)
            for row, r in zip(new_rows, new, strict=True):
                seq = row[2]
                pred = ZERO_HASH if seq == 1 else hashes.get(seq - 1)
                row[12] = None if pred is None else r["prev_hash"] == pred
            # the link out of each new record to a successor stored earlier and not judged until now
            later = [(int(r["seq"]) + 1, r["hash"]) for r in new
                     if int(r["seq"]) + 1 in held and held[int(r["seq"]) + 1][1] is None]
            if new_rows:
                self._insert_records(cur, [tuple(row) for row in new_rows])
            for succ, h in later:
                cur.execute(
                    self._sql("UPDATE records SET link_ok = (prev_hash = ?) WHERE gateway_id = ? AND stream = ?"
                              " AND seq = ? AND link_ok IS NULL"),
                    (h, gateway_id, stream, succ),
                )
            if conflict_rows:
                cur.executemany(
                    self._sql(
                        "INSERT INTO conflicts (gateway_id, stream, seq, hash, times, first_received_at,"
                        " last_received_at, body) VALUES (?,?,?,?,1,?,?,?) ON CONFLICT (gateway_id, stream, seq, hash)"
                        " DO UPDATE SET times = conflicts.times + 1, last_received_at = excluded.last_received_at"
                    ),
                    conflict_rows,
                )
            if duplicates:
                cur.execute(
                    self._sql(
                        "INSERT INTO duplicates (gateway_id, stream, count) VALUES (?,?,?) ON CONFLICT"
                        " (gateway_id, stream) DO UPDATE SET count = duplicates.count + excluded.count"
                    ),
                    (gateway_id, stream, duplicates),
                )
            self._note_gateway(cur, gateway_id, now, sent_at, config)
        return {"stored": len(new_rows), "duplicates": duplicates, "conflicts": len(conflict_rows)}

    def _held(self, cur: Cursor, gateway_id: str, stream: str, seqs: Sequence[int]) -> dict[int, tuple[str, Any]]:
        """``{seq: (hash, link_ok)}`` of what is stored of ``seqs`` and their neighbours (``seq ± 1``)."""
        lo, hi = min(seqs) - 1, max(seqs) + 1
        if hi - lo <= 4 * len(seqs):  # a run, the usual batch: one range scan of the key
            cur.execute(
                self._sql("SELECT seq, hash, link_ok FROM records WHERE gateway_id = ? AND stream = ?"
                          " AND seq BETWEEN ? AND ?"),
                (gateway_id, stream, lo, hi),
            )
            return {seq: (h, link) for seq, h, link in cur.fetchall()}
        probe = sorted({s + d for s in seqs for d in (-1, 0, 1)})
        out: dict[int, tuple[str, Any]] = {}
        for i in range(0, len(probe), 500):
            where, params = self._seq_in(probe[i : i + 500])
            cur.execute(
                self._sql(f"SELECT seq, hash, link_ok FROM records WHERE gateway_id = ? AND stream = ? AND {where}"),
                [gateway_id, stream, *params],
            )
            out.update((seq, (h, link)) for seq, h, link in cur.fetchall())
        return out

    def _insert_records(self, cur: Cursor, rows: list[tuple[Any, ...]]) -> None:
        cur.executemany(
            self._sql(
                "INSERT INTO records (gateway_id, stream, seq, type, event, alarm_id, state, ts, time_quality,"
                " prev_hash, hash, hash_ok, link_ok, received_at, body) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
            ),
            rows,
        )

    def _note_gateway(
        self, cur: Cursor, gateway_id: str, now: str, sent_at: str | None, config: Mapping[str, Any] | None
    ) -> None:
        cfg = json.dumps(dict(config), sort_keys=True) if config is not None else None
        cur.execute(
            self._sql(
                "INSERT INTO gateways (gateway_id, first_batch_at, last_batch_at, last_sent_at, batches, config,"
                " config_at) VALUES (?,?,?,?,1,?,?) ON CONFLICT (gateway_id) DO UPDATE SET"
                " last_batch_at = {greatest}(gateways.last_batch_at, excluded.last_batch_at),"
                " last_sent_at = excluded.last_sent_at, batches = gateways.batches + 1,"
                " config = CASE WHEN excluded.config IS NULL THEN gateways.config ELSE excluded.config END,"
                " config_at = CASE WHEN excluded.config IS NULL THEN gateways.config_at ELSE excluded.config_at END"
            ),
            (gateway_id, now, now, sent_at, cfg, now if cfg is not None else None),
        )

    # -- reading --------------------------------------------------------------------------

    def records(self, gateway_id: str | None = None, stream: str | None = None) -> list[dict[str, Any]]:
        """Stored records as received, ascending by gateway, stream and seq."""
        rows = self._query(
            "SELECT body, hash FROM records WHERE (? IS NULL OR gateway_id = ?) AND (? IS NULL OR stream = ?)"
            " ORDER BY gateway_id, stream, seq",
            (gateway_id, gateway_id, stream, stream),
        )
        return [with_hash(b, h) for b, h in rows]

    def export_lines(self, gateway_id: str, stream: str | None = None) -> Iterator[str]:
        """One JSON line per record of the gateway (or one stream), exactly as chained: the stored
        canonical bytes with ``"hash"`` spliced in, by stream and seq — what ``coldgate verify`` reads."""
        last: tuple[str, int] = ("", 0)
        while True:  # in pages, so a long history is never held whole
            rows = self._query(
                "SELECT stream, seq, body, hash FROM records WHERE gateway_id = ? AND (? IS NULL OR stream = ?)"
                " AND (stream > ? OR (stream = ? AND seq > ?)) ORDER BY stream, seq LIMIT 5000",
                (gateway_id, stream, stream, last[0], last[0], last[1]),
            )
            for _, _, body, h in rows:
                yield f'{body[:-1]},"hash":"{h}"}}'
            if len(rows) < 5000:
                return
            last = (rows[-1][0], rows[-1][1])

    def streams(self, gateway_id: str | None = None) -> list[tuple[str, str]]:
        """Every ``(gateway_id, stream)`` that has records or conflicts."""
        rows = self._query(
            "SELECT gateway_id, stream FROM records WHERE ? IS NULL OR gateway_id = ? GROUP BY gateway_id, stream"
            " UNION SELECT gateway_id, stream FROM conflicts WHERE ? IS NULL OR gateway_id = ? ORDER BY 1, 2",
            (gateway_id, gateway_id, gateway_id, gateway_id),
        )
        return [(g, s) for g, s in rows]

    def stream_summary(self, gateway_id: str, stream: str) -> dict[str, Any]:
        """Counts, first/last seq and ts, last arrival; by type and by time_quality."""
        ((count, first, last, first_ts, last_ts, last_rx),) = self._query(
            "SELECT count(*), min(seq), max(seq), min(ts), max(ts), max(received_at) FROM records"
            " WHERE gateway_id = ? AND stream = ?",
            (gateway_id, stream),
        )
        by_type = dict(
            self._query(
                "SELECT type, count(*) FROM records WHERE gateway_id = ? AND stream = ? GROUP BY type ORDER BY type",
                (gateway_id, stream),
            )
        )
        tq = dict(
            self._query(
                "SELECT time_quality, count(*) FROM records WHERE gateway_id = ? AND stream = ?"
                " GROUP BY time_quality ORDER BY time_quality",
                (gateway_id, stream),
            )
        )
        dups = self._query("SELECT count FROM duplicates WHERE gateway_id = ? AND stream = ?", (gateway_id, stream))
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
            "SELECT prev + 1, seq - 1 FROM (SELECT seq, coalesce(lag(seq) OVER (ORDER BY seq), 0) AS prev"
            " FROM records WHERE gateway_id = ? AND stream = ?) t WHERE seq > prev + 1 ORDER BY seq",
            (gateway_id, stream),
        )
        return [[a, b] for a, b in rows]

    def link_checks(self, gateway_id: str, stream: str) -> Iterator[tuple[int, bool, str, int | None, str | None]]:
        """``(seq, hash_ok, prev_hash, seq of predecessor, its hash)`` for every record that breaks the chain.

        Re-verified now, from the stored bytes: ``hash_ok`` is ``sha256(prev_hash || body)
        == hash`` computed by the database engine, not the flag stored on arrival, so an
        edited row reads broken. Only rows that fail something are returned: a bad own
        hash, a ``prev_hash`` that differs from the stored hash of ``seq - 1``, or seq 1
        not starting from zeros.
        """
        ok = f"({self._sha('prev_hash || body')} = hash)"
        rows = self._query(
            f"SELECT seq, ok, prev_hash, pseq, phash FROM ("
            f" SELECT seq, {ok} AS ok, prev_hash, lag(seq) OVER w AS pseq, lag(hash) OVER w AS phash"
            f" FROM records WHERE gateway_id = ? AND stream = ? WINDOW w AS (ORDER BY seq)) t"
            f" WHERE NOT ok OR (pseq = seq - 1 AND prev_hash <> phash) OR (seq = 1 AND prev_hash <> ?) ORDER BY seq",
            (gateway_id, stream, ZERO_HASH),
        )
        for seq, good, prev_hash, pseq, phash in rows:
            yield seq, bool(good), prev_hash, pseq, phash

    def conflicts(self, gateway_id: str, stream: str) -> list[dict[str, Any]]:
        rows = self._query(
            "SELECT c.seq, r.hash, c.hash, c.times, c.first_received_at, c.last_received_at FROM conflicts c"
            " LEFT JOIN records r ON r.gateway_id = c.gateway_id AND r.stream = c.stream AND r.seq = c.seq"
            " WHERE c.gateway_id = ? AND c.stream = ? ORDER BY c.seq, c.first_received_at",
            (gateway_id, stream),
        )
        return [
            {"seq": s, "stored_hash": sh, "received_hash": rh, "times": t, "first_received_at": f,
             "last_received_at": la}
            for s, sh, rh, t, f, la in rows
        ]

    def events(self, gateway_id: str, stream: str, event: str) -> list[tuple[int, dict[str, Any]]]:
        """``(seq, record)`` of each event of that name in the stream, ascending by seq."""
        rows = self._query(
            "SELECT seq, body, hash FROM records WHERE gateway_id = ? AND stream = ? AND event = ? ORDER BY seq",
            (gateway_id, stream, event),
        )
        return [(seq, with_hash(body, h)) for seq, body, h in rows]

    def hashes_at(self, gateway_id: str, stream: str, seqs: Sequence[int]) -> dict[int, str]:
        out: dict[int, str] = {}
        seqs = sorted(set(seqs))
        for i in range(0, len(seqs), 500):
            where, params = self._seq_in(seqs[i : i + 500])
            out.update(
                self._query(
                    f"SELECT seq, hash FROM records WHERE gateway_id = ? AND stream = ? AND {where}",
                    [gateway_id, stream, *params],
                )
            )
        return out

    def active_alarms(self, gateway_id: str) -> list[dict[str, Any]]:
        """Alarms whose latest record (by seq, per stream and ``alarm_id``) says ``raised``."""
        rows = self._query(
            "SELECT r.stream, r.seq, r.body FROM records r JOIN (SELECT stream, alarm_id, max(seq) AS seq"
            " FROM records WHERE gateway_id = ? AND type = 'alarm' GROUP BY stream, alarm_id) last"
            " ON r.gateway_id = ? AND r.stream = last.stream AND r.seq = last.seq"
            " WHERE r.state = 'raised' ORDER BY r.stream, r.seq",
            (gateway_id, gateway_id),
        )
        out = []
        for stream, seq, body in rows:
            rec = json.loads(body)
            out.append(
                {"stream": stream, "seq": seq, **{k: rec.get(k) for k in ("alarm_id", "rule", "sensor_id", "severity",
                                                                          "started_at", "ts", "value", "limit")}}
            )
        return out

    def gateways(self, gateway_id: str | None = None) -> list[dict[str, Any]]:
        rows = self._query(
            "SELECT gateway_id, first_batch_at, last_batch_at, last_sent_at, batches, config, config_at FROM gateways"
            " WHERE ? IS NULL OR gateway_id = ? ORDER BY gateway_id",
            (gateway_id, gateway_id),
        )
        return [
            {"gateway_id": g, "first_batch_at": f, "last_batch_at": la, "last_sent_at": sa, "batches": n,
             "config": json.loads(c) if c else None, "config_reported_at": ca}
            for g, f, la, sa, n, c, ca in rows
        ]
