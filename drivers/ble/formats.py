"""Which decoder an advertisement needs: the one dispatch table for driver and CLI.

An advertisement carries its payloads under keys that name the format: service data
0xFCD2 is BTHome, 0x181A is ATC1441/pvvx, manufacturer data of company 0x0499 is Ruuvi.
Those three take coldgate's own decoders (strict validation, encryption, replay
protection). Every other model takes Theengs Decoder, and only where a sensor is
configured with ``format = "theengs"`` (or ``ble-scan`` finds nothing of ours in an
advertisement): ``auto`` never hands a payload of ours to Theengs, so the path a
reading took is always the one its sensor's config names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from drivers.ble import atc, bthome, ruuvi
from drivers.ble.common import BTHOME_UUID, ENV_SENSING_UUID, RUUVI_COMPANY_ID, Decoded

Decoder = Callable[[bytes, "str | None", "bytes | None"], Decoded]

DECODERS: dict[str, Decoder] = {
    "bthome": bthome.decode,
    "ruuvi": ruuvi.decode,
    "atc": atc.decode,
}


def payloads(service_data: Mapping[str, bytes], manufacturer_data: Mapping[int, bytes]) -> list[tuple[str, bytes]]:
    """The (format, payload) pairs of the own formats an advertisement holds, in a fixed order."""
    found: list[tuple[str, bytes]] = []
    data = service_data.get(BTHOME_UUID)
    if data is not None:
        found.append(("bthome", bytes(data)))
    data = manufacturer_data.get(RUUVI_COMPANY_ID)
    if data is not None:
        found.append(("ruuvi", bytes(data)))
    data = service_data.get(ENV_SENSING_UUID)
    if data is not None:
        found.append(("atc", bytes(data)))
    return found


def decode_advertisement(
    service_data: Mapping[str, bytes],
    manufacturer_data: Mapping[int, bytes],
    *,
    fmt: str = "auto",
    mac: str | None = None,
    key: bytes | None = None,
    name: str | None = None,
) -> Decoded | None:
    """Decode the payload of format ``fmt`` (or the first of ours recognised, for ``auto``).

    Returns ``None`` when the advertisement holds no payload of that format (a scan
    response, another service, a model Theengs does not know); raises
    :class:`drivers.exc.DecodeError` (or its ``WrongKey``/``NoKey``) when it holds one that
    does not decode.
    """
    if fmt == "theengs":
        from drivers.ble import theengs

        return theengs.decode(service_data, manufacturer_data, name=name, mac=mac)
    for found, payload in payloads(service_data, manufacturer_data):
        if fmt in ("auto", found):
            return DECODERS[found](payload, mac, key)
    return None
