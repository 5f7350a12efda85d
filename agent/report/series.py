"""Figures of one sensor quantity's readings: summary, zones, excursions, chart buckets.

Readings are ``(t, value)`` pairs, epoch seconds, ascending. Between readings the value
holds (sample and hold) for at most ``max_gap_s``; longer silences are *no data*, never
bridged. The agent stores every sample while a sensor is out of range, so excursions are
exact from the stored record; in range it keeps one per recording interval.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

Points = Sequence[tuple[float, float]]


def _held(points: Points, end: float, max_gap_s: float) -> list[tuple[float, float, float]]:
    """``(start, stop, value)`` of each reading's held span (capped at ``max_gap_s``)."""
    out = []
    for i, (t, v) in enumerate(points):
        nxt = points[i + 1][0] if i + 1 < len(points) else end
        if nxt > t:
            out.append((t, min(nxt, t + max_gap_s), v))
    return out


def summary(points: Points, end: float, max_gap_s: float) -> dict[str, Any]:
    """Count, min and max with their times, time-weighted mean, elapsed, intervals, no-data time."""
    if not points:
        return {"count": 0}
    lo = min(points, key=lambda p: p[1])
    hi = max(points, key=lambda p: p[1])
    held = _held(points, end, max_gap_s)
    w = sum(b - a for a, b, _ in held)
    mean = sum((b - a) * v for a, b, v in held) / w if w > 0 else statistics.fmean(v for _, v in points)
    steps = [b[0] - a[0] for a, b in zip(points, points[1:], strict=False) if b[0] > a[0]]
    span = (max(end, points[-1][0]) - points[0][0])
    return {"count": len(points), "min": lo[1], "min_at": lo[0], "max": hi[1], "max_at": hi[0], "mean": mean,
            "first_at": points[0][0], "last_at": points[-1][0], "elapsed_s": points[-1][0] - points[0][0],
            "interval_median_s": statistics.median(steps) if steps else None,
            "interval_max_s": max(steps) if steps else None, "no_data_s": max(0.0, span - w)}


def zones(points: Points, end: float, bounds: Sequence[float], max_gap_s: float) -> list[dict[str, Any]]:
    """Time in each zone between consecutive ``bounds`` (a value on a bound is in the upper zone)."""
    edges = sorted(set(bounds))
    held = _held(points, end, max_gap_s)
    total = sum(b - a for a, b, _ in held)
    times = [0.0] * (len(edges) + 1)
    for a, b, v in held:
        i = 0
        while i < len(edges) and v >= edges[i]:
            i += 1
        times[i] += b - a
    out = []
    for i, t in enumerate(times):
        low = edges[i - 1] if i > 0 else None
        high = edges[i] if i < len(edges) else None
        label = (f"< {high:g}" if low is None and high is not None else f">= {low:g}" if high is None and low is not None
                 else f"{low:g} .. < {high:g}" if low is not None else "all")
        out.append({"zone": label, "low": low, "high": high, "time_s": t, "pct": 100.0 * t / total if total else 0.0})
    return out


def threshold_runs(points: Points, end: float, *, op: str, limit: float, hysteresis: float = 0.0,
                   low: float | None = None, high: float | None = None) -> list[dict[str, Any]]:
    """Excursions as the rule engine sees them: from the first violating reading to the first one
    back inside the hysteresis band (``op`` above, below, or range with ``low``/``high``)."""

    def judge(v: float) -> tuple[bool, bool]:
        if op == "above":
            return v >= limit, v < limit - hysteresis
        if op == "below":
            return v <= limit, v > limit + hysteresis
        lo = -math.inf if low is None else low
        hi = math.inf if high is None else high
        return v <= lo or v >= hi, lo + hysteresis < v < hi - hysteresis

    runs: list[dict[str, Any]] = []
    cur: dict[str, Any] | None = None
    worse = (lambda a, b: a > b) if op == "above" else (lambda a, b: a < b)
    for t, v in points:
        bad, ok = judge(v)
        if cur is None:
            if bad:
                cur = {"start": t, "end": None, "peak": v, "open": True}
        elif ok:
            cur.update(end=t, open=False)
            runs.append(cur)
            cur = None
        elif worse(v, cur["peak"]) or (op == "range" and abs(v) > abs(cur["peak"])):
            cur["peak"] = v
    if cur is not None:
        cur["end"] = max(end, cur["start"])
        runs.append(cur)
    for r in runs:
        r["duration_s"] = r["end"] - r["start"]
    return runs


def band_runs(points: Points, end: float, *, above: float | None, below: float | None) -> list[dict[str, Any]]:
    """Time at or beyond a bound, held from each reading to the next (a cumulative budget's view)."""
    hi = math.inf if above is None else above
    lo = -math.inf if below is None else below
    runs: list[dict[str, Any]] = []
    cur: dict[str, Any] | None = None
    for t, v in points:
        out = v >= hi or v <= lo
        if out and cur is None:
            cur = {"start": t, "peak": v, "open": True}
        elif out and cur is not None:
            cur["peak"] = v if abs(v - (hi if v >= hi else lo)) > abs(cur["peak"] - (hi if cur["peak"] >= hi else lo)) \
                else cur["peak"]
        elif not out and cur is not None:
            cur.update(end=t, open=False, duration_s=t - cur["start"])
            runs.append(cur)
            cur = None
    if cur is not None:
        cur.update(end=max(end, cur["start"]), duration_s=max(end, cur["start"]) - cur["start"])
        runs.append(cur)
    return runs


def buckets(points: Points, t0: float, t1: float, n: int = 480) -> list[list[float]]:
    """``[t, min, max]`` per column of a chart ``n`` wide: peaks survive any decimation."""
    if not points or t1 <= t0:
        return [[p[0], p[1], p[1]] for p in points]
    width = (t1 - t0) / n
    out: list[list[float]] = []
    col = -1
    for t, v in points:
        c = min(n - 1, max(0, int((t - t0) / width)))
        if c != col:
            out.append([t, v, v])
            col = c
        else:
            b = out[-1]
            if v < b[1]:
                b[1] = v
            if v > b[2]:
                b[2] = v
    return out
