"""The checksums serial instruments put on their frames and lines. Pure functions.

``nmea_xor``
    NMEA 0183: XOR of every byte between ``$`` (or ``!``) and ``*``, written as two hex
    digits after the ``*``.
``crc16_xmodem``
    CRC-16/XMODEM (poly 0x1021, init 0x0000, no reflection): check value 0x31C3 for
    ``b"123456789"``. The standard library has it in C as :func:`binascii.crc_hqx`.

Modbus RTU's CRC-16/MODBUS is pymodbus's business: the driver leaves the framing to it.
"""

from __future__ import annotations

import binascii

from drivers.exc import ChecksumError

__all__ = ["ChecksumError", "crc16_xmodem", "nmea_xor"]


def nmea_xor(data: bytes) -> int:
    """XOR of all bytes of ``data`` (the part between ``$`` and ``*``)."""
    acc = 0
    for b in data:
        acc ^= b
    return acc


def crc16_xmodem(data: bytes, crc: int = 0) -> int:
    """CRC-16/XMODEM of ``data``; ``crc`` continues a running value over several chunks."""
    return binascii.crc_hqx(data, crc)
