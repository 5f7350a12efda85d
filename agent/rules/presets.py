"""The built-in profiles for the standard storage classes, as plain data.

They are written as the same tables a config file would hold (``PRESETS_RAW``), so that a
profile with ``extends = "2-8C"`` merges over exactly what is printed here and by
``coldgate rules profiles --json``. Limits are inclusive (the first out-of-range value).
This module is data only: :mod:`agent.rules.config` validates it into ``PRESETS``
(importing nothing back, so the two never form an import circle).

The figures follow common practice for shipping loggers: a pre-alarm (warning) at the
edge of the range, an alarm after a short single-event delay, a cumulative
time-out-of-range budget (60 min for 2–8 °C, as WHO PQS and most vaccine SOPs use),
MKT against the upper label limit where MKT is meaningful (not for frozen goods), a
time-to-breach warning, and a data-missing alarm so a silent sensor is never a flat line.
"""

from __future__ import annotations

from typing import Any

from drivers.base import MISSING_AFTER_S

_COMMON: dict[str, dict[str, Any]] = {
    "missing": {"type": "missing", "timeout_s": MISSING_AFTER_S, "severity": "alarm"},
    "battery": {"type": "battery", "limit": 10.0, "severity": "warning", "delay_s": 300.0, "hysteresis": 2.0},
}


def _range(lo: float | None, hi: float | None, *, delay_s: float, hyst: float, budget_s: float | None,
           mkt: float | None, pre: float | None = None) -> dict[str, dict[str, Any]]:
    rules: dict[str, dict[str, Any]] = {}
    if pre is not None and hi is not None:
        rules["pre_high"] = {"type": "above", "limit": hi - pre, "delay_s": 300.0, "hysteresis": hyst,
                             "severity": "warning"}
    if hi is not None:
        rules["high"] = {"type": "above", "limit": hi, "delay_s": delay_s, "hysteresis": hyst}
    if lo is not None:
        rules["low"] = {"type": "below", "limit": lo, "delay_s": delay_s, "hysteresis": hyst}
    if budget_s is not None:
        rules["time_out_of_range"] = {"type": "budget", "above": hi, "below": lo, "budget_s": budget_s}
    if mkt is not None:
        rules["mkt"] = {"type": "mkt", "limit": mkt, "max_gap_s": 3600.0}
    if hi is not None:
        rules["trend"] = {"type": "time_to_breach", "op": "above", "limit": hi, "horizon_s": 1800.0,
                          "hysteresis": hyst}
    return {**rules, **_COMMON}


PRESETS_RAW: dict[str, dict[str, Any]] = {
    "2-8C": {
        "description": "refrigerated, 2-8 Cel: alarm at >=8 or <=2 for 15 min, 60 min cumulative, MKT 8",
        "rules": _range(2.0, 8.0, delay_s=900.0, hyst=0.3, budget_s=3600.0, mkt=8.0, pre=0.5),
    },
    "15-25C": {
        "description": "controlled ambient, 15-25 Cel: alarm at >=25 or <=15 for 15 min, 60 min cumulative, MKT 25",
        "rules": _range(15.0, 25.0, delay_s=900.0, hyst=0.5, budget_s=3600.0, mkt=25.0, pre=1.0),
    },
    "crt": {
        "description": "USP controlled room temperature: 20-25 Cel, excursions 15-30 allowed, MKT <= 25",
        "rules": {
            "pre_high": {"type": "above", "limit": 25.0, "delay_s": 900.0, "hysteresis": 0.5, "severity": "warning"},
            "pre_low": {"type": "below", "limit": 20.0, "delay_s": 900.0, "hysteresis": 0.5, "severity": "warning"},
            "high": {"type": "above", "limit": 30.0, "delay_s": 0.0, "hysteresis": 0.5},
            "low": {"type": "below", "limit": 15.0, "delay_s": 0.0, "hysteresis": 0.5},
            "mkt": {"type": "mkt", "limit": 25.0, "max_gap_s": 3600.0},
            "trend": {"type": "time_to_breach", "op": "above", "limit": 30.0, "horizon_s": 1800.0, "hysteresis": 0.5},
            **_COMMON,
        },
    },
    "frozen": {
        "description": "frozen, -25 to -15 Cel: alarm at >=-15 or <=-25 for 15 min, 60 min cumulative",
        "rules": _range(-25.0, -15.0, delay_s=900.0, hyst=0.5, budget_s=3600.0, mkt=None, pre=1.0),
    },
    "ultra-low": {
        "description": "ultra-low freezer, <= -60 Cel: alarm at >=-60 for 5 min",
        "rules": _range(None, -60.0, delay_s=300.0, hyst=1.0, budget_s=None, mkt=None, pre=5.0),
    },
    "dry-ice": {
        "description": "dry ice, <= -70 Cel: alarm at >=-70 for 5 min",
        "rules": _range(None, -70.0, delay_s=300.0, hyst=1.0, budget_s=None, mkt=None, pre=5.0),
    },
    "ln2": {
        "description": "liquid-nitrogen vapour, <= -150 Cel: alarm at >=-150 for 5 min",
        "rules": _range(None, -150.0, delay_s=300.0, hyst=2.0, budget_s=None, mkt=None, pre=10.0),
    },
    # WHO PQS E006 electronic shipping indicators (WHO/PQS/E006/TR07; the thresholds as the
    # PQS-prequalified indicators are factory-set, see docs/shipments.md): irreversible, so the
    # rules latch until someone acknowledges; limits inclusive; a single event resets when the
    # value is back inside (no hysteresis), a cumulative one counts every second at or beyond.
    "who-pqs-type1": {
        "description": "WHO PQS E006 shipping indicator Type I (freeze-sensitive vaccines): >=45 Cel single "
                       "event 1 h, >=30 Cel cumulative 10 h, <=-0.5 Cel single event 1 h",
        "rules": {
            "heat_45": {"type": "above", "limit": 45.0, "delay_s": 3600.0, "latching": True},
            "heat_30_cumulative": {"type": "budget", "above": 30.0, "budget_s": 36000.0, "latching": True},
            "freeze": {"type": "below", "limit": -0.5, "delay_s": 3600.0, "latching": True},
            "missing": _COMMON["missing"],
        },
    },
    "who-pqs-type2": {
        "description": "WHO PQS E006 shipping indicator Type II (freeze-dried vaccines with frozen ice packs): "
                       ">=45 Cel single event 1 h, >=30 Cel cumulative 10 h, >=10 Cel cumulative 20 h",
        "rules": {
            "heat_45": {"type": "above", "limit": 45.0, "delay_s": 3600.0, "latching": True},
            "heat_30_cumulative": {"type": "budget", "above": 30.0, "budget_s": 36000.0, "latching": True},
            "heat_10_cumulative": {"type": "budget", "above": 10.0, "budget_s": 72000.0, "latching": True},
            "missing": _COMMON["missing"],
        },
    },
}
