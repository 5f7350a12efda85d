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
Quota (:mod:`agent.space`)
    The quota counts live pages and the WAL, not free pages (SQLite reuses those for new
    rows), and never more room than the filesystem has: the store leaves ``min_free``
    of it free for acknowledgements and checkpoints, and keeps a spare file it deletes
    when something else fills the disk. When space runs short, acknowledged records go
    first (lowest seq first). If unsent data alone fills it, new *readings* are
    refused; alarms and events go into a reserve of ``reserve_pct`` of the quota, and
    beyond it they are refused too. Every refused record is counted in ``data_loss``
    events, one episode at a time (when refusal starts, when alarms and events are
    refused too, a summary at most every minute, when it ends). Committed data is never
    thinned or overwritten: an auditor must be able to trust what is there. The WAL is
    checkpointed at 1/16 of the quota (at most 1 MiB) and truncated when a transaction
    grew it past twice that, so it never holds more than the disk can take back.
Self-healing
    A database that cannot be opened or fails ``PRAGMA quick_check`` is set aside
    (renamed, with its WAL, never deleted) and a new stream starts whose first record is
    a ``stream_started`` event naming the reason, the set-aside file and the previous
    stream and its last seq (kept in a small side file next to the database).
Seq never reused (:mod:`agent.seqguard`)
    The side file ``<store>.stream`` is a durable high-water mark (stream id, highest
    seq committed; fsynced at most every 2 s while the head moves, and at close). A
    store found below it, or holding another stream than it names, has lost committed
    records (a damaged WAL, an SD card written back from an image). The store then
    starts a new stream in the same file: the old stream's tables are kept under
    ``retired_<n>_…`` (never sent again), its unsent records are carried into the new
    stream (same content, new seqs), and the ``stream_started`` event (reason
    ``records_lost``) names the previous stream, the mark, the head found, the seqs
    lost and what was carried. A receiver that answers ``conflicts`` for records the
    gateway believes new (:class:`agent.seqguard.ConflictWatch`) starts the same
    through :meth:`Store.restart_stream`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.canonical import ZERO_HASH, NeedsLibrary, canonical_with, record_hash, scalar, template
from agent.exc import StoreError, StoreFull
from agent.seqguard import MARK_EVERY_S, HighWater, Mark, read_mark
from agent.space import EST_OTHER, EST_READING, Budget, Refusals, Spare, Usage, fs_free, loss_details, tally_loss
from agent.stamp import Stamper
from agent.timebase import Clock, rfc3339

if TYPE_CHECKING:
    import sqlite_utils

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
                 keep_acked: int, budget: Budget | None = None, mark_every_s: float = MARK_EVERY_S) -> None:
        self.conn = conn
        self.path = path
        self.quota_bytes = quota_bytes
        self.budget = budget or Budget.for_quota(quota_bytes, reserve_pct)
        self.reserve_bytes = self.budget.reserve
        self.keep_acked = keep_acked
        self._lock = threading.RLock()
        self.stream_id: str = self._meta("stream_id") or ""
        self.gateway_id: str = self._meta("gateway_id") or ""
        self._templates: dict[tuple[Any, ...], str] = {}
        #: stamps the records the store makes itself (stream_started, data_loss)
        self.stamper = Stamper()
        #: every record at or below this seq has left the queue (acked or set aside)
        self._floor = 0
        #: the last release of set-aside records this connection has followed (see :meth:`_follow_release_locked`)
        self._release_seen = self._release()[0]
        #: opened to read (diagnostics, the sync thread): never writes the side file
        self.reader = False
        self._lost: dict[str, Any] = {}
        self._last_loss_event = 0.0
        self._db: sqlite_utils.Database | None = None
        #: committed events by name, data_loss by reason (metrics); the daemon passes one
        #: dict that outlives a reopened store; None counts nothing
        self.counters: dict[tuple[str, str], int] | None = None
        self._tx_events: list[Mapping[str, Any]] = []
        #: what the quota refused in the current episode (the writer hands it to the next
        #: connection when it reopens the store)
        self.refusals = Refusals()
        self.spare = Spare(spare_path(path), self.budget.spare)
        self.mark = HighWater(self.sidecar, every_s=mark_every_s)
        #: the high-water mark of this stream when the store was found below it: nothing
        #: may be appended until a new stream starts (only the owner starts one)
        self._lost_below = 0
        #: acknowledgements the disk could not take yet: ``[[first, last], ...]``
        self._acks_held: list[list[int]] = []
        self._refusing_saved: str | None = (self.load_state(QUOTA_STATE) or {}).get("refusing")
        self._page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        wal_pages = max(16, self.budget.wal_bytes // self._page_size)
        conn.execute(f"PRAGMA wal_autocheckpoint = {wal_pages}")
        conn.execute(f"PRAGMA journal_size_limit = {wal_pages * self._page_size}")

    # -- opening -----------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike[str], *, gateway_id: str, quota_bytes: int = 512 << 20,
             reserve_pct: float = 5.0, keep_acked: int = 100_000, check: bool = True,
             create: bool = True, stamper: Stamper | None = None, clock: Clock | None = None,
             counters: dict[tuple[str, str], int] | None = None,
             fs_min_free: int | None = None, spare_bytes: int | None = None,
             mark_every_s: float = MARK_EVERY_S) -> Store:
        """Open (or create) the store at ``path``; set a broken one aside and start anew.

        With ``create=False`` a missing file raises :class:`StoreError` (the CLI reads a
        store; only the daemon creates one). The records the store makes itself are
        stamped by ``stamper`` (or a stamper on ``clock``): pass the configured one.
        The owner (``create=True``) also checks the store against its high-water mark and
        starts a new stream when committed records were lost (see the module docstring);
        ``fs_min_free`` and ``spare_bytes`` override the sizes :class:`~agent.space.Budget`
        derives from the quota.
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
        budget = Budget.for_quota(quota_bytes, reserve_pct, min_free=fs_min_free, spare=spare_bytes)
        try:
            store = cls(conn, p, quota_bytes=quota_bytes, reserve_pct=reserve_pct, keep_acked=keep_acked,
                        budget=budget, mark_every_s=mark_every_s)
        except BaseException:
            conn.close()
            raise
        store.reader = not create
        store.stamper = stamper or Stamper(clock)
        store.counters = counters
        if not store.stream_id and not create:
            conn.close()
            raise StoreError(f"store {p} is being created; try again in a moment")
        try:
            if not store.stream_id:
                store._start_stream(gateway_id, reason or "new", error=error, set_aside=aside)
            else:
                lost = store._check_mark()
                if lost is not None and create:
                    store._restart_after_loss(lost)
                elif lost is not None:
                    store._lost_below = int(lost.get("previous_last_seq") or 0)
                    log.error("store %s lost committed records (%s); it takes no records until the agent "
                              "starts a new stream", p, lost.get("detected_by"))
            if create:
                store._carry_over()  # one a crash interrupted
                store._tend_space(store.usage())
        except sqlite3.Error as exc:
            conn.close()
            if _is_full(exc):
                raise StoreFull(f"disk full while opening store {p}: {exc}") from exc
            raise StoreError(f"cannot open store {p}: {type(exc).__name__}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
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
        """The high-water mark beside the database (:mod:`agent.seqguard`)."""
        return self.path.with_name(self.path.name + ".stream")

    def _start_stream(self, gateway_id: str, reason: str, *, error: str | None, set_aside: Path | None) -> None:
        previous = read_mark(self.sidecar)
        if reason == "new" and previous is not None:
            reason = "store_missing"  # the file went away, but this gateway had a stream here
        details: dict[str, Any] = {"reason": reason}
        if previous is not None:
            details["previous_stream"] = previous.stream
            details["previous_last_seq"] = previous.last_seq
        if set_aside is not None:
            details["set_aside"] = str(set_aside)
        if error:
            details["error"] = error
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                existing = self._meta("stream_id")
                if existing:  # another process created the stream first: adopt it
                    self.conn.execute("COMMIT")
                    self.stream_id, self.gateway_id = existing, self._meta("gateway_id") or gateway_id
                    return
                self.gateway_id = gateway_id
                self._begin_stream_locked(details)
                self.conn.execute("COMMIT")
            except BaseException:
                _rollback(self.conn)
                self.stream_id = self._meta("stream_id") or ""
                raise
        self.mark.set(self.stream_id, self.head()[0])

    def _begin_stream_locked(self, details: Mapping[str, Any]) -> None:
        """Inside a transaction: a new stream in ``meta`` and its ``stream_started`` record.

        One transaction, so a crash leaves either the old state or a stream that says why it
        started — never a stream without its first record."""
        stream = str(uuid.uuid4())
        for k, v in (("stream_id", stream), ("gateway_id", self.gateway_id), ("head_seq", "0"),
                     ("head_hash", ZERO_HASH), ("created_at", rfc3339(time.time()))):
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, v))
        self._new_stream_id(stream)
        self._append_locked([self.stamper.event("stream_started", details)], None)

    def _new_stream_id(self, stream: str) -> None:
        """The stream changed (here or in another process): forget what belonged to the old one."""
        self.stream_id = stream
        self._templates.clear()
        self._floor = 0
        self._acks_held = []
        self._lost_below = 0

    def write_sidecar(self) -> None:
        """Make the high-water mark durable now (the owner does so at close)."""
        self.mark.set(self.stream_id, self.head()[0])

    def close(self, *, sidecar: bool | None = None, report: bool = True) -> None:
        """Close, after any statement in progress on another thread (never under it).

        The owner commits the count of refused records first (``report=False`` leaves it in
        :attr:`refusals`, for the writer to hand to the next connection) and writes the
        high-water mark; readers (``create=False``) write it only if they appended.
        """
        with self._lock:
            if not self.reader and report:
                try:
                    self.report_losses()
                except (StoreError, sqlite3.Error) as exc:
                    log.error("could not record refused records at close: %s", exc)
            try:
                if sidecar is not False and not self.reader and self.stream_id and not self._lost_below:
                    self.mark.note(self.stream_id, self.head()[0])
                self.mark.close(flush=sidecar is not False)
            except (OSError, sqlite3.Error) as exc:
                log.warning("high-water mark not written at close: %s", exc)
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
        Records refused for the quota are counted in ``data_loss`` events (see
        :mod:`agent.space`). Raises :class:`StoreFull` when the disk itself is full
        (after the spare was released and the commit tried again; nothing was written).
        """
        with self._lock:
            # the loss accounting changes only with a commit: a failed one is retried whole
            saved = self.refusals.snapshot()
            seqs: list[int] = []
            for attempt in (1, 2):
                try:
                    kept = self._apply_quota(items)
                    refusing = self.refusals.stage if self.refusals.active else None
                    st = state
                    if refusing != self._refusing_saved:  # for status in every process
                        st = {**(state or {}), QUOTA_STATE: {"refusing": refusing, "limit": self.refusals.limit}}
                    self._tx_events = []
                    with self._transaction():
                        self._sync_stream_locked()
                        seqs = self._append_locked(kept, st)
                    self._refusing_saved = refusing
                    for item in self._tx_events:  # the events of this commit (none on the readings' path)
                        self._count(item)
                    break
                except sqlite3.Error as exc:
                    self.refusals.restore(saved)
                    if _is_full(exc):
                        if attempt == 1 and self.spare.release():
                            continue
                        raise StoreFull(f"disk full while writing {len(items)} records: {exc}") from exc
                    raise StoreError(f"append failed: {type(exc).__name__}: {exc}") from exc
                except BaseException:
                    self.refusals.restore(saved)
                    raise
            if seqs:
                self._after_commit(seqs[-1])
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
                if _is_full(exc):
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

    def _sync_stream_locked(self) -> None:
        """Inside a transaction: follow a new stream another connection started."""
        stream = self._meta("stream_id") or ""
        if stream != self.stream_id:
            log.warning("store %s: stream %s replaced by %s", self.path, self.stream_id, stream)
            self._new_stream_id(stream)

    def _release(self) -> tuple[int, int]:
        """``(count, below)`` of the releases of set-aside records so far: how many, and a seq
        below every record they put back in the queue (``meta`` key ``released``)."""
        raw = self._meta("released")
        if raw is None:
            return 0, 0
        data = json.loads(raw)
        return int(data["n"]), int(data["after"])

    def _follow_release_locked(self) -> None:
        """Inside a transaction: records another connection released (the daemon releases on
        the writer's, the uplink reads on its own) are below this connection's ``_floor``; a
        release it has not seen yet takes the floor down to them."""
        n, after = self._release()
        if n != self._release_seen:
            self._release_seen = n
            self._floor = min(self._floor, after)

    def _append_locked(self, items: Sequence[Mapping[str, Any]], state: Mapping[str, Any] | None) -> list[int]:
        head_seq = int(self._meta("head_seq") or 0)
        if head_seq < self._lost_below:
            raise StoreError(f"store {self.path} lost committed records (head {head_seq}, high-water mark "
                             f"{self._lost_below}): it takes no records until the agent starts a new stream")
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
            maybe = self._reading_body(fields, tq, head_hash, head_seq, ts) if rtype == "reading" else None
            if maybe is not None:
                body = maybe
            else:
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

    # -- space (the policy is agent.space's) --------------------------------------------
    def disk_usage(self) -> int:
        """The database file and its WAL as they sit on the disk (free pages included)."""
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.stat(str(self.path) + suffix).st_size
            except OSError:
                pass
        return total

    def _wal_bytes(self) -> int:
        try:
            return os.stat(str(self.path) + "-wal").st_size
        except OSError:
            return 0

    def usage(self) -> Usage:
        """Live bytes (what the quota counts), free pages, file sizes, filesystem room.

        The WAL counts at least at twice the size it is checkpointed at (what it may reach
        before :meth:`_checkpoint` truncates it): it fills and restarts all the time, and
        counting its size of the moment would start and end refusals with every commit."""
        with self._lock:
            pages = int(self.conn.execute("PRAGMA page_count").fetchone()[0])
            free = int(self.conn.execute("PRAGMA freelist_count").fetchone()[0])
        ps, wal = self._page_size, self._wal_bytes()
        return Usage(live=(pages - free) * ps + max(wal, 2 * self.budget.wal_bytes), free_pages=free * ps,
                     file_bytes=pages * ps + wal, wal=wal, fs_free=fs_free(self.path.parent))

    def _tend_space(self, u: Usage) -> Usage:
        """The owner's spare: released when the disk is nearly full, made again when it has room."""
        if self.reader or u.fs_free is None:
            return u
        b = self.budget
        if u.fs_free < b.min_free // 4 and self.spare.release():
            return self.usage()
        if u.fs_free >= b.min_free + b.spare and self.spare.ensure(u.fs_free, b.min_free):
            return self.usage()
        return u

    def _apply_quota(self, items: Sequence[Mapping[str, Any]]) -> Sequence[Mapping[str, Any]]:
        """The items that fit, and the ``data_loss`` event of those that do not (see
        :mod:`agent.space` for the tiers and the episode)."""
        r, b = self.refusals, self.budget
        if not items:  # report_losses: say what was refused so far
            return self._loss_event(ended=not r.active, usage=None)
        u = self._tend_space(self.usage())
        cap_readings, cap_all, limit = u.caps(b)
        # a disk filled by something else leaves the store only its own pages: the margin
        # that ends a refusal must be one they can give
        hysteresis = min(b.hysteresis, max(4 * self._page_size, cap_readings // 16))
        slack = hysteresis if r.active else 0
        need = sum(EST_READING if i["type"] == "reading" else EST_OTHER for i in items)
        if u.live + need > cap_readings - slack:  # acknowledged records make room first
            if self._free_acked(u.live + need - (cap_readings - hysteresis)):
                u = self.usage()
                cap_readings, cap_all, limit = u.caps(b)
        room_readings = cap_readings - slack - u.live
        room_all = cap_all - u.live
        kept: list[Mapping[str, Any]] = []
        refused: list[Mapping[str, Any]] = []
        used = 0
        for item in items:
            cost = EST_READING if item["type"] == "reading" else EST_OTHER
            if used + cost <= (room_readings if item["type"] == "reading" else room_all):
                kept.append(item)
                used += cost
            else:
                refused.append(item)
        if refused:
            first, stage_before = not r.active, r.stage
            due = r.refuse(refused, limit, time.time())
            if first:
                log.error("store %s full of unsent records (%s limit, %d of %d bytes used): refusing new readings",
                          self.path, limit, u.live, cap_readings)
            if r.stage == "records" and stage_before != "records":
                log.error("store %s beyond its reserve: refusing alarms and events too", self.path)
            return [*kept, *self._loss_event(ended=False, usage=u)] if due else kept
        if r.active and room_readings - used >= EST_READING:
            log.warning("store %s has room again: readings accepted", self.path)
            return [*kept, *self._loss_event(ended=True, usage=u)]
        return kept

    def _loss_event(self, *, ended: bool, usage: Usage | None) -> list[dict[str, Any]]:
        details = self.refusals.details(ended=ended, quota=self.quota_bytes, usage=usage)
        return [] if details is None else [self.stamper.event("data_loss", details)]

    def report_losses(self) -> None:
        """Commit the count of records refused so far (the owner does so before closing)."""
        if self.refusals.unsaid:
            self.append([])

    def adopt_refusals(self, refusals: Refusals) -> None:
        """Carry on an episode a previous connection to this store counted (the writer reopens)."""
        if refusals.active or refusals.unsaid:
            self.refusals = refusals

    def _free_acked(self, need: int) -> int:
        """Delete acknowledged records (retired streams first, then lowest seq first) until about
        ``need`` bytes are free pages; deleted pages are reused by SQLite without VACUUM. Returns
        the bytes freed."""
        if need <= 0:
            return 0
        with self._lock:
            ps = self._page_size
            before = int(self.conn.execute("PRAGMA freelist_count").fetchone()[0])

            def freed() -> int:
                return (int(self.conn.execute("PRAGMA freelist_count").fetchone()[0]) - before) * ps

            try:
                self._free_retired(need)
                n = max(1, (need - freed()) // EST_READING + 1)
                for _ in range(8):  # rows share pages: delete until whole pages are free
                    if freed() >= need:
                        break
                    cur = self.conn.execute(
                        "DELETE FROM records WHERE seq IN (SELECT seq FROM records WHERE state = ? ORDER BY seq"
                        " LIMIT ?)", (ACKED, n))
                    if cur.rowcount < n:
                        break  # no acknowledged record left
                    n *= 2
            except sqlite3.Error as exc:
                log.warning("store %s: could not delete acknowledged records to make room: %s", self.path, exc)
            self._checkpoint()
            return max(0, freed())

    def _checkpoint(self) -> None:
        """Truncate a WAL that a large transaction grew past twice its limit (the next ones
        would otherwise reuse only the first part and the rest stays on the disk)."""
        if self._wal_bytes() <= 2 * self.budget.wal_bytes:
            return
        try:
            self.conn.execute("PRAGMA busy_timeout = 2000")  # a reader holds it at most this long
            for attempt in (1, 2):
                try:
                    busy = self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
                    if busy:
                        log.debug("store %s: WAL checkpoint waits for a reader", self.path)
                    return
                except sqlite3.Error as exc:
                    if not (_is_full(exc) and attempt == 1 and self.spare.release()):
                        log.warning("store %s: WAL checkpoint failed: %s", self.path, exc)
                        return
        finally:
            self.conn.execute("PRAGMA busy_timeout = 30000")

    def _after_commit(self, head: int) -> None:
        if not self._lost_below:
            self.mark.note(self.stream_id, head)
        self._checkpoint()

    # -- sync side ---------------------------------------------------------------------
    def pending(self, limit: int) -> list[tuple[int, str, str]]:
        """The next batch of unsent records as ``(seq, body, hash)``, ascending by seq.

        Alarms and events go first, in batches of their own; then the backlog, as a run of
        consecutive unsent records walked in seq order from the lowest unsent seq known
        (``_floor``, so inserting a reading maintains no index). Either way a batch is
        fully named by its first and last seq: the Idempotency-Key never stands for two
        different sets of records. Read in one snapshot with the stream id, so a batch
        and :attr:`stream_id` agree even when another connection starts a new stream.
        Acknowledgements held in memory (a full disk) count as written.
        """
        with self._lock:
            if self._acks_held:
                self._write_held_acks()
            self.conn.execute("BEGIN")
            try:
                self._sync_stream_locked()
                self._follow_release_locked()
                urgent = self._unsent("state = 0 AND type != 'reading'", 0, limit)
                if urgent:
                    return urgent
                backlog = self._unsent("state = 0", self._floor, limit)
                if backlog:
                    self._floor = backlog[0][0] - 1  # nothing at or below is unsent
                return backlog
            finally:
                self.conn.execute("COMMIT")

    def _unsent(self, where: str, after: int, limit: int) -> list[tuple[int, str, str]]:
        """Rows matching ``where`` above ``after``, ascending, skipping acknowledgements held."""
        sql = f"SELECT seq, body, hash FROM records WHERE {where} AND seq > ?"
        out: list[tuple[int, str, str]] = []
        cursor = after
        for lo, hi in self._acks_held:
            if hi <= cursor:
                continue
            if lo - 1 > cursor:
                out += self.conn.execute(sql + " AND seq < ? ORDER BY seq LIMIT ?",
                                         (cursor, lo, limit - len(out))).fetchall()
                if len(out) >= limit:
                    return out
            cursor = hi
        return out + self.conn.execute(sql + " ORDER BY seq LIMIT ?", (cursor, limit - len(out))).fetchall()

    def ack(self, seqs: Iterable[int]) -> None:
        """Mark records acknowledged by the server. When the disk cannot take even that, the
        acknowledgement is held in memory (the records are not sent again meanwhile) and
        written as soon as it can be; a restart before then sends them again (duplicates)."""
        seqs = sorted(seqs)
        if not seqs:
            return
        try:
            self._set_state(seqs, ACKED)
        except StoreFull as exc:
            if not self._acks_held:
                log.error("%s: acknowledgements held in memory until the disk has room", exc)
            runs = _ranges(seqs)
            merged = sorted([*self._acks_held, *runs])
            self._acks_held = []
            for lo, hi in merged:
                if self._acks_held and lo <= self._acks_held[-1][1] + 1:
                    self._acks_held[-1][1] = max(self._acks_held[-1][1], hi)
                else:
                    self._acks_held.append([lo, hi])

    def _write_held_acks(self) -> None:
        held = self._acks_held
        try:
            self._set_state([s for lo, hi in held for s in range(lo, hi + 1)], ACKED)
        except StoreFull:
            return
        log.warning("store %s: %d held acknowledgement run(s) written", self.path, len(held))
        self._acks_held = []

    def set_aside(self, seqs: Sequence[int], reason: str) -> None:
        """Keep records the server refused out of the queue (never deleted)."""
        self._set_state(sorted(seqs), SET_ASIDE, reason=reason)

    def _set_state(self, seqs: Sequence[int], state: int, *, reason: str | None = None) -> None:
        """Pending records of ``seqs`` to ``state``, in one transaction, if the stream they were
        read from is still this store's. One UPDATE per seq: a range UPDATE makes SQLite keep
        the rows in a temporary file first (a third more bytes written per acknowledgement)."""
        with self._lock:
            for attempt in (1, 2):
                try:
                    with self._transaction():
                        if (self._meta("stream_id") or "") != self.stream_id:
                            log.info("store %s: records of ended stream %s not marked", self.path, self.stream_id)
                            return
                        self.conn.executemany("UPDATE records SET state = ? WHERE seq = ? AND state = 0",
                                              [(state, s) for s in seqs])
                        if state == SET_ASIDE:
                            now = time.time()
                            self.conn.executemany("INSERT OR REPLACE INTO set_aside VALUES (?, ?, ?)",
                                                  [(s, reason, now) for s in seqs])
                    break
                except sqlite3.Error as exc:
                    if _is_full(exc):
                        if attempt == 1 and self.spare.release():
                            continue
                        raise StoreFull(f"disk full while marking {len(seqs)} records: {exc}") from exc
                    raise StoreError(f"marking records failed: {type(exc).__name__}: {exc}") from exc
            self._checkpoint()

    def prune(self) -> int:
        """Delete acknowledged records beyond the newest ``keep_acked``, by seq. Returns how many."""
        with self._lock:
            row = self.conn.execute("SELECT seq FROM records WHERE state = ? ORDER BY seq DESC LIMIT 1 OFFSET ?",
                                    (ACKED, self.keep_acked)).fetchone()
            if row is None:
                return 0
            cur = self.conn.execute("DELETE FROM records WHERE state = ? AND seq <= ?", (ACKED, row[0]))
            self._checkpoint()
            return cur.rowcount

    # -- records lost: a new stream ----------------------------------------------------
    def _check_mark(self) -> dict[str, Any] | None:
        """Compare the store with its high-water mark; what was lost, or None."""
        mark: Mark | None = read_mark(self.sidecar)
        if mark is None:
            return None
        head = self.head()[0]
        if mark.stream == self.stream_id:
            if head >= mark.last_seq:
                return None
            return {"detected_by": "high_water_mark", "previous_stream": mark.stream,
                    "previous_last_seq": mark.last_seq, "head_found": head,
                    "lost": {"first_seq": head + 1, "last_seq": mark.last_seq, "count": mark.last_seq - head}}
        row = self.conn.execute("SELECT body FROM records WHERE seq = 1").fetchone()
        if row is not None:
            first = json.loads(row[0])
            if first.get("event") == "stream_started" and first.get("details", {}).get("previous_stream") == mark.stream:
                return None  # this stream followed the marked one before the mark was written
        return {"detected_by": "stream_mismatch", "previous_stream": mark.stream,
                "previous_last_seq": mark.last_seq, "found_stream": self.stream_id, "head_found": head}

    def _restart_after_loss(self, lost: dict[str, Any]) -> None:
        wal = Path(str(self.path) + "-wal")
        if lost["detected_by"] == "high_water_mark":
            try:
                if wal.stat().st_size:
                    # the frames past the damage are not replayed but still hold records: kept as found
                    target = wal.with_name(f"{wal.name}.records-lost-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
                    shutil.copyfile(wal, target)
                    lost["wal_copy"] = str(target)
            except OSError as exc:
                log.warning("could not keep a copy of the WAL %s: %s", wal, exc)
        log.error("store %s lost committed records: %s; starting a new stream (no seq of %s is used again)",
                  self.path, json.dumps({k: v for k, v in lost.items() if k != "detected_by"}),
                  lost["previous_stream"])
        self.restart_stream(lost)

    def restart_stream(self, details: Mapping[str, Any], *, carry_from: int | None = None) -> None:
        """End this stream and start a new one in the same file; see the module docstring.

        The old stream's tables are renamed ``retired_<n>_…`` (kept, never sent again); its
        unsent records — and with ``carry_from``, also the acknowledged ones from that seq
        on (the receiver holds other content there) — are carried into the new stream in
        bounded transactions, resumed at the next open if a crash interrupts them. The
        ``stream_started`` event (reason ``records_lost``) says all of it.
        """
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                self._sync_stream_locked()
                old, head = self.stream_id, int(self._meta("head_seq") or 0)
                retired = json.loads(self._meta("retired") or "[]")
                n = max((r["n"] for r in retired), default=0) + 1
                table = self._retire_locked(n)
                keep_from = carry_from if carry_from is not None else 1 << 62
                count, first, last = self.conn.execute(
                    f"SELECT count(*), min(seq), max(seq) FROM {table} WHERE state = 0 OR (state = 1 AND seq >= ?)",
                    (keep_from,)).fetchone()
                d: dict[str, Any] = {"reason": "records_lost", **details}
                d.setdefault("previous_stream", old)
                d.setdefault("previous_last_seq", head)
                d["retired_as"] = table
                if count:
                    d["carried_over"] = {"from_stream": old, "count": count, "first_seq": first, "last_seq": last,
                                         "as_first_seq": 2, "as_last_seq": count + 1,
                                         "what": "unsent records" if carry_from is None
                                         else f"unsent records, and all from seq {carry_from}"}
                retired.append({"n": n, "stream": old, "head_seq": head, "table": table, "at": rfc3339(time.time())})
                self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('retired', ?)", (json.dumps(retired),))
                if count:
                    self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('carry_over', ?)", (json.dumps(
                        {"table": table, "next": first, "last": last, "keep_from": keep_from}),))
                self._begin_stream_locked(d)
                self.conn.execute("COMMIT")
            except BaseException:
                _rollback(self.conn)
                self._new_stream_id(self._meta("stream_id") or "")
                raise
        self.mark.set(self.stream_id, self.head()[0])
        self._carry_over()

    def _retire_locked(self, n: int) -> str:
        """Inside a transaction: rename this stream's tables ``retired_<n>_…`` and make them anew
        from their own schema (whatever the migrations made them); the newest-reading table is
        emptied. Returns the retired records table."""
        for name in ("records", "set_aside"):
            (sql,) = self.conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?",
                                       (name,)).fetchone()
            indexes = self.conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ?"
                                        " AND sql IS NOT NULL", (name,)).fetchall()
            for index, _ in indexes:
                self.conn.execute(f'DROP INDEX "{index}"')
            self.conn.execute(f'ALTER TABLE "{name}" RENAME TO "retired_{n}_{name}"')
            self.conn.execute(sql)
            for _, index_sql in indexes:
                self.conn.execute(index_sql)
        self.conn.execute("DELETE FROM latest")
        return f"retired_{n}_records"

    def _carry_over(self) -> None:
        """Carry the planned records of a retired stream into this one, a chunk per transaction."""
        while True:
            with self._lock:
                raw = self._meta("carry_over")
                if not raw:
                    return
                plan = json.loads(raw)
                rows = self.conn.execute(
                    f'SELECT seq, ts, tq, body, mono_ns, boot_id FROM "{plan["table"]}" WHERE seq >= ? AND seq <= ?'
                    " AND (state = 0 OR (state = 1 AND seq >= ?)) ORDER BY seq LIMIT ?",
                    (plan["next"], plan["last"], plan["keep_from"], CARRY_CHUNK)).fetchall()
                with self._transaction():
                    self._sync_stream_locked()
                    if rows:
                        seqs = self._append_locked([_carried(r) for r in rows], None)
                        plan["next"] = rows[-1][0] + 1
                        self.conn.execute("UPDATE meta SET value = ? WHERE key = 'carry_over'", (json.dumps(plan),))
                    else:
                        seqs = []
                        self.conn.execute("DELETE FROM meta WHERE key = 'carry_over'")
                        log.warning("store %s: records of %s carried into stream %s", self.path, plan["table"],
                                    self.stream_id)
                if seqs:
                    self._after_commit(seqs[-1])

    def _free_retired(self, need: int) -> None:
        """Delete rows of retired streams that live on elsewhere (acknowledged, or carried into
        this stream); set-aside ones stay. A table left empty is dropped."""
        retired = json.loads(self._meta("retired") or "[]")
        plan = json.loads(self._meta("carry_over") or "null")
        for r in retired:
            table = r["table"]
            exists = self.conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                       (table,)).fetchone()
            if not exists:
                continue
            below = plan["next"] if plan and plan["table"] == table else 1 << 62
            n = max(1, need // EST_READING + 1)
            self.conn.execute(f'DELETE FROM "{table}" WHERE seq IN (SELECT seq FROM "{table}" WHERE state != ?'
                              " AND seq < ? ORDER BY seq LIMIT ?)", (SET_ASIDE, below, n))
            if self.conn.execute(f'SELECT 1 FROM "{table}" LIMIT 1').fetchone() is None:
                self.conn.execute(f'DROP TABLE "{table}"')
            need -= n * EST_READING
            if need <= 0:
                return

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
            quota_state = self.load_state(QUOTA_STATE) or {}
            refusing = quota_state.get("refusing")  # what the owner said, in whichever process
            retired = [{"stream": r["stream"], "head_seq": r["head_seq"], "at": r["at"]}
                       for r in json.loads(self._meta("retired") or "[]")]
            stream = self._meta("stream_id") or self.stream_id
        u = self.usage()
        return {
            "path": str(self.path),
            "stream": stream,
            "head_seq": head_seq,
            "pending": counts.get(PENDING, 0),
            "pending_alarms_events": pending_urgent,
            "acked_kept": counts.get(ACKED, 0),
            "set_aside": counts.get(SET_ASIDE, 0),
            "oldest_pending_ts": rfc3339(oldest) if oldest is not None else None,
            "oldest_pending_age_s": round(time.time() - oldest, 1) if oldest is not None else None,
            "disk_bytes": u.live,
            "file_bytes": u.file_bytes,
            "free_page_bytes": u.free_pages,
            "wal_bytes": u.wal,
            "fs_free_bytes": u.fs_free,
            "quota_bytes": self.quota_bytes,
            "reserve_bytes": self.budget.reserve,
            "spare_present": self.spare.present,
            "refusing_readings": refusing is not None,
            "refusing": refusing,
            "retired_streams": retired,
            "acks_held": sum(hi - lo + 1 for lo, hi in self._acks_held),
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
            # said to every connection: each one's floor goes below the lowest seq any
            # release put back that it may not have followed yet
            n, after = self._release()
            after = min(after, seqs[0] - 1) if n else seqs[0] - 1
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('released', ?)",
                              (json.dumps({"n": n + 1, "after": after}),))
            self._release_seen = n + 1
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


def spare_path(store_path: Path) -> Path:
    """The spare file the store keeps for a full disk (:class:`agent.space.Spare`)."""
    return store_path.with_name(store_path.name + ".spare")


def _is_full(exc: sqlite3.Error) -> bool:
    """SQLITE_FULL (the disk, or ``max_page_count``), by its result code, not its message."""
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_FULL


#: The key in ``state`` under which the owner says whether it refuses records.
QUOTA_STATE = "store.refusing"
#: Records carried from a retired stream per transaction.
CARRY_CHUNK = 2000


def _carried(row: Sequence[Any]) -> dict[str, Any]:
    """A retired record as an item to append again: its content, without its old place."""
    _seq, ts, tq, body, mono_ns, boot_id = row
    item = json.loads(body)
    for key in ("stream", "seq", "prev_hash"):
        item.pop(key, None)
    item.update(ts=float(ts), time_quality=tq, mono_ns=mono_ns, boot_id=boot_id)
    return dict(item)


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
    db: sqlite_utils.Database | None = None
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
            db = db or _db(conn)  # sqlite-utils only when there is a migration to run
            step(db)
            conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        log.info("store migrated to schema %d (%s)", version + 1, name)


def _db(conn: sqlite3.Connection) -> sqlite_utils.Database:
    """``conn`` through sqlite-utils, leaving the connection as it is (no pragma, no plugin).

    Imported here, not with the module: the daemon's hot path stays on the raw
    connection, and sqlite-utils (with click, dateutil…) costs a Pi a few MiB it need not
    hold once the schema is current."""
    import sqlite_utils

    return sqlite_utils.Database(conn, recursive_triggers=False, execute_plugins=False)


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


__all__ = ["ACKED", "MIGRATIONS", "PENDING", "QUOTA_STATE", "SET_ASIDE", "Store", "loss_details", "spare_path",
           "tally_loss"]
