"""Fuzzing: arbitrary bytes never raise out of a decoder (other than DecodeError) or the driver."""

from __future__ import annotations

import asyncio
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.ble import atc, bthome, ruuvi
from drivers.ble.common import Decoded
from drivers.ble.fake import uuid16
from drivers.exc import DecodeError
from tests.drivers.ble_helpers import BTHOME, ENV, RUUVI, fresh_air, make_driver

KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
MAC = "54:48:E6:8F:80:A5"
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check(result: Decoded) -> None:
    for m in result.measurements:
        assert isinstance(m.value, float | int) and math.isfinite(m.value)
        assert isinstance(m.quantity, str) and m.quantity


@FUZZ
@given(st.binary(max_size=64), st.sampled_from([None, KEY]))
def test_bthome_decoder_raises_only_decode_error_on_arbitrary_bytes(data, key):
    try:
        _check(bthome.decode(data, MAC, key))
    except DecodeError:
        pass


@FUZZ
@given(st.sampled_from([0x40, 0x42, 0x44, 0x46]), st.binary(max_size=40))
def test_bthome_object_lists_after_a_valid_header_decode_or_raise_decode_error(info, body):
    try:
        _check(bthome.decode(bytes([info]) + body))
    except DecodeError:
        pass


@FUZZ
@given(st.binary(max_size=24), st.integers(0, 2**32 - 1))
def test_bthome_encrypted_round_trip_or_decode_error_for_any_plaintext(plain, counter):
    frame = bthome.encrypt(plain, MAC, KEY, counter)
    try:
        d = bthome.decode(frame, MAC, KEY)
    except DecodeError:
        return
    assert d.counter == counter
    _check(d)


@FUZZ
@given(st.one_of(st.binary(max_size=40), st.binary(min_size=23, max_size=23).map(lambda b: b"\x05" + b)))
def test_ruuvi_decoder_raises_only_decode_error_and_never_reports_a_marker(data):
    try:
        d = ruuvi.decode(data)
    except DecodeError:
        return
    _check(d)
    got = {m.quantity: m.value for m in d.measurements}
    raw = data
    if raw[1:3] == b"\x80\x00":
        assert "temperature" not in got
    if raw[3:5] == b"\xff\xff":
        assert "humidity" not in got
    if raw[15] == 0xFF:
        assert "movement_count" not in got


@FUZZ
@given(st.one_of(st.binary(max_size=20), st.binary(min_size=13, max_size=13), st.binary(min_size=15, max_size=15)))
def test_atc_decoder_raises_only_decode_error_on_arbitrary_bytes(data):
    try:
        _check(atc.decode(data))
    except DecodeError:
        pass


@FUZZ
@given(st.one_of(st.binary(min_size=8, max_size=8), st.binary(min_size=11, max_size=11)), st.sampled_from([None, KEY]))
def test_encrypted_atc_decoder_raises_only_decode_error_on_arbitrary_bytes(data, key):
    try:
        _check(atc.decode(data, MAC, key))
    except DecodeError:
        pass


@FUZZ
@given(
    st.dictionaries(st.sampled_from([0xFE95, 0x181A, 0xFCD2, 0x180F]).map(uuid16), st.binary(max_size=30), max_size=2),
    st.dictionaries(st.integers(0, 0xFFFF), st.binary(max_size=30), max_size=2),
    st.sampled_from([None, "GVH5075_1234", "sps", "ThermoBeacon", "TP357"]),
)
def test_theengs_path_raises_only_decode_error_and_yields_only_finite_values(sd, md, name):
    from drivers.ble import theengs

    try:
        d = theengs.decode(sd, md, name=name, mac=MAC)
    except DecodeError:
        return
    if d is not None:
        _check(d)
        assert all(m.unit for m in d.measurements)


class _DriverRig:
    """One driver, scanning on a fake radio, driven from a private event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.air = fresh_air()
        sensors = [
            {"mac": "A4:C1:38:8D:18:B2", "sensor_id": "auto"},
            {"mac": MAC, "sensor_id": "enc", "bindkey": KEY.hex()},
            {"mac": "CB:B8:33:4C:88:4F", "sensor_id": "ruuvi", "format": "ruuvi"},
            {"mac": "E3:5E:CC:21:5C:0F", "sensor_id": "theengs", "format": "theengs"},
        ]
        self.driver = make_driver(self.air, sensors, scanning_mode="active", queue_size=1_000_000)
        self.loop.run_until_complete(self.driver._aopen())

    def drain(self):
        return list(self.loop.run_until_complete(self.driver._aread(0.0)))

    def close(self) -> None:
        self.loop.run_until_complete(self.driver._aclose())
        self.loop.close()


def test_driver_dispatch_never_raises_on_arbitrary_advertisements():
    rig = _DriverRig()
    macs = st.sampled_from(["A4:C1:38:8D:18:B2", MAC, "CB:B8:33:4C:88:4F", "E3:5E:CC:21:5C:0F", "00:11:22:33:44:55"])
    service = st.dictionaries(st.sampled_from([BTHOME, ENV, 0x180F]), st.binary(max_size=40), max_size=3)
    manufacturer = st.dictionaries(st.sampled_from([RUUVI, 0x004C, 0xEC88, 0x0A66]), st.binary(max_size=30), max_size=2)

    @FUZZ
    @given(macs, service, manufacturer, st.integers(-127, 20))
    def check(mac, sd, md, rssi):
        heard = rig.air.advertise(mac, service_data=sd, manufacturer_data=md, rssi=rssi)
        assert heard == 1
        for r in rig.drain():
            assert r.sensor_id in {"auto", "enc", "ruuvi", "theengs"} and r.unit, r
            assert math.isfinite(r.value) and r.rssi == rssi

    try:
        check()
        c = rig.driver.status.counters
        assert c["dispatch_errors"] == 0, "a decoder raised something other than DecodeError"
        assert c["advertisements"] >= 300
    finally:
        rig.close()
