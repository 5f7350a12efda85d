"""Single-event rules at their edges: inclusive limits, the delay, hysteresis, latching."""

from __future__ import annotations

import random

import pytest

from agent.rules.engine import Sample
from agent.rules.evaluators import tilt_deg
from tests.rules.helpers import T0, engine, feed, states

HIGH = {"high": {"type": "above", "limit": 8.0, "delay_s": 600.0, "hysteresis": 0.5}}


def test_above_is_inclusive_exactly_at_the_limit():
    e = engine({"high": {"type": "above", "limit": 8.0}})
    assert states(feed(e, [(0, 7.999), (60, 8.0)])) == [("high", "raised", 60.0)]


def test_below_is_inclusive_exactly_at_the_limit():
    e = engine({"low": {"type": "below", "limit": 2.0}})
    assert states(feed(e, [(0, 2.001), (60, 2.0)])) == [("low", "raised", 60.0)]


def test_no_alarm_one_tick_before_the_delay():
    e = engine(HIGH)
    assert feed(e, [(0, 9.0), (599, 9.0)]) == []
    assert e.tick(T0 + 599.999) == []


def test_alarm_exactly_at_the_delay_via_tick():
    e = engine(HIGH)
    feed(e, [(0, 9.0), (300, 9.0)])
    changes = e.tick(T0 + 600.0)
    assert states(changes) == [("high", "raised", 600.0)]
    assert changes[0]["started_at"] == T0
    assert changes[0]["value"] == 9.0 and changes[0]["limit"] == 8.0 and changes[0]["delay_s"] == 600.0


def test_alarm_one_tick_after_the_delay_is_stamped_when_the_delay_ran_out():
    """A sample arriving later still stamps the raise at since + delay: the same with or without ticks."""
    e = engine(HIGH)
    changes = feed(e, [(0, 9.0), (601, 9.0)])
    assert states(changes) == [("high", "raised", 600.0)]
    assert e.tick(T0 + 700) == []  # not raised twice


def test_the_excursion_is_timed_from_its_first_violating_sample():
    e = engine(HIGH)
    changes = feed(e, [(0, 7.0), (60, 8.2), (120, 9.5), (660, 9.0)])
    assert states(changes) == [("high", "raised", 660.0)]
    assert changes[0]["started_at"] == T0 + 60


def test_returning_inside_the_limit_before_the_delay_raises_nothing():
    e = engine(HIGH)
    assert feed(e, [(0, 9.0), (300, 7.0), (700, 7.0)]) == []
    assert e.tick(T0 + 2000) == []


def test_noise_around_the_limit_neither_flaps_nor_restarts_the_delay():
    """±0.3 °C of noise on 8.0 with 0.5 hysteresis: one raise, one clear, timed from the first crossing."""
    rng = random.Random(5)
    e = engine(HIGH)
    points = [(t, 8.0 + rng.uniform(-0.3, 0.3)) for t in range(0, 3600, 30)]
    points[0] = (0, 8.1)
    points += [(3600 + t, 7.4) for t in range(0, 300, 30)]
    changes = feed(e, points)
    assert states(changes) == [("high", "raised", 600.0), ("high", "cleared", 3600.0)]
    assert changes[1]["duration_s"] == 3600.0
    assert changes[1]["peak"] == pytest.approx(max(v for _, v in points), abs=1e-6)


def test_without_hysteresis_the_same_noise_clears_at_the_first_dip():
    e = engine({"high": {"type": "above", "limit": 8.0}})
    changes = feed(e, [(0, 8.1), (30, 7.9), (60, 8.1), (90, 7.95)])
    assert [s for _, s, _ in states(changes)] == ["raised", "cleared", "raised", "cleared"]
    assert [c["alarm_id"] for c in changes] == ["s1:high:1", "s1:high:1", "s1:high:2", "s1:high:2"]


def test_auto_clear_rule_clears_by_itself_and_stays_listed_until_acknowledged():
    e = engine({"high": {"type": "above", "limit": 8.0}})
    changes = feed(e, [(0, 9.0), (60, 5.0)])
    assert [c["state"] for c in changes] == ["raised", "cleared"]
    assert [a["alarm_id"] for a in e.active()] == ["s1:high:1"]
    ack = e.acknowledge("s1:high:1", "qa", "checked the load", T0 + 120)
    assert ack["state"] == "acknowledged" and ack["by"] == "qa" and ack["reason"] == "checked the load"
    assert e.active() == []
    with pytest.raises(KeyError):
        e.acknowledge("s1:high:1", "qa", "again", T0 + 130)


def test_latching_rule_stays_raised_until_acknowledged_then_clears():
    e = engine({"high": {"type": "above", "limit": 8.0, "latching": True}})
    assert states(feed(e, [(0, 9.0), (60, 5.0), (120, 5.0)])) == [("high", "raised", 0.0)]
    assert e.active()[0]["state"] == "raised" and e.active()[0]["ended_at"] == T0 + 60
    ack = e.acknowledge("s1:high:1", "qa", "door was open", T0 + 300)
    assert ack["state"] == "acknowledged"
    cleared = e.tick(T0 + 301)
    assert states(cleared) == [("high", "cleared", 300.0)]
    assert cleared[0]["duration_s"] == 60.0  # the excursion, not the wait for the acknowledgement
    assert e.active() == []


def test_latching_recurrence_before_acknowledgement_continues_the_same_alarm():
    e = engine({"high": {"type": "above", "limit": 8.0, "latching": True}})
    changes = feed(e, [(0, 9.0), (60, 5.0), (120, 9.0), (180, 5.0)])
    assert states(changes) == [("high", "raised", 0.0)]
    e.acknowledge("s1:high:1", "qa", "ok", T0 + 200)
    assert [c["alarm_id"] for c in e.tick(T0 + 201)] == ["s1:high:1"]


def test_acknowledging_a_raised_latching_alarm_in_excursion_clears_when_the_condition_ends():
    e = engine({"high": {"type": "above", "limit": 8.0, "latching": True}})
    feed(e, [(0, 9.0)])
    e.acknowledge("s1:high:1", "qa", "on it", T0 + 10)
    assert e.tick(T0 + 20) == []
    assert states(feed(e, [(30, 5.0)])) == [("high", "cleared", 30.0)]
    assert e.active() == []


def test_out_of_range_is_true_from_the_first_violating_sample_until_clear():
    e = engine(HIGH)
    feed(e, [(0, 7.0)])
    assert not e.out_of_range("s1")
    feed(e, [(10, 8.0)])
    assert e.out_of_range("s1")  # before the delay: every sample is recorded from the start
    feed(e, [(20, 7.8)])
    assert e.out_of_range("s1")  # inside the hysteresis band
    feed(e, [(30, 7.4)])
    assert not e.out_of_range("s1")
    assert not e.out_of_range("no-such-sensor")


def test_humidity_range_is_inclusive_at_both_ends():
    e = engine({"rh": {"type": "humidity", "low": 20.0, "high": 80.0, "hysteresis": 2.0}})
    changes = feed(e, [(0, 50), (10, 80.0), (20, 79.0), (30, 77.9), (40, 20.0), (50, 21.5), (60, 22.5)],
                   quantity="humidity", unit="%RH")
    assert states(changes) == [("rh", "raised", 10.0), ("rh", "cleared", 30.0), ("rh", "raised", 40.0),
                               ("rh", "cleared", 60.0)]


def test_light_opens_the_box_and_battery_runs_low():
    e = engine({"opened": {"type": "light", "limit": 50.0}, "batt": {"type": "battery", "limit": 10.0}})
    out = feed(e, [(0, 0.0), (10, 49.9), (20, 50.0)], quantity="illuminance", unit="lx")
    out += feed(e, [(30, 10.1), (40, 10.0)], quantity="battery", unit="%EL")
    assert states(out) == [("opened", "raised", 20.0), ("batt", "raised", 40.0)]
    assert not e.out_of_range("s1")  # an open box or a weak battery does not make every sample recorded


def test_shock_raises_on_a_peak_and_clears_hold_s_after_the_last_one():
    e = engine({"drop": {"type": "shock", "limit": 50.0, "hold_s": 60.0}})
    out = feed(e, [(0, 20.0), (10, 50.0), (40, 70.0), (45, 30.0)], quantity="shock", unit="m/s2")
    assert states(out) == [("drop", "raised", 10.0)]
    assert e.tick(T0 + 99.9) == []
    cleared = e.tick(T0 + 100.0)
    assert states(cleared) == [("drop", "cleared", 100.0)]
    assert cleared[0]["value"] == 70.0 and cleared[0]["count"] == 2


@pytest.mark.parametrize(("vec", "axis", "angle"), [
    ((0.0, 0.0, 9.81), "z", 0.0),
    ((9.81, 0.0, 0.0), "z", 90.0),
    ((0.0, 0.0, -9.81), "z", 180.0),
    ((0.0, 6.9367, 6.9367), "z", 45.0),
    ((0.0, 0.0, -9.81), "-z", 0.0),
    ((0.0, 9.81, 0.0), "y", 0.0),
])
def test_tilt_angle_from_the_acceleration_vector(vec, axis, angle):
    assert tilt_deg(*vec, axis) == pytest.approx(angle, abs=1e-3)


def test_tilt_rule_judges_a_whole_vector_not_each_component():
    e = engine({"tipped": {"type": "tilt", "limit_deg": 45.0}})
    out: list = []
    # upright, then tipped 60° about x: y = g·sin60, z = g·cos60 (components arrive one by one)
    for t, (x, y, z) in [(0, (0.0, 0.0, 9.81)), (10, (0.0, 8.4957, 4.905))]:
        for q, v in (("acceleration_x", x), ("acceleration_y", y), ("acceleration_z", z)):
            out += e.observe(Sample("s1", q, v, "m/s2", T0 + t))
    assert states(out) == [("tipped", "raised", 10.0)]
    assert out[0]["value"] == pytest.approx(60.0, abs=0.01)


def test_tilt_rule_also_takes_a_tilt_reading():
    e = engine({"tipped": {"type": "tilt", "limit_deg": 45.0, "delay_s": 30.0}})
    out = feed(e, [(0, 10.0), (10, 45.0), (39, 50.0), (40, 50.0)], quantity="tilt", unit="deg")
    assert states(out) == [("tipped", "raised", 40.0)]


def test_a_sample_of_an_unassigned_sensor_or_a_nan_value_is_ignored():
    e = engine(HIGH)
    assert e.observe(Sample("other", "temperature", 99.0, "Cel", T0)) == []
    assert e.observe(Sample("s1", "temperature", float("nan"), "Cel", T0)) == []
    assert not e.out_of_range("s1")


def test_cleared_unacknowledged_alarms_are_listed_but_not_without_end(monkeypatch):
    from agent.rules import alarms

    monkeypatch.setattr(alarms, "MAX_UNACKED", 3)
    e = engine({"high": {"type": "above", "limit": 8.0}})
    feed(e, [(t, 9.0 if t % 20 == 0 else 5.0) for t in range(0, 100, 10)])  # five excursions
    assert [a["alarm_id"] for a in e.active()] == ["s1:high:3", "s1:high:4", "s1:high:5"]
