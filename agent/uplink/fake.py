"""An in-memory central side behind the transport seam, shipped for tests and benches.

After httpx's ``MockTransport``: ``FakeTransport()`` behaves as a well-behaved receiver
(stores every record once by ``(stream, seq)``, counts duplicates and conflicts, answers
like the protocol); ``FakeTransport(handler)`` lets the caller decide each answer —
return an :class:`~agent.uplink.base.Answer`, raise a :class:`~agent.exc.SyncError`, or
call :meth:`FakeTransport.store` to store and answer as the default does.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

from agent.uplink.base import Answer, Batch

Handler = Callable[["FakeTransport", Batch], Answer]


class FakeTransport:
    """A transport that keeps what it is sent (thread-safe)."""

    def __init__(self, handler: Handler | None = None) -> None:
        self.handler = handler
        #: every batch sent, in order, whatever the answer
        self.batches: list[Batch] = []
        #: stored records: ``{(stream, seq): (body, hash)}``
        self.stored: dict[tuple[str, int], tuple[str, str]] = {}
        self.duplicates = 0
        self.conflicts = 0
        self.closed = False
        self._lock = threading.RLock()  # wait_for's predicate may read records()
        self._changed = threading.Condition(self._lock)

    def send(self, batch: Batch) -> Answer:
        with self._lock:
            self.batches.append(batch)
        if self.handler is not None:
            return self.handler(self, batch)
        return self.store(batch)

    def store(self, batch: Batch) -> Answer:
        """Store ``batch`` idempotently and answer as the protocol says."""
        stored = dups = conflicts = 0
        with self._changed:
            for seq, body, h in batch.records:
                key = (batch.stream, seq)
                have = self.stored.get(key)
                if have is None:
                    self.stored[key] = (body, h)
                    stored += 1
                elif have[1] == h:
                    dups += 1
                else:
                    conflicts += 1
            self.duplicates += dups
            self.conflicts += conflicts
            self._changed.notify_all()
        return Answer(stored, dups, conflicts)

    def records(self, stream: str | None = None) -> list[dict[str, Any]]:
        """The stored records as sent (with ``hash``), ascending by seq."""
        with self._lock:
            items = sorted(self.stored.items(), key=lambda kv: kv[0][1])
        out = []
        for (s, _), (body, h) in items:
            if stream is None or s == stream:
                rec = json.loads(body)
                rec["hash"] = h
                out.append(rec)
        return out

    def wait_for(self, predicate: Callable[[FakeTransport], bool], timeout: float = 10.0) -> bool:
        """Block until ``predicate(self)`` holds (woken by every stored batch); its last value."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self), timeout)

    def close(self) -> None:
        self.closed = True
