"""The uplink loop: drains the store through a transport, per the protocol's answer table.

=========================  =============================================================
the transport answers      the loop
=========================  =============================================================
an Answer                  the records are acknowledged in the store; the failure count
                           starts again (a pass that fails now and then never stretches
                           the backoff of the batches that succeed)
SyncRejected (400, 422)    the batch is set aside (kept, never dropped); the first
                           refusal of an episode is a ``batch_set_aside`` event, the
                           following ones are counted and said in one summary event
                           when the episode ends — a server that refuses everything
                           cannot make an event storm; the rest goes on
SyncTooLarge (413)         the batch is split in two and each half sent; a single
                           record too large is a refusal
AuthRefused (401, 403)     nothing is acknowledged; retried every ``AUTH_RETRY_S``
SyncTransient              retried with full-jitter exponential backoff
                           (``backoff_base_s``, ``backoff_cap_s``), honouring
                           ``Retry-After`` up to ``backoff_cap_s``
=========================  =============================================================

Prompt delivery: each commit wakes the loop (:meth:`UplinkLoop.wake`); ``interval_s``
only paces idle polling. Deadlines are on the monotonic clock: a clock step delays
nothing. Alarms and events go ahead of a reading backlog (:meth:`Store.pending`).

The loop runs on a thread of its own with its own store connection; a request that hangs
never holds up a reading or a shutdown (the thread is a daemon). Records the loop makes
(``batch_set_aside``) go through ``post`` (the writer's intake while the daemon runs,
the store directly for the CLI), stamped by the one stamping factory.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from agent.config import UplinkConfig
from agent.exc import AuthRefused, ConfigError, SyncError, SyncRejected, SyncTooLarge, SyncTransient
from agent.stamp import Stamper
from agent.store import Store
from agent.timebase import rfc3339
from agent.uplink.base import Batch, Transport

log = logging.getLogger("coldgate.uplink")

AUTH_RETRY_S = 300.0
#: A refusal episode that lasts is summarised at least this often.
REFUSAL_SUMMARY_S = 600.0


@dataclass
class UplinkState:
    """What ``coldgate status`` shows of the uplink (wall times only for display)."""

    result: str = "never"  # never | ok | idle | transient | auth_refused | rejected | config_error | offline
    last_attempt_at: float | None = None
    last_success_at: float | None = None
    last_error: str | None = None
    last_status: int | None = None
    next_retry_mono: float | None = None
    failures: int = 0
    acked_total: int = 0
    set_aside_total: int = 0
    #: passes that ended with nothing left to send or sent (the fleet health check)
    ok_passes: int = 0
    #: batches by the transport's answer (metrics): ok, rejected, too_large, auth_refused, transient
    answers: dict[str, int] = field(default_factory=dict)

    def count(self, answer: str) -> None:
        self.answers[answer] = self.answers.get(answer, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        now_mono, now = time.monotonic(), time.time()
        nxt = None if self.next_retry_mono is None else now + max(0.0, self.next_retry_mono - now_mono)
        return {
            "result": self.result,
            "last_attempt_at": rfc3339(self.last_attempt_at) if self.last_attempt_at else None,
            "last_success_at": rfc3339(self.last_success_at) if self.last_success_at else None,
            "last_error": self.last_error,
            "last_status": self.last_status,
            "next_retry_at": rfc3339(nxt) if nxt is not None else None,
            "next_retry_in_s": None if nxt is None else round(nxt - now, 1),
            "failures": self.failures,
            "acked_total": self.acked_total,
            "set_aside_total": self.set_aside_total,
            "ok_passes": self.ok_passes,
            "answers": dict(self.answers),
        }


class UplinkLoop:
    """Sends the store's pending records through a transport; see the module docstring."""

    def __init__(self, open_store: Callable[[], Store], make_transport: Callable[[], Transport] | None,
                 config: UplinkConfig, gateway_id: str, stamper: Stamper,
                 post: Callable[[Mapping[str, Any]], None], *,
                 batch_config: Callable[[], Mapping[str, Any] | None] = lambda: None,
                 rng: random.Random | None = None) -> None:
        self._open_store = open_store
        self._make_transport = make_transport
        self.config = config
        self.gateway_id = gateway_id
        self.stamper = stamper
        self.post = post
        self.batch_config = batch_config
        self.state = UplinkState()
        self.store: Store | None = None
        self.transport: Transport | None = None
        self._rng = rng or random.Random()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one pass at a time
        self._thread: threading.Thread | None = None
        self._waiters: list[Future[dict[str, Any]]] = []
        self._waiters_lock = threading.Lock()
        self._refusal: dict[str, Any] | None = None
        self._reset = False
        #: liveness for the watchdog
        self.heartbeat = time.monotonic()
        self.busy_since: float | None = None
        self.max_wait_s = 1.0

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="coldgate-uplink", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the pass in progress; a request that hangs is left to its daemon thread."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._thread is None or not self._thread.is_alive():
            self._close()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        if self.store is not None:
            self.store.close(sidecar=False)
            self.store = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wake(self, head_seq: int | None = None) -> None:
        """Something was committed: send it now (if the backoff allows)."""
        self._wake.set()

    def sync_now(self) -> Future[dict[str, Any]]:
        """Forget the backoff and run a pass; the future holds the state after it."""
        fut: Future[dict[str, Any]] = Future()
        with self._waiters_lock:
            self._waiters.append(fut)
        self.state.next_retry_mono = None
        self._wake.set()
        return fut

    def reconfigure(self, config: UplinkConfig, make_transport: Callable[[], Transport] | None) -> None:
        """The uplink config changed: the next pass builds a new transport."""
        self.config = config
        self._make_transport = make_transport
        self._reset = True
        self.state.next_retry_mono = None
        self._wake.set()

    def status(self) -> dict[str, Any]:
        """The state for ``coldgate status``, with the transport's own view of its link
        (``link``: an MQTT transport's broker connection and the answer it waits for) when
        the transport has one (an optional ``link()`` method; the seam does not need it)."""
        out = self.state.as_dict()
        link = getattr(self.transport, "link", None)
        if callable(link):
            try:
                out["link"] = link()
            except Exception as exc:  # noqa: BLE001 - status must answer whatever the transport does
                out["link"] = {"error": f"{type(exc).__name__}: {exc}"}
        return out

    def due(self) -> bool:
        nxt = self.state.next_retry_mono
        return nxt is None or time.monotonic() >= nxt

    def _run(self) -> None:
        last_pass = -1e9
        while not self._stop.is_set():
            now = self.heartbeat = time.monotonic()
            nxt = self.state.next_retry_mono
            due_at = last_pass + self.config.interval_s if nxt is None else nxt
            woken = self._wake.wait(min(max(0.0, due_at - now), self.max_wait_s))  # alive, for the watchdog
            self._wake.clear()
            now = self.heartbeat = time.monotonic()
            if self._stop.is_set():
                break
            if not self._waiters and not (woken and self.due()) and now < due_at:
                continue
            last_pass = now
            try:
                self.drain()
            except Exception:  # noqa: BLE001 - the uplink keeps trying; the records are safe
                log.exception("uplink pass failed unexpectedly; retrying")
                self.state.next_retry_mono = time.monotonic() + self.config.interval_s
            self._answer_waiters()
        self._answer_waiters()
        self._close()

    def _answer_waiters(self) -> None:
        with self._waiters_lock:
            waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(self.state.as_dict())

    # -- one pass ----------------------------------------------------------------------
    def drain(self, *, max_batches: int | None = None) -> UplinkState:
        """Send until nothing is pending or a batch fails; the state after."""
        with self._lock:
            return self._drain(max_batches)

    def _drain(self, max_batches: int | None) -> UplinkState:
        st = self.state
        st.last_attempt_at = time.time()
        if self._make_transport is None:
            st.result, st.last_error = "offline", "no uplink configured: buffering only"
            st.next_retry_mono = time.monotonic() + AUTH_RETRY_S
            return st
        if self._reset:
            self._reset = False
            if self.transport is not None:
                self.transport.close()
            self.transport = None
        try:
            if self.transport is None:
                self.transport = self._make_transport()
        except ConfigError as exc:
            st.result = "config_error"
            msg = "; ".join(str(p) for p in exc.problems) or str(exc)
            if st.last_error != msg:
                log.error("uplink not usable: %s", msg)
            st.last_error = msg
            st.next_retry_mono = time.monotonic() + AUTH_RETRY_S
            return st
        if self.store is None:
            try:
                self.store = self._open_store()
            except Exception as exc:  # noqa: BLE001 - the writer creates it; try again soon
                st.result, st.last_error = "transient", f"store not readable yet: {exc}"
                st.next_retry_mono = time.monotonic() + 1.0
                return st
        sent = 0
        store = self.store
        while max_batches is None or sent < max_batches:
            if self._stop.is_set() and max_batches is None:
                break
            rows = store.pending(self.config.batch_size)
            if not rows:
                break
            batch = Batch(self.gateway_id, store.stream_id, rows, self.batch_config())
            try:
                self._deliver(batch)
            except SyncError as exc:
                self._failed(exc)
                return st
            except Exception as exc:  # noqa: BLE001 - e.g. the store; retried like a network error
                log.exception("uplink pass failed")
                self._failed(SyncTransient(f"{type(exc).__name__}: {exc}"))
                return st
            sent += 1
        st.result = "ok" if sent else "idle"
        st.ok_passes += 1
        st.failures, st.next_retry_mono, st.last_error, st.last_status = 0, None, None, None
        st.last_success_at = time.time()
        return st

    def _send(self, batch: Batch) -> None:
        assert self.transport is not None
        self.busy_since = time.monotonic()
        try:
            self.transport.send(batch)
        finally:
            self.busy_since = None
            self.heartbeat = time.monotonic()

    def _deliver(self, batch: Batch) -> None:
        assert self.store is not None
        try:
            self._send(batch)
        except SyncRejected as exc:
            self.state.count("rejected")
            self._set_aside(batch, str(exc), exc.status)
            return
        except SyncTooLarge as exc:
            self.state.count("too_large")
            if len(batch) == 1:
                self._set_aside(batch, f"{exc} (a single record)", 413)
                return
            log.info("batch of %d too large for the server: splitting", len(batch))
            for half in batch.split():
                self._deliver(half)
            return
        self.store.ack(seq for seq, _, _ in batch.records)
        st = self.state
        st.count("ok")
        st.acked_total += len(batch)
        st.failures = 0  # each success starts the backoff again
        self._end_refusals()

    def _set_aside(self, batch: Batch, reason: str, status: int | None) -> None:
        assert self.store is not None
        seqs = [seq for seq, _, _ in batch.records]
        self.store.set_aside(seqs, reason)
        self.state.set_aside_total += len(seqs)
        ep = self._refusal
        if ep is None:
            log.error("batch %d-%d (%d records) set aside: %s", seqs[0], seqs[-1], len(seqs), reason)
            self.post(self.stamper.event("batch_set_aside", {
                "first_seq": seqs[0], "last_seq": seqs[-1], "count": len(seqs), "status": status,
                "reason": reason[:500], "kept_locally": True}))
            self._refusal = {"since": time.monotonic(), "batches": 0, "count": 0, "ranges": [],
                             "status": status, "reason": reason[:500]}
            return
        ep["batches"] += 1
        ep["count"] += len(seqs)
        if len(ep["ranges"]) < 50:
            ep["ranges"].append([seqs[0], seqs[-1]])
        if time.monotonic() - ep["since"] >= REFUSAL_SUMMARY_S:
            self._end_refusals(still=True)

    def _end_refusals(self, still: bool = False) -> None:
        """Say in one event how many more batches were refused since the first one."""
        ep = self._refusal
        if ep is None:
            return
        self._refusal = {**ep, "since": time.monotonic(), "batches": 0, "count": 0, "ranges": []} if still else None
        if not ep["batches"]:
            return
        log.error("%d more batch(es), %d record(s), set aside since the first refusal", ep["batches"], ep["count"])
        self.post(self.stamper.event("batch_set_aside", {
            "repeated": True, "batches": ep["batches"], "count": ep["count"], "ranges": ep["ranges"],
            "ranges_complete": ep["batches"] <= 50, "status": ep["status"], "reason": ep["reason"],
            "still_refusing": still, "kept_locally": True}))

    def _failed(self, exc: SyncError) -> None:
        st = self.state
        st.failures += 1
        st.last_error = str(exc)
        st.last_status = exc.status
        cfg = self.config
        st.count("auth_refused" if isinstance(exc, AuthRefused) else "transient")
        if isinstance(exc, AuthRefused):
            st.result = "auth_refused"
            delay = AUTH_RETRY_S
        else:
            st.result = "transient"
            cap = min(cfg.backoff_cap_s, cfg.backoff_base_s * 2 ** min(st.failures - 1, 30))
            delay = self._rng.uniform(0, cap)
            if exc.retry_after is not None:
                delay = max(delay, min(exc.retry_after, cfg.backoff_cap_s))
        st.next_retry_mono = time.monotonic() + delay
        log.warning("sync failed (%s); next try in %.1f s", exc, delay)


__all__ = ["AUTH_RETRY_S", "UplinkLoop", "UplinkState"]
