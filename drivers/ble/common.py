"""What every BLE decoder returns, and the errors they raise.

The decoders are pure ``bytes -> Decoded`` functions; the driver turns a :class:`Decoded`
into :class:`drivers.base.Reading` values and decides what to record (duplicates, replays).
Quantities and units are docs/protocol.md's (SenML symbols): a decoder converts at the edge,
so nothing downstream ever sees hPa, milli-g or mV.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from drivers.exc import DecodeError, NoKey, WrongKey  # noqa: F401 - NoKey, WrongKey: importable from here

#: Standard gravity, for milli-g -> m/s2 (mg x 9.80665 / 1000).
STANDARD_GRAVITY = 9.80665

#: 128-bit forms of the 16-bit UUIDs, as bleak keys ``AdvertisementData.service_data``.
BTHOME_UUID = "0000fcd2-0000-1000-8000-00805f9b34fb"
ENV_SENSING_UUID = "0000181a-0000-1000-8000-00805f9b34fb"  # ATC1441 / pvvx custom
RUUVI_COMPANY_ID = 0x0499

@dataclass(frozen=True, slots=True)
class Measurement:
    """One decoded value in docs/protocol.md's quantity and unit."""

    quantity: str
    value: float
    unit: str


@dataclass(frozen=True, slots=True)
class Decoded:
    """The result of decoding one advertisement payload.

    ``sequence`` is the format's own duplicate detector (BTHome packet id, Ruuvi
    measurement sequence, ATC/pvvx frame counter) or ``None`` when the payload has none;
    ``counter`` is the BTHome encryption counter (replay protection). ``mac`` is the
    address the payload itself carries (Ruuvi, ATC/pvvx, BTHome with the MAC bit), in
    display order, or ``None``. ``model`` and ``brand`` are the device model a decoder
    recognised (Theengs Decoder names them; the own formats do not).
    """

    format: str
    measurements: tuple[Measurement, ...]
    sequence: int | None = None
    counter: int | None = None
    encrypted: bool = False
    mac: str | None = None
    model: str | None = None
    brand: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "encrypted": self.encrypted,
            "sequence": self.sequence,
            "counter": self.counter,
            "mac": self.mac,
            "model": self.model,
            "brand": self.brand,
            "measurements": [{"quantity": m.quantity, "value": m.value, "unit": m.unit} for m in self.measurements],
            "extra": self.extra,
        }


def normalize_mac(mac: str) -> str:
    """``a4c1388d18b2`` / ``a4-c1-…`` / ``A4:C1:…`` -> ``A4:C1:38:8D:18:B2``; ValueError if not a MAC."""
    digits = mac.replace(":", "").replace("-", "").strip()
    if len(digits) != 12:
        raise ValueError(f"not a MAC address: {mac!r}")
    try:
        bytes.fromhex(digits)
    except ValueError:
        raise ValueError(f"not a MAC address: {mac!r}") from None
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2)).upper()


def mac_bytes(mac: str) -> bytes:
    """The six address bytes in display order (most significant first)."""
    return bytes.fromhex(normalize_mac(mac).replace(":", ""))


def format_mac(raw: bytes) -> str:
    """Six bytes in display order -> ``AA:BB:…``."""
    return ":".join(f"{b:02X}" for b in raw)
