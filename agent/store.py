"""The record store: an append-only, hash-chained SQLite log of readings, alarms and events.

All SQL of the agent lives here. The guarantees, and how they are kept:

Durable
    WAL journal with ``synchronous=FULL``: a transaction that :meth:`Store.append`
    returned from survives a crash or a power cut. The daemon group-commits: readings
    gather in memory for at most ``commit_interval_s`` (≤ 1 s) and go in one transaction.
Append-only, gap-free, chained
    ``seq`` is assigned inside the writing transaction from the chain head kept in
    ``meta`` (never from a clock, never reused, not even after the records are deleted);
    each record's ``hash`` is SHA-256 over ``prev_hash`` and its RFC 8785 form
    (:mod:`agent.canonical`). The canonical body is stored as it was hashed, so what is
    sent is byte-for-byte what was chained. Several processes may append (the CLI
    acknowledging an alarm while the daemon runs): the head is read under
    ``BEGIN IMMEDIATE``.
Nothing unsent is deleted
    Records are deleted only once acknowledged by the server, by ``seq``, keeping the
    newest ``keep_acked`` of them for diagnostics. Never by age.
Quota
    When the database reaches its quota, acknowledged records go first. If unsent data
    alone fills it, new *readings* are refused (alarms and events still go into a reserve
    of ``reserve_pct`` of the quota), and every refused reading is counted in a
    ``data_loss`` event (which sensors, how many, over what time, why) written at once
    and summarised when space returns. Committed data is never thinned or overwritten:
    an auditor must be able to trust what is there.
Self-healing
    A database that cannot be opened or fails ``PRAGMA quick_check`` is set aside
    (renamed, with its WAL, never deleted) and a new stream starts whose first record is
    a ``stream_started`` event naming the reason, the set-aside file and the previous
    stream and its last seq (kept in a small side file next to the database).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import sqlite_utils

from agent.canonical import ZERO_HASH, NeedsLibrary, canonical_with, record_hash, scalar, template
from agent.exc import StoreError, StoreFull
from agent.stamp import Stamper
from agent.timebase import Clock, rfc3339

log = logging.getLogger(__name__)

PENDING, ACKED, SET_ASIDE = 0, 1, 2

#: Local-only keys of an item given to :meth:`Store.append` (not part of the record),
#: and the keys the store writes itself.
_NOT_COPIED = frozenset({"mono_ns", "boot_id", "stream", "seq", "type", "ts", "time_quality", "prev_hash", "hash"})


_WORDS = {w: json.dumps(w) for w in ("reading", "alarm", "event", "synced", "unsynced", "corrected")}


#: the fields a plain reading may have to be written from a template, and the slots
_TEMPLATE_KEYS = ("sensor_id", "quantity", "unit", "driver", "shipment", "calibration", "model", "brand")
_TEMPLATE_FIELDS = frozenset({*_TEMPLATE_KEYS, "value"})
#: the keys of a reading item that can take the template path as it is (no copy of its fields)
_FAST_READING_KEYS = frozenset({*_TEMPLATE_FIELDS, "type", "ts", "time_quality", "mono_ns", "boot_id"})
_SLOTS = {"prev_hash": '"%s"', "seq": "%d", "ts": '"%s"', "value": "%s"}  # in sorted key order


def tally_loss(lost: dict[str, Any], readings: Iterable[Mapping[str, Any]]) -> None:
    """Count lost readings into ``lost``: how many, per sensor, first and last time."""
    sensors = lost.setdefault("sensors", {})
    for item in readings:
        lost["count"] = lost.get("count", 0) + 1
        ts = float(item["ts"])
        lost["first_ts"] = min(lost.get("first_ts", ts), ts)
        lost["last_ts"] = max(lost.get("last_ts", ts), ts)
        sid = str(item.get("sensor_id"))
        sensors[sid] = sensors.get(sid, 0) + 1


def loss_details(lost: Mapping[str, Any]) -> dict[str, Any]:
    """The ``data_loss`` event details of a :func:`tally_loss` count."""
    return {"what": "readings", "count": lost["count"], "sensors": lost["sensors"],
            "from": rfc3339(lost["first_ts"]), "to": rfc3339(lost["last_ts"])}


def _json_word(word: str) -> str:
    return _WORDS.get(word) or json.dumps(word, ensure_ascii=False)


def _migration_1(db: sqlite_utils.Database) -> None:
    db.table("meta").create({"key": str, "value": str}, pk="key", not_null={"value"})
    db.table("records").create(
        {"seq": int, "type": str, "ts": float, "tq": str, "sensor_id": str, "quantity": str, "body": str,
         "hash": str, "mono_ns": int, "boot_id": str, "state": int},
        pk="seq", not_null={"type", "ts", "tq", "body", "hash", "state"}, defaults={"state": PENDING},
    )
    # The sync queue: alarms and events first, then the reading backlog, each by seq.
    # Partial indexes: sqlite-utils's create_index has no WHERE.
    db.execute("CREATE INDEX records_pending ON records(seq) WHERE state = 0")  # dropped by 2
    db.execute("CREATE INDEX records_pending_urgent ON records(seq) WHERE state = 0 AND type != 'reading'")
    db.table("set_aside").create({"seq": int, "reason": str, "at": float}, pk="seq", not_null={"reason", "at"})
    db.table("state").create({"key": str, "value": str}, pk="key", not_null={"value"})
    db.table("latest").create(
        {"sensor_id": str, "quantity": str, "seq": int, "ts": float, "value": float, "unit": str},
        pk=("sensor_id", "quantity"),
    )
    db.table("commands").create(
        {"id": int, "kind": str, "payload": str, "created": float, "done": int},
        pk="id", not_null={"kind", "payload", "created", "done"}, defaults={"done": 0},
    )


def _migration_2(db: sqlite_utils.Database) -> None:
    # The reading backlog is walked in seq (rowid) order from the lowest unsent seq; an
    # index of every pending row cost each insert a second B-tree write.
    db.table("records").drop_index("records_pending", ignore=True)


def _migration_3(db: sqlite_utils.Database) -> None:
    # The CLI talks to the running agent over the control socket now, not a polled table.
    db.execute("DROP TABLE IF EXISTS commands")


#: Named migrations, applied in order; ``PRAGMA user_version`` counts those applied.
MIGRATIONS = [("initial schema", _migration_1), ("no index of pending readings", _migration_2),
              ("no command table", _migration_3)]


class Store:
    """One stream's records in one SQLite file. Use :meth:`open`."""

    def __init__(self, conn: sqlite3.Connection, path: Path, *, quota_bytes: int, reserve_pct: float,
                 keep_acked: int) -> None:
        self.conn = conn
        self.path = path
        self.quota_bytes = quota_bytes
        self.reserve_bytes = int(quota_bytes * reserve_pct / 100.0)
        self.keep_acked = keep_acked
        self._lock = threading.RLock()
        self.stream_id: str = self._meta("stream_id") or ""
        self.gateway_id: str = self._meta("gateway_id") or ""
        self._refusing = False
        self._templates: dict[tuple[Any, ...], str] = {}
        #: stamps the records the store writes itself (stream_started, data_loss)
        self.stamper = Stamper()
        #: every record at or below this seq has left the queue (acked or set aside)
        self._floor = 0
        #: opened to read (diagnostics, the sync thread): never writes the side file
        self.reader = False
        self._lost: dict[str, Any] = {}
        self._last_loss_event = 0.0
        self._db: sqlite_utils.Database | None = None
        #: committed events by name, data_loss by reason (metrics); the daemon passes one
        #: dict that outlives a reopened store; None counts nothing
        self.counters: dict[tuple[str, str], int] | None = None
        self._tx_events: list[Mapping[str, Any]] = []

    # -- opening -----------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike[str], *, gateway_id: str, quota_bytes: int = 512 << 20,
             reserve_pct: float = 5.0, keep_acked: int = 100_000, check: bool = True,
             create: bool = True, stamper: Stamper | None = None, clock: Clock | None = None,
             counters: dict[tuple[str, str], int] | None = None) -> Store:
        """Open (or create) the store at ``path``; set a broken one aside and start anew.

        With ``create=False`` a missing file raises :class:`StoreError` (the CLI reads a
        store; only the daemon creates one). The records the store makes itself are
        stamped by ``stamper`` (or a stamper on ``clock``): pass the configured one.
        """
        p = Path(path)
        if not create and not p.exists():
            raise StoreError(f"no store at {p} (has the agent run with this config?)")
        p.parent.mkdir(parents=True, exist_ok=True)
        existed = p.exists()
        reason, error, aside = ("new" if not existed else None), None, None
        try:
            conn = cls._connect(p, check=check and existed)
        except sqlite3.OperationalError as exc:
            # locked, unreadable, I/O error: not proof of corruption, so nothing is set aside
            raise StoreError(f"cannot open store {p}: {exc}{_where_note(p)}") from exc
        except sqlite3.DatabaseError as exc:
            if not create:
                raise StoreError(f"store {p} is unreadable: {exc}") from exc
            error = str(exc)
            aside = cls._set_aside(p)
            log.error("store %s cannot be used (%s); set aside as %s, starting a new stream", p, exc, aside)
            reason = "corrupt"
            conn = cls._connect(p, check=False)
        store = cls(conn, p, quota_bytes=quota_bytes, reserve_pct=reserve_pct, keep_acked=keep_acked)
        store.reader = not create
        store.stamper = stamper or Stamper(clock)
        store.counters = counters
        if not store.stream_id and not create:
            conn.close()
            raise StoreError(f"store {p} is being created; try again in a moment")
        if not store.stream_id:
            store._start_stream(gateway_id, reason or "new", error=error, set_aside=aside)
        return store

    @staticmethod
    def _connect(p: Path, *, check: bool) -> sqlite3.Connection:
        conn = sqlite3.connect(p, isolation_level=None, check_same_thread=False, timeout=30.0)
        try:
            conn.execute("PRAGMA busy_timeout = 30000")
            if check:
                row = conn.execute("PRAGMA quick_check").fetchone()
                if row is None or row[0] != "ok":
                    raise sqlite3.DatabaseError(f"quick_check: {row[0] if row else 'no answer'}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            _migrate(conn)
            if check:
                conn.execute("SELECT value FROM meta WHERE key = 'stream_id'").fetchone()
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _set_aside(p: Path) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = p.with_name(f"{p.name}.corrupt-{stamp}")
        n = 1
        while target.exists():
            target = p.with_name(f"{p.name}.corrupt-{stamp}-{n}")
            n += 1
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(p) + suffix)
            if src.exists():
                src.rename(Path(str(target) + suffix))
        return target

    @property
    def sidecar(self) -> Path:
        return self.path.with_name(self.path.name + ".stream")

    def _start_stream(self, gateway_id: str, reason: str, *, error: str | None, set_aside: Path | None) -> None:
        previous: dict[str, Any] = {}
        try:
            previous = json.loads(self.sidecar.read_text())
        except (OSError, ValueError):
            pass
        if reason == "new" and previous.get("stream"):
            reason = "store_missing"  # the file went away, but this gateway had a stream here
        stream = str(uuid.uuid4())
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                existing = self._meta("stream_id")
                if existing:  # another process created the stream first: adopt it
                    self.conn.execute("COMMIT")
                    self.stream_id, self.gateway_id = existing, self._meta("gateway_id") or gateway_id
                    return
                for k, v in (("stream_id", stream), ("gateway_id", gateway_id), ("head_seq", "0"),
                             ("head_hash", ZERO_HASH), ("created_at", rfc3339(time.time()))):
                    self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, v))
                self.conn.execute("COMMIT")
            except BaseException:
                _rollback(self.conn)
                raise
        self.stream_id, self.gateway_id = stream, gateway_id
        details: dict[str, Any] = {"reason": reason}
        if previous.get("stream"):
            details["previous_stream"] = previous["stream"]
            if previous.get("last_seq") is not None:
                details["previous_last_seq"] = previous["last_seq"]
        if set_aside is not None:
            details["set_aside"] = str(set_aside)
        if error:
            details["error"] = error
        self.append([self.stamper.event("stream_started", details)])
        self.write_sidecar()

    def write_sidecar(self) -> None:
        """Remember stream id and head seq beside the database (for the next stream_started)."""
        tmp = self.sidecar.with_name(f"{self.sidecar.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({"stream": self.stream_id, "last_seq": self.head()[0]}))
        os.replace(tmp, self.sidecar)

    def close(self, *, sidecar: bool | None = None) -> None:
        """Close, after any statement in progress on another thread (never under it).

        The side file is written by the store's owner, not by readers (``create=False``).
        """
        with self._lock:
            if not self.reader:
                try:
                    self.report_losses()
                except (StoreError, sqlite3.Error) as exc:
                    log.error("could not record refused readings at close: %s", exc)
            if sidecar if sidecar is not None else not self.reader:
                try:
                    self.write_sidecar()
                except (OSError, sqlite3.Error):
                    pass
            self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- appending ---------------------------------------------------------------------
    def _meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def head(self) -> tuple[int, str]:
        """``(seq, hash)`` of the newest record (0 and 64 zeros when there is none)."""
        with self._lock:
            return int(self._meta("head_seq") or 0), self._meta("head_hash") or ZERO_HASH

    def append(self, items: Sequence[Mapping[str, Any]], *, state: Mapping[str, Any] | None = None) -> list[int]:
        """Append records in one transaction; return their seqs.

        Each item has ``type`` (reading|alarm|event), ``ts`` (epoch seconds),
        ``time_quality`` and the type's fields; ``mono_ns`` and ``boot_id`` are kept
        locally and not sent. Epoch-second values of ``started_at`` are formatted like
        ``ts``. ``state`` (e.g. the rule engine's snapshot) is saved in the same
        transaction, so the records and the state that produced them never disagree.
        Readings refused for the quota are counted in a ``data_loss`` event.
        Raises :class:`StoreFull` when the disk itself is full (nothing was written).
        """
        with self._lock:
            # the loss accounting changes only with a commit: a failed one is retried whole
            saved = (copy.deepcopy(self._lost), self._refusing, self._last_loss_event)
            try:
                items = self._apply_quota(items)
                self._tx_events = []
                with self._transaction():
                    seqs = self._append_locked(items, state)
                for item in self._tx_events:  # the events of this commit (none on the readings' path)
                    self._count(item)
            except sqlite3.Error as exc:
                self._lost, self._refusing, self._last_loss_event = saved
                if _is_full(exc):
                    raise StoreFull(f"disk full while writing {len(items)} records: {exc}") from exc
                raise StoreError(f"append failed: {type(exc).__name__}: {exc}") from exc
            except BaseException:
                self._lost, self._refusing, self._last_loss_event = saved
                raise
            return seqs

    def append_checkpoint(self, make: Callable[[str, int, str], Mapping[str, Any]]) -> int:
        """Append the record ``make(stream, head_seq, head_hash)`` returns, reading the head
        in the same transaction (under ``BEGIN IMMEDIATE``: no other writer, not even
        another process, can append in between). For the signed ``chain_checkpoint``
        (:mod:`agent.identity`), which covers records ``1..head_seq`` and gets
        ``head_seq + 1``. Returns its seq."""
        with self._lock:
            try:
                with self._transaction():
                    head_seq = int(self._meta("head_seq") or 0)
                    head_hash = self._meta("head_hash") or ZERO_HASH
                    item = make(self.stream_id, head_seq, head_hash)
                    self._tx_events = []
                    seqs = self._append_locked([item], None)
            except sqlite3.Error as exc:
                if "full" in str(exc).lower():
                    raise StoreFull(f"disk full while writing a checkpoint: {exc}") from exc
                raise StoreError(f"checkpoint append failed: {type(exc).__name__}: {exc}") from exc
            for done in self._tx_events:
                self._count(done)
            return seqs[0]

    def _count(self, item: Mapping[str, Any]) -> None:
        """Committed events by name and ``data_loss`` by reason, for metrics (events only:
        they take the general path, never the readings' hot one)."""
        counts = self.counters
        if counts is None:
            return
        name = str(item.get("event"))
        counts[("events", name)] = counts.get(("events", name), 0) + 1
        if name == "data_loss":
            details = item.get("details") or {}
            reason = str(details.get("reason"))
            counts[("loss_events", reason)] = counts.get(("loss_events", reason), 0) + 1
            n = details.get("count")
            lost = n if type(n) is int and n > 0 else 1
            counts[("lost", reason)] = counts.get(("lost", reason), 0) + lost

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE … COMMIT, rolled back on any error."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            self.conn.execute("COMMIT")
        except BaseException:
            _rollback(self.conn)
            raise

    def _append_locked(self, items: Sequence[Mapping[str, Any]], state: Mapping[str, Any] | None) -> list[int]:
        head_seq = int(self._meta("head_seq") or 0)
        head_hash = self._meta("head_hash") or ZERO_HASH
        stream_json = json.dumps(self.stream_id)
        rows = []
        latest: dict[tuple[str | None, str | None], tuple[int, float, float, str]] = {}
        templates, fast_keys, big = self._templates, _FAST_READING_KEYS, 2**53
        for item in items:
            head_seq += 1
            rtype = item["type"]
            ts: Any = item.get("ts")
            if rtype == "reading" and item.keys() <= fast_keys and type(ts) is float and 0.0 <= ts < 1e11:
                # the hot path: a plain reading, its JCS text from the sensor's template
                v = item["value"]
                tv = type(v)
                if (tv is float and not v.is_integer() and 1e-4 <= abs(v) < 1e16) or (tv is int and -big < v < big):
                    tq = item["time_quality"]
                    sensor, quantity, unit = item["sensor_id"], item["quantity"], item["unit"]
                    key = (tq, sensor, quantity, unit, item.get("driver"), item.get("shipment"),
                           item.get("calibration"), item.get("model"), item.get("brand"))
                    tmpl = templates.get(key)
                    if tmpl is None:
                        tmpl = self._template(key)
                    if tmpl is not None:
                        text = tmpl % (head_hash, head_seq, rfc3339(ts), repr(v) if tv is float else str(v))
                        head_hash = record_hash(head_hash, text.encode("utf-8"))
                        rows.append((head_seq, "reading", ts, tq, sensor, quantity, text, head_hash,
                                     item.get("mono_ns"), item.get("boot_id")))
                        latest[(sensor, quantity)] = (head_seq, ts, v, unit)
                        continue
            if not (type(ts) in (float, int) and 0.0 <= ts < 1e11):  # NaN fails too
                log.error("a %s record has no usable time (%r); recording its loss instead", rtype, ts)
                item = self.stamper.event("data_loss", {
                    "reason": "unencodable", "what": rtype, "error": f"bad ts {ts!r}"[:200],
                    "sensor_id": item.get("sensor_id"), "quantity": item.get("quantity")})
                rtype, ts = "event", item["ts"]
            ts = float(ts)
            if rtype == "event" and self.counters is not None:
                self._tx_events.append(item)
            fields = {k: v for k, v in item.items() if v is not None and k not in _NOT_COPIED}
            started = fields.get("started_at")
            if isinstance(started, (int, float)):
                fields["started_at"] = rfc3339(started)
            tq = item["time_quality"]
            body = self._reading_body(fields, tq, head_hash, head_seq, ts) if rtype == "reading" else None
            if body is None:
                # the members the store writes have a JSON form known here; only the
                # caller's fields are checked and encoded
                own = {"stream": stream_json, "seq": str(head_seq), "ts": f'"{rfc3339(ts)}"',
                       "time_quality": _json_word(tq), "prev_hash": f'"{head_hash}"'}
                try:
                    body = canonical_with({**own, "type": _json_word(rtype)}, fields)
                except (ValueError, TypeError) as exc:  # rfc8785's errors are ValueErrors
                    # One record JSON cannot carry must not block the chain behind it: it
                    # is replaced by the record of its loss, in its place.
                    log.error("a %s record cannot be encoded (%s); recording its loss instead", rtype, exc)
                    rtype, fields = "event", {"event": "data_loss", "details": {
                        "reason": "unencodable", "what": item["type"], "error": str(exc)[:200],
                        "sensor_id": fields.get("sensor_id"), "quantity": fields.get("quantity"),
                        "value": repr(fields.get("value"))[:64] if "value" in fields else None}}
                    body = canonical_with({**own, "type": _json_word(rtype)}, fields)
            head_hash = record_hash(head_hash, body)
            sensor, quantity = fields.get("sensor_id"), fields.get("quantity")
            rows.append((head_seq, rtype, ts, tq, sensor, quantity, body.decode("utf-8"), head_hash,
                         item.get("mono_ns"), item.get("boot_id")))
            if rtype == "reading":
                latest[(sensor, quantity)] = (head_seq, ts, fields["value"], fields["unit"])
        self.conn.executemany(
            "INSERT INTO records (seq, type, ts, tq, sensor_id, quantity, body, hash, mono_ns, boot_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        if latest:
            self.conn.executemany("INSERT OR REPLACE INTO latest VALUES (?, ?, ?, ?, ?, ?)",
                                  [(s, q, *v) for (s, q), v in latest.items()])
        if rows:
            self.conn.executemany("UPDATE meta SET value = ? WHERE key = ?",
                                  [(str(head_seq), "head_seq"), (head_hash, "head_hash")])
        for name, value in (state or {}).items():
            self.conn.execute("INSERT OR REPLACE INTO state VALUES (?, ?)", (name, json.dumps(value)))
        return [r[0] for r in rows]

    def _template(self, key: tuple[Any, ...]) -> str | None:
        """The ``%`` template of a plain reading with the fixed fields in ``key``."""
        tq, *rest = key
        fixed = {k: v for k, v in zip(_TEMPLATE_KEYS, rest, strict=True) if v is not None}
        tmpl = template({**fixed, "type": "reading", "stream": self.stream_id, "time_quality": tq}, _SLOTS)
        if tmpl is not None:
            if len(self._templates) >= 4096:
                self._templates.clear()
            self._templates[key] = tmpl
        return tmpl

    def _reading_body(self, fields: dict[str, Any], tq: str, prev_hash: str, seq: int, ts: float) -> bytes | None:
        """The canonical body of a plain reading from a template per sensor and quantity.

        A sensor's readings differ only in prev_hash, seq, ts and value; the rest of the
        JCS text is made once (:func:`agent.canonical.template`). Anything unusual
        (raw, rssi, an exponent-form value) returns None for the general path.
        """
        if not fields.keys() <= _TEMPLATE_FIELDS:
            return None
        try:
            value = scalar(fields["value"])
        except (NeedsLibrary, KeyError):
            return None
        key = (tq, *(fields.get(k) for k in _TEMPLATE_KEYS))
        tmpl = self._templates.get(key)
        if tmpl is None:
            fixed = {k: v for k, v in fields.items() if k != "value"}
            tmpl = template({**fixed, "type": "reading", "stream": self.stream_id, "time_quality": tq}, _SLOTS)
            if tmpl is None:
                return None
            if len(self._templates) >= 4096:
                self._templates.clear()
            self._templates[key] = tmpl
        return (tmpl % (prev_hash, seq, rfc3339(ts), value)).encode("utf-8")

    # -- quota -------------------------------------------------------------------------
    def disk_usage(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.stat(str(self.path) + suffix).st_size
            except OSError:
                pass
        return total

    def _apply_quota(self, items: Sequence[Mapping[str, Any]]) -> Sequence[Mapping[str, Any]]:
        if not items:  # report_losses: say what was refused so far
            return self._loss_event(final=not self._refusing)
        usage = self.disk_usage()
        limit = self.quota_bytes - self.reserve_bytes
        if usage >= limit:
            self._free_acked(usage - limit)
            usage = self.disk_usage()
        if usage < limit:
            if self._refusing:
                self._refusing = False
                log.warning("store below its quota again; readings accepted")
                return [*items, *self._loss_event(final=True)]
            return items
        # Over quota with unsent data: refuse readings, keep alarms and events.
        kept = [i for i in items if i["type"] != "reading"]
        refused = [i for i in items if i["type"] == "reading"]
        if refused:
            first = not self._refusing
            self._refusing = True
            self._count_loss(refused)
            if first:
                log.error("store quota (%d bytes) full of unsent records: refusing new readings", self.quota_bytes)
            if first or time.monotonic() - self._last_loss_event > 60.0:
                kept.extend(self._loss_event(final=False))
        return kept

    def _count_loss(self, refused: Iterable[Mapping[str, Any]]) -> None:
        tally_loss(self._lost, refused)

    def _loss_event(self, *, final: bool) -> list[dict[str, Any]]:
        if not self._lost:
            return []
        lost, self._lost = self._lost, {}
        self._last_loss_event = time.monotonic()
        details = {
            "reason": "store_full",
            **loss_details(lost),
            "quota_bytes": self.quota_bytes,
            "still_refusing": not final,
        }
        return [self.stamper.event("data_loss", details)]

    def report_losses(self) -> None:
        """Commit the count of readings refused so far (the owner does so before closing)."""
        if self._lost:
            self.append([])

    def _free_acked(self, need: int) -> None:
        """Delete acknowledged records, lowest seq first, until ``need`` bytes are freed."""
        # Deleted pages are reused by SQLite, so freeing rows makes room without VACUUM.
        page = self.conn.execute("PRAGMA page_size").fetchone()[0]
        rows = self.conn.execute("SELECT count(*), coalesce(sum(length(body)), 0) FROM records WHERE state = ?",
                                 (ACKED,)).fetchone()
        if not rows[0]:
            return
        per_row = max(1, rows[1] // rows[0] + 100)
        n = max(1, need // per_row + page // per_row)
        self.conn.execute(
            "DELETE FROM records WHERE seq IN (SELECT seq FROM records WHERE state = ? ORDER BY seq LIMIT ?)",
            (ACKED, n))
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # -- sync side ---------------------------------------------------------------------
    def pending(self, limit: int) -> list[tuple[int, str, str]]:
        """The next batch of unsent records as ``(seq, body, hash)``, ascending by seq.

        Alarms and events go first, in batches of their own; then the backlog, as a run of
        consecutive unsent records walked in seq order from the lowest unsent seq known
        (``_floor``, so inserting a reading maintains no index). Either way a batch is
        fully named by its first and last seq: the Idempotency-Key never stands for two
        different sets of records.
        """
        with self._lock:
            urgent = self.conn.execute(
                "SELECT seq, body, hash FROM records WHERE state = 0 AND type != 'reading' ORDER BY seq LIMIT ?",
                (limit,)).fetchall()
            if urgent:
                return urgent
            backlog = self.conn.execute(
                "SELECT seq, body, hash FROM records WHERE seq > ? AND state = 0 ORDER BY seq LIMIT ?",
                (self._floor, limit)).fetchall()
            if backlog:
                self._floor = backlog[0][0] - 1  # nothing at or below is unsent
            return backlog

    def ack(self, seqs: Iterable[int]) -> None:
        self._set_state(seqs, ACKED)

    def set_aside(self, seqs: Sequence[int], reason: str) -> None:
        """Keep records the server refused out of the queue (never deleted)."""
        now = time.time()
        with self._lock, self._transaction():
            self.conn.executemany("UPDATE records SET state = ? WHERE seq = ?", [(SET_ASIDE, s) for s in seqs])
            self.conn.executemany("INSERT OR REPLACE INTO set_aside VALUES (?, ?, ?)", [(s, reason, now) for s in seqs])

    def _set_state(self, seqs: Iterable[int], state: int) -> None:
        with self._lock, self._transaction():
            self.conn.executemany("UPDATE records SET state = ? WHERE seq = ? AND state = 0", [(state, s) for s in seqs])

    def prune(self) -> int:
        """Delete acknowledged records beyond the newest ``keep_acked``, by seq. Returns how many."""
        with self._lock:
            row = self.conn.execute("SELECT seq FROM records WHERE state = ? ORDER BY seq DESC LIMIT 1 OFFSET ?",
                                    (ACKED, self.keep_acked)).fetchone()
            if row is None:
                return 0
            cur = self.conn.execute("DELETE FROM records WHERE state = ? AND seq <= ?", (ACKED, row[0]))
            return cur.rowcount

    # -- reading back ------------------------------------------------------------------
    # The queries behind ``coldgate readings``, ``alarms`` and ``events`` go through
    # sqlite-utils (rows as dicts, the WHERE built from parts); the hot paths above stay
    # on the raw connection.
    @property
    def db(self) -> sqlite_utils.Database:
        """This store's connection seen through sqlite-utils, for reading back."""
        if self._db is None:
            self._db = _db(self.conn)
        return self._db

    def records(self, *, type: str | None = None, sensor_id: str | None = None, since_seq: int | None = None,
                limit: int | None = None, descending: bool = False,
                with_state: bool = False) -> list[dict[str, Any]]:
        """Records as sent (with ``hash``), filtered; ascending by seq unless ``descending``.

        ``with_state`` adds the local ``_state`` (pending, acked, set_aside).
        """
        terms = {"type = ?": type, "sensor_id = ?": sensor_id, "seq > ?": since_seq}
        return self._query({t: v for t, v in terms.items() if v is not None}, limit=limit, descending=descending,
                           with_state=with_state)

    def events(self, *, names: Sequence[str] = (), since_ts: float | None = None,
               limit: int | None = None) -> list[dict[str, Any]]:
        """The newest ``limit`` event records (of the ``names`` given, at or after
        ``since_ts``), oldest first. Alarms are not events; set-aside batches, driver
        errors, clock steps and data losses are."""
        terms: dict[str, Any] = {"type = ?": "event"}
        if names:
            terms[f"json_extract(body, '$.event') IN ({', '.join('?' * len(names))})"] = list(names)
        if since_ts is not None:
            terms["ts >= ?"] = since_ts
        # ``type != 'reading'`` lets a partial index of the non-readings serve the query
        terms["type != 'reading'"] = None
        found = self._query(terms, limit=limit, descending=True, with_state=False)
        found.reverse()
        return found

    def _query(self, terms: Mapping[str, Any], *, limit: int | None, descending: bool,
               with_state: bool) -> list[dict[str, Any]]:
        where, args = [], []
        for term, value in terms.items():
            where.append(term)
            if isinstance(value, list):
                args += value
            elif value is not None:
                args.append(value)
        with self._lock:
            rows = list(self.db.table("records").rows_where(
                " AND ".join(where) or None, args, order_by=f"seq {'DESC' if descending else 'ASC'}",
                select="body, hash, state", limit=None if limit is None else int(limit)))
        out = []
        for row in rows:
            rec = json.loads(row["body"])
            rec["hash"] = row["hash"]
            if with_state:
                rec["_state"] = ("pending", "acked", "set_aside")[row["state"]]
            out.append(rec)
        return out

    def latest(self) -> list[dict[str, Any]]:
        """The newest reading of each sensor and quantity."""
        with self._lock:
            rows = self.conn.execute(
                "SELECT sensor_id, quantity, seq, ts, value, unit FROM latest ORDER BY sensor_id, quantity").fetchall()
        return [dict(zip(("sensor_id", "quantity", "seq", "ts", "value", "unit"), r, strict=True)) for r in rows]

    def load_state(self, key: str) -> Any:
        with self._lock:
            row = self.conn.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def unsynced_segments(self, boot_id: str, after_seq: int = 0) -> list[tuple[int, int, int, float]]:
        """Runs of this boot's records stamped while unsynced, as
        ``(first_seq, last_seq, count, wall_minus_boottime)``: one run per distinct relation
        of the wall clock to the monotonic clock (it changes when the unsynced clock steps)."""
        with self._lock:
            rows = self.conn.execute(
                "SELECT min(seq), max(seq), count(*), avg(ts - mono_ns / 1e9) FROM records"
                " WHERE boot_id = ? AND tq = 'unsynced' AND mono_ns IS NOT NULL AND seq > ?"
                " GROUP BY round(ts - mono_ns / 1e9) ORDER BY 1", (boot_id, after_seq)).fetchall()
        return [(a, b, n, base) for a, b, n, base in rows]

    def stats(self) -> dict[str, Any]:
        """Depth and age of the queue, sizes: what ``coldgate status`` shows of the store."""
        with self._lock:
            head_seq, _ = self.head()
            counts = dict(self.conn.execute("SELECT state, count(*) FROM records GROUP BY state").fetchall())
            row = self.conn.execute("SELECT ts FROM records WHERE state = 0 ORDER BY seq LIMIT 1").fetchone()
            oldest = row[0] if row else None  # the first unsent record, in creation order
            pending_urgent = self.conn.execute(
                "SELECT count(*) FROM records WHERE state = 0 AND type != 'reading'").fetchone()[0]
        return {
            "path": str(self.path),
            "stream": self.stream_id,
            "head_seq": head_seq,
            "pending": counts.get(PENDING, 0),
            "pending_alarms_events": pending_urgent,
            "acked_kept": counts.get(ACKED, 0),
            "set_aside": counts.get(SET_ASIDE, 0),
            "oldest_pending_ts": rfc3339(oldest) if oldest is not None else None,
            "oldest_pending_age_s": round(time.time() - oldest, 1) if oldest is not None else None,
            "disk_bytes": self.disk_usage(),
            "quota_bytes": self.quota_bytes,
            "refusing_readings": self._refusing,
        }

    def release_set_aside(self) -> dict[str, Any]:
        """Put every set-aside record back in the queue (``coldgate sync --retry-set-aside``).

        For a server that refused a batch it should have taken (fixed since): the records
        go out again as they are. Returns how many and which seq ranges.
        """
        with self._lock, self._transaction():
            seqs = [r[0] for r in self.conn.execute("SELECT seq FROM records WHERE state = ? ORDER BY seq",
                                                    (SET_ASIDE,)).fetchall()]
            if not seqs:
                return {"count": 0, "ranges": []}
            self.conn.execute("UPDATE records SET state = ? WHERE state = ?", (PENDING, SET_ASIDE))
            self.conn.execute("DELETE FROM set_aside")
        self._floor = min(self._floor, seqs[0] - 1)
        return {"count": len(seqs), "ranges": _ranges(seqs)}

    def set_aside_list(self) -> list[dict[str, Any]]:
        """Set-aside records as ranges with their reason (for status and the CLI)."""
        with self._lock:
            rows = self.conn.execute("SELECT seq, reason, at FROM set_aside ORDER BY seq").fetchall()
        out: list[dict[str, Any]] = []
        for seq, reason, at in rows:
            if out and out[-1]["last_seq"] == seq - 1 and out[-1]["reason"] == reason:
                out[-1]["last_seq"] = seq
                out[-1]["count"] += 1
            else:
                out.append({"first_seq": seq, "last_seq": seq, "count": 1, "reason": reason, "at": rfc3339(at)})
        return out


def _ranges(seqs: Sequence[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for s in seqs:
        if out and out[-1][1] == s - 1:
            out[-1][1] = s
        else:
            out.append([s, s])
    return out


def _migrate(conn: sqlite3.Connection) -> None:
    """Apply the missing migrations, one transaction each.

    The version is read again under the write lock, so two processes opening a new
    store at once (the daemon creating it, the CLI reading it) never run one twice.
    """
    db = _db(conn)
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise sqlite3.DatabaseError(f"store schema version {version} is newer than this coldgate knows")
            if version == len(MIGRATIONS):
                conn.execute("COMMIT")
                return
            name, step = MIGRATIONS[version]
            step(db)
            conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        log.info("store migrated to schema %d (%s)", version + 1, name)


def _db(conn: sqlite3.Connection) -> sqlite_utils.Database:
    """``conn`` through sqlite-utils, leaving the connection as it is (no pragma, no plugin)."""
    return sqlite_utils.Database(conn, recursive_triggers=False, execute_plugins=False)


def _is_full(exc: sqlite3.Error) -> bool:
    """SQLITE_FULL: the disk (or ``max_page_count``) is full, by SQLite's own code, not its wording."""
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_FULL


def _where_note(p: Path) -> str:
    """Why SQLite may not open ``p``, said plainly ("unable to open database file" does not)."""
    try:
        if os.statvfs(p.parent).f_flag & os.ST_RDONLY:
            return " (its filesystem is read-only)"
    except OSError:
        return ""
    if not os.access(p.parent, os.W_OK | os.X_OK):
        return f" ({p.parent} is not writable by this user)"
    return ""


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back if a transaction is open: SQLite itself rolls back on SQLITE_FULL, and a
    second ROLLBACK would hide the real error behind "no transaction is active"."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")


__all__ = ["ACKED", "MIGRATIONS", "PENDING", "SET_ASIDE", "Store"]
