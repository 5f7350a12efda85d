"""Ruuvi RAWv2 (data format 5), manufacturer data of company 0x0499.

After docs.ruuvi.com, "Data format 5 (RAWv2)". The payload as bleak delivers it (company
id stripped) is exactly 24 bytes, big-endian::

    0     format (5)
    1-2   temperature   int16   0.005 Cel        invalid 0x8000
    3-4   humidity      uint16  0.0025 %RH       invalid 0xFFFF
    5-6   pressure      uint16  1 Pa + 50 000    invalid 0xFFFF
    7-12  acceleration  int16×3 milli-g (x,y,z)  invalid 0x8000
    13-14 power         11 bits battery mV - 1600 (invalid 2047), 5 bits (tx dBm + 40) / 2 (invalid 31)
    15    movement counter     uint8             invalid 0xFF
    16-17 measurement sequence uint16            invalid 0xFFFF
    18-23 MAC                                    invalid FF:FF:FF:FF:FF:FF

A value marked invalid is left out (docs/protocol.md: never sent as 0). Acceleration becomes
m/s2 (mg × 9.80665 / 1000), the battery a ``voltage`` in V.
"""

from __future__ import annotations

import struct

from drivers.ble.common import STANDARD_GRAVITY, Decoded, Measurement, format_mac
from drivers.exc import DecodeError

LENGTH = 24
_STRUCT = struct.Struct(">BhHHhhhHBH6s")


def decode(payload: bytes, mac: str | None = None, key: bytes | None = None) -> Decoded:
    """Decode one RAWv2 payload; ``mac`` and ``key`` are unused (same signature as the others)."""
    if not payload:
        raise DecodeError("empty Ruuvi payload")
    if payload[0] != 5:
        raise DecodeError(f"Ruuvi data format {payload[0]} is not supported (only 5, RAWv2)")
    if len(payload) != LENGTH:
        kind = "truncated" if len(payload) < LENGTH else "oversize"
        raise DecodeError(f"Ruuvi RAWv2 payload {kind}: {len(payload)} bytes, expected {LENGTH}")
    _, t, h, p, ax, ay, az, power, movement, seq, raw_mac = _STRUCT.unpack(payload)
    out: list[Measurement] = []
    if t != -0x8000:
        out.append(Measurement("temperature", round(t * 0.005, 3), "Cel"))
    if h != 0xFFFF:
        out.append(Measurement("humidity", round(h * 0.0025, 4), "%RH"))
    if p != 0xFFFF:
        out.append(Measurement("pressure", float(p + 50_000), "Pa"))
    for axis, value in (("x", ax), ("y", ay), ("z", az)):
        if value != -0x8000:
            out.append(Measurement(f"acceleration_{axis}", round(value * STANDARD_GRAVITY / 1000, 8), "m/s2"))
    battery_mv, tx_code = power >> 5, power & 0x1F
    if battery_mv != 0x7FF:
        out.append(Measurement("voltage", (battery_mv + 1600) / 1000, "V"))
    if movement != 0xFF:
        out.append(Measurement("movement_count", float(movement), "count"))
    extra: dict[str, object] = {}
    if tx_code != 0x1F:
        extra["tx_power_dbm"] = -40 + 2 * tx_code
    return Decoded(
        format="ruuvi",
        measurements=tuple(out),
        sequence=None if seq == 0xFFFF else seq,
        mac=None if raw_mac == b"\xff" * 6 else format_mac(raw_mac),
        extra=extra,
    )
