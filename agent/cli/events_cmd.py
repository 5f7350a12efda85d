"""``coldgate events``: what happened to the agent, from the store.

Driver errors and recoveries, config applied or rejected, clock steps, data losses,
batches set aside, streams started, agent starts and stops, BLE sensors missing: the
event records of the chain, newest last, each in one line a technician reads (times as
dates, the event's figures in words). ``--json`` gives the records as stored.
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from agent.cli.common import add_config_arg, add_json_arg, emit, load_config
from agent.exc import ColdgateError

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_DURATIONS = re.compile(r"(?:\d+(?:\.\d+)?[smhdw])+")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "events", help="the agent's event records: driver errors, config changes, clock steps, data losses, …")
    add_config_arg(p)
    p.add_argument("--type", action="append", default=[], metavar="T",
                   help="only events of type T, e.g. driver_error (repeatable, or T1,T2)")
    p.add_argument("--since", metavar="WHEN", type=since,
                   help="only events at or after WHEN: an RFC 3339 time (2026-11-23T08:00:00Z) or a duration ago (2h, 30m, 1d12h)")
    p.add_argument("-n", "--limit", type=int, default=20, metavar="N", help="how many recent events (default 20; 0 = all)")
    add_json_arg(p)
    p.set_defaults(func=cmd_events)


def since(text: str, now: Callable[[], float] | None = None) -> float:
    """Epoch seconds of ``--since``: an RFC 3339 time with its offset, or a duration before now."""
    text = text.strip()
    if _DURATIONS.fullmatch(text):
        seconds = sum(float(n) * _UNIT_S[u] for n, u in _DURATION.findall(text))
        return (now or time.time)() - seconds
    try:
        when = datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither an RFC 3339 time (2026-11-23T08:00:00Z) nor a duration (2h, 30m, 1d12h)") from None
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no time zone: add Z (UTC) or an offset like +01:00")
    return when.astimezone(UTC).timestamp()


def cmd_events(args: argparse.Namespace) -> int:
    from agent.store import Store

    names = [n.strip() for item in args.type for n in item.split(",") if n.strip()]
    if args.limit < 0:
        raise ColdgateError("--limit must be 0 (all) or more")
    cfg = load_config(args)
    with Store.open(cfg.store.path, gateway_id=cfg.gateway_id, create=False, check=False) as store:
        found = store.events(names=names, since_ts=args.since, limit=args.limit or None)

    def text(events: list[dict[str, Any]]) -> str:
        if not events:
            what = f" of type {', '.join(names)}" if names else ""
            when = f" since {datetime.fromtimestamp(args.since, UTC):%Y-%m-%d %H:%M:%S}Z" if args.since else ""
            return f"no events{what}{when}"
        return "\n".join(line(e) for e in events)

    emit(args, found, text)
    return 0


def line(event: Mapping[str, Any]) -> str:
    """One event in one line: when, seq, what, and its figures in words."""
    details = event.get("details") or {}
    name = str(event.get("event"))
    quality = "" if event.get("time_quality") == "synced" else f"  [{event.get('time_quality')}]"
    render = _RENDER.get(name, _generic)
    return f"{event.get('ts')}  seq {event.get('seq'):<7} {name:<18} {render(details)}{quality}"


def _driver(d: Mapping[str, Any]) -> str:
    return f"{d.get('driver')}" + (f" ({d['type']})" if d.get("type") else "")


def _driver_error(d: Mapping[str, Any]) -> str:
    phase = {"open": "opening", "read": "reading", "load": "loading"}.get(d.get("phase", ""), d.get("phase"))
    return f"{_driver(d)}: {d.get('error')}: {d.get('message')}" + (f" (while {phase})" if phase else "")


def _driver_recovered(d: Mapping[str, Any]) -> str:
    parts = [f"{_driver(d)}: recovered"]
    if d.get("retries") is not None:
        parts.append(f"after {d['retries']} retr{'y' if d['retries'] == 1 else 'ies'}")
    if d.get("duration_s") is not None:
        parts.append(f"in {_duration(d['duration_s'])}")
    text = " ".join(parts)
    if d.get("last_error"):
        text += f"; last error: {d['last_error']}"
    return text


def _data_loss(d: Mapping[str, Any]) -> str:
    text = f"{d.get('reason')}: {d.get('count', '?')} {d.get('what', 'records')} lost"
    if d.get("from"):
        text += f", {d['from']} to {d.get('to')}"
    if isinstance(d.get("sensors"), dict):
        text += " (" + ", ".join(f"{s}: {n}" for s, n in sorted(d["sensors"].items())) + ")"
    if d.get("still_refusing"):
        text += "; still refusing"
    return text


def _clock_step(d: Mapping[str, Any]) -> str:
    corrections = d.get("corrections") or []
    if d.get("offset_s") is not None:
        return f"the system clock stepped by {d['offset_s']:+g} s" + ("" if d.get("synced") else " (unsynced)")
    runs = sum(c.get("count", 0) for c in corrections)
    return f"clock synchronised; {len(corrections)} run(s), {runs} record(s) stamped unsynced: corrected by offset"


def _set_aside(d: Mapping[str, Any]) -> str:
    return (f"seq {d.get('first_seq')}-{d.get('last_seq')} ({d.get('count')} records) kept locally, "
            f"server answered {d.get('status')}: {d.get('reason')}")


def _config(d: Mapping[str, Any]) -> str:
    text = f"{d.get('source')}" + (f" sha256 {str(d['sha256'])[:12]}…" if d.get("sha256") else "")
    if d.get("at"):
        text += f" (at {d['at']})"
    problems = d.get("problems") or []
    if problems:
        text += f"; {len(problems)} problem(s): {problems[0]}" + (" …" if len(problems) > 1 else "")
    return text


def _stream_started(d: Mapping[str, Any]) -> str:
    reason = {"new": "a new store", "store_missing": "the store file was missing",
              "corrupt": "the store could not be used"}.get(d.get("reason", ""), d.get("reason"))
    text = f"{reason}"
    if d.get("previous_stream"):
        text += f"; follows stream {d['previous_stream']} (last seq {d.get('previous_last_seq', '?')})"
    if d.get("set_aside"):
        text += f"; old file kept as {d['set_aside']}"
    return text


def _generic(d: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items() if v is not None)


def _duration(seconds: float) -> str:
    s = float(seconds)
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


_RENDER: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "driver_error": _driver_error,
    "driver_recovered": _driver_recovered,
    "data_loss": _data_loss,
    "clock_step": _clock_step,
    "batch_set_aside": _set_aside,
    "config_applied": _config,
    "config_rejected": _config,
    "stream_started": _stream_started,
}
