"""Standards a QA person checks a trip against, as pure functions.

EN 12830 (temperature recorders for transport, storage and distribution), clause 4.9.2.2
of the 1999 edition, as quoted by recorder makers' compliance matrices: the maximum
recording interval of a *transport* recorder is 5 min for trips of up to 24 h,
15 min for 1 to 7 days, and 60 min beyond (a bound takes the stricter). Sources in
``docs/shipments.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DAY = 86400.0

#: (longest trip, s, exclusive upper bound; largest recording interval allowed, s)
EN12830_TRANSPORT = ((DAY, 300.0), (7 * DAY, 900.0), (float("inf"), 3600.0))


def en12830_max_interval(duration_s: float) -> float:
    """The longest recording interval EN 12830 allows a transport recorder for a trip of ``duration_s``."""
    for longest, interval in EN12830_TRANSPORT:
        if duration_s <= longest:  # "up to 1 day", "1 to 7 days": a bound takes the stricter interval
            return interval
    return EN12830_TRANSPORT[-1][1]  # pragma: no cover - the last bound is infinite


def en12830_check(planned_duration_s: float | None, intervals: Mapping[str, float | None],
                  default_interval_s: float | None = None) -> dict[str, Any]:
    """Warnings for sensors that record less often than EN 12830 allows for the planned trip.

    ``intervals`` maps a sensor to its configured recording interval (None: the
    ``default_interval_s``; 0: every sample is recorded). Without a planned duration the
    check cannot be made, and says so: a QA person should see that, not silence.
    """
    used = {sid: (iv if iv is not None else default_interval_s) for sid, iv in intervals.items()}
    if planned_duration_s is None:
        return {"standard": "EN 12830", "max_interval_s": None, "intervals_s": used, "warnings": [
            "no planned duration given: the EN 12830 recording interval cannot be checked"]}
    limit = en12830_max_interval(planned_duration_s)
    warnings = []
    for sid, iv in sorted(used.items()):
        if iv is None:
            warnings.append(f"{sid}: recording interval unknown; EN 12830 allows at most {limit:g} s "
                            f"for a {planned_duration_s / 3600:g} h trip")
        elif iv > limit:
            warnings.append(f"{sid}: records every {iv:g} s; EN 12830 allows at most {limit:g} s "
                            f"for a {planned_duration_s / 3600:g} h trip")
    return {"standard": "EN 12830", "max_interval_s": limit, "intervals_s": used, "warnings": warnings}
