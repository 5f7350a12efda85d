"""Discovery: what ``coldgate ble-scan`` shows a technician before a shipment leaves.

Every device heard during the scan, with its RSSI, the payload format recognised and
the values decoded from its latest advertisement (or why they could not be decoded).
A device none of coldgate's own formats knows is offered to Theengs Decoder, where
installed, so the technician sees the model and which ``format`` to configure.
"""

from __future__ import annotations

import asyncio
from typing import Any

from drivers.ble.common import NoKey, WrongKey
from drivers.ble.formats import DECODERS, payloads
from drivers.exc import DecodeError


class _Seen:
    def __init__(self, address: str) -> None:
        self.address = address
        self.name: str | None = None
        self.rssi: int | None = None
        self.best_rssi: int | None = None
        self.count = 0
        self.format: str | None = None
        self.decoded: dict[str, Any] | None = None
        self.error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "name": self.name,
            "rssi": self.rssi,
            "best_rssi": self.best_rssi,
            "advertisements": self.count,
            "format": self.format,
            "decoded": self.decoded,
            "error": self.error,
        }


def _observe_theengs(entry: _Seen, mac: str, adv: Any) -> None:
    from drivers.ble import theengs

    try:
        decoded = theengs.decode(adv.service_data, adv.manufacturer_data, name=adv.local_name, mac=mac)
    except DecodeError as exc:
        entry.error = f"theengs: {exc}"
        return
    if decoded is not None:
        entry.format = "theengs"
        entry.decoded = decoded.as_dict()
        entry.error = None


def observe(seen: dict[str, _Seen], address: str, adv: Any, keys: dict[str, bytes], use_theengs: bool = False) -> None:
    """Fold one advertisement into the table (pure apart from ``seen``; never raises on payloads)."""
    mac = address.upper()
    entry = seen.get(mac)
    if entry is None:
        entry = seen[mac] = _Seen(mac)
    entry.count += 1
    entry.name = adv.local_name or entry.name
    entry.rssi = adv.rssi
    entry.best_rssi = adv.rssi if entry.best_rssi is None else max(entry.best_rssi, adv.rssi)
    found = payloads(adv.service_data, adv.manufacturer_data)
    if not found and use_theengs:
        _observe_theengs(entry, mac, adv)
        return
    for fmt, payload in found:
        entry.format = fmt
        try:
            decoded = DECODERS[fmt](payload, mac, keys.get(mac))
        except NoKey:
            entry.error = "encrypted: give --key MAC=KEY to decode"
        except WrongKey as exc:
            entry.error = str(exc)
        except DecodeError as exc:
            entry.error = f"undecodable: {exc}"
        else:
            entry.format = decoded.format
            entry.decoded = decoded.as_dict()
            entry.error = None
        break


async def scan(
    seconds: float,
    *,
    adapter: str | None = None,
    mode: str = "active",
    backend: Any = None,
    keys: dict[str, bytes] | None = None,
) -> list[dict[str, Any]]:
    """Scan for ``seconds``; return every device heard, strongest first.

    Raises :class:`drivers.exc.DriverUnavailable` when no scan can be started.
    """
    from drivers.ble import theengs
    from drivers.ble.radio import start_scanner

    seen: dict[str, _Seen] = {}
    key_map = {k.upper(): v for k, v in (keys or {}).items()}
    use_theengs = theengs.available()

    def callback(device: Any, adv: Any) -> None:
        observe(seen, str(device.address), adv, key_map, use_theengs)

    scanner, _ = await start_scanner(callback, mode=mode, adapter=adapter, backend=backend)
    try:
        await asyncio.sleep(seconds)  # the scan window itself
    finally:
        await scanner.stop()
    return sorted((s.as_dict() for s in seen.values()), key=lambda d: -(d["best_rssi"] or -999))
