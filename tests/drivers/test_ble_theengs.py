"""Theengs Decoder as a BLE format: published frames of 17 models (SwitchBot and Qingping among them), through the driver into readings.

The vectors (tests/data/ble/theengs.json) are Theengs Decoder's own test frames with the
output it is published to give; the readings are those values in docs/protocol.md's units.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from agent.cli import main
from drivers.ble import theengs
from drivers.ble.fake import uuid16
from drivers.ble.options import BleOptions
from tests.drivers.ble_helpers import DATA, Running, fresh_air, make_driver

VECTORS = json.loads((DATA / "theengs.json").read_text(encoding="utf-8"))["vectors"]
MACS = [f"C0:FF:EE:00:00:{i:02X}" for i in range(len(VECTORS))]


def advert(vec: dict) -> dict:
    """The vector as the radio delivers it (bleak splits the company id off manufacturer data)."""
    if "manufacturer_hex" in vec:
        raw = bytes.fromhex(vec["manufacturer_hex"])
        return {"manufacturer_data": {int.from_bytes(raw[:2], "little"): raw[2:]}, "local_name": vec["name"]}
    return {"service_data": {int(vec["service_uuid16"], 16): bytes.fromhex(vec["hex"])}, "local_name": vec["name"]}


def as_bleak(vec: dict) -> tuple[dict, dict]:
    a = advert(vec)
    sd = {uuid16(k): v for k, v in a.get("service_data", {}).items()}
    return sd, a.get("manufacturer_data", {})


def test_vectors_cover_at_least_ten_models():
    assert len({v["model_id"] for v in VECTORS}) >= 10


@pytest.mark.parametrize("vec", VECTORS, ids=lambda v: v["id"])
def test_installed_decoder_gives_the_published_output(vec):
    sd, md = as_bleak(vec)
    doc = theengs.candidates(sd, md, vec["name"], None)[0]
    result = theengs.decode_json(doc)
    assert result is not None
    assert (result["model_id"], result["brand"], result["model"]) == (vec["model_id"], vec["brand"], vec["model"])
    for key, value in vec["theengs"].items():
        assert result[key] == (pytest.approx(value) if isinstance(value, float) else value), key


@pytest.mark.parametrize("vec", VECTORS, ids=lambda v: v["id"])
def test_each_model_decodes_to_protocol_quantities_and_units(vec):
    sd, md = as_bleak(vec)
    d = theengs.decode(sd, md, name=vec["name"])
    assert d is not None and d.format == "theengs"
    got = {m.quantity: (m.value, m.unit) for m in d.measurements}
    want = {q: (pytest.approx(v, rel=1e-9, abs=1e-9), u) for q, (v, u) in vec["readings"].items()}
    assert got == want
    assert (d.model, d.brand, d.extra["model_id"]) == (vec["model"], vec["brand"], vec["model_id"])


def test_all_models_through_the_driver_become_readings_with_model_and_brand():
    async def scenario():
        air = fresh_air()
        sensors = [{"mac": mac, "sensor_id": v["id"], "format": "theengs"} for mac, v in zip(MACS, VECTORS, strict=True)]
        driver = make_driver(air, sensors)
        async with Running(driver) as sink:
            await air.wait_started()
            for mac, vec in zip(MACS, VECTORS, strict=True):
                air.advertise(mac, rssi=-55, **advert(vec))
            want = sum(len(v["readings"]) for v in VECTORS)
            await sink.wait_for(lambda: len(sink.readings) == want)
        return driver, sink

    driver, sink = asyncio.run(asyncio.wait_for(scenario(), 30))
    for vec in VECTORS:
        mine = [r for r in sink.readings if r.sensor_id == vec["id"]]
        assert {r.quantity: (r.value, r.unit) for r in mine} == {
            q: (pytest.approx(v, rel=1e-9, abs=1e-9), u) for q, (v, u) in vec["readings"].items()
        }
        assert {(r.model, r.brand, r.rssi) for r in mine} == {(vec["model"], vec["brand"], -55)}
        detail = driver.status.details["sensors"][vec["id"]]
        assert (detail["model"], detail["brand"]) == (vec["model"], vec["brand"])
    identified = [d for e, d in sink.events if e == "ble_sensor_identified"]
    assert sorted(d["sensor_id"] for d in identified) == sorted(v["id"] for v in VECTORS)
    assert driver.scanning_mode() == "active", "Theengs models are not in the passive or-patterns"


def test_model_identification_is_recorded_once_across_restarts():
    vec = next(v for v in VECTORS if v["id"] == "govee-h5074")

    async def scenario():
        air = fresh_air()
        sensors = [{"mac": MACS[0], "sensor_id": "fridge", "format": "theengs"}]
        first = make_driver(air, sensors)
        async with Running(first) as sink:
            await air.wait_started()
            air.advertise(MACS[0], **advert(vec))
            await sink.wait_for(lambda: bool(sink.states))
        second = make_driver(air, sensors)
        second.load_state(sink.committed())
        async with Running(second) as sink2:
            await air.wait_started(2)
            air.advertise(MACS[0], **advert(vec))
            await sink2.wait_for(lambda: len(sink2.readings) == 3)
        return sink, sink2

    sink, sink2 = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert [e for e, _ in sink.events] == ["ble_sensor_identified"]
    assert sink2.events == [], "the same model after a restart is not news"


@pytest.mark.parametrize(
    ("result", "expect"),
    [
        ({"model_id": "X", "tempf": 32.0}, {"temperature": (0.0, "Cel")}),
        ({"model_id": "X", "tempf": 98.6}, {"temperature": (37.0, "Cel")}),
        ({"model_id": "X", "tempc": 5.0, "tempf": 41.0}, {"temperature": (5.0, "Cel")}),
        ({"model_id": "X", "tempc3": -18.5}, {"temperature_3": (-18.5, "Cel")}),
    ],
)
def test_fahrenheit_only_models_are_converted_and_duplicated_fahrenheit_dropped(result, expect):
    got, _ = theengs.measurements(result)
    assert {m.quantity: (m.value, m.unit) for m in got} == expect


def test_units_are_converted_by_the_models_declared_properties(monkeypatch):
    props = {"volt": {"unit": "mV"}, "pres": {"unit": "hPa"}, "accx": {"unit": "g"}, "pm25": {"unit": "µg/m³"},
             "motion": {"unit": "status"}, "weird": {"unit": "furlong"}}
    monkeypatch.setattr(theengs, "properties", lambda model_id: props)
    got, unmapped = theengs.measurements({"model_id": "X", "volt": 2950, "pres": 1013.25, "accx": 1.0, "pm25": 12,
                                          "motion": True, "weird": 3, "nonsense": "abc"})
    assert {m.quantity: (m.value, m.unit) for m in got} == {
        "voltage": (2.95, "V"), "pressure": (101325.0, "Pa"), "acceleration_x": (9.80665, "m/s2"),
        "pm2_5": (12.0, "ug/m3"), "motion": (1.0, "count"),
    }
    assert unmapped == {"weird": 3, "nonsense": "abc"}, "what the table does not know is never recorded"


def test_unknown_advertisement_is_none_not_an_error():
    assert theengs.decode({}, {0x004C: bytes.fromhex("0215")}) is None
    assert theengs.decode({}, {}) is None


def test_config_refuses_passive_scanning_for_theengs_sensors():
    with pytest.raises(ValueError, match="passive"):
        BleOptions.model_validate({"sensors": [{"mac": MACS[0], "sensor_id": "x", "format": "theengs"}],
                                   "scanning_mode": "passive"})


def test_config_without_the_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(theengs, "available", lambda: False)
    with pytest.raises(ValueError, match=r"coldgate\[theengs\]"):
        BleOptions.model_validate({"sensors": [{"mac": MACS[0], "sensor_id": "x", "format": "theengs"}]})


def run_json(capsys, argv):
    rc = main(argv + ["--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return json.loads(out.out)


def test_decode_ble_theengs_shows_the_model_and_our_readings(capsys):
    vec = next(v for v in VECTORS if v["id"] == "bluemaestro-tempo-disc-4in1")
    got = run_json(capsys, ["decode", "ble", "--format", "theengs", "--hex", vec["manufacturer_hex"],
                            "--name", vec["name"]])
    assert (got["model"], got["brand"]) == (vec["model"], vec["brand"])
    assert {m["quantity"]: m["value"] for m in got["measurements"]}["pressure"] == 101350


def test_decode_ble_theengs_service_data_with_its_uuid(capsys):
    vec = next(v for v in VECTORS if v["id"] == "xiaomi-lywsdcgq")
    got = run_json(capsys, ["decode", "ble", "--format", "theengs", "--hex", vec["hex"], "--uuid", "fe95"])
    assert got["model"] == "Mi Jia round" and got["measurements"][0] == {"quantity": "temperature", "value": 26,
                                                                          "unit": "Cel"}


def test_decode_ble_theengs_of_an_unknown_frame_is_one_line_and_exit_1(capsys):
    rc = main(["decode", "ble", "--format", "theengs", "--hex", "4c000215"])
    err = capsys.readouterr().err
    assert rc == 1 and "no model" in err and err.count("\n") == 1


def test_ble_scan_shows_what_theengs_recognises(capsys):
    air = fresh_air()
    vec = next(v for v in VECTORS if v["id"] == "govee-h5102")
    air.add_beacon(MACS[0], rssi=-50, **advert(vec))
    got = run_json(capsys, ["ble-scan", "--seconds", "0.1", "--backend", f"fake:{air.name}"])
    dev = got[0]
    assert dev["format"] == "theengs" and dev["decoded"]["model"] == vec["model"]
    assert dev["decoded"]["brand"] == "Govee"
    assert main(["ble-scan", "--seconds", "0.1", "--backend", f"fake:{air.name}"]) == 0
    assert "Govee Smart Thermo-Hygrometer" in capsys.readouterr().out


def test_a_repeated_frame_is_decoded_once_and_a_new_one_anew(monkeypatch):
    calls = []
    real = theengs.decode_json
    monkeypatch.setattr(theengs, "decode_json", lambda doc: calls.append(doc) or real(doc))
    a = next(v for v in VECTORS if v["id"] == "govee-h5074")
    b = next(v for v in VECTORS if v["id"] == "govee-h5075-below-zero")

    async def scenario():
        air = fresh_air()
        driver = make_driver(air, [{"mac": MACS[0], "sensor_id": "fridge", "format": "theengs"}])
        async with Running(driver) as sink:
            await air.wait_started()
            for _ in range(5):
                air.advertise(MACS[0], **advert(a))
            air.advertise(MACS[0], **advert(b))
            await sink.wait_for(lambda: len(sink.readings) == 18)
        return sink

    sink = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert len(calls) == 2, "five identical frames, one decode; the changed frame, another"
    assert [r.value for r in sink.readings if r.quantity == "temperature"] == [22.44] * 5 + [-7.3481]
