"""Drivers by name, imported lazily (after python-can's interface registry).

A config file names a driver by its ``type``; the module behind it is imported only
when a config uses it, so a serial-only gateway never imports bleak, and a driver whose
library is missing is reported as unavailable instead of breaking every other driver.
"""

from __future__ import annotations

import difflib
import importlib

from drivers.base import Driver
from drivers.exc import DriverUnavailable, UnknownDriver

#: type name -> "module:Class". Add a line here to add a driver.
DRIVERS: dict[str, str] = {
    "sim": "drivers.sim:SimDriver",
    "nmea": "drivers.nmea:NmeaDriver",
    "modbus": "drivers.modbus:ModbusDriver",
    "ascii": "drivers.ascii:AsciiDriver",
    "ble": "drivers.ble.scanner:BleDriver",
}


def names() -> list[str]:
    """The driver types this build knows, sorted."""
    return sorted(DRIVERS)


def get(type_name: str) -> type[Driver]:
    """The driver class for ``type_name``, importing its module now.

    Raises :class:`UnknownDriver` (with a "did you mean") for an unknown name and
    :class:`DriverUnavailable` when the module or a library it needs cannot be imported.
    """
    try:
        target = DRIVERS[type_name]
    except KeyError:
        close = difflib.get_close_matches(type_name, DRIVERS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownDriver(f"unknown driver type {type_name!r}{hint} (known: {', '.join(names())})",
                            type_name=type_name, known=names()) from None
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise DriverUnavailable(f"driver {type_name!r} cannot be loaded: {exc}", driver=type_name) from exc
    cls: type[Driver] = getattr(module, class_name)
    return cls
