"""``coldgate report SHIPMENT`` and ``coldgate export SHIPMENT`` from the gateway's store.

Read-only: the store is opened with ``create=False`` (a reader never creates, migrates or
moves a store), so both work while the daemon runs. ``receiver_report`` serves
``coldgate receiver report --shipment ID`` from the reference receiver's copy.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from agent.cli.common import add_config_arg, add_json_arg, emit, load_config
from agent.exc import ColdgateError


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("report", help="a shipment's trip report (PDF, HTML, JSON)")
    p.add_argument("shipment", metavar="SHIPMENT", help="the shipment id")
    add_config_arg(p)
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--pdf", metavar="FILE", help="write the PDF report (needs coldgate[report])")
    out.add_argument("--html", metavar="FILE", help="write the report as one HTML file")
    add_json_arg(out)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("export", help="a shipment's records as chained, its report, and how to re-verify them")
    p.add_argument("shipment", metavar="SHIPMENT", help="the shipment id")
    p.add_argument("--out", metavar="DIR", required=True, help="folder to write (created)")
    add_config_arg(p)
    add_json_arg(p)
    p.set_defaults(func=cmd_export)


def _from_store(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    from agent.report import build
    from agent.report.source import from_store, source_of_store
    from agent.store import Store

    cfg = load_config(args)
    with Store.open(cfg.store.path, gateway_id=cfg.gateway_id, create=False, check=False) as store:
        sel = from_store(store, args.shipment)
        source = source_of_store(store)
    return sel, build(sel, source=source)


def write(model: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Write the format asked for; what was written, for the one-line answer."""
    if getattr(args, "pdf", None):
        try:
            from agent.report import render_pdf

            render_pdf(model, args.pdf)
        except ImportError as exc:
            raise ColdgateError(f"the PDF report needs the 'report' extra: pip install 'coldgate[report]' ({exc})") \
                from None
        return {"pdf": args.pdf}
    if getattr(args, "html", None):
        from agent.report import render_html

        with open(args.html, "w", encoding="utf-8") as fh:
            fh.write(render_html(model))
        return {"html": args.html}
    return {}


def _summary(model: dict[str, Any], written: dict[str, Any]) -> str:
    v = model["verdict"]
    where = ", ".join(f"{k} {p}" for k, p in written.items())
    return f"{model['shipment']['id']}: {v['headline']}" + (f"; written to {where}" if where else "")


def cmd_report(args: argparse.Namespace) -> int:
    _sel, model = _from_store(args)
    if args.json:
        emit(args, model, str)
        return 0
    print(_summary(model, write(model, args)), file=sys.stdout)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from agent.report.export import export

    sel, model = _from_store(args)
    manifest = export(sel, model, args.out)
    emit(args, manifest, lambda m: f"{m['shipment']}: {m['records']} records (seq {m['first_seq']}-{m['last_seq']}), "
                                   f"head {m['head_hash'][:16]}..., report {m['verdict']}, written to {m['out']}"
                                   + "".join(f"\n  note: {n}" for n in m["notes"]))
    return 0


def receiver_report(args: argparse.Namespace) -> int:
    """``coldgate receiver report --shipment ID [--gateway G] --pdf FILE | --html FILE | --json``."""
    from agent.receiver import Receiver
    from agent.report import build
    from agent.report.source import from_receiver, source_of_receiver

    with Receiver(args.db, create=False) as receiver:
        sel = from_receiver(receiver, args.shipment, args.gateway)
    model = build(sel, source=source_of_receiver(args.db, args.gateway))
    if args.json:
        emit(args, model, str)
        return 0
    if not (args.pdf or args.html):
        raise ColdgateError("--shipment needs --pdf FILE, --html FILE or --json")
    print(_summary(model, write(model, args)))
    return 0
