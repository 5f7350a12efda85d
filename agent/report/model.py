"""The trip report as data: one JSON-able dict made from a shipment's records alone.

Everything comes from the stream (the ``shipment_started`` event carries the sensors,
their profiles' rules, intervals and calibration), so the gateway's store and a
receiver's copy of the same records give the same report (only ``source`` and
``generated_at`` differ). The PDF and HTML renderers draw this dict and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any

from agent import __version__
from agent.report import integrity, series
from agent.report.select import Selection
from agent.rules.mkt import DH_KJ_PER_MOL, DH_R, mkt_of, usp_window, windowed_mkt
from agent.shipment.standards import en12830_max_interval
from agent.timebase import parse_rfc3339, rfc3339

FORMAT = "coldgate-trip-report/1"
GPS_QUANTITIES = {"latitude", "longitude", "altitude", "speed", "gnss_fix", "hdop", "satellites"}
LIMIT_TYPES = {"above", "below", "humidity", "budget"}
SINGLE = {"above", "below", "humidity", "light", "battery", "tilt"}
STATUS_ORDER = ("OK", "REVIEW", "NOT VERIFIED", "ALARM")


def _iso(t: float | None) -> str | None:
    return None if t is None else rfc3339(t)


def _worst(a: str, b: str) -> str:
    return a if STATUS_ORDER.index(a) >= STATUS_ORDER.index(b) else b


def build(sel: Selection, *, source: Mapping[str, Any], generated_at: float | None = None) -> dict[str, Any]:
    """The report model of ``sel`` (see :mod:`agent.report`)."""
    sd = sel.started.get("details") or {}
    shipment = sel.shipment
    gateway = str(sd.get("gateway") or source.get("gateway") or "")
    integ = integrity.check(sel.records, gateway=gateway, shipment=shipment)
    fixes = integrity.corrections(integ.get("clock_steps", []))
    info = {s["id"]: s for s in sd.get("sensors", []) if isinstance(s, dict) and "id" in s}
    sensor_ids = list(info) or list(sd.get("sensors", []))
    profiles = sd.get("rule_profiles") or {}

    def when(rec: Mapping[str, Any]) -> float:
        t = parse_rfc3339(rec["ts"])
        if rec.get("time_quality") == "unsynced" and fixes:
            seq = int(rec["seq"])
            for a, b, off in fixes:
                if a <= seq <= b:
                    return t + off
        return t

    t_start = when(sel.started)
    t_end = when(sel.stopped) if sel.stopped else when(sel.records[-1])
    points: dict[tuple[str, str], list[tuple[float, float]]] = {}
    units: dict[tuple[str, str], str] = {}
    certs: dict[str, str] = {}
    gps: dict[str, list[tuple[float, str, float]]] = {}
    alarms: list[dict[str, Any]] = []
    legs: list[dict[str, Any]] = []
    custody: list[dict[str, Any]] = []
    states: list[dict[str, Any]] = []
    corrected = 0
    for rec in sel.records:
        rtype = rec.get("type")
        if rtype == "reading":
            sid, q = rec.get("sensor_id"), rec.get("quantity")
            if q in GPS_QUANTITIES:
                if q in ("latitude", "longitude"):
                    gps.setdefault(str(sid), []).append((when(rec), q, float(rec["value"])))
                continue
            if rec.get("shipment") != shipment and sid not in info:
                continue
            t = when(rec)
            corrected += rec.get("time_quality") == "unsynced" and t != parse_rfc3339(rec["ts"])
            points.setdefault((str(sid), str(q)), []).append((t, float(rec["value"])))
            units[(str(sid), str(q))] = str(rec.get("unit", ""))
            if rec.get("calibration"):
                certs[str(sid)] = str(rec["calibration"])
        elif rtype == "alarm":
            if rec.get("shipment") not in (None, shipment) or (rec.get("shipment") is None
                                                              and rec.get("sensor_id") not in info):
                continue
            a = dict(rec)
            a["_t"] = when(rec)
            # started_at was read off the same clock as ts: the same correction applies
            a["_started"] = parse_rfc3339(rec["started_at"]) + (a["_t"] - parse_rfc3339(rec["ts"])) \
                if rec.get("started_at") else a["_t"]
            alarms.append(a)
        elif rtype == "event" and isinstance(rec.get("details"), dict) and rec["details"].get("shipment") == shipment:
            d, ev = rec["details"], rec.get("event")
            if ev == "shipment_leg":
                legs.append({"index": d.get("index"), "name": d.get("leg"), "kind": d.get("kind"), "mode": d.get("mode"),
                             "mute": (d.get("alarms") or {}).get("mute", []), "_t": when(rec)})
            elif ev == "custody_transferred":
                custody.append({"index": d.get("index"), "from": d.get("from"), "to": d.get("to"),
                                "signed_by": d.get("signed_by"), "at": _iso(when(rec)), "where": d.get("where"),
                                "leg": d.get("leg"), "note": d.get("note"), "seq": rec["seq"]})
            elif ev == "shipment_state":
                states.append({"from": d.get("from"), "to": d.get("to"), "cause": d.get("cause"), "at": _iso(when(rec))})
    for p in points.values():
        p.sort()
    for i, leg in enumerate(legs):
        end = legs[i + 1]["_t"] if i + 1 < len(legs) else t_end
        leg.update(start=_iso(leg["_t"]), end=_iso(end), duration_s=end - leg.pop("_t"))

    findings: list[str] = []
    status = "OK"
    # -- sensors ------------------------------------------------------------------------
    sensors_out = []
    for sid in sensor_ids:
        si = info.get(sid, {"id": sid})
        prof_name = si.get("profile")
        prof = profiles.get(prof_name, {}) if prof_name else {}
        rules = prof.get("rules", {})
        max_gap = float(prof.get("mkt_max_gap_s", 3600.0))
        cal = dict(si.get("calibration") or {})
        if not cal.get("certificate") and sid in certs:
            cal["certificate"] = certs[sid]
        due = cal.get("due")
        cal["past_due"] = bool(due and date.fromisoformat(due) < datetime.fromtimestamp(t_end, UTC).date())
        if cal["past_due"]:
            findings.append(f"{sid}: calibration {cal.get('certificate') or ''} was due {due}, before the trip ended")
            status = _worst(status, "REVIEW")
        limits = [{"rule": n, **{k: r.get(k) for k in ("type", "quantity", "limit", "above", "below", "low", "high",
                                                        "delay_s", "budget_s", "window_s", "hysteresis", "severity")
                                 if r.get(k) is not None}} for n, r in rules.items()
                  if r.get("type") in LIMIT_TYPES | {"mkt"}]
        quantities = {}
        for (s, q), pts in sorted(points.items()):
            if s != sid:
                continue
            summ = series.summary(pts, t_end, max_gap)
            bounds = [b for r in rules.values() if r.get("type") in LIMIT_TYPES and r.get("quantity", "temperature") == q
                      for b in (r.get("limit"), r.get("above"), r.get("below"), r.get("low"), r.get("high"))
                      if b is not None]
            entry: dict[str, Any] = {"unit": units.get((s, q), ""), **summ,
                                     "zones": series.zones(pts, t_end, bounds, max_gap) if bounds else []}
            for k in ("min_at", "max_at", "first_at", "last_at"):
                entry[k] = _iso(entry.get(k))
            if q == "temperature":
                entry["mkt"] = _mkt(pts, t_end, max_gap, prof_name, rules)
            quantities[q] = entry
        sensors_out.append({"id": sid, "label": si.get("label"), "profile": prof_name,
                            "profile_description": prof.get("description"),
                            "record_interval_s": si.get("record_interval_s"),
                            "interval_used_s": (quantities.get("temperature") or {}).get("interval_median_s"),
                            "calibration": cal, "limits": limits, "quantities": quantities})

    # -- alarms -------------------------------------------------------------------------
    table, alarm_status, alarm_reasons = _alarm_table(sensor_ids, info, profiles, points, alarms, t_end)
    status = _worst(status, alarm_status)
    findings = alarm_reasons + findings

    # -- exposure, standards ------------------------------------------------------------
    stop_d = (sel.stopped or {}).get("details") or {}
    stability = stop_d.get("stability") or ({"budget_s": sd["stability"]["budget_s"],
                                             "spent_upstream_s": sd["stability"].get("spent_upstream_s", 0.0),
                                             "in_progress": True} if sd.get("stability") else None)
    if stability and stability.get("exhausted"):
        status = _worst(status, "ALARM")
        findings.insert(0, "the product's stability budget is exhausted (no time out of range left)")
    freeze = stop_d.get("freeze_thaw")
    if freeze and freeze.get("max"):
        limit = freeze.get("max_cycles")
        over = limit is not None and freeze["max"] > limit
        status = _worst(status, "ALARM" if over else "REVIEW")
        findings.append(f"{freeze['max']} freeze-thaw cycle(s)" + (f", more than the {limit} allowed" if over else ""))
    duration = t_end - t_start
    allowed = en12830_max_interval(float(sd.get("planned_duration_s") or duration))
    en: dict[str, Any] = {"standard": "EN 12830 (transport recorders)", "planned_duration_s": sd.get("planned_duration_s"),
          "max_interval_s": allowed, "at_start": sd.get("en12830"), "sensors": []}
    for so in sensors_out:
        used = so["interval_used_s"]
        ok = used is None or used <= allowed
        en["sensors"].append({"id": so["id"], "configured_s": so["record_interval_s"], "used_s": used, "ok": ok})
        if not ok:
            findings.append(f"{so['id']}: recorded every {used:g} s, EN 12830 allows {allowed:g} s for this trip")
            status = _worst(status, "REVIEW")

    # -- integrity ----------------------------------------------------------------------
    integ["corrected_records"] = corrected
    if integ["verdict"] != integrity.VERIFIED:
        status = _worst(status, "NOT VERIFIED")
        findings += [f"record: {r}" for r in integ["reasons"]]
    if integ["time_quality"].get("unsynced") and not fixes:
        findings.append(f"{integ['time_quality']['unsynced']} record(s) stamped while the clock was not synchronised")
        status = _worst(status, "REVIEW")
    if sel.stopped is None:
        findings.append("the shipment has not been stopped: this report covers it so far")
        status = _worst(status, "REVIEW")

    charts = _charts(points, units, sensor_ids, profiles, info, table, t_start, t_end)
    track = _track(gps, custody)
    headline = {"OK": "OK: no alarm, record complete and verified",
                "REVIEW": "REVIEW: no alarm, but findings need a look",
                "NOT VERIFIED": "NOT VERIFIED: the record is incomplete or altered",
                "ALARM": "ALARM: the product left its limits"}[status]
    return {
        "format": FORMAT,
        "generated_at": _iso(generated_at if generated_at is not None else datetime.now(UTC).timestamp()),
        "generated_by": f"coldgate {__version__}",
        "source": dict(source),
        "verdict": {"status": status, "headline": headline, "reasons": findings or ["no excursion beyond a limit, "
                                                                                   "record complete and verified"]},
        "shipment": {"id": shipment, "gateway": gateway, "agent_version": sd.get("agent_version"),
                     "state": states[-1]["to"] if states else None, "started_at": _iso(t_start),
                     "stopped_at": _iso(t_end) if sel.stopped else None, "stop_reason": stop_d.get("reason"),
                     "duration_s": duration, "planned_duration_s": sd.get("planned_duration_s"),
                     "ignore_s": sd.get("ignore_s"), "product": sd.get("product"), "reference": sd.get("reference"),
                     "origin": sd.get("origin"), "destination": sd.get("destination"), "started_by": sd.get("by"),
                     "stopped_by": stop_d.get("by"), "stop": sd.get("stop"), "states": states},
        "time_base": "UTC; timestamps RFC 3339 with milliseconds",
        "legs": legs, "custody": custody, "sensors": sensors_out, "alarms": table,
        "stability": stability, "freeze_thaw": freeze,
        "standards": {"en12830": en, "mkt": {"dH_kJ_per_mol": DH_KJ_PER_MOL, "dH_R_K": DH_R,
                                             "reference": "USP <1079.2>: 24 h (controlled cold), 30 days (CRT)"}},
        "charts": charts, "track": track, "integrity": integ,
    }


def _mkt(pts: series.Points, end: float, max_gap: float, profile: str | None, rules: Mapping[str, Any]) -> dict[str, Any]:
    limit = next((r.get("limit") for r in rules.values() if r.get("type") == "mkt"), None)
    trip = mkt_of(pts, end=end, max_gap_s=max_gap)
    window, klass = usp_window(profile or "", limit)
    out: dict[str, Any] = {"dH_kJ_per_mol": DH_KJ_PER_MOL, "limit": limit, "class": klass,
                           "trip": {"mkt": trip, "window": "trip"}}
    if window is not None:
        w = windowed_mkt(pts, window, end=end, max_gap_s=max_gap)
        if w is not None:
            out["usp"] = {"mkt": w["mkt"], "window_s": window, "start": _iso(w["start"]), "end": _iso(w["end"]),
                          "span_s": w["span_s"], "complete": w["complete"]}
    return out


def _alarm_table(sensor_ids: list[str], info: Mapping[str, Any], profiles: Mapping[str, Any],
                 points: Mapping[tuple[str, str], series.Points], alarms: list[dict[str, Any]],
                 t_end: float) -> tuple[list[dict[str, Any]], str, list[str]]:
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for sid in sensor_ids:
        prof = profiles.get((info.get(sid) or {}).get("profile") or "", {})
        for name, r in prof.get("rules", {}).items():
            t = r.get("type")
            if t not in LIMIT_TYPES:
                continue
            pts = points.get((sid, "humidity" if t == "humidity" else r.get("quantity", "temperature")), [])
            if t == "budget":
                runs = series.band_runs(pts, t_end, above=r.get("above"), below=r.get("below"))
                allowed, kind = r.get("budget_s"), "cumulative"
            else:
                op = "range" if t == "humidity" else t
                runs = series.threshold_runs(pts, t_end, op=op, limit=float(r.get("limit") or 0.0),
                                             hysteresis=float(r.get("hysteresis") or 0.0), low=r.get("low"),
                                             high=r.get("high"))
                allowed, kind = r.get("delay_s", 0.0), "single"
            rows[(sid, name)] = {"sensor_id": sid, "rule": name, "rule_type": t, "severity": r.get("severity", "alarm"),
                                 "kind": kind, "allowed_s": allowed,
                                 "limit": {k: r[k] for k in ("limit", "above", "below", "low", "high") if r.get(k) is not None},
                                 "time_out_s": sum(x["duration_s"] for x in runs),
                                 "excursions": [{"start": _iso(x["start"]), "end": _iso(x["end"]),
                                                 "duration_s": x["duration_s"], "peak": x["peak"], "open": x["open"]}
                                                for x in runs], "alarm_ids": [], "acknowledgements": []}
    status, reasons = "OK", []
    for a in alarms:
        key = (str(a.get("sensor_id")), str(a.get("rule")))
        row = rows.get(key)
        if row is None:
            t = a.get("rule_type")
            row = rows[key] = {"sensor_id": key[0], "rule": key[1], "rule_type": t, "severity": a.get("severity"),
                               "kind": "cumulative" if t in ("budget", "stability_budget") else "single"
                               if t in SINGLE else str(t), "allowed_s": a.get("delay_s", a.get("budget_s")),
                               "limit": {k: a[k] for k in ("limit", "above", "below") if a.get(k) is not None},
                               "time_out_s": None, "excursions": [], "alarm_ids": [], "acknowledgements": []}
            if a.get("state") == "raised":
                row["excursions"].append({"start": _iso(a["_started"]), "end": None, "duration_s": a.get("duration_s"),
                                          "peak": a.get("value", a.get("peak")), "open": True})
        if a.get("state") == "raised":
            row["alarm_ids"].append(a.get("alarm_id"))
            row.setdefault("raised", []).append({"alarm_id": a.get("alarm_id"), "at": _iso(a["_t"]),
                                                 "severity": a.get("severity"), "muted": a.get("muted")})
        elif a.get("state") == "cleared" and not row["time_out_s"] and row["excursions"]:
            row["excursions"][-1].update(end=_iso(a["_t"]), open=False, duration_s=a["_t"] - a["_started"])
        elif a.get("state") == "acknowledged":
            row["acknowledgements"].append({"alarm_id": a.get("alarm_id"), "by": a.get("by"), "at": _iso(a["_t"]),
                                            "reason": a.get("reason")})
    for row in rows.values():
        raised = row.get("raised", [])
        counted = [x for x in raised if not x["muted"]]
        if any(x["severity"] == "alarm" for x in counted):
            row["status"] = "ALARM"
            status = "ALARM"
            reasons.append(f"{row['sensor_id']} {row['rule']}: alarm raised at {counted[0]['at']}"
                           + (f", {len(row['excursions'])} excursion(s)" if row["excursions"] else ""))
        elif counted:
            row["status"] = "WARNING"
            status = _worst(status, "REVIEW")
            reasons.append(f"{row['sensor_id']} {row['rule']}: warning raised at {counted[0]['at']}")
        else:
            row["status"] = "MUTED" if raised else "OK"
        row["count"] = len(row["excursions"])
    return sorted(rows.values(), key=lambda r: (r["sensor_id"], r["rule"])), status, reasons


def _charts(points: Mapping[tuple[str, str], series.Points], units: Mapping[tuple[str, str], str],
            sensor_ids: list[str], profiles: Mapping[str, Any], info: Mapping[str, Any],
            table: list[dict[str, Any]], t0: float, t1: float) -> list[dict[str, Any]]:
    quantities = sorted({q for (_, q) in points}, key=lambda q: (q != "temperature", q))
    out = []
    for q in quantities:
        lines: dict[float, str] = {}
        for sid in sensor_ids:
            prof = profiles.get((info.get(sid) or {}).get("profile") or "", {})
            for name, r in prof.get("rules", {}).items():
                if r.get("type") in ("above", "below") and r.get("quantity", "temperature") == q:
                    lines.setdefault(float(r["limit"]), f"{name} {r['limit']:g}")
        shaded = [[parse_rfc3339(x["start"]), parse_rfc3339(x["end"]) if x["end"] else t1, row["sensor_id"]]
                  for row in table if row["status"] in ("ALARM", "WARNING") and row["rule_type"] in LIMIT_TYPES
                  and any(pq == q for (s, pq) in points if s == row["sensor_id"]) for x in row["excursions"]
                  if x["start"]]
        out.append({"quantity": q, "unit": next((units[k] for k in units if k[1] == q), ""), "t0": t0, "t1": t1,
                    "series": {s: series.buckets(p, t0, t1) for (s, pq), p in sorted(points.items()) if pq == q},
                    "limits": [{"value": v, "label": lbl} for v, lbl in sorted(lines.items())], "shaded": shaded})
    return out


def _track(gps: Mapping[str, list[tuple[float, str, float]]], custody: list[dict[str, Any]]) -> dict[str, Any] | None:
    for sid, items in sorted(gps.items()):
        items.sort()
        pts: list[list[float]] = []
        half: dict[str, tuple[float, float]] = {}
        for t, q, v in items:
            other = "longitude" if q == "latitude" else "latitude"
            if other in half and abs(half[other][0] - t) <= 5.0:
                lat, lon = (v, half[other][1]) if q == "latitude" else (half[other][1], v)
                pts.append([t, lat, lon])
                half.clear()
            else:
                half[q] = (t, v)
        if pts:
            step = max(1, len(pts) // 1000)
            kept = pts[::step] + ([pts[-1]] if (len(pts) - 1) % step else [])
            return {"sensor_id": sid, "fixes": len(pts), "first_at": _iso(pts[0][0]), "last_at": _iso(pts[-1][0]),
                    "points": [[round(p[1], 6), round(p[2], 6)] for p in kept],
                    "start": pts[0][1:], "end": pts[-1][1:],
                    "handovers": [c["where"] for c in custody if isinstance(c.get("where"), dict) and "lat" in c["where"]]}
    return None
