"""``coldgate decode ble`` and ``coldgate ble-scan`` (the latter on the fake radio)."""

from __future__ import annotations

import json

import pytest
from bleak.exc import BleakError

from agent.cli import main
from drivers.ble import bthome
from tests.drivers.ble_helpers import BTHOME, ENV, RUUVI, VECTORS, fresh_air


def run_json(capsys, argv):
    rc = main(argv + ["--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return json.loads(out.out)


@pytest.mark.parametrize("vec", VECTORS["bthome"], ids=lambda v: v["id"])
def test_decode_ble_bthome_prints_each_vectors_measurements(capsys, vec):
    argv = ["decode", "ble", "--format", "bthome", "--hex", vec["hex"], "--mac", vec["mac"]]
    if vec["key"]:
        argv += ["--key", vec["key"]]
    got = run_json(capsys, argv)
    assert [m["quantity"] for m in got["measurements"]] == [m["name"] for m in vec["expect"]["measurements"]]
    assert got["encrypted"] is vec["expect"]["encrypted"]


def test_decode_ble_ruuvi_invalid_vector_has_no_measurements(capsys):
    got = run_json(capsys, ["decode", "ble", "--format", "ruuvi", "--hex", VECTORS["ruuvi"][1]["hex"]])
    assert got["measurements"] == [] and got["sequence"] is None


def test_decode_ble_atc_text_output_names_quantities_and_units(capsys):
    assert main(["decode", "ble", "--format", "atc", "--hex", VECTORS["atc"][1]["hex"]]) == 0
    out = capsys.readouterr().out
    assert "format pvvx" in out and "temperature" in out and "17.05 Cel" in out and "sequence 247" in out


def test_decode_ble_wrong_key_is_one_line_and_exit_1(capsys):
    vec = VECTORS["bthome"][-1]
    rc = main(["decode", "ble", "--format", "bthome", "--hex", vec["hex"], "--mac", vec["mac"], "--key", "00" * 16])
    err = capsys.readouterr().err
    assert rc == 1 and "wrong bind key" in err and "Traceback" not in err and err.count("\n") == 1


def test_decode_ble_truncated_payload_is_one_line_and_exit_1(capsys):
    rc = main(["decode", "ble", "--format", "ruuvi", "--hex", VECTORS["ruuvi"][0]["hex"][:-2]])
    err = capsys.readouterr().err
    assert rc == 1 and "truncated" in err and "Traceback" not in err


def test_ble_scan_lists_devices_with_rssi_format_and_values(capsys):
    air = fresh_air()
    enc = bthome.encrypt(bytes.fromhex("02c409"), "54:48:E6:8F:80:A5", bytes(16), 3)
    air.add_beacon("A4:C1:38:02:83:F4", service_data={ENV: bytes.fromhex(VECTORS["atc"][0]["hex"])}, rssi=-40)
    air.add_beacon(
        "CB:B8:33:4C:88:4F",
        manufacturer_data={RUUVI: bytes.fromhex(VECTORS["ruuvi"][0]["hex"])},
        rssi=-70,
        local_name="Ruuvi 884F",
    )
    air.add_beacon("54:48:E6:8F:80:A5", service_data={BTHOME: enc}, rssi=-80)
    air.add_beacon("11:22:33:44:55:66", manufacturer_data={0x004C: b"\x02\x15"}, rssi=-90)
    got = run_json(capsys, ["ble-scan", "--seconds", "0.15", "--backend", f"fake:{air.name}"])
    assert [d["address"] for d in got] == [
        "A4:C1:38:02:83:F4",
        "CB:B8:33:4C:88:4F",
        "54:48:E6:8F:80:A5",
        "11:22:33:44:55:66",
    ]
    atc_dev, ruuvi_dev, enc_dev, other = got
    assert atc_dev["rssi"] == -40 and atc_dev["format"] == "atc1441"
    assert {m["quantity"]: m["value"] for m in atc_dev["decoded"]["measurements"]}["temperature"] == 16.2
    assert ruuvi_dev["name"] == "Ruuvi 884F" and ruuvi_dev["format"] == "ruuvi"
    assert enc_dev["format"] == "bthome" and enc_dev["decoded"] is None and "encrypted" in enc_dev["error"]
    assert other["format"] is None and other["decoded"] is None
    assert not air.scanning, "the scan must stop after --seconds"


def test_ble_scan_decodes_encrypted_devices_given_their_key(capsys):
    air = fresh_air()
    enc = bthome.encrypt(bytes.fromhex("02c409"), "54:48:E6:8F:80:A5", bytes(16), 3)
    air.add_beacon("54:48:E6:8F:80:A5", service_data={BTHOME: enc})
    got = run_json(
        capsys,
        ["ble-scan", "--seconds", "0.1", "--backend", f"fake:{air.name}", "--key", "54:48:e6:8f:80:a5=" + "00" * 16],
    )
    assert got[0]["decoded"]["measurements"] == [{"quantity": "temperature", "value": 25.0, "unit": "Cel"}]


def test_ble_scan_text_output_has_a_row_per_device(capsys):
    air = fresh_air()
    air.add_beacon("A4:C1:38:02:83:F4", service_data={ENV: bytes.fromhex(VECTORS["atc"][0]["hex"])}, rssi=-40)
    assert main(["ble-scan", "--seconds", "0.1", "--backend", f"fake:{air.name}"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("address") and out[1].startswith("A4:C1:38:02:83:F4") and "-40" in out[1]
    assert "temperature=16.2 Cel" in out[1]


def test_ble_scan_without_an_adapter_is_one_line_and_exit_1(capsys):
    air = fresh_air()
    air.fail_next_start(BleakError("adapter 'hci7' not found"))
    rc = main(["ble-scan", "--seconds", "0.1", "--backend", f"fake:{air.name}", "--adapter", "hci7"])
    err = capsys.readouterr().err
    assert rc == 1 and "adapter 'hci7' not found" in err and "Traceback" not in err


def test_ble_scan_refuses_a_malformed_key(capsys):
    rc = main(["ble-scan", "--seconds", "0", "--backend", "fake:x", "--key", "A4:C1:38:02:83:F4=abc"])
    assert rc == 1 and "--key" in capsys.readouterr().err


def test_decode_ble_atc_encrypted_pvvx_with_mac_and_key(capsys):
    vec = VECTORS["atc_encrypted"][0]
    got = run_json(capsys, ["decode", "ble", "--format", "atc", "--hex", vec["hex"], "--mac", vec["mac"],
                            "--key", vec["key"]])
    assert got["format"] == "pvvx_encrypted" and got["encrypted"] is True and got["sequence"] == 17
    assert got["measurements"][0] == {"quantity": "temperature", "value": 23.45, "unit": "Cel"}
