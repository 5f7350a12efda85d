"""BTHome v2 (service data UUID 0xFCD2), after https://bthome.io/format and /encryption.

Payload as bleak delivers it (the UUID already stripped)::

    device info (1) [MAC, 6, reversed] objects … [counter (4) MIC (4) when encrypted]

The device-info byte: bit 0 encrypted, bit 1 MAC included, bit 2 trigger based,
bits 5-7 the version (2). Objects are an id byte followed by a little-endian value whose
length and factor the id fixes; an id this table does not know stops parsing, as the
spec says (its length cannot be known), and what was decoded before it stands.

Encrypted payloads are AES-128-CCM with a 4-byte MIC and no associated data; the nonce
is MAC (6, display order) + UUID 0xFCD2 little-endian + device-info byte + counter (4).
Replay protection (the counter must increase) needs memory across packets, so it lives
in the driver, not here.
"""

from __future__ import annotations

from typing import NamedTuple

from drivers.ble.common import Decoded, Measurement, NoKey, WrongKey, format_mac, mac_bytes
from drivers.exc import DecodeError

UUID16_LE = b"\xd2\xfc"


class Obj(NamedTuple):
    """One object id: what it measures, its size, signedness, factor and unit."""

    name: str
    length: int  # bytes; 0 = variable (first byte is the length)
    signed: bool
    factor: float
    unit: str
    kind: str = "measure"  # measure | binary | packet_id | event | meta | text | raw


def _m(name: str, length: int, factor: float = 1, unit: str = "count", signed: bool = False) -> Obj:
    return Obj(name, length, signed, factor, unit)


def _b(name: str) -> Obj:
    """A binary sensor: 0 or 1, recorded like PROTOCOL's ``motion`` (unit ``count``)."""
    return Obj(name, 1, False, 1, "count", "binary")


#: BTHome v2 object ids. Names and units are docs/protocol.md's where it has the quantity
#: (pressure is sent in 0.01 hPa, which is 1 Pa; acceleration has no axis in BTHome).
OBJECTS: dict[int, Obj] = {
    0x00: Obj("packet_id", 1, False, 1, "", "packet_id"),
    0x01: _m("battery", 1, 1, "%EL"),
    0x02: _m("temperature", 2, 0.01, "Cel", signed=True),
    0x03: _m("humidity", 2, 0.01, "%RH"),
    0x04: _m("pressure", 3, 1, "Pa"),
    0x05: _m("illuminance", 3, 0.01, "lx"),
    0x06: _m("mass", 2, 0.01, "kg"),
    0x07: _m("mass_lb", 2, 0.01, "lb"),
    0x08: _m("dewpoint", 2, 0.01, "Cel", signed=True),
    0x09: _m("count", 1),
    0x0A: _m("energy", 3, 0.001, "kWh"),
    0x0B: _m("power", 3, 0.01, "W"),
    0x0C: _m("voltage", 2, 0.001, "V"),
    0x0D: _m("pm2_5", 2, 1, "ug/m3"),
    0x0E: _m("pm10", 2, 1, "ug/m3"),
    0x0F: _b("generic"),
    0x10: _b("power_on"),
    0x11: _b("opening"),
    0x12: _m("co2", 2, 1, "ppm"),
    0x13: _m("tvoc", 2, 1, "ug/m3"),
    0x14: _m("moisture", 2, 0.01, "%"),
    0x15: _b("battery_low"),
    0x16: _b("battery_charging"),
    0x17: _b("carbon_monoxide"),
    0x18: _b("cold"),
    0x19: _b("connectivity"),
    0x1A: _b("door"),
    0x1B: _b("garage_door"),
    0x1C: _b("gas"),
    0x1D: _b("heat"),
    0x1E: _b("light"),
    0x1F: _b("lock"),
    0x20: _b("moisture_detected"),
    0x21: _b("motion"),
    0x22: _b("moving"),
    0x23: _b("occupancy"),
    0x24: _b("plug"),
    0x25: _b("presence"),
    0x26: _b("problem"),
    0x27: _b("running"),
    0x28: _b("safety"),
    0x29: _b("smoke"),
    0x2A: _b("sound"),
    0x2B: _b("tamper"),
    0x2C: _b("vibration"),
    0x2D: _b("window"),
    0x2E: _m("humidity", 1, 1, "%RH"),
    0x2F: _m("moisture", 1, 1, "%"),
    0x3A: Obj("button", 1, False, 1, "", "event"),
    0x3C: Obj("dimmer", 2, False, 1, "", "event"),
    0x3D: _m("count", 2),
    0x3E: _m("count", 4),
    0x3F: _m("rotation", 2, 0.1, "deg", signed=True),
    0x40: _m("distance", 2, 0.001, "m"),  # sent in mm
    0x41: _m("distance", 2, 0.1, "m"),
    0x42: _m("duration", 3, 0.001, "s"),
    0x43: _m("current", 2, 0.001, "A"),
    0x44: _m("speed", 2, 0.01, "m/s"),
    0x45: _m("temperature", 2, 0.1, "Cel", signed=True),
    0x46: _m("uv_index", 1, 0.1),
    0x47: _m("volume", 2, 0.1, "l"),
    0x48: _m("volume", 2, 0.001, "l"),  # sent in mL
    0x49: _m("volume_flow_rate", 2, 0.001, "m3/h"),
    0x4A: _m("voltage", 2, 0.1, "V"),
    0x4B: _m("gas", 3, 0.001, "m3"),
    0x4C: _m("gas", 4, 0.001, "m3"),
    0x4D: _m("energy", 4, 0.001, "kWh"),
    0x4E: _m("volume", 4, 0.001, "l"),
    0x4F: _m("water", 4, 0.001, "l"),
    0x50: Obj("timestamp", 4, False, 1, "s", "meta"),
    0x51: _m("acceleration", 2, 0.001, "m/s2"),
    0x52: _m("gyroscope", 2, 0.001, "deg/s"),
    0x53: Obj("text", 0, False, 1, "", "text"),
    0x54: Obj("raw", 0, False, 1, "", "raw"),
    0x55: _m("volume_storage", 4, 0.001, "l"),
    0x56: _m("conductivity", 2, 1, "uS/cm"),
    0x57: _m("temperature", 1, 1, "Cel", signed=True),
    0x58: _m("temperature", 1, 0.35, "Cel", signed=True),
    0x59: _m("count", 1, signed=True),
    0x5A: _m("count", 2, signed=True),
    0x5B: _m("count", 4, signed=True),
    0x5C: _m("power", 4, 0.01, "W", signed=True),
    0x5D: _m("current", 2, 0.001, "A", signed=True),
    0x5E: _m("direction", 2, 0.01, "deg"),
    0x5F: _m("precipitation", 2, 0.1, "mm"),
    0x60: _m("channel", 1),
    0x61: _m("rotational_speed", 2, 1, "rpm"),
    0x62: _m("speed", 4, 0.000001, "m/s", signed=True),
    0x63: _m("acceleration", 4, 0.000001, "m/s2", signed=True),
    0xF0: Obj("device_type_id", 2, False, 1, "", "meta"),
    0xF1: Obj("firmware_version", 4, False, 1, "", "meta"),
    0xF2: Obj("firmware_version", 3, False, 1, "", "meta"),
}


def _digits(factor: float) -> int:
    """Decimal places a factor needs, so 2506 * 0.01 is 25.06 and not 25.060000000000002."""
    text = f"{factor:.10f}".rstrip("0")
    return len(text.split(".")[1]) if "." in text else 0


_DIGITS = {oid: _digits(o.factor) for oid, o in OBJECTS.items()}


def nonce(mac: str | bytes, device_info: int, counter: bytes) -> bytes:
    """The AES-CCM nonce: MAC (display order) + 0xFCD2 little-endian + info byte + counter."""
    raw_mac = mac if isinstance(mac, bytes) else mac_bytes(mac)
    return raw_mac + UUID16_LE + bytes([device_info]) + counter


def decrypt(device_info: int, body: bytes, mac: bytes, key: bytes) -> tuple[bytes, int]:
    """Decrypt an encrypted payload body; return (plaintext objects, counter).

    ``body`` is everything after the device-info byte (and MAC, if included):
    ciphertext + counter (4) + MIC (4). Raises :class:`WrongKey` when the MIC does not
    verify and :class:`DecodeError` when the body is too short to be encrypted BTHome.
    """
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESCCM

    if len(key) != 16:
        raise DecodeError(f"BTHome bind key must be 16 bytes, got {len(key)}")
    if len(body) < 9:
        raise DecodeError(f"encrypted BTHome payload too short ({len(body)} bytes after the header; need ≥ 9)")
    ciphertext, counter, mic = body[:-8], body[-8:-4], body[-4:]
    try:
        plain = AESCCM(key, tag_length=4).decrypt(nonce(mac, device_info, counter), ciphertext + mic, None)
    except InvalidTag:
        raise WrongKey("BTHome MIC check failed: wrong bind key (or a corrupted packet)") from None
    return plain, int.from_bytes(counter, "little")


def encrypt(plain_objects: bytes, mac: str, key: bytes, counter: int, *, device_info: int = 0x41) -> bytes:
    """Build an encrypted BTHome payload (device info + ciphertext + counter + MIC).

    The inverse of :func:`decode` for encrypted frames: used by the tests, the fake
    radio and the benchmark to make valid frames with a known key.
    """
    from cryptography.hazmat.primitives.ciphers.aead import AESCCM

    ctr = counter.to_bytes(4, "little")
    sealed = AESCCM(key, tag_length=4).encrypt(nonce(mac, device_info, ctr), plain_objects, None)
    return bytes([device_info]) + sealed[:-4] + ctr + sealed[-4:]


def parse_objects(data: bytes) -> tuple[list[Measurement], int | None, dict[str, object]]:
    """Parse a (plaintext) object list: measurements, the packet id and the extras."""
    out: list[Measurement] = []
    extra: dict[str, object] = {}
    packet_id: int | None = None
    seen: dict[str, int] = {}
    i, n = 0, len(data)
    while i < n:
        oid = data[i]
        obj = OBJECTS.get(oid)
        if obj is None:
            # The spec: an unknown id stops parsing, its length being unknown.
            extra["stopped_at_unknown_object"] = f"0x{oid:02x}"
            break
        i += 1
        length = obj.length
        if length == 0:
            if i >= n:
                raise DecodeError(f"BTHome object 0x{oid:02x} truncated: missing its length byte")
            length = data[i]
            i += 1
        if i + length > n:
            raise DecodeError(f"BTHome object 0x{oid:02x} truncated: needs {length} bytes, {n - i} left")
        raw = data[i : i + length]
        i += length
        if obj.kind == "text":
            extra["text"] = raw.decode("utf-8", "replace")
            continue
        if obj.kind == "raw":
            extra["raw"] = raw.hex()
            continue
        value = int.from_bytes(raw, "little", signed=obj.signed)
        if obj.kind == "packet_id":
            packet_id = value
        elif obj.kind in ("event", "meta"):
            extra[obj.name] = value
        else:
            count = seen[obj.name] = seen.get(obj.name, 0) + 1
            name = obj.name if count == 1 else f"{obj.name}_{count}"
            scaled = round(value * obj.factor, _DIGITS[oid]) if obj.factor != 1 else value
            out.append(Measurement(name, float(scaled), obj.unit))
    return out, packet_id, extra


def decode(payload: bytes, mac: str | None = None, key: bytes | None = None) -> Decoded:
    """Decode one BTHome v2 service-data payload.

    ``mac`` (display order, as bleak reports it) is needed only for encrypted frames
    without the MAC bit; ``key`` is the 16-byte bind key. Raises :class:`NoKey` for an
    encrypted frame without a key, :class:`WrongKey` when the MIC fails, and
    :class:`DecodeError` for anything that is not BTHome v2.
    """
    if not payload:
        raise DecodeError("empty BTHome payload")
    info = payload[0]
    version = (info >> 5) & 0x07
    if version != 2:
        raise DecodeError(f"BTHome version {version} is not supported (device info 0x{info:02x})")
    encrypted = bool(info & 0x01)
    body = payload[1:]
    payload_mac: str | None = None
    raw_mac: bytes | None = None
    if info & 0x02:
        if len(body) < 6:
            raise DecodeError("BTHome payload truncated: MAC flag set but fewer than 6 bytes follow")
        raw_mac = body[:6][::-1]
        payload_mac = format_mac(raw_mac)
        body = body[6:]
    counter: int | None = None
    if encrypted:
        if key is None:
            raise NoKey("encrypted BTHome payload and no bind key configured for this device")
        if raw_mac is None:
            if mac is None:
                raise DecodeError("encrypted BTHome payload: the advertiser's MAC is needed for the nonce")
            raw_mac = mac_bytes(mac)
        body, counter = decrypt(info, body, raw_mac, key)
    measurements, packet_id, extra = parse_objects(body)
    if info & 0x04:
        extra["trigger_based"] = True
    return Decoded(
        format="bthome",
        measurements=tuple(measurements),
        sequence=packet_id,
        counter=counter,
        encrypted=encrypted,
        mac=payload_mac,
        extra=extra,
    )
