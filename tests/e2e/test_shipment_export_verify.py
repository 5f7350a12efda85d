"""A shipment's export, checked as an auditor would: a real agent runs and seals a shipment,
`coldgate export` writes it, and `coldgate verify --from-seq` and the script of
docs/verify.md both verify it — signature included — and both catch an edited value."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import AgentProcess, cli, wait_until, write_config

pytestmark = pytest.mark.slow

DOC = Path(__file__).resolve().parents[2] / "docs" / "verify.md"


def coldgate(*args: str, ok: bool = True) -> tuple[int, Any]:
    out = cli(*args, "--json", timeout=60)
    if ok:
        assert out.returncode == 0, out.stdout + out.stderr
    return out.returncode, json.loads(out.stdout)


def script(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (code,) = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    path = tmp_path / "verify_export.py"
    path.write_text(code, encoding="utf-8")
    return subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True, timeout=60)


def test_a_sealed_shipment_export_verifies_with_its_checkpoint_and_an_edit_is_caught(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, None, sim="speed = 1")
    c = str(cfg)
    agent = AgentProcess(cfg).start()
    try:
        coldgate("shipment", "start", "SHP-V", "--sensor", "p1", "--ignore", "0", "--config", c)
        started = coldgate("status", "--config", c)[1]["store"]["head_seq"]
        wait_until(lambda: coldgate("status", "--config", c)[1]["store"]["head_seq"] > started + 10, 30,
                   "readings in the shipment")
        coldgate("shipment", "stop", "SHP-V", "--config", c)
        out = tmp_path / "export"
        manifest = wait_until(
            lambda: (m := coldgate("export", "SHP-V", "--config", c, "--out", str(out))[1])["sealed_by_checkpoint"]
            and m, 30, "the checkpoint that seals the shipment")
    finally:
        agent.stop()
    key = coldgate("identity", "--config", c)[1]["public_key_hex"]
    first, last, sealed = manifest["first_seq"], manifest["last_seq"], manifest["sealed_by_checkpoint"]
    assert first > 1 and sealed > last
    chain = out / "chain.jsonl"
    assert f"--from-seq {first}" in (out / "README.txt").read_text()

    code, result = coldgate("verify", str(chain), "--key", key, "--gateway", "gw-e2e", "--from-seq", str(first),
                            ok=False)
    assert code == 0, result
    (stream,) = result["streams"].values()
    assert (stream["verdict"], stream["first_seq"], stream["last_seq"]) == ("complete-and-verified", first, sealed)
    assert stream["signed_through"] >= last and stream["gaps"] == [] and stream["problems"] == []
    lines = chain.read_bytes().splitlines()
    assert stream["anchor_prev_hash"] == json.loads(lines[0])["prev_hash"]
    done = script(tmp_path, str(chain), key, "gw-e2e", str(first))
    assert done.returncode == 0 and done.stdout.startswith("verified"), done.stdout + done.stderr

    # asked as a whole stream, the same file is not: the records before it are missing
    code, whole = coldgate("verify", str(chain), "--key", key, "--gateway", "gw-e2e", ok=False)
    assert code == 1 and next(iter(whole["streams"].values()))["gaps"] == [[1, first - 1]]

    # one reading's value edited: both checks fail
    i = next(n for n, line in enumerate(lines) if b'"type":"reading"' in line)
    rec = json.loads(lines[i])
    rec["value"] = rec["value"] + 3.0
    lines[i] = json.dumps(rec, separators=(",", ":")).encode()
    chain.write_bytes(b"\n".join(lines) + b"\n")
    code, edited = coldgate("verify", str(chain), "--key", key, "--gateway", "gw-e2e", "--from-seq", str(first),
                            ok=False)
    assert code == 1 and any(p["why"] == "bad hash" and p["seq"] == rec["seq"]
                             for p in next(iter(edited["streams"].values()))["problems"])
    done = script(tmp_path, str(chain), key, "gw-e2e", str(first))
    assert done.returncode == 1 and f"seq {rec['seq']}: hash does not match" in done.stdout
