"""Replay a past trip through a profile: the alarms it would have raised, and the MKT.

QA validates a profile against real trips before pushing it to a fleet. The input is
the CSV that ``coldgate readings --csv`` exports (``ts,sensor_id,quantity,value,unit``,
``ts`` in RFC 3339, e.g. ``2026-11-23T08:15:02.125Z``), so a trip from one gateway can be
replayed anywhere. The engine is the daemon's own, fed the same samples in time order;
time-driven rules are stamped at the moment they became true, so no ticking is needed.

A CSV has only wall times, so replay uses them as its timeline (``Sample.elapsed`` is
left unset): where the live agent measured on elapsed time, replay measures on the
exported stamps. Without clock steps the two agree (``tests/agent/test_rules_time.py``);
across a step in the data, replay sees the step as the stamps show it.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.exc import ReplayError
from agent.rules.config import RulesConfig
from agent.rules.engine import RuleEngine, Sample

COLUMNS = ("ts", "sensor_id", "quantity", "value", "unit")


def parse_ts(text: str) -> float:
    """RFC 3339 (``…Z`` or an offset) or epoch seconds, to epoch seconds."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        raise ValueError(f"timestamp without a zone: {text!r}")
    return dt.timestamp()


def format_ts(ts: float | None) -> str | None:
    """Epoch seconds as docs/protocol.md's RFC 3339: milliseconds and ``Z``."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def read_csv(path: str | Path) -> Iterator[Sample]:
    """Samples of a readings CSV, in file order. Raises :class:`ReplayError` on a bad row."""
    try:
        fh = open(path, newline="", encoding="utf-8")
    except OSError as exc:
        raise ReplayError(f"cannot read {path}: {exc.strerror or exc}") from exc
    with fh:
        reader = csv.DictReader(fh)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ReplayError(f"{path}: missing column(s) {', '.join(missing)}; need {','.join(COLUMNS)}")
        for row in reader:
            try:
                value = float(row["value"])
                ts = parse_ts(row["ts"])
            except (TypeError, ValueError) as exc:
                raise ReplayError(f"{path}: {exc}", line=reader.line_num) from exc
            if math.isfinite(value):
                yield Sample(row["sensor_id"], row["quantity"], value, row["unit"], ts)


@dataclass
class ReplayResult:
    """What a replay found: one entry per alarm (raise joined with its clear) and MKT per sensor."""

    profile: str
    samples: int = 0
    first_ts: float | None = None
    last_ts: float | None = None
    alarms: list[dict[str, Any]] = field(default_factory=list)
    mkt: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"profile": self.profile, "samples": self.samples, "first": format_ts(self.first_ts),
                "last": format_ts(self.last_ts), "alarms": self.alarms, "mkt": self.mkt}


def replay(rules: RulesConfig, profile: str, samples: Iterable[Sample]) -> ReplayResult:
    """Run ``profile`` over ``samples`` (every sensor in them gets it)."""
    ordered = sorted(samples, key=lambda s: s.ts)  # stable: one instant keeps file order
    sensors = sorted({s.sensor_id for s in ordered})
    engine = RuleEngine(rules, {sid: profile for sid in sensors})
    result = ReplayResult(profile=profile, samples=len(ordered))
    if not ordered:
        return result
    result.first_ts, result.last_ts = ordered[0].ts, ordered[-1].ts
    by_id: dict[str, dict[str, Any]] = {}
    changes: list[dict[str, Any]] = []
    for sample in ordered:
        changes += engine.observe(sample)
    for rec in changes:
        entry = by_id.get(rec["alarm_id"])
        if rec["state"] == "raised":
            figures = {k: v for k, v in rec.items() if k not in ("alarm_id", "rule", "sensor_id", "state",
                                                                  "severity", "ts", "started_at", "profile")}
            entry = by_id[rec["alarm_id"]] = {
                "alarm_id": rec["alarm_id"], "sensor_id": rec["sensor_id"], "rule": rec["rule"],
                "severity": rec["severity"], "started_at": rec["started_at"], "raised_at": rec["ts"],
                "cleared_at": None, "duration_s": None, "open": True, "figures": figures}
            result.alarms.append(entry)
        elif rec["state"] == "cleared" and entry is not None:
            entry["cleared_at"] = rec["ts"]
            entry["duration_s"] = rec.get("duration_s", rec["ts"] - entry["started_at"])
            entry["open"] = False
            for k in ("peak", "spent_s", "mkt"):
                if k in rec:
                    entry["figures"][k] = rec[k]
    for entry in result.alarms:
        if entry["open"]:  # still in excursion at the end of the data
            entry["duration_s"] = result.last_ts - entry["started_at"]
        for k in ("started_at", "raised_at", "cleared_at"):
            entry[k] = format_ts(entry[k])
        entry["duration_s"] = round(entry["duration_s"], 3)
    for sid in sensors:
        info = engine.mkt_info(sid)
        if info is not None and info["mkt"] is not None:
            result.mkt[sid] = info
    return result


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


def render(result: ReplayResult) -> str:
    """The human-readable report."""
    lines = [f"profile {result.profile}: {result.samples} samples, {format_ts(result.first_ts)} .. {format_ts(result.last_ts)}"
             if result.samples else f"profile {result.profile}: no samples"]
    if result.alarms:
        lines.append(f"{len(result.alarms)} alarm(s):")
        for a in result.alarms:
            end = "still open at end" if a["open"] else f"cleared {a['cleared_at']}"
            lines.append(f"  {a['severity']:<7} {a['sensor_id']} {a['rule']}: started {a['started_at']}, "
                         f"raised {a['raised_at']}, {end}, duration {_duration(a['duration_s'])}")
    else:
        lines.append("no alarms")
    for sid, info in result.mkt.items():
        gaps = f", {info['gaps']} gap(s) of {_duration(info['gap_s'])} not bridged" if info["gaps"] else ""
        lines.append(f"MKT {sid}: {info['mkt']:.2f} Cel over {_duration(info['span_s'])}{gaps}")
    return "\n".join(lines)

