"""USP <1079.2> MKT windows (24 h cold chain, 30 days CRT) against published vectors, and the WHO presets.

Vectors:
- 20 °C for 2 h, 2 °C for 4 h, 25 °C for 1 h: MKT 15.7 °C ("thermally equivalent to storing
  them at 15.7 °C for 7 hours", Isopharm's MKT FAQ, systems.isopharm.co.uk/mean-kinetic-temperature;
  15.6776 °C to four places with ΔH/R = 10 000 K). MKT depends only on the fractions of time
  at each temperature, so the same profile stretched over 24 h or 30 days is the same vector.
- USP <1160>'s warehouse example: 52 weekly means of 25 °C give MKT 25.0 °C (ΔH/R = 10 000 K).
"""

from __future__ import annotations

import pytest

from agent.rules.config import RulesConfig
from agent.rules.engine import RuleEngine, Sample
from agent.rules.mkt import CCT_WINDOW_S, CRT_WINDOW_S, DH_KJ_PER_MOL, mkt_of, usp_window, windowed_mkt

H = 3600.0
PUBLISHED = 15.6776


def published_profile_in(window: float, *, before: float, after: float, around: float = 2.0) -> list[tuple[float, float]]:
    """``around`` °C, then the published 2:4:1 profile stretched to ``window``, then ``around`` again."""
    t = before
    return [(0.0, around), (t, 20.0), (t + window * 2 / 7, 2.0), (t + window * 6 / 7, 25.0), (t + window, around),
            (t + window + after, around)]


@pytest.mark.parametrize("window", [CCT_WINDOW_S, CRT_WINDOW_S], ids=["24h-cold-chain", "30d-crt"])
def test_worst_window_mkt_is_the_published_vector(window: float) -> None:
    series = published_profile_in(window, before=3 * H, after=2 * window)
    w = windowed_mkt(series, window, max_gap_s=1e12)
    assert w["mkt"] == pytest.approx(PUBLISHED, abs=5e-4)
    assert w["start"] == pytest.approx(3 * H) and w["end"] == pytest.approx(3 * H + window) and w["complete"]
    # the whole trip dilutes the excursion: lower than the window's figure, as <1079.2> warns
    assert mkt_of(series, max_gap_s=1e12) < w["mkt"] - 1.0


def test_usp_1160_constant_example_gives_25_0() -> None:
    weeks = [(i * 7 * 86400.0, 25.0) for i in range(53)]
    assert windowed_mkt(weeks, CRT_WINDOW_S, max_gap_s=1e12)["mkt"] == pytest.approx(25.0, abs=1e-9)


def test_a_trip_shorter_than_the_window_is_judged_over_the_trip_and_says_so() -> None:
    w = windowed_mkt([(0, 20.0), (2 * H, 2.0), (6 * H, 25.0)], CCT_WINDOW_S, end=7 * H, max_gap_s=1e9)
    assert w["mkt"] == pytest.approx(PUBLISHED, abs=5e-4) and not w["complete"] and w["span_s"] == 7 * H


def test_window_by_product_class_and_dh() -> None:
    assert usp_window("2-8C", 8.0) == (CCT_WINDOW_S, "controlled cold temperature")
    assert usp_window("crt", 25.0)[0] == CRT_WINDOW_S and usp_window("15-25C", 25.0)[0] == CRT_WINDOW_S
    assert usp_window("vaccines", 8.0)[0] == CCT_WINDOW_S and usp_window("frozen", None)[0] is None
    assert DH_KJ_PER_MOL == 83.144


def _who(preset: str) -> RuleEngine:
    return RuleEngine(RulesConfig(), {"s": preset})


def _feed(e: RuleEngine, points: list[tuple[float, float]]) -> list[tuple[str, str, float]]:
    out = []
    for t, v in points:
        out += e.observe(Sample("s", "temperature", v, "Cel", 1_795_000_000.0 + t))
    # sparse points on purpose: the data-missing rule (not a threshold of the spec) is left out
    return [(c["rule"], c["state"], c["ts"] - 1_795_000_000.0) for c in out if c["rule"] != "missing"]


def test_who_type1_single_events_raise_after_one_hour_and_latch() -> None:
    e = _who("who-pqs-type1")
    got = _feed(e, [(0, 46.0), (3599, 46.0), (3600, 46.0), (4000, 20.0)])
    assert got == [("heat_45", "raised", 3600.0)]  # latching: back to 20 °C does not clear it
    e = _who("who-pqs-type1")
    assert _feed(e, [(0, -0.5), (1800, 5.0), (2000, -0.6), (5600, -0.6)]) == [("freeze", "raised", 5600.0)]


def test_who_type1_cumulative_30_counts_ten_hours_over_separate_excursions() -> None:
    e = _who("who-pqs-type1")
    pts = [(h * H, 31.0 if h % 2 == 0 else 20.0) for h in range(0, 22)]  # 1 h at 31 °C every 2 h
    assert ("heat_30_cumulative", "raised", 19 * H) in _feed(e, pts)


def test_who_type2_has_the_10_degree_cumulative_20_hour_rule_and_no_freeze_rule() -> None:
    e = _who("who-pqs-type2")
    got = _feed(e, [(0, 12.0), (20 * H, 12.0), (21 * H, 5.0)])
    assert ("heat_10_cumulative", "raised", 20 * H) in got
    rules = RulesConfig().profile("who-pqs-type2").rules
    assert "freeze" not in rules and rules["heat_45"].limit == 45.0 and rules["heat_30_cumulative"].budget_s == 36000
