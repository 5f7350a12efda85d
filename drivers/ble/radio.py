"""Starting a bleak scanner, and translating bleak's errors into ours (once, here).

``mode = "auto"`` asks for passive scanning first (BlueZ needs its advertisement-monitor
API for that, still experimental in many distributions) and falls back to active
scanning when BlueZ refuses. Passive scanning on BlueZ needs "or patterns"; ours match
the three payload families the decoders know.
"""

from __future__ import annotations

import logging
from typing import Any

from drivers.exc import DriverUnavailable

log = logging.getLogger(__name__)


def or_patterns() -> list[Any]:
    """BlueZ advertisement-monitor patterns for BTHome, ATC/pvvx and Ruuvi payloads."""
    from bleak.args.bluez import OrPattern
    from bleak.assigned_numbers import AdvertisementDataType

    return [
        OrPattern(0, AdvertisementDataType.SERVICE_DATA_UUID16, b"\xd2\xfc"),  # BTHome 0xFCD2
        OrPattern(0, AdvertisementDataType.SERVICE_DATA_UUID16, b"\x1a\x18"),  # ATC/pvvx 0x181A
        OrPattern(0, AdvertisementDataType.MANUFACTURER_SPECIFIC_DATA, b"\x99\x04"),  # Ruuvi 0x0499
    ]


def translate(exc: BaseException, *, adapter: str | None, driver: str | None = None) -> DriverUnavailable:
    """One of bleak's (or D-Bus's) start-up errors as a :class:`DriverUnavailable`."""
    from bleak.exc import BleakBluetoothNotAvailableError, BleakError

    where = f"adapter {adapter!r}" if adapter else "the default adapter"
    if isinstance(exc, BleakBluetoothNotAvailableError):
        msg = f"Bluetooth not available on {where} ({exc.reason.name.lower()}): {exc.args[0]}"
    elif isinstance(exc, BleakError):
        msg = f"BLE scan could not start on {where}: {exc}"
    elif isinstance(exc, (FileNotFoundError, ConnectionError)):
        msg = f"BlueZ is not reachable (no D-Bus system bus or bluetoothd): {exc}"
    else:
        msg = f"BLE scan could not start on {where}: {type(exc).__name__}: {exc}"
    return DriverUnavailable(msg, driver=driver)


async def start_scanner(
    callback: Any,
    *,
    mode: str = "auto",
    adapter: str | None = None,
    backend: Any = None,
    driver: str | None = None,
) -> tuple[Any, str]:
    """Start a ``BleakScanner`` delivering to ``callback``; return it and the mode it runs in.

    Raises :class:`DriverUnavailable` when bleak is missing or no scan can be started.
    """
    try:
        from bleak import BleakScanner
    except ImportError as exc:  # pragma: no cover - bleak is a dependency
        raise DriverUnavailable(f"bleak is not installed: {exc}", driver=driver) from exc
    modes = ["passive", "active"] if mode == "auto" else [mode]
    last: BaseException | None = None
    for m in modes:
        bluez: dict[str, Any] = {}
        if adapter:
            bluez["adapter"] = adapter
        if m == "passive":
            bluez["or_patterns"] = or_patterns()
        try:
            scanner = BleakScanner(callback, None, m, bluez=bluez, backend=backend)  # type: ignore[arg-type]
            await scanner.start()
        except Exception as exc:  # noqa: BLE001 - every start failure is translated below
            last = exc
            if m == "passive" and mode == "auto":
                log.info("passive BLE scanning refused (%s); falling back to active scanning", exc)
            continue
        return scanner, m
    assert last is not None
    raise translate(last, adapter=adapter, driver=driver) from last
