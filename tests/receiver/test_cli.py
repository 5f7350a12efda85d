"""``coldgate receiver``: a real process that serves until SIGTERM, and the report command."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.receiver import Receiver
from tests.receiver.conftest import Chain, Client


def _start(args: list[str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "receiver", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        m = re.search(r"receiver listening on (http://127\.0\.0\.1:\d+)", line)
        if m:
            return proc, m.group(1)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    _, err = proc.communicate()
    raise AssertionError(f"receiver did not start: {err}")


def test_receiver_process_serves_with_token_and_faults_then_exits_0_on_sigterm(tmp_path: Path) -> None:
    db = tmp_path / "rx.db"
    token_file = tmp_path / "token"
    token_file.write_text("t0ken\n")
    proc, url = _start(
        [
            "--port",
            "0",
            "--db",
            str(db),
            "--token-file",
            str(token_file),
            "--allow-faults",
            "--fault",
            '{"status": 503}',
        ]
    )
    client = Client(url, "t0ken")
    try:
        recs = Chain().readings(5)
        assert client.post(recs).status_code == 503
        assert client.post(recs, token="wrong").status_code == 403
        assert client.post(recs, compress=True).json() == {"stored": 5, "duplicates": 0, "conflicts": 0}
    finally:
        client.close()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert "receiver stopped" in err
    with Receiver(db, create=False) as rx:
        assert rx.records() == recs


def test_receiver_process_exits_0_on_sigint(tmp_path: Path) -> None:
    proc, url = _start(["--port", "0", "--db", str(tmp_path / "rx.db")])
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert "SIGINT" in err and "Traceback" not in err


def test_report_command_prints_json_and_text_and_exits_1_unless_verified(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "rx.db"
    good, holed = Chain(), Chain()
    with Receiver(db) as rx:
        server = rx.make_server("127.0.0.1", 0)
        t = threading.Thread(target=server.serve_forever, args=(0.02,))
        t.start()
        client = Client(f"http://127.0.0.1:{server.server_address[1]}")
        try:
            client.post(good.readings(4))
            recs = holed.readings(6)
            client.post(recs[:2] + recs[4:])
        finally:
            client.close()
            server.shutdown()
            server.server_close()
            t.join()

    assert main(["receiver", "report", "--db", str(db), "--json"]) == 1  # one stream has a gap
    report: dict[str, Any] = json.loads(capsys.readouterr().out)
    streams = report["gateways"]["gw-1"]["streams"]
    assert streams[good.stream]["verdict"] == "complete-and-verified"
    assert streams[holed.stream]["gaps"] == [[3, 4]]

    assert main(["receiver", "report", "--db", str(db), "--gateway", "gw-1"]) == 1
    text = capsys.readouterr().out
    assert f"stream {good.stream}: COMPLETE-AND-VERIFIED" in text
    assert f"stream {holed.stream}: NOT-VERIFIED" in text

    assert main(["receiver", "report", "--db", str(db), "--gateway", "nobody", "--json"]) == 1  # nothing verified
    assert json.loads(capsys.readouterr().out)["gateways"] == {}


def test_report_of_a_missing_database_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["receiver", "report", "--db", str(tmp_path / "nope.db")]) == 1
    err = capsys.readouterr().err
    assert "no such receiver database" in err and "Traceback" not in err
    assert not (tmp_path / "nope.db").exists()


def test_fault_without_allow_faults_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["receiver", "--port", "0", "--db", str(tmp_path / "x.db"), "--fault", '{"status": 500}']) == 1
    assert "--allow-faults" in capsys.readouterr().err


def test_malformed_fault_is_refused_before_serving(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "receiver",
                "--port",
                "0",
                "--db",
                str(tmp_path / "x.db"),
                "--allow-faults",
                "--fault",
                '{"reset": "yes", "bogus": 1}',
            ]
        )
        == 1
    )
    assert "unknown fault key" in capsys.readouterr().err


def test_help_says_it_is_a_reference_not_a_production_service(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["receiver", "--help"])
    assert "NOT a production service" in capsys.readouterr().out
