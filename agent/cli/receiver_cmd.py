"""``coldgate receiver``: run the reference receiver, or print its report or fleet view.

``coldgate receiver --port P --db FILE|URL [--token T | --token-file F | --gateways FILE]
[--allow-faults] [--fault JSON ...]`` serves until SIGTERM/SIGINT (``--mqtt URL``: consumes
the MQTT uplink's batches instead, docs/mqtt.md);
``coldgate receiver report --db … [--gateway ID] [--gateways FILE] [--json]`` prints what it
holds, one block per stream with its verdict, and exits 1 unless every stream is verified;
with ``--shipment ID`` the trip report of one shipment (:mod:`agent.cli.report_cmd`);
``coldgate receiver fleet --db … [--json]`` prints one line per gateway.
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
the demo, benches and field drills. A reference, NOT a production service: HTTP, or HTTPS
with --tls-cert/--tls-key (mutual TLS with --client-ca), no rate limiting; a SQLite file or PostgreSQL (several receiver
processes may share one PostgreSQL database).

  coldgate receiver --port 8080 --db rx.db                      serve (until SIGTERM / Ctrl-C)
  coldgate receiver --db postgresql://rx@/coldgate --gateways gateways.toml
  coldgate receiver report --db rx.db [--json]       counts, gaps, chain breaks, checkpoints per
                                                     stream, re-verified; exit 1 unless verified
  coldgate receiver --mqtt mqtt://broker:1883 --db rx.db     consume the MQTT uplink's batches
  coldgate receiver report --db rx.db --shipment ID --pdf FILE   a shipment's trip report from this copy
  coldgate receiver fleet --db rx.db [--json]        per gateway: config, last batch, verdict, alarms
  coldgate receiver export --db rx.db --gateway ID   its records as JSON lines, as chained, for
                                                     `coldgate verify` or an auditor

--gateways FILE is the gateway registry (TOML): per gateway id its token (token_sha256 or
token_file) and its Ed25519 public key for checkpoints; see agent/receiver/registry.py.
"""

FAULT_HELP = (
    "with --allow-faults: how the next batch request misbehaves, as JSON; repeat for the ones after. "
    'e.g. \'{"status": 500}\', \'{"status": 429, "retry_after": 2}\', \'{"delay_s": 5}\', '
    '\'{"reset": true}\', \'{"drop_response": true}\', \'{"exit_after_store": true}\', '
    '\'{"status": 503, "times": 10}\''
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
        choices=["serve", "report", "fleet", "export"],
        default="serve",
        help="serve (default), print the report of --db, its fleet view, or export a gateway's records",
    )
    p.add_argument(
        "--db", metavar="FILE|URL", required=True,
        help="the receiver's database: a SQLite file, or postgresql://user@host/dbname",
    )
    p.add_argument(
        "--gateways", metavar="FILE",
        help="gateway registry (TOML): a token and a checkpoint public key per gateway id",
    )
    serve = p.add_argument_group("serve")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port to listen on; 0 picks a free one (default: 8080)")
    tok = serve.add_mutually_exclusive_group()
    tok.add_argument("--token", metavar="T", help="require 'Authorization: Bearer T' (one token for every gateway)")
    tok.add_argument("--token-file", metavar="F", help="read the required token from file F")
    serve.add_argument(
        "--read-timeout", type=float, default=30.0, metavar="S",
        help="close a connection that sends nothing for S seconds (default: 30)",
    )
    serve.add_argument(
        "--max-connections", type=int, default=64, metavar="N",
        help="connections served at once; one more gets 503 (default: 64)",
    )
    serve.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate (PEM, chain first)")
    serve.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM)")
    serve.add_argument(
        "--client-ca", metavar="FILE",
        help="mutual TLS: require client certificates signed by this CA; a registry entry's certificate_cn names the gateway",
    )
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
    mq = p.add_argument_group("mqtt (docs/mqtt.md): consume batches from a broker instead of serving HTTP")
    mq.add_argument("--mqtt", metavar="URL", help="mqtt://host[:port] or mqtts://host[:port]: the broker to consume from")
    mq.add_argument("--share-group", default="coldgate", metavar="NAME",
                    help="shared subscription group: consumers of one group split the batches (default: coldgate)")
    mq.add_argument("--prefix", default="coldgate", help="the gateways' topic prefix (default: coldgate)")
    mq.add_argument("--client-id", metavar="ID", help="MQTT client id (default: one the broker assigns)")
    mq.add_argument("--session-expiry", type=int, metavar="S",
                    help="keep this consumer's session S s while it is away (needs --client-id; see docs/mqtt.md "
                         "before using it with several consumers); default: a clean session")
    mq.add_argument("--mqtt-username", metavar="U", help="MQTT username")
    mq.add_argument("--mqtt-password-file", metavar="F", help="file holding the MQTT password (mode 0600)")
    mq.add_argument("--ca-bundle", metavar="F", help="mqtts: CA bundle to verify the broker")
    mq.add_argument("--client-cert", metavar="F", help="mqtts: client certificate (PEM) for mutual TLS")
    mq.add_argument("--client-key", metavar="F", help="mqtts: client key (PEM)")
    rep = p.add_argument_group("report")
    rep.add_argument("--gateway", metavar="ID", help="only this gateway (export: required)")
    rep.add_argument("--stream", metavar="ID", help="export: only this stream")
    rep.add_argument("--shipment", metavar="ID", help="the trip report of this shipment (with --pdf, --html or --json)")
    rep.add_argument("--pdf", metavar="FILE", help="with --shipment: write the PDF trip report")
    rep.add_argument("--html", metavar="FILE", help="with --shipment: write the HTML trip report")
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


def _tls(args: argparse.Namespace) -> Any:
    """The server's TLS context from --tls-cert/--tls-key/--client-ca, or None for plain HTTP."""
    import ssl

    from agent.receiver import ReceiverError

    if not (args.tls_cert or args.tls_key or args.client_ca):
        return None
    if not (args.tls_cert and args.tls_key):
        raise ReceiverError("--tls-cert and --tls-key go together (and --client-ca needs both)")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
        if args.client_ca:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(args.client_ca)
    except (OSError, ssl.SSLError) as exc:
        raise ReceiverError(f"cannot load the TLS certificate, key or client CA: {exc}") from None
    return ctx


def run(args: argparse.Namespace) -> int:
    from agent.receiver import VERIFIED, Receiver, render_fleet, render_text

    if args.action == "report" and args.shipment:
        from agent.cli.report_cmd import receiver_report

        return receiver_report(args)
    if args.pdf or args.html:
        args._parser.error("--pdf and --html go with 'report --shipment ID'")
    if args.action == "report":
        with Receiver(args.db, gateways=args.gateways, create=False) as receiver:
            report = receiver.report(args.gateway)
            emit(args, report, render_text)
        verdicts = [g["verdict"] for g in report["gateways"].values()]
        return 0 if verdicts and all(v == VERIFIED for v in verdicts) else 1
    if args.action == "export":
        if not args.gateway:
            args._parser.error("export needs --gateway")
        with Receiver(args.db, create=False) as receiver:
            for line in receiver.export(args.gateway, args.stream):
                sys.stdout.write(line + "\n")
        return 0
    if args.action == "fleet":
        with Receiver(args.db, gateways=args.gateways, create=False) as receiver:
            emit(args, receiver.fleet(), render_fleet)
        return 0
    if args.json or args.gateway or args.stream:
        args._parser.error("--json, --gateway and --stream go with 'report', 'fleet' and 'export'")
    if args.gateways and (args.token or args.token_file):
        args._parser.error("--gateways gives each gateway its token: not with --token/--token-file")
    if args.read_timeout <= 0 or args.max_connections < 1:
        args._parser.error("--read-timeout must be > 0 and --max-connections >= 1")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("agent.receiver").setLevel(logging.INFO)
    with Receiver(
        args.db,
        token=_token(args),
        gateways=args.gateways,
        allow_faults=args.allow_faults,
        faults=_faults(args),
        max_body=args.max_body,
        read_timeout=args.read_timeout,
        max_connections=args.max_connections,
        tls=_tls(args),
    ) as receiver:
        if args.mqtt:
            _consumer(args, receiver).serve_forever()
        else:
            receiver.serve_forever(args.host, args.port)
    return 0


def _consumer(args: argparse.Namespace, receiver: Any) -> Any:
    """The MQTT consumer the ``--mqtt`` options describe (paho is imported only here)."""
    from agent.receiver import ReceiverError

    try:
        from agent.mqtt.session import tls_context
        from agent.mqtt.wire import parse_broker_url
        from agent.receiver.mqtt import MqttConsumer

        url = parse_broker_url(args.mqtt)
    except ImportError:
        raise ReceiverError("--mqtt needs paho-mqtt: pip install 'coldgate[mqtt]'") from None
    except ValueError as exc:
        raise ReceiverError(f"--mqtt {args.mqtt!r}: {exc}") from None
    if args.session_expiry is not None and not args.client_id:
        raise ReceiverError("--session-expiry needs --client-id: a session is found again by its client id")
    password = None
    if args.mqtt_password_file:
        from agent.secretfile import check_secret_file

        password = check_secret_file(Path(args.mqtt_password_file), "--mqtt-password-file")
    tls = None
    if url.tls:
        tls = tls_context(Path(args.ca_bundle) if args.ca_bundle else None,
                          Path(args.client_cert) if args.client_cert else None,
                          Path(args.client_key) if args.client_key else None)
    try:
        return MqttConsumer(receiver, args.mqtt, prefix=args.prefix, share_group=args.share_group,
                            client_id=args.client_id, session_expiry_s=args.session_expiry,
                            username=args.mqtt_username, password=password, tls=tls)
    except ValueError as exc:
        raise ReceiverError(f"--prefix/--share-group: {exc}") from None
