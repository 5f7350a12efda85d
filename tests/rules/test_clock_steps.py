"""Wall-clock steps change no duration: the rules measure on elapsed time (issue 9, items 4-5).

Samples carry their wall time ``ts`` (what a reading is stamped with) and their elapsed
time on the agent timeline. Here the two are built by hand: elapsed runs on, ``ts`` steps.
The first tests are the engine alone; the last one is the ingest and the engine together
under freezegun (the wall clock frozen and stepped; the boot-time clock a counter), with
no daemon.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from freezegun import freeze_time

from agent import config as configmod
from agent.ingest import Ingest
from agent.rules.config import RulesConfig
from agent.rules.engine import RuleEngine, Sample
from agent.stamp import Stamper
from agent.timebase import Clock
from drivers.base import Reading
from tests.rules.helpers import T0

STEP = 3 * 3600.0
LANE = RulesConfig(profiles={"lane": {"rules": {
    "high": {"type": "above", "limit": 8.0, "delay_s": 600.0},
    "tor": {"type": "budget", "above": 8.0, "budget_s": 900.0},
    "mkt": {"type": "mkt", "limit": 8.0, "min_span_s": 300.0},
    "ramp": {"type": "rate", "limit_per_min": 0.5, "severity": "warning"},
    "silent": {"type": "missing", "timeout_s": 120.0, "severity": "alarm"},
}}})


def trip(step_at: float | None, step: float, *, every: float = 10.0, until: float = 3600.0,
         warm: tuple[float, float] = (300.0, 2400.0)) -> list[tuple[str, Sample]]:
    """A probe sampled every ``every`` s, at 12 °C during ``warm``; ticks between samples.
    The wall clock steps by ``step`` at elapsed ``step_at``."""
    events: list[tuple[str, Sample]] = []
    t = 0.0
    while t <= until:
        wall = T0 + t + (step if step_at is not None and t >= step_at else 0.0)
        value = 12.0 if warm[0] <= t < warm[1] else 5.0
        events.append(("obs", Sample("p", "temperature", value, "Cel", wall, T0 + t)))
        tick = t + every / 2
        events.append(("tick", Sample("", "", 0.0, "", wall + every / 2, T0 + tick)))
        t += every
    return events


def run(events: list[tuple[str, Sample]], engine: RuleEngine) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for kind, s in events:
        assert s.elapsed is not None
        out += engine.observe(s) if kind == "obs" else engine.tick(s.elapsed, s.ts)
    return out


def by_rule(changes: list[dict[str, Any]], state: str = "raised") -> dict[str, dict[str, Any]]:
    return {c["rule"]: c for c in changes if c["state"] == state}


def test_a_backward_step_while_in_excursion_raises_high_after_the_delay_of_elapsed_time():
    """0.1.0 clamped every sample after a 3 h backward step to the last time before it:
    the delay never ran out, the budget and MKT stopped counting, no alarm."""
    straight = run(trip(None, 0.0), RuleEngine(LANE, {"p": "lane"}))
    stepped = run(trip(400.0, -STEP), RuleEngine(LANE, {"p": "lane"}))  # 100 s into the excursion
    raised = by_rule(stepped)
    assert {"high", "tor", "mkt"} <= set(raised)
    high, tor, mkt = raised["high"], raised["tor"], raised["mkt"]
    # the delay ran on elapsed time: 600 s after the excursion began (before the step) ...
    assert high["duration_s"] == 600.0 and high["started_at"] == T0 + 300.0
    # ... stamped on the clock as it read then, after the step
    assert high["ts"] == T0 + 900.0 - STEP
    assert tor["spent_s"] == 900.0 and tor["ts"] == T0 + 1200.0 - STEP
    assert mkt["span_s"] >= 300.0 and mkt["mkt"] >= 8.0
    # every alarm and every figure is the run's without the step, only the wall stamps moved
    assert [(c["rule"], c["state"], c.get("duration_s"), c.get("spent_s")) for c in stepped] == \
           [(c["rule"], c["state"], c.get("duration_s"), c.get("spent_s")) for c in straight]
    assert [c["ts"] for c in stepped] == [c["ts"] - (STEP if c["ts"] >= T0 + 400.0 else 0.0) for c in straight]
    assert "silent" not in raised


def test_a_forward_step_raises_no_missing_for_a_sensor_sending_every_half_second():
    """0.1.0: the first tick after a 3 h forward step found the sensor silent for 3 h and
    raised ``missing`` (severity alarm), cleared by the next sample with ``duration_s`` 3 h."""
    events = trip(60.0, STEP, every=0.5, until=180.0, warm=(0.0, 0.0))
    changes = run(events, RuleEngine(LANE, {"p": "lane"}))
    assert changes == []


def test_a_real_silence_still_raises_missing_after_its_timeout_stamped_from_the_last_sample():
    events = trip(60.0, STEP, every=0.5, until=180.0, warm=(0.0, 0.0))
    last = [s for kind, s in events if kind == "obs"][-1]
    e = RuleEngine(LANE, {"p": "lane"})
    run(events, e)
    assert last.elapsed is not None
    assert e.tick(last.elapsed + 119.9, last.ts + 119.9) == []
    (missing,) = e.tick(last.elapsed + 125.0, last.ts + 125.0)
    assert missing["rule"] == "silent" and missing["state"] == "raised"
    assert missing["duration_s"] == 120.0 and missing["ts"] == last.ts + 120.0 and missing["started_at"] == last.ts


def test_an_instant_between_two_samples_across_a_step_is_stamped_from_the_sample_before_it():
    e = RuleEngine(LANE, {"p": "lane"})
    e.observe(Sample("p", "temperature", 12.0, "Cel", T0, T0))
    e.observe(Sample("p", "temperature", 12.0, "Cel", T0 + 590.0, T0 + 590.0))
    # the next sample comes 20 s later, after a backward step: the delay ran out in between
    out = e.observe(Sample("p", "temperature", 12.0, "Cel", T0 + 610.0 - STEP, T0 + 610.0))
    high = by_rule(out)["high"]
    assert high["ts"] == T0 + 600.0 and high["duration_s"] == 600.0


def test_durations_of_cleared_alarms_are_elapsed_time_across_a_step():
    e = RuleEngine(LANE, {"p": "lane"})
    out = []
    for k in range(0, 100):  # 990 s at 12 °C, a backward step at 500 s
        t = 10.0 * k
        out += e.observe(Sample("p", "temperature", 12.0, "Cel", T0 + t - (STEP if t >= 500 else 0.0), T0 + t))
    out += e.observe(Sample("p", "temperature", 5.0, "Cel", T0 + 1000.0 - STEP, T0 + 1000.0))
    cleared = by_rule(out, "cleared")
    assert cleared["high"]["duration_s"] == 1000.0  # not 1000 - 3 h
    assert cleared["high"]["ts"] == T0 + 1000.0 - STEP


def test_a_sensor_never_heard_from_is_stamped_with_the_ticks_wall_time():
    e = RuleEngine(LANE, {"p": "lane"})
    assert e.tick(T0, T0 - STEP) == []
    (missing,) = e.tick(T0 + 130.0, T0 + 130.0 - STEP)
    assert missing["ts"] == T0 + 120.0 - STEP and missing["duration_s"] == 120.0


# -- the ingest and the rules, under freezegun --------------------------------------------

CFG = """
gateway_id = "gw"
[time]
sync_source = "assume_synced"
[[sensors]]
id = "p"
profile = "lane"
[rules.profiles.lane.rules.high]
type = "above"
limit = 8.0
delay_s = 600
[rules.profiles.lane.rules.silent]
type = "missing"
timeout_s = 120
"""


class CounterClock(Clock):
    """The wall clock is ``time.time()`` (frozen by freezegun); the boot-time clock is a
    counter the test advances: freezegun moves ``time.monotonic`` with every ``move_to``,
    back in time too, which no boot-time clock does."""

    def __init__(self) -> None:
        super().__init__("assume_synced")
        self.boot_ns = 5_000_000_000

    def mono_ns(self) -> int:
        return self.boot_ns


def test_ingest_and_rules_under_freezegun_a_backward_then_forward_step_keep_the_delay_and_raise_no_missing():
    cfg = configmod.loads(CFG)
    clock = CounterClock()
    with freeze_time("2026-11-23 08:00:00") as frozen:
        ingest = Ingest(cfg, Stamper(clock))
        ingest.set_judge(RuleEngine(cfg.rules, {"p": "lane"}), Sample)
        start = clock.now()
        alarms = []

        def second(value: float, *, step: float = 0.0) -> None:
            clock.boot_ns += 1_000_000_000
            frozen.move_to(datetime.fromtimestamp(clock.now() + 1.0 + step, UTC))
            ingest.readings([Reading("p", "temperature", value, "Cel")])
            ingest.tick()
            alarms.extend(i for i in ingest.take() if i["type"] == "alarm")

        for _ in range(100):
            second(12.0)  # 100 s into an excursion
        second(12.0, step=-STEP)  # the clock steps back 3 h
        for _ in range(600):
            second(12.0)
        second(12.0, step=+STEP)  # and forward again
        for _ in range(30):
            second(12.0)
    (high,) = [a for a in alarms if a["state"] == "raised"]
    assert high["rule"] == "high" and high["duration_s"] == 600.0
    assert high["started_at"] == start + 1.0
    # raised 600 s of elapsed time in (at the 601st sample), on the clock of then: 3 h back
    assert abs(high["ts"] - (start + 601.0 - STEP)) < 1e-6
    assert not [a for a in alarms if a["rule"] == "silent"]
