"""Releasing what the server refused: ``coldgate sync --retry-set-aside`` against a running
agent and the reference receiver, real processes on loopback (issue 9 item 16).

The receiver's fault plan refuses batches with 422 (the agent sets them aside, as it must
for a refusal); once the server is "fixed" (its plan is used up), the operator releases
them through the CLI, which asks the running agent over its control socket.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import (
    AgentProcess,
    ReceiverProcess,
    assert_receiver_holds_everything,
    wait_until,
    write_config,
)
from tests.e2e.harness import (
    cli as coldgate,
)

pytestmark = pytest.mark.slow

READINGS = 600  # the simulated logger's limit; 2 probes x 3 quantities




def set_aside(agent: AgentProcess) -> list[int]:
    return [r["seq"] for r in agent.all_records() if r["_state"] == "set_aside"]


def ranges(seqs: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for s in seqs:
        if out and out[-1][1] == s - 1:
            out[-1][1] = s
        else:
            out.append([s, s])
    return out


def released_events(agent: AgentProcess) -> list[dict[str, Any]]:
    return [r for r in agent.all_records() if r["type"] == "event" and r["event"] == "set_aside_released"]


def test_retry_set_aside_through_the_cli_sends_the_refused_records_again_and_the_receiver_stores_them(
        tmp_path: Path, receiver: ReceiverProcess) -> None:
    # three batches refused, then the server takes everything: the first (seq 1 in it), and
    # readings among the others (until a batch succeeds, at most one set-aside event waits)
    receiver.faults([{"status": 422, "times": 3}])
    cfg = write_config(tmp_path, receiver.url)
    agent = AgentProcess(cfg).start()
    try:
        wait_until(lambda: agent.head() >= READINGS and agent.pending() == 0, 60, "the backlog to drain")
        aside = set_aside(agent)
        assert aside and aside[0] == 1  # the first batch, seq 1 with it: the stream cannot verify without it
        assert any(r["type"] == "reading" for r in agent.all_records() if r["seq"] in aside)
        stream = agent.all_records()[0]["stream"]
        assert not {r["seq"] for r in receiver.records(stream=stream)} & set(aside)

        out = coldgate("sync", "--retry-set-aside", "--config", str(cfg))
        assert out.returncode == 0, out.stdout + out.stderr
        assert out.stdout.startswith(("sync (the running agent): ok", "sync (the running agent): idle"))
        seqs = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in ranges(aside))
        assert f"{len(aside)} set-aside record(s) put back in the queue (seq {seqs})" in out.stdout

        wait_until(lambda: agent.pending() == 0, 30, "the released records to be sent")
        assert set_aside(agent) == []
        (event,) = released_events(agent)
        assert event["details"]["count"] == len(aside) and event["details"]["ranges"] == ranges(aside)
    finally:
        assert agent.stop() == 0
    # every record, the released ones and the event that released them, stored exactly once
    remote = assert_receiver_holds_everything(agent, receiver)
    assert any(r["type"] == "event" and r["event"] == "set_aside_released" for r in remote)


def test_retry_set_aside_with_nothing_set_aside_says_so_records_no_event_and_exits_0(
        tmp_path: Path, receiver: ReceiverProcess) -> None:
    cfg = write_config(tmp_path, receiver.url)
    agent = AgentProcess(cfg).start()
    try:
        wait_until(lambda: agent.head() >= READINGS and agent.pending() == 0, 60, "the backlog to drain")
        out = coldgate("sync", "--retry-set-aside", "--config", str(cfg))
        assert out.returncode == 0, out.stdout + out.stderr
        assert "sync (the running agent): " in out.stdout
        assert "nothing was set aside: no record to release" in out.stdout
        assert "put back in the queue" not in out.stdout
        out = coldgate("sync", "--retry-set-aside", "--config", str(cfg), "--json")
        assert out.returncode == 0, out.stdout + out.stderr
        assert json.loads(out.stdout)["released"] == {"count": 0, "ranges": []}
        head = agent.head()
    finally:
        assert agent.stop() == 0
    assert released_events(agent) == []  # nothing released, nothing to record
    assert agent.head() > head  # (the stop's own events came after: the store was written)
    assert_receiver_holds_everything(agent, receiver)
