"""`coldgate verify` and the script in docs/verify.md agree, and both catch each kind of tampering."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent import protocol
from agent.cli import main

DOC = Path(__file__).resolve().parents[2] / "docs" / "verify.md"
GATEWAY = "gw-0042"


def _script(tmp_path: Path) -> Path:
    (code,) = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    path = tmp_path / "verify_export.py"
    path.write_text(code, encoding="utf-8")
    return path


class Export:
    """A gateway's chain with checkpoints, as JSON-lines records."""

    def __init__(self, key: Ed25519PrivateKey, stream: str | None = None) -> None:
        self.key, self.stream, self.records = key, stream or str(uuid.uuid4()), []  # type: list[dict[str, Any]]

    def _append(self, fields: dict[str, Any]) -> None:
        seq = len(self.records) + 1
        prev = self.records[-1]["hash"] if self.records else protocol.ZERO_HASH
        rec = {"stream": self.stream, "seq": seq, "ts": f"2026-11-23T08:{seq % 60:02d}:00.000Z",
               "time_quality": "synced", **fields, "prev_hash": prev}
        rec["hash"] = protocol.hash_of(rec)
        self.records.append(rec)

    def readings(self, n: int) -> Export:
        for i in range(n):
            self._append({"type": "reading", "sensor_id": "p1", "quantity": "temperature", "value": 4 + i / 8,
                          "unit": "Cel"})
        return self

    def checkpoint(self, key: Ed25519PrivateKey | None = None) -> Export:
        head = self.records[-1]
        details = protocol.sign_checkpoint(key or self.key, GATEWAY, self.stream, head["seq"], head["hash"])
        self._append({"type": "event", "event": "chain_checkpoint", "details": details})
        return self

    def rechain(self, records: list[dict[str, Any]], key: Ed25519PrivateKey) -> list[dict[str, Any]]:
        """What a forger holding the database does: recompute every hash and re-sign every checkpoint."""
        out: list[dict[str, Any]] = []
        for r in records:
            r = {k: v for k, v in r.items() if k != "hash"}
            r["prev_hash"] = out[-1]["hash"] if out else protocol.ZERO_HASH
            if r.get("event") == "chain_checkpoint":
                h = r["details"]["head_seq"]
                r["details"] = protocol.sign_checkpoint(key, GATEWAY, self.stream, h, out[h - 1]["hash"])
            r["hash"] = protocol.hash_of(r)
            out.append(r)
        return out


def _write(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def _pub_hex(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def _both(tmp_path: Path, export: Path, key: Ed25519PrivateKey, capsys: pytest.CaptureFixture[str]) -> tuple[int, int, dict]:
    script = subprocess.run([sys.executable, str(_script(tmp_path)), str(export), _pub_hex(key), GATEWAY],
                            capture_output=True, text=True, timeout=60)
    capsys.readouterr()
    code = main(["verify", str(export), "--key", _pub_hex(key), "--gateway", GATEWAY, "--json"])
    report = json.loads(capsys.readouterr().out)
    return script.returncode, code, report


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def export(key: Ed25519PrivateKey) -> Export:
    return Export(key).readings(6).checkpoint().readings(5).checkpoint()


def test_both_pass_an_intact_export_and_say_how_far_the_signatures_reach(
    tmp_path: Path, key: Ed25519PrivateKey, export: Export, capsys: pytest.CaptureFixture[str]
) -> None:
    script, cli, report = _both(tmp_path, _write(tmp_path / "x.jsonl", export.records), key, capsys)
    assert (script, cli) == (0, 0)
    (s,) = report["streams"].values()
    assert s["verdict"] == "complete-and-verified"
    assert (s["records"], s["verified_checkpoints"], s["signed_through"]) == (13, 2, 12)


def _edited(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = [dict(r) for r in records]
    out[2]["value"] = 7.5  # an excursion hidden: hash kept
    return out


def _deleted(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return records[:3] + records[4:]


def _reordered(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = list(records)
    out[3], out[4] = out[4], out[3]
    return out


@pytest.mark.parametrize(
    ("tamper", "why"),
    [(_edited, "bad hash"), (_deleted, "prev_hash mismatch"), (_reordered, "out of order")],
    ids=["edited value", "deleted record", "reordered pair"],
)
def test_both_catch_tampering_with_the_records(
    tmp_path: Path, key: Ed25519PrivateKey, export: Export, capsys: pytest.CaptureFixture[str], tamper: Any, why: str
) -> None:
    script, cli, report = _both(tmp_path, _write(tmp_path / "x.jsonl", tamper(export.records)), key, capsys)
    assert (script, cli) == (1, 1)
    (s,) = report["streams"].values()
    assert s["verdict"] == "not-verified"
    whys = {p["why"] for p in s["problems"]} | ({"prev_hash mismatch"} if s["gaps"] else set())
    assert why in whys


def test_both_catch_a_chain_rewritten_whole_and_re_signed_by_another_key(
    tmp_path: Path, key: Ed25519PrivateKey, export: Export, capsys: pytest.CaptureFixture[str]
) -> None:
    forged = export.rechain(_edited(export.records), Ed25519PrivateKey.generate())
    assert all(protocol.verify_record(r) for r in forged)  # every hash and link is consistent again
    script, cli, report = _both(tmp_path, _write(tmp_path / "x.jsonl", forged), key, capsys)
    assert (script, cli) == (1, 1)
    (s,) = report["streams"].values()
    assert [p["why"] for p in s["problems"]] == ["bad checkpoint", "bad checkpoint"]
    assert s["verified_checkpoints"] == 0


def test_both_catch_a_forged_signature_and_a_checkpoint_that_names_another_hash(
    tmp_path: Path, key: Ed25519PrivateKey, export: Export, capsys: pytest.CaptureFixture[str]
) -> None:
    records = [dict(r) for r in export.records]
    forged = {k: v for k, v in records[12].items() if k != "hash"}  # the last checkpoint, seq 13
    forged["details"] = {**forged["details"], "signature": "A" * 86 + "=="}
    forged["hash"] = protocol.hash_of(forged)  # its own hash and link stay consistent
    wrong_head = {k: v for k, v in records[6].items() if k != "hash"}  # seq 7: signed, but over another hash
    wrong_head["details"] = protocol.sign_checkpoint(key, GATEWAY, export.stream, 6, "f" * 64)
    wrong_head["hash"] = protocol.hash_of(wrong_head)
    for bad, seq in ((forged, 13), (wrong_head, 7)):
        tampered = records[: seq - 1] + [bad]
        script, cli, report = _both(tmp_path, _write(tmp_path / "x.jsonl", tampered), key, capsys)
        assert (script, cli) == (1, 1)
        (s,) = report["streams"].values()
        assert [p["seq"] for p in s["problems"] if p["why"] == "bad checkpoint"] == [seq]


def test_a_checkpoint_for_another_gateway_does_not_verify(key: Ed25519PrivateKey, export: Export) -> None:
    cp = export.records[6]
    raw = bytes.fromhex(_pub_hex(key))
    assert protocol.verify_checkpoint(cp, GATEWAY, raw)
    assert not protocol.verify_checkpoint(cp, "gw-other", raw)
    assert protocol.checkpoint_problem(cp, GATEWAY, bytes.fromhex(_pub_hex(Ed25519PrivateKey.generate())))


def test_verify_takes_a_pem_key_file_and_says_unreadable_lines_plainly(
    tmp_path: Path, key: Ed25519PrivateKey, export: Export, capsys: pytest.CaptureFixture[str]
) -> None:
    pem = tmp_path / "gw.pub"
    pem.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo))
    path = _write(tmp_path / "x.jsonl", export.records)
    assert main(["verify", str(path), "--key", str(pem), "--gateway", GATEWAY]) == 0
    assert "COMPLETE-AND-VERIFIED" in capsys.readouterr().out
    with path.open("a") as f:
        f.write("{not json\n")
    assert main(["verify", str(path), "--key", str(pem), "--gateway", GATEWAY]) == 1
    assert "not JSON" in capsys.readouterr().out
    assert main(["verify", str(path), "--key", "nonsense", "--gateway", GATEWAY]) == 1
    assert "public key is PEM" in capsys.readouterr().err
