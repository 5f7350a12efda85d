"""A shipment through real processes: SIGKILLed mid-leg, resumed, and reported from both copies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import (
    AgentProcess,
    ReceiverProcess,
    assert_receiver_holds_everything,
    cli,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.slow


def coldgate(*args: str) -> Any:
    out = cli(*args, "--json", timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout)


def test_a_shipment_killed_mid_leg_resumes_with_its_budget_and_both_copies_report_alike(tmp_path: Path) -> None:
    receiver = ReceiverProcess(tmp_path / "rx.db").start()
    cfg = write_config(tmp_path, receiver.url, sim="speed = 1")
    agent = AgentProcess(cfg).start()
    c = str(cfg)
    try:
        # p1 sits at 5 °C: above the product's 4.5 °C bound, so its budget is being spent
        coldgate("shipment", "start", "SHP-K", "--sensor", "p1", "--ignore", "0", "--budget", "1h",
                 "--above", "4.5", "--custodian", "Pharma Ltd", "--config", c)
        coldgate("shipment", "leg", "SHP-K", "--name", "road", "--mode", "road", "--config", c)
        before = wait_until(lambda: (s := coldgate("shipment", "status", "SHP-K", "--config", c))["stability"][
            "spent_s"] >= 2 and s, 30, "budget being spent")
        agent.kill()  # mid-leg, mid-excursion
        agent.start()
        after = coldgate("shipment", "status", "SHP-K", "--config", c)
        assert after["state"] == "in_transit" and after["leg"]["name"] == "road"
        # what was spent before the kill is there still (a commit carries the book while it spends)
        assert after["stability"]["spent_s"] >= before["stability"]["spent_s"] - 0.5
        assert after["custodian"] == "Pharma Ltd"
        seq0 = agent.head()
        wait_until(lambda: any(r.get("shipment") == "SHP-K" and r["seq"] > seq0 for r in agent.all_records()), 30,
                   "readings of the resumed shipment")
        coldgate("shipment", "handover", "SHP-K", "--from", "Pharma Ltd", "--to", "Courier", "--signed-by", "K. Lee",
                 "--config", c)
        coldgate("shipment", "stop", "SHP-K", "--config", c)
        wait_until(lambda: agent.pending() == 0, 30, "everything sent")
        assert agent.stop() == 0
        assert_receiver_holds_everything(agent, receiver)
        gateway = coldgate("report", "SHP-K", "--config", c)
        central = coldgate("receiver", "report", "--db", str(tmp_path / "rx.db"), "--shipment", "SHP-K")
        for r in (gateway, central):
            r.pop("source", None)
            r.pop("generated_at", None)
        assert gateway == central  # the same records, the same report
        assert [h["to"] for h in gateway["custody"]] == ["Courier"] or "Courier" in json.dumps(gateway["custody"])
    finally:
        agent.stop()
        receiver.stop()
