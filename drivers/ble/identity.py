"""Which configured sensor an advertisement comes from, and what its address tells.

A sensor is matched (its config's ``match``) by:

``mac``
    the advertiser address (the default);
``name``
    the advertised local name (a BTHome device name, the name Theengs reads): the
    sensor may change its address and stays itself;
``key``
    its bind key: an encrypted frame (BTHome, pvvx/ATC) from an unknown address that
    verifies under the key can only come from the key holder.

A name- or key-matched sensor seen at a new address is rebound to it and the change is
recorded (``ble_address_changed``). A MAC-matched sensor cannot be followed like that;
instead the driver notices when one goes missing while an unconfigured device of the
same kind appears, and records that (``ble_sensor_replaced_suspected``) rather than
silently treating the newcomer as a stranger.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

from drivers.ble.common import BTHOME_UUID, ENV_SENSING_UUID, RUUVI_COMPANY_ID

#: Unknown addresses remembered for the "replaced?" check.
MAX_UNKNOWN = 256


def signature(service_data: Mapping[str, bytes], manufacturer_data: Mapping[int, bytes]) -> str | None:
    """The kind of payload an advertisement carries, cheaply: to compare strangers with sensors."""
    if BTHOME_UUID in service_data:
        return "bthome"
    if RUUVI_COMPANY_ID in manufacturer_data:
        return "ruuvi"
    if ENV_SENSING_UUID in service_data:
        return "atc"
    for cid in manufacturer_data:
        return f"mfg:{cid:04x}"
    for uuid in service_data:
        return f"svc:{uuid}"
    return None


class Matcher:
    """Address and name lookup for the configured sensors (``sensors`` have ``match``, ``mac``, ``name``)."""

    def __init__(self, sensors: Iterable[Any], known_addresses: Mapping[str, str]) -> None:
        self.sensors = list(sensors)
        self._by_address: dict[str, Any] = {}
        self._by_name: dict[str, Any] = {}
        self.by_key: list[Any] = []
        for s in self.sensors:
            if s.match == "mac":
                self._by_address[s.mac] = s
            else:
                if s.match == "name":
                    self._by_name[s.name] = s
                else:
                    self.by_key.append(s)
                address = known_addresses.get(s.sensor_id) or s.mac
                if address and address not in self._by_address:
                    self._by_address[address] = s
        self.unknown: OrderedDict[str, tuple[float, float, str | None]] = OrderedDict()

    def lookup(self, address: str, name: str | None) -> tuple[Any | None, str]:
        """The sensor an address or name belongs to, and how it matched (``""`` if none)."""
        sensor = self._by_address.get(address)
        if sensor is not None:
            return sensor, sensor.match if sensor.match != "key" else "key"
        if name:
            sensor = self._by_name.get(name)
            if sensor is not None:
                return sensor, "name"
        return None, ""

    def rebind(self, sensor: Any, old: str | None, new: str) -> None:
        """A name/key sensor now advertises from ``new``."""
        if old is not None and self._by_address.get(old) is sensor:
            del self._by_address[old]
        self._by_address[new] = sensor
        self.unknown.pop(new, None)

    def note_unknown(self, address: str, kind: str | None, now: float) -> bool:
        """Remember a stranger; True the first time it is seen (bounded, oldest forgotten)."""
        seen = self.unknown.get(address)
        first = seen is None
        self.unknown[address] = (now if seen is None else seen[0], now, kind)
        self.unknown.move_to_end(address)
        while len(self.unknown) > MAX_UNKNOWN:
            self.unknown.popitem(last=False)
        return first

    def strangers_like(self, kind: str | None, since: float, now: float, window: float) -> list[str]:
        """Unknown addresses of this payload kind first seen after ``since`` and heard within ``window``."""
        if kind is None:
            return []
        return [a for a, (first, last, k) in self.unknown.items()
                if k == kind and first >= since and now - last <= window]
