"""The reference receiver: the server side of PROTOCOL.md (``docs/protocol.md``).

**A reference, not a production service.** It shows what a central service must do with a
fleet's batches and lets the agent's tests, demo and field drills run against something
real: idempotent storage, hash-chain verification, and a report of counts, gaps and chain
breaks per stream. It has no TLS, no rate limiting, one SQLite file and one process; put a
real service (or this one behind a TLS proxy, for a bench) in front of a fleet.

Use::

    receiver = Receiver("rx.db", token="s3cret")
    server = receiver.make_server("127.0.0.1", 0)     # port 0: any free port
    threading.Thread(target=server.serve_forever).start()
    ...                                                # POST /v1/batches
    receiver.report()                                  # or GET /v1/report
    server.shutdown(); server.server_close(); receiver.close()

or ``coldgate receiver --port 8080 --db rx.db`` (``coldgate receiver report --db rx.db``).

What it does with ``POST /v1/batches``: checks the Bearer token if one is configured
(401 none, 403 wrong); accepts gzip or plain bodies up to ``max_body`` bytes decompressed
(413 beyond, decompression stops at the limit); 400 for a body that is not gzip/UTF-8/JSON;
422 for one that is not a version-1 batch (every problem listed), including records not
strictly ascending by ``seq``, more than one stream, or an ``Idempotency-Key`` that is not
``<gateway_id>:<stream>:<first seq>-<last seq>`` of the records. Then, in one SQLite
transaction committed before the response: each record is stored on
``(gateway_id, stream, seq)``; a re-send with the same ``hash`` is a *duplicate*
(counted); one with a different ``hash`` is a *conflict*, kept aside and reported, never
written over the first. The answer is ``200 {"stored": n, "duplicates": m, "conflicts": k}``
(``conflicts`` is an addition to the protocol's body; all three add up to the batch).
A record whose hash does not verify is stored all the same, and reported: refusing it
would hide the evidence.

The report
----------
``report()`` / ``GET /v1/report[?gateway_id=ID]`` / ``coldgate receiver report --json``::

    {
      "generated_at": "2026-11-23T08:15:02.125Z",   # when the report was made (UTC)
      "db": "rx.db",                                  # the receiver database it was made from
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
``missing``
    the number of seqs in ``gaps``.
``chain_breaks``
    ``[{"seq": s, "why": ..., "detail": ...}]``; ``why`` is ``"bad hash"`` (the record's
    ``hash`` is not the SHA-256 of its ``prev_hash`` and canonical content: the record was
    altered) or ``"prev_hash mismatch"`` (its ``prev_hash`` is not the stored hash of seq
    ``s - 1``, or seq 1 does not start from 64 zeros: a record before it was altered,
    removed and renumbered, or reordered). A link is checked when both of its ends are
    stored, whichever arrived first; a link into a gap cannot be checked (the gap says so).
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
    ``"complete-and-verified"`` when there are records, no gaps, no chain breaks and no
    conflicts; otherwise ``"not-verified"`` with the reasons as sentences. "Complete"
    means complete up to the highest seq known (see ``gaps``).

Fault injection (``allow_faults=True`` only) is described in :mod:`agent.receiver.faults`.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

from agent.canonical import canonical, record_hash
from agent.receiver.faults import Fault, FaultPlan
from agent.receiver.report import NOT_VERIFIED, VERIFIED, build_report, render_text
from agent.receiver.store import ReceiverError, ReceiverStore
from agent.receiver.validate import Batch

__all__ = [
    "DEFAULT_MAX_BODY",
    "NOT_VERIFIED",
    "VERIFIED",
    "Fault",
    "FaultPlan",
    "Receiver",
    "ReceiverError",
    "render_text",
]

DEFAULT_MAX_BODY = 8 << 20  # 8 MiB, decompressed

log = logging.getLogger("agent.receiver")


def _canonical_and_verified(record: Mapping[str, Any]) -> tuple[str, bool]:
    """The record without ``hash`` as canonical JSON (what the hash covers), and whether its hash matches."""
    body = {k: v for k, v in record.items() if k != "hash"}
    try:
        canon = canonical(body)
    except (TypeError, ValueError, OverflowError):  # content with no canonical form cannot verify
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False), False
    return canon.decode("utf-8"), record_hash(record["prev_hash"], canon) == record["hash"]


class Receiver:
    """The reference receiver: a database, an optional token, optional faults.

    Thread-safe: the HTTP server calls it from one thread per connection.
    """

    def __init__(
        self,
        db_path: str | Path,
        *,
        token: str | None = None,
        allow_faults: bool = False,
        faults: Iterable[Mapping[str, Any]] = (),
        max_body: int = DEFAULT_MAX_BODY,
        create: bool = True,
    ) -> None:
        faults = list(faults)
        if faults and not allow_faults:
            raise ValueError("faults given but allow_faults is False")
        self.token = token or None
        self.allow_faults = allow_faults
        self.faults = FaultPlan(faults)
        self.max_body = max_body
        self.store = ReceiverStore(db_path, create=create)

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
        log.info(
            "receiver listening on %s (db %s%s%s)",
            server.url,
            self.store.path,
            ", token required" if self.token else "",
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

    # -- faults -----------------------------------------------------------------------

    def set_faults(self, specs: Iterable[Mapping[str, Any]]) -> None:
        """Replace the fault plan: the next requests misbehave as listed, one each, in order."""
        if not self.allow_faults:
            raise ReceiverError("fault injection is off (allow_faults=False)")
        self.faults.set(specs)

    # -- data -------------------------------------------------------------------------

    def store_batch(self, batch: Batch) -> dict[str, int]:
        """Verify each record's own hash, store the batch idempotently, commit; the counts."""
        checked = [_canonical_and_verified(r) for r in batch.records]
        result = self.store.store_batch(batch.gateway_id, batch.stream, batch.records, checked)
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

    def report(self, gateway_id: str | None = None) -> dict[str, Any]:
        """The report documented in this module's docstring."""
        return build_report(self.store, gateway_id)
