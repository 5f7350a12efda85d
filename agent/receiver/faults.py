"""Fault injection for tests and field drills: how the next batch requests go wrong.

A :class:`FaultPlan` is a queue. Each ``POST /v1/batches`` takes the next fault, in
order, and gets exactly that behaviour; when the queue is empty requests are served
normally. Only the batch endpoint consumes faults (health, report and ``/v1/_faults``
never do). A fault is a JSON object; the keys (combinable where it makes sense):

``{"status": 500}``
    answer with that status and a JSON error body; nothing is stored. Any 4xx/5xx is
    allowed (400, 401, 403, 408, 422, 500, 503, …).
``{"status": 429, "retry_after": 2}``
    also send ``Retry-After: 2``. A string is sent verbatim (an HTTP date, say); with
    ``"http_date": true`` a number of seconds is sent as the HTTP date that far ahead.
``{"delay_s": 5}``
    wait that long *before* processing, then process normally (the batch is stored even
    when the client has given up waiting: its resend is then a duplicate). Combines with
    the others: ``{"delay_s": 1, "status": 503}``.
``{"reset": true}``
    read the request, store nothing, and close the connection without a response (a TCP
    reset).
``{"drop_response": true}``
    store the batch durably, then close the connection without responding: the response
    is lost.
``{"exit_after_store": true}``
    store the batch durably, then the receiver process exits at once (status 70), before
    answering: a receiver killed between its commit and its answer (for drills with a
    supervisor that restarts it; the MQTT consumer and the HTTP server both honour it).
``"times": n``
    repeat this fault for the next ``n`` requests (default 1).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

_KEYS = {"status", "retry_after", "http_date", "delay_s", "reset", "drop_response", "exit_after_store", "times"}


@dataclass(frozen=True)
class Fault:
    """One request's misbehaviour. See the module docstring for the meaning of each field."""

    status: int | None = None
    retry_after: float | str | None = None
    http_date: bool = False
    delay_s: float = 0.0
    reset: bool = False
    drop_response: bool = False
    exit_after_store: bool = False

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> list[Fault]:
        """The faults ``spec`` stands for (``times`` copies), or ``ValueError`` saying what is wrong."""
        if not isinstance(spec, Mapping):
            raise ValueError(f"a fault is a JSON object, not {spec!r}")
        unknown = set(spec) - _KEYS
        if unknown:
            raise ValueError(f"unknown fault key(s) {sorted(unknown)}; known: {sorted(_KEYS)}")
        status = spec.get("status")
        if status is not None and (type(status) is not int or not 400 <= status <= 599):
            raise ValueError(f"fault status must be an integer 400..599, not {status!r}")
        retry_after = spec.get("retry_after")
        if retry_after is not None and (
            isinstance(retry_after, bool) or not isinstance(retry_after, (int, float, str))
        ):
            raise ValueError(f"retry_after must be seconds or an HTTP date string, not {retry_after!r}")
        delay = spec.get("delay_s", 0)
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or delay < 0:
            raise ValueError(f"delay_s must be a number >= 0, not {delay!r}")
        times = spec.get("times", 1)
        if type(times) is not int or times < 1:
            raise ValueError(f"times must be an integer >= 1, not {times!r}")
        fault = cls(
            status=status,
            retry_after=retry_after,
            http_date=bool(spec.get("http_date", False)),
            delay_s=float(delay),
            reset=bool(spec.get("reset", False)),
            drop_response=bool(spec.get("drop_response", False)),
            exit_after_store=bool(spec.get("exit_after_store", False)),
        )
        if sum([fault.status is not None, fault.reset, fault.drop_response, fault.exit_after_store]) > 1:
            raise ValueError("a fault has at most one of status, reset, drop_response, exit_after_store")
        if fault.retry_after is not None and fault.status is None:
            raise ValueError("retry_after needs a status (429 or 503, usually)")
        if fault == cls():
            raise ValueError("an empty fault does nothing; give status, delay_s, reset, drop_response or exit_after_store")
        return [fault] * times

    def retry_after_header(self) -> str | None:
        """The ``Retry-After`` value to send, if any."""
        if self.retry_after is None:
            return None
        if isinstance(self.retry_after, str):
            return self.retry_after
        if self.http_date:
            return formatdate(time.time() + self.retry_after, usegmt=True)
        return str(int(self.retry_after)) if float(self.retry_after).is_integer() else str(self.retry_after)

    def describe(self) -> dict[str, Any]:
        """The fault as JSON, without its defaults."""
        return {k: v for k, v in vars(self).items() if v not in (None, False, 0.0)}


class FaultPlan:
    """A thread-safe queue of :class:`Fault`: one per batch request, in order."""

    def __init__(self, specs: Iterable[Mapping[str, Any]] = ()) -> None:
        self._lock = threading.Lock()
        self._queue: deque[Fault] = deque(self._parse_all(specs))

    @staticmethod
    def _parse_all(specs: Iterable[Mapping[str, Any]]) -> list[Fault]:
        if isinstance(specs, Mapping) or isinstance(specs, (str, bytes)):
            raise ValueError("faults are a list of fault objects")
        out: list[Fault] = []
        for spec in specs:
            out.extend(Fault.parse(spec))
        return out

    def set(self, specs: Iterable[Mapping[str, Any]]) -> None:
        """Replace the whole plan (all specs are checked before anything changes)."""
        faults = self._parse_all(specs)
        with self._lock:
            self._queue = deque(faults)

    def extend(self, specs: Iterable[Mapping[str, Any]]) -> None:
        """Append faults after those still pending."""
        faults = self._parse_all(specs)
        with self._lock:
            self._queue.extend(faults)

    def next(self) -> Fault | None:
        """Take the fault for this request, or None to serve it normally."""
        with self._lock:
            return self._queue.popleft() if self._queue else None

    def pending(self) -> list[dict[str, Any]]:
        """The faults still to come, as JSON."""
        with self._lock:
            return [f.describe() for f in self._queue]

    def __len__(self) -> int:
        with self._lock:
            return len(self._queue)
