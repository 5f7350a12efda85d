"""ATC1441 and pvvx "custom" advertisements (service data 0x181A), LYWSD03MMC-style.

Told apart by length, as both firmwares define them (payload as bleak delivers it,
the UUID stripped):

ATC1441, 13 bytes, big-endian::

    MAC (6, display order) | temperature int16 0.1 Cel | humidity uint8 % |
    battery uint8 % | battery uint16 mV | frame counter uint8

pvvx custom, 15 bytes, little-endian::

    MAC (6, reversed) | temperature int16 0.01 Cel | humidity uint16 0.01 % |
    battery uint16 mV | battery uint8 % | counter uint8 | flags uint8

The encrypted pvvx/ATC variants (8 and 11 bytes) are not supported and say so.
"""

from __future__ import annotations

import struct

from drivers.ble.common import Decoded, Measurement, format_mac
from drivers.exc import DecodeError

ATC1441_LENGTH = 13
PVVX_LENGTH = 15
_ATC = struct.Struct(">6shBBHB")
_PVVX = struct.Struct("<6shHHBBB")


def decode(payload: bytes, mac: str | None = None, key: bytes | None = None) -> Decoded:
    """Decode one ATC1441 or pvvx custom payload; ``mac`` and ``key`` are unused."""
    n = len(payload)
    if n == ATC1441_LENGTH:
        raw_mac, t, h, batt_pct, batt_mv, counter = _ATC.unpack(payload)
        return Decoded(
            format="atc1441",
            measurements=(
                Measurement("temperature", round(t * 0.1, 1), "Cel"),
                Measurement("humidity", float(h), "%RH"),
                Measurement("battery", float(batt_pct), "%EL"),
                Measurement("voltage", batt_mv / 1000, "V"),
            ),
            sequence=counter,
            mac=format_mac(raw_mac),
        )
    if n == PVVX_LENGTH:
        raw_mac, t, h, batt_mv, batt_pct, counter, flags = _PVVX.unpack(payload)
        return Decoded(
            format="pvvx",
            measurements=(
                Measurement("temperature", round(t * 0.01, 2), "Cel"),
                Measurement("humidity", round(h * 0.01, 2), "%RH"),
                Measurement("battery", float(batt_pct), "%EL"),
                Measurement("voltage", batt_mv / 1000, "V"),
            ),
            sequence=counter,
            mac=format_mac(raw_mac[::-1]),
            extra={"flags": flags},
        )
    if n in (8, 11):
        raise DecodeError(f"encrypted ATC/pvvx payload ({n} bytes) is not supported; use the custom format")
    raise DecodeError(f"not an ATC1441 ({ATC1441_LENGTH}) or pvvx custom ({PVVX_LENGTH}) payload: {n} bytes")
