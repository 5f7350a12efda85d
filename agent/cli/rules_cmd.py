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
    alarms.add_argument("-n", "--limit", type=int, default=20, help="recent alarm records shown (default 20)")
    alarms.set_defaults(func=cmd_alarms)
    asub = alarms.add_subparsers(dest="alarms_command", metavar="SUBCOMMAND")
    p = asub.add_parser("ack", help="acknowledge an alarm (recorded as an audit record)")
    p.add_argument("alarm_id", metavar="ID")
    p.add_argument("--by", required=True, help="who acknowledges")
    p.add_argument("--reason", required=True, help="why (what was checked or done)")
    add_config_arg(p)
    add_json_arg(p)
    p.set_defaults(func=cmd_ack)


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
        recent = store.records(type="alarm", limit=args.limit or None, descending=True)
    book = AlarmBook()
    book.load(state.get("book", {}))
    active = book.active()
    for a in active:
        for k in ("started_at", "raised_at", "ended_at", "ack_at"):
            if isinstance(a.get(k), (int, float)):
                a[k] = format_ts(a[k])

    def text(data: dict[str, Any]) -> str:
        lines = [f"{len(data['active'])} active alarm(s):" if data["active"] else "no active alarms"]
        for a in data["active"]:
            status = "cleared" if a["cleared"] else "RAISED"
            ack = f", acknowledged by {a['ack_by']}" if a["acknowledged"] else ", not acknowledged"
            lines.append(f"  {a['alarm_id']}  {a['severity']:<7} {status}{ack}; started {a['started_at']}")
        if data["recent"]:
            lines.append("recent alarm records:")
            for r in data["recent"]:
                lines.append(f"  seq {r['seq']:<6} {r['ts']}  {r['alarm_id']:<32} {r['state']:<12} {r['severity']}")
        return "\n".join(lines)

    emit(args, {"active": active, "recent": recent}, text)
    return 0


def cmd_ack(args: argparse.Namespace) -> int:
    from agent.control import ControlClient
    from agent.exc import AgentNotRunning
    from agent.store import Store

    cfg = load_config(args)
    try:
        change = ControlClient(cfg.control.socket, timeout=ACK_WAIT_S).request(
            "alarm_ack", alarm_id=args.alarm_id, by=args.by, reason=args.reason)
        result = {"via": "agent", **change}
    except AgentNotRunning:
        stamper = Stamper.for_source(cfg.time.sync_source)
        with Store.open(cfg.store.path, gateway_id=cfg.gateway_id, create=False, check=False,
                        stamper=stamper) as store:
            state = store.load_state("rules") or {}
            if args.alarm_id not in state.get("book", {}).get("alarms", {}):
                raise ColdgateError(f"no active alarm {args.alarm_id!r} (see `coldgate alarms`)") from None
            result = {"via": "store", **_ack_offline(cfg, store, state, args, stamper)}

    def text(d: dict[str, Any]) -> str:
        how = "by the running agent" if d["via"] == "agent" else f"in the store (seq {d.get('seq')})"
        return f"{d['alarm_id']} acknowledged by {d['by']} {how}"

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
