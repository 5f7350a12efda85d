"""Identity: a sensor matched by MAC, advertised name or bind key; a changed MAC is never silently a new sensor."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from drivers.ble import atc, bthome
from drivers.ble.options import BleOptions
from tests.drivers.ble_helpers import BTHOME, ENV, VECTORS, Running, fresh_air, make_driver

OLD, NEW = "A4:C1:38:8D:18:B2", "A4:C1:38:11:22:33"
KEY_HEX = "231d39c1d7cc1ab1aee224cd096db932"
KEY = bytes.fromhex(KEY_HEX)


def bt(packet_id: int, centi_c: int = 2500) -> dict:
    return {"service_data": {BTHOME: bytes([0x40, 0x00, packet_id, 0x02]) + centi_c.to_bytes(2, "little")}}


def enc(mac: str, counter: int, centi_c: int) -> dict:
    objects = bytes([0x02]) + centi_c.to_bytes(2, "little", signed=True)
    return {"service_data": {BTHOME: bthome.encrypt(objects, mac, KEY, counter)}}


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_sensor_matched_by_name_follows_an_address_change_and_records_it():
    async def main():
        air = fresh_air()
        driver = make_driver(air, [{"name": "fridge-3", "sensor_id": "fridge-3"}], missing_after_s=0.2)
        async with Running(driver) as sink:
            await air.wait_started()
            air.advertise(OLD, local_name="fridge-3", **bt(1))
            await sink.wait_for(lambda: len(sink.readings) == 1)
            await sink.wait_for(lambda: "sensor_missing" in sink.event_names())
            air.advertise(NEW, local_name="fridge-3", **bt(2, 2600))
            air.advertise(NEW, **bt(3, 2700))  # no name in this one: the address is now known
            await sink.wait_for(lambda: len(sink.readings) == 3)
        assert [r.sensor_id for r in sink.readings] == ["fridge-3"] * 3
        changed = [d for e, d in sink.events if e == "ble_address_changed"]
        assert changed == [{"driver": "ble", "sensor_id": "fridge-3", "old_mac": OLD, "new_mac": NEW,
                            "matched_by": "name"}]
        assert driver.status.details["sensors"]["fridge-3"]["mac"] == NEW
        assert sink.committed()["sensors"]["fridge-3"]["a"] == NEW, "the new address survives a restart"

    run(main())


def test_two_devices_with_one_name_do_not_flap_the_sensor_between_them():
    async def main():
        air = fresh_air()
        driver = make_driver(air, [{"name": "fridge-3", "sensor_id": "fridge-3"}])
        async with Running(driver) as sink:
            await air.wait_started()
            air.advertise(OLD, local_name="fridge-3", **bt(1))
            air.advertise(NEW, local_name="fridge-3", **bt(9, 3000))
            air.advertise(NEW, local_name="fridge-3", **bt(10, 3000))
            air.advertise(OLD, local_name="fridge-3", **bt(2, 2510))
            await sink.wait_for(lambda: len(sink.readings) == 2)
        assert [r.value for r in sink.readings] == [25.0, 25.1]
        assert sink.event_names().count("ble_name_conflict") == 1
        assert driver.status.counters["name_conflicts"] == 2

    run(main())


def test_sensor_matched_by_its_key_is_found_at_a_new_address():
    async def main():
        air = fresh_air()
        driver = make_driver(air, [{"bindkey": KEY_HEX, "sensor_id": "box-1", "format": "bthome"}])
        async with Running(driver) as sink:
            await air.wait_started()
            air.advertise(OLD, **enc(OLD, 10, 400))
            air.advertise("11:11:11:11:11:11", **bt(1))  # a stranger, not encrypted
            air.advertise(NEW, **enc(NEW, 11, 410))  # new board address, same key
            await sink.wait_for(lambda: len(sink.readings) == 2)
        assert [r.value for r in sink.readings] == [4.0, 4.1]
        changed = [d for e, d in sink.events if e == "ble_address_changed"]
        assert [(d["old_mac"], d["new_mac"], d["matched_by"]) for d in changed] == [(OLD, NEW, "key")]
        assert driver.status.counters["replayed"] == 0, "the counter followed the key, not the address"

    run(main())


def test_replay_protection_follows_a_key_matched_sensor_to_its_new_address():
    async def main():
        air = fresh_air()
        driver = make_driver(air, [{"bindkey": KEY_HEX, "sensor_id": "box-1", "format": "bthome"}])
        async with Running(driver) as sink:
            await air.wait_started()
            air.advertise(OLD, **enc(OLD, 5000, 400))
            air.advertise(NEW, **enc(NEW, 4000, 0))  # an old frame, re-sent from elsewhere
            air.advertise(NEW, **enc(NEW, 5001, 410))
            await sink.wait_for(lambda: len(sink.readings) == 2)
        assert [r.value for r in sink.readings] == [4.0, 4.1]
        assert driver.status.counters["replayed"] == 1

    run(main())


def test_missing_sensor_and_a_stranger_of_its_kind_appearing_is_recorded():
    async def main():
        air = fresh_air()
        driver = make_driver(air, [{"mac": OLD, "sensor_id": "box-2"}], missing_after_s=0.2)
        async with Running(driver) as sink:
            await air.wait_started()
            air.advertise(OLD, **bt(1))
            await sink.wait_for(lambda: len(sink.readings) == 1)
            air.advertise(NEW, **bt(1))  # replacement sensor, not in the config
            air.advertise("11:22:33:44:55:66", manufacturer_data={0x004C: b"\x02\x15"})  # a phone: not alike
            await sink.wait_for(lambda: "ble_sensor_replaced_suspected" in sink.event_names())
            air.advertise(NEW, **bt(2))  # heard again: still one event
        suspected = [d for e, d in sink.events if e == "ble_sensor_replaced_suspected"]
        assert suspected == [{"driver": "ble", "sensor_id": "box-2", "mac": OLD, "candidates": [NEW],
                              "kind": "bthome"}]
        assert [r.sensor_id for r in sink.readings] == ["box-2"], "a stranger's data is not recorded as the sensor's"

    run(main())


def test_stranger_appearing_after_the_sensor_went_missing_is_recorded_too():
    async def main():
        air = fresh_air()
        driver = make_driver(air, [{"mac": OLD, "sensor_id": "box-2"}], missing_after_s=0.2)
        async with Running(driver) as sink:
            await air.wait_started()
            air.advertise(OLD, **bt(1))
            await sink.wait_for(lambda: "sensor_missing" in sink.event_names())
            air.advertise(NEW, **bt(1))
            await sink.wait_for(lambda: "ble_sensor_replaced_suspected" in sink.event_names())

    run(main())


def test_encrypted_pvvx_sensor_through_the_driver_against_the_published_vector():
    vec = VECTORS["atc_encrypted"][0]

    async def main():
        air = fresh_air()
        driver = make_driver(air, [{"mac": vec["mac"], "sensor_id": "pvvx", "format": "atc", "bindkey": vec["key"]}])
        async with Running(driver) as sink:
            await air.wait_started()
            air.advertise(vec["mac"], rssi=-30, service_data={ENV: bytes.fromhex(vec["hex"])})
            air.advertise(vec["mac"], rssi=-30, service_data={ENV: bytes.fromhex(vec["hex"])})  # repeated
            await sink.wait_for(lambda: len(sink.readings) == 3)
        got = {r.quantity: (r.value, r.unit) for r in sink.readings}
        assert got == {"temperature": (23.45, "Cel"), "humidity": (41.73, "%RH"), "battery": (61.0, "%EL")}
        assert driver.status.counters["duplicates"] == 1

    run(main())


def test_encrypted_pvvx_sensor_matched_by_key_alone():
    vec = VECTORS["atc_encrypted"][0]

    async def main():
        air = fresh_air()
        driver = make_driver(air, [{"sensor_id": "pvvx", "format": "atc", "bindkey": vec["key"]}])
        async with Running(driver) as sink:
            await air.wait_started()
            air.advertise(vec["mac"], service_data={ENV: bytes.fromhex(vec["hex"])})
            other = atc.encrypt(bytes(6), "A4:C1:38:00:00:01", bytes(16), 3)  # another pvvx, another key
            air.advertise("A4:C1:38:00:00:01", service_data={ENV: other})
            await sink.wait_for(lambda: len(sink.readings) == 3)
        assert driver.status.counters["ignored"] == 1

    run(main())


@pytest.mark.parametrize(
    ("sensor", "match"),
    [
        ({"sensor_id": "x"}, "mac, a name or a bindkey"),
        ({"sensor_id": "x", "match": "name", "mac": OLD}, "needs the sensor's name"),
        ({"sensor_id": "x", "match": "key", "mac": OLD}, "needs the sensor's bindkey"),
        ({"sensor_id": "x", "match": "key", "bindkey": KEY_HEX, "format": "ruuvi"}, "encrypted format"),
    ],
)
def test_a_sensor_that_cannot_be_recognised_is_refused_by_the_config(sensor, match):
    with pytest.raises(ValidationError, match=match):
        BleOptions.model_validate({"sensors": [sensor]})


def test_match_defaults_to_mac_then_name_then_key():
    opts = BleOptions.model_validate({"sensors": [
        {"sensor_id": "a", "mac": OLD, "name": "n1"},
        {"sensor_id": "b", "name": "n2"},
        {"sensor_id": "c", "bindkey": KEY_HEX},
    ]})
    assert [s.match for s in opts.sensors] == ["mac", "name", "key"]


def test_two_sensors_with_one_name_are_refused():
    with pytest.raises(ValidationError, match="name 'n'"):
        BleOptions.model_validate({"sensors": [{"sensor_id": "a", "name": "n"}, {"sensor_id": "b", "name": "n"}]})
