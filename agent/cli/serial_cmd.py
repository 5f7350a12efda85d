"""Serial diagnostics: ``coldgate ports`` and ``coldgate decode nmea``.

``ports`` lists the serial ports the OS knows with their stable ``/dev/serial/by-id``
names (the ones to put in a config) and a guess at what is attached. ``decode nmea``
decodes one captured sentence into the readings the NMEA driver would record from it, so
a field technician can paste a line from a receiver and see what coldgate makes of it.
"""

from __future__ import annotations

import argparse
from typing import Any

from agent.cli.common import add_json_arg, emit


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "ports", help="list serial ports with their /dev/serial/by-id names and what is attached"
    )
    add_json_arg(p)
    p.add_argument("--by-id-dir", default="/dev/serial/by-id", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_ports)


def register_decode(dsub: Any) -> None:
    p: argparse.ArgumentParser = dsub.add_parser(
        "nmea", help="decode one NMEA 0183 sentence ($GPGGA, $GNRMC, …) into readings"
    )
    p.add_argument("sentence", help="the sentence as captured, e.g. '$GPGGA,…*7D' (quote it)")
    p.add_argument("--sensor-id", default="gps", help="sensor id to put on the readings (default: gps)")
    add_json_arg(p)
    p.set_defaults(func=cmd_decode_nmea)


def cmd_ports(args: argparse.Namespace) -> int:
    from drivers.serialport import list_ports

    ports = [p.as_dict() for p in list_ports(args.by_id_dir)]

    def text(data: list[dict[str, Any]]) -> str:
        if not data:
            return "no serial ports found"
        lines = []
        for p in data:
            ids = f"{p['vid']}:{p['pid']}" if p["vid"] else ""
            lines.append(" ".join(x for x in (p["device"], ids, p["description"] or "") if x))
            for link in p["by_id"]:
                lines.append(f"    {link}")
            if p["guess"]:
                lines.append(f"    probably: {p['guess']}")
        return "\n".join(lines)

    emit(args, ports, text)
    return 0


def cmd_decode_nmea(args: argparse.Namespace) -> int:
    from drivers.nmea import decode_nmea, parse_sentence

    sentence = parse_sentence(args.sentence, require_checksum=False)  # DecodeError -> one line, exit 1
    readings = decode_nmea(args.sentence, sensor_id=args.sensor_id)
    data = {
        "sentence": None if sentence is None else {"talker": sentence.talker, "type": sentence.type},
        "readings": [
            {"sensor_id": r.sensor_id, "quantity": r.quantity, "value": r.value, "unit": r.unit, **(r.extra or {})}
            for r in readings
        ],
    }

    def text(d: dict[str, Any]) -> str:
        if d["sentence"] is None:
            return "a valid sentence the NMEA driver does not use (only GGA, RMC, GSA, VTG from GP/GN/GL/GA/GB)"
        head = f"{d['sentence']['talker']}{d['sentence']['type']}"
        if not d["readings"]:
            return f"{head}: no readings (no fix, or nothing this sentence alone can say)"
        return "\n".join([head] + [f"  {r['quantity']:<11} {r['value']} {r['unit']}" for r in d["readings"]])

    emit(args, data, text)
    return 0
