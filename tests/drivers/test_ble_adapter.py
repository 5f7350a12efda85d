"""Adapter recovery: a stalled scan comes back through the reset path, faked at the BlueZ boundary.

The fake radio's adapters fail as a Pi's do (``stall_adapter``: silent, then every new
scan refused with ``InProgress``; ``remove_adapter``: vanished); ``air.control`` is the
fake of :class:`drivers.ble.adapter.AdapterControl`.
"""

from __future__ import annotations

import asyncio

import pytest

from drivers.ble.adapter import Ladder, reset_worthy
from tests.drivers.ble_helpers import BTHOME, Running, fresh_air, make_driver

MAC = "A4:C1:38:8D:18:B2"
SENSORS = [{"mac": MAC, "sensor_id": "bt-1"}]


def bt(packet_id: int, centi_c: int = 2500) -> dict:
    return {"service_data": {BTHOME: bytes([0x40, 0x00, packet_id, 0x02]) + centi_c.to_bytes(2, "little")}}


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_stalled_scan_recovers_through_a_power_cycle_with_its_event():
    async def main():
        air = fresh_air()
        driver = make_driver(air, SENSORS, control=air.control, silence_timeout_s=0.2, scanning_mode="active")
        async with Running(driver) as sink:
            await air.wait_started()
            air.advertise(MAC, **bt(1))
            await sink.wait_for(lambda: len(sink.readings) == 1)
            air.stall_adapter()  # silent, and BlueZ answers InProgress to every new scan
            assert air.advertise(MAC, **bt(2)) == 0
            await air.wait_started(2)
            air.advertise(MAC, **bt(3, 2512))
            await sink.wait_for(lambda: len(sink.readings) == 2)
        assert [r.value for r in sink.readings] == [25.0, 25.12]
        assert air.control.calls == [("power_cycle", "hci0")]
        names = sink.event_names()
        assert names[:3] == ["driver_error", "ble_adapter_reset", "driver_recovered"]
        reset = sink.events[1][1]
        assert reset["adapter"] == "hci0" and reset["step"] == "power_cycle" and reset["ok"] is True
        assert "no BLE advertisement heard for 0.2 s" in reset["reason"]
        status = driver.status.details["adapters"]["default"]
        assert status["resets"] == 1 and status["last_reset"]["step"] == "power_cycle"
        assert status["state"] == "scanning" and status["last_reset"]["ok"] is True

    run(main())


def test_hard_stall_escalates_from_power_cycle_to_controller_reset_with_backoff():
    async def main():
        air = fresh_air()
        driver = make_driver(air, SENSORS, control=air.control, silence_timeout_s=0.2, scanning_mode="active",
                             reset_backoff_s=0.05)
        async with Running(driver) as sink:
            await air.wait_started()
            air.stall_adapter(hard=True)  # a power cycle does not cure this one
            await air.wait_started(2, timeout=10)
            air.advertise(MAC, **bt(1))
            await sink.wait_for(lambda: len(sink.readings) == 1)
        assert air.control.calls == [("power_cycle", "hci0"), ("reset", "hci0")]
        resets = [d for e, d in sink.events if e == "ble_adapter_reset"]
        assert [(d["step"], d["ok"]) for d in resets] == [("power_cycle", True), ("reset", True)]
        assert "InProgress" in resets[1]["reason"], "the second step answers BlueZ's refusal"
        assert driver.status.details["adapters"]["default"]["resets"] == 2

    run(main())


def test_vanished_adapter_is_noticed_through_bluez_and_brought_back_by_a_reset():
    async def main():
        air = fresh_air()
        driver = make_driver(air, SENSORS, control=air.control, adapter="hci0", scanning_mode="active",
                             adapter_check_s=0.05, reset_backoff_s=0.05)
        async with Running(driver) as sink:
            await air.wait_started()
            air.remove_adapter("hci0")
            await air.wait_started(2, timeout=10)
            air.advertise(MAC, **bt(1))
            await sink.wait_for(lambda: len(sink.readings) == 1)
        assert air.control.calls[-1] == ("reset", "hci0")
        errors = [d for e, d in sink.events if e == "driver_error"]
        assert "vanished" in errors[0]["message"]
        assert driver.status.details["adapters"]["hci0"]["bluez"]["present"] is True

    run(main())


def test_failed_reset_is_recorded_and_retried_later_not_fatal():
    async def main():
        air = fresh_air()
        air.control.fail_next(1)
        driver = make_driver(air, SENSORS, control=air.control, silence_timeout_s=0.2, scanning_mode="active",
                             reset_backoff_s=0.05)
        async with Running(driver) as sink:
            await air.wait_started()
            air.stall_adapter()
            await air.wait_started(2, timeout=10)
        resets = [d for e, d in sink.events if e == "ble_adapter_reset"]
        assert resets[0]["ok"] is False and "fault injected" in resets[0]["error"]
        assert resets[-1]["ok"] is True

    run(main())


def test_one_stalled_adapter_of_two_is_recovered_while_the_other_keeps_readings_flowing():
    async def main():
        air = fresh_air()
        driver = make_driver(air, SENSORS, control=air.control, adapters=["hci0", "hci1"], silence_timeout_s=0.3,
                             scanning_mode="active")
        air.add_beacon("11:22:33:44:55:66", manufacturer_data={0x004C: b"\x02\x15"}, interval_s=0.02)  # a phone
        async with Running(driver) as sink:
            await air.wait_started(2)
            air.advertise(MAC, **bt(1))
            await sink.wait_for(lambda: len(sink.readings) == 1)
            assert driver.status.counters["duplicates"] == 1, "one frame heard by both adapters is one reading"
            air.stall_adapter("hci1")
            await air.wait_started(3, timeout=10)  # hci1 back after its power cycle, hci0 scanning throughout
            for i in range(2, 7):
                air.advertise(MAC, **bt(i))
            await sink.wait_for(lambda: len(sink.readings) == 6)
        assert air.control.calls == [("power_cycle", "hci1")]
        assert "driver_error" not in sink.event_names(), "the driver never stopped reading"
        adapters = driver.status.details["adapters"]
        assert adapters["hci0"]["resets"] == 0 and adapters["hci1"]["resets"] == 1

    run(main())


def test_without_recovery_a_stall_only_restarts_the_scan():
    async def main():
        air = fresh_air()
        driver = make_driver(air, SENSORS, control=air.control, recovery=False, silence_timeout_s=0.2,
                             scanning_mode="active")
        async with Running(driver) as sink:
            await air.wait_started()
            air.reset_adapter()
            await air.wait_started(2)
        assert air.control.calls == [] and "ble_adapter_reset" not in sink.event_names()

    run(main())


def test_ladder_starts_with_a_power_cycle_escalates_backs_off_and_forgets_after_stable_time():
    ladder = Ladder(base_s=10, cap_s=40, stable_s=100)
    assert ladder.due(0) and ladder.next_step(0) == "power_cycle", "the first step is at once"
    ladder.done(0)
    assert not ladder.due(5) and ladder.due(10) and ladder.next_step(10) == "reset"
    ladder.done(10)
    assert not ladder.due(29) and ladder.due(30), "doubling"
    ladder.done(30)
    ladder.done(70)
    assert ladder.delay() == 40, "capped"
    assert ladder.next_step(70 + 140) == "power_cycle", "calm for long enough: from the bottom again"


@pytest.mark.parametrize(
    ("message", "worthy"),
    [
        ("org.bluez.Error.InProgress: Operation already in progress", True),
        ("org.bluez.Error.NotReady: Resource Not Ready", True),
        ("BLE scan could not start on adapter 'hci1': adapter 'hci1' not found", True),
        ("[Errno 2] No such file or directory: '/run/dbus/system_bus_socket'", False),
    ],
)
def test_only_errors_a_reset_can_cure_trigger_one(message, worthy):
    assert reset_worthy(message) is worthy


def test_a_passive_scan_is_not_taken_for_a_stall_because_bluez_reports_no_discovery():
    """BlueZ's advertisement monitor (passive scanning) never sets Adapter1.Discovering."""

    async def main():
        air = fresh_air()

        class PassiveBluez(type(air.control)):  # type: ignore[misc]
            async def state(self, adapter):
                st = await super().state(adapter)
                st.discovering = False
                return st

        control = PassiveBluez(air)
        driver = make_driver(air, SENSORS, control=control, adapter_check_s=0.02)
        async with Running(driver) as sink:
            await air.wait_started()
            await sink.wait_for(lambda: driver.status.details["adapters"]["default"]["bluez"] is not None)
            air.advertise(MAC, **bt(1))
            await sink.wait_for(lambda: len(sink.readings) == 1)
        assert driver.status.details["scanning_mode"] == "passive"
        assert control.calls == [] and air.starts == 1

    run(main())
