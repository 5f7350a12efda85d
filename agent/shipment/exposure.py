"""The product's exposure across a shipment: the stability budget and freeze–thaw cycles.

Pure state machines fed ``(sensor, value, elapsed)``; time is the monotonic ``elapsed``
(seconds) and values hold until the next sample (sample and hold), as the rule engine's.

Stability budget
    Time counts while *any* counted sensor is at or beyond a bound: the product is out of
    range when the worst probe says so, and two probes out at once spend the budget once,
    not twice. ``spent_upstream_s`` (from earlier legs and gateways) is spent already. The
    moment the budget runs out is computed exactly (``last + remaining``), not when someone
    looked, so the alarm carries the same second whether ``tick`` ran then or an hour later.
Freeze–thaw
    A sensor is *frozen* once at or below ``freeze_at``; a frozen sensor at or above
    ``thaw_at`` has *thawed*: one cycle. The band between is hysteresis.
"""

from __future__ import annotations

import math
from typing import Any

from agent.shipment.config import FreezeThawSpec, StabilitySpec


class StabilityBudget:
    """One shipment's budget. :meth:`advance` returns the run-out moment when it passes it."""

    def __init__(self, spec: StabilitySpec, sensors: list[str]) -> None:
        self.budget_s = spec.budget_s
        self.upstream_s = spec.spent_upstream_s
        self.quantity = spec.quantity
        self.hi = math.inf if spec.above is None else spec.above
        self.lo = -math.inf if spec.below is None else spec.below
        self.sensors = frozenset(spec.sensors or sensors)
        self.spent_s = 0.0  # in this shipment, up to ``last``
        self.last: float | None = None  # None: not counting yet (ignore period)
        self.out: dict[str, bool] = {}
        self.out_since: float | None = None
        self.exhausted_at: float | None = None

    @property
    def remaining_s(self) -> float:
        return max(0.0, self.budget_s - self.upstream_s - self.spent_s)

    @property
    def out_now(self) -> bool:
        return any(self.out.values())

    def arm(self, elapsed: float) -> float | None:
        """Start counting (the ignore period is over); the run-out moment if already spent upstream."""
        if self.last is not None:
            return None
        self.last = elapsed
        if self.out_now:
            self.out_since = elapsed
        if self.exhausted_at is None and self.budget_s - self.upstream_s <= 0:
            self.exhausted_at = elapsed
            return elapsed
        return None

    def advance(self, elapsed: float) -> float | None:
        """Spend up to ``elapsed`` with the held state; the moment it ran out, if in this step."""
        last = self.last
        if last is None or elapsed <= last:
            return None
        ran_out = None
        if self.out_now:
            left = self.budget_s - self.upstream_s - self.spent_s
            if self.exhausted_at is None and left <= elapsed - last:
                ran_out = self.exhausted_at = last + max(0.0, left)
            self.spent_s += elapsed - last
        self.last = elapsed
        return ran_out

    def observe(self, sensor_id: str, quantity: str, value: float, elapsed: float) -> float | None:
        """A sample: spend up to it, then take its state. Returns a run-out moment, if any."""
        if sensor_id not in self.sensors or quantity != self.quantity:
            return None
        ran_out = self.advance(elapsed)
        was = self.out_now
        self.out[sensor_id] = value >= self.hi or value <= self.lo
        now = self.out_now
        if now and not was:
            self.out_since = elapsed if self.last is not None else None
        elif was and not now:
            self.out_since = None
        return ran_out

    def figures(self) -> dict[str, Any]:
        return {"budget_s": self.budget_s, "spent_upstream_s": round(self.upstream_s, 3),
                "spent_s": round(self.spent_s, 3), "remaining_s": round(self.remaining_s, 3),
                "exhausted": self.exhausted_at is not None, "out_of_range_now": self.out_now,
                "above": None if math.isinf(self.hi) else self.hi, "below": None if math.isinf(self.lo) else self.lo}

    def state(self) -> dict[str, Any]:
        return {"spent_s": self.spent_s, "last": self.last, "out": dict(self.out), "out_since": self.out_since,
                "exhausted_at": self.exhausted_at}

    def load(self, s: dict[str, Any]) -> None:
        self.spent_s = float(s["spent_s"])
        self.last = s["last"]
        self.out = {k: bool(v) for k, v in s["out"].items()}
        self.out_since = s["out_since"]
        self.exhausted_at = s["exhausted_at"]

    def shift(self, delta: float) -> None:
        """Move every stored moment by ``delta`` (a new monotonic timeline after a reboot)."""
        for k in ("last", "out_since", "exhausted_at"):
            v = getattr(self, k)
            if v is not None:
                setattr(self, k, v + delta)


class FreezeThaw:
    """Freeze–thaw cycles per sensor. :meth:`observe` returns the sensor's new count on a thaw."""

    def __init__(self, spec: FreezeThawSpec, sensors: list[str]) -> None:
        self.freeze_at = spec.freeze_at
        self.thaw_at = spec.thaw_at
        self.max_cycles = spec.max_cycles
        self.quantity = spec.quantity
        self.sensors = frozenset(spec.sensors or sensors)
        self.frozen: dict[str, bool] = {}
        self.cycles: dict[str, int] = {s: 0 for s in sorted(self.sensors)}

    def observe(self, sensor_id: str, quantity: str, value: float, *, counting: bool) -> int | None:
        if sensor_id not in self.sensors or quantity != self.quantity:
            return None
        if value <= self.freeze_at:
            self.frozen[sensor_id] = True
        elif value >= self.thaw_at and self.frozen.get(sensor_id):
            self.frozen[sensor_id] = False
            if counting:
                self.cycles[sensor_id] = self.cycles.get(sensor_id, 0) + 1
                return self.cycles[sensor_id]
        return None

    def figures(self) -> dict[str, Any]:
        return {"freeze_at": self.freeze_at, "thaw_at": self.thaw_at, "max_cycles": self.max_cycles,
                "cycles": dict(self.cycles), "max": max(self.cycles.values(), default=0),
                "frozen_now": sorted(s for s, f in self.frozen.items() if f)}

    def state(self) -> dict[str, Any]:
        return {"frozen": dict(self.frozen), "cycles": dict(self.cycles)}

    def load(self, s: dict[str, Any]) -> None:
        self.frozen = {k: bool(v) for k, v in s["frozen"].items()}
        self.cycles = {k: int(v) for k, v in s["cycles"].items()}
