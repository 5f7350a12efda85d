"""The reference receiver: the server side of the uplink protocol (``docs/protocol.md``).

**A reference, not a production service** — but one that holds under a fleet's load on
PostgreSQL. It shows what a central service must do with a fleet's batches and lets the
agent's tests, demo and field drills run against something real: per-gateway
credentials, idempotent storage, hash-chain and checkpoint verification, and a report of
counts, gaps and chain breaks per stream. It serves HTTP, or HTTPS with ``tls`` (mutual
TLS: a client certificate names its gateway); it has no rate limiting.

Use::

    receiver = Receiver("rx.db", token="s3cret")       # or "postgresql://…", gateways="gateways.toml"
    server = receiver.make_server("127.0.0.1", 0)     # port 0: any free port
    threading.Thread(target=server.serve_forever).start()
    ...                                                # POST /v1/batches
    receiver.report()                                  # or GET /v1/report
    server.shutdown(); server.server_close(); receiver.close()

or ``coldgate receiver --port 8080 --db rx.db`` (``coldgate receiver report --db rx.db``,
``coldgate receiver fleet --db rx.db``, ``coldgate receiver export --db rx.db --gateway ID``
for an auditor's copy that ``coldgate verify`` checks). Other front ends (an MQTT consumer) take a body
with :func:`agent.receiver.validate.read_batch` (or a parsed document with
:func:`~agent.receiver.validate.validate_batch`), check who sent it
(:meth:`Receiver.gateway_for_token`, :meth:`Receiver.gateway_for_certificate`; refuse a
batch whose ``gateway_id`` is another's), then :meth:`Receiver.store_batch`, which raises
:class:`StorageUnavailable` when the database cannot take it now (do not acknowledge).

Storage (:mod:`agent.receiver.storage`): a SQLite file (the embedded default) or
PostgreSQL (``--db postgresql://…``, any number of receiver processes on one database).

What it does with ``POST /v1/batches``: checks the Bearer token (401 none, 403 wrong; with
a gateway registry, :mod:`agent.receiver.registry`, also 403 for a batch whose
``gateway_id`` is not the token's); accepts gzip or plain bodies up to ``max_body`` bytes
decompressed (413 beyond; decompression stops at the limit, and a body holding more JSON
values than a batch can is refused before parsing); 400 for a body that is not
gzip/UTF-8/JSON; 422 for one that is not a version-1 batch (every problem listed),
including records not strictly ascending by ``seq``, more than one stream, nesting deeper
than 32, a malformed ``config``, or an ``Idempotency-Key`` that is not
``<gateway_id>:<stream>:<first seq>-<last seq>`` of the records. Then, in one transaction
committed before the response: each record is stored on ``(gateway_id, stream, seq)``; a
re-send with the same ``hash`` is a *duplicate* (counted); one with a different ``hash``
is a *conflict*, kept aside and reported, never written over the first. The answer is
``200 {"stored": n, "duplicates": m, "conflicts": k}`` (all three add up to the batch).
A record whose hash does not verify is stored all the same, and reported: refusing it
would hide the evidence. A database that cannot take the batch is a 503 (the gateway
retries); a slow client is cut off after ``read_timeout`` idle seconds; beyond
``max_connections`` a new connection gets 503 at once.

The report
----------
``report()`` / ``GET /v1/report[?gateway_id=ID]`` / ``coldgate receiver report --json``
(exit 0 only when every stream is verified). Computed when asked, from the stored bytes:
the database re-hashes every record, so an edited row reads *not-verified* whatever was
found on arrival::

    {
      "generated_at": "2026-11-23T08:15:02.125Z",   # when the report was made (UTC)
      "db": "rx.db",                                  # the database it was made from (no password)
      "gateways": {
        "<gateway_id>": {
          "verdict": "complete-and-verified" | "not-verified",   # all streams verified?
          "streams": {
            "<stream id>": { ...per stream, below... }
          }
        }
      }
    }

Per stream:

``records``
    how many distinct records are stored (duplicates and conflicts not included).
``by_type``
    ``{"reading": n, "alarm": n, "event": n}`` (types present only).
``first_seq``, ``last_seq``
    the lowest and highest ``seq`` received.
``first_ts``, ``last_ts``, ``last_received_at``
    the span of the records' own timestamps, and when the latest record arrived here.
``gaps``
    the missing seq ranges, ``[[first, last], ...]`` inclusive: from seq 1 up to
    ``last_seq`` and, when a later stream's ``stream_started`` says this stream ended at
    seq N, up to N. Records after the highest seq received cannot otherwise be known
    to be missing: they may simply not be sent yet.
``gap_details``
    per gap, ``{"first", "last", "explained", "set_aside_by", "reasons"}``: ``explained``
    when the gateway's ``batch_set_aside`` events cover every seq of it (the records are
    held on the gateway, refused by a server, with the reasons given). An explained gap
    is still a gap: the verdict stays not-verified until the records arrive.
``set_aside``
    the gateway's ``batch_set_aside`` events: ``[{"event_seq", "first_seq", "last_seq",
    "count", "status", "reason"}]``.
``missing``
    the number of seqs in ``gaps``.
``chain_breaks``
    ``[{"seq": s, "why": ..., "detail": ...}]``; ``why`` is ``"bad hash"`` (the stored
    ``hash`` is not the SHA-256 of its ``prev_hash`` and stored canonical content: the
    record was altered, in transit or in the database) or ``"prev_hash mismatch"`` (its
    ``prev_hash`` is not the stored hash of seq ``s - 1``, or seq 1 does not start from 64
    zeros: a record before it was altered, removed and renumbered, or reordered). A link
    is judged when both of its ends are stored, whichever arrived first; a link into a gap
    cannot be judged (the gap says so).
``checkpoints``
    ``{"count", "checked", "verified", "last_verified", "bad", "pending"}``: the stream's
    ``chain_checkpoint`` events, verified against the gateway's registered Ed25519 key
    (``checked`` is false without one). ``last_verified`` is ``{"seq", "head_seq",
    "head_hash", "key_id", "covers": [1, head_seq], "ts"}``: records 1..head_seq are
    exactly what the gateway signed. ``bad`` (``[{"seq", "why"}]``: a bad signature, a
    key that is not the registered one, a ``head_hash`` that is not the stored hash of
    ``head_seq``) makes the stream not-verified; ``pending`` are checkpoints whose
    ``head_seq`` has not arrived.
``conflicts``
    ``[{"seq", "stored_hash", "received_hash", "times", "first_received_at",
    "last_received_at"}]``: a record re-sent with the same key but different content.
    The stored (first) version is the one in ``records``.
``duplicates``
    how many identical re-sends were received (normal: delivery is at-least-once).
``stream_started``
    ``null``, or from the stream's ``stream_started`` event: ``{"seq", "previous_stream",
    "previous_last_seq", "reason", "details"}`` (``previous_stream`` and
    ``previous_last_seq`` are read from the event's details; ``null`` where not known).
``continued_by``
    the stream whose ``stream_started`` names this one as its predecessor, if received.
``time_quality``
    ``{"synced": n, "unsynced": n, "corrected": n}`` (values present only).
``verdict``, ``verdict_reasons``
    ``"complete-and-verified"`` when there are records, no gaps, no chain breaks, no
    conflicts and no checkpoint that fails; otherwise ``"not-verified"`` with the reasons
    as sentences. "Complete" means complete up to the highest seq known (see ``gaps``).

The fleet view
--------------
``fleet()`` / ``GET /v1/fleet`` / ``coldgate receiver fleet [--json]``: per gateway,
``config`` (the ``{"version", "sha256", "signer"}`` its latest batch carried),
``config_reported_at``, ``last_batch_at``, ``batches``, ``verdict`` and per-stream
verdicts (as in the report), and ``active_alarms`` (alarms whose latest record is
``raised``: not cleared, not acknowledged). Gateways of the registry that never sent a
batch are listed with ``"verdict": "no records"``.

Fault injection (``allow_faults=True`` only) is described in :mod:`agent.receiver.faults`.
"""

from __future__ import annotations

import json
import logging
import signal
import ssl
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

from agent.protocol import Uncanonical, canonical, canonical_stdlib, record_hash
from agent.receiver.backends import open_storage
from agent.receiver.faults import Fault, FaultPlan
from agent.receiver.registry import Registry
from agent.receiver.report import NOT_VERIFIED, VERIFIED, build_fleet, build_report, render_fleet, render_text
from agent.receiver.storage import ReceiverError, Storage, StorageUnavailable
from agent.receiver.validate import Batch

__all__ = [
    "ANY_GATEWAY",
    "DEFAULT_MAX_BODY",
    "NOT_VERIFIED",
    "VERIFIED",
    "Batch",
    "Fault",
    "FaultPlan",
    "Receiver",
    "ReceiverError",
    "Registry",
    "StorageUnavailable",
    "render_fleet",
    "render_text",
]

DEFAULT_MAX_BODY = 8 << 20  # 8 MiB, decompressed
DEFAULT_READ_TIMEOUT = 30.0
DEFAULT_MAX_CONNECTIONS = 64
#: what :meth:`Receiver.gateway_for_token` returns for the single shared ``token`` (demo, tests)
ANY_GATEWAY = "*"

log = logging.getLogger("agent.receiver")


def _canonical_and_verified(record: Mapping[str, Any]) -> tuple[str, bool]:
    """The record without ``hash`` as canonical JSON (what the hash covers), and whether its hash matches."""
    body = dict(record)
    del body["hash"]
    fast = canonical_stdlib(body)  # the standard library's encoder, never the producer's fast path
    if fast is not None and record_hash(record["prev_hash"], fast) == record["hash"]:
        return fast.decode("utf-8"), True
    try:
        canon = canonical(body)  # rfc8785 itself, for everything else and to confirm a mismatch
    except Uncanonical:  # content with no canonical form (a lone surrogate, 2**60…) cannot verify
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True), False
    return canon.decode("utf-8"), record_hash(record["prev_hash"], canon) == record["hash"]


class Receiver:
    """The reference receiver: a database, credentials, optional faults.

    Thread-safe: the HTTP server calls it from one thread per connection, and any number
    of processes may share one PostgreSQL database.

    ``db`` is a SQLite file or a ``postgresql://`` URL. Credentials: ``token`` (one token
    for every gateway: the demo and tests) or ``gateways`` (a registry file or
    :class:`Registry`: a token per gateway and its checkpoint key), or neither (open).
    """

    def __init__(
        self,
        db: str | Path,
        *,
        token: str | None = None,
        gateways: str | Path | Registry | None = None,
        allow_faults: bool = False,
        faults: Iterable[Mapping[str, Any]] = (),
        max_body: int = DEFAULT_MAX_BODY,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        tls: ssl.SSLContext | None = None,
        create: bool = True,
    ) -> None:
        faults = list(faults)
        if faults and not allow_faults:
            raise ValueError("faults given but allow_faults is False")
        if token and gateways is not None:
            raise ReceiverError("give a shared token or a gateway registry, not both")
        self.token = token or None
        self.registry = Registry.load(gateways) if isinstance(gateways, (str, Path)) else gateways
        self.allow_faults = allow_faults
        self.faults = FaultPlan(faults)
        self.max_body = max_body
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        self.tls = tls
        self.store: Storage = open_storage(db, create=create)

    # -- lifecycle --------------------------------------------------------------------

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def make_server(self, host: str = "127.0.0.1", port: int = 0) -> Any:
        """A :class:`ReceiverHTTPServer` bound to ``host:port`` (0: any free port), not yet serving."""
        from agent.receiver.server import ReceiverHTTPServer

        return ReceiverHTTPServer((host, port), self)

    def serve_forever(self, host: str = "127.0.0.1", port: int = 8080) -> None:
        """Serve until SIGTERM or SIGINT (or :class:`KeyboardInterrupt`), then close cleanly."""
        server = self.make_server(host, port)
        stop = threading.Event()
        previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():

            def on_signal(signum: int, frame: FrameType | None) -> None:
                log.info("receiver: %s, stopping", signal.Signals(signum).name)
                stop.set()

            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, on_signal)
        thread = threading.Thread(target=server.serve_forever, args=(0.1,), name="receiver-http", daemon=True)
        thread.start()
        auth = ", token required" if self.token else ""
        if self.registry is not None:
            auth = f", {len(self.registry.gateways)} gateway(s) registered"
        log.info(
            "receiver listening on %s (db %s%s%s)",
            server.url,
            self.store.path,
            auth,
            ", faults allowed" if self.allow_faults else "",
        )
        try:
            stop.wait()
        finally:
            server.shutdown()
            server.server_close()
            thread.join()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            log.info("receiver stopped")

    # -- credentials ------------------------------------------------------------------

    @property
    def open(self) -> bool:
        """True when no credentials are required at all."""
        return self.token is None and self.registry is None

    def gateway_for_token(self, token: str) -> str | None:
        """Whose token this is: a gateway id, :data:`ANY_GATEWAY` for the shared token, or None (refused).

        A front end refuses (403) a batch whose ``gateway_id`` is neither this nor ANY_GATEWAY.
        """
        import hmac

        if self.registry is not None:
            return self.registry.gateway_for(token)
        if self.token is not None and hmac.compare_digest(token.encode(), self.token.encode()):
            return ANY_GATEWAY
        return None

    def gateway_for_certificate(self, common_name: str) -> str | None:
        """The gateway whose registry entry names this verified client certificate's common name, or None."""
        return self.registry.gateway_for_cn(common_name) if self.registry is not None else None

    def public_key(self, gateway_id: str) -> bytes | None:
        """The gateway's registered checkpoint key, if any."""
        return self.registry.public_key(gateway_id) if self.registry is not None else None

    # -- faults -----------------------------------------------------------------------

    def set_faults(self, specs: Iterable[Mapping[str, Any]]) -> None:
        """Replace the fault plan: the next requests misbehave as listed, one each, in order."""
        if not self.allow_faults:
            raise ReceiverError("fault injection is off (allow_faults=False)")
        self.faults.set(specs)

    # -- data -------------------------------------------------------------------------

    def store_batch(self, batch: Batch) -> dict[str, int]:
        """Verify each record's own hash, store the batch idempotently, commit; the counts.

        Raises :class:`StorageUnavailable` when the database cannot take it now (retry later).
        """
        checked = [_canonical_and_verified(r) for r in batch.records]
        result = self.store.store_batch(
            batch.gateway_id, batch.stream, batch.records, checked, config=batch.config, sent_at=batch.sent_at
        )
        # DEBUG: a draining fleet sends thousands of batches; -v shows them.
        log.debug(
            "receiver: %s %s seq %d-%d: stored %d, duplicates %d, conflicts %d",
            batch.gateway_id,
            batch.stream,
            batch.first_seq,
            batch.last_seq,
            result["stored"],
            result["duplicates"],
            result["conflicts"],
        )
        bad = [r["seq"] for r, (_, good) in zip(batch.records, checked, strict=True) if not good]
        if bad:
            log.warning("receiver: %s %s: hash does not verify at seq %s", batch.gateway_id, batch.stream, bad[:10])
        if result["conflicts"]:
            log.warning(
                "receiver: %s %s: %d conflicting re-send(s) kept aside",
                batch.gateway_id,
                batch.stream,
                result["conflicts"],
            )
        return result

    def records(self, gateway_id: str | None = None, stream: str | None = None) -> list[dict[str, Any]]:
        """Stored records as received, ascending by seq (within gateway and stream).

        The same JSON values as sent; keys come back in canonical order, and a float with an
        integral value (``25.0``) as the integer JSON writes it as (``25``), which compares equal.
        """
        return self.store.records(gateway_id, stream)

    def export(self, gateway_id: str, stream: str | None = None) -> Iterator[str]:
        """The gateway's records as JSON lines exactly as chained (for ``coldgate verify``, or an auditor)."""
        return self.store.export_lines(gateway_id, stream)

    def report(self, gateway_id: str | None = None) -> dict[str, Any]:
        """The report documented in this module's docstring, re-verified now from the stored bytes."""
        return build_report(self.store, gateway_id, self.public_key)

    def fleet(self) -> dict[str, Any]:
        """The fleet view documented in this module's docstring."""
        known = list(self.registry.gateways) if self.registry is not None else []
        return build_fleet(self.store, known, self.public_key)
