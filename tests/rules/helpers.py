"""Small builders for rule tests: a one-profile engine and a way to feed it samples."""

from __future__ import annotations

from typing import Any

from agent.rules.config import RulesConfig
from agent.rules.engine import RuleEngine, Sample

T0 = 1_795_000_000.0  # a fixed epoch (2026-11-18): every test clock is injected, never read


def engine(rules: dict[str, Any], *, sensor: str = "s1", state: dict[str, Any] | None = None,
           **profile: Any) -> RuleEngine:
    cfg = RulesConfig(profiles={"p": {"rules": rules, **profile}})
    return RuleEngine(cfg, {sensor: "p"}, state=state)


def feed(e: RuleEngine, points: list[tuple[float, float]], *, quantity: str = "temperature",
         sensor: str = "s1", unit: str = "Cel") -> list[dict[str, Any]]:
    """Feed ``(seconds after T0, value)`` pairs; return every alarm change."""
    out: list[dict[str, Any]] = []
    for t, v in points:
        out += e.observe(Sample(sensor, quantity, float(v), unit, T0 + t))
    return out


def states(changes: list[dict[str, Any]]) -> list[tuple[str, str, float]]:
    """(rule, state, seconds after T0) of each change: what most assertions compare."""
    return [(c["rule"], c["state"], round(c["ts"] - T0, 6)) for c in changes]
