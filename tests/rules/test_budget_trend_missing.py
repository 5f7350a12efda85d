"""Time-out-of-range budgets, rate of change, time to breach, and data missing."""

from __future__ import annotations

import pytest

from agent.rules.engine import Sample
from tests.rules.helpers import T0, engine, feed, states

TRIP = {"tor": {"type": "budget", "above": 8.0, "budget_s": 600.0}}


def test_trip_budget_sums_separate_excursions_and_raises_when_spent():
    """3 + 4 min above 8 °C against a 10 min budget: raised 3 min into the second excursion."""
    e = engine(TRIP)
    out = feed(e, [(0, 5.0), (60, 9.0), (240, 5.0), (1000, 8.0), (1300, 9.0), (1500, 5.0)])
    assert states(out) == [("tor", "raised", 1420.0)]
    assert out[0]["budget_s"] == 600.0 and out[0]["spent_s"] == 600.0
    assert out[0]["started_at"] == T0 + 60  # the first excursion counted
    assert e.tick(T0 + 99999) == []  # a trip budget, once spent, stays spent


def test_trip_budget_one_second_short_raises_nothing():
    e = engine(TRIP)
    assert feed(e, [(0, 9.0), (599, 5.0), (5000, 5.0)]) == []
    assert e.tick(T0 + 10000) == []


def test_trip_budget_raises_via_tick_at_the_exact_second():
    e = engine(TRIP)
    feed(e, [(0, 9.0)])
    assert e.tick(T0 + 599.5) == []
    assert states(e.tick(T0 + 650)) == [("tor", "raised", 600.0)]


def test_budget_counts_the_limit_inclusively_and_below_too():
    e = engine({"tor": {"type": "budget", "above": 8.0, "below": 2.0, "budget_s": 120.0}})
    out = feed(e, [(0, 8.0), (60, 5.0), (100, 2.0), (200, 5.0)])
    assert states(out) == [("tor", "raised", 160.0)]


def test_rolling_budget_raises_and_clears_as_old_time_leaves_the_window():
    """10 min budget per hour: excursions of 6 and 5 min, 20 min apart."""
    e = engine({"tor": {"type": "budget", "above": 8.0, "budget_s": 600.0, "window_s": 3600.0}})
    out = feed(e, [(0, 9.0), (360, 5.0), (1560, 9.0), (1860, 5.0), (9000, 5.0)])
    # raised 4 min into the second excursion (6 + 4 = 10 min); clears when the first one's
    # start leaves the window enough: at t, spent = 300 + (360 - (t - 3600)) < 600  ->  t > 3660
    assert states(out) == [("tor", "raised", 1800.0), ("tor", "cleared", 3660.0)]


def test_rolling_budget_gives_the_same_times_whether_ticked_or_not():
    rule = {"tor": {"type": "budget", "above": 8.0, "budget_s": 600.0, "window_s": 3600.0}}
    points = [(0, 9.0), (360, 5.0), (1560, 9.0), (1860, 5.0), (9000, 5.0)]
    plain = states(feed(engine(rule), points))
    e, ticked = engine(rule), []
    for t, v in points:
        for k in range(int(t) - 150, int(t), 37):
            ticked += e.tick(T0 + k)
        ticked += feed(e, [(t, v)])
    assert states(ticked) == plain


def test_rate_of_change_from_a_ramp_raises_at_the_limit():
    e = engine({"ramp": {"type": "rate", "limit_per_min": 0.5, "tau_s": 300.0}})
    slow = [(t, 5.0 + 0.4 * t / 60) for t in range(0, 600, 30)]
    assert feed(e, slow) == []
    fast = [(600 + t, slow[-1][1] + 0.6 * t / 60) for t in range(30, 1200, 30)]
    out = feed(e, fast)
    assert out and out[0]["rule"] == "ramp" and out[0]["state"] == "raised"
    assert out[0]["rate_per_min"] >= 0.5


def test_rate_direction_falling_ignores_a_rise():
    e = engine({"drop": {"type": "rate", "limit_per_min": 0.5, "direction": "falling"}})
    assert feed(e, [(t, 5.0 + t / 60) for t in range(0, 600, 30)]) == []
    out = feed(e, [(600 + t, 15.0 - t / 60) for t in range(30, 1200, 30)])
    assert [c["state"] for c in out][:1] == ["raised"]


def test_time_to_breach_warns_when_the_trend_reaches_the_limit_within_the_horizon():
    """Rising 0.1 °C/min from 5 °C towards 7.95 °C, 10 min horizon: not at 6.9 °C (7.9 projected), at 7.0 °C."""
    e = engine({"ttb": {"type": "time_to_breach", "op": "above", "limit": 7.95, "horizon_s": 600.0}})
    out = feed(e, [(t, 5.0 + 0.1 * t / 60) for t in range(0, 1800, 60)])
    assert states(out) == [("ttb", "raised", 1200.0)]
    assert out[0]["severity"] == "warning"
    assert out[0]["time_to_breach_s"] == pytest.approx(570.0, abs=0.5)
    assert out[0]["rate_per_min"] == pytest.approx(0.1, abs=1e-6)


def test_time_to_breach_stays_quiet_on_a_flat_or_falling_trend_near_the_limit():
    e = engine({"ttb": {"type": "time_to_breach", "op": "above", "limit": 8.0, "horizon_s": 600.0}})
    assert feed(e, [(t, 7.9) for t in range(0, 1800, 60)]) == []
    assert feed(e, [(1800 + t, 7.9 - 0.05 * t / 60) for t in range(60, 1800, 60)]) == []


def test_time_to_breach_below_a_lower_limit():
    e = engine({"ttb": {"type": "time_to_breach", "op": "below", "limit": 2.05, "horizon_s": 600.0}})
    out = feed(e, [(t, 5.0 - 0.1 * t / 60) for t in range(0, 1800, 60)])
    assert states(out) == [("ttb", "raised", 1200.0)]


def test_data_missing_raises_via_tick_at_last_sample_plus_timeout_and_clears_on_data():
    e = engine({"silent": {"type": "missing", "timeout_s": 300.0}})
    feed(e, [(0, 5.0)])
    assert e.tick(T0 + 299.9) == []
    raised = e.tick(T0 + 400)
    assert states(raised) == [("silent", "raised", 300.0)]
    assert raised[0]["started_at"] == T0
    assert e.tick(T0 + 500) == []
    assert states(feed(e, [(600, 5.0)])) == [("silent", "cleared", 600.0)]


def test_data_missing_without_ticks_is_recorded_when_data_returns():
    e = engine({"silent": {"type": "missing", "timeout_s": 300.0}})
    assert states(feed(e, [(0, 5.0), (1000, 5.0)])) == [("silent", "raised", 300.0),
                                                         ("silent", "cleared", 1000.0)]


def test_data_missing_of_one_quantity_ignores_the_others():
    e = engine({"no_temp": {"type": "missing", "timeout_s": 300.0, "quantity": "temperature"}})
    feed(e, [(0, 5.0)])
    feed(e, [(200, 40.0), (400, 40.0)], quantity="humidity", unit="%RH")
    assert states(e.tick(T0 + 400)) == [("no_temp", "raised", 300.0)]


def test_a_sensor_never_heard_from_goes_missing_timeout_after_the_first_tick():
    e = engine({"silent": {"type": "missing", "timeout_s": 300.0}})
    assert e.tick(T0) == []
    assert states(e.tick(T0 + 300)) == [("silent", "raised", 300.0)]


def test_a_late_sample_does_not_run_time_backwards():
    e = engine(TRIP)
    feed(e, [(0, 9.0), (500, 9.0)])
    out = e.observe(Sample("s1", "temperature", 9.0, "Cel", T0 + 100))  # late, out of order
    assert out == []
    assert states(feed(e, [(600, 9.0)])) == [("tor", "raised", 600.0)]


def test_time_to_breach_is_not_fooled_by_seconds_of_sensor_noise_at_start():
    """A probe sampled every second with ±0.05 °C noise: a slope fitted over a few seconds
    projected 30 min ahead would 'breach'; the trend is trusted only after min_span_s."""
    import random

    rng = random.Random(3)
    e = engine({"ttb": {"type": "time_to_breach", "op": "above", "limit": 8.0, "horizon_s": 1800.0,
                        "tau_s": 300.0}})
    out = feed(e, [(t, 5.0 + rng.gauss(0.0, 0.05)) for t in range(3600)])
    assert out == []


def test_time_to_breach_still_warns_on_a_real_ramp_once_enough_data_is_in():
    e = engine({"ttb": {"type": "time_to_breach", "op": "above", "limit": 8.0, "horizon_s": 1800.0,
                        "tau_s": 300.0}})
    # flat for 10 min, then +0.1 °C/min: 8 °C is reached 30 min into the ramp
    points = [(t, 5.0) for t in range(0, 600, 10)] + [(600 + t, 5.0 + 0.1 * t / 60) for t in range(0, 1800, 10)]
    out = feed(e, points)
    raised = [c for c in out if c["state"] == "raised"]
    assert raised and raised[0]["ts"] - T0 < 600 + 1800  # warned before the value got there
