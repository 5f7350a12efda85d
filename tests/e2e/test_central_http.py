"""End to end through the HTTP uplink, every part a real process: the agent daemon
(``coldgate run``) → a round-robin balancer → two ``coldgate receiver`` processes → one
PostgreSQL.

Why a balancer, and this one. The agent has one ``uplink.url``; a fleet that runs several
receiver processes puts them behind a load balancer, and that is what is modelled here:
:class:`~tests.e2e.central.RoundRobin` forwards each request to the next receiver, as
HAProxy's ``mode http`` with ``balance roundrobin`` does, and answers 502 when a receiver
fails after taking a request, as a balancer does. So consecutive batches of the one stream
are stored by different processes, and each link between two batches is checked by
whichever process brings its second end. Restarting the agent between two URLs would never
have both receivers on the stream at once; two agents would be two streams. With a
receiver that holds a batch past the agent's read timeout, the agent's resend goes to the
other receiver while the first still has it: the same batch of one stream in the hands of
two processes at once, stored by one and then again by the other (the balancer's log
shows the overlap; PostgreSQL's per-stream lock and primary key make the second a
duplicate). Two processes inside the very same transaction window are proven where
that can be forced, in ``tests/receiver/test_concurrency.py``; this test proves the
deployment: the agent's real uplink through a balancer, with receivers failing.

The faults, each placed and awaited by what the processes show: a receiver that answers
late, one whose answer is lost after its commit, one that exits between its commit and its
answer, one SIGKILLed while it holds a batch, and the agent SIGKILLed twice (once while a
receiver is still storing the batch it waits for). At the end PostgreSQL holds every
committed record of the agent's stream exactly once, with no gap and a verified chain.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.central import CentralDB, HttpReceiver, RoundRobin
from tests.e2e.harness import AgentProcess, assert_receiver_holds_everything, wait_until, write_config

pytestmark = pytest.mark.slow


def overlapping(log: list[tuple[int, str, float, float, int]]) -> list[str]:
    """Keys (batches) that two different receivers held at the same moment."""
    out = []
    for i, (port, key, start, end, _) in enumerate(log):
        for port2, key2, start2, end2, _ in log[i + 1:]:
            if key == key2 and port != port2 and start < end2 and start2 < end:
                out.append(key)
    return out


def test_agent_to_two_http_receivers_on_one_postgresql_survives_every_fault_and_ends_verified(
        tmp_path: Path, postgres: Any) -> None:
    db = CentralDB(postgres.url)
    a = HttpReceiver(tmp_path / "rx-a.log", postgres.url).start()
    b = HttpReceiver(tmp_path / "rx-b.log", postgres.url).start()
    lb = RoundRobin([a.port, b.port])
    cfg = write_config(tmp_path, lb.url, sim="speed = 20")
    agent = AgentProcess(cfg)
    starts = 0
    try:
        # A answers 2.5 s late: the agent gives up after 1 s and resends; the balancer hands the
        # resend to B, which stores it while A still holds the same batch, then A stores it too.
        a.faults([{"delay_s": 2.5}])
        agent.start()
        starts += 1
        wait_until(lambda: overlapping(lb.log), 30, "one batch held by both receivers at once")

        # B's answer is lost after its commit (the balancer says 502); the resend is a duplicate.
        b.faults([{"drop_response": True}])
        b.wait_log(r"injecting fault \{'drop_response': True\}")

        # A exits between its commit and its answer; the balancer sends on to B until A is back.
        a.faults([{"exit_after_store": True}])
        wait_until(lambda: a.exited() is not None, 30, "receiver A to exit after its commit")
        assert a.exited() == 70, a.output()
        before = db.count()
        wait_until(lambda: db.count() > before + 50, 30, "B alone to carry on", every=0.2)
        a.start()

        # The agent is SIGKILLed while A holds the batch it waits for; A stores it after.
        a.faults([{"delay_s": 3}])
        a.wait_log(r"injecting fault \{'delay_s': 3\.0\}")
        agent.kill()
        agent.start()
        starts += 1

        # B is SIGKILLed with a batch in hand (held, not yet stored), and restarted.
        b.faults([{"delay_s": 60}])
        b.wait_log(r"injecting fault \{'delay_s': 60\.0\}")
        b.kill()
        before = db.count()
        wait_until(lambda: db.count() > before + 50, 30, "A alone to carry on", every=0.2)
        b.start()

        # the second SIGKILL of the agent, mid-run, then the backlog catches up through the daemon
        before = db.count()
        wait_until(lambda: db.count() > before + 100, 30, "both receivers storing again", every=0.2)
        agent.kill()
        agent.start()
        starts += 1
        before = db.count()
        wait_until(lambda: db.count() > before + 50 and agent.pending() <= 100, 45,
                   "the backlog to catch up after the second agent kill", every=0.2)
        assert agent.stop() == 0
        # what the stop's bounded final sync did not send, `coldgate sync --now` sends
        out = subprocess.run([sys.executable, "-m", "agent", "sync", "--now", "--config", str(cfg)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and ", 0 record(s) still pending" in out.stdout, out.stdout + out.stderr
        assert agent.pending() == 0
        assert a.stop() == 0 and b.stop() == 0
    finally:
        if agent.proc is not None:
            agent.kill()
        for r in (a, b):
            if r.exited() is None:
                r.kill()
        lb.close()

    remote = assert_receiver_holds_everything(agent, db)
    local = agent.all_records()
    assert [r["seq"] for r in remote] == list(range(1, len(local) + 1))
    assert len([r for r in local if r["type"] == "event" and r["event"] == "agent_started"]) == starts
    stored_by = Counter(port for port, _, _, _, status in lb.log if status == 200)
    assert stored_by[a.port] >= 5 and stored_by[b.port] >= 5, stored_by  # both receivers carried the stream
    assert db.stream_report(local[0]["stream"])["duplicates"] > 0  # the resends, stored once
    report = db.report()["gateways"]["gw-e2e"]
    assert report["verdict"] == "complete-and-verified" and list(report["streams"]) == [local[0]["stream"]]
    for log in tmp_path.glob("*.log"):
        assert "Traceback" not in log.read_text(), f"{log.name}: {log.read_text()[-3000:]}"
