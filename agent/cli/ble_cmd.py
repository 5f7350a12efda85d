"""``coldgate ble-scan`` and ``coldgate decode ble``: checking BLE sensors by hand.

``ble-scan`` lists every device heard, with RSSI, the format recognised and the decoded
values, so a technician can check a shipper's sensors before it leaves.
``decode ble`` decodes one captured payload exactly as the driver would: with coldgate's
own decoders (BTHome, Ruuvi, ATC/pvvx) or, ``--format theengs``, with Theengs Decoder.
"""

from __future__ import annotations

import argparse
from typing import Any

from agent.cli.common import add_json_arg, emit


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "ble-scan", help="list nearby BLE devices with RSSI, recognised format and decoded values"
    )
    p.add_argument("--seconds", type=float, default=10.0, help="how long to listen (default 10)")
    p.add_argument("--adapter", default=None, help="BlueZ adapter, e.g. hci0 (default: the system's)")
    p.add_argument(
        "--mode",
        choices=["auto", "active", "passive"],
        default="active",
        help="scanning mode (default active: also hears scan responses with names)",
    )
    p.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="MAC=KEY",
        help="bind key (BTHome, pvvx/ATC) for a device, to decode its encrypted advertisements (repeatable)",
    )
    p.add_argument(
        "--backend",
        default="bleak",
        metavar="bleak|fake:AIR",
        help="radio: bleak (default) or an in-process fake radio (benches and tests)",
    )
    add_json_arg(p)
    p.set_defaults(func=cmd_scan)


def register_decode(dsub: Any) -> None:
    p: argparse.ArgumentParser = dsub.add_parser("ble", help="decode one BLE advertisement payload")
    p.add_argument("--format", required=True, choices=["bthome", "ruuvi", "atc", "theengs"], help="payload format")
    p.add_argument(
        "--hex",
        required=True,
        metavar="PAYLOAD",
        help="service data (BTHome 0xFCD2, ATC 0x181A) or Ruuvi manufacturer data, without UUID/company id; "
        "theengs: manufacturer data with its company id first, or service data with --uuid",
    )
    p.add_argument("--mac", default=None, help="advertiser MAC (needed for encrypted BTHome and pvvx/ATC)")
    p.add_argument("--key", default=None, help="bind key (BTHome, pvvx/ATC), 32 hex digits")
    p.add_argument("--name", default=None, help="theengs: the advertised local name (some models need it)")
    p.add_argument("--uuid", default=None, metavar="UUID16",
                   help="theengs: --hex is service data under this 16-bit UUID (e.g. fe95), not manufacturer data")
    add_json_arg(p)
    p.set_defaults(func=cmd_decode)


def _parse_keys(items: list[str]) -> dict[str, bytes]:
    from agent.exc import ColdgateError
    from drivers.ble.common import normalize_mac

    keys: dict[str, bytes] = {}
    for item in items:
        mac, sep, key = item.partition("=")
        try:
            if not sep:
                raise ValueError("expected MAC=KEY")
            raw = bytes.fromhex(key)
            if len(raw) != 16:
                raise ValueError("a bind key is 32 hex digits")
            keys[normalize_mac(mac)] = raw
        except ValueError as exc:
            raise ColdgateError(f"--key {item!r}: {exc}") from None
    return keys


def _backend(spec: str) -> Any:
    from agent.exc import ColdgateError

    if spec == "bleak":
        return None
    kind, _, name = spec.partition(":")
    if kind != "fake":
        raise ColdgateError(f"--backend {spec!r}: expected bleak or fake:AIR")
    from drivers.ble.fake import air

    return air(name or "default").backend


def cmd_scan(args: argparse.Namespace) -> int:
    import asyncio

    from drivers.ble.discover import scan

    devices = asyncio.run(
        scan(
            args.seconds,
            adapter=args.adapter,
            mode=args.mode,
            backend=_backend(args.backend),
            keys=_parse_keys(args.key),
        )
    )
    emit(args, devices, _scan_text)
    return 0


def _scan_text(devices: list[dict[str, Any]]) -> str:
    if not devices:
        return "no BLE devices heard"
    lines = [f"{'address':<17}  {'rssi':>4}  {'format':<8}  {'name':<16}  values"]
    for d in devices:
        decoded = d["decoded"]
        if decoded:
            values = ", ".join(f"{m['quantity']}={m['value']:g} {m['unit']}" for m in decoded["measurements"])
            if decoded.get("model"):
                values = f"[{' '.join(x for x in (decoded.get('brand'), decoded['model']) if x)}] {values}"
        else:
            values = d["error"] or ""
        rssi = "" if d["rssi"] is None else str(d["rssi"])
        lines.append(f"{d['address']:<17}  {rssi:>4}  {d['format'] or '-':<8}  {(d['name'] or '')[:16]:<16}  {values}")
    return "\n".join(lines)


def cmd_decode(args: argparse.Namespace) -> int:
    from agent.exc import ColdgateError
    from drivers.ble.common import normalize_mac
    from drivers.ble.formats import DECODERS

    try:
        payload = bytes.fromhex(args.hex.replace(" ", "").replace(":", ""))
        key = bytes.fromhex(args.key) if args.key else None
        mac = normalize_mac(args.mac) if args.mac else None
    except ValueError as exc:
        raise ColdgateError(f"decode ble: {exc}") from None
    if args.format == "theengs":
        decoded = _decode_theengs(payload, args.uuid, args.name, mac)
    else:  # DecodeError is a ColdgateError: one line, exit 1
        decoded = DECODERS[args.format](payload, mac, key)
    emit(args, decoded.as_dict(), _decoded_text)
    return 0


def _decode_theengs(payload: bytes, uuid: str | None, name: str | None, mac: str | None) -> Any:
    from agent.exc import ColdgateError
    from drivers.ble import theengs
    from drivers.ble.fake import uuid16

    if uuid is not None:
        try:
            service = {uuid16(int(uuid.lower().removeprefix("0x"), 16)): payload}
        except ValueError:
            raise ColdgateError(f"decode ble: --uuid {uuid!r}: expected a 16-bit UUID such as fe95") from None
        manufacturer: dict[int, bytes] = {}
    else:
        if len(payload) < 2:
            raise ColdgateError("decode ble: manufacturer data needs its 2-byte company id first")
        service, manufacturer = {}, {int.from_bytes(payload[:2], "little"): payload[2:]}
    decoded = theengs.decode(service, manufacturer, name=name, mac=mac)
    if decoded is None:
        raise ColdgateError("decode ble: Theengs Decoder recognises no model in this payload"
                            + ("" if name else " (some models need --name)"))
    return decoded


def _decoded_text(d: dict[str, Any]) -> str:
    head = [f"format {d['format']}"]
    if d.get("model"):
        head.append(" ".join(x for x in (d.get("brand"), d["model"]) if x))
    if d["encrypted"]:
        head.append(f"encrypted, counter {d['counter']}")
    if d["sequence"] is not None:
        head.append(f"sequence {d['sequence']}")
    if d["mac"]:
        head.append(f"mac {d['mac']}")
    lines = [", ".join(head)]
    lines += [f"  {m['quantity']:<16} {m['value']:g} {m['unit']}" for m in d["measurements"]]
    if not d["measurements"]:
        lines.append("  (no valid values)")
    lines += [f"  {k}: {v}" for k, v in d["extra"].items()]
    return "\n".join(lines)
