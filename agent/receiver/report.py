"""The receiver's report: what arrived, what is missing, and whether it can be trusted.

The fields are documented in :mod:`agent.receiver` (the package docstring), which is the
page a QA person shows an auditor; keep the two in step.
"""

from __future__ import annotations

from typing import Any

from agent.receiver.store import ReceiverStore, now_iso

VERIFIED = "complete-and-verified"
NOT_VERIFIED = "not-verified"

# Keys a stream_started event's details may use for its predecessor (the first is the documented one).
_PREV_STREAM_KEYS = ("previous_stream", "previous_stream_id", "prev_stream")
_PREV_SEQ_KEYS = ("previous_last_seq", "last_seq", "prev_last_seq")


def _first(details: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for k in keys:
        if details.get(k) is not None:
            return details[k]
    return None


def _stream_started(store: ReceiverStore, gateway_id: str, stream: str) -> dict[str, Any] | None:
    events = store.stream_started(gateway_id, stream)
    if not events:
        return None
    seq, details = events[0]
    prev_seq = _first(details, _PREV_SEQ_KEYS)
    return {
        "seq": seq,
        "previous_stream": _first(details, _PREV_STREAM_KEYS),
        "previous_last_seq": prev_seq if type(prev_seq) is int else None,
        "reason": details.get("reason"),
        "details": details,
    }


def _chain_breaks(store: ReceiverStore, gateway_id: str, stream: str) -> list[dict[str, Any]]:
    breaks: list[dict[str, Any]] = []
    for seq, ok, prev_hash, pseq, phash in store.link_checks(gateway_id, stream):
        if not ok:
            breaks.append({"seq": seq, "why": "bad hash", "detail": "hash does not match the record's content"})
        if seq == 1 and prev_hash != "0" * 64:
            breaks.append({"seq": seq, "why": "prev_hash mismatch", "detail": "seq 1 must have prev_hash of 64 zeros"})
        elif pseq == seq - 1 and prev_hash != phash:
            breaks.append(
                {
                    "seq": seq,
                    "why": "prev_hash mismatch",
                    "detail": f"prev_hash {prev_hash[:12]}… is not the stored hash of seq {pseq} ({(phash or '')[:12]}…)",
                }
            )
    return breaks


def stream_report(store: ReceiverStore, gateway_id: str, stream: str) -> dict[str, Any]:
    """One stream's entry (without the cross-stream fields, which :func:`build_report` adds)."""
    out = store.stream_summary(gateway_id, stream)
    out["gaps"] = store.gaps(gateway_id, stream)
    out["chain_breaks"] = _chain_breaks(store, gateway_id, stream)
    out["conflicts"] = store.conflicts(gateway_id, stream)
    out["stream_started"] = _stream_started(store, gateway_id, stream)
    out["continued_by"] = None
    return out


def _verdict(s: dict[str, Any]) -> None:
    reasons = []
    if s["records"] == 0:
        reasons.append("no records stored")
    missing = sum(b - a + 1 for a, b in s["gaps"])
    if s["gaps"]:
        reasons.append(f"{len(s['gaps'])} gap(s), {missing} record(s) missing")
    if s["chain_breaks"]:
        reasons.append(f"{len(s['chain_breaks'])} chain break(s)")
    if s["conflicts"]:
        reasons.append(f"{len(s['conflicts'])} conflicting re-send(s)")
    s["missing"] = missing
    s["verdict"] = NOT_VERIFIED if reasons else VERIFIED
    s["verdict_reasons"] = reasons


def build_report(store: ReceiverStore, gateway_id: str | None = None) -> dict[str, Any]:
    """The whole report, optionally for one gateway."""
    gateways: dict[str, dict[str, Any]] = {}
    for gw, stream in store.streams(gateway_id):
        gateways.setdefault(gw, {"streams": {}})["streams"][stream] = stream_report(store, gw, stream)
    for g in gateways.values():
        streams = g["streams"]
        # A successor stream's stream_started says where its predecessor ended: records
        # after the last one received are then known to be missing, not merely not yet sent.
        for sid, s in streams.items():
            started = s["stream_started"]
            if not started or started["previous_stream"] not in streams:
                continue
            prev = streams[started["previous_stream"]]
            prev["continued_by"] = sid
            end = started["previous_last_seq"]
            if end is not None and (prev["last_seq"] or 0) < end:
                prev["gaps"].append([(prev["last_seq"] or 0) + 1, end])
        for s in streams.values():
            _verdict(s)
        g["verdict"] = VERIFIED if all(s["verdict"] == VERIFIED for s in streams.values()) else NOT_VERIFIED
    return {"generated_at": now_iso(), "db": str(store.path), "gateways": gateways}


def render_text(report: dict[str, Any]) -> str:
    """The report for people: one block per stream, verdict first."""
    lines = [f"coldgate reference receiver report, {report['db']}, generated {report['generated_at']}"]
    if not report["gateways"]:
        lines.append("no records")
    for gw, g in report["gateways"].items():
        lines.append("")
        lines.append(f"gateway {gw}: {g['verdict']}")
        for sid, s in g["streams"].items():
            lines.append(f"  stream {sid}: {s['verdict'].upper()}")
            for why in s["verdict_reasons"]:
                lines.append(f"    ! {why}")
            types = ", ".join(f"{k} {v}" for k, v in s["by_type"].items()) or "none"
            lines.append(f"    records    {s['records']} ({types}), seq {s['first_seq']}..{s['last_seq']}")
            lines.append(f"    time       {s['first_ts']} .. {s['last_ts']}; last received {s['last_received_at']}")
            tq = ", ".join(f"{k} {v}" for k, v in s["time_quality"].items()) or "none"
            lines.append(f"    time_quality {tq}")
            gaps = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in s["gaps"]) or "none"
            lines.append(f"    gaps       {gaps}")
            if s["chain_breaks"]:
                for b in s["chain_breaks"]:
                    lines.append(f"    break      seq {b['seq']}: {b['why']} ({b['detail']})")
            else:
                lines.append("    chain      intact where both ends of a link are present")
            for c in s["conflicts"]:
                lines.append(
                    f"    conflict   seq {c['seq']}: stored {str(c['stored_hash'])[:12]}…, "
                    f"received {c['received_hash'][:12]}… ({c['times']}x)"
                )
            lines.append(f"    duplicates {s['duplicates']} received")
            st = s["stream_started"]
            if st:
                lines.append(
                    f"    started    after stream {st['previous_stream'] or 'unknown'} "
                    f"(its last seq {st['previous_last_seq'] if st['previous_last_seq'] is not None else 'unknown'})"
                    + (f", reason: {st['reason']}" if st.get("reason") else "")
                )
            if s["continued_by"]:
                lines.append(f"    continued  by stream {s['continued_by']}")
    return "\n".join(lines)
