"""Mean kinetic temperature (USP <1079>/<1160>), kept incrementally.

    MKT = (ΔH/R) / −ln( Σ wᵢ·exp(−ΔH/(R·Tᵢ)) / Σ wᵢ )        ΔH/R = 10 000 K exactly

with Tᵢ in kelvin and each reading weighted by the time to the next reading (in the
engine, elapsed time on the agent timeline: a wall-clock step weighs nothing). The weight
of a reading is only known when the next one arrives, so an accumulator holds the last
reading *pending* and books it then: O(1) per sample, never a rescan.

A reading is weighted for at most ``max_gap_s``. The rest of a longer interval is a
*gap*: counted and reported (``gaps``, ``gap_s``), not bridged with a value nobody
measured. A rolling window is kept in ``BUCKETS`` time buckets of sums, so memory and
the persisted state stay small (the window edge moves in steps of ``window_s / BUCKETS``).
"""

from __future__ import annotations

import bisect
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


# -- windows of USP <1079.2> -------------------------------------------------------------

#: ΔH of USP <1079>/<1079.2>: ΔH/R = 10 000 K with R = 8.3144 J/(mol·K), i.e. 83.144 kJ/mol
DH_KJ_PER_MOL = round(DH_R * 8.3144 / 1000.0, 3)
#: USP <1079.2>: controlled cold temperature (2-8 °C) products, 24 consecutive hours
CCT_WINDOW_S = 24 * 3600.0
#: USP <1079.2>: controlled room temperature products, 30 consecutive days
CRT_WINDOW_S = 30 * 86400.0


def usp_window(profile_name: str, mkt_limit: float | None) -> tuple[float | None, str]:
    """The MKT window USP <1079.2> gives a profile's product class, and the class's name.

    Cold-chain (controlled cold temperature, an MKT limit at or below 8 °C) products: 24 h;
    controlled room temperature (``crt``, ``15-25C`` and other limits above 8 °C): 30 days.
    Frozen and colder products have no MKT in <1079.2> (None: the trip figure only).
    """
    if profile_name in ("crt", "15-25C"):
        return CRT_WINDOW_S, "controlled room temperature"
    if profile_name == "2-8C":
        return CCT_WINDOW_S, "controlled cold temperature"
    if mkt_limit is None:
        return None, "no MKT class (no MKT rule)"
    if mkt_limit <= 8.0:
        return CCT_WINDOW_S, "controlled cold temperature"
    return CRT_WINDOW_S, "controlled room temperature"


def _pieces(series: Iterable[tuple[float, float]], end: float | None, max_gap_s: float) -> list[tuple[float, float, float]]:
    """``(start, stop, arrhenius)`` of each reading held until the next (at most ``max_gap_s``)."""
    pts: list[tuple[float, float]] = []
    for ts, value in series:
        if pts and ts <= pts[-1][0]:
            if ts == pts[-1][0]:
                pts[-1] = (ts, value)  # same instant: the newer value replaces, as in the accumulator
            continue
        pts.append((ts, value))
    out = []
    for i, (ts, value) in enumerate(pts):
        nxt = pts[i + 1][0] if i + 1 < len(pts) else end
        if nxt is None or nxt <= ts:
            continue
        out.append((ts, min(nxt, ts + max_gap_s), arrhenius(value)))
    return out


def windowed_mkt(series: Iterable[tuple[float, float]], window_s: float, *, end: float | None = None,
                 max_gap_s: float = 3600.0) -> dict[str, Any] | None:
    """The highest MKT over every window of ``window_s`` within the series: USP <1079.2>.

    <1079.2> asks for the MKT over a fixed span (24 h for cold-chain products, 30 days for
    controlled room temperature) that *includes the excursion*; the worst such window is the
    one an excursion weighs most in, so the highest window MKT is the figure to judge (any
    other window holding the excursion gives the same or less). Readings hold until the
    next one (at most ``max_gap_s``; longer silences are not bridged). A series shorter
    than the window is judged over its whole span (``complete`` False): the time outside
    the trip is unknown, and leaving it out can only raise the figure.

    Exact, not bucketed: between breakpoints the window's Arrhenius sum and weight are
    linear in its position, so their ratio is monotonic and the maximum lies where a window
    edge meets a reading edge; a two-pointer sweep visits those in O(n).

    Returns ``{"mkt", "window_s", "start", "end", "span_s", "complete"}`` (times as given),
    or None without data.
    """
    pieces = _pieces(series, end, max_gap_s)
    if not pieces:
        return None
    first, last = pieces[0][0], pieces[-1][1]
    if last - first <= window_s:
        sw = sum(b - a for a, b, _ in pieces)
        swe = sum((b - a) * e for a, b, e in pieces)
        m = mkt_from_sums(swe, sw)
        return {"mkt": m, "window_s": window_s, "start": first, "end": last, "span_s": sw, "complete": False}
    # prefix sums of weight and Arrhenius weight up to each piece's start: a window's sums are
    # the difference of two cumulative values, each found by bisection
    starts = [a for a, _, _ in pieces]
    cw, cwe = [0.0], [0.0]
    for a, b, e in pieces:
        cw.append(cw[-1] + (b - a))
        cwe.append(cwe[-1] + (b - a) * e)

    def cumulative(x: float) -> tuple[float, float]:
        k = bisect.bisect_right(starts, x) - 1
        if k < 0:
            return 0.0, 0.0
        a, b, e = pieces[k]
        part = max(0.0, min(x, b) - a)
        return cw[k] + part, cwe[k] + part * e

    cands = sorted({p for a, b, _ in pieces for p in (a, b, a - window_s, b - window_s) if first <= p <= last - window_s})
    best: tuple[float, float, float] | None = None  # (mkt, start, weight)
    for s in cands:
        w0, e0 = cumulative(s)
        w1, e1 = cumulative(s + window_s)
        m = mkt_from_sums(e1 - e0, w1 - w0)
        if m is not None and (best is None or m > best[0] + 1e-12):
            best = (m, s, w1 - w0)
    if best is None:
        return None
    return {"mkt": best[0], "window_s": window_s, "start": best[1], "end": best[1] + window_s, "span_s": best[2],
            "complete": True}
