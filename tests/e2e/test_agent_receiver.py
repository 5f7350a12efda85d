"""The agent and the reference receiver as real processes on loopback.

Every test ends with the receiver holding every committed record exactly once, with no
gap and a valid chain (or, for a rejected batch, exactly that batch kept aside locally).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.harness import (
    AgentProcess,
    ReceiverProcess,
    assert_receiver_holds_everything,
    free_port,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.slow

READINGS = 600  # the simulated logger's limit; 2 probes x 3 quantities



def drained(agent: AgentProcess, at_least: int) -> bool:
    return agent.head() >= at_least and agent.pending() == 0


def test_normal_run_delivers_every_record_once_in_a_valid_chain(tmp_path: Path, receiver: ReceiverProcess) -> None:
    agent = AgentProcess(write_config(tmp_path, receiver.url)).start()
    try:
        wait_until(lambda: drained(agent, READINGS), 60, "the backlog to drain")
    finally:
        assert agent.stop() == 0
    remote = assert_receiver_holds_everything(agent, receiver)
    readings = [r for r in remote if r["type"] == "reading"]
    assert len(readings) == READINGS
    assert {r["sensor_id"] for r in readings} == {"p1", "p2"}


def test_receiver_down_then_back_the_backlog_drains(tmp_path: Path) -> None:
    port = free_port()
    receiver = ReceiverProcess(tmp_path / "receiver.db", port=port)
    agent = AgentProcess(write_config(tmp_path, receiver.url)).start()
    try:
        wait_until(lambda: agent.head() >= READINGS, 60, "readings to be buffered")
        status = wait_until(lambda: (s := agent.status())["sync"].get("last_error") and s, 30, "a sync error")
        assert status["sync"]["result"] == "transient" and "cannot reach" in status["sync"]["last_error"]
        assert agent.pending() >= READINGS
        receiver.start()
        wait_until(lambda: drained(agent, READINGS), 60, "the backlog to drain")
    finally:
        agent.stop()
        receiver.stop()
    assert_receiver_holds_everything(agent, receiver)


def test_500_429_timeouts_and_resets_are_retried_until_everything_is_delivered(
        tmp_path: Path, receiver: ReceiverProcess) -> None:
    receiver.faults([{"status": 500}, {"status": 429, "retry_after": 1}, {"delay_s": 2.5}, {"reset": True},
                     {"status": 503}, {"reset": True}, {"status": 429, "retry_after": 1}])
    agent = AgentProcess(write_config(tmp_path, receiver.url)).start()
    try:
        wait_until(lambda: drained(agent, READINGS), 90, "the backlog to drain through the faults")
    finally:
        agent.stop()
    assert_receiver_holds_everything(agent, receiver)


def test_lost_response_is_resent_and_stored_once_as_a_duplicate(tmp_path: Path, receiver: ReceiverProcess) -> None:
    receiver.faults([{"drop_response": True}, {"drop_response": True}])
    agent = AgentProcess(write_config(tmp_path, receiver.url)).start()
    try:
        wait_until(lambda: drained(agent, READINGS), 60, "the backlog to drain")
    finally:
        agent.stop()
    assert_receiver_holds_everything(agent, receiver)
    assert receiver.stream_report(agent.all_records()[0]["stream"])["duplicates"] >= 1


def test_batch_answered_400_is_set_aside_with_an_event_and_the_rest_goes_on(
        tmp_path: Path, receiver: ReceiverProcess) -> None:
    receiver.faults([{"status": 400}])
    agent = AgentProcess(write_config(tmp_path, receiver.url)).start()
    try:
        wait_until(lambda: drained(agent, READINGS), 60, "the backlog to drain")
    finally:
        agent.stop()
    local = agent.all_records()
    aside = [r["seq"] for r in local if r["_state"] == "set_aside"]
    assert aside and aside == list(range(aside[0], aside[-1] + 1))
    events = [r for r in local if r["type"] == "event" and r["event"] == "batch_set_aside"]
    assert events and events[0]["details"]["first_seq"] == aside[0] and events[0]["details"]["last_seq"] == aside[-1]
    remote = {r["seq"] for r in receiver.records(stream=local[0]["stream"])}
    assert remote == {r["seq"] for r in local} - set(aside)  # everything else arrived, the event too
    assert_receiver_holds_everything(agent, receiver, set_aside_ok=True)


def test_sigkill_mid_run_several_times_loses_no_committed_record_and_seq_continues(
        tmp_path: Path, receiver: ReceiverProcess) -> None:
    cfg = write_config(tmp_path, receiver.url, sim="speed = 40")
    agent = AgentProcess(cfg)
    committed: list[tuple[int, str]] = []
    for round_ in range(4):
        agent.start()
        before = agent.head()
        wait_until(lambda b=before: agent.head() >= b + 60, 30, "new records")
        with agent.store() as s:
            committed = [(r["seq"], r["hash"]) for r in s.records()]
        agent.kill()
        with agent.store() as s:
            after = {(r["seq"], r["hash"]) for r in s.records()}
        assert set(committed) <= after, f"round {round_}: a committed record vanished"
    agent.start()
    agent.signal(signal.SIGTERM)
    assert agent.stop() == 0
    cfg.write_text(cfg.read_text().replace("speed = 40", "speed = 40\nlimit = 1"))
    agent.start()
    try:
        wait_until(lambda: agent.pending() == 0, 60, "the backlog to drain")
    finally:
        agent.stop()
    local = agent.all_records()
    starts = [r for r in local if r["type"] == "event" and r["event"] == "agent_started"]
    assert len(starts) == 6 and len({r["stream"] for r in local}) == 1
    assert_receiver_holds_everything(agent, receiver)


def test_corrupt_database_at_start_is_set_aside_and_a_new_stream_is_delivered(
        tmp_path: Path, receiver: ReceiverProcess) -> None:
    cfg = write_config(tmp_path, receiver.url)
    (tmp_path / "store.db").write_bytes(b"\x00garbage, not SQLite\x00" * 512)
    agent = AgentProcess(cfg).start()
    try:
        wait_until(lambda: drained(agent, READINGS), 60, "the backlog to drain")
    finally:
        agent.stop()
    first = agent.all_records()[0]
    assert first["event"] == "stream_started" and first["details"]["reason"] == "corrupt"
    assert Path(first["details"]["set_aside"]).exists()
    assert_receiver_holds_everything(agent, receiver)


def test_refused_token_shows_in_status_and_nothing_is_lost(tmp_path: Path, receiver: ReceiverProcess) -> None:
    agent = AgentProcess(write_config(tmp_path, receiver.url, token="wrong-token")).start()
    try:
        wait_until(lambda: agent.head() >= READINGS, 60, "readings to be buffered")
        status = wait_until(lambda: (s := agent.status())["sync"]["result"] == "auth_refused" and s, 30,
                            "status to show the refusal")
        assert status["sync"]["last_status"] in (401, 403)
        assert agent.pending() == agent.head()  # nothing acknowledged, nothing dropped
    finally:
        agent.stop()
    assert receiver.records() == []


def test_wrong_uplink_url_shows_in_status_and_readings_keep_buffering(tmp_path: Path) -> None:
    agent = AgentProcess(write_config(tmp_path, f"http://127.0.0.1:{free_port()}")).start()
    try:
        wait_until(lambda: agent.head() >= READINGS, 60, "readings to be buffered")
        status = wait_until(lambda: (s := agent.status())["sync"].get("last_error") and s, 30, "a sync error")
        assert "cannot reach" in status["sync"]["last_error"]
        assert status["store"]["pending"] == agent.head()
    finally:
        agent.stop()


def test_sighup_with_a_broken_pushed_config_keeps_the_agent_running_and_records_why(
        tmp_path: Path, receiver: ReceiverProcess) -> None:
    cfg = write_config(tmp_path, receiver.url, sim="speed = 5")
    agent = AgentProcess(cfg).start()
    good = cfg.read_text()
    try:
        cfg.write_text(good.replace("batch_size = 100", "batch_size = 0\nbatch_sise = 5"))
        agent.signal(signal.SIGHUP)
        rejected = wait_until(lambda: [r for r in agent.all_records()
                                       if r["type"] == "event" and r["event"] == "config_rejected"], 30, "rejection")
        problems = " ".join(rejected[0]["details"]["problems"])
        assert "uplink.batch_size" in problems and "did you mean 'batch_size'?" in problems
        head = agent.head()
        wait_until(lambda: agent.head() > head + 10, 30, "readings to keep flowing")
        cfg.write_text(good)
        agent.signal(signal.SIGHUP)
        wait_until(lambda: [r for r in agent.all_records() if r["type"] == "event"
                            and r["event"] == "config_applied" and r["details"]["at"] == "reload"], 30, "reload")
        receiver.stop()  # the agent's last words cannot be delivered now
    finally:
        assert agent.stop() == 0
    assert agent.pending() > 0
    receiver.start()
    # what the agent committed on its way out is sent by `coldgate sync --now` without it
    out = subprocess.run([sys.executable, "-m", "agent", "sync", "--now", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "this process (agent not running)" in out.stdout and ", 0 record(s) still pending" in out.stdout
    assert_receiver_holds_everything(agent, receiver)
