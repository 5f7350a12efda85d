"""The real BlueZ adapter control, over a real D-Bus: a private dbus-daemon with a BlueZ stand-in.

Only BlueZ itself is stood in for (an ``org.bluez`` service exporting ``Adapter1`` objects
with dbus-fast); the bus, the messages and :class:`BluezAdapterControl` are the real ones.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest
from dbus_fast import DBusError
from dbus_fast.aio import MessageBus
from dbus_fast.service import PropertyAccess, ServiceInterface, dbus_property

from drivers.ble.adapter import BluezAdapterControl
from drivers.exc import DriverUnavailable

pytestmark = pytest.mark.skipif(shutil.which("dbus-daemon") is None, reason="needs dbus-daemon")

CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


class FakeAdapter1(ServiceInterface):
    """org.bluez.Adapter1 as BlueZ exports it, with the properties recovery uses."""

    def __init__(self, refuse: bool = False) -> None:
        super().__init__("org.bluez.Adapter1")
        self.powered = True
        self.refuse = refuse
        self.sets: list[bool] = []

    @dbus_property()
    def Powered(self) -> "b":  # noqa: F821, N802, UP037 - a D-Bus signature, BlueZ's name
        return self.powered

    @Powered.setter
    def Powered(self, value: "b") -> None:  # noqa: F821, N802, UP037
        if self.refuse:
            raise DBusError("org.bluez.Error.Failed", "Failed to set mode")
        self.sets.append(value)
        self.powered = value

    @dbus_property(access=PropertyAccess.READ)
    def Discovering(self) -> "b":  # noqa: F821, N802, UP037
        return False

    @dbus_property(access=PropertyAccess.READ)
    def Address(self) -> "s":  # noqa: F821, N802, UP037
        return "B8:27:EB:00:00:01"


@pytest.fixture
def bus_address(tmp_path: Path):
    socket = tmp_path / "bus"
    conf = tmp_path / "bus.conf"
    conf.write_text(CONFIG.format(socket=socket))
    with subprocess.Popen(["dbus-daemon", "--config-file", str(conf), "--nofork", "--print-address"],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as proc:
        try:
            address = proc.stdout.readline().strip() if proc.stdout else ""
            assert address, "dbus-daemon did not start"
            yield address
        finally:
            proc.terminate()
            proc.wait(5)


async def serve(address: str, adapters: dict[str, FakeAdapter1]) -> MessageBus:
    bus = await MessageBus(bus_address=address).connect()
    for name, adapter in adapters.items():
        bus.export(f"/org/bluez/{name}", adapter)
    await bus.request_name("org.bluez")
    return bus


def test_state_reads_the_adapter_properties_and_a_missing_adapter_is_not_present(bus_address):
    async def main():
        bluez = await serve(bus_address, {"hci0": FakeAdapter1()})
        try:
            control = BluezAdapterControl(bus_address=bus_address, settle_s=0)
            st = await control.state("hci0")
            assert (st.present, st.powered, st.discovering, st.address) == (True, True, False, "B8:27:EB:00:00:01")
            assert (await control.state("hci7")).present is False
        finally:
            bluez.disconnect()

    asyncio.run(asyncio.wait_for(main(), 20))


def test_power_cycle_sets_powered_off_then_on_through_bluez(bus_address):
    async def main():
        adapter = FakeAdapter1()
        bluez = await serve(bus_address, {"hci0": adapter})
        try:
            await BluezAdapterControl(bus_address=bus_address, settle_s=0).power_cycle("hci0")
        finally:
            bluez.disconnect()
        assert adapter.sets == [False, True] and adapter.powered is True

    asyncio.run(asyncio.wait_for(main(), 20))


def test_bluez_refusing_is_a_driver_unavailable_with_its_reason(bus_address):
    async def main():
        bluez = await serve(bus_address, {"hci0": FakeAdapter1(refuse=True)})
        try:
            with pytest.raises(DriverUnavailable, match="org.bluez.Error.Failed"):
                await BluezAdapterControl(bus_address=bus_address, settle_s=0).power_cycle("hci0")
            with pytest.raises(DriverUnavailable, match="not present"):
                await BluezAdapterControl(bus_address=bus_address, settle_s=0).power_cycle("hci3")
        finally:
            bluez.disconnect()

    asyncio.run(asyncio.wait_for(main(), 20))


def test_bluez_not_running_is_said_plainly(bus_address):
    async def main():
        with pytest.raises(DriverUnavailable, match="not running"):
            await BluezAdapterControl(bus_address=bus_address, settle_s=0).state("hci0")

    asyncio.run(asyncio.wait_for(main(), 20))


def test_no_bus_at_all_is_a_driver_unavailable(tmp_path):
    async def main():
        with pytest.raises(DriverUnavailable, match="D-Bus"):
            await BluezAdapterControl(bus_address=f"unix:path={tmp_path}/nothing", timeout_s=2).state("hci0")

    asyncio.run(asyncio.wait_for(main(), 20))


def test_a_controller_reset_asks_bluetooth_auto_recovery_by_index_and_address_then_powers_on(
        bus_address, monkeypatch):
    # bluetooth-auto-recovery's own signature: recover_adapter(hci, mac, gone_silent=False).
    # Stood in for (it needs a real controller and its management socket); BlueZ is on D-Bus.
    import sys
    import types

    calls = []

    async def recover_adapter(hci: int, mac: str, gone_silent: bool = False) -> bool:
        calls.append((hci, mac, gone_silent))
        adapter.powered = False  # a reset leaves some controllers off
        return True

    monkeypatch.setitem(sys.modules, "bluetooth_auto_recovery",
                        types.SimpleNamespace(recover_adapter=recover_adapter))
    adapter = FakeAdapter1()

    async def main():
        bluez = await serve(bus_address, {"hci0": adapter})
        try:
            await BluezAdapterControl(bus_address=bus_address, settle_s=0).reset("hci0")
        finally:
            bluez.disconnect()

    asyncio.run(asyncio.wait_for(main(), 20))
    assert calls == [(0, "B8:27:EB:00:00:01", True)]
    assert adapter.powered is True and adapter.sets == [True]


def test_a_reset_the_library_cannot_do_is_a_driver_unavailable_naming_the_adapter(bus_address, monkeypatch):
    import sys
    import types

    async def recover_adapter(hci: int, mac: str, gone_silent: bool = False) -> bool:
        return False

    monkeypatch.setitem(sys.modules, "bluetooth_auto_recovery",
                        types.SimpleNamespace(recover_adapter=recover_adapter))

    async def main():
        bluez = await serve(bus_address, {"hci0": FakeAdapter1()})
        try:
            with pytest.raises(DriverUnavailable, match=r"could not reset hci0 \(B8:27:EB:00:00:01\)"):
                await BluezAdapterControl(bus_address=bus_address, settle_s=0).reset("hci0")
        finally:
            bluez.disconnect()

    asyncio.run(asyncio.wait_for(main(), 20))
