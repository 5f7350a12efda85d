"""A restart in the middle of an excursion changes nothing: same alarms, same times, no repeats."""

from __future__ import annotations

import json
import random

import pytest

from agent.rules.config import RulesConfig
from agent.rules.engine import RuleEngine, Sample
from tests.rules.helpers import T0

RULES = RulesConfig(profiles={"trip": {"extends": "2-8C", "rules": {
    "time_out_of_range": {"window_s": 7200.0, "budget_s": 1800.0},
    "freeze": {"type": "below", "limit": 0.0, "latching": True},
    "ramp": {"type": "rate", "limit_per_min": 0.3, "severity": "warning"},
}}})
ASSIGN = {"p1": "trip", "p2": "2-8C"}


def trip() -> list[tuple[str, Sample]]:
    """Two probes, samples every 60 s, ticks in between; p1 has a 40 min excursion to 9.5 °C."""
    rng = random.Random(11)
    events: list[tuple[str, Sample]] = []
    for k in range(240):
        t = T0 + 60.0 * k
        v1 = 9.5 if 60 <= k < 100 else 5.0
        if 150 <= k < 160:
            v1 = 10.0  # a second, short excursion: the budget keeps counting across both
        events.append(("obs", Sample("p1", "temperature", round(v1 + rng.gauss(0, 0.05), 3), "Cel", t)))
        if k < 200:  # p2 goes silent after 200 min
            events.append(("obs", Sample("p2", "temperature", round(5.0 + rng.gauss(0, 0.05), 3), "Cel", t)))
            events.append(("obs", Sample("p2", "humidity", 40.0, "%RH", t)))
        events.append(("tick", Sample("", "", 0.0, "", t + 30.0)))
    return events


def run(events, engine: RuleEngine) -> list[dict]:
    out: list[dict] = []
    for kind, s in events:
        out += engine.observe(s) if kind == "obs" else engine.tick(s.ts)
    return out


def test_restart_mid_excursion_gives_the_same_alarms_at_the_same_times():
    events = trip()
    straight = run(events, RuleEngine(RULES, ASSIGN))
    assert {(c["sensor_id"], c["rule"]) for c in straight if c["state"] == "raised"} >= {
        ("p1", "high"), ("p1", "pre_high"), ("p1", "time_out_of_range"), ("p2", "missing")}

    # 4 events a minute: cut 10 min into the first excursion (before "high", 15 min delay),
    # 20 min into it (after), in the second excursion, and while p2 is silent
    for cut in (4 * 70, 4 * 80 + 1, 4 * 155 + 2, 4 * 200 + 3 * 10):
        first = RuleEngine(RULES, ASSIGN)
        before = run(events[:cut], first)
        snapshot = json.loads(json.dumps(first.snapshot(), allow_nan=False))  # strict JSON, as stored
        resumed = RuleEngine(RULES, ASSIGN, state=snapshot)
        after = run(events[cut:], resumed)
        assert before + after == straight, f"cut at event {cut}"


def test_budget_keeps_its_count_across_a_restart():
    rules = RulesConfig(profiles={"b": {"rules": {"tor": {"type": "budget", "above": 8.0, "budget_s": 900.0}}}})
    e = RuleEngine(rules, {"s": "b"})
    for k in range(10):  # 10 min out of range
        e.observe(Sample("s", "temperature", 9.0, "Cel", T0 + 60 * k))
    e.observe(Sample("s", "temperature", 5.0, "Cel", T0 + 600))
    resumed = RuleEngine(rules, {"s": "b"}, state=e.snapshot())
    out = []
    for k in range(20, 30):  # another 10 min: the budget of 15 runs out 5 min in
        out += resumed.observe(Sample("s", "temperature", 9.0, "Cel", T0 + 60 * k))
    assert [(c["state"], c["ts"] - T0, c["spent_s"]) for c in out] == [("raised", 1500.0, 900.0)]


def test_an_alarm_raised_before_the_restart_is_not_raised_again():
    rules = RulesConfig(profiles={"h": {"rules": {"high": {"type": "above", "limit": 8.0}}}})
    e = RuleEngine(rules, {"s": "h"})
    first = e.observe(Sample("s", "temperature", 9.0, "Cel", T0))
    resumed = RuleEngine(rules, {"s": "h"}, state=e.snapshot())
    assert resumed.observe(Sample("s", "temperature", 9.5, "Cel", T0 + 60)) == []
    assert resumed.tick(T0 + 120) == []
    cleared = resumed.observe(Sample("s", "temperature", 5.0, "Cel", T0 + 180))
    assert [c["alarm_id"] for c in first + cleared] == ["s:high:1", "s:high:1"]
    again = resumed.observe(Sample("s", "temperature", 9.0, "Cel", T0 + 240))
    assert again[0]["alarm_id"] == "s:high:2"  # ids count on across the restart


def test_snapshot_survives_the_store_and_an_acknowledgement_after_restart(tmp_path):
    from agent.store import Store

    rules = RulesConfig(profiles={"h": {"rules": {"high": {"type": "above", "limit": 8.0, "latching": True}}}})
    e = RuleEngine(rules, {"s": "h"})
    changes = e.observe(Sample("s", "temperature", 9.0, "Cel", T0)) + \
        e.observe(Sample("s", "temperature", 5.0, "Cel", T0 + 60))
    path = tmp_path / "store.db"
    with Store.open(path, gateway_id="gw-test") as store:
        store.append([{"type": "alarm", "time_quality": "synced", **c} for c in changes],
                     state={"rules": e.snapshot()})
    with Store.open(path, gateway_id="gw-test") as store:
        resumed = RuleEngine(rules, {"s": "h"}, state=store.load_state("rules"))
        assert [a["alarm_id"] for a in resumed.active()] == ["s:high:1"]
        ack = resumed.acknowledge("s:high:1", "qa", "checked", T0 + 100)
        assert ack["state"] == "acknowledged"
        assert [c["state"] for c in resumed.tick(T0 + 101)] == ["cleared"]
        stored = store.records(type="alarm")
    assert [r["state"] for r in stored] == ["raised"]
    assert stored[0]["started_at"].endswith("Z")


def test_a_changed_profile_keeps_the_state_of_rules_whose_type_is_unchanged():
    old = RulesConfig(profiles={"h": {"rules": {"high": {"type": "above", "limit": 8.0, "delay_s": 600.0}}}})
    new = RulesConfig(profiles={"h": {"rules": {"high": {"type": "above", "limit": 8.0, "delay_s": 300.0}}}})
    e = RuleEngine(old, {"s": "h"})
    e.observe(Sample("s", "temperature", 9.0, "Cel", T0))
    resumed = RuleEngine(new, {"s": "h"}, state=e.snapshot())
    out = resumed.tick(T0 + 300)
    assert [(c["state"], c["ts"] - T0, c["started_at"] - T0) for c in out] == [("raised", 300.0, 0.0)]


# -- saved states of other versions ---------------------------------------------------------

#: A rule state as 0.1.0 saved it (version 1, wall-clock times): a probe 10 min into an
#: excursion (15 min delay, 30 min budget, both still running), a latched freeze alarm
#: cleared by its condition and not yet acknowledged.
V1 = {"version": 1, "sensors": {"s": {
    "profile": "old", "last_ts": T0 + 600.0,
    "mkt": {"sum_we": 600.0 * 4.02e-16, "sum_w": 600.0, "last_ts": T0 + 600.0, "last_e": 4.02e-16, "gaps": 0,
            "gap_s": 0.0, "buckets": []},
    "rules": {
        "high": {"type": "above", "since": T0, "raised": False, "value": 9.5, "peak": 9.5},
        "tor": {"type": "budget", "out": True, "last_ts": T0 + 600.0, "spent": 600.0, "raised": False,
                "first_out": T0, "value": 9.5, "intervals": []},
        "freeze": {"type": "below", "since": None, "raised": False, "value": 9.5, "peak": -0.5},
    }}},
    "book": {"alarms": {"s:freeze:1": {
        "alarm_id": "s:freeze:1", "rule": "freeze", "sensor_id": "s", "state": "raised", "severity": "alarm",
        "rule_type": "below", "profile": "old", "latching": True, "started_at": T0 - 3600.0,
        "raised_at": T0 - 3600.0, "ended_at": T0 - 3000.0, "acknowledged": False, "cleared": False,
        "figures": {"value": -0.5, "limit": 0.0}}},
        "open": {"s\x00freeze": "s:freeze:1"}, "counters": {"s\x00freeze": 1}, "pending": []}}
OLD = RulesConfig(profiles={"old": {"rules": {
    "high": {"type": "above", "limit": 8.0, "delay_s": 900.0},
    "tor": {"type": "budget", "above": 8.0, "budget_s": 1800.0},
    "freeze": {"type": "below", "limit": 0.0, "latching": True},
}}})


def test_a_version_1_state_is_migrated_and_its_excursion_goes_on_being_timed(caplog):
    with caplog.at_level("WARNING", "coldgate.rules"):
        e = RuleEngine(OLD, {"s": "old"}, state=json.loads(json.dumps(V1)))
    assert "version 1" in caplog.text and "migrated" in caplog.text
    # the timeline starts at the wall time: its times go on as they were
    out = []
    for k in range(11, 41):
        out += e.observe(Sample("s", "temperature", 9.5, "Cel", T0 + 60.0 * k, T0 + 60.0 * k))
    raised = {c["rule"]: c for c in out if c["state"] == "raised"}
    assert raised["high"]["ts"] == T0 + 900.0 and raised["high"]["started_at"] == T0
    assert raised["tor"]["ts"] == T0 + 1800.0 and raised["tor"]["spent_s"] == 1800.0
    # the latched alarm of before: acknowledged, released, its duration from its own times
    e.acknowledge("s:freeze:1", "qa", "checked", T0 + 2500.0)
    (cleared,) = e.tick(T0 + 2500.0)
    assert cleared["alarm_id"] == "s:freeze:1" and cleared["duration_s"] == 600.0
    assert e.snapshot()["version"] == 2


@pytest.mark.parametrize("bad", [
    {"version": 7},
    {"version": 2, "sensors": {"s": {"profile": "old"}}},  # no mkt
    {"version": 2, "sensors": {"s": {"profile": "old", "last_elapsed": "soon", "mkt": {}}}},
    {"version": 2, "sensors": {"s": {"profile": "old", "walls": [[2.0, 0.0], [1.0, 0.0]],
                                     "mkt": V1["sensors"]["s"]["mkt"]}}},
    {"version": 2, "sensors": [], "book": {"alarms": {"x": {"figures": 3}}}},
    {"version": 1, "sensors": {"s": {"mkt": None}}},
])
def test_a_state_that_cannot_be_used_is_refused_with_a_value_error_saying_why(bad):
    with pytest.raises(ValueError, match="rules state"):
        RuleEngine(OLD, {"s": "old"}, state=bad)
