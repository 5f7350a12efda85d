"""The alarm action: only a program root allow-listed runs, without a shell, with a minimal
environment; a hanging one is killed; a failing one is logged; nothing ever raises."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.rules.actions import ActionPolicy, run_action
from agent.rules.config import RulesConfig

ALARM = {"alarm_id": "s:high:1", "rule": "high", "sensor_id": "s", "state": "raised", "severity": "alarm",
         "ts": 1.5, "started_at": 1.0, "value": 9.1}


def program(tmp_path: Path, name: str, body: str, mode: int = 0o755) -> Path:
    """An executable script, as an administrator would install one."""
    p = tmp_path / name
    p.write_text("#!/bin/sh\n" + body)
    p.chmod(mode)
    return p


def allow(tmp_path: Path, *programs: Path | str, mode: int = 0o644, uid: int | None = None) -> ActionPolicy:
    f = tmp_path / "actions.allow"
    f.write_text("# programs alarm actions may run\n" + "".join(f"{p}  # listed\n" for p in programs))
    f.chmod(mode)
    return ActionPolicy.load(f, trusted_uid=os.getuid() if uid is None else uid)


def test_a_listed_program_receives_the_alarm_as_json_on_stdin_with_a_minimal_environment(tmp_path, monkeypatch):
    out, env = tmp_path / "alarm.json", tmp_path / "env.txt"
    prog = program(tmp_path, "notify", f'cat > {out}\nenv > {env}\npwd >> {env}\n')
    monkeypatch.setenv("COLDGATE_UPLINK_TOKEN", "s3cret-of-the-agent")
    asyncio.run(run_action([str(prog), "--loud"], ALARM, 10.0, policy=allow(tmp_path, prog)))
    assert json.loads(out.read_text()) == ALARM
    lines = env.read_text().splitlines()
    assert "s3cret-of-the-agent" not in env.read_text()  # not the agent's environment
    assert "COLDGATE_ALARM_ID=s:high:1" in lines and "COLDGATE_SEVERITY=alarm" in lines
    assert lines[-1] == "/"


def test_an_unlisted_program_is_refused_and_never_runs(tmp_path, caplog):
    marker = tmp_path / "ran"
    listed = program(tmp_path, "listed", "true\n")
    other = program(tmp_path, "other", f"touch {marker}\n")
    with caplog.at_level(logging.WARNING, logger="agent.rules.actions"):
        asyncio.run(run_action([str(other)], ALARM, 5.0, policy=allow(tmp_path, listed)))
    assert not marker.exists()
    assert "refused" in caplog.text and "is not listed in" in caplog.text


@pytest.mark.parametrize("case", ["missing", "group-writable", "not-root-owned"])
def test_an_unsafe_or_missing_allow_list_allows_nothing(tmp_path, case):
    prog = program(tmp_path, "notify", "true\n")
    if case == "missing":
        policy = ActionPolicy.load(tmp_path / "nothing-here", trusted_uid=os.getuid())
        expected = "does not exist"
    elif case == "group-writable":
        policy = allow(tmp_path, prog, mode=0o664)
        expected = "writable by group or others"
    else:
        policy = allow(tmp_path, prog, uid=os.getuid() + 4242)
        expected = "not owned by root"
    refusal = policy.refusal([str(prog)])
    assert refusal is not None and expected in refusal


def test_a_listed_program_others_may_change_or_a_listed_shell_is_refused(tmp_path):
    prog = program(tmp_path, "notify", "true\n", mode=0o757)
    assert "writable by group or others" in (allow(tmp_path, prog).refusal([str(prog)]) or "")
    assert "interpreter" in (allow(tmp_path, "/bin/sh").refusal(["/bin/sh", "-c", "id"]) or "")
    assert "normalised absolute path" in (allow(tmp_path, prog).refusal([f"{tmp_path}/../x/notify"]) or "")


def test_a_shell_string_or_a_relative_program_is_refused_by_the_schema():
    with pytest.raises(ValidationError, match="not run through a shell"):
        RulesConfig.model_validate({"action": {"command": "curl http://x | sh"}})
    with pytest.raises(ValidationError, match="absolute path"):
        RulesConfig.model_validate({"action": {"command": ["logger", "-t", "x"]}})
    assert RulesConfig.model_validate({"action": {"command": ["/usr/bin/logger", "-t", "x"]}}).action.command


def test_a_hanging_program_and_its_children_are_killed_at_the_timeout(tmp_path, caplog):
    marker = tmp_path / "survived"
    prog = program(tmp_path, "hang", f"sleep 5; touch {marker}\n")
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="agent.rules.actions"):
        asyncio.run(run_action([str(prog)], ALARM, 0.3, policy=allow(tmp_path, prog)))
    assert time.monotonic() - started < 3.0
    assert "timed out after 0.3 s" in caplog.text
    time.sleep(0.1)
    assert not marker.exists()


def test_a_failing_or_missing_program_is_logged_and_never_raises(tmp_path, caplog):
    failing = program(tmp_path, "fail", "echo no modem >&2; exit 3\n")
    missing = tmp_path / "no-such-command"
    policy = allow(tmp_path, failing, missing)
    with caplog.at_level(logging.WARNING, logger="agent.rules.actions"):
        asyncio.run(run_action([str(failing)], ALARM, 5.0, policy=policy))
        asyncio.run(run_action([str(missing)], ALARM, 5.0, policy=policy))
    assert "exited with 3: no modem" in caplog.text
    assert "does not exist" in caplog.text

