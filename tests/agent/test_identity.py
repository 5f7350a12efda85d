"""The gateway's identity and its signed chain checkpoints (issue 10 item 4, gateway side)."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.cli import main
from agent.exc import IdentityError
from agent.identity import (
    Identity,
    checkpoint_message,
    key_id,
    load,
    load_or_create,
    load_public,
    verify_checkpoint,
)
from agent.stamp import Stamper
from agent.store import Store

#: The test vector the receiver and ``coldgate verify`` are held to (docs/fleet.md): the
#: key from the 32-byte seed 00 01 … 1f, whose public key is the well-known 03a107bf…
SEED = bytes(range(32))
PUBLIC_HEX = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
STREAM = "6f1c2b9e-1d2a-4c3b-9e8f-0a1b2c3d4e5f"
MESSAGE = (b'{"gateway_id":"gw-0001","head_hash":"' + b"ab" * 32 + b'","head_seq":42,'
           b'"purpose":"coldgate-chain-checkpoint-v1","stream":"' + STREAM.encode() + b'"}')
SIGNATURE = "FKSufshDxFMELtOHl12OL7+6kVmhFsOfDVUwO8eY5njShNAaD1xLCbUxsM9RHpbvPFUEBlAYWOXxrNer6DWrAA=="


def test_the_checkpoint_message_is_the_rfc8785_json_of_its_five_members_in_utf8() -> None:
    assert checkpoint_message("gw-0001", STREAM, 42, "ab" * 32) == MESSAGE


def test_the_checkpoint_test_vector_signs_and_verifies_and_its_key_id_is_sha256_of_the_raw_key() -> None:
    private = Ed25519PrivateKey.from_private_bytes(SEED)
    ident = Identity(private, Path("identity.key"))
    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert raw.hex() == PUBLIC_HEX
    assert ident.key_id == key_id(raw) == __import__("hashlib").sha256(raw).hexdigest()[:16]
    details = ident.checkpoint("gw-0001", STREAM, 42, "ab" * 32)
    assert details == {"head_seq": 42, "head_hash": "ab" * 32, "key_id": ident.key_id, "algorithm": "ed25519",
                       "signature": SIGNATURE}
    # the signature is over exactly MESSAGE, checked with nothing of ours but the bytes
    Ed25519PublicKey.from_public_bytes(bytes.fromhex(PUBLIC_HEX)).verify(base64.b64decode(SIGNATURE), MESSAGE)
    assert verify_checkpoint(private.public_key(), "gw-0001", STREAM, details)
    assert not verify_checkpoint(private.public_key(), "gw-0002", STREAM, details)  # bound to the gateway
    assert not verify_checkpoint(private.public_key(), "gw-0001", STREAM, {**details, "head_seq": 41})


def test_the_identity_is_made_once_with_a_private_key_only_its_owner_reads(tmp_path: Path) -> None:
    path = tmp_path / "state" / "identity.key"
    first, created = load_or_create(path)
    assert created and stat.S_IMODE(path.stat().st_mode) == 0o600
    again, created_again = load_or_create(path)
    assert not created_again and again.key_id == first.key_id
    assert load_public(path).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw) == \
        bytes.fromhex(first.describe()["public_key_hex"])
    assert "PRIVATE" not in json.dumps(first.describe()) and "PRIVATE" not in repr(first)


def test_a_private_key_others_may_read_is_refused_as_possibly_leaked(tmp_path: Path) -> None:
    path = tmp_path / "identity.key"
    load_or_create(path)
    os.chmod(path, 0o644)
    with pytest.raises(IdentityError, match="readable by others"):
        load(path)


def test_a_checkpoint_covers_the_head_read_in_its_own_transaction_and_takes_the_next_seq(tmp_path: Path) -> None:
    ident, _ = load_or_create(tmp_path / "identity.key")
    stamper = Stamper()
    with Store.open(tmp_path / "s.db", gateway_id="gw", stamper=stamper) as store:
        store.append([stamper.event("a", {}), stamper.event("b", {})])
        head_seq, head_hash = store.head()
        seq = store.append_checkpoint(lambda stream, n, h: stamper.event(
            "chain_checkpoint", ident.checkpoint("gw", stream, n, h)))
        assert seq == head_seq + 1
        cp = store.records(type="event")[-1]
        assert cp["seq"] == seq and cp["event"] == "chain_checkpoint"
        assert cp["details"]["head_seq"] == head_seq and cp["details"]["head_hash"] == head_hash
        assert verify_checkpoint(ident.public, "gw", store.stream_id, cp["details"])


def test_coldgate_identity_prints_the_public_key_and_its_key_id_never_the_private_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('gateway_id = "gw"\n[store]\npath = "store.db"\n')
    assert main(["identity", "-c", str(cfg), "--json"]) == 1  # none yet: said in one line (JSON under --json)
    assert "first start" in json.loads(capsys.readouterr().out)["error"]
    ident, _ = load_or_create(tmp_path / "identity.key")
    assert main(["identity", "-c", str(cfg), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["key_id"] == ident.key_id and "BEGIN PUBLIC KEY" in out["public_key_pem"]
    assert main(["identity", "-c", str(cfg)]) == 0
    text = capsys.readouterr().out
    assert ident.key_id in text and "PRIVATE" not in text
