"""End to end through the MQTT uplink, every part a real process: the agent daemon
(``coldgate run``, ``[uplink] transport = "mqtt"``) → Mosquitto → two ``coldgate receiver
--mqtt`` consumers on one shared subscription → one PostgreSQL.

Everything that can go wrong on this path happens in one run, each fault placed where it
hurts and awaited by what the processes show (their logs, the database, ``coldgate
status``), never by a sleep: a consumer exits between its commit and its answer, answers
are dropped, a consumer is SIGKILLed while it holds a batch, the agent is SIGKILLed twice
(once while a consumer is still storing the batch it is waiting for), and the broker is
killed, left down while ``coldgate status`` says so, and started again with every session
lost. At the end PostgreSQL holds every committed record of the agent's stream exactly
once, with no gap and a verified chain.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.central import CentralDB, Consumer
from tests.e2e.harness import AgentProcess, assert_receiver_holds_everything, wait_until, write_config

pytestmark = pytest.mark.slow


def mqtt_uplink(broker: str) -> str:
    """``[uplink]`` lines for the MQTT transport (see config/mqtt-uplink.toml): a short
    answer timeout so that a lost answer is resent within the test's time."""
    return (f'transport = "mqtt"\n[uplink.mqtt]\nbroker = "{broker}"\n'
            "answer_timeout_s = 2\nmessage_expiry_s = 10\nkeepalive_s = 5\n")


def status_text(agent: AgentProcess) -> str:
    out = subprocess.run([sys.executable, "-m", "agent", "status", "--config", str(agent.config)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode in (0, 1, 2, 3), out.stderr
    return out.stdout


def test_agent_to_mosquitto_to_two_consumers_to_postgresql_survives_every_fault_and_ends_verified(
        tmp_path: Path, broker: Any, postgres: Any) -> None:
    db = CentralDB(postgres.url)
    faults_a = [{"drop_response": True, "times": 2}, {"delay_s": 60}]
    a = Consumer(tmp_path / "rx-a.log", postgres.url, broker.url)
    b = Consumer(tmp_path / "rx-b.log", postgres.url, broker.url)
    a.start(*(x for f in faults_a for x in ("--fault", json.dumps(f))))
    b.start("--fault", json.dumps({"exit_after_store": True}))
    cfg = write_config(tmp_path, None, uplink_extra=mqtt_uplink(broker.url), sim="speed = 20")
    agent = AgentProcess(cfg)
    starts = 0
    try:
        agent.start()
        starts += 1

        # B stores its first batch and exits before answering; a supervisor would restart it.
        # This time it holds the next batch it gets for 3 s before storing it.
        wait_until(lambda: b.exited() is not None, 30, "consumer B to exit after its commit")
        assert b.exited() == 70, b.output()
        b.start("--fault", json.dumps({"delay_s": 3}))

        # The agent is SIGKILLed while B holds the batch it waits for: B stores it and answers
        # into the agent's persistent session, which the restarted agent finds.
        b.wait_log(r"injecting fault \{'delay_s': 3\.0\}")
        agent.kill()
        agent.start()
        starts += 1

        # A drops two answers (stored, never answered: the agent resends, answered as duplicates),
        # then holds a batch uncommitted, and is SIGKILLed with it in hand.
        a.wait_log(r"injecting fault \{'delay_s': 60\.0\}", timeout=60)
        assert len(re.findall("drop_response", a.output())) == 2
        a.kill()
        a.start()

        # The broker is killed (no persistence: every session and queued message gone).
        before = db.count()
        wait_until(lambda: db.count() > before + 100, 30, "progress after the consumer kill", every=0.2)
        broker.stop(kill=True)
        status = wait_until(lambda: (s := agent.status())["sync"]["result"] == "transient"
                            and s["sync"].get("link", {}).get("connected") is False and s,
                            30, "status to show the broker down", every=0.2)
        assert status["uplink_url"] == broker.url
        assert status["sync"]["link"]["error"].startswith(f"cannot connect to {broker.url}") or \
            status["sync"]["link"]["error"].startswith(f"disconnected from {broker.url}")
        text = status_text(agent)  # down it stays until the test starts it again
        assert f"uplink: {broker.url}: transient — broker unreachable for " in text, text
        head = agent.head()
        wait_until(lambda: agent.head() > head + 50, 30, "readings to keep buffering while the broker is down")
        broker.start()
        before = db.count()
        wait_until(lambda: db.count() > before + 100, 45, "delivery after the broker restart", every=0.2)

        # the second SIGKILL of the agent, mid-run, then the backlog catches up through the daemon
        agent.kill()
        agent.start()
        starts += 1
        before = db.count()
        wait_until(lambda: db.count() > before + 50 and agent.pending() <= 100, 45,
                   "the backlog to catch up after the second agent kill", every=0.2)
        assert agent.stop() == 0
        # what the stop's own bounded final sync did not send (its last words, on a slow
        # machine), `coldgate sync --now` sends without the agent, as an operator would
        out = subprocess.run([sys.executable, "-m", "agent", "sync", "--now", "--config", str(cfg)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and ", 0 record(s) still pending" in out.stdout, out.stdout + out.stderr
        assert agent.pending() == 0
        assert a.stop() == 0 and b.stop() == 0
    finally:
        if agent.proc is not None:
            agent.kill()
        for c in (a, b):
            if c.exited() is None:
                c.kill()

    remote = assert_receiver_holds_everything(agent, db)
    local = agent.all_records()
    assert [r["seq"] for r in remote] == list(range(1, len(local) + 1))
    assert len([r for r in local if r["type"] == "event" and r["event"] == "agent_started"]) == starts
    stream = db.stream_report(local[0]["stream"])
    assert stream["duplicates"] > 0  # the resends after the lost answers, stored once
    report = db.report()["gateways"]["gw-e2e"]
    assert report["verdict"] == "complete-and-verified" and list(report["streams"]) == [local[0]["stream"]]
    for log in tmp_path.glob("*.log"):
        assert "Traceback" not in log.read_text(), f"{log.name}: {log.read_text()[-3000:]}"
