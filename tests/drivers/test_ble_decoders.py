"""The pure BLE decoders against the spec vectors and cases taken from the specifications."""

from __future__ import annotations

import pytest

from drivers.ble import atc, bthome, ruuvi
from drivers.ble.common import BTHOME_UUID, ENV_SENSING_UUID, NoKey, WrongKey, normalize_mac
from drivers.ble.formats import decode_advertisement
from drivers.exc import DecodeError
from tests.drivers.ble_helpers import VECTORS

G = 9.80665
# vectors.json units -> docs/protocol.md units (value factor, unit)
BTHOME_UNITS = {"°C": (1, "Cel"), "%": (1, "%RH"), "hPa": (100, "Pa"), "lx": (1, "lx"), "m/s²": (1, "m/s2")}
KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
MAC = "54:48:E6:8F:80:A5"


def values(decoded) -> dict[str, tuple[float, str]]:
    return {m.quantity: (m.value, m.unit) for m in decoded.measurements}


# -- BTHome v2 ---------------------------------------------------------------------------
@pytest.mark.parametrize("vec", VECTORS["bthome"], ids=lambda v: v["id"])
def test_bthome_vector_decodes_to_its_expected_measurements(vec):
    key = bytes.fromhex(vec["key"]) if vec["key"] else None
    d = bthome.decode(bytes.fromhex(vec["hex"]), vec["mac"], key)
    exp = vec["expect"]
    assert d.encrypted is exp["encrypted"]
    assert len(d.measurements) == len(exp["measurements"])
    for got, want in zip(d.measurements, exp["measurements"], strict=True):
        factor, unit = BTHOME_UNITS[want["unit"]]
        assert got.quantity == want["name"]
        assert got.unit == unit
        assert got.value == pytest.approx(want["value"] * factor, abs=1e-6)
    if exp["encrypted"]:
        assert d.counter == exp["counter"]


def test_bthome_spec_encryption_vector_nonce_and_plaintext_match_the_spec():
    vec = next(v for v in VECTORS["bthome"] if v["expect"]["encrypted"])
    payload = bytes.fromhex(vec["hex"])
    counter = payload[-8:-4]
    assert bthome.nonce(vec["mac"], payload[0], counter).hex() == vec["expect"]["nonce_hex"]
    plain, ctr = bthome.decrypt(payload[0], payload[1:], bytes.fromhex("5448e68f80a5"), bytes.fromhex(vec["key"]))
    assert plain.hex() == vec["expect"]["decrypted_hex"]
    assert ctr == vec["expect"]["counter"]


@pytest.mark.parametrize(
    ("hexobj", "quantity", "value", "unit"),
    [
        ("0161", "battery", 97, "%EL"),
        ("0C020C", "voltage", 3.074, "V"),
        ("4A0C00", "voltage", 1.2, "V"),
        ("2101", "motion", 1, "count"),
        ("518756", "acceleration", 22.151, "m/s2"),
        ("451101", "temperature", 27.3, "Cel"),
        ("57EA", "temperature", -22, "Cel"),
        ("5836", "temperature", 18.9, "Cel"),
        ("02DAFD", "temperature", -5.5, "Cel"),
        ("2E23", "humidity", 35, "%RH"),
        ("1101", "opening", 1, "count"),
        ("0D120C", "pm2_5", 3090, "ug/m3"),
    ],
)
def test_bthome_object_from_the_spec_table_scales_and_names_the_value(hexobj, quantity, value, unit):
    d = bthome.decode(bytes.fromhex("40" + hexobj))
    assert values(d) == {quantity: (pytest.approx(value, abs=1e-9), unit)}


def test_bthome_packet_id_is_the_sequence_not_a_measurement():
    d = bthome.decode(bytes.fromhex("40" + "0009" + "02c409"))
    assert d.sequence == 9
    assert values(d) == {"temperature": (25.0, "Cel")}


def test_bthome_unknown_object_id_stops_parsing_and_keeps_what_came_before():
    d = bthome.decode(bytes.fromhex("40" + "02c409" + "fe0102" + "03bf13"))
    assert values(d) == {"temperature": (25.0, "Cel")}
    assert d.extra["stopped_at_unknown_object"] == "0xfe"


def test_bthome_repeated_object_is_numbered():
    d = bthome.decode(bytes.fromhex("40" + "02c409" + "02ca09"))
    assert values(d) == {"temperature": (25.0, "Cel"), "temperature_2": (25.06, "Cel")}


def test_bthome_variable_length_text_and_raw_go_to_extra():
    d = bthome.decode(bytes.fromhex("40" + "5305" + b"hello".hex() + "5402abcd" + "0161"))
    assert d.extra["text"] == "hello"
    assert d.extra["raw"] == "abcd"
    assert values(d) == {"battery": (97, "%EL")}


def test_bthome_events_and_device_info_are_extras_and_trigger_flag_is_reported():
    d = bthome.decode(bytes.fromhex("44" + "3a01" + "f00100" + "0161"))
    assert d.extra == {"button": 1, "device_type_id": 1, "trigger_based": True}
    assert values(d) == {"battery": (97, "%EL")}


@pytest.mark.parametrize(
    ("hexpayload", "why"),
    [
        ("", "empty"),
        ("40" + "02c4", "truncated"),  # temperature needs 2 bytes
        ("40" + "04138a", "truncated"),  # pressure needs 3 bytes
        ("40" + "53", "truncated"),  # text without its length byte
        ("40" + "5305abcd", "truncated"),  # text shorter than its length
        ("20" + "02c409", "version 1"),
        ("60" + "02c409", "version 3"),
        ("42" + "b2188d38", "MAC flag"),  # fewer than 6 MAC bytes
    ],
)
def test_bthome_malformed_payload_raises_decode_error(hexpayload, why):
    with pytest.raises(DecodeError):
        bthome.decode(bytes.fromhex(hexpayload))


def test_bthome_mac_included_flag_carries_the_address_reversed():
    d = bthome.decode(bytes.fromhex("42" + "b2188d38c1a4" + "02c409"))
    assert d.mac == "A4:C1:38:8D:18:B2"
    assert values(d) == {"temperature": (25.0, "Cel")}


def test_bthome_encrypted_with_included_mac_uses_that_mac_for_the_nonce():
    frame = bthome.encrypt(bytes.fromhex("02c409"), "A4:C1:38:8D:18:B2", KEY, 7, device_info=0x43)
    # insert the reversed MAC after the info byte: the nonce must use it, not the advertiser's
    payload = frame[:1] + bytes.fromhex("b2188d38c1a4") + frame[1:]
    d = bthome.decode(payload, "11:22:33:44:55:66", KEY)
    assert d.counter == 7 and values(d) == {"temperature": (25.0, "Cel")}


def test_bthome_wrong_key_is_reported_as_wrong_key():
    vec = next(v for v in VECTORS["bthome"] if v["expect"]["encrypted"])
    wrong = bytearray(bytes.fromhex(vec["key"]))
    wrong[0] ^= 1
    with pytest.raises(WrongKey):
        bthome.decode(bytes.fromhex(vec["hex"]), vec["mac"], bytes(wrong))


def test_bthome_wrong_mac_fails_the_mic_like_a_wrong_key():
    vec = next(v for v in VECTORS["bthome"] if v["expect"]["encrypted"])
    with pytest.raises(WrongKey):
        bthome.decode(bytes.fromhex(vec["hex"]), "A5:80:8F:E6:48:54", KEY)


def test_bthome_tampered_ciphertext_is_rejected():
    payload = bytearray(bytes.fromhex(VECTORS["bthome"][-1]["hex"]))
    payload[2] ^= 0x80
    with pytest.raises(WrongKey):
        bthome.decode(bytes(payload), MAC, KEY)


def test_bthome_encrypted_without_key_raises_no_key():
    with pytest.raises(NoKey):
        bthome.decode(bytes.fromhex(VECTORS["bthome"][-1]["hex"]), MAC, None)


def test_bthome_encrypted_payload_too_short_for_counter_and_mic_raises():
    with pytest.raises(DecodeError):
        bthome.decode(bytes.fromhex("41" + "0102030405060708"), MAC, KEY)


def test_bthome_encrypt_then_decode_round_trips_with_the_counter():
    frame = bthome.encrypt(bytes.fromhex("0005" + "02ca09" + "03bf13"), MAC, KEY, 0xDEADBEEF)
    d = bthome.decode(frame, MAC, KEY)
    assert (d.encrypted, d.counter, d.sequence) == (True, 0xDEADBEEF, 5)
    assert values(d) == {"temperature": (25.06, "Cel"), "humidity": (50.55, "%RH")}


def test_bthome_key_of_wrong_length_is_a_decode_error():
    with pytest.raises(DecodeError):
        bthome.decode(bytes.fromhex(VECTORS["bthome"][-1]["hex"]), MAC, KEY[:15])


# -- Ruuvi RAWv2 ------------------------------------------------------------------------
RUUVI_FIELDS = {
    "temperature_c": ("temperature", 1, "Cel"),
    "humidity_pct": ("humidity", 1, "%RH"),
    "pressure_pa": ("pressure", 1, "Pa"),
    "acceleration_x_mg": ("acceleration_x", G / 1000, "m/s2"),
    "acceleration_y_mg": ("acceleration_y", G / 1000, "m/s2"),
    "acceleration_z_mg": ("acceleration_z", G / 1000, "m/s2"),
    "battery_mv": ("voltage", 1 / 1000, "V"),
    "movement_counter": ("movement_count", 1, "count"),
}


@pytest.mark.parametrize("vec", VECTORS["ruuvi"], ids=lambda v: v["id"])
def test_ruuvi_vector_decodes_every_field_and_leaves_out_not_available_values(vec):
    d = ruuvi.decode(bytes.fromhex(vec["hex"]))
    exp = vec["expect"]
    got = values(d)
    for field, (quantity, factor, unit) in RUUVI_FIELDS.items():
        if exp[field] is None:
            assert quantity not in got, f"{quantity} marked not available must not be a reading"
        else:
            assert got[quantity][1] == unit
            assert got[quantity][0] == pytest.approx(exp[field] * factor, abs=1e-6)
    assert set(got) == {RUUVI_FIELDS[f][0] for f in RUUVI_FIELDS if exp[f] is not None}
    assert d.sequence == exp["measurement_sequence"]
    assert d.mac == exp["mac"]
    assert d.extra.get("tx_power_dbm") == exp["tx_power_dbm"]


def test_ruuvi_spec_maximum_values():
    d = ruuvi.decode(bytes.fromhex("057FFF9C40FFFE7FFF7FFF7FFFFFDEFEFFFECBB8334C884F"))
    got = values(d)
    assert got["temperature"][0] == pytest.approx(163.835)
    assert got["humidity"][0] == pytest.approx(100.0)
    assert got["pressure"][0] == 115534
    assert got["acceleration_x"][0] == pytest.approx(32.767 * G)
    assert got["voltage"][0] == pytest.approx(3.646)
    assert got["movement_count"][0] == 254
    assert (d.sequence, d.extra["tx_power_dbm"]) == (65534, 20)


def test_ruuvi_spec_minimum_values_are_values_not_markers():
    d = ruuvi.decode(bytes.fromhex("058001000000008001800180010000000000CBB8334C884F"))
    got = values(d)
    assert got["temperature"][0] == pytest.approx(-163.835)
    assert got["humidity"][0] == 0 and got["pressure"][0] == 50000
    assert got["acceleration_z"][0] == pytest.approx(-32.767 * G)
    assert got["voltage"][0] == pytest.approx(1.6)
    assert got["movement_count"][0] == 0
    assert (d.sequence, d.extra["tx_power_dbm"]) == (0, -40)


def test_ruuvi_single_invalid_field_drops_only_that_reading():
    valid = bytearray(bytes.fromhex(VECTORS["ruuvi"][0]["hex"]))
    valid[1:3] = b"\x80\x00"  # temperature not available
    got = values(ruuvi.decode(bytes(valid)))
    assert "temperature" not in got and got["humidity"][0] == pytest.approx(53.49)


@pytest.mark.parametrize("length", [0, 1, 23, 25, 31])
def test_ruuvi_truncated_or_oversize_payload_raises(length):
    base = bytes.fromhex(VECTORS["ruuvi"][0]["hex"]) + b"\x00" * 8
    with pytest.raises(DecodeError):
        ruuvi.decode(base[:length])


def test_ruuvi_other_data_format_raises():
    with pytest.raises(DecodeError, match="format 3"):
        ruuvi.decode(bytes.fromhex("03291A1ECE1EFC18F94202CA0B53"))


# -- ATC1441 / pvvx ---------------------------------------------------------------------
@pytest.mark.parametrize("vec", VECTORS["atc"], ids=lambda v: v["id"])
def test_atc_vector_decodes_to_its_expected_values(vec):
    d = atc.decode(bytes.fromhex(vec["hex"]))
    exp = vec["expect"]
    assert d.format == {"atc1441": "atc1441", "pvvx_custom": "pvvx"}[exp["format"]]
    got = values(d)
    assert got["temperature"] == (pytest.approx(exp["temperature_c"]), "Cel")
    assert got["humidity"] == (pytest.approx(exp["humidity_pct"]), "%RH")
    assert got["battery"] == (exp["battery_pct"], "%EL")
    assert got["voltage"] == (pytest.approx(exp["battery_mv"] / 1000), "V")
    assert d.sequence == exp["counter"]
    assert d.mac == vec["mac"]
    if "flags" in exp:
        assert d.extra["flags"] == exp["flags"]


def test_atc1441_negative_temperature():
    d = atc.decode(bytes.fromhex("a4c1380283f4" + "ff9c" + "2f5f0bf819"))
    assert values(d)["temperature"] == (-10.0, "Cel")


def test_pvvx_negative_temperature():
    d = atc.decode(bytes.fromhex("f4830238c1a4" + "f3fd" + "6911b60b58f70d"))
    assert values(d)["temperature"] == (-5.25, "Cel")


@pytest.mark.parametrize("length", [0, 6, 12, 14, 16, 20])
def test_atc_payload_of_other_length_raises(length):
    with pytest.raises(DecodeError):
        atc.decode(bytes(range(length)))


@pytest.mark.parametrize("vec", VECTORS["atc_encrypted"], ids=lambda v: v["id"])
def test_pvvx_encrypted_vector_decrypts_to_its_published_values(vec):
    d = atc.decode(bytes.fromhex(vec["hex"]), vec["mac"], bytes.fromhex(vec["key"]))
    exp = vec["expect"]
    assert (d.format, d.encrypted, d.sequence) == (exp["format"], True, exp["counter"])
    assert values(d) == {
        "temperature": (pytest.approx(exp["temperature_c"]), "Cel"),
        "humidity": (pytest.approx(exp["humidity_pct"]), "%RH"),
        "battery": (exp["battery_pct"], "%EL"),
    }, "no voltage: the encrypted format does not carry one"


def test_pvvx_encrypted_nonce_is_the_reversed_mac_the_ad_header_and_the_counter():
    vec = VECTORS["atc_encrypted"][0]
    assert atc.nonce(vec["mac"], 11, 0x11).hex() == "b2188d38c1a4" + "0e161a18" + "11"


def test_pvvx_encrypted_with_a_wrong_key_or_without_one_is_refused():
    vec = VECTORS["atc_encrypted"][0]
    with pytest.raises(WrongKey):
        atc.decode(bytes.fromhex(vec["hex"]), vec["mac"], bytes(16))
    with pytest.raises(NoKey):
        atc.decode(bytes.fromhex(vec["hex"]), vec["mac"], None)
    tampered = bytearray.fromhex(vec["hex"])
    tampered[3] ^= 1
    with pytest.raises(WrongKey):
        atc.decode(bytes(tampered), vec["mac"], bytes.fromhex(vec["key"]))


def test_atc1441_encrypted_round_trip():
    """No published vector for this variant: built with the same AES-CCM layout as pvvx's."""
    key = bytes(range(16))
    plain = bytes([int((4.5 + 40) * 2), int(55.5 * 2), 0x80 | 77])
    d = atc.decode(atc.encrypt(plain, "A4:C1:38:8D:18:B2", key, 9), "A4:C1:38:8D:18:B2", key)
    assert d.format == "atc1441_encrypted" and d.sequence == 9 and d.extra["trigger"] == 1
    assert values(d) == {"temperature": (4.5, "Cel"), "humidity": (55.5, "%RH"), "battery": (77, "%EL")}


# -- dispatch ---------------------------------------------------------------------------
def test_dispatch_picks_the_decoder_by_uuid_and_company_id():
    ruuvi_hex = bytes.fromhex(VECTORS["ruuvi"][0]["hex"])
    assert decode_advertisement({}, {0x0499: ruuvi_hex}).format == "ruuvi"
    assert decode_advertisement({BTHOME_UUID: bytes.fromhex("4002c409")}, {}).format == "bthome"
    atc_hex = bytes.fromhex(VECTORS["atc"][0]["hex"])
    assert decode_advertisement({ENV_SENSING_UUID: atc_hex}, {}).format == "atc1441"


def test_dispatch_returns_none_when_the_wanted_format_is_absent():
    assert decode_advertisement({}, {0x004C: b"\x02\x15"}) is None
    assert decode_advertisement({BTHOME_UUID: bytes.fromhex("4002c409")}, {}, fmt="ruuvi") is None


@pytest.mark.parametrize("text", ["a4c1388d18b2", "a4-c1-38-8d-18-b2", "A4:C1:38:8D:18:B2"])
def test_mac_is_normalised_to_upper_case_colon_form(text):
    assert normalize_mac(text) == "A4:C1:38:8D:18:B2"


@pytest.mark.parametrize("text", ["", "a4c1388d18", "zz:c1:38:8d:18:b2", "a4c1388d18b2ff"])
def test_mac_that_is_not_six_bytes_is_refused(text):
    with pytest.raises(ValueError):
        normalize_mac(text)
