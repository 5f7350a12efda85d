"""``coldgate rules …`` (profiles, replay) and ``coldgate alarms`` (list, ack).

Thin on purpose: replay is :mod:`agent.rules.replay`, the alarm lifecycle is the engine's.
An acknowledgement is an audit record in the stream. While the daemon runs it owns the
store and the engine, so the CLI hands it the command (``alarm_ack``) and waits briefly
for it to be taken; with no daemon the CLI loads the saved rule state, acknowledges, and
appends the record together with the new state, exactly as the daemon would.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from agent.cli.common import DEFAULT_CONFIG, add_config_arg, add_json_arg, emit, load_config
from agent.exc import ColdgateError
from agent.stamp import Stamper

ACK_WAIT_S = 30.0


def register(sub: Any) -> None:
    rules: argparse.ArgumentParser = sub.add_parser("rules", help="rule profiles; replay a trip through a profile")
    rsub = rules.add_subparsers(dest="rules_command", metavar="SUBCOMMAND", required=True)

    p = rsub.add_parser("profiles", help="list the built-in presets and the config's profiles")
    add_config_arg(p)
    add_json_arg(p)
    p.set_defaults(func=cmd_profiles)

    p = rsub.add_parser("replay", help="run a profile over a trip's readings CSV: alarms it would raise, MKT")
    p.add_argument("--profile", required=True, help="a preset or a profile of the config")
    p.add_argument("--csv", required=True, metavar="READINGS.csv", help="columns ts,sensor_id,quantity,value,unit")
    add_config_arg(p)
    add_json_arg(p)
    p.set_defaults(func=cmd_replay)

    alarms: argparse.ArgumentParser = sub.add_parser("alarms", help="active and recent alarms; acknowledge one")
    add_config_arg(alarms)
    add_json_arg(alarms)
    alarms.add_argument("-n", "--limit", type=int, default=20,
                        help="how many recent alarms to show with their history (default 20; 0 = all)")
    alarms.set_defaults(func=cmd_alarms)
    asub = alarms.add_subparsers(dest="alarms_command", metavar="SUBCOMMAND")
    p = asub.add_parser("ack", help="acknowledge an alarm (recorded as an audit record)")
    p.add_argument("alarm_id", metavar="ID")
    p.add_argument("--by", required=True, type=_nonempty("--by"), metavar="NAME", help="who acknowledges")
    p.add_argument("--reason", required=True, type=_nonempty("--reason"), metavar="TEXT",
                   help="why: what was checked or done (required, not empty)")
    add_config_arg(p)
    add_json_arg(p)
    p.set_defaults(func=cmd_ack)


def _nonempty(flag: str) -> Any:
    """An argparse type: the text, stripped, refused when empty (an audit record says who and why)."""

    def check(text: str) -> str:
        text = text.strip()
        if not text:
            raise argparse.ArgumentTypeError(f"{flag} must not be empty: an acknowledgement says who and why")
        return text

    return check


def _rules_config(args: argparse.Namespace, *, optional: bool) -> Any:
    """The ``[rules]`` of the config; presets only when the default config file is absent."""
    from agent.rules.config import RulesConfig

    if optional and args.config == DEFAULT_CONFIG and not Path(args.config).exists():
        return RulesConfig()
    return load_config(args).rules


def cmd_profiles(args: argparse.Namespace) -> int:
    from agent.rules.config import PRESET_NAMES

    rules = _rules_config(args, optional=True)
    data = []
    for name in rules.profile_names():
        prof = rules.profile(name)
        source = "config" if name in rules.profiles else "preset"
        data.append({"name": name, "source": source, "extends": prof.extends, "description": prof.description,
                     "preset": name in PRESET_NAMES,
                     "rules": {n: r.model_dump(mode="json") for n, r in prof.active_rules().items()}})

    def text(items: list[dict[str, Any]]) -> str:
        lines = []
        for p in items:
            ext = f" (extends {p['extends']})" if p["extends"] else ""
            lines.append(f"{p['name']:<12} {p['source']:<6}{ext} {p['description']}")
            for n, r in p["rules"].items():
                lines.append(f"    {n:<20} {r['type']:<15} {r['severity']:<7} {_rule_summary(r)}")
        return "\n".join(lines)

    emit(args, data, text)
    return 0


def _rule_summary(r: dict[str, Any]) -> str:
    skip = {"type", "severity", "enabled", "action", "latching", "quantity"}
    parts = [f"{k}={v}" for k, v in r.items() if k not in skip and v is not None]
    if r.get("latching"):
        parts.append("latching")
    return " ".join(parts)


def cmd_replay(args: argparse.Namespace) -> int:
    from agent.rules.replay import read_csv, render, replay

    rules = _rules_config(args, optional=True)
    if not rules.has_profile(args.profile):
        raise ColdgateError(f"unknown rule profile {args.profile!r} (known: {', '.join(rules.profile_names())})")
    result = replay(rules, args.profile, read_csv(args.csv))
    emit(args, result.as_dict(), lambda _d: render(result))
    return 0


def cmd_alarms(args: argparse.Namespace) -> int:
    from agent.rules.alarms import AlarmBook
    from agent.rules.replay import format_ts
    from agent.store import Store

    cfg = load_config(args)
    with Store.open(cfg.store.path, gateway_id=cfg.gateway_id, create=False, check=False) as store:
        state = store.load_state("rules") or {}
        records = store.records(type="alarm")
    book = AlarmBook()
    book.load(state.get("book", {}))
    active = book.active()
    for a in active:
        for k in ("started_at", "raised_at", "ended_at", "ack_at"):
            if isinstance(a.get(k), (int, float)):
                a[k] = format_ts(a[k])
    shown = alarm_history(records, active, args.limit or None)
    ids = {h["alarm_id"] for h in shown}
    recent = [r for r in records if r["alarm_id"] in ids]
    emit(args, {"active": active, "history": shown, "recent": recent}, _alarms_text)
    return 0


def alarm_history(records: list[dict[str, Any]], active: list[dict[str, Any]],
                  limit: int | None) -> list[dict[str, Any]]:
    """Each alarm's lifecycle from its records (ascending seq): when the excursion began and
    ended, how long it lasted, its peak, every acknowledgement; the newest ``limit`` alarms."""
    from agent.rules.replay import format_ts, parse_ts

    by_id: dict[str, dict[str, Any]] = {}
    for r in records:
        h = by_id.setdefault(r["alarm_id"], {
            "alarm_id": r["alarm_id"], "sensor_id": r.get("sensor_id"), "rule": r.get("rule"),
            "rule_type": r.get("rule_type"), "severity": r.get("severity"), "started_at": r.get("started_at"),
            "raised_at": None, "ended_at": None, "duration_s": None, "peak": None, "limit": None,
            "state": None, "ongoing": True, "acknowledgements": [], "last_seq": None})
        h["state"], h["last_seq"] = r["state"], r["seq"]
        h["severity"] = r.get("severity", h["severity"])
        if r.get("started_at"):
            h["started_at"] = r["started_at"]
        peak = r.get("peak", r.get("value"))
        if peak is not None:
            h["peak"] = peak
        if r.get("limit") is not None:
            h["limit"] = r["limit"]
        if r["state"] == "raised":
            h["raised_at"] = r["ts"]
        elif r["state"] == "cleared":
            h["ongoing"] = False
            h["duration_s"] = r.get("duration_s")
            if h["started_at"] and h["duration_s"] is not None:
                h["ended_at"] = format_ts(parse_ts(h["started_at"]) + float(h["duration_s"]))
            else:
                h["ended_at"] = r["ts"]
        elif r["state"] == "acknowledged":
            h["acknowledgements"].append({"at": r["ts"], "by": r.get("by"), "reason": r.get("reason"),
                                          "seq": r["seq"]})
    for a in active:  # a latching alarm whose condition ended waits for its acknowledgement
        latched = by_id.get(a["alarm_id"])
        if latched is not None and latched["ongoing"] and a.get("ended_at"):
            latched["ended_at"], latched["ongoing"] = a["ended_at"], False
            if latched["started_at"]:
                latched["duration_s"] = round(parse_ts(a["ended_at"]) - parse_ts(latched["started_at"]), 3)
    newest = sorted(by_id.values(), key=lambda h: h["last_seq"])
    return newest[-limit:] if limit else newest


def _alarms_text(data: dict[str, Any]) -> str:
    from agent.rules.replay import _duration

    lines = [f"{len(data['active'])} active alarm(s):" if data["active"] else "no active alarms"]
    for a in data["active"]:
        status = "cleared" if a["cleared"] else "RAISED"
        ack = f", acknowledged by {a['ack_by']}" if a["acknowledged"] else ", not acknowledged"
        lines.append(f"  {a['alarm_id']}  {a['severity']:<7} {status}{ack}; started {a['started_at']}")
    if data["history"]:
        lines.append("recent alarms (newest last):")
    for h in data["history"]:
        what = f"{h['sensor_id']} {h['rule']} ({h['rule_type']}, {h['severity']})"
        parts = [f"started {h['started_at']}"]
        if h["ended_at"]:
            parts.append(f"ended {h['ended_at']}")
        else:
            parts.append("still going")
        if h["duration_s"] is not None:
            parts.append(f"lasted {_duration(float(h['duration_s']))}")
        if h["peak"] is not None:
            parts.append(f"peak {h['peak']:g}" + (f" (limit {h['limit']:g})" if h["limit"] is not None else ""))
        lines.append(f"  {h['alarm_id']}  {what}: {', '.join(parts)}; {h['state']}")
        for ack in h["acknowledgements"]:
            lines.append(f"      acknowledged {ack['at']} by {ack['by']}: {ack['reason']}")
    return "\n".join(lines)


def cmd_ack(args: argparse.Namespace) -> int:
    from agent.control import ControlClient
    from agent.exc import AgentNotRunning
    from agent.store import Store

    cfg = load_config(args)
    stamper = Stamper.for_source(cfg.time.sync_source)
    with Store.open(cfg.store.path, gateway_id=cfg.gateway_id, create=False, check=False,
                    stamper=stamper) as store:
        state = store.load_state("rules") or {}
    known = state.get("book", {}).get("alarms", {})
    before = known.get(args.alarm_id) or {}  # a second acknowledgement is recorded too, and says so
    earlier = {"by": before.get("ack_by"), "at": before.get("ack_at")} if before.get("acknowledged") else None
    try:
        change = ControlClient(cfg.control.socket, timeout=ACK_WAIT_S).request(
            "alarm_ack", alarm_id=args.alarm_id, by=args.by, reason=args.reason)
        result = {"via": "agent", **change}
    except AgentNotRunning:
        if args.alarm_id not in known:
            raise ColdgateError(f"no active alarm {args.alarm_id!r} (see `coldgate alarms`)") from None
        with Store.open(cfg.store.path, gateway_id=cfg.gateway_id, create=False, check=False,
                        stamper=stamper) as store:
            result = {"via": "store", **_ack_offline(cfg, store, state, args, stamper)}
    if earlier is not None:
        from agent.rules.replay import format_ts

        at = earlier["at"]
        result["acknowledged_before"] = {"by": earlier["by"],
                                         "at": format_ts(at) if isinstance(at, (int, float)) else at}

    def text(d: dict[str, Any]) -> str:
        how = "by the running agent" if d["via"] == "agent" else f"in the store (seq {d.get('seq')})"
        out = f"{d['alarm_id']} acknowledged by {d['by']} {how}"
        if d.get("acknowledged_before"):
            prev = d["acknowledged_before"]
            out += f"; also acknowledged before, by {prev['by']} at {prev['at']}"
        return out

    emit(args, result, text)
    return 0


def _ack_offline(cfg: Any, store: Any, state: dict[str, Any], args: argparse.Namespace,
                 stamper: Any) -> dict[str, Any]:
    from agent.rules.engine import RuleEngine

    assignments = {s.id: s.profile for s in cfg.sensors if s.profile}
    engine = RuleEngine(cfg.rules, assignments, state=state)
    change = engine.acknowledge(args.alarm_id, args.by, args.reason, stamper.now())
    (seq,) = store.append([stamper.alarm(change)], state={"rules": engine.snapshot()})
    return {**change, "seq": seq}
