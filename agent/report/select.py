"""Which records are a shipment's: the chained range from its start to its stop.

The report and the export take *every* record between ``shipment_started`` and
``shipment_stopped`` (inclusive) of the stream, not only the shipment's readings: the
hash chain runs through all of them, so only the whole range can be verified, and the
gateway's own events in it (data loss, clock steps, restarts) belong in the report.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.exc import ReportError
from agent.protocol import is_checkpoint


@dataclass
class Selection:
    """A shipment's records as chained, with where they came from."""

    shipment: str
    stream: str
    records: list[dict[str, Any]]  # ascending by seq, the whole range (gaps show as missing seqs)
    started: dict[str, Any]  # the shipment_started record
    stopped: dict[str, Any] | None  # the shipment_stopped record, None while in progress
    #: the records after the range up to the signed chain_checkpoint that seals it (the
    #: agent appends one when a shipment ends), empty when none is known yet
    seal: list[dict[str, Any]] = field(default_factory=list)

    @property
    def first_seq(self) -> int:
        return int(self.records[0]["seq"])

    @property
    def last_seq(self) -> int:
        return int(self.records[-1]["seq"])


def seals(rec: Mapping[str, Any], last_seq: int) -> bool:
    """Whether ``rec`` is a chain_checkpoint whose head is at or after ``last_seq``."""
    d = rec.get("details")
    return is_checkpoint(rec) and isinstance(d, dict) and type(d.get("head_seq")) is int and d["head_seq"] >= last_seq


def seal_of(after: Iterable[Mapping[str, Any]], last_seq: int) -> list[dict[str, Any]]:
    """The records of ``after`` (ascending, following the range) up to the first checkpoint
    that seals ``last_seq``; empty if none does (records missing between count as none)."""
    out: list[dict[str, Any]] = []
    expect = last_seq + 1
    for rec in after:
        if int(rec["seq"]) != expect:
            return []
        out.append(dict(rec))
        if seals(rec, last_seq):
            return out
        expect += 1
    return []


def _is(rec: Mapping[str, Any], event: str, shipment: str) -> bool:
    return (rec.get("type") == "event" and rec.get("event") == event
            and isinstance(rec.get("details"), dict) and rec["details"].get("shipment") == shipment)


def find_bounds(events: Iterable[Mapping[str, Any]], shipment: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The start and stop events of ``shipment`` among ``events``. ReportError if not started."""
    started = stopped = None
    for rec in events:
        if started is None and _is(rec, "shipment_started", shipment):
            started = dict(rec)
        elif started is not None and rec.get("stream") == started.get("stream") and _is(rec, "shipment_stopped",
                                                                                          shipment):
            stopped = dict(rec)
            break
    if started is None:
        raise ReportError(f"no shipment {shipment!r} in these records (no shipment_started event for it)")
    return started, stopped


def select(records: Iterable[Mapping[str, Any]], shipment: str) -> Selection:
    """The range of ``shipment`` in ``records`` (one stream's, any order, possibly with gaps)."""
    recs = sorted((dict(r) for r in records), key=lambda r: (str(r.get("stream")), int(r["seq"])))
    started, stopped = find_bounds(recs, shipment)
    stream = started["stream"]
    lo = int(started["seq"])
    hi = int(stopped["seq"]) if stopped else None
    rng = [r for r in recs if r.get("stream") == stream and lo <= int(r["seq"]) and (hi is None or int(r["seq"]) <= hi)]
    seal = [] if hi is None else seal_of((r for r in recs if r.get("stream") == stream and int(r["seq"]) > hi), hi)
    return Selection(shipment, stream, rng, started, stopped, seal)


def shipments_in(events: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every shipment started in ``events``: id, stream, start and stop seq (for listings and errors)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for rec in events:
        if rec.get("type") != "event" or not isinstance(rec.get("details"), dict):
            continue
        sid = rec["details"].get("shipment")
        if rec.get("event") == "shipment_started":
            out[(str(rec.get("stream")), str(sid))] = {"shipment": sid, "stream": rec.get("stream"),
                                                       "started_seq": rec["seq"], "stopped_seq": None,
                                                       "started_at": rec.get("ts")}
        elif rec.get("event") == "shipment_stopped" and (str(rec.get("stream")), str(sid)) in out:
            out[(str(rec.get("stream")), str(sid))]["stopped_seq"] = rec["seq"]
    return list(out.values())
