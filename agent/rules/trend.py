"""Rules that judge a sensor's history rather than its last value: rate, time to breach, MKT.

The trend is an exponentially weighted least-squares line through the samples (time
constant ``tau_s``): five running sums, decayed and re-centred on each sample, so one
sample costs one ``exp`` and no history is kept. On a straight ramp it gives the ramp's
slope exactly; on noise it smooths over about ``tau_s``.

*Time to breach* projects that line ``horizon_s`` ahead and warns when it reaches the
limit — before the excursion, while there is still time to act.

Times here are elapsed times on the agent timeline (see :mod:`agent.rules.evaluators`):
a slope is per second of elapsed time, so a wall-clock step makes no ramp.
"""

from __future__ import annotations

import math
from typing import Any

from agent.rules.evaluators import Evaluator, Out, Threshold
from agent.rules.mkt import MktAccumulator


class TrendFit:
    """Exponentially weighted linear regression of value on time, centred on the last sample."""

    __slots__ = ("tau", "n", "first_ts", "last_ts", "s0", "st", "sv", "stt", "stv")

    def __init__(self, tau_s: float) -> None:
        self.tau = tau_s
        self.n = 0
        self.first_ts: float | None = None
        self.last_ts: float | None = None
        self.s0 = self.st = self.sv = self.stt = self.stv = 0.0

    def add(self, ts: float, value: float) -> None:
        last = self.last_ts
        if last is not None and ts > last:
            d = ts - last
            k = math.exp(-d / self.tau)
            s0, st, sv = self.s0 * k, self.st * k, self.sv * k
            # move the origin to ts: every earlier sample's time becomes t - d
            self.stt = (self.stt * k) - 2.0 * d * st + d * d * s0
            self.stv = (self.stv * k) - d * sv
            self.st = st - d * s0
            self.s0, self.sv = s0, sv
        if last is None or ts > last:
            self.last_ts = ts
        if self.first_ts is None:
            self.first_ts = ts
        self.n += 1
        self.s0 += 1.0
        self.sv += value

    def slope(self) -> float | None:
        """Units per second, or None without two distinct times."""
        den = self.s0 * self.stt - self.st * self.st
        if self.n < 2 or den <= 1e-12 * max(1.0, self.s0 * self.stt):
            return None
        return (self.s0 * self.stv - self.st * self.sv) / den

    def fitted(self, slope: float) -> float:
        """The line's value now (at the last sample's time)."""
        return (self.sv - slope * self.st) / self.s0

    @property
    def span_s(self) -> float:
        """Seconds between the first and the last sample fitted."""
        if self.first_ts is None or self.last_ts is None:
            return 0.0
        return self.last_ts - self.first_ts

    def state(self) -> list[Any]:
        return [self.n, self.last_ts, self.s0, self.st, self.sv, self.stt, self.stv, self.first_ts]

    def load(self, s: list[Any]) -> None:
        self.n, self.last_ts, self.s0, self.st, self.sv, self.stt, self.stv = s[:7]
        self.first_ts = s[7] if len(s) > 7 else self.last_ts


class _TrendRule(Threshold):
    limit_kind = False
    _STATE = (*Threshold._STATE, "fit")

    def __init__(self, name: str, rule: Any) -> None:
        super().__init__(name, rule)
        self.quantities = (rule.quantity,)
        self.fit = TrendFit(rule.tau_s)
        self.min_n = rule.min_samples
        self.min_span = rule.tau_s if rule.min_span_s is None else rule.min_span_s
        self.sample = math.nan
        self.rate = 0.0
        self.extra: dict[str, Any] = {}

    def observe(self, quantity: str, value: float, ts: float, out: Out) -> None:
        self.fit.add(ts, value)
        self.sample = value
        slope = self.fit.slope()
        if slope is None or self.fit.n < self.min_n or self.fit.span_s < self.min_span:
            return
        self.rate = slope
        self.step(self.measure(slope), ts, out)

    def measure(self, slope: float) -> float:
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        return {"since": self.since, "raised": self.raised, "value": self.value, "peak": self.peak,
                "fit": self.fit.state()}

    def load(self, s: dict[str, Any]) -> None:
        self.since, self.raised, self.value, self.peak = s["since"], s["raised"], s["value"], s["peak"]
        self.fit.load(s["fit"])


class Rate(_TrendRule):
    """|rate of change| per minute at or beyond the limit (per ``direction``)."""

    def __init__(self, name: str, rule: Any) -> None:
        super().__init__(name, rule)
        self.limit = rule.limit_per_min
        self.sign = {"rising": 1.0, "falling": -1.0, "either": 0.0}[rule.direction]

    def measure(self, slope: float) -> float:
        per_min = slope * 60.0
        return abs(per_min) if self.sign == 0.0 else per_min * self.sign

    def judge(self, value: float) -> tuple[bool, bool]:
        return value >= self.limit, value < self.limit - self.hyst

    def figures(self) -> dict[str, Any]:
        return {"limit": self.limit, "rate_per_min": round(self.rate * 60.0, 6), "sample": self.sample}


class TimeToBreach(_TrendRule):
    """Warns when the trend line, projected ``horizon_s`` ahead, reaches the limit.

    The judged value is the worse of the fitted value now and the projection, so an
    excursion already under way stays flagged until the trend turns back.
    """

    def __init__(self, name: str, rule: Any) -> None:
        super().__init__(name, rule)
        self.limit = rule.limit
        self.horizon = rule.horizon_s
        self.up = rule.op == "above"
        self.fitted = math.nan

    def measure(self, slope: float) -> float:
        now = self.fit.fitted(slope)
        self.fitted = now
        ahead = now + slope * self.horizon
        return max(now, ahead) if self.up else min(now, ahead)

    def judge(self, value: float) -> tuple[bool, bool]:
        if self.up:
            return value >= self.limit, value < self.limit - self.hyst
        return value <= self.limit, value > self.limit + self.hyst

    def worse(self, a: float, b: float) -> bool:
        return a > b if self.up else a < b

    def figures(self) -> dict[str, Any]:
        slope, f = self.rate, self.fitted
        gap = (self.limit - f) if self.up else (f - self.limit)
        toward = slope if self.up else -slope
        ttb = 0.0 if gap <= 0 else (gap / toward if toward > 0 else None)
        return {"limit": self.limit, "horizon_s": self.horizon, "rate_per_min": round(slope * 60.0, 6),
                "fitted": round(f, 4), "time_to_breach_s": None if ttb is None else round(ttb, 1),
                "sample": self.sample}


class Mkt(Evaluator):
    """MKT over the trip or a rolling window, at or above the limit; clears below limit − hysteresis."""

    _STATE = ("raised", "first_ts", "value")

    def __init__(self, name: str, rule: Any) -> None:
        super().__init__(name, rule)
        self.quantities = (rule.quantity,)
        self.acc = MktAccumulator(max_gap_s=rule.max_gap_s, window_s=rule.window_s)
        self.limit = rule.limit
        self.hyst = rule.hysteresis
        self.min_span = rule.min_span_s
        self.raised = False
        self.first_ts: float | None = None
        self.value = 0.0

    def observe(self, quantity: str, value: float, ts: float, out: Out) -> None:
        self.acc.add(ts, value)
        self.value = value
        if self.first_ts is None:
            self.first_ts = ts
        m = self.acc.mkt()
        if m is None or self.acc.span_s < self.min_span:
            return
        if not self.raised and m >= self.limit:
            self.raised = True
            out.append((self, "raise", ts, ts, self._figures(m, ts)))
        elif self.raised and m < self.limit - self.hyst:
            self.raised = False
            out.append((self, "clear", ts, ts, self._figures(m, ts)))

    def _figures(self, m: float, ts: float) -> dict[str, Any]:
        return {"mkt": round(m, 4), "limit": self.limit, "value": self.value, "span_s": self.acc.span_s,
                "window_s": self.rule.window_s, "gaps": self.acc.gaps, "gap_s": self.acc.gap_s}

    def state(self) -> dict[str, Any]:
        return {**super().state(), "acc": self.acc.state()}

    def load(self, s: dict[str, Any]) -> None:
        super().load(s)
        self.acc.load(s["acc"])
