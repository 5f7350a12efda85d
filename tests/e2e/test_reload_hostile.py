"""What a running agent does with a config it must refuse: a file that holds secrets,
nests 2000 deep or is not UTF-8, arriving by ``SIGHUP`` of the live file, by the control
socket's ``apply`` (as a fleet tool sends it) or by ``coldgate config apply`` (issue 9
items 10 and 11).

Real processes on loopback: the agent (its stdout and stderr in ``agent.log``), the
reference receiver it sends the ``config_rejected`` events to, the CLI. Each refusal is
awaited as its event in the store.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import AgentProcess, ReceiverProcess, wait_until, write_config
from tests.e2e.harness import cli as coldgate

pytestmark = pytest.mark.slow




def rejections(agent: AgentProcess) -> list[dict[str, Any]]:
    return [r for r in agent.all_records() if r["type"] == "event" and r["event"] == "config_rejected"]


def received_rejections(receiver: ReceiverProcess) -> list[dict[str, Any]]:
    return [r for r in receiver.records() if r["type"] == "event" and r["event"] == "config_rejected"]


def reload_rejected(agent: AgentProcess, live: Path, data: bytes) -> dict[str, Any]:
    """``data`` as the live file, ``SIGHUP``: the agent's ``config_rejected`` event for it."""
    before = len(rejections(agent))
    live.write_bytes(data)
    agent.signal(signal.SIGHUP)
    found = wait_until(lambda: (r := rejections(agent))[before:] and r, 30, "the config_rejected event")
    assert len(found) == before + 1
    return dict(found[-1]["details"])


def running_sha(agent: AgentProcess) -> str:
    return str(agent.request("status")["fleet"]["running"]["sha256"])


# -- secrets (item 11) ---------------------------------------------------------------------

SECRETS = {
    "token": "987654321987",  # a token given as an integer
    "url": "s3cr3t/Url+pw=",  # a URL password as a password generator makes them (base64)
    "mqtt": "31337313373",  # an MQTT password given as an integer
    "mqtt_both": "s3cr3t-mqtt-pw",  # a password beside a password_file
    "file": "s3cr3t-token-file-9f8e7d",  # a token file others can read
    "apply": "s3cr3t-apply-token-4c3b",  # a valid file the agent refuses (store.path changed)
}


def test_a_rejected_configs_secrets_reach_no_event_no_log_line_and_no_cli_output(
        tmp_path: Path, receiver: ReceiverProcess) -> None:
    live = write_config(tmp_path, receiver.url, sim="speed = 5")
    good = live.read_text()
    agent = AgentProcess(live).start()
    outputs: list[str] = []
    token_file = tmp_path / "token"
    token_file.write_text(SECRETS["file"] + "\n")
    os.chmod(token_file, 0o644)
    mqtt = ('transport = "mqtt"\n[uplink.mqtt]\nbroker = "mqtt://127.0.0.1:1883"\npassword = {}\n'
            '{}[time]')
    try:
        head = agent.head()
        reasons = [
            reload_rejected(agent, live, good.replace('token = "e2e-token"', f"token = {SECRETS['token']}").encode()),
            reload_rejected(agent, live, good.replace(
                f'url = "{receiver.url}"', f'url = "ftp://fleet:{SECRETS["url"]}@127.0.0.1:{receiver.port}"').encode()),
            reload_rejected(agent, live, good.replace("[time]", mqtt.format(SECRETS["mqtt"], "")).encode()),
            reload_rejected(agent, live, good.replace("[time]", mqtt.format(
                f'"{SECRETS["mqtt_both"]}"', f'password_file = "{token_file}"\n')).encode()),
            reload_rejected(agent, live, good.replace('token = "e2e-token"', f'token_file = "{token_file}"').encode()),
        ]
        assert [r["reason"] for r in reasons] == ["invalid"] * 4 + ["preflight"]
        problems = [" ".join(r["problems"]) for r in reasons]
        assert "uplink.token" in problems[0] and "uplink.url" in problems[1]
        assert "uplink.mqtt.password" in problems[2] and "not both" in problems[3]
        assert "readable by others" in problems[4]
        live.write_text(good)
        # `coldgate config apply`: refused by the CLI itself, then one only the agent can refuse
        bad = tmp_path / "bad.toml"
        bad.write_text(good.replace('token = "e2e-token"', f"token = {SECRETS['token']}"))
        out = coldgate("config", "apply", str(bad), "--config", str(live))
        assert out.returncode == 1 and "uplink.token" in out.stdout
        outputs.append(out.stdout + out.stderr)
        moved = tmp_path / "moved.toml"
        moved.write_text(good.replace('token = "e2e-token"', f'token = "{SECRETS["apply"]}"')
                         .replace('path = "store.db"', 'path = "other.db"'))
        for flags in ([], ["--json"]):
            out = coldgate("config", "apply", str(moved), "--config", str(live), *flags)
            assert out.returncode == 1 and "store.path: cannot change while running" in out.stdout
            outputs.append(out.stdout + out.stderr)
        assert rejections(agent)[-1]["details"]["reason"] == "needs_restart"
        assert live.read_text() == good
        received = wait_until(lambda: len(r := received_rejections(receiver)) == 7 and r, 30,
                              "the seven config_rejected events at the receiver")
        assert agent.head() > head
    finally:
        assert agent.stop() == 0
    stored = json.dumps(rejections(agent))
    sent = json.dumps(received)
    log = agent.log.read_text()
    assert "rejected" in log and "Traceback" not in log
    for name, secret in SECRETS.items():
        assert secret not in stored, f"{name}: in a stored config_rejected event"
        assert secret not in sent, f"{name}: in a config_rejected event the receiver holds"
        assert secret not in log, f"{name}: in the agent's log"
        for out in outputs:
            assert secret not in out, f"{name}: in the CLI's output"


# -- strict parsing (item 10) ----------------------------------------------------------------

def test_reloads_of_a_2000_deep_file_and_of_a_non_utf8_file_are_refused_with_a_reason_and_the_running_config_stays(
        tmp_path: Path, receiver: ReceiverProcess) -> None:
    live = write_config(tmp_path, receiver.url, sim="speed = 5")
    good = live.read_bytes()
    agent = AgentProcess(live).start()
    hostile = {
        "arrays": good + b"\ndeep = " + b"[" * 2000 + b"]" * 2000 + b"\n",
        "tables": good + b"\ndeep = " + b"{ a = " * 2000 + b"1" + b" }" * 2000 + b"\n",
        "latin-1": good + "# Kühlkette\n".encode("latin-1"),
    }
    try:
        sha = running_sha(agent)
        for name, data in hostile.items():
            details = reload_rejected(agent, live, data)
            problem = " ".join(details["problems"])
            assert details["reason"] == "invalid", name
            assert ("not UTF-8" if name == "latin-1" else "nested") in problem, name
            assert running_sha(agent) == sha, name
        live.write_bytes(good)
        # the same files from a fleet tool (the control socket) and from `coldgate config apply`
        for name, data in hostile.items():
            candidate = tmp_path / f"{name}.toml"
            candidate.write_bytes(data)
            verdict = agent.request("apply", path=str(candidate), source=str(live))
            assert verdict["applied"] is False and verdict["reason"] == "invalid" and verdict["problems"], name
            out = coldgate("config", "apply", str(candidate), "--config", str(live))
            assert out.returncode == 1 and f"{live} left unchanged" in out.stdout, name
            assert "Traceback" not in out.stdout + out.stderr and "Error:" not in out.stderr, name
        assert running_sha(agent) == sha and live.read_bytes() == good
        assert len(rejections(agent)) == 2 * len(hostile)
        head = agent.head()
        wait_until(lambda: agent.head() > head + 10, 30, "readings to keep flowing")
        # and the agent still reloads: the good file again is applied
        agent.signal(signal.SIGHUP)
        wait_until(lambda: [r for r in agent.all_records() if r["type"] == "event"
                            and r["event"] == "config_applied" and r["details"]["at"] == "reload"], 30, "reload")
    finally:
        assert agent.stop() == 0
    log = agent.log.read_text()
    assert log.count("rejected, keeping the running one") == 2 * len(hostile)
    for word in ("Traceback", "RecursionError", "UnicodeDecodeError", "Task exception"):
        assert word not in log
