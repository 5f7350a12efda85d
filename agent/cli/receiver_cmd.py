"""``coldgate receiver``: run the reference receiver, or print its report.

``coldgate receiver --port P --db FILE [--token T | --token-file F] [--allow-faults] [--fault JSON ...]``
serves until SIGTERM/SIGINT; ``coldgate receiver report --db FILE [--gateway ID] [--json]``
prints what it holds, one block per stream with its verdict.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from agent.cli.common import add_json_arg, emit

DESCRIPTION = """\
The reference receiver: the server side of the uplink protocol (docs/protocol.md), for tests,
the demo, benches and field drills. A reference, NOT a production service: plain HTTP,
one SQLite file, one process.

  coldgate receiver --port 8080 --db rx.db            serve (until SIGTERM / Ctrl-C)
  coldgate receiver report --db rx.db [--json]        counts, gaps, chain breaks per stream
"""

FAULT_HELP = (
    "with --allow-faults: how the next batch request misbehaves, as JSON; repeat for the ones after. "
    'e.g. \'{"status": 500}\', \'{"status": 429, "retry_after": 2}\', \'{"delay_s": 5}\', '
    '\'{"reset": true}\', \'{"drop_response": true}\', \'{"status": 503, "times": 10}\''
)


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "receiver",
        help="run the reference receiver (a reference, not a production service), or print its report",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "action",
        nargs="?",
        choices=["serve", "report"],
        default="serve",
        help="serve (default) or print the report of --db",
    )
    p.add_argument("--db", metavar="FILE", required=True, help="the receiver's SQLite database")
    serve = p.add_argument_group("serve")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port to listen on; 0 picks a free one (default: 8080)")
    tok = serve.add_mutually_exclusive_group()
    tok.add_argument("--token", metavar="T", help="require 'Authorization: Bearer T'")
    tok.add_argument("--token-file", metavar="F", help="read the required token from file F")
    serve.add_argument(
        "--max-body",
        type=int,
        default=8 << 20,
        metavar="BYTES",
        help="largest batch body accepted, decompressed (default: 8 MiB); larger gets 413",
    )
    serve.add_argument(
        "--allow-faults",
        action="store_true",
        help="enable fault injection (--fault, POST /v1/_faults); for tests and drills only",
    )
    serve.add_argument("--fault", action="append", default=[], metavar="JSON", help=FAULT_HELP)
    rep = p.add_argument_group("report")
    rep.add_argument("--gateway", metavar="ID", help="only this gateway")
    add_json_arg(rep)  # type: ignore[arg-type]
    p.set_defaults(func=run, _parser=p)


def _token(args: argparse.Namespace) -> str | None:
    from agent.receiver import ReceiverError

    if args.token_file:
        try:
            token = Path(args.token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ReceiverError(f"cannot read the token file: {exc}") from None
        if not token:
            raise ReceiverError(f"{args.token_file}: the token file is empty")
        return token
    return args.token


def _faults(args: argparse.Namespace) -> list[dict[str, Any]]:
    from agent.receiver import Fault, ReceiverError

    if args.fault and not args.allow_faults:
        raise ReceiverError("--fault needs --allow-faults")
    specs = []
    for text in args.fault:
        try:
            spec = json.loads(text)
            Fault.parse(spec)
        except ValueError as exc:
            raise ReceiverError(f"--fault {text!r}: {exc}") from None
        specs.append(spec)
    return specs


def run(args: argparse.Namespace) -> int:
    from agent.receiver import Receiver, render_text

    if args.action == "report":
        with Receiver(args.db, create=False) as receiver:
            emit(args, receiver.report(args.gateway), render_text)
        return 0
    if args.json or args.gateway:
        args._parser.error("--json and --gateway go with 'report'")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("agent.receiver").setLevel(logging.INFO)
    with Receiver(
        args.db, token=_token(args), allow_faults=args.allow_faults, faults=_faults(args), max_body=args.max_body
    ) as receiver:
        receiver.serve_forever(args.host, args.port)
    return 0
