"""Mean kinetic temperature (USP <1079>/<1160>), kept incrementally.

    MKT = (ΔH/R) / −ln( Σ wᵢ·exp(−ΔH/(R·Tᵢ)) / Σ wᵢ )        ΔH/R = 10 000 K exactly

with Tᵢ in kelvin and each reading weighted by the time to the next reading. The weight
of a reading is only known when the next one arrives, so an accumulator holds the last
reading *pending* and books it then: O(1) per sample, never a rescan.

A reading is weighted for at most ``max_gap_s``. The rest of a longer interval is a
*gap*: counted and reported (``gaps``, ``gap_s``), not bridged with a value nobody
measured. A rolling window is kept in ``BUCKETS`` time buckets of sums, so memory and
the persisted state stay small (the window edge moves in steps of ``window_s / BUCKETS``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

DH_R = 10_000.0  # K, ΔH/R fixed by USP <1079>
KELVIN = 273.15
BUCKETS = 48


def arrhenius(t_cel: float) -> float:
    """The Arrhenius term exp(−ΔH/(R·T)) of one temperature."""
    return math.exp(-DH_R / (t_cel + KELVIN))


def mkt_from_sums(sum_we: float, sum_w: float) -> float | None:
    """MKT in Cel from the weighted sums, or None with no weight yet."""
    if sum_w <= 0 or sum_we <= 0:
        return None
    return DH_R / -math.log(sum_we / sum_w) - KELVIN


def mkt_of(series: Iterable[tuple[float, float]], end: float | None = None, max_gap_s: float = math.inf) -> float | None:
    """MKT of ``(ts, Cel)`` pairs; ``end`` closes the last reading's interval.

    A reference implementation for replay and tests; the engine uses :class:`MktAccumulator`.
    """
    acc = MktAccumulator(max_gap_s=max_gap_s)
    for ts, value in series:
        acc.add(ts, value)
    if end is not None:
        acc.close(end)
    return acc.mkt()


class MktAccumulator:
    """Incremental MKT over the trip (``window_s=None``) or a rolling window."""

    __slots__ = ("max_gap_s", "window_s", "sum_we", "sum_w", "last_ts", "last_e", "gaps", "gap_s", "buckets",
                 "_width")

    def __init__(self, *, max_gap_s: float = 3600.0, window_s: float | None = None) -> None:
        self.max_gap_s = max_gap_s
        self.window_s = window_s
        self._width = window_s / BUCKETS if window_s else 0.0
        self.sum_we = 0.0
        self.sum_w = 0.0
        self.last_ts: float | None = None
        self.last_e = 0.0
        self.gaps = 0
        self.gap_s = 0.0
        #: rolling window only: [bucket index, Σw·e, Σw] oldest first
        self.buckets: list[list[float]] = []

    def add(self, ts: float, value: float) -> None:
        """Book the pending reading up to ``ts`` and make (ts, value) the pending one."""
        e = arrhenius(value)
        if self.last_ts is not None:
            if ts <= self.last_ts:  # same instant or out of order: the newer value replaces
                self.last_e = e
                return
            self._book(ts)
        self.last_ts = ts
        self.last_e = e

    def close(self, end: float) -> None:
        """Book the pending reading up to ``end`` (the end of a trip or report)."""
        if self.last_ts is not None and end > self.last_ts:
            self._book(end)
            self.last_ts = end

    def _book(self, ts: float) -> None:
        dt = ts - self.last_ts  # type: ignore[operator]
        if dt > self.max_gap_s:
            self.gaps += 1
            self.gap_s += dt - self.max_gap_s
            dt = self.max_gap_s
        we = dt * self.last_e
        self.sum_we += we
        self.sum_w += dt
        if self.window_s:
            self._window_add(self.last_ts, we, dt)  # type: ignore[arg-type]
            self._expire(ts)

    def _window_add(self, ts: float, we: float, w: float) -> None:
        idx = math.floor(ts / self._width)
        if self.buckets and self.buckets[-1][0] == idx:
            b = self.buckets[-1]
            b[1] += we
            b[2] += w
        else:
            self.buckets.append([float(idx), we, w])

    def _expire(self, now: float) -> None:
        oldest = math.floor((now - self.window_s) / self._width)  # type: ignore[operator]
        if self.buckets and self.buckets[0][0] < oldest:
            self.buckets = [b for b in self.buckets if b[0] >= oldest]
            # re-sum from the buckets (at most BUCKETS + 1) rather than subtract: no drift
            self.sum_we = sum(b[1] for b in self.buckets)
            self.sum_w = sum(b[2] for b in self.buckets)

    def mkt(self) -> float | None:
        return mkt_from_sums(self.sum_we, self.sum_w)

    @property
    def span_s(self) -> float:
        """Weighted time the figure covers, s."""
        return self.sum_w

    def state(self) -> dict[str, Any]:
        return {"sum_we": self.sum_we, "sum_w": self.sum_w, "last_ts": self.last_ts, "last_e": self.last_e,
                "gaps": self.gaps, "gap_s": self.gap_s,
                "buckets": [list(b) for b in self.buckets]}  # a copy: the live ones change in place

    def load(self, s: dict[str, Any]) -> None:
        self.sum_we = float(s["sum_we"])
        self.sum_w = float(s["sum_w"])
        self.last_ts = s["last_ts"]
        self.last_e = float(s["last_e"])
        self.gaps = int(s["gaps"])
        self.gap_s = float(s["gap_s"])
        self.buckets = [list(map(float, b)) for b in s.get("buckets", [])]
