"""The uplink client: batches out of the store, per ``docs/protocol.md``, at least once.

:class:`Uplink` sends one batch (one HTTP request) and translates every answer into
either a result or one of the :class:`~agent.exc.SyncError` subclasses, in one place.
:class:`Syncer` drains the store through it and applies the response table:

=========================  =============================================================
2xx                        the records are acknowledged in the store
400, 422                   the batch is set aside (kept, never dropped); a
                           ``batch_set_aside`` event records it; the rest goes on
413                        the batch is split in two and each half retried (a single
                           record too large is set aside like a 400)
401, 403                   nothing is acknowledged; retried slowly (``AUTH_RETRY_S``);
                           ``coldgate status`` shows it
408, 429, 5xx, network     retried with full-jitter exponential backoff (1 s base,
                           5 min cap), honouring ``Retry-After``
=========================  =============================================================

Alarms and events go ahead of a reading backlog: :meth:`Store.pending` hands them out
first, and a batch is sorted by seq as the protocol asks. The records go out as the
store holds them (the hashed canonical body plus its ``hash``), never re-serialised.
"""

from __future__ import annotations

import email.utils
import gzip
import json
import logging
import random
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import requests

from agent import __version__
from agent.config import UplinkConfig, check_secret_file
from agent.exc import AuthRefused, ConfigError, SyncError, SyncRejected, SyncTransient
from agent.protocol import frame_batch, idempotency_key
from agent.store import Store
from agent.timebase import Clock, boot_id, rfc3339

log = logging.getLogger(__name__)

GZIP_OVER = 1024
AUTH_RETRY_S = 300.0


@dataclass
class SyncState:
    """What ``coldgate status`` shows of the uplink."""

    result: str = "never"  # never | ok | idle | transient | auth_refused | rejected | config_error | offline
    last_attempt_at: float | None = None
    last_success_at: float | None = None
    last_error: str | None = None
    last_status: int | None = None
    next_retry_at: float | None = None
    failures: int = 0
    acked_total: int = 0
    set_aside_total: int = 0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("last_attempt_at", "last_success_at", "next_retry_at"):
            d[k] = rfc3339(d[k]) if d[k] else None
        return d


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class Uplink:
    """One HTTP session to the central endpoint."""

    def __init__(self, config: UplinkConfig, gateway_id: str) -> None:
        assert config.url is not None
        self.config = config
        self.gateway_id = gateway_id
        self.url = f"{config.url}/v1/batches"
        self.session = requests.Session()
        self.session.headers["User-Agent"] = f"coldgate/{__version__}"
        token = None
        if config.token is not None:
            token = config.token.get_secret_value()
        elif config.token_file is not None:
            token = check_secret_file(config.token_file, "uplink.token_file")
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        # Passed with every request, not set on the session: requests lets REQUESTS_CA_BUNDLE
        # and CURL_CA_BUNDLE override a session's verify, and the configured CA must win.
        self._verify: bool | str = True
        if not config.verify_tls:
            self._verify = False
        elif config.ca_bundle is not None:
            self._verify = str(config.ca_bundle)
        self._cert: tuple[str, str] | None = None
        if config.client_cert is not None and config.client_key is not None:
            self._cert = (str(config.client_cert), str(config.client_key))

    def close(self) -> None:
        self.session.close()

    def send(self, stream: str, batch: list[tuple[int, str, str]]) -> dict[str, Any]:
        """POST one batch; return the server's JSON answer or raise a SyncError."""
        first, last = batch[0][0], batch[-1][0]
        payload = frame_batch(self.gateway_id, batch, sent_at=rfc3339(time.time()), config=None)
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": idempotency_key(self.gateway_id, stream, first, last),
        }
        if len(payload) > GZIP_OVER:
            payload = gzip.compress(payload, compresslevel=5)
            headers["Content-Encoding"] = "gzip"
        try:
            resp = self.session.post(self.url, data=payload, headers=headers, verify=self._verify, cert=self._cert,
                                     allow_redirects=False,
                                     timeout=(self.config.connect_timeout_s, self.config.read_timeout_s))
        except requests.exceptions.SSLError as exc:
            raise SyncTransient(f"TLS failure talking to {self.config.masked_url()}: {_tls_reason(exc)}") from exc
        except requests.exceptions.Timeout as exc:
            raise SyncTransient(f"timeout after {self.config.read_timeout_s:g} s") from exc
        except requests.exceptions.ConnectionError as exc:
            raise SyncTransient(f"cannot reach {self.config.masked_url()}: {_root_cause(exc)}") from exc
        except requests.exceptions.RequestException as exc:
            raise SyncTransient(f"network error: {type(exc).__name__}: {_root_cause(exc)}") from exc
        status = resp.status_code
        text = resp.text[:300]
        resp.close()
        if 200 <= status < 300:
            # Acknowledging deletes data in the end: only a server that says it stored the
            # batch is believed (a captive portal's 200 page is not an acknowledgement).
            try:
                answer = json.loads(text)
            except ValueError:
                answer = None
            if not (isinstance(answer, dict) and type(answer.get("stored")) is int
                    and type(answer.get("duplicates")) is int):
                raise SyncTransient(f"HTTP {status} without the protocol's answer ({text[:80]!r}): not acknowledged",
                                    status=status)
            return answer
        if 300 <= status < 400:
            where = resp.headers.get("Location", "?")
            raise SyncTransient(f"HTTP {status}: uplink.url redirects to {where}; set it to the final URL",
                                status=status)
        if status in (400, 422):
            raise SyncRejected(f"server rejected batch {first}-{last}: HTTP {status}: {text}", status=status)
        if status in (401, 403):
            raise AuthRefused(f"credentials refused: HTTP {status}", status=status)
        if status == 413:
            raise SyncError(f"batch {first}-{last} too large: HTTP 413", status=413)
        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        raise SyncTransient(f"HTTP {status}: {text}", status=status, retry_after=retry_after)


def _tls_reason(exc: BaseException) -> str:
    """The TLS library's own words ("certificate verify failed: …"), without the wrapping."""
    text = str(exc)
    for marker in ("certificate verify failed", "SSLV3_ALERT", "TLSV1_ALERT", "alert", "wrong version number"):
        i = text.find(marker)
        if i >= 0:
            return text[i:].split(" (_ssl.c")[0].rstrip("')\"")
    return _root_cause(exc)


def _root_cause(exc: BaseException) -> str:
    """The innermost cause, said plainly ("[Errno 111] Connection refused")."""
    seen = exc
    while True:
        nxt = seen.__cause__ or seen.__context__
        if nxt is None or nxt is seen:
            break
        seen = nxt
    if isinstance(seen, OSError) and seen.strerror:
        return seen.strerror if seen.errno is None else f"{seen.strerror} (errno {seen.errno})"
    text = str(seen)
    if "Connection refused" in str(exc):
        return "connection refused"
    if "Name or service not known" in str(exc) or "Failed to resolve" in str(exc):
        return "host name not found"
    if "RemoteDisconnected" in str(exc) or "Connection aborted" in str(exc):
        return "connection closed by the server without a response"
    return text[:200]


class Syncer:
    """Drains a store through an uplink and keeps the sync state for status."""

    def __init__(self, store: Store, config: UplinkConfig, gateway_id: str, *,
                 rng: random.Random | None = None, clock: Clock | None = None) -> None:
        self.store = store
        self.config = config
        self.gateway_id = gateway_id
        self.state = SyncState()
        self._uplink: Uplink | None = None
        self._reset = False
        self.clock = clock or Clock()
        self._rng = rng or random.Random()
        self._lock = threading.Lock()

    def close(self) -> None:
        if self._uplink is not None:
            self._uplink.close()

    @property
    def busy(self) -> bool:
        """True while a sync pass runs (on another thread)."""
        return self._lock.locked()

    def due(self, now: float | None = None) -> bool:
        nxt = self.state.next_retry_at
        return nxt is None or (time.time() if now is None else now) >= nxt

    def sync_once(self, *, max_batches: int | None = None) -> SyncState:
        """Send until nothing is pending or a batch fails; return the state after."""
        with self._lock:
            return self._sync(max_batches)

    def _sync(self, max_batches: int | None) -> SyncState:
        st = self.state
        st.last_attempt_at = time.time()
        if self._reset:
            self._reset = False
            if self._uplink is not None:
                self._uplink.close()
            self._uplink = None
        if self.config.url is None:
            st.result, st.last_error = "offline", "no uplink.url configured: buffering only"
            return st
        try:
            if self._uplink is None:
                self._uplink = Uplink(self.config, self.gateway_id)
        except ConfigError as exc:
            st.result = "config_error"
            st.last_error = "; ".join(str(p) for p in exc.problems) or str(exc)
            st.next_retry_at = time.time() + AUTH_RETRY_S
            log.error("uplink not usable: %s", st.last_error)
            return st
        sent = 0
        while max_batches is None or sent < max_batches:
            batch = self.store.pending(self.config.batch_size)
            if not batch:
                break
            try:
                self._deliver(batch)
            except SyncError as exc:
                self._failed(exc)
                return st
            except Exception as exc:  # noqa: BLE001 - e.g. the store; retried like a network error
                log.exception("sync pass failed")
                self._failed(SyncTransient(f"{type(exc).__name__}: {exc}"))
                return st
            sent += 1
        st.result = "ok" if sent else "idle"
        st.failures, st.next_retry_at, st.last_error, st.last_status = 0, None, None, None
        st.last_success_at = time.time()
        return st

    def _deliver(self, batch: list[tuple[int, str, str]]) -> None:
        assert self._uplink is not None
        try:
            self._uplink.send(self.store.stream_id, batch)
        except SyncRejected as exc:
            self._set_aside(batch, str(exc), exc.status)
            return
        except SyncError as exc:
            if exc.status != 413:
                raise
            if len(batch) == 1:
                self._set_aside(batch, str(exc), 413)
                return
            mid = len(batch) // 2
            log.info("batch of %d too large for the server: splitting", len(batch))
            self._deliver(batch[:mid])
            self._deliver(batch[mid:])
            return
        self.store.ack(seq for seq, _, _ in batch)
        self.state.acked_total += len(batch)

    def _set_aside(self, batch: list[tuple[int, str, str]], reason: str, status: int | None) -> None:
        seqs = [seq for seq, _, _ in batch]
        self.store.set_aside(seqs, reason)
        self.state.set_aside_total += len(seqs)
        log.error("batch %d-%d (%d records) set aside: %s", seqs[0], seqs[-1], len(seqs), reason)
        clock = self.clock
        self.store.append([{
            "type": "event", "event": "batch_set_aside", "ts": clock.now(),
            "time_quality": "synced" if clock.synced() else "unsynced", "mono_ns": clock.mono_ns(),
            "boot_id": boot_id(),
            "details": {"first_seq": seqs[0], "last_seq": seqs[-1], "count": len(seqs), "status": status,
                        "reason": reason[:500], "kept_locally": True},
        }])

    def _failed(self, exc: SyncError) -> None:
        st = self.state
        st.failures += 1
        st.last_error = str(exc)
        st.last_status = exc.status
        if isinstance(exc, AuthRefused):
            st.result = "auth_refused"
            delay = AUTH_RETRY_S
        else:
            st.result = "transient"
            cap = min(self.config.backoff_cap_s, self.config.backoff_base_s * 2 ** min(st.failures - 1, 30))
            delay = self._rng.uniform(0, cap)
            if exc.retry_after is not None:
                delay = max(delay, exc.retry_after)
        st.next_retry_at = time.time() + delay
        log.warning("sync failed (%s); next try in %.1f s", exc, delay)

    def reset_uplink(self) -> None:
        """The uplink config changed: the next pass builds a new session (never waits for a
        pass in progress, which may be draining a long backlog)."""
        self._reset = True
        self.state.next_retry_at = None

    def retry_now(self) -> None:
        """Forget the backoff (``coldgate sync --now``)."""
        self.state.next_retry_at = None
