"""Completeness and integrity of a shipment's range: gaps, the hash chain, time quality.

Each record's ``hash`` is recomputed from its content (RFC 8785) and each ``prev_hash`` is
checked against the record before it, where both are present. A gap (a missing seq)
cannot be verified across and is reported as such. The *anchor* is the ``prev_hash`` of
the first record of the range: it ties the range to the rest of the stream, which the
gateway or the receiver holds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from agent.protocol import verify_record

VERIFIED = "complete-and-verified"
NOT_VERIFIED = "not-verified"


def _hash_ok(rec: dict[str, Any]) -> bool:
    # through agent.protocol (rfc8785 itself), never the producer's fast path: the report
    # judges the records, it does not trust the code that made them
    return verify_record(rec)


def verification_payload(*, gateway: str, stream: str, first_seq: int, last_seq: int, count: int, anchor: str,
                         head: str, shipment: str) -> str:
    """The compact text of the QR code: enough to find the range and check its head hash."""
    return (f"coldgate-verify/1;shipment={shipment};gateway={gateway};stream={stream};"
            f"seq={first_seq}-{last_seq};records={count};anchor={anchor};head={head}")


def check(records: Sequence[dict[str, Any]], *, gateway: str, shipment: str) -> dict[str, Any]:
    """The integrity section of the report for one stream's range (ascending by seq)."""
    if not records:
        return {"verdict": NOT_VERIFIED, "reasons": ["no records"], "records": 0}
    stream = str(records[0].get("stream"))
    first, last = int(records[0]["seq"]), int(records[-1]["seq"])
    gaps: list[list[int]] = []
    breaks: list[dict[str, Any]] = []
    prev: dict[str, Any] | None = None
    for rec in records:
        seq = int(rec["seq"])
        if not _hash_ok(rec):
            breaks.append({"seq": seq, "why": "bad hash", "detail": "hash does not match the record's content"})
        if prev is not None:
            pseq = int(prev["seq"])
            if seq > pseq + 1:
                gaps.append([pseq + 1, seq - 1])
            elif rec.get("prev_hash") != prev.get("hash"):
                breaks.append({"seq": seq, "why": "prev_hash mismatch",
                               "detail": f"prev_hash is not the hash of seq {pseq}"})
        prev = rec
    tq = Counter(str(r.get("time_quality")) for r in records)
    by_type = Counter(str(r.get("type")) for r in records)
    clock_steps, losses = [], []
    for r in records:
        if r.get("type") != "event":
            continue
        d: dict[str, Any] = r["details"] if isinstance(r.get("details"), dict) else {}
        if r.get("event") == "clock_step":
            clock_steps.append({"seq": r["seq"], "ts": r["ts"], "offset_s": d.get("offset_s"),
                                "synced": d.get("synced"), "corrections": d.get("corrections") or []})
        elif r.get("event") == "data_loss":
            losses.append({"seq": r["seq"], "ts": r["ts"], "reason": d.get("reason"), "what": d.get("what"),
                           "count": d.get("count"), "sensors": d.get("sensors"), "from": d.get("from"),
                           "to": d.get("to")})
    reasons = []
    missing = sum(b - a + 1 for a, b in gaps)
    if gaps:
        reasons.append(f"{len(gaps)} gap(s) in the record: {missing} record(s) missing "
                       f"(seq {', '.join(f'{a}' if a == b else f'{a}-{b}' for a, b in gaps)})")
    if breaks:
        reasons.append(f"{len(breaks)} chain break(s) (seq {', '.join(str(b['seq']) for b in breaks[:10])})")
    if losses:
        reasons.append(f"{len(losses)} data-loss event(s) during the shipment")
    anchor, head = str(records[0].get("prev_hash")), str(records[-1].get("hash"))
    return {
        "stream": stream, "first_seq": first, "last_seq": last, "records": len(records), "by_type": dict(by_type),
        "gaps": gaps, "missing": missing, "chain_breaks": breaks, "time_quality": dict(tq),
        "clock_steps": clock_steps, "data_loss": losses, "anchor_prev_hash": anchor, "head_hash": head,
        "verdict": NOT_VERIFIED if reasons else VERIFIED, "reasons": reasons,
        "verification": verification_payload(gateway=gateway, stream=stream, first_seq=first, last_seq=last,
                                             count=len(records), anchor=anchor, head=head, shipment=shipment),
    }


def corrections(clock_steps: list[dict[str, Any]]) -> list[tuple[int, int, float]]:
    """``(first_seq, last_seq, offset_s)`` runs to add to unsynced records' ``ts``."""
    out = []
    for step in clock_steps:
        for c in step["corrections"]:
            try:
                out.append((int(c["first_seq"]), int(c["last_seq"]), float(c["offset_s"])))
            except (KeyError, TypeError, ValueError):
                continue
    return out
