"""Per-sensor rule state machines: threshold, shock, tilt, budget and data missing.

Every evaluator sees its sensor's samples one at a time and keeps O(1) state (a rolling
budget keeps its excursion intervals, merged when they touch). Every time an evaluator
sees, keeps or emits (``ts``, ``now``, ``since``, ``last_seen``, intervals) is *elapsed*
time, seconds on the agent timeline (:mod:`agent.timeline`), never a wall-clock stamp:
delays, budgets and timeouts are differences of these, so a step of the wall clock
changes none of them. The engine turns the instants into wall times for the records.
Two entry points:

``observe(quantity, value, ts, out)``
    a sample; first the evaluator :meth:`advance`\\ s to ``ts`` with the value it held;
``advance(now, out)``
    time passing with no new sample (the engine's ``tick``).

Between samples the last value *holds* (sample and hold). Every transition is stamped
with the moment it became true under that assumption (``since + delay_s``, the instant a
budget ran out), never with the moment someone happened to look, so the alarms are the
same whether or not ``tick`` ran in between, and after a restart from a snapshot.

Transitions are appended to ``out`` as ``(evaluator, "raise" | "clear", at, started,
figures)``, ``at`` and ``started`` elapsed; the engine stamps them with wall times and
:mod:`agent.rules.alarms` turns them into alarm records.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from agent.rules import config as c

Out = list[tuple[Any, str, float, float, dict[str, Any]]]
MAX_INTERVALS = 256  # rolling budget: beyond this, the two oldest intervals merge (over-counts, never under)


class Evaluator:
    """Base: a named rule of one sensor. ``limit_kind`` rules drive ``out_of_range``."""

    quantities: tuple[str, ...] = ()
    any_quantity = False
    timed = False  # has a time-driven part (advance does something)
    limit_kind = False

    def __init__(self, name: str, rule: Any) -> None:
        self.name = name
        self.rule = rule

    def observe(self, quantity: str, value: float, ts: float, out: Out) -> None:
        raise NotImplementedError

    def advance(self, now: float, out: Out) -> None:
        """Time passes with the last value held."""

    @property
    def in_excursion(self) -> bool:
        return False

    def state(self) -> dict[str, Any]:
        # copies of lists: the snapshot is encoded on another thread while samples go on
        return {k: list(v) if isinstance(v, list) else v for k in self._STATE for v in (getattr(self, k),)}

    def load(self, s: dict[str, Any]) -> None:
        for k in self._STATE:
            if k in s:
                setattr(self, k, s[k])

    _STATE: tuple[str, ...] = ()


class Threshold(Evaluator):
    """A condition that must hold ``delay_s`` to raise and ends only past the hysteresis.

    The excursion begins at the first violating sample (``since``); noise inside the
    hysteresis band neither ends it nor restarts its timer, so a value dithering on the
    limit neither flaps nor escapes the delay.
    """

    timed = True
    limit_kind = True
    _STATE: tuple[str, ...] = ("since", "raised", "value", "peak")

    def __init__(self, name: str, rule: Any) -> None:
        super().__init__(name, rule)
        self.delay = float(getattr(rule, "delay_s", 0.0))
        self.hyst = float(getattr(rule, "hysteresis", 0.0))
        self.since: float | None = None
        self.raised = False
        self.value = 0.0
        self.peak = 0.0

    def judge(self, value: float) -> tuple[bool, bool]:
        """(violated, clear_ok) of a value; clear_ok means back inside the hysteresis band."""
        raise NotImplementedError

    def worse(self, a: float, b: float) -> bool:
        return a > b

    def figures(self) -> dict[str, Any]:
        return {}

    @property
    def in_excursion(self) -> bool:
        return self.since is not None

    def advance(self, now: float, out: Out) -> None:
        since = self.since
        if since is not None and not self.raised and since + self.delay <= now:
            self._raise(since + self.delay, out)

    def observe(self, quantity: str, value: float, ts: float, out: Out) -> None:
        self.step(value, ts, out)

    def step(self, value: float, ts: float, out: Out) -> None:
        if self.since is not None and not self.raised:
            self.advance(ts, out)
        violated, clear_ok = self.judge(value)
        self.value = value
        if self.since is None:
            if not violated:
                return
            self.since = ts
            self.peak = value
        elif clear_ok:
            if self.raised:
                self.raised = False
                out.append((self, "clear", ts, self.since, self._figures(ts)))
            self.since = None
            return
        elif self.worse(value, self.peak):
            self.peak = value
        if not self.raised and ts - self.since >= self.delay:
            self._raise(ts, out)

    def _raise(self, ts: float, out: Out) -> None:
        since = self.since
        assert since is not None  # only called inside an excursion
        self.raised = True
        out.append((self, "raise", ts, since, self._figures(ts)))

    def _figures(self, ts: float) -> dict[str, Any]:
        return {"value": self.value, "peak": self.peak, "duration_s": ts - (self.since or ts),
                "delay_s": self.delay, "hysteresis": self.hyst, **self.figures()}


class Above(Threshold):
    def __init__(self, name: str, rule: Any, quantity: str) -> None:
        super().__init__(name, rule)
        self.quantities = (quantity,)
        self.limit = float(rule.limit)

    def judge(self, value: float) -> tuple[bool, bool]:
        return value >= self.limit, value < self.limit - self.hyst

    def figures(self) -> dict[str, Any]:
        return {"limit": self.limit}


class Below(Threshold):
    def __init__(self, name: str, rule: Any, quantity: str) -> None:
        super().__init__(name, rule)
        self.quantities = (quantity,)
        self.limit = float(rule.limit)

    def judge(self, value: float) -> tuple[bool, bool]:
        return value <= self.limit, value > self.limit + self.hyst

    def worse(self, a: float, b: float) -> bool:
        return a < b

    def figures(self) -> dict[str, Any]:
        return {"limit": self.limit}


class Range(Threshold):
    """Out of [low, high], either bound inclusive (humidity)."""

    def __init__(self, name: str, rule: Any, quantity: str) -> None:
        super().__init__(name, rule)
        self.quantities = (quantity,)
        self.low = -math.inf if rule.low is None else float(rule.low)
        self.high = math.inf if rule.high is None else float(rule.high)

    def judge(self, value: float) -> tuple[bool, bool]:
        return (value <= self.low or value >= self.high,
                self.low + self.hyst < value < self.high - self.hyst)

    def worse(self, a: float, b: float) -> bool:
        mid = (self.low + self.high) / 2 if math.isfinite(self.low + self.high) else 0.0
        return abs(a - mid) > abs(b - mid) if math.isfinite(self.low + self.high) else (
            a > b if math.isfinite(self.high) else a < b)

    def figures(self) -> dict[str, Any]:
        return {"low": self.low if math.isfinite(self.low) else None,
                "high": self.high if math.isfinite(self.high) else None}


_AXES = {"x": (0, 1.0), "y": (1, 1.0), "z": (2, 1.0), "-x": (0, -1.0), "-y": (1, -1.0), "-z": (2, -1.0)}
_ACC = {"acceleration_x": 0, "acceleration_y": 1, "acceleration_z": 2}


def tilt_deg(ax: float, ay: float, az: float, up_axis: str = "z") -> float | None:
    """Angle between the acceleration vector and the upright axis, degrees (None at 0 g)."""
    norm = math.sqrt(ax * ax + ay * ay + az * az)
    if norm == 0.0:
        return None
    i, sign = _AXES[up_axis]
    cos = sign * (ax, ay, az)[i] / norm
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))


class Tilt(Above):
    """Tilt from a ``tilt`` reading, or from the acceleration vector once x, y and z arrived."""

    _STATE = (*Threshold._STATE, "acc", "mask")
    limit_kind = False

    def __init__(self, name: str, rule: Any) -> None:
        Threshold.__init__(self, name, rule)
        self.quantities = ("tilt", *_ACC)
        self.limit = float(rule.limit_deg)
        self.up = rule.up_axis
        self.acc = [0.0, 0.0, 0.0]
        self.mask = 0

    def observe(self, quantity: str, value: float, ts: float, out: Out) -> None:
        if quantity == "tilt":
            self.step(value, ts, out)
            return
        i = _ACC[quantity]
        self.acc[i] = value
        self.mask |= 1 << i
        if self.mask == 7:  # a whole vector: components of one instant arrive one by one
            self.mask = 0
            ax, ay, az = self.acc
            angle = tilt_deg(ax, ay, az, self.up)
            if angle is not None:
                self.step(angle, ts, out)


class Shock(Evaluator):
    """Each peak at or above the limit raises; the alarm clears ``hold_s`` after the last one."""

    timed = True
    quantities = ("shock",)
    _STATE = ("since", "last_peak", "peak", "count")

    def __init__(self, name: str, rule: Any) -> None:
        super().__init__(name, rule)
        self.limit = float(rule.limit)
        self.hold = float(rule.hold_s)
        self.since: float | None = None
        self.last_peak = 0.0
        self.peak = 0.0
        self.count = 0

    def advance(self, now: float, out: Out) -> None:
        if self.since is not None and self.last_peak + self.hold <= now:
            end = self.last_peak + self.hold
            out.append((self, "clear", end, self.since, self._figures(end)))
            self.since = None

    def observe(self, quantity: str, value: float, ts: float, out: Out) -> None:
        self.advance(ts, out)
        if value < self.limit:
            return
        if self.since is None:
            self.since, self.peak, self.count, self.last_peak = ts, value, 1, ts
            out.append((self, "raise", ts, ts, self._figures(ts)))
        else:
            self.count += 1
            self.peak = max(self.peak, value)
            self.last_peak = ts

    def _figures(self, ts: float) -> dict[str, Any]:
        return {"value": self.peak, "limit": self.limit, "count": self.count,
                "duration_s": ts - (self.since or ts)}


class Budget(Evaluator):
    """Cumulative time out of range against a budget, for the trip or a rolling window."""

    timed = True
    limit_kind = True
    _STATE = ("out", "last_ts", "spent", "raised", "first_out", "value")

    def __init__(self, name: str, rule: c.BudgetRule) -> None:
        super().__init__(name, rule)
        self.quantities = (rule.quantity,)
        self.hi = math.inf if rule.above is None else rule.above
        self.lo = -math.inf if rule.below is None else rule.below
        self.budget = rule.budget_s
        self.window = rule.window_s
        self.out = False
        self.last_ts: float | None = None
        self.spent = 0.0  # trip: the total; rolling: up to last_ts, intervals not yet trimmed
        self.raised = False
        self.first_out: float | None = None
        self.value = 0.0
        self.intervals: deque[list[float]] = deque()  # rolling only: [start, end] out of range

    @property
    def in_excursion(self) -> bool:
        return self.out

    def observe(self, quantity: str, value: float, ts: float, out: Out) -> None:
        if self.last_ts is not None and ts < self.last_ts:
            ts = self.last_ts  # late sample: its value counts from now on, time never runs back
        self.advance(ts, out)
        self.value = value
        self.out = value >= self.hi or value <= self.lo
        if self.out and self.first_out is None:
            self.first_out = ts
        self.last_ts = ts

    def spent_at(self, t: float) -> float:
        """Time out of range at ``t`` (≥ last_ts), holding the current state."""
        if self.last_ts is None:
            return self.spent
        if self.window is None:
            return self.spent + (t - self.last_ts if self.out else 0.0)
        ws = t - self.window
        total = sum(max(0.0, min(b, t) - max(a, ws)) for a, b in self.intervals)
        if self.out:
            total += t - max(self.last_ts, ws)
        return total

    def advance(self, now: float, out: Out) -> None:
        last = self.last_ts
        if last is None or now <= last:
            return
        if self.window is None:
            if self.out:
                if not self.raised and self.spent + (now - last) >= self.budget:
                    self._emit("raise", last + self.budget - self.spent, out)
                self.spent += now - last
            self.last_ts = now
            return
        if self.out or self.raised or self.intervals:
            self._advance_window(last, now, out)
        self.last_ts = now

    def _advance_window(self, last: float, now: float, out: Out) -> None:
        # spent(t) is piecewise linear; its kinks are where the window's start crosses an
        # interval edge. Walk them to stamp a raise or clear at its exact moment.
        window = self.window
        assert window is not None  # rolling budgets only
        if (self.out and not self.raised) or (self.raised and not self.out):
            points = sorted({e + window for iv in self.intervals for e in iv if last < e + window < now}
                            | ({last + window} if self.out and last < last + window < now else set()))
            t0, s0 = last, self.spent_at(last)
            for t1 in (*points, now):
                s1 = self.spent_at(t1)
                if not self.raised and s1 >= self.budget:
                    self._emit("raise", t0 + (self.budget - s0) * (t1 - t0) / (s1 - s0) if s1 > s0 else t1, out)
                    break
                if self.raised and s1 < self.budget:
                    self._emit("clear", t0 + (s0 - self.budget) * (t1 - t0) / (s0 - s1) if s0 > s1 else t1, out)
                    break
                t0, s0 = t1, s1
        if self.out:
            if self.intervals and self.intervals[-1][1] == last:
                self.intervals[-1][1] = now
            else:
                self.intervals.append([last, now])
            if len(self.intervals) > MAX_INTERVALS:
                first = self.intervals.popleft()
                self.intervals[0][0] = first[0]
        ws = now - window
        while self.intervals and self.intervals[0][1] <= ws:
            self.intervals.popleft()
        if self.intervals and self.intervals[0][0] < ws:
            self.intervals[0][0] = ws
        self.first_out = self.intervals[0][0] if self.intervals else (now if self.out else None)
        self.spent = sum(b - a for a, b in self.intervals)

    def _emit(self, kind: str, ts: float, out: Out) -> None:
        self.raised = kind == "raise"
        started = self.first_out if self.first_out is not None else ts
        out.append((self, kind, ts, started, {
            "value": self.value, "budget_s": self.budget, "spent_s": round(self.spent_at(ts), 3),
            "window_s": self.window, "above": None if math.isinf(self.hi) else self.hi,
            "below": None if math.isinf(self.lo) else self.lo, "duration_s": ts - started}))

    def state(self) -> dict[str, Any]:
        return {**super().state(), "intervals": [list(iv) for iv in self.intervals]}

    def load(self, s: dict[str, Any]) -> None:
        super().load(s)
        self.intervals = deque([float(a), float(b)] for a, b in s.get("intervals", []))


class Missing(Evaluator):
    """No sample (of one quantity, or any) for ``timeout_s``: raised at last_seen + timeout."""

    timed = True
    _STATE = ("last_seen", "raised")

    def __init__(self, name: str, rule: c.MissingRule) -> None:
        super().__init__(name, rule)
        self.timeout = rule.timeout_s
        if rule.quantity is None:
            self.any_quantity = True
        else:
            self.quantities = (rule.quantity,)
        self.last_seen: float | None = None
        self.raised = False

    def start(self, now: float) -> None:
        """A sensor never heard from is timed from when the engine first ticked."""
        if self.last_seen is None:
            self.last_seen = now

    def advance(self, now: float, out: Out) -> None:
        seen = self.last_seen
        if seen is not None and not self.raised and now - seen >= self.timeout:
            self.raised = True
            out.append((self, "raise", seen + self.timeout, seen, {"timeout_s": self.timeout, "duration_s": self.timeout}))

    def observe(self, quantity: str, value: float, ts: float, out: Out) -> None:
        self.advance(ts, out)
        if self.raised:
            self.raised = False
            seen = self.last_seen or ts
            out.append((self, "clear", ts, seen, {"timeout_s": self.timeout, "duration_s": ts - seen}))
        if self.last_seen is None or ts > self.last_seen:
            self.last_seen = ts
