"""Adapter recovery: the BlueZ boundary behind one small seam, and the ladder of resets.

On a Raspberry Pi the onboard (UART) adapter stalls after hours: scanning stops without
an error, or every start fails with ``org.bluez.Error.InProgress`` / ``NotReady``, or
the adapter vanishes from D-Bus. What Home Assistant does (``bluetooth-auto-recovery``,
``habluetooth``) is what a gateway must do too: power-cycle the adapter through BlueZ,
and if that is not enough reset the controller, with a backoff so a dead adapter is not
hammered. :class:`AdapterControl` is that boundary, one method per step; the real one,
:class:`BluezAdapterControl`, speaks D-Bus (``dbus-fast``, which bleak already uses on
Linux) and, for the controller reset, the kernel's HCI ioctls or — where installed —
``bluetooth-auto-recovery`` (management-socket power cycle, then a USB reset). The fake,
:class:`drivers.ble.fake.FakeAdapterControl`, drives the fake radio's adapters.

The ladder, per adapter: the first recovery is a power cycle; a recovery within
``stable_s`` of the last one is a controller reset; each waits for the previous one's
backoff (``base × 2^n``, capped). An adapter scanning without trouble for ``stable_s``
starts the ladder again from the bottom. Each step is a ``ble_adapter_reset`` event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from dataclasses import dataclass
from typing import Any, Protocol

from drivers.exc import DriverUnavailable

log = logging.getLogger(__name__)

#: Error texts from BlueZ (and bleak) that a reset can cure.
RESET_WORTHY = (
    "org.bluez.Error.InProgress",
    "org.bluez.Error.NotReady",
    "org.bluez.Error.Failed",
    "not found",  # bleak: "adapter 'hci1' not found": vanished
    "powered off",
    "powered_off",
    "No discovery started",
)


@dataclass
class AdapterState:
    """What BlueZ says of one adapter."""

    present: bool
    powered: bool | None = None
    discovering: bool | None = None
    address: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"present": self.present, "powered": self.powered, "discovering": self.discovering,
                "address": self.address}


class AdapterControl(Protocol):
    """The BlueZ boundary of adapter recovery (one real implementation, one fake)."""

    async def state(self, adapter: str) -> AdapterState:
        """Present, powered, discovering. Raises DriverUnavailable when BlueZ cannot be asked."""

    async def power_cycle(self, adapter: str) -> None:
        """Power the adapter off and on again through BlueZ. Raises DriverUnavailable on failure."""

    async def reset(self, adapter: str) -> None:
        """Reset the controller itself (HCI reset / USB reset), then power it on."""


def reset_worthy(message: str) -> bool:
    """Whether a scan error says the adapter is stuck (as opposed to BlueZ missing altogether)."""
    return any(marker.lower() in message.lower() for marker in RESET_WORTHY)


class Ladder:
    """When to reset one adapter next, and how hard (see the module docstring)."""

    def __init__(self, *, base_s: float = 30.0, cap_s: float = 1800.0, stable_s: float = 600.0) -> None:
        self.base_s, self.cap_s, self.stable_s = base_s, cap_s, stable_s
        self.attempt = 0
        self.last_mono: float | None = None

    def due(self, now: float) -> bool:
        return self.last_mono is None or now >= self.last_mono + self.delay()

    def delay(self) -> float:
        return 0.0 if self.attempt == 0 else min(self.cap_s, self.base_s * 2 ** (self.attempt - 1))

    def next_step(self, now: float) -> str:
        if self.last_mono is not None and now - self.last_mono >= self.stable_s + self.delay():
            self.attempt = 0  # worked for a good while since: start from the bottom again
        return "power_cycle" if self.attempt == 0 else "reset"

    def done(self, now: float) -> None:
        self.attempt += 1
        self.last_mono = now

    def healthy(self, since_mono: float, now: float) -> None:
        """The adapter has scanned without trouble since ``since_mono``."""
        if self.attempt and now - since_mono >= self.stable_s:
            self.attempt = 0


# -- the real boundary ----------------------------------------------------------------
_ADAPTER_IFACE = "org.bluez.Adapter1"
_HCIDEVUP = 0x400448C9  # _IOW('H', 201, int)
_HCIDEVDOWN = 0x400448CA  # _IOW('H', 202, int)


class BluezAdapterControl:
    """:class:`AdapterControl` over BlueZ's D-Bus API (dbus-fast) and the kernel's HCI ioctls."""

    def __init__(self, *, settle_s: float = 2.0, timeout_s: float = 10.0, bus_address: str | None = None) -> None:
        self.settle_s = settle_s
        self.timeout_s = timeout_s
        self.bus_address = bus_address  # None: the system bus

    async def _bus(self) -> Any:
        try:
            from dbus_fast import BusType
            from dbus_fast.aio import MessageBus
        except ImportError as exc:  # pragma: no cover - a dependency of bleak on Linux
            raise DriverUnavailable(f"dbus-fast is not installed: {exc}") from exc
        try:
            if self.bus_address:
                bus = MessageBus(bus_address=self.bus_address)
            else:
                bus = MessageBus(bus_type=BusType.SYSTEM)
            async with asyncio.timeout(self.timeout_s):
                return await bus.connect()
        except (OSError, TimeoutError, ValueError) as exc:
            raise DriverUnavailable(f"the D-Bus system bus is not reachable: {exc}") from exc

    async def _call(self, bus: Any, adapter: str, member: str, signature: str, body: list[Any]) -> Any:
        from dbus_fast import Message, MessageType

        msg = Message(destination="org.bluez", path=f"/org/bluez/{adapter}",
                      interface="org.freedesktop.DBus.Properties", member=member,
                      signature=signature, body=body)
        async with asyncio.timeout(self.timeout_s):
            reply = await bus.call(msg)
        if reply.message_type == MessageType.ERROR:
            raise _BluezError(reply.error_name or "org.bluez.Error", " ".join(map(str, reply.body)))
        return reply.body

    async def state(self, adapter: str) -> AdapterState:
        bus = await self._bus()
        try:
            try:
                (props,) = await self._call(bus, adapter, "GetAll", "s", [_ADAPTER_IFACE])
            except _BluezError as exc:
                if exc.name in ("org.freedesktop.DBus.Error.UnknownObject", "org.freedesktop.DBus.Error.UnknownMethod",
                                "org.freedesktop.DBus.Error.InvalidArgs"):
                    return AdapterState(present=False)
                if exc.name == "org.freedesktop.DBus.Error.ServiceUnknown":
                    raise DriverUnavailable("BlueZ (bluetoothd) is not running") from None
                raise DriverUnavailable(f"BlueZ refused to describe {adapter}: {exc}") from None

            def value(name: str) -> Any:
                v = props.get(name)
                return getattr(v, "value", v)

            return AdapterState(present=True, powered=value("Powered"), discovering=value("Discovering"),
                                address=value("Address"))
        except TimeoutError:
            raise DriverUnavailable(f"BlueZ did not answer about {adapter} within {self.timeout_s:g} s") from None
        finally:
            bus.disconnect()

    async def _set_powered(self, adapter: str, on: bool) -> None:
        from dbus_fast import Variant

        bus = await self._bus()
        try:
            await self._call(bus, adapter, "Set", "ssv", [_ADAPTER_IFACE, "Powered", Variant("b", on)])
        except _BluezError as exc:
            raise DriverUnavailable(f"BlueZ could not power {'on' if on else 'off'} {adapter}: {exc}") from None
        except TimeoutError:
            raise DriverUnavailable(f"BlueZ did not answer powering {adapter} within {self.timeout_s:g} s") from None
        finally:
            bus.disconnect()

    async def _wait_powered(self, adapter: str, on: bool) -> None:
        deadline = time.monotonic() + self.timeout_s
        while True:
            st = await self.state(adapter)
            if st.present and st.powered is on:
                return
            if time.monotonic() >= deadline:
                raise DriverUnavailable(f"{adapter} still {'off' if on else 'on'} {self.timeout_s:g} s after asking")
            await asyncio.sleep(0.2)  # BlueZ has no "powered" wait: poll the property

    async def power_cycle(self, adapter: str) -> None:
        st = await self.state(adapter)
        if not st.present:
            raise DriverUnavailable(f"{adapter} is not present: a power cycle cannot reach it")
        if st.powered:
            await self._set_powered(adapter, False)
            await self._wait_powered(adapter, False)
            await asyncio.sleep(self.settle_s)  # as bluetooth-auto-recovery: let the controller settle
        await self._set_powered(adapter, True)
        await self._wait_powered(adapter, True)

    async def reset(self, adapter: str) -> None:
        index = _hci_index(adapter)
        try:
            from bluetooth_auto_recovery import recover_adapter
        except ImportError:
            recover_adapter = None
        # bluetooth-auto-recovery finds the adapter by index and address (it may have moved
        # to another hciN), and with gone_silent=True goes on to a USB reset when a power
        # cycle through the management socket is not enough: the reset step follows a
        # stalled scan. Without the library, or without an address, the kernel's HCI down/up.
        address = None
        if recover_adapter is not None:
            with contextlib.suppress(DriverUnavailable):
                address = (await self.state(adapter)).address
        if recover_adapter is None or not address:
            await asyncio.to_thread(_hci_down_up, index)
        elif not await recover_adapter(index, address, gone_silent=True):
            raise DriverUnavailable(f"bluetooth-auto-recovery could not reset {adapter} ({address})")
        await asyncio.sleep(self.settle_s)
        with contextlib.suppress(DriverUnavailable):
            await self._set_powered(adapter, True)  # a reset leaves some controllers off
        await self._wait_powered(adapter, True)


class _BluezError(Exception):
    def __init__(self, name: str, text: str) -> None:
        super().__init__(f"{name}: {text}" if text else name)
        self.name = name


def _hci_index(adapter: str) -> int:
    if not adapter.startswith("hci") or not adapter[3:].isdigit():
        raise DriverUnavailable(f"cannot reset adapter {adapter!r}: not an hciN name")
    return int(adapter[3:])


def _hci_down_up(index: int) -> None:
    """Take the controller down and up through the kernel (needs CAP_NET_ADMIN)."""
    import fcntl

    try:
        sock = socket.socket(socket.AF_BLUETOOTH, socket.SOCK_RAW, socket.BTPROTO_HCI)  # type: ignore[attr-defined]
    except (OSError, AttributeError) as exc:
        raise DriverUnavailable(f"no HCI socket for hci{index}: {exc}") from exc
    try:
        fcntl.ioctl(sock.fileno(), _HCIDEVDOWN, index)
        time.sleep(1.0)  # in a worker thread: the controller needs a moment down
        fcntl.ioctl(sock.fileno(), _HCIDEVUP, index)
    except PermissionError as exc:
        raise DriverUnavailable(f"resetting hci{index} needs CAP_NET_ADMIN (see README, BLE): {exc}") from exc
    except OSError as exc:
        raise DriverUnavailable(f"resetting hci{index} failed: {exc}") from exc
    finally:
        sock.close()
