"""What ``shipment_started`` records of each sensor, gathered from the agent's config.

The stream must say how a trip was judged without the config that judged it: a report
made from a receiver's copy, years later, has only the records. So the start event
carries each sensor's label, rule profile and its resolved rules, recording interval and
calibration certificate with its due date.
"""

from __future__ import annotations

from typing import Any

from agent.shipment.config import ShipmentSpec


def describe(config: Any, spec: ShipmentSpec) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``(sensors, rule_profiles)`` for :meth:`ShipmentBook.start` from an ``agent.config.Config``.

    A sensor not in ``[[sensors]]`` is described by its id alone (and judged by no rules
    unless the shipment names a profile).
    """
    sensors: list[dict[str, Any]] = []
    profiles: dict[str, Any] = {}
    for sid in spec.sensors:
        sc = config.sensor(sid)
        entry: dict[str, Any] = {"id": sid}
        if sc is not None:
            entry["label"] = sc.label
            entry["record_interval_s"] = (sc.record_interval_s if sc.record_interval_s is not None
                                          else config.recording.record_interval_s)
            if sc.calibration is not None:
                cal = sc.calibration
                entry["calibration"] = {"certificate": cal.certificate,
                                        "due": cal.due.isoformat() if cal.due else None,
                                        "offset": cal.offset, "slope": cal.slope}
        else:
            entry["record_interval_s"] = config.recording.record_interval_s
        profile = spec.profile_of(sid, sc.profile if sc is not None else None)
        entry["profile"] = profile
        if profile and profile not in profiles and config.rules.has_profile(profile):
            prof = config.rules.profile(profile)
            profiles[profile] = {"description": prof.description, "mkt_max_gap_s": prof.mkt_max_gap_s,
                                 "rules": {n: r.model_dump(mode="json") for n, r in prof.active_rules().items()}}
        sensors.append(entry)
    return sensors, profiles
