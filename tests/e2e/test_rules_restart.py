"""A restart in the middle of an excursion, with a real agent process killed by SIGKILL.

The probe is out of range from its first sample (12 °C on a 2-8 °C lane). The agent is
killed before the alarm's delay has run out and restarted: the alarm must still fire
``delay_s`` after the excursion *started* (before the crash), the time-out-of-range
budget must keep the seconds counted before the crash, and nothing is raised twice.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.timebase import parse_rfc3339
from tests.e2e.harness import AgentProcess, free_port, wait_until, write_config

pytestmark = pytest.mark.slow

DELAY_S = 6.0
BUDGET_S = 10.0

PROFILE = f"""
[[sensors]]
id = "p1"
profile = "lane"

[rules.profiles.lane.rules.high]
type = "above"
limit = 8.0
delay_s = {DELAY_S}

[rules.profiles.lane.rules.tor]
type = "budget"
above = 8.0
budget_s = {BUDGET_S}
"""

SIM = """speed = 1
sensors = [{ id = "p1", interval_s = 0.5, noise = 0, excursions = [{ at_s = 0, duration_s = 100000, to = 12.0, ramp_s = 0 }] }]
"""


def alarms(agent: AgentProcess) -> list[dict]:
    return [r for r in agent.all_records() if r["type"] == "alarm"]


def test_alarm_and_budget_keep_their_times_across_a_kill_mid_excursion_and_nothing_is_raised_twice(
        tmp_path: Path) -> None:
    cfg = write_config(tmp_path, f"http://127.0.0.1:{free_port()}", extra=PROFILE)
    cfg.write_text(cfg.read_text().replace(
        'sensors = [{ id = "p1", interval_s = 1 }, { id = "p2", interval_s = 1, setpoint = 4.0 }]', "")
        .replace("speed = 0\nlimit = 600", SIM))
    agent = AgentProcess(cfg).start()
    first = wait_until(lambda: [r for r in agent.all_records() if r["type"] == "reading"
                                and r["quantity"] == "temperature"], 20, "the first reading")[0]
    started = parse_rfc3339(first["ts"])
    assert first["value"] == 12.0
    wait_until(lambda: agent.head() >= first["seq"] + 6, 20, "a few seconds of excursion")
    agent.kill()  # ~2 s into the excursion: before the 6 s delay, before the 10 s budget
    assert alarms(agent) == []
    agent.start()
    try:
        wait_until(lambda: {a["rule"] for a in alarms(agent)} >= {"high", "tor"}, 40, "both alarms")
        high = next(a for a in alarms(agent) if a["rule"] == "high")
        agent.kill()  # and once more after the raise
        agent.start()
        wait_until(lambda: agent.head() > high["seq"] + 20, 20, "the agent to run on")
    finally:
        agent.stop()
    raised = [a for a in alarms(agent) if a["state"] == "raised"]
    by_rule = {a["rule"]: a for a in raised}
    assert sorted(a["rule"] for a in raised) == ["high", "tor"]  # each exactly once
    assert parse_rfc3339(by_rule["high"]["started_at"]) == pytest.approx(started, abs=0.01)
    assert parse_rfc3339(by_rule["high"]["ts"]) == pytest.approx(started + DELAY_S, abs=0.01)
    # the budget counted the seconds before the crash and the down time (sample and hold)
    assert parse_rfc3339(by_rule["tor"]["ts"]) == pytest.approx(started + BUDGET_S, abs=0.01)
