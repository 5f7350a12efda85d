"""Every worked example in docs/protocol.md is what the code computes, byte for byte."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent import protocol

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
_BLOCK = re.compile(r"<!-- example: (?P<name>[\w-]+) -->\n```\w*\n(?P<text>.*?)\n```", re.S)


def examples() -> dict[str, str]:
    return {m["name"]: m["text"] for m in _BLOCK.finditer(DOC.read_text(encoding="utf-8"))}


def test_the_documents_canonical_bytes_and_digests_are_the_codes() -> None:
    ex = examples()
    prev = protocol.ZERO_HASH
    for n in (1, 2):
        record = json.loads(ex[f"record-{n}"])
        canonical = ex[f"record-{n}-canonical"].encode("utf-8")
        assert protocol.body_of(record) == canonical
        digest = hashlib.sha256(prev.encode("ascii") + canonical).hexdigest()
        assert digest == ex[f"record-{n}-hash"] == record["hash"] == protocol.hash_of(record)
        assert record["prev_hash"] == prev
        prev = digest
    assert len(ex["record-1-canonical"].encode()) == 292  # as the text says


def test_the_documents_checkpoint_verifies_and_is_what_the_example_key_signs() -> None:
    ex = examples()
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert raw.hex() == ex["checkpoint-public-key"]
    r2, r3 = json.loads(ex["record-2"]), json.loads(ex["record-3"])
    message = protocol.checkpoint_message("gw-0042", r3["stream"], 2, r2["hash"])
    assert message == ex["checkpoint-message"].encode()
    assert protocol.sign_checkpoint(key, "gw-0042", r3["stream"], 2, r2["hash"]) == r3["details"]
    assert protocol.verify_checkpoint(r3, "gw-0042", raw)
    assert protocol.verify_record(r3) and r3["prev_hash"] == r2["hash"]
    assert not protocol.verify_checkpoint(r3, "gw-0043", raw)  # another gateway's name: refused


def test_the_documents_batch_is_what_frame_batch_writes() -> None:
    ex = examples()
    stored = []
    for n in (1, 2, 3):
        r = json.loads(ex[f"record-{n}"])
        stored.append((r["seq"], protocol.body_of(r).decode(), r["hash"]))
    body = protocol.frame_batch(
        "gw-0042",
        stored,
        sent_at="2026-11-23T08:20:01.250Z",
        config={"version": 7, "sha256": "5" * 64, "signer": "9f2c4e1a0b3d5e6f"},
    )
    assert body == ex["batch"].encode("utf-8")
    key = protocol.idempotency_key("gw-0042", json.loads(ex["record-1"])["stream"], 1, 3)
    assert f"Idempotency-Key: {key}" in DOC.read_text(encoding="utf-8")
