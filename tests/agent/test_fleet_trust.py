"""The keyring, detached config signatures and the version order, on their own."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from agent import config as configmod
from agent.cli import main
from agent.exc import ConfigRefused
from agent.fleet.gate import examine
from agent.fleet.trust import Keyring, read_signature, signature_path
from agent.fleet.version import Version
from agent.identity import key_id
from tests.agent.fleet_helpers import Fleet

UID = os.getuid()
ROOT = Path(__file__).resolve().parents[2]


def config(tmp: Path, version: int | str = 1, extra: str = "") -> Path:
    p = tmp / "new.toml"
    v = f'"{version}"' if isinstance(version, str) else version
    p.write_text(f'gateway_id = "gw"\nconfig_version = {v}\n{extra}')
    return p


def test_versions_compare_number_by_number_with_trailing_zeros_dropped() -> None:
    assert Version(7) == Version("7") == Version("7.0")
    assert Version("7.1") > Version(7)
    assert Version("2025.10.1") > Version("2025.9.30")
    assert Version(0) < Version(1) < Version("1.0.1") < Version(2)


def test_a_signed_file_verifies_and_names_its_signer_by_the_key_id_of_its_raw_public_key(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    kid = fleet.key("a")
    f = config(tmp_path)
    fleet.sign(f, "a")
    ring = Keyring.load(fleet.keyring, trusted_uid=UID)
    assert ring.verify(f.read_bytes(), read_signature(signature_path(f)), source=str(f)) == kid
    raw = ring.keys[kid].public.public_bytes_raw()
    assert kid == key_id(raw) and len(kid) == 16


@pytest.mark.parametrize("case, reason", [
    ("unsigned", "unsigned"), ("wrong_key", "untrusted_key"), ("tampered", "bad_signature"),
    ("garbage_sig", "bad_signature"), ("other_file_sig", "bad_signature")])
def test_a_file_not_signed_by_a_trusted_key_is_refused_with_its_reason(tmp_path: Path, case: str, reason: str) -> None:
    fleet = Fleet(tmp_path)
    fleet.key("a")
    fleet.key("rogue", trusted=False)
    f = config(tmp_path)
    if case == "wrong_key":
        fleet.sign(f, "rogue")
    elif case == "tampered":
        fleet.sign(f, "a")
        data = bytearray(f.read_bytes())
        data[data.index(b"1")] = ord("2")  # one byte: the version
        f.write_bytes(bytes(data))
    elif case == "garbage_sig":
        signature_path(f).write_text("not a signature")
    elif case == "other_file_sig":
        other = tmp_path / "other.toml"
        other.write_text('gateway_id = "gw"\nconfig_version = 9\n')
        fleet.sign(other, "a")
        signature_path(f).write_bytes(signature_path(other).read_bytes())
    running = configmod.load(_running(tmp_path, fleet))
    with pytest.raises(ConfigRefused) as exc:
        examine(f, base_dir=tmp_path, running=running, running_version=0, trusted_uid=UID)
    assert exc.value.reason == reason
    assert exc.value.problems[0].message


def _running(tmp: Path, fleet: Fleet) -> Path:
    p = tmp / "running.toml"
    p.write_text(f'gateway_id = "gw"\n[fleet]\nrequire_signature = true\ntrusted_keys = "{fleet.keyring}"\n')
    return p


def test_a_lower_version_is_refused_unless_the_downgrade_is_asked_for(tmp_path: Path) -> None:
    f = config(tmp_path, "2025.6.1")
    with pytest.raises(ConfigRefused) as exc:
        examine(f, base_dir=tmp_path, running_version="2025.7")
    assert exc.value.reason == "downgrade" and "lower than the running 2025.7" in str(exc.value.problems[0])
    assert examine(f, base_dir=tmp_path, running_version="2025.7", allow_downgrade=True).provenance.version == \
        "2025.6.1"
    assert examine(f, base_dir=tmp_path, running_version="2025.6.1").config.config_version == "2025.6.1"


def test_a_candidate_that_requires_signatures_must_itself_be_signed(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    f = config(tmp_path, 2, f'[fleet]\nrequire_signature = true\ntrusted_keys = "{fleet.keyring}"\n')
    with pytest.raises(ConfigRefused) as exc:
        examine(f, base_dir=tmp_path, trusted_uid=UID)
    assert exc.value.reason == "unsigned"


def test_the_shipped_gateway_config_requires_signed_configs_from_the_root_keyring(tmp_path: Path) -> None:
    """config/gateway.toml, as the config loader reads it, keeps the production default:
    ``require_signature = true`` (the library's default is false, for the demo and tests),
    and under that policy an unsigned candidate is refused."""
    shipped = configmod.load(ROOT / "config" / "gateway.toml")
    assert shipped.fleet.require_signature is True
    assert shipped.fleet.trusted_keys == Path("/etc/coldgate/trusted-keys")
    assert configmod.loads('gateway_id = "gw"\n').fleet.require_signature is False
    with pytest.raises(ConfigRefused) as exc:
        examine(config(tmp_path, 2), base_dir=tmp_path, running=shipped, running_version=1)
    assert exc.value.reason == "unsigned"


def test_keys_the_service_could_change_are_no_trust_anchor(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    a, b = fleet.key("a"), fleet.key("b")
    os.chmod(fleet.keyring / "b.pub", 0o664)  # group-writable: skipped, with the reason
    (fleet.keyring / "c.pub").write_bytes(fleet.keys["a"][0].read_bytes())  # a private key: skipped
    os.chmod(fleet.keyring / "c.pub", 0o644)
    ring = Keyring.load(fleet.keyring, trusted_uid=UID)
    assert set(ring.keys) == {a}
    assert any("writable by group" in s for s in ring.skipped) and any("private key" in s for s in ring.skipped)
    assert b not in ring.keys
    # owned by someone else than the trusted owner (root in production): nothing is trusted
    assert Keyring.load(fleet.keyring, trusted_uid=UID + 1).keys == {}
    os.chmod(fleet.keyring, 0o777)
    ring = Keyring.load(fleet.keyring, trusted_uid=UID)
    assert ring.keys == {} and "writable by group or others" in ring.skipped[0]


def test_keys_generate_makes_a_private_key_only_its_owner_reads_and_config_sign_signs_a_valid_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "generate", str(tmp_path / "k" / "fleet"), "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert stat.S_IMODE(Path(made["private_key"]).stat().st_mode) == 0o600
    assert main(["keys", "generate", str(tmp_path / "k" / "fleet")]) == 1  # never overwritten
    assert "never overwritten" in capsys.readouterr().err
    f = config(tmp_path, 4)
    assert main(["config", "sign", str(f), "--key", made["private_key"], "--json"]) == 0
    signed = json.loads(capsys.readouterr().out)
    assert signed["key_id"] == made["key_id"] and signed["config_version"] == 4
    doc = json.loads(signature_path(f).read_text())
    assert doc["algorithm"] == "ed25519" and doc["key_id"] == made["key_id"]
    bad = tmp_path / "bad.toml"
    bad.write_text('gateway_id = "gw"\nconfig_versoin = 4\n')
    assert main(["config", "sign", str(bad), "--key", made["private_key"]]) == 1  # an invalid file is not signed
    assert not signature_path(bad).exists()


def test_status_text_shows_the_running_version_its_hash_and_signer_a_trial_and_a_rollback() -> None:
    from agent.status import render

    text = render({"running": True, "pid": 1, "gateway_id": "gw", "clock": {}, "identity": {"key_id": "ab" * 8},
                   "fleet": {"running": {"version": 7, "sha256": "f" * 64, "signer": "0123456789abcdef",
                                         "source": "/etc/coldgate/coldgate.toml"},
                             "trial": {"remaining_s": 80.0, "waiting_for": ["driver b: no reading since the apply"]},
                             "last_rollback": {"at": "2026-01-02T03:04:05Z", "from": {"version": 8},
                                               "failures": ["driver x: no reading"]}}})
    assert "config: version 7, sha256 ffffffffffffffff…, signed by key 0123456789abcdef" in text
    assert "ON TRIAL: health check for 80.0 s more; waiting for: driver b" in text
    assert "ROLLED BACK at 2026-01-02 03:04:05 UTC from version 8: driver x: no reading" in text
    assert "identity: key abababababababab" in text
    assert "UNSIGNED" in render({"fleet": {"running": {"version": 0, "sha256": None, "signer": None}}})
