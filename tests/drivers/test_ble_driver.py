"""The BLE driver end to end through bleak's backend seam: only the radio is fake.

Advertisements are injected with ``drivers.ble.fake`` (a ``BaseBleakScanner`` passed as
``BleakScanner(backend=…)``) and flow through ``BleDriver.run(sink)``.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from bleak.exc import BleakBluetoothNotAvailableError, BleakBluetoothNotAvailableReason, BleakError
from pydantic import ValidationError

from drivers import registry
from drivers.ble import bthome
from drivers.ble.scanner import BleOptions
from tests.drivers.ble_helpers import BTHOME, ENV, RUUVI, VECTORS, Running, fresh_air, make_driver

BT_MAC = "A4:C1:38:8D:18:B2"
RUUVI_MAC = "CB:B8:33:4C:88:4F"
ATC_MAC = "A4:C1:38:02:83:F4"
ENC_MAC = "54:48:E6:8F:80:A5"
KEY_HEX = "231d39c1d7cc1ab1aee224cd096db932"
KEY = bytes.fromhex(KEY_HEX)

SENSORS = [
    {"mac": BT_MAC, "sensor_id": "bt-1"},
    {"mac": RUUVI_MAC.lower(), "sensor_id": "ruuvi-1", "format": "ruuvi"},
    {"mac": ATC_MAC, "sensor_id": "atc-1", "format": "atc"},
    {"mac": ENC_MAC, "sensor_id": "enc-1", "format": "bthome", "bindkey": KEY_HEX},
]


def bt(hexpayload: str) -> dict:
    return {"service_data": {BTHOME: bytes.fromhex(hexpayload)}}


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_advertisements_of_all_three_formats_become_readings_with_rssi():
    async def main():
        air = fresh_air()
        driver = make_driver(air, SENSORS)
        async with Running(driver) as sink:
            await air.wait_started()
            air.advertise(BT_MAC, rssi=-51, **bt("40" + "0001" + "02c409" + "03bf13"))
            air.advertise(RUUVI_MAC, rssi=-62, manufacturer_data={RUUVI: bytes.fromhex(VECTORS["ruuvi"][0]["hex"])})
            air.advertise(ATC_MAC, rssi=-33, service_data={ENV: bytes.fromhex(VECTORS["atc"][1]["hex"])})
            air.advertise(ENC_MAC, rssi=-70, **bt(VECTORS["bthome"][-1]["hex"]))
            await sink.wait_for(lambda: {r.sensor_id for r in sink.readings} == {"bt-1", "ruuvi-1", "atc-1", "enc-1"})
        by = {(r.sensor_id, r.quantity): r for r in sink.readings}
        assert by[("bt-1", "temperature")].value == 25.0 and by[("bt-1", "temperature")].unit == "Cel"
        assert by[("bt-1", "humidity")].rssi == -51
        assert by[("ruuvi-1", "pressure")].value == 100044 and by[("ruuvi-1", "pressure")].unit == "Pa"
        assert by[("ruuvi-1", "acceleration_z")].value == pytest.approx(1036 * 9.80665 / 1000)
        assert by[("ruuvi-1", "acceleration_z")].unit == "m/s2" and by[("ruuvi-1", "voltage")].rssi == -62
        assert by[("atc-1", "temperature")].value == 17.05 and by[("atc-1", "battery")].unit == "%EL"
        assert by[("enc-1", "temperature")].value == 25.06 and by[("enc-1", "temperature")].extra["counter"] == 1122867
        details = driver.status.details["sensors"]
        assert details["ruuvi-1"]["rssi"] == -62 and details["ruuvi-1"]["values"]["temperature"] == 24.3
        assert details["bt-1"]["last_reading_at"] is not None and details["bt-1"]["missing"] is False

    run(main())


def test_unknown_devices_are_ignored_and_counted():
    async def main():
        air = fresh_air()
        driver = make_driver(air, SENSORS)
        async with Running(driver) as sink:
            await air.wait_started()
            air.advertise("11:22:33:44:55:66", **bt("4002c409"))
            air.advertise(BT_MAC, **bt("4002c409"))
            await sink.wait_for(lambda: len(sink.readings) == 1)
        assert [r.sensor_id for r in sink.readings] == ["bt-1"]
        assert driver.status.counters["ignored"] == 1

    run(main())


def test_duplicate_packet_id_and_measurement_sequence_are_recorded_once():
    async def main():
        air = fresh_air()
        driver = make_driver(air, SENSORS)
        ruuvi = bytes.fromhex(VECTORS["ruuvi"][0]["hex"])
        async with Running(driver) as sink:
            await air.wait_started()
            for _ in range(3):
                air.advertise(BT_MAC, **bt("40" + "0007" + "02c409"))
                air.advertise(RUUVI_MAC, manufacturer_data={RUUVI: ruuvi})
            air.advertise(BT_MAC, **bt("40" + "0008" + "02ca09"))  # next packet id: new data
            await sink.wait_for(lambda: any(r.value == 25.06 for r in sink.readings))
        bt_temps = [r.value for r in sink.readings if r.sensor_id == "bt-1"]
        assert bt_temps == [25.0, 25.06]
        assert sum(r.quantity == "temperature" for r in sink.readings if r.sensor_id == "ruuvi-1") == 1
        assert driver.status.counters["duplicates"] == 4
        assert driver.status.details["sensors"]["bt-1"]["duplicates"] == 2

    run(main())


def test_bthome_without_packet_id_records_every_advertisement():
    async def main():
        air = fresh_air()
        driver = make_driver(air, SENSORS)
        async with Running(driver) as sink:
            await air.wait_started()
            air.advertise(BT_MAC, **bt("4002c409"))
            air.advertise(BT_MAC, **bt("4002c409"))
            await sink.wait_for(lambda: len(sink.readings) == 2)
        assert driver.status.counters["duplicates"] == 0

    run(main())


def test_replayed_and_out_of_order_encrypted_counters_are_rejected():
    async def main():
        air = fresh_air()
        driver = make_driver(air, SENSORS)

        def frame(counter: int, temp_hex: str) -> dict:
            return bt(bthome.encrypt(bytes.fromhex("02" + temp_hex), ENC_MAC, KEY, counter).hex())

        async with Running(driver) as sink:
            await air.wait_started()
            air.advertise(ENC_MAC, **frame(5010, "c409"))  # 25.00, accepted
            air.advertise(ENC_MAC, **frame(5010, "c409"))  # same frame repeated: duplicate
            air.advertise(ENC_MAC, **frame(5010, "0000"))  # same counter, other content: replay
            air.advertise(ENC_MAC, **frame(5009, "ca09"))  # older counter, not a restart's: out of order
            air.advertise(ENC_MAC, **frame(5012, "d009"))  # 25.12, accepted
            await sink.wait_for(lambda: any(r.value == 25.12 for r in sink.readings))
        assert [r.value for r in sink.readings] == [25.0, 25.12]
        c = driver.status.counters
        assert (c["replayed"], c["duplicates"]) == (2, 1)
        assert driver.status.details["sensors"]["enc-1"]["replayed"] == 2
        refused = [d for e, d in sink.events if e == "ble_counter_refused"]
        assert [(d["last_counter"], d["counter"], d["reason"]) for d in refused] == [(5010, 5010, "same_counter")], \
            "one event for a run of refusals, until a frame is accepted again"

    run(main())


def test_wrong_key_is_counted_reported_once_and_yields_no_readings():
    async def main():
        air = fresh_air()
        sensors = [{"mac": ENC_MAC, "sensor_id": "enc-1", "bindkey": "00" * 16}]
        driver = make_driver(air, sensors)
        async with Running(driver) as sink:
            await air.wait_started()
            for _ in range(3):
                air.advertise(ENC_MAC, **bt(VECTORS["bthome"][-1]["hex"]))
            await sink.wait_for(lambda: driver.status.counters["wrong_key"] == 3)
        assert sink.readings == []
        assert sink.event_names() == ["ble_wrong_key"]
        assert sink.events[0][1]["sensor_id"] == "enc-1" and "wrong bind key" in sink.events[0][1]["message"]
        assert driver.status.details["sensors"]["enc-1"]["wrong_key"] == 3

    run(main())


def test_encrypted_advertisement_without_configured_key_is_counted_not_recorded():
    async def main():
        air = fresh_air()
        driver = make_driver(air, [{"mac": ENC_MAC, "sensor_id": "enc-1"}])
        async with Running(driver) as sink:
            await air.wait_started()
            air.advertise(ENC_MAC, **bt(VECTORS["bthome"][-1]["hex"]))
            air.advertise(ENC_MAC, **bt("4002c409"))  # a later plain frame still decodes
            await sink.wait_for(lambda: len(sink.readings) == 1)
        assert driver.status.counters["no_key"] == 1

    run(main())


def test_undecodable_payload_is_counted_and_the_driver_keeps_going():
    async def main():
        air = fresh_air()
        driver = make_driver(air, SENSORS)
        async with Running(driver) as sink:
            await air.wait_started()
            air.advertise(RUUVI_MAC, manufacturer_data={RUUVI: b"\x05\x01"})
            air.advertise(BT_MAC, **bt("4002c4"))
            air.advertise(BT_MAC, **bt("4002c409"))
            await sink.wait_for(lambda: len(sink.readings) == 1)
        assert driver.status.counters["decode_errors"] == 2
        assert driver.status.counters["errors"] == 0 and sink.events == []

    run(main())


@pytest.mark.parametrize(
    ("error", "expect"),
    [
        (BleakError("adapter 'hci1' not found"), "adapter 'hci1' not found"),
        (
            BleakBluetoothNotAvailableError("Bluetooth is powered off", BleakBluetoothNotAvailableReason.POWERED_OFF),
            "powered_off",
        ),
        (FileNotFoundError(2, "No such file or directory: '/run/dbus/system_bus_socket'"), "BlueZ is not reachable"),
    ],
    ids=["adapter-absent", "powered-off", "bluez-missing"],
)
def test_scan_that_cannot_start_is_reported_and_retried_until_it_recovers(error, expect):
    async def main():
        air = fresh_air()
        air.fail_next_start(error, error)
        driver = make_driver(air, SENSORS, scanning_mode="active")
        async with Running(driver) as sink:
            await air.wait_started()
            air.advertise(BT_MAC, **bt("4002c409"))
            await sink.wait_for(lambda: len(sink.readings) == 1)
        # one failure episode: its beginning and its end, not one event per retry
        assert sink.event_names() == ["driver_error", "driver_recovered"]
        details = sink.events[0][1]
        assert details["error"] == "DriverUnavailable" and details["phase"] == "open"
        assert expect in details["message"]
        recovered = sink.events[1][1]
        assert recovered["retries"] == 2 and expect in recovered["last_error"] and recovered["duration_s"] >= 0
        assert air.start_attempts == 3 and driver.status.restarts == 2
        assert driver.status.state == "stopped" and expect in (driver.status.last_error or "")

    run(main())


def test_silent_scanner_trips_the_watchdog_and_the_scan_is_restarted():
    async def main():
        air = fresh_air()
        driver = make_driver(air, SENSORS, silence_timeout_s=0.2)
        async with Running(driver) as sink:
            await air.wait_started()
            air.advertise(BT_MAC, **bt("4002c409"))
            await sink.wait_for(lambda: len(sink.readings) == 1)
            air.reset_adapter()  # BlueZ lost the discovery session: nothing arrives any more
            assert air.advertise(BT_MAC, **bt("4002ca09")) == 0
            await air.wait_started(2)
            air.advertise(BT_MAC, **bt("4002d009"))
            await sink.wait_for(lambda: len(sink.readings) == 2)
        assert [r.value for r in sink.readings] == [25.0, 25.12]
        assert sink.event_names()[:2] == ["driver_error", "driver_recovered"]
        assert sink.events[0][1]["error"] == "DriverIOError" and sink.events[0][1]["phase"] == "read"
        assert "no BLE advertisement heard for 0.2 s" in sink.events[0][1]["message"]

    run(main())


def test_auto_mode_scans_passively_where_bluez_allows_it():
    async def main():
        air = fresh_air()
        driver = make_driver(air, SENSORS)
        async with Running(driver) as sink:
            await air.wait_started()
            assert next(iter(air.scanners)).scanning_mode == "passive"
            air.advertise(BT_MAC, **bt("4002c409"))
            await sink.wait_for(lambda: len(sink.readings) == 1)
        assert driver.status.details["scanning_mode"] == "passive"

    run(main())


def test_auto_mode_falls_back_to_active_when_bluez_refuses_passive():
    async def main():
        air = fresh_air()
        air.passive_supported = False
        driver = make_driver(air, SENSORS)
        async with Running(driver) as sink:
            await air.wait_started()
            air.advertise(BT_MAC, **bt("4002c409"))
            await sink.wait_for(lambda: len(sink.readings) == 1)
        assert driver.status.details["scanning_mode"] == "active"
        assert sink.events == []

    run(main())


def test_sensor_not_heard_is_marked_missing_and_cleared_when_it_returns():
    async def main():
        air = fresh_air()
        driver = make_driver(air, [{"mac": BT_MAC, "sensor_id": "bt-1"}], missing_after_s=0.1)
        async with Running(driver) as sink:
            await air.wait_started()
            await sink.wait_for(lambda: "sensor_missing" in sink.event_names())
            assert driver.status.details["sensors"]["bt-1"]["missing"] is True
            air.advertise(BT_MAC, **bt("4002c409"))
            await sink.wait_for(lambda: "sensor_back" in sink.event_names())
        assert driver.status.details["sensors"]["bt-1"]["missing"] is False
        assert sink.events[0][1]["sensor_id"] == "bt-1"

    run(main())


def test_full_queue_drops_and_counts_instead_of_blocking_the_radio():
    async def main():
        air = fresh_air()
        driver = make_driver(air, SENSORS, queue_size=1)
        async with Running(driver) as sink:
            await air.wait_started()
            for i in range(3):  # no await in between: the driver cannot drain
                air.advertise(BT_MAC, **bt(f"4000{i:02x}02c409"))
            await sink.wait_for(lambda: len(sink.readings) == 1)
        assert driver.status.counters["dropped"] == 2

    run(main())


def test_config_backend_fake_is_resolved_through_the_registry():
    async def main():
        air = fresh_air()
        cls = registry.get("ble")
        opts = cls.Options.model_validate({"sensors": SENSORS[:1], "backend": "fake", "fake_air": air.name})
        driver = cls("ble-cfg", opts)
        driver.read_timeout_s = 0.02  # type: ignore[misc]
        async with Running(driver) as sink:
            await air.wait_started()
            air.advertise(BT_MAC, **bt("4002c409"))
            await sink.wait_for(lambda: len(sink.readings) == 1)

    run(main())


def test_driver_stops_promptly_and_releases_the_scanner():
    async def main():
        air = fresh_air()
        driver = make_driver(air, SENSORS)
        async with Running(driver):
            await air.wait_started()
        assert not air.scanning and driver.status.state == "stopped"

    run(main())


@pytest.mark.parametrize(
    ("sensor", "match"),
    [
        ({"mac": "nope", "sensor_id": "x"}, "MAC"),
        ({"mac": BT_MAC, "sensor_id": "x", "bindkey": "abcd"}, "32 hex digits"),
        ({"mac": BT_MAC, "sensor_id": "x", "bindkey": "zz" * 16}, "hexadecimal"),
        ({"mac": BT_MAC, "sensor_id": "x", "format": "eddystone"}, "format"),
        ({"mac": BT_MAC, "sensor_id": "x", "interval": 5}, "interval"),
    ],
)
def test_invalid_sensor_options_are_refused(sensor, match):
    with pytest.raises(ValidationError, match=match):
        BleOptions.model_validate({"sensors": [sensor]})


def test_duplicate_macs_or_sensor_ids_are_refused():
    with pytest.raises(ValidationError, match="mac"):
        BleOptions.model_validate({"sensors": [SENSORS[0], {**SENSORS[0], "sensor_id": "other"}]})
    with pytest.raises(ValidationError, match="sensor_id"):
        BleOptions.model_validate({"sensors": [SENSORS[0], {**SENSORS[1], "sensor_id": "bt-1"}]})


def test_bindkey_never_appears_in_the_options_repr():
    opts = BleOptions.model_validate({"sensors": [SENSORS[3]]})
    assert KEY_HEX not in repr(opts) and KEY_HEX not in str(opts.model_dump())


def test_decoders_import_without_bleak_and_drivers_never_import_agent():
    code = (
        "import sys\n"
        "import drivers.ble.bthome, drivers.ble.ruuvi, drivers.ble.atc, drivers.ble.formats\n"
        "assert 'bleak' not in sys.modules, 'decoders pulled in bleak'\n"
        "import drivers.ble.scanner\n"
        "assert 'bleak' not in sys.modules, 'the driver module pulled in bleak at import'\n"
        "import drivers.ble.fake, drivers.ble.discover, drivers.ble.radio\n"
        "assert not any(m == 'agent' or m.startswith('agent.') for m in sys.modules), 'drivers imported agent'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(__import__("pathlib").Path(__file__).parents[2]))
