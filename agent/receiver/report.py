"""The receiver's report and fleet view: what arrived, what is missing, whether it can be trusted.

The fields are documented in :mod:`agent.receiver` (the package docstring), the page a QA
person shows an auditor; keep the two in step. Everything is computed now, from the
stored bytes: the database engine re-hashes every record (an edited row reads broken,
whatever flag was stored on arrival), and checkpoint signatures are verified against the
gateway's registered key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.protocol import CHECKPOINT_EVENT, SET_ASIDE_EVENT, ZERO_HASH, checkpoint_problem
from agent.receiver.storage import Storage, now_iso

VERIFIED = "complete-and-verified"
NOT_VERIFIED = "not-verified"

#: the gateway's registered public key, or None when none is registered
KeyLookup = Callable[[str], bytes | None]

# Keys a stream_started event's details may use for its predecessor (the first is the documented one).
_PREV_STREAM_KEYS = ("previous_stream", "previous_stream_id", "prev_stream")
_PREV_SEQ_KEYS = ("previous_last_seq", "last_seq", "prev_last_seq")


def _no_keys(gateway_id: str) -> bytes | None:
    return None


def _first(details: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for k in keys:
        if details.get(k) is not None:
            return details[k]
    return None


def _details(record: dict[str, Any]) -> dict[str, Any]:
    d = record.get("details")
    return d if isinstance(d, dict) else {}


def _stream_started(store: Storage, gateway_id: str, stream: str) -> dict[str, Any] | None:
    events = store.events(gateway_id, stream, "stream_started")
    if not events:
        return None
    seq, record = events[0]
    details = _details(record)
    prev_seq = _first(details, _PREV_SEQ_KEYS)
    return {
        "seq": seq,
        "previous_stream": _first(details, _PREV_STREAM_KEYS),
        "previous_last_seq": prev_seq if type(prev_seq) is int else None,
        "reason": details.get("reason"),
        "details": details,
    }


def _chain_breaks(store: Storage, gateway_id: str, stream: str) -> list[dict[str, Any]]:
    breaks: list[dict[str, Any]] = []
    for seq, ok, prev_hash, pseq, phash in store.link_checks(gateway_id, stream):
        if not ok:
            breaks.append({"seq": seq, "why": "bad hash", "detail": "hash does not match the record's content"})
        if seq == 1 and prev_hash != ZERO_HASH:
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


def _checkpoints(store: Storage, gateway_id: str, stream: str, key: bytes | None) -> dict[str, Any]:
    events = store.events(gateway_id, stream, CHECKPOINT_EVENT)
    heads = [_details(r).get("head_seq") for _, r in events]
    held = store.hashes_at(gateway_id, stream, [h for h in heads if type(h) is int])
    out: dict[str, Any] = {"count": len(events), "checked": key is not None, "verified": 0, "last_verified": None,
                           "bad": [], "pending": []}
    if key is None:
        return out
    for seq, record in events:
        why = checkpoint_problem(record, gateway_id, key)
        d = _details(record)
        if why is None:
            stored = held.get(d["head_seq"])
            if stored is None:
                out["pending"].append({"seq": seq, "head_seq": d["head_seq"], "why": "covers a seq not received"})
                continue
            if stored != d["head_hash"]:
                why = f"head_hash is not the stored hash of seq {d['head_seq']}: the chain was rewritten"
        if why is not None:
            out["bad"].append({"seq": seq, "why": why})
            continue
        out["verified"] += 1
        last = out["last_verified"]
        if last is None or d["head_seq"] > last["head_seq"]:
            out["last_verified"] = {"seq": seq, "head_seq": d["head_seq"], "head_hash": d["head_hash"],
                                    "key_id": d["key_id"], "covers": [1, d["head_seq"]], "ts": record.get("ts")}
    return out


def _set_aside(store: Storage, gateway_id: str, stream: str) -> list[dict[str, Any]]:
    """The seq ranges the gateway says it set aside: one per ``batch_set_aside`` event that
    names ``first_seq``/``last_seq``, and one per listed range of a summary event (the
    gateway collapses a run of refused batches into one event with ``ranges``, at most 50
    of them; beyond that, ``ranges_complete`` is false and the rest stay unexplained)."""
    out = []
    for seq, record in store.events(gateway_id, stream, SET_ASIDE_EVENT):
        d = _details(record)
        spans = [(d.get("first_seq"), d.get("last_seq"))]
        if "first_seq" not in d and isinstance(d.get("ranges"), list):
            spans = [tuple(r) if isinstance(r, list) and len(r) == 2 else (None, None) for r in d["ranges"]]
        for first, last in spans:
            if type(first) is not int or type(last) is not int or first > last:
                continue
            out.append({"event_seq": seq, "first_seq": first, "last_seq": last,
                        "count": d.get("count") if len(spans) == 1 else last - first + 1,
                        "status": d.get("status"), "reason": d.get("reason")})
    return out


def stream_report(store: Storage, gateway_id: str, stream: str, key: bytes | None = None) -> dict[str, Any]:
    """One stream's entry (without the cross-stream fields, which :func:`build_report` adds)."""
    out = store.stream_summary(gateway_id, stream)
    out["gaps"] = store.gaps(gateway_id, stream)
    out["chain_breaks"] = _chain_breaks(store, gateway_id, stream)
    out["conflicts"] = store.conflicts(gateway_id, stream)
    out["stream_started"] = _stream_started(store, gateway_id, stream)
    out["continued_by"] = None
    out["checkpoints"] = _checkpoints(store, gateway_id, stream, key)
    out["set_aside"] = _set_aside(store, gateway_id, stream)
    return out


def _explain(s: dict[str, Any]) -> None:
    """Each gap, marked explained when the gateway's batch_set_aside events cover all of it."""
    details = []
    for a, b in s["gaps"]:
        by = [x for x in s["set_aside"] if x["first_seq"] <= b and x["last_seq"] >= a]
        covered: set[int] = set()
        for x in by:
            covered.update(range(max(a, x["first_seq"]), min(b, x["last_seq"]) + 1))
        details.append({"first": a, "last": b, "explained": len(covered) == b - a + 1,
                        "set_aside_by": [x["event_seq"] for x in by],
                        "reasons": sorted({str(x["reason"]) for x in by if x["reason"]})})
    s["gap_details"] = details


def _verdict(s: dict[str, Any]) -> None:
    reasons = []
    if s["records"] == 0:
        reasons.append("no records stored")
    missing = sum(b - a + 1 for a, b in s["gaps"])
    if s["gaps"]:
        explained = [g for g in s["gap_details"] if g["explained"]]
        text = f"{len(s['gaps'])} gap(s), {missing} record(s) missing"
        if explained:
            n = sum(g["last"] - g["first"] + 1 for g in explained)
            text += f" ({len(explained)} gap(s), {n} record(s), explained: set aside by the gateway)"
        reasons.append(text)
    if s["chain_breaks"]:
        reasons.append(f"{len(s['chain_breaks'])} chain break(s)")
    if s["conflicts"]:
        reasons.append(f"{len(s['conflicts'])} conflicting re-send(s)")
    for bad in s["checkpoints"]["bad"]:
        reasons.append(f"checkpoint at seq {bad['seq']} does not verify: {bad['why']}")
    s["missing"] = missing
    s["verdict"] = NOT_VERIFIED if reasons else VERIFIED
    s["verdict_reasons"] = reasons


def build_report(store: Storage, gateway_id: str | None = None, keys: KeyLookup = _no_keys) -> dict[str, Any]:
    """The whole report, optionally for one gateway."""
    gateways: dict[str, dict[str, Any]] = {}
    for gw, stream in store.streams(gateway_id):
        g = gateways.setdefault(gw, {"streams": {}})
        g["streams"][stream] = stream_report(store, gw, stream, keys(gw))
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
            _explain(s)
            _verdict(s)
        g["verdict"] = VERIFIED if all(s["verdict"] == VERIFIED for s in streams.values()) else NOT_VERIFIED
    return {"generated_at": now_iso(), "db": str(store.path), "gateways": gateways}


def build_fleet(store: Storage, known: list[str] = (), keys: KeyLookup = _no_keys) -> dict[str, Any]:  # type: ignore[assignment]
    """Per gateway: the config it last reported, its last batch, its streams' verdict, its active alarms.

    ``known`` are the registry's gateways: one that never sent a batch is listed too.
    """
    report = build_report(store, None, keys)["gateways"]
    rows = {g["gateway_id"]: g for g in store.gateways()}
    out: dict[str, dict[str, Any]] = {}
    for gw in sorted(set(rows) | set(report) | set(known)):
        row = rows.get(gw, {})
        rep = report.get(gw)
        out[gw] = {
            "config": row.get("config"),
            "config_reported_at": row.get("config_reported_at"),
            "last_batch_at": row.get("last_batch_at"),
            "batches": row.get("batches", 0),
            "verdict": rep["verdict"] if rep else "no records",
            "streams": {sid: {"verdict": s["verdict"], "last_seq": s["last_seq"], "reasons": s["verdict_reasons"]}
                        for sid, s in (rep or {"streams": {}})["streams"].items()},
            "active_alarms": store.active_alarms(gw),
        }
    return {"generated_at": now_iso(), "db": str(store.path), "gateways": out}


def render_fleet(fleet: dict[str, Any]) -> str:
    lines = [f"coldgate fleet, {fleet['db']}, generated {fleet['generated_at']}"]
    if not fleet["gateways"]:
        lines.append("no gateways")
    for gw, g in fleet["gateways"].items():
        cfg = g["config"]
        cfg_text = (f"config {cfg.get('version')} ({str(cfg.get('sha256'))[:12]}…, signed by {cfg.get('signer') or 'nobody'})"
                    if cfg else "config not reported")
        alarms = g["active_alarms"]
        alarm_text = ", ".join(f"{a['alarm_id']} {a['severity']} {a['sensor_id']} since {a['started_at']}"
                               for a in alarms) or "none"
        lines.append(f"{gw}: {g['verdict']}; {cfg_text}; last batch {g['last_batch_at'] or 'never'}"
                     f" ({g['batches']} batches); active alarms: {alarm_text}")
        for sid, s in g["streams"].items():
            if s["reasons"]:
                lines.append(f"  stream {sid}: " + "; ".join(s["reasons"]))
    return "\n".join(lines)


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
            if not s["gap_details"]:
                lines.append("    gaps       none")
            for gap in s["gap_details"]:
                span = f"{gap['first']}" if gap["first"] == gap["last"] else f"{gap['first']}-{gap['last']}"
                why = (f"explained: set aside by the gateway ({'; '.join(gap['reasons'])[:160]})"
                       if gap["explained"] else "unexplained")
                lines.append(f"    gap        {span}: {why}")
            if s["chain_breaks"]:
                for b in s["chain_breaks"]:
                    lines.append(f"    break      seq {b['seq']}: {b['why']} ({b['detail']})")
            else:
                lines.append("    chain      intact where both ends of a link are present (re-verified now)")
            cp = s["checkpoints"]
            if not cp["checked"]:
                lines.append(f"    signed     {cp['count']} checkpoint(s), not checked: no public key registered")
            elif cp["last_verified"]:
                lv = cp["last_verified"]
                lines.append(f"    signed     seq 1..{lv['head_seq']} by key {lv['key_id']} (checkpoint at seq "
                             f"{lv['seq']}; {cp['verified']} of {cp['count']} verified)")
            else:
                lines.append(f"    signed     no verified checkpoint ({cp['count']} received)")
            for c in s["conflicts"]:
                lines.append(
                    f"    conflict   seq {c['seq']}: stored {str(c['stored_hash'])[:12]}…, "
                    f"received {c['received_hash'][:12]}… ({c['times']}x)"
                )
            lines.append(f"    duplicates {s['duplicates']} received")
            st = s["stream_started"]
            if st:
                if st["previous_stream"] is None and st.get("reason") == "new":
                    lines.append("    started    as a new stream (the gateway's first)")
                else:
                    lines.append(
                        f"    started    after stream {st['previous_stream'] or 'unknown'} "
                        f"(its last seq {st['previous_last_seq'] if st['previous_last_seq'] is not None else 'unknown'})"
                        + (f", reason: {st['reason']}" if st.get("reason") else "")
                    )
            if s["continued_by"]:
                lines.append(f"    continued  by stream {s['continued_by']}")
    return "\n".join(lines)
