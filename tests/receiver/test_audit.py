"""The auditor's path: the receiver's export, checked by `coldgate verify` and by docs/verify.md's script.

Whoever holds the central database can rewrite a record and recompute every hash after
it: the chain is then consistent again, and only the gateway's signed checkpoints tell.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent import protocol
from agent.cli import main
from agent.receiver import Receiver
from agent.receiver.validate import validate_batch
from tests.receiver.conftest import GATEWAY, Chain, body_of, key_of

DOC = Path(__file__).resolve().parents[2] / "docs" / "verify.md"


def _pub_hex(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def _signed_chain(key: Ed25519PrivateKey) -> tuple[Chain, list[dict[str, Any]]]:
    chain = Chain()
    recs: list[dict[str, Any]] = []
    for n in (6, 4):
        recs += chain.readings(n)
        recs.append(chain.event("chain_checkpoint",
                                protocol.sign_checkpoint(key, GATEWAY, chain.stream, chain.seq, chain.prev)))
    return chain, recs


def _rewrite_from(rx: Receiver, seq: int, value: float) -> None:
    """A forger with write access to the database: edits seq's value and re-chains everything after it."""
    store: Any = rx.store
    rows = store._query("SELECT seq, body FROM records ORDER BY seq")
    prev = protocol.ZERO_HASH
    with store._transaction() as cur:
        for s, body in rows:
            rec = json.loads(body)
            if s == seq:
                rec["value"] = value
            rec["prev_hash"] = prev
            canon = protocol.canonical(rec)
            prev = protocol.record_hash(prev, canon)
            cur.execute(store._sql("UPDATE records SET body = ?, prev_hash = ?, hash = ? WHERE seq = ?"),
                        (canon.decode(), rec["prev_hash"], prev, s))


def _check_export(db: str, tmp_path: Path, key: Ed25519PrivateKey, capsys: pytest.CaptureFixture[str]) -> tuple[int, int]:
    assert main(["receiver", "export", "--db", db, "--gateway", GATEWAY]) == 0
    export = tmp_path / "export.jsonl"
    export.write_text(capsys.readouterr().out)
    cli = main(["verify", str(export), "--key", _pub_hex(key), "--gateway", GATEWAY])
    capsys.readouterr()
    (code,) = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    script = tmp_path / "verify_export.py"
    script.write_text(code)
    doc = subprocess.run([sys.executable, str(script), str(export), _pub_hex(key), GATEWAY],
                         capture_output=True, text=True, timeout=60).returncode
    return cli, doc


def test_an_export_from_the_receiver_verifies_and_a_rewritten_database_does_not(
    db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = Ed25519PrivateKey.generate()
    reg = tmp_path / "gateways.toml"
    reg.write_text(f'[gateways."{GATEWAY}"]\ntoken_sha256 = "{"0" * 64}"\npublic_key = "{_pub_hex(key)}"\n')
    chain, recs = _signed_chain(key)
    with Receiver(db, gateways=reg) as rx:
        rx.store_batch(validate_batch(body_of(recs), key_of(recs)))
        exported = [json.loads(line) for line in rx.export(GATEWAY)]
        assert exported == recs  # exactly as chained
        assert rx.report()["gateways"][GATEWAY]["verdict"] == "complete-and-verified"
    assert _check_export(db, tmp_path, key, capsys) == (0, 0)

    with Receiver(db, gateways=reg) as rx:
        _rewrite_from(rx, 3, 9.5)  # an excursion hidden, every hash recomputed
        s = rx.report()["gateways"][GATEWAY]["streams"][chain.stream]
    assert s["chain_breaks"] == []  # the chain alone no longer shows anything
    assert s["verdict"] == "not-verified"
    assert [b["seq"] for b in s["checkpoints"]["bad"]] == [7, 12]
    assert "the chain was rewritten" in s["checkpoints"]["bad"][0]["why"]
    assert main(["receiver", "report", "--db", db, "--gateways", str(reg)]) == 1
    capsys.readouterr()
    assert _check_export(db, tmp_path, key, capsys) == (1, 1)
