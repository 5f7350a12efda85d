"""The writer: drains the intake through the ingest into the store, by group commit.

One thread owns the store's write connection, the ingest and the rule engine, so a
commit always holds the records *and* the rule state that produced them (with the agent
timeline its times are on, :mod:`agent.timeline`, resumed when the store opens). The loop:

1. take entries from the :class:`~agent.intake.Intake` (readings, events, driver
   state, calls) and run the readings through the :class:`~agent.ingest.Ingest`;
2. commit when ``commit_max`` records are pending, or ``commit_interval_s`` has passed
   since the last commit (at once, after a quiet spell), or an alarm is among them (then
   at once): no record waits longer than ``commit_interval_s`` and commits are at most
   one an interval, so crash loss is bounded both in records and in seconds, at every
   rate, and a drivers' gathered read is durable as soon as it arrives;
3. after each commit, wake the uplink (``on_commit``): a reading goes out within
   moments of its commit, not after an idle poll.

Transactions are bounded (``TX_MAX`` records): a backlog held while the disk was full
goes back in pieces, so one transaction never grows the WAL past what the disk has.

When the store fails, nothing taken is dropped: the records are *held* in memory (up to
``max_held``; beyond, the oldest readings are dropped and counted — alarms and events
are never dropped) and the writer retries with backoff, reopening the store (a
connection opened read-only stays so). Their loss, if any, is a ``data_loss`` event
(``reason: store_unwritable``) committed as soon as the store takes writes. At stop,
records still held go to a spill file beside the store (``<store>.held``) or, when that
filesystem takes no writes either (an SD card remounted read-only), to the runtime
directory (``/run/coldgate``: it survives a restart of the service, not a reboot); the
next start commits them first. On a full disk the spill uses the store's spare (deleted
for it); should even that fail, the spill keeps at least a ``data_loss`` record of what
was held (counts, sensors, times), and only if that too cannot be written anywhere is the
loss said in the log alone, with its count, and the agent exits non-zero. The store's
count of records refused for the quota is handed from a failed connection to the next
one, never dropped with it.

Seqs reused: a receiver that holds some of a batch's seqs with other content
(``conflicts``, see :class:`agent.seqguard.ConflictWatch`) makes the writer start a new
stream (:meth:`Writer.seqs_conflict`), at most once every ``CONFLICT_RESTART_S``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.exc import StoreError
from agent.ingest import Ingest
from agent.intake import Intake
from agent.space import Refusals, Spare, loss_details, tally_loss
from agent.stamp import Stamper
from agent.store import Store, spare_path
from agent.timebase import rfc3339

if TYPE_CHECKING:
    from agent.uplink.base import Answer, Batch

log = logging.getLogger("coldgate.writer")

#: Records per transaction at most (a backlog goes back in pieces).
TX_MAX = 5000
#: Records held in memory while the store fails; beyond, the oldest readings are dropped.
MAX_HELD = 50_000
#: The rule state is committed at least this often while every sensor is in range.
STATE_EVERY_S = 10.0
#: Time-driven rules (delays running out, data missing) are looked at this often.
TICK_EVERY_S = 1.0
PRUNE_EVERY_S = 60.0
RETRY_BASE_S, RETRY_CAP_S = 0.5, 30.0
#: The receiver's conflicts restart the stream at most this often (a hostile or broken
#: server must not make the gateway start a stream with every batch).
CONFLICT_RESTART_S = 600.0


def spill_path(store_path: Path) -> Path:
    return store_path.with_name(store_path.name + ".held")


class Writer:
    """Group commit on a thread of its own; see the module docstring."""

    def __init__(self, open_store: Callable[[], Store], intake: Intake, ingest: Ingest, stamper: Stamper, *,
                 commit_interval_s: float, commit_max: int, spill: Path | list[Path],
                 on_commit: Callable[[int], None] = lambda head: None,
                 states: Callable[[], dict[str, Any]] | None = None,
                 max_held: int = MAX_HELD) -> None:
        self._open_store = open_store
        self.intake, self.ingest, self.stamper = intake, ingest, stamper
        self.commit_interval_s, self.commit_max = commit_interval_s, commit_max
        #: where held records go at exit, in order of preference; all are replayed at start
        self.spills = [spill] if isinstance(spill, Path) else list(spill)
        self.spill = self.spills[0]
        #: records that could not be kept anywhere at exit (the agent exits non-zero)
        self.lost_at_exit = 0
        self.on_commit = on_commit
        #: extra state saved with a commit (the shipments, later): ``{key: JSON-able}``
        self._states = states
        self.max_held = max_held
        self.store: Store | None = None
        self.store_error: str | None = None
        self.error_since: float | None = None  # wall time, for status
        self._held: list[dict[str, Any]] = []  # records a failed commit kept, oldest first
        self._lost: dict[str, Any] = {}  # readings dropped from a full hold, not yet said
        self._driver_states: dict[str, Mapping[str, Any]] = {}
        self._pending_since: float | None = None
        self._urgent = False
        self._retry_at = 0.0
        self._retries = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state_saved_at = -STATE_EVERY_S
        self._out_of_range: frozenset[str] = frozenset()
        self._next_tick = 0.0
        self._next_prune = time.monotonic() + PRUNE_EVERY_S
        self._corrected_upto = 0
        self._checkpointed = -1  # seq of the last checkpoint this run appended
        #: liveness for the watchdog: monotonic time of the last loop iteration, which
        #: comes at least every ``max_wait_s``
        self.heartbeat = time.monotonic()
        self.max_wait_s = 1.0
        self.commits = 0
        self.committed = 0
        self.last_commit_at: float | None = None  # monotonic
        self.opened: Future[Store | None] = Future()
        #: makes a signed ``chain_checkpoint`` (the daemon sets it when the gateway has an identity)
        self.make_checkpoint: Callable[[str, int, str], Mapping[str, Any]] | None = None
        #: the quota's refusal episode of a connection that failed, for the next one
        self._refusals: Refusals | None = None
        self._conflict_restart_at = -CONFLICT_RESTART_S
        self.stream_restarts = 0

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="coldgate-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Commit everything taken, spill what cannot be committed, close the store."""
        self._stop.set()
        self.intake.close()
        if self._thread is not None:
            self._thread.join()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        if self._try_open():
            self._guard(self._resume_timeline)
        self.opened.set_result(self.store)
        self._replay_spill()
        while True:
            self.heartbeat = now = time.monotonic()
            stopping = self._stop.is_set()
            pending = bool(self.ingest.items) or bool(self._held)
            # While readings flow, look at the intake once a commit interval instead of
            # waking for every line (a wake-up a line was half the CPU of a gateway at
            # 100 lines/s); after a quiet spell, the first entry wakes the writer at once.
            flowing = now < self._quiet_until()
            timeout = self._wait_for(now, pending, flowing)
            entries = self.intake.take(self._room(), 0.0 if stopping else timeout,
                                       wake_on_any=not pending and not flowing)
            if entries:
                since = self.intake.taken_since
                self._process(entries)
                if since is not None and self._pending_since is not None and since < self._pending_since:
                    self._pending_since = since  # the commit interval runs from the oldest arrival
            now = time.monotonic()
            if now >= self._next_tick:
                self._next_tick = now + TICK_EVERY_S
                self._guard(self._tick)
            if self._due(now) or (stopping and not entries):
                self._commit()
            if now >= self._next_prune and self.store is not None and self.store_error is None:
                self._next_prune = now + PRUNE_EVERY_S
                self._guard(self.store.prune)
            if stopping and not entries and not len(self.intake):
                break
        self._close()

    def _guard(self, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception:  # noqa: BLE001 - one failed chore must not stop the writer
            log.exception("writer chore %s failed; going on", getattr(fn, "__name__", fn))

    def _wait_for(self, now: float, pending: bool, flowing: bool = False) -> float:
        """How long to wait for entries before the next thing to do."""
        deadlines = [self._next_tick]
        if flowing and not pending and now < self._quiet_until():
            deadlines.append(self._quiet_until())
        if pending:
            deadlines.append(self._quiet_until())
        if self.store_error is not None:
            deadlines.append(self._retry_at)
        return max(0.0, min(min(deadlines) - now, self.max_wait_s))

    def _room(self) -> int:
        return max(1, min(TX_MAX, self.commit_max) - len(self.ingest.items))

    # -- taking entries ----------------------------------------------------------------
    def _process(self, entries: list[tuple[Any, ...]]) -> None:
        ingest, items = self.ingest, self.ingest.items
        before = len(items)
        for e in entries:
            tag = e[0]
            if tag == "r":
                try:
                    ingest.stamped(e[1], e[2], e[3], e[4], e[5])
                except Exception:  # noqa: BLE001 - a bug in judging must not stop the writer
                    log.exception("readings from %s could not be taken; counted as lost", e[1])
                    items.append(self.stamper.event("data_loss", {
                        "reason": "ingest_error", "what": "readings", "driver": e[1], "count": len(e[2])}))
                    self._urgent = True
                if e[6] is not None:  # the driver's state as of these readings: the same commit
                    self._driver_states[e[1]] = e[6]
            elif tag == "i":
                items.append(e[1])
                self._urgent = True  # events and alarms go now
            elif tag == "s":
                self._driver_states[e[1]] = e[2]
                if self._pending_since is None:
                    self._pending_since = time.monotonic()
            elif tag == "c":
                fn, fut = e[1], e[2]
                if fut.set_running_or_notify_cancel():
                    try:
                        fut.set_result(fn())
                    except BaseException as exc:  # noqa: BLE001 - handed to the caller
                        fut.set_exception(exc)
        if len(items) > before and self._pending_since is None:
            self._pending_since = time.monotonic()

    def note_alarm(self, item: Mapping[str, Any]) -> None:
        """The ingest raised or cleared an alarm: commit (and send) at once."""
        self._urgent = True

    def _resume_timeline(self) -> None:
        """The rules' timeline goes on from the one committed with their state."""
        store = self.store
        assert store is not None
        self.ingest.resume_timeline(store.load_state("timeline"))

    def _tick(self) -> None:
        self.ingest.tick()
        if self.ingest.items and self._pending_since is None:
            self._pending_since = time.monotonic()

    # -- committing --------------------------------------------------------------------
    def _due(self, now: float) -> bool:
        if self.store_error is not None:
            return now >= self._retry_at
        n = len(self.ingest.items)
        if not n and not self._driver_states:
            return False
        return self._urgent or n >= self.commit_max or now >= self._quiet_until()

    def _quiet_until(self) -> float:
        """Commits are at least ``commit_interval_s`` apart: what comes after a quiet spell is
        committed at once, what follows a commit waits for the next one — never longer than
        ``commit_interval_s``, and never more than one commit an interval (SD wear)."""
        last = self.last_commit_at
        return -1e18 if last is None else last + self.commit_interval_s

    def _commit(self) -> None:
        """Commit what is held and pending, in transactions of at most TX_MAX records."""
        fresh = self.ingest.take()
        states = {f"driver:{name}": dict(state) for name, state in self._driver_states.items()}
        self._driver_states = {}
        self._urgent = False
        self._pending_since = None
        todo = self._held + fresh
        self._held = []
        loss = self._loss_event() if self._lost else None
        if loss is not None:
            todo.append(loss)
        if not todo and not states:
            return
        if self.store is None and not self._try_open():
            self._hold(todo, states, loss)
            return
        store = self.store
        assert store is not None
        rules_state = self._rules_state(fresh)
        done = 0
        try:
            while True:
                chunk = todo[done:done + TX_MAX]
                last = done + len(chunk) >= len(todo)
                # drivers' states with the first piece: never behind a reading they admitted (a
                # replay counter behind a stored reading would let that frame in again after a
                # kill); the rules' state with the last, which holds the records it judged
                state = {**(states if done == 0 else {}), **(rules_state if last else {})}
                store.append(chunk, state=state or None)
                done += len(chunk)
                if last:
                    break
        except Exception as exc:  # noqa: BLE001 - whatever failed, nothing taken may be lost
            self._failed(exc, todo[done:], states, loss)
            return
        if rules_state:
            self._state_saved_at = time.monotonic()
        if loss is not None:
            self._lost = {}
        self.commits += 1
        self.committed += len(todo)
        self.last_commit_at = time.monotonic()
        if self.store_error is not None:
            log.warning("store writable again after %s; %d held record(s) committed", self.store_error, len(todo))
            self.store_error, self.error_since, self._retries = None, None, 0
        self.on_commit(store.head()[0])
        if self.ingest.shipment_ended and self.make_checkpoint is not None:
            # the end of a shipment is sealed: a signed checkpoint over the records up to it
            self.ingest.shipment_ended = False
            try:
                self.checkpoint(self.make_checkpoint, force=True)
            except Exception:  # noqa: BLE001 - the records are committed; the next checkpoint covers them
                log.exception("no checkpoint at the end of the shipment")

    def _rules_state(self, fresh: list[dict[str, Any]]) -> dict[str, Any]:
        """The judges' state, when this commit should carry it (see :meth:`_state_due`)."""
        if not self._state_due(fresh):
            return {}
        # the timeline the rule state's times are on, in the same transaction
        out: dict[str, Any] = {"timeline": self.ingest.timeline.state()}
        judge = self.ingest.judge
        if judge is not None:
            out["rules"] = judge.snapshot()
        book = self.ingest.book
        if book is not None:
            out["shipments"] = book.snapshot()
            self.ingest.book_changed = False
        if self._states is not None:
            out.update(self._states())
        return out

    def _state_due(self, items: list[dict[str, Any]]) -> bool:
        """Always with an alarm change (an alarm is never raised twice after a crash),
        while any sensor is out of range or one just came back (an excursion and its
        budget are timed exactly across a crash), else every ``STATE_EVERY_S``."""
        judge, book = self.ingest.judge, self.ingest.book
        if judge is None and book is None and self._states is None:
            return False
        out = frozenset(sid for sid in self.ingest.last_seen if judge is not None and judge.out_of_range(sid))
        changed = out != self._out_of_range
        self._out_of_range = out
        shipments = book is not None and (self.ingest.book_changed or book.spending)  # a budget spent exactly
        return (changed or bool(out) or shipments or any(i["type"] == "alarm" for i in items)
                or time.monotonic() - self._state_saved_at >= STATE_EVERY_S)

    def _failed(self, exc: BaseException, todo: list[dict[str, Any]], states: dict[str, Any],
                loss: dict[str, Any] | None) -> None:
        first = self.store_error is None
        self.store_error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, StoreError) else str(exc)
        if first:
            self.error_since = time.time()
            if isinstance(exc, StoreError):
                log.error("store cannot take records (%s): holding them in memory and retrying", exc)
            else:
                log.exception("unexpected error committing %d records; holding them and retrying", len(todo))
        self._retries += 1
        delay = min(RETRY_CAP_S, RETRY_BASE_S * 2 ** min(self._retries - 1, 10))
        self._retry_at = time.monotonic() + delay
        self._hold(todo, states, loss)
        self._reopen()

    def _hold(self, todo: list[dict[str, Any]], states: dict[str, Any], loss: dict[str, Any] | None) -> None:
        # the data_loss event of the hold itself is made anew, with the count then, next time
        todo = [i for i in todo if i is not loss]
        overflow = len(todo) - self.max_held
        if overflow > 0:
            dropped_ids = set()
            dropped = []
            for i in todo:
                if i["type"] == "reading":
                    dropped.append(i)
                    dropped_ids.add(id(i))
                    if len(dropped) == overflow:
                        break
            todo = [i for i in todo if id(i) not in dropped_ids]
            tally_loss(self._lost, dropped)
        self._held = todo
        for key, state in states.items():  # kept for the next attempt, unless a newer one came
            self._driver_states.setdefault(key.removeprefix("driver:"), state)
        if self.store_error is None:
            self.store_error = "store not open"
            self.error_since = time.time()
            self._retry_at = time.monotonic() + RETRY_BASE_S

    def _loss_event(self) -> dict[str, Any]:
        return self.stamper.event("data_loss", {"reason": "store_unwritable", **loss_details(self._lost),
                                                "error": self.store_error})

    def _try_open(self) -> bool:
        try:
            self.store = self._open_store()
            if self._refusals is not None:
                self.store.adopt_refusals(self._refusals)
                self._refusals = None
        except Exception as exc:  # noqa: BLE001 - retried; the records are held meanwhile
            self.store = None
            if self.store_error is None:
                log.error("store cannot be opened (%s): holding records in memory and retrying", exc)
                self.error_since = time.time()
            self.store_error = f"{exc}"
            self._retries += 1
            self._retry_at = time.monotonic() + min(RETRY_CAP_S, RETRY_BASE_S * 2 ** min(self._retries - 1, 10))
            return False
        return True

    def _reopen(self) -> None:
        """A connection that failed may stay failed (opened read-only): open it anew next time."""
        store, self.store = self.store, None
        if store is not None:
            if store.refusals.active or store.refusals.unsaid:
                self._refusals = store.refusals  # its count goes on in the next connection
            try:
                store.close(sidecar=False, report=False)
            except Exception as exc:  # noqa: BLE001 - it is being replaced
                log.debug("closing the failed store: %s", exc)

    # -- stop, spill, replay -----------------------------------------------------------
    def _close(self) -> None:
        if self.ingest.items or self._held or self._lost:
            self._commit()
        if self._refusals is not None and self.store is None and not self._held:
            self._try_open()  # the new connection takes the count of the failed one
        report = True
        if self.store is not None:
            try:
                self.store.report_losses()
            except Exception as exc:  # noqa: BLE001 - kept for the spill instead
                log.error("the count of refused records could not be committed at exit: %s", exc)
                self._refusals, report = self.store.refusals, False
        if self._held or self._lost or (self._refusals is not None and self._refusals.unsaid):
            self._spill_held()
        if self.store is not None:
            try:
                self.store.close(report=report)
            except Exception as exc:  # noqa: BLE001 - closing at exit
                log.error("closing the store failed: %s", exc)
            self.store = None

    def _spill_held(self) -> None:
        """Keep what could not be committed in a file, for the next start.

        The spill beside the store first (a full disk gives up the store's spare for it),
        then the runtime directory; if the records fit nowhere, the record of their loss
        (a few hundred bytes) is kept instead."""
        items = self._held + ([self._loss_event()] if self._lost else [])
        refusals = self._refusals
        if refusals is not None and refusals.unsaid:  # what the failed connection refused
            details = refusals.details(ended=True, quota=0, usage=None)
            if details is not None:
                details.pop("quota_bytes", None)
                items.append(self.stamper.event("data_loss", details))
        errors = []
        for spill in self.spills:
            for attempt in (1, 2):
                try:
                    self._write_spill(spill, items)
                except (OSError, TypeError, ValueError) as exc:
                    full = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
                    if attempt == 1 and full and Spare(self._spare, 0).release():
                        continue
                    errors.append(f"{spill}: {exc}")
                    break
                log.warning("%d record(s) held at exit kept in %s; the next start commits them", len(items), spill)
                self._held, self._lost, self._refusals = [], {}, None
                return
        for spill in self.spills:
            if self._spill_loss(spill, items, "; ".join(errors)):
                return
        self.lost_at_exit = len(items)
        log.error("%d record(s) held at exit could not be committed nor kept (%s): they are lost",
                  len(items), "; ".join(errors))

    @property
    def _spare(self) -> Path:
        return spare_path(self.spill.with_name(self.spill.name.removesuffix(".held")))

    def _write_spill(self, spill: Path, items: list[dict[str, Any]]) -> None:
        tmp = spill.with_name(spill.name + ".tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                if spill.exists():
                    f.write(spill.read_text(encoding="utf-8"))
                for item in items:
                    f.write(json.dumps(item) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, spill)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _spill_loss(self, spill: Path, items: list[dict[str, Any]], why: str) -> bool:
        """The records did not fit in the spill: keep the record of their loss instead."""
        readings = [i for i in items if i.get("type") == "reading"]
        lost: dict[str, Any] = {}
        tally_loss(lost, readings)
        details: dict[str, Any] = {"reason": "store_unwritable", "what": "records", "count": len(items),
                                   "readings": len(readings), "error": f"{self.store_error or ''}; spill: {why}"}
        if readings:
            details.update({k: v for k, v in loss_details(lost).items() if k not in ("what", "count")})
        others = [i for i in items if i.get("type") != "reading"]
        details["alarms"] = sum(1 for i in others if i.get("type") == "alarm")
        details["events"] = {}
        for i in others:
            if i.get("type") == "event":
                details["events"][str(i.get("event"))] = details["events"].get(str(i.get("event")), 0) + 1
        try:
            self._write_spill(spill, [self.stamper.event("data_loss", details)])
        except (OSError, TypeError, ValueError):
            return False
        log.error("%d record(s) held at exit could not be kept (%s): their loss is kept in %s instead, "
                  "for the next start to commit", len(items), why, spill)
        self._held, self._lost, self._refusals = [], {}, None
        self.lost_at_exit = len(items)
        return True

    def _replay_spill(self) -> None:
        """Records a previous run held at exit: committed before anything of this run."""
        for spill in self.spills:
            self._replay_one(spill)

    def _replay_one(self, spill: Path) -> None:
        try:
            text = spill.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except OSError as exc:
            log.error("cannot read held records in %s: %s", spill, exc)
            return
        items, bad = [], 0
        for line in text.splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if isinstance(item, dict) and item.get("type") in ("reading", "alarm", "event"):
                items.append(item)
            else:
                bad += 1
        if bad:
            items.append(self.stamper.event("data_loss", {"reason": "spill_unreadable", "what": "records",
                                                          "count": bad, "file": str(spill)}))
        log.info("committing %d record(s) held by the previous run (%s)", len(items), spill)
        self.ingest.items[:0] = items
        self._commit()
        if not self._held:
            try:
                spill.unlink()
            except OSError as exc:
                log.error("cannot remove %s after committing it (%s): its records may be committed twice",
                          spill, exc)

    # -- for the other parts (run on this thread through intake.call) -------------------
    def correct_clock(self, rel_now: float) -> None:
        """The clock just became synchronised: restamp what is not committed, commit, and
        append the ``clock_step`` event that says how to correct this boot's records."""
        boot = self.stamper.boot_id
        self._process(self.intake.take(10**9, 0.0, wake_on_any=True))
        for item in self.ingest.items + self._held:
            if item.get("time_quality") == "unsynced" and item.get("mono_ns") is not None \
                    and item.get("boot_id") == boot:
                item["ts"] = rel_now + item["mono_ns"] / 1e9
                item["time_quality"] = "corrected"
        self._commit()
        store = self.store
        segments = store.unsynced_segments(boot, self._corrected_upto) if store is not None else []
        if segments:
            self._corrected_upto = max(b for _, b, _, _ in segments)
        corrections = [{"first_seq": a, "last_seq": b, "count": n, "offset_s": round(rel_now - base, 3)}
                       for a, b, n, base in segments]
        log.info("system clock synchronised; %d run(s) of unsynced records corrected by event", len(corrections))
        self.ingest.items.append(self.stamper.event("clock_step", {
            "synced": True, "boot_id": boot, "corrections": corrections, "method": "monotonic (CLOCK_BOOTTIME)",
            "rule": "for records of this stream with seq in [first_seq, last_seq] and time_quality 'unsynced', "
                    "the corrected time is ts + offset_s",
        }))
        self._urgent = True

    def conflict_reporter(self) -> Callable[[Batch, Answer], None]:
        """The ``on_conflict`` of :class:`agent.seqguard.ConflictWatch`: posts to this thread."""
        def report(batch: Batch, answer: Answer) -> None:
            self.intake.call(lambda: self.seqs_conflict(batch.stream, batch.first, batch.last, answer.conflicts))

        return report

    def seqs_conflict(self, stream: str, first: int, last: int, conflicts: int) -> None:
        """The receiver holds ``conflicts`` records of batch ``first``-``last`` of ``stream``
        with other content: this store went back in time and reuses seqs. Start a new stream
        that says so, carrying the batch and everything after it (on the writer's thread)."""
        store = self.store
        if store is None or store.stream_id != stream:
            log.info("conflicts for stream %s, which this store no longer writes", stream)
            return
        now = time.monotonic()
        if now - self._conflict_restart_at < CONFLICT_RESTART_S:
            log.error("the receiver reports %d conflict(s) in %s again; the stream was restarted %.0f s ago, "
                      "not again before %.0f s", conflicts, stream, now - self._conflict_restart_at,
                      CONFLICT_RESTART_S)
            return
        self._commit()
        if self.store is not store:
            return
        try:
            store.restart_stream({"detected_by": "receiver_conflicts", "conflicts": conflicts,
                                  "conflicting_batch": [first, last]}, carry_from=first)
        except Exception as exc:  # noqa: BLE001 - the records stay; the conflicts will be reported again
            log.error("could not start a new stream after the receiver's conflicts: %s", exc)
            return
        self._conflict_restart_at = now
        self.stream_restarts += 1
        self._corrected_upto = 0
        self.on_commit(store.head()[0])
    def driver_state(self, name: str) -> Mapping[str, Any] | None:
        """Driver ``name``'s latest state: taken but not yet committed, else the store's
        (call on the writer's thread). A driver restarted by a reload must not start from
        an older state than the one its previous run gave last."""
        pending = self._driver_states.get(name)
        if pending is not None:
            return dict(pending)
        return self.store.load_state(f"driver:{name}") if self.store is not None else None

    def flush(self) -> None:
        """Commit now what is pending (call on the writer's thread, e.g. through ``intake.call``)."""
        self._process(self.intake.take(10**9, 0.0, wake_on_any=True))
        self._commit()

    def checkpoint(self, make: Callable[[str, int, str], Mapping[str, Any]], *, force: bool = False) -> int | None:
        """Commit what is pending, then append ``make(stream, head_seq, head_hash)`` (the
        signed ``chain_checkpoint``) over the head, read in the same transaction. Skipped
        when nothing was appended since the last one (an idle store writes nothing), unless
        ``force`` (at stop). Its seq, or None. Call on the writer's thread."""
        self.flush()
        store = self.store
        if store is None or self.store_error is not None:
            return None
        if not force and store.head()[0] == self._checkpointed:
            return None
        seq = store.append_checkpoint(make)
        self._checkpointed = seq
        self.commits += 1
        self.committed += 1
        self.last_commit_at = time.monotonic()
        self.on_commit(seq)
        return seq

    def status(self) -> dict[str, Any]:
        """What status shows of the writer (call on its thread)."""
        now = time.monotonic()
        return {
            "held": len(self._held),
            "pending": len(self.ingest.items),
            "intake": self.intake.readings,
            "intake_capacity": self.intake.capacity,
            "intake_waits": self.intake.waits,
            "error": self.store_error,
            "error_since": rfc3339(self.error_since) if self.error_since else None,
            "lost_unsaid": self._lost.get("count", 0),
            "commits": self.commits,
            "committed": self.committed,
            "last_commit_age_s": None if self.last_commit_at is None else round(now - self.last_commit_at, 3),
            "spill": next((str(p) for p in self.spills if p.exists()), None),
        }


__all__ = ["MAX_HELD", "STATE_EVERY_S", "TX_MAX", "Writer", "spill_path"]
