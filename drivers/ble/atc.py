"""ATC1441 and pvvx advertisements (service data 0x181A), LYWSD03MMC-style.

Told apart by length, as both firmwares define them (payload as bleak delivers it,
the UUID stripped):

ATC1441, 13 bytes, big-endian::

    MAC (6, display order) | temperature int16 0.1 Cel | humidity uint8 % |
    battery uint8 % | battery uint16 mV | frame counter uint8

pvvx custom, 15 bytes, little-endian::

    MAC (6, reversed) | temperature int16 0.01 Cel | humidity uint16 0.01 % |
    battery uint16 mV | battery uint8 % | counter uint8 | flags uint8

Encrypted (the firmwares' "encrypted custom" and "encrypted ATC1441" formats, as
pvvx's ATC_MiThermometer and ble_monitor's ``atc.py`` define them), AES-128-CCM with a
4-byte MIC and the one byte 0x11 as associated data::

    pvvx, 11 bytes:    counter (1) | ciphertext (6) | MIC (4)
                       plaintext: temperature int16 0.01 Cel | humidity uint16 0.01 % |
                                  battery uint8 % | flags uint8
    ATC1441, 8 bytes:  counter (1) | ciphertext (3) | MIC (4)
                       plaintext: (temperature + 40) × 2 uint8 | humidity × 2 uint8 |
                                  battery % (7 bits) + trigger (1 bit)

    nonce = MAC (6, reversed) | AD length | 0x16 | 0x1A 0x18 | counter

(the AD length is the payload length + 3: the service-data element's own header, which
bleak strips and the nonce still includes). The encrypted formats carry no voltage:
ble_monitor derives one from the percentage; we record only what the sensor measured.
Their counter is one byte, which wraps every 256 frames: it tells duplicates apart but
cannot prove freshness, so these frames have no replay protection beyond duplicates
(the format's limit; BTHome's 32-bit counter is the one to use where that matters).
"""

from __future__ import annotations

import struct

from drivers.ble.common import Decoded, Measurement, NoKey, WrongKey, format_mac, mac_bytes
from drivers.exc import DecodeError

ATC1441_LENGTH = 13
PVVX_LENGTH = 15
PVVX_ENCRYPTED_LENGTH = 11
ATC1441_ENCRYPTED_LENGTH = 8
_ATC = struct.Struct(">6shBBHB")
_PVVX = struct.Struct("<6shHHBBB")
_PVVX_PLAIN = struct.Struct("<hHBB")
_AAD = b"\x11"


def nonce(mac: str, payload_length: int, counter: int) -> bytes:
    """The AES-CCM nonce of an encrypted frame: reversed MAC + the AD header + counter."""
    return mac_bytes(mac)[::-1] + bytes([payload_length + 3, 0x16, 0x1A, 0x18, counter])


def encrypt(plain: bytes, mac: str, key: bytes, counter: int) -> bytes:
    """Build an encrypted payload (counter + ciphertext + MIC): the inverse of :func:`decode`.

    ``plain`` is 6 bytes (pvvx) or 3 bytes (ATC1441). For tests, the fake radio and benches.
    """
    from cryptography.hazmat.primitives.ciphers.aead import AESCCM

    length = len(plain) + 5
    sealed = AESCCM(key, tag_length=4).encrypt(nonce(mac, length, counter & 0xFF), plain, _AAD)
    return bytes([counter & 0xFF]) + sealed


def _decrypt(payload: bytes, mac: str | None, key: bytes | None) -> bytes:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESCCM

    if key is None:
        raise NoKey("encrypted ATC/pvvx payload and no bind key configured for this device")
    if len(key) != 16:
        raise DecodeError(f"ATC/pvvx bind key must be 16 bytes, got {len(key)}")
    if mac is None:
        raise DecodeError("encrypted ATC/pvvx payload: the advertiser's MAC is needed for the nonce")
    try:
        return AESCCM(key, tag_length=4).decrypt(nonce(mac, len(payload), payload[0]), payload[1:], _AAD)
    except InvalidTag:
        raise WrongKey("ATC/pvvx MIC check failed: wrong bind key (or a corrupted packet)") from None


def decode(payload: bytes, mac: str | None = None, key: bytes | None = None) -> Decoded:
    """Decode one ATC1441 or pvvx payload; ``mac`` and ``key`` are needed for encrypted ones."""
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
    if n == PVVX_ENCRYPTED_LENGTH:
        t, h, batt_pct, flags = _PVVX_PLAIN.unpack(_decrypt(payload, mac, key))
        return Decoded(
            format="pvvx_encrypted",
            measurements=(
                Measurement("temperature", round(t * 0.01, 2), "Cel"),
                Measurement("humidity", round(h * 0.01, 2), "%RH"),
                Measurement("battery", float(min(batt_pct, 100)), "%EL"),
            ),
            sequence=payload[0],
            encrypted=True,
            extra={"flags": flags},
        )
    if n == ATC1441_ENCRYPTED_LENGTH:
        t2, h2, batt = _decrypt(payload, mac, key)
        return Decoded(
            format="atc1441_encrypted",
            measurements=(
                Measurement("temperature", t2 / 2 - 40.0, "Cel"),
                Measurement("humidity", h2 / 2, "%RH"),
                Measurement("battery", float(min(batt & 0x7F, 100)), "%EL"),
            ),
            sequence=payload[0],
            encrypted=True,
            extra={"trigger": batt >> 7},
        )
    raise DecodeError(
        f"not an ATC1441 ({ATC1441_LENGTH}), pvvx custom ({PVVX_LENGTH}) or encrypted "
        f"({PVVX_ENCRYPTED_LENGTH}, {ATC1441_ENCRYPTED_LENGTH}) payload: {n} bytes"
    )
