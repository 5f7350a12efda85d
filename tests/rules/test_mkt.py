"""Mean kinetic temperature: the USP <1079> formula, weighting, gaps, rolling windows."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.rules.mkt import MktAccumulator, mkt_of
from tests.rules.helpers import T0, engine, feed, states

H = 3600.0


def test_mkt_of_the_issue_vector_is_15_6776():
    """20 °C for 2 h, 2 °C for 4 h, 25 °C for 1 h: weights are the time to the next reading."""
    m = mkt_of([(0, 20.0), (2 * H, 2.0), (6 * H, 25.0)], end=7 * H)
    assert m == pytest.approx(15.6776, abs=0.0005)


def test_mkt_of_the_issue_vector_sampled_every_minute_is_the_same():
    series = [(t * 60.0, 20.0 if t < 120 else 2.0 if t < 360 else 25.0) for t in range(420)]
    assert mkt_of(series, end=7 * H) == pytest.approx(15.6776, abs=0.0005)


@given(st.floats(min_value=-190, max_value=60), st.lists(st.floats(min_value=1, max_value=900), min_size=1,
                                                         max_size=30))
@settings(max_examples=60, deadline=None)
def test_constant_input_gives_itself_whatever_the_intervals(temp, gaps):
    t, series = 0.0, []
    for g in gaps:
        series.append((t, temp))
        t += g
    assert mkt_of(series, end=t) == pytest.approx(temp, abs=1e-6)


def test_irregular_intervals_weigh_each_reading_by_the_time_to_the_next():
    """One hour at 30 then three hours at 10 equals a 1:3 weighting, not 1:1 by count."""
    irregular = mkt_of([(0, 30.0), (H, 10.0), (2 * H, 10.0), (2.5 * H, 10.0)], end=4 * H)
    e30, e10 = math.exp(-10000 / 303.15), math.exp(-10000 / 283.15)
    expected = 10000 / -math.log((1 * e30 + 3 * e10) / 4) - 273.15
    assert irregular == pytest.approx(expected, abs=1e-9)
    by_count = 10000 / -math.log((e30 + e10) / 2) - 273.15
    assert abs(irregular - by_count) > 1.0


def test_a_gap_beyond_the_cap_is_reported_not_bridged():
    acc = MktAccumulator(max_gap_s=H)
    acc.add(0, 40.0)
    acc.add(5 * H, 5.0)  # 5 h of silence after one hot reading
    acc.close(6 * H)
    assert acc.gaps == 1
    assert acc.gap_s == pytest.approx(4 * H)
    assert acc.span_s == pytest.approx(2 * H)  # 1 h for the capped reading, 1 h for the last
    bridged = mkt_of([(0, 40.0), (5 * H, 5.0)], end=6 * H)
    assert acc.mkt() < bridged  # the hot reading was not stretched over the gap


def test_rolling_window_forgets_readings_older_than_the_window():
    acc = MktAccumulator(window_s=4 * H, max_gap_s=H)
    for i in range(24):  # 2 h hot, then cool, readings every 10 min
        acc.add(i * 600.0, 30.0 if i < 12 else 5.0)
    for i in range(24, 60):
        acc.add(i * 600.0, 5.0)
    assert acc.mkt() == pytest.approx(5.0, abs=1e-6)


def test_mkt_rule_raises_at_the_limit_and_clears_below_limit_minus_hysteresis():
    e = engine({"mkt": {"type": "mkt", "limit": 10.0, "hysteresis": 1.0}})
    points = [(0, 5.0), (H, 20.0), (2 * H, 20.0)] + [(h * H, 5.0) for h in range(3, 40)]
    changes = feed(e, points)
    rec = [c for c in changes if c["rule"] == "mkt"]
    assert [c["state"] for c in rec] == ["raised", "cleared"]
    assert rec[0]["mkt"] >= 10.0 and rec[1]["mkt"] < 9.0
    assert e.mkt("s1") == pytest.approx(mkt_of(points, max_gap_s=H), abs=1e-9)


def test_mkt_never_suppresses_a_limit_alarm():
    e = engine({"mkt": {"type": "mkt", "limit": 25.0}, "high": {"type": "above", "limit": 8.0}})
    changes = feed(e, [(0, 5.0), (60, 9.0)])
    assert states(changes) == [("high", "raised", 60.0)]
    assert e.mkt("s1") < 8.0


def test_mkt_is_reported_for_every_sensor_even_without_an_mkt_rule():
    e = engine({"high": {"type": "above", "limit": -60.0}})
    feed(e, [(0, -80.0), (600, -80.0)])
    assert e.mkt("s1") == pytest.approx(-80.0)
    assert e.mkt("unknown") is None
    assert T0  # the helpers' fixed epoch
