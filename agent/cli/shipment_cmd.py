"""``coldgate shipment start|stop|cancel|leg|handover|status|list``: shipments on the running agent.

Every change goes to the running agent over its control socket: the shipment book lives
on its writer thread, and each transition is a record in the stream committed there
(``shipment_started``, ``shipment_leg``, ``custody_transferred``, ``shipment_stopped``…).
``status`` and ``list`` also work while the agent is stopped: they read the book's state
as last committed in the store. A shipment can also start with the agent
(``[[shipments]]`` in the config, docs/shipments.md).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

from agent.cli.common import add_config_arg, add_json_arg, emit, load_config
from agent.exc import ColdgateError

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> float:
    """Seconds of ``90s``, ``30m``, ``2h``, ``3d``, ``1d12h`` or a plain number of seconds."""
    t = text.strip()
    try:
        return float(t)
    except ValueError:
        pass
    if re.fullmatch(r"(?:\d+(?:\.\d+)?\s*[smhd]\s*)+", t):
        return sum(float(n) * _UNIT_S[u] for n, u in _DURATION.findall(t))
    raise argparse.ArgumentTypeError(f"{text!r} is not a duration (90s, 30m, 2h, 3d, 1d12h or seconds)")


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("shipment", help="start, follow and stop shipments")
    ssub = p.add_subparsers(dest="shipment_command", metavar="ACTION", required=True)

    start = ssub.add_parser("start", help="start a shipment on the running agent")
    start.add_argument("shipment", metavar="ID", help="the shipment id readings will carry")
    start.add_argument("--sensor", action="append", default=[], metavar="S", help="a sensor it covers (repeatable)")
    start.add_argument("--profile", metavar="P", help="the rule profile for every sensor")
    start.add_argument("--planned", type=duration, metavar="DURATION", help="planned trip length (EN 12830 check)")
    start.add_argument("--ignore", type=duration, metavar="DURATION",
                       help="after start, readings are recorded but not judged (default 10m)")
    start.add_argument("--budget", type=duration, metavar="DURATION",
                       help="the product's stability budget out of range (with --above/--below)")
    start.add_argument("--spent-upstream", type=duration, metavar="DURATION",
                       help="budget already spent on earlier legs and gateways")
    start.add_argument("--above", type=float, metavar="T", help="budget: out of range at or above T (°C)")
    start.add_argument("--below", type=float, metavar="T", help="budget: out of range at or below T (°C)")
    start.add_argument("--custodian", metavar="WHO", help="who holds the goods at start")
    start.add_argument("--spec", metavar="FILE",
                       help="the whole shipment as a TOML or JSON file (the [[shipments]] schema); flags override")
    start.add_argument("--by", metavar="NAME", help="who starts it (recorded)")
    add_config_arg(start)
    add_json_arg(start)
    start.set_defaults(func=cmd_start)

    for name, text in (("stop", "stop recording for a shipment (its sensors are free again)"),
                       ("cancel", "call a shipment off")):
        x = ssub.add_parser(name, help=text)
        x.add_argument("shipment", metavar="ID")
        x.add_argument("--by", metavar="NAME", help="who (recorded)")
        if name == "cancel":
            x.add_argument("--why", metavar="TEXT", help="why (recorded)")
        add_config_arg(x)
        add_json_arg(x)
        x.set_defaults(func=cmd_change, action=name)

    leg = ssub.add_parser("leg", help="begin the next leg (the next planned one, or a named one)")
    leg.add_argument("shipment", metavar="ID")
    leg.add_argument("--name", metavar="N", help="a planned leg by name, or a new one")
    leg.add_argument("--kind", choices=["origin", "transit", "destination", "named"], help="a new leg's kind")
    leg.add_argument("--mode", metavar="M", help="road, air, sea, rail …")
    leg.add_argument("--mute", action="append", metavar="RULE", help="a rule this leg mutes (repeatable)")
    leg.add_argument("--by", metavar="NAME", help="who (recorded)")
    add_config_arg(leg)
    add_json_arg(leg)
    leg.set_defaults(func=cmd_change, action="leg")

    ho = ssub.add_parser("handover", help="custody passes from one party to another")
    ho.add_argument("shipment", metavar="ID")
    ho.add_argument("--from", dest="from_party", required=True, metavar="WHO", help="who hands over")
    ho.add_argument("--to", dest="to_party", required=True, metavar="WHO", help="who takes over")
    ho.add_argument("--signed-by", required=True, metavar="NAME", help="who signed for it")
    ho.add_argument("--where", metavar="PLACE", help="where (default: the last GPS fix)")
    ho.add_argument("--note", metavar="TEXT")
    add_config_arg(ho)
    add_json_arg(ho)
    ho.set_defaults(func=cmd_change, action="handover")

    st = ssub.add_parser("status", help="active shipments, live: state, leg, remaining budget, custody")
    st.add_argument("shipment", metavar="ID", nargs="?", help="one shipment (default: every active one)")
    add_config_arg(st)
    add_json_arg(st)
    st.set_defaults(func=cmd_status)

    ls = ssub.add_parser("list", help="every shipment this gateway holds, newest first")
    add_config_arg(ls)
    add_json_arg(ls)
    ls.set_defaults(func=cmd_list)


def _agent(cfg: Any) -> Any:
    from agent.control import ControlClient

    return ControlClient(cfg.control.socket, timeout=30.0)


def _spec(args: argparse.Namespace) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if args.spec:
        path = Path(args.spec)
        try:
            text = path.read_text(encoding="utf-8")
            spec = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        except (OSError, ValueError) as exc:
            raise ColdgateError(f"cannot read the shipment spec {path}: {exc}") from exc
        if "shipments" in spec and isinstance(spec["shipments"], list) and len(spec["shipments"]) == 1:
            spec = spec["shipments"][0]
    spec["id"] = args.shipment
    if args.sensor:
        spec["sensors"] = args.sensor
    for key, value in (("profile", args.profile), ("planned_duration_s", args.planned), ("ignore_s", args.ignore),
                       ("custodian", args.custodian)):
        if value is not None:
            spec[key] = value
    if args.budget is not None:
        stability = {"budget_s": args.budget, "above": args.above, "below": args.below}
        if args.spent_upstream is not None:
            stability["spent_upstream_s"] = args.spent_upstream
        spec["stability"] = {k: v for k, v in stability.items() if v is not None}
    return spec


def cmd_start(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    answer = _call(cfg, "start", spec=_spec(args), by=args.by)
    emit(args, answer, _text_change)
    if not args.json:  # with --json they are in the answer (shipment_started.details.en12830.warnings)
        for w in _start_warnings(answer):
            print(f"coldgate: warning: shipment {args.shipment}: {w}", file=sys.stderr)
    return 0


def _start_warnings(answer: dict[str, Any]) -> list[str]:
    """The warnings the start recorded (EN 12830: a recording interval too long for the trip)."""
    started: dict[str, Any] = next((r for r in answer.get("records", []) if r.get("event") == "shipment_started"), {})
    return [str(w) for w in ((started.get("details") or {}).get("en12830") or {}).get("warnings", [])]


def cmd_change(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    extra: dict[str, Any] = {"shipment": args.shipment, "by": getattr(args, "by", None)}
    if args.action == "cancel":
        extra["why"] = args.why
    if args.action == "leg":
        extra.update(name=args.name, kind=args.kind, mode=args.mode, mute=args.mute)
    if args.action == "handover":
        extra.update({"from": args.from_party, "to": args.to_party, "signed_by": args.signed_by,
                      "where": {"place": args.where} if args.where else None, "note": args.note})
    answer = _call(cfg, args.action, **extra)
    emit(args, answer, _text_change)
    return 0


def _call(cfg: Any, action: str, **args: Any) -> Any:
    from agent.exc import AgentNotRunning

    try:
        return _agent(cfg).request("shipment", action=action, **args)
    except AgentNotRunning as exc:
        raise ColdgateError(f"{exc}: a shipment changes on the running agent (or start one with the agent: "
                            "[[shipments]] in the config)") from None


def _offline_book(cfg: Any) -> tuple[Any, float]:
    from agent.shipment.book import ShipmentBook
    from agent.store import Store

    with Store.open(cfg.store.path, gateway_id=cfg.gateway_id, create=False, check=False) as store:
        state = store.load_state("shipments")
    book = ShipmentBook(gateway_id=cfg.gateway_id, state=state)
    return book, float((state or {}).get("elapsed", 0.0))


def cmd_status(args: argparse.Namespace) -> int:
    from agent.exc import AgentNotRunning

    cfg = load_config(args)
    try:
        data = _agent(cfg).request("shipment", action="status", shipment=args.shipment)
        via = "the running agent"
    except AgentNotRunning:
        book, last = _offline_book(cfg)
        data = book.get(args.shipment, last) if args.shipment else book.status(last)
        via = "the store (agent not running: as last committed)"
    shipments = data if isinstance(data, list) else [data]
    emit(args, data, lambda _: "\n".join([f"shipments ({via}):"] + [_text_one(s) for s in shipments]
                                         if shipments else [f"no active shipment ({via})"]))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from agent.exc import AgentNotRunning
    from agent.status import when

    cfg = load_config(args)
    try:
        data = _agent(cfg).request("shipment", action="list")
    except AgentNotRunning:
        data = _offline_book(cfg)[0].shipments()
    emit(args, data, lambda d: "\n".join(
        f"{s['shipment']}: {s['state']}, sensors {', '.join(s['sensors'])}, started {when(s.get('wall_started'))}"
        + (f", stopped {when(s['wall_stopped'])} ({s.get('reason')})" if s.get("wall_stopped") else "")
        for s in d) or "no shipment yet")
    return 0


def _hours(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds)
    return f"{s // 3600} h {s % 3600 // 60:02d} min" if s >= 3600 else f"{s // 60} min {s % 60:02d} s"


def _text_one(s: dict[str, Any]) -> str:
    from agent.status import when

    leg = s.get("leg") or {}
    line = (f"  {s['shipment']}: {s['state']}, leg {leg.get('name', '-')}"
            f"{' (' + leg['mode'] + ')' if leg.get('mode') else ''}, sensors {', '.join(s['sensors'])}, "
            f"started {when(s.get('wall_started'))}, {_hours(s.get('elapsed_s'))} ago")
    if s.get("ignore_remaining_s"):
        line += f"; settling, judged in {_hours(s['ignore_remaining_s'])}"
    b = s.get("stability")
    if b:
        line += (f"; stability budget {_hours(b.get('remaining_s'))} left of {_hours(b.get('budget_s'))}"
                 + (" — EXHAUSTED" if b.get("exhausted") or b.get("remaining_s") == 0 else "")
                 + (" (out of range now)" if b.get("out_of_range_now") else ""))
    if s.get("custodian"):
        line += f"; custodian {s['custodian']} ({s.get('handovers', 0)} handover(s))"
    if s.get("alarms"):
        line += f"; unacknowledged alarms: {', '.join(s['alarms'])}"
    return line


def _text_change(d: dict[str, Any]) -> str:
    names = [r.get("event") or f"alarm {r.get('rule')} {r.get('state')}" for r in d.get("records", [])]
    return f"recorded: {', '.join(names) or 'nothing new'}\n" + _text_one(d["shipment"])
