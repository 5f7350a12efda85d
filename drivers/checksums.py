"""The checksums serial instruments put on their frames and lines. Pure functions.

``nmea_xor``
    NMEA 0183: XOR of every byte between ``$`` (or ``!``) and ``*``, written as two hex
    digits after the ``*``.
``crc16_xmodem``
    CRC-16/XMODEM (poly 0x1021, init 0x0000, no reflection): check value 0x31C3 for
    ``b"123456789"``.
``crc16_modbus``
    CRC-16/MODBUS (poly 0x8005 reflected = 0xA001, init 0xFFFF): check value 0x4B37 for
    ``b"123456789"``; sent low byte first at the end of an RTU frame.
"""

from __future__ import annotations

from drivers.exc import ChecksumError

__all__ = ["ChecksumError", "crc16_xmodem", "nmea_xor"]


def nmea_xor(data: bytes) -> int:
    """XOR of all bytes of ``data`` (the part between ``$`` and ``*``)."""
    acc = 0
    for b in data:
        acc ^= b
    return acc


def _table_xmodem() -> list[int]:
    table = []
    for i in range(256):
        crc = i << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


def _table_modbus() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_XMODEM = _table_xmodem()
_MODBUS = _table_modbus()


def crc16_xmodem(data: bytes, crc: int = 0) -> int:
    """CRC-16/XMODEM of ``data`` (table driven)."""
    for b in data:
        crc = ((crc << 8) & 0xFFFF) ^ _XMODEM[((crc >> 8) ^ b) & 0xFF]
    return crc


def crc16_modbus(data: bytes) -> int:
    """CRC-16/MODBUS of ``data``; the frame carries it little-endian."""
    crc = 0xFFFF
    for b in data:
        crc = (crc >> 8) ^ _MODBUS[(crc ^ b) & 0xFF]
    return crc
