"""`coldgate run --json` logs one JSON object a line, for a log shipper: a real agent process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from tests.e2e.harness import write_config

pytestmark = pytest.mark.slow


def test_run_json_writes_every_log_line_as_one_json_object_with_an_rfc3339_time(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "http://127.0.0.1:9", sim="speed = 1")  # nothing listens: warnings too
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(cfg), "--json"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # until the agent says it runs and the uplink has failed once
            lines.append(line)
            if any('"level": "warning"' in x for x in lines) and any("running: gateway" in x for x in lines):
                break
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=30)
        lines += rest.splitlines(keepends=True)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    records = [json.loads(x) for x in lines if x.strip()]  # every line parses: no plain text, no traceback
    assert records and all(set(r) >= {"ts", "level", "logger", "message"} for r in records)
    assert all(r["ts"].endswith("Z") and datetime.fromisoformat(r["ts"].replace("Z", "+00:00")) for r in records)
    assert {"info", "warning"} <= {r["level"] for r in records}
    assert any("running: gateway gw-e2e" in r["message"] for r in records)
    assert any(r["logger"].startswith("coldgate") for r in records)
