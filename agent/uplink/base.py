"""The uplink's one seam: a transport sends one batch and returns the server's answer.

After httpx's ``BaseTransport.handle_request``: everything the agent knows about batches,
backoff and the store lives in :mod:`agent.uplink.loop`; a transport only moves one batch
to the central side and translates what comes back, in one place, into an
:class:`Answer` or one of the :class:`~agent.exc.SyncError` subclasses::

    Answer            the central side durably stored the batch (duplicates included)
    SyncRejected      400/422: malformed for this server; the batch is set aside
    SyncTooLarge      413: the loop splits the batch and retries each half
    AuthRefused       401/403: credentials refused; retried slowly
    SyncTransient     408/429/5xx, network errors, timeouts, an answer that is not the
                      protocol's: retried with backoff (``retry_after`` honoured, capped)

Transports: :class:`agent.uplink.http.HttpTransport` (the default, ``POST /v1/batches``),
:class:`agent.uplink.fake.FakeTransport` (in memory, shipped for tests and benches), and
others (MQTT) behind the same method. A transport is used from one thread at a time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

#: One record as the store holds it: ``(seq, canonical body without "hash", hash)``. The
#: body is the exact JCS text the hash covers; a transport splices ``"hash"`` in and never
#: re-serialises it.
StoredRecord = tuple[int, str, str]


@dataclass(frozen=True)
class Batch:
    """Records of one stream, ascending by seq, named by their first and last seq."""

    gateway_id: str
    stream: str
    records: Sequence[StoredRecord]
    #: what the gateway runs (``{"version", "sha256", "signer"}``), sent with every batch
    #: so the central side knows each gateway's config; None before the fleet part sets it
    config: Mapping[str, Any] | None = None

    @property
    def first(self) -> int:
        return self.records[0][0]

    @property
    def last(self) -> int:
        return self.records[-1][0]

    @property
    def key(self) -> str:
        """The Idempotency-Key: ``<gateway_id>:<stream>:<first>-<last>`` (docs/protocol.md)."""
        from agent.protocol import idempotency_key

        return idempotency_key(self.gateway_id, self.stream, self.first, self.last)

    def __len__(self) -> int:
        return len(self.records)

    def split(self) -> tuple[Batch, Batch]:
        """Two halves (for a 413); each is again named by its own first and last seq."""
        mid = len(self.records) // 2
        return (Batch(self.gateway_id, self.stream, self.records[:mid], self.config),
                Batch(self.gateway_id, self.stream, self.records[mid:], self.config))


@dataclass(frozen=True)
class Answer:
    """The central side's answer to a stored batch: every record is durably stored."""

    stored: int
    duplicates: int
    conflicts: int = 0
    #: anything else the server said (kept for status and logs)
    extra: Mapping[str, Any] = field(default_factory=dict)


class Transport(Protocol):
    """Moves one batch to the central side. See the module docstring for the answers."""

    def send(self, batch: Batch) -> Answer:
        """Send ``batch``; return the answer once the central side stored it, else raise."""
        ...

    def close(self) -> None:
        """Release connections. Must not raise."""
        ...
