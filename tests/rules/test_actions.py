"""The alarm action: a real command gets the JSON; a hanging one is killed; a failing one is logged."""

from __future__ import annotations

import asyncio
import json
import logging
import time

from agent.rules.actions import run_action

ALARM = {"alarm_id": "s:high:1", "rule": "high", "sensor_id": "s", "state": "raised", "severity": "alarm",
         "ts": 1.5, "started_at": 1.0, "value": 9.1}


def test_a_real_command_receives_the_alarm_as_json_on_stdin(tmp_path):
    out = tmp_path / "alarm.json"
    asyncio.run(run_action(["sh", "-c", f"cat > {out}"], ALARM, 10.0))
    assert json.loads(out.read_text()) == ALARM


def test_a_shell_string_command_works_too(tmp_path):
    out = tmp_path / "alarm.json"
    asyncio.run(run_action(f"cat > '{out}'", ALARM, 10.0))
    assert json.loads(out.read_text())["alarm_id"] == "s:high:1"


def test_a_hanging_command_and_its_children_are_killed_at_the_timeout(tmp_path, caplog):
    marker = tmp_path / "survived"
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="agent.rules.actions"):
        asyncio.run(run_action(["sh", "-c", f"sleep 5; touch {marker}"], ALARM, 0.3))
    assert time.monotonic() - started < 3.0
    assert "timed out after 0.3 s" in caplog.text
    time.sleep(0.1)
    assert not marker.exists()


def test_a_failing_or_missing_command_is_logged_and_never_raises(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="agent.rules.actions"):
        asyncio.run(run_action(["sh", "-c", "echo no modem >&2; exit 3"], ALARM, 5.0))
        asyncio.run(run_action([str(tmp_path / "no-such-command")], ALARM, 5.0))
    assert "exited with 3: no modem" in caplog.text
    assert "could not start" in caplog.text
