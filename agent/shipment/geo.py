"""Positions: pairing latitude and longitude readings into fixes, and geofence distance."""

from __future__ import annotations

import math
from typing import Any

EARTH_RADIUS_M = 6_371_008.8  # mean radius (IUGG)
#: a latitude and a longitude this close in time (s) are one fix
PAIR_WINDOW_S = 5.0


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine), metres: good to 0.5 % for geofences of any size."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


class FixTracker:
    """The last GPS fix, from ``latitude``/``longitude`` readings that arrive one by one.

    A ``gnss_fix`` of 0 (no fix) drops the half-made pair: a position a receiver sends
    without a fix is not one.
    """

    def __init__(self) -> None:
        self.fix: dict[str, Any] | None = None  # {"sensor_id", "lat", "lon", "elapsed"}
        self._half: dict[str, tuple[str, float, float]] = {}  # sensor -> (quantity, value, elapsed)

    def observe(self, sensor_id: str, quantity: str, value: float, elapsed: float) -> dict[str, Any] | None:
        """Take one reading; the new fix when it completes one."""
        if quantity == "gnss_fix":
            if value <= 0:
                self._half.pop(sensor_id, None)
            return None
        if quantity not in ("latitude", "longitude"):
            return None
        half = self._half.get(sensor_id)
        if half is not None and half[0] != quantity and abs(elapsed - half[2]) <= PAIR_WINDOW_S:
            lat, lon = (value, half[1]) if quantity == "latitude" else (half[1], value)
            del self._half[sensor_id]
            if -90 <= lat <= 90 and -180 <= lon <= 180:
                self.fix = {"sensor_id": sensor_id, "lat": lat, "lon": lon, "elapsed": elapsed}
                return self.fix
            return None
        self._half[sensor_id] = (quantity, value, elapsed)
        return None

    def where(self, elapsed: float) -> dict[str, Any] | None:
        """The last fix for a record (lat, lon, how old), or None."""
        if self.fix is None:
            return None
        return {"lat": self.fix["lat"], "lon": self.fix["lon"], "sensor_id": self.fix["sensor_id"],
                "fix_age_s": round(max(0.0, elapsed - self.fix["elapsed"]), 3)}

    def state(self) -> dict[str, Any]:
        return {"fix": dict(self.fix) if self.fix else None}

    def load(self, s: dict[str, Any]) -> None:
        self.fix = dict(s["fix"]) if s.get("fix") else None
