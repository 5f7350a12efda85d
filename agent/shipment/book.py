"""The shipment book: every shipment of this gateway, its state, legs, custody and exposure.

Pure, like :class:`agent.rules.engine.RuleEngine`: no I/O, no clock. Time comes only from
the ``elapsed`` arguments (seconds on the agent's monotonic timeline, CLOCK_BOOTTIME: it
never steps, so budgets and durations are right whatever the wall clock does); ``wall``
arguments (epoch seconds) are kept for display only. Each call returns the records to
append, oldest first: plain dicts with ``type`` and ``event``/``details`` or the alarm
fields, and two local keys the runtime turns into times with :func:`stamp`:
``_elapsed`` (when the fact became true, which may be earlier than the call: a budget
that ran out between two ticks) and, for alarms, ``_started_elapsed``.

Lifecycle (one ``shipment_state`` event per transition)::

    created ──(ignore period over)──► in_transit ──(destination leg, geofence)──► delivered
       │                                  │                                         │
       └──────────────── stop (manual, duration, geofence) ──────────────────────► closed
       └──────────────── cancel ─────────────────────────────────────────────────► cancelled

A sensor belongs to at most one active shipment (:meth:`tag`); starting another with a busy
sensor raises :class:`~agent.exc.SensorBusy`. :meth:`snapshot` is the whole state; the
store saves it with the records it produced and ``ShipmentBook(state=...)`` resumes there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from agent.exc import SensorBusy, ShipmentError
from agent.shipment.config import LegSpec, ShipmentSpec
from agent.shipment.exposure import FreezeThaw, StabilityBudget
from agent.shipment.geo import FixTracker, distance_m
from agent.shipment.standards import en12830_check

STATE_VERSION = 1
ACTIVE = ("created", "in_transit", "delivered")
#: closed and cancelled shipments kept for ``shipment list`` (the stream keeps them all)
KEEP_FINISHED = 100


def stamp(records: Iterable[dict[str, Any]], *, wall_now: float, elapsed_now: float,
          ts_of: Callable[[float], float] | None = None) -> list[dict[str, Any]]:
    """Give the book's records their ``ts`` (and an alarm's ``started_at``) from the timeline.

    ``ts = wall_now - (elapsed_now - _elapsed)``: the moment on the wall clock that
    corresponds to when the fact became true. With ``ts_of`` (the agent timeline's
    :meth:`~agent.timeline.Timeline.ts_of`) an instant before a step of the wall clock is
    stamped as the clock read then, not shifted by the step. The local keys are removed.
    """
    def wall(at: float) -> float:
        return ts_of(at) if ts_of is not None and at != elapsed_now else wall_now - (elapsed_now - at)

    out = []
    for r in records:
        rec = dict(r)
        at = rec.pop("_elapsed", elapsed_now)
        rec["ts"] = wall(at)
        started = rec.pop("_started_elapsed", None)
        if started is not None:
            rec["started_at"] = wall(started)
        out.append(rec)
    return out


def _event(name: str, at: float, details: dict[str, Any]) -> dict[str, Any]:
    return {"type": "event", "event": name, "details": details, "_elapsed": at}


class _Shipment:
    """One shipment's live state (the spec is what it was started with)."""

    def __init__(self, spec: ShipmentSpec, started: float, wall: float | None) -> None:
        self.spec = spec
        self.id = spec.id
        self.state = "created"
        self.started = started
        self.wall_started = wall
        self.armed = False
        self.legs: list[dict[str, Any]] = []  # begun legs: name, kind, mode, mute, planned, started
        self.custody: list[dict[str, Any]] = []
        self.holder = spec.custodian
        self.budget = StabilityBudget(spec.stability, spec.sensors) if spec.stability else None
        self.ft = FreezeThaw(spec.freeze_thaw, spec.sensors) if spec.freeze_thaw else None
        self.alarms: dict[str, dict[str, Any]] = {}  # alarm_id -> {"acknowledged", "record"}
        self.stopped: float | None = None
        self.wall_stopped: float | None = None
        self.reason: str | None = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def leg(self) -> dict[str, Any] | None:
        return self.legs[-1] if self.legs else None

    def state_dict(self) -> dict[str, Any]:
        return {"spec": self.spec.model_dump(mode="json"), "state": self.state, "started": self.started,
                "wall_started": self.wall_started, "armed": self.armed, "legs": [dict(x) for x in self.legs],
                "custody": [dict(x) for x in self.custody], "holder": self.holder,
                "budget": self.budget.state() if self.budget else None, "ft": self.ft.state() if self.ft else None,
                "alarms": {k: {"acknowledged": v["acknowledged"], "record": dict(v["record"])}
                           for k, v in self.alarms.items()},
                "stopped": self.stopped, "wall_stopped": self.wall_stopped, "reason": self.reason}

    @classmethod
    def from_state(cls, s: Mapping[str, Any]) -> _Shipment:
        sh = cls(ShipmentSpec.model_validate(s["spec"]), float(s["started"]), s["wall_started"])
        sh.state, sh.armed, sh.holder = s["state"], bool(s["armed"]), s["holder"]
        sh.legs = [dict(x) for x in s["legs"]]
        sh.custody = [dict(x) for x in s["custody"]]
        if sh.budget and s["budget"]:
            sh.budget.load(s["budget"])
        if sh.ft and s["ft"]:
            sh.ft.load(s["ft"])
        sh.alarms = {k: {"acknowledged": bool(v["acknowledged"]), "record": dict(v["record"])}
                     for k, v in s["alarms"].items()}
        sh.stopped, sh.wall_stopped, sh.reason = s["stopped"], s["wall_stopped"], s["reason"]
        return sh

    def shift(self, delta: float) -> None:
        self.started += delta
        if self.stopped is not None:
            self.stopped += delta
        for item in (*self.legs, *self.custody):
            item["elapsed"] += delta
        for entry in self.alarms.values():
            entry["record"]["_started_elapsed"] += delta
        if self.budget:
            self.budget.shift(delta)


class ShipmentBook:
    """Every shipment of this gateway; see the module docstring."""

    def __init__(self, *, gateway_id: str = "", agent_version: str = "",
                 state: Mapping[str, Any] | None = None) -> None:
        self.gateway_id = gateway_id
        self.agent_version = agent_version
        self._shipments: dict[str, _Shipment] = {}
        self._sensors: dict[str, str] = {}  # sensor -> active shipment
        self._fix = FixTracker()
        self._last = 0.0  # the latest elapsed seen, for the snapshot's timeline
        if state:
            self._load(state)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, spec: ShipmentSpec, *, elapsed: float, wall: float | None = None, by: str | None = None,
              sensors: list[dict[str, Any]] | None = None, profiles: Mapping[str, Any] | None = None,
              default_interval_s: float | None = None) -> list[dict[str, Any]]:
        """Start ``spec``: ``shipment_started``, its state, the first planned leg.

        ``sensors`` describes each sensor for the record (label, profile, recording
        interval, calibration certificate and due date: :func:`agent.shipment.info.describe`)
        and ``profiles`` the resolved rules of each profile used, so that the stream alone
        says how the trip was judged: a report made from a receiver's copy needs no config.
        """
        self._seen(elapsed)
        if spec.id in self._shipments:
            raise ShipmentError(f"shipment {spec.id!r} already exists ({self._shipments[spec.id].state}); "
                                "a shipment id is used once", shipment=spec.id)
        for sid in spec.sensors:
            holder = self._sensors.get(sid)
            if holder is not None:
                raise SensorBusy(sid, holder, shipment=spec.id)
        described = {d["id"]: d for d in (sensors or [])}
        info = [{**described.get(sid, {"id": sid}), "profile": spec.profile_of(sid, described.get(sid, {}).get("profile"))}
                for sid in spec.sensors]
        check = en12830_check(spec.planned_duration_s, {d["id"]: d.get("record_interval_s") for d in info},
                              default_interval_s)
        sh = _Shipment(spec, elapsed, wall)
        self._shipments[spec.id] = sh
        for sid in spec.sensors:
            self._sensors[sid] = spec.id
        dump = spec.model_dump(mode="json", exclude={"autostart"})
        details = {"shipment": spec.id, **{k: v for k, v in dump.items() if k != "id"}, "sensors": info,
                   "rule_profiles": dict(profiles or {}), "gateway": self.gateway_id,
                   "agent_version": self.agent_version, "by": by, "en12830": check}
        out = [_event("shipment_started", elapsed, details),
               self._transition(sh, "created", elapsed, "started")]
        if spec.legs:
            out += self._begin_leg(sh, spec.legs[0], elapsed, planned=True, by=by)
        out += self._due(sh, elapsed)
        self._trim()
        return out

    def leg(self, shipment: str, *, elapsed: float, name: str | None = None, kind: str | None = None,
            mode: str | None = None, mute: list[str] | None = None, by: str | None = None) -> list[dict[str, Any]]:
        """Begin a leg: the next planned one (no ``name``), a planned one by name, or a new one."""
        sh = self._active(shipment)
        self._seen(elapsed)
        out = self._due(sh, elapsed)
        if not sh.active:
            raise ShipmentError(f"shipment {shipment!r} stopped ({sh.reason}) before this leg", shipment=shipment)
        begun = {x["name"] for x in sh.legs}
        planned = {leg.name: leg for leg in sh.spec.legs}
        if name is None:
            nxt = next((leg for leg in sh.spec.legs if leg.name not in begun), None)
            if nxt is None:
                raise ShipmentError(f"shipment {shipment!r}: no planned leg left; give a name", shipment=shipment)
            spec, is_planned = nxt, True
        elif name in planned and name not in begun and kind is None and mode is None and mute is None:
            spec, is_planned = planned[name], True
        else:
            if name in begun:
                raise ShipmentError(f"shipment {shipment!r}: leg {name!r} was already begun", shipment=shipment)
            base = planned.get(name)
            spec = LegSpec.model_validate({"name": name, "kind": kind or (base.kind if base else "named"),
                                           "mode": mode or (base.mode if base else None),
                                           "mute": mute if mute is not None else (base.mute if base else [])})
            is_planned = base is not None
        return out + self._begin_leg(sh, spec, elapsed, planned=is_planned, by=by)

    def handover(self, shipment: str, *, from_party: str, to_party: str, signed_by: str, elapsed: float,
                 where: Mapping[str, Any] | None = None, note: str | None = None) -> list[dict[str, Any]]:
        """Custody passes from one party to another: ``custody_transferred``.

        ``where`` is given (a place, or lat/lon), else the last GPS fix, else unknown.
        """
        sh = self._active(shipment)
        self._seen(elapsed)
        out = self._due(sh, elapsed)
        if not sh.active:
            raise ShipmentError(f"shipment {shipment!r} stopped ({sh.reason}) before this handover",
                                shipment=shipment)
        for label, v in (("from", from_party), ("to", to_party), ("signed_by", signed_by)):
            if not v or not v.strip():
                raise ShipmentError(f"handover: {label} is required", shipment=shipment)
        place = dict(where) if where else self._fix.where(elapsed)
        entry = {"from": from_party, "to": to_party, "signed_by": signed_by, "where": place,
                 "where_source": "given" if where else ("gps" if place else None), "note": note,
                 "leg": (sh.leg() or {}).get("name"), "index": len(sh.custody) + 1, "elapsed": elapsed}
        sh.custody.append(entry)
        sh.holder = to_party
        details = {"shipment": shipment, **{k: v for k, v in entry.items() if k != "elapsed"}}
        return [*out, _event("custody_transferred", elapsed, details)]

    def stop(self, shipment: str, *, elapsed: float, reason: str = "manual", by: str | None = None,
             wall: float | None = None) -> list[dict[str, Any]]:
        """Stop recording for the shipment (``shipment_stopped``, state closed); sensors are free again."""
        sh = self._active(shipment)
        self._seen(elapsed)
        out = self._due(sh, elapsed)
        if not sh.active:
            return out  # a stop condition ran first: the shipment is stopped already
        return out + self._stop(sh, elapsed, reason, by=by, wall=wall)

    def cancel(self, shipment: str, *, elapsed: float, by: str | None = None, why: str | None = None,
               wall: float | None = None) -> list[dict[str, Any]]:
        """Call the shipment off: state cancelled, ``shipment_stopped`` with reason ``cancelled``."""
        sh = self._active(shipment)
        self._seen(elapsed)
        out = self._due(sh, elapsed)
        if not sh.active:
            return out
        return out + self._stop(sh, elapsed, "cancelled", by=by, wall=wall, why=why)

    # -- feeding -----------------------------------------------------------------------

    def tag(self, sensor_id: str) -> str | None:
        """The active shipment the sensor's readings belong to, or None."""
        return self._sensors.get(sensor_id)

    def judged(self, sensor_id: str, elapsed: float) -> bool:
        """Whether the rules judge this sensor's samples now: not during its shipment's ignore period."""
        sid = self._sensors.get(sensor_id)
        if sid is None:
            return True
        sh = self._shipments[sid]
        return sh.armed or elapsed >= sh.started + sh.spec.ignore_s

    def muted(self, sensor_id: str, rule: str) -> str | None:
        """The leg whose settings mute ``rule`` for this sensor now, or None."""
        sid = self._sensors.get(sensor_id)
        leg = self._shipments[sid].leg() if sid else None
        return leg["name"] if leg and rule in leg.get("mute", ()) else None

    def observe(self, sensor_id: str, quantity: str, value: float, elapsed: float) -> list[dict[str, Any]]:
        """One sample (every one, recorded or not): budget, freeze–thaw, GPS arrival."""
        self._seen(elapsed)
        out: list[dict[str, Any]] = []
        for sh in list(self._shipments.values()):
            if sh.active:
                out += self._due(sh, elapsed)
        fix = self._fix.observe(sensor_id, quantity, value, elapsed)
        if fix is not None:
            out += self._arrivals(fix, elapsed)
        sid = self._sensors.get(sensor_id)
        if sid is None:
            return out
        sh = self._shipments[sid]
        if sh.budget is not None:
            ran_out = sh.budget.observe(sensor_id, quantity, value, elapsed)
            if ran_out is not None:
                out.append(self._budget_alarm(sh, ran_out))
        if sh.ft is not None:
            count = sh.ft.observe(sensor_id, quantity, value, counting=sh.armed)
            if count is not None:
                out.append(_event("freeze_thaw_cycle", elapsed, {"shipment": sh.id, "sensor_id": sensor_id,
                                                                 "cycles": count, "value": value}))
                if sh.ft.max_cycles is not None and count == sh.ft.max_cycles + 1:
                    out.append(self._alarm(sh, "freeze_thaw", sensor_id, elapsed, elapsed, {
                        "cycles": count, "max_cycles": sh.ft.max_cycles, "freeze_at": sh.ft.freeze_at,
                        "thaw_at": sh.ft.thaw_at, "value": value}))
        return out

    def tick(self, elapsed: float) -> list[dict[str, Any]]:
        """Let time pass: ignore periods end, budgets spend and run out, durations stop shipments."""
        self._seen(elapsed)
        out: list[dict[str, Any]] = []
        for sh in list(self._shipments.values()):
            if sh.active:
                out += self._due(sh, elapsed)
        return out

    def acknowledge(self, alarm_id: str, *, by: str, reason: str, elapsed: float) -> dict[str, Any]:
        """Acknowledge one of the book's own alarms. KeyError if it is not one."""
        for sh in self._shipments.values():
            entry = sh.alarms.get(alarm_id)
            if entry is not None:
                if entry["acknowledged"]:
                    raise KeyError(alarm_id)
                entry["acknowledged"] = True
                rec = {**entry["record"], "state": "acknowledged", "by": by, "reason": reason, "_elapsed": elapsed}
                return rec
        raise KeyError(alarm_id)

    @property
    def spending(self) -> bool:
        """Whether a stability budget is being spent now (its state is then saved with
        every commit, so a crash loses none of it)."""
        return any(sh.active and sh.budget is not None and sh.budget.last is not None and sh.budget.out_now
                   for sh in self._shipments.values())

    def knows_alarm(self, alarm_id: str) -> bool:
        return any(alarm_id in sh.alarms for sh in self._shipments.values())

    # -- questions ---------------------------------------------------------------------

    def status(self, elapsed: float) -> list[dict[str, Any]]:
        """The active shipments, live (what ``status`` and ``shipment status`` show)."""
        return [self._describe(sh, elapsed) for sh in self._shipments.values() if sh.active]

    def get(self, shipment: str, elapsed: float) -> dict[str, Any]:
        sh = self._shipments.get(shipment)
        if sh is None:
            raise ShipmentError(f"no shipment {shipment!r}", shipment=shipment)
        return self._describe(sh, elapsed)

    def shipments(self) -> list[dict[str, Any]]:
        """Every shipment the book holds, newest first: id, state, sensors, times, stop reason."""
        items = sorted(self._shipments.values(), key=lambda s: s.started, reverse=True)
        return [{"shipment": s.id, "state": s.state, "sensors": list(s.spec.sensors), "wall_started": s.wall_started,
                 "wall_stopped": s.wall_stopped, "reason": s.reason, "legs": len(s.legs)} for s in items]

    def _describe(self, sh: _Shipment, elapsed: float) -> dict[str, Any]:
        leg = sh.leg()
        budget = None
        if sh.budget is not None:
            b = sh.budget
            budget = b.figures()
            if b.last is not None and b.out_now and elapsed > b.last:  # live, without changing the state
                live = b.spent_s + (elapsed - b.last)
                budget["spent_s"] = round(live, 3)
                budget["remaining_s"] = round(max(0.0, b.budget_s - b.upstream_s - live), 3)
        end = sh.stopped if sh.stopped is not None else elapsed
        planned = sh.spec.planned_duration_s
        return {
            "shipment": sh.id, "state": sh.state, "sensors": list(sh.spec.sensors), "wall_started": sh.wall_started,
            "wall_stopped": sh.wall_stopped, "reason": sh.reason, "elapsed_s": round(end - sh.started, 3),
            "ignore_remaining_s": 0.0 if sh.armed else round(max(0.0, sh.started + sh.spec.ignore_s - elapsed), 3),
            "leg": None if leg is None else {"name": leg["name"], "kind": leg["kind"], "mode": leg["mode"],
                                             "index": leg["index"], "since_s": round(elapsed - leg["elapsed"], 3)},
            "legs_planned": [x.name for x in sh.spec.legs], "custodian": sh.holder, "handovers": len(sh.custody),
            "stability": budget, "freeze_thaw": sh.ft.figures() if sh.ft else None,
            "planned_remaining_s": None if planned is None else round(planned - (end - sh.started), 3),
            "stop": sh.spec.stop.model_dump(mode="json"), "last_fix": self._fix.where(elapsed),
            "alarms": [k for k, v in sh.alarms.items() if not v["acknowledged"]],
        }

    # -- internals ---------------------------------------------------------------------

    def _active(self, shipment: str) -> _Shipment:
        sh = self._shipments.get(shipment)
        if sh is None:
            active = ", ".join(s.id for s in self._shipments.values() if s.active) or "none"
            raise ShipmentError(f"no shipment {shipment!r} (active: {active})", shipment=shipment)
        if not sh.active:
            raise ShipmentError(f"shipment {shipment!r} is {sh.state}", shipment=shipment)
        return sh

    def _seen(self, elapsed: float) -> None:
        if elapsed > self._last:
            self._last = elapsed

    def _transition(self, sh: _Shipment, to: str, at: float, cause: str, **extra: Any) -> dict[str, Any]:
        before = None if to == "created" else sh.state
        sh.state = to
        return _event("shipment_state", at, {"shipment": sh.id, "from": before, "to": to, "cause": cause, **extra})

    def _begin_leg(self, sh: _Shipment, spec: LegSpec, at: float, *, planned: bool,
                   by: str | None) -> list[dict[str, Any]]:
        prev = sh.leg()
        entry = {"name": spec.name, "kind": spec.kind, "mode": spec.mode, "mute": list(spec.mute),
                 "planned": planned, "index": len(sh.legs) + 1, "elapsed": at}
        sh.legs.append(entry)
        details = {"shipment": sh.id, "leg": spec.name, "kind": spec.kind, "mode": spec.mode,
                   "alarms": {"mute": list(spec.mute)}, "index": entry["index"], "planned": planned,
                   "previous": prev["name"] if prev else None, "by": by}
        out = [_event("shipment_leg", at, details)]
        if spec.kind == "destination" and sh.state in ("created", "in_transit"):
            out.append(self._transition(sh, "delivered", at, "destination leg", leg=spec.name))
        return out

    def _due(self, sh: _Shipment, elapsed: float) -> list[dict[str, Any]]:
        """Everything time makes true up to ``elapsed``, at the moment it became true."""
        out: list[dict[str, Any]] = []
        arm_at = sh.started + sh.spec.ignore_s
        if not sh.armed and arm_at <= elapsed:
            sh.armed = True
            if sh.state == "created":
                out.append(self._transition(sh, "in_transit", arm_at, "ignore period over"
                                            if sh.spec.ignore_s else "started"))
            if sh.budget is not None and sh.budget.arm(arm_at) is not None:
                out.append(self._budget_alarm(sh, arm_at))
        duration = sh.spec.stop.duration_s
        stop_at = sh.started + duration if duration is not None else None
        until = elapsed if stop_at is None or stop_at > elapsed else stop_at
        if sh.budget is not None:
            ran_out = sh.budget.advance(until)
            if ran_out is not None:
                out.append(self._budget_alarm(sh, ran_out))
        if stop_at is not None and stop_at <= elapsed:
            out += self._stop(sh, stop_at, "duration")
        return out

    def _arrivals(self, fix: dict[str, Any], elapsed: float) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for sh in list(self._shipments.values()):
            fence = sh.spec.stop.geofence
            if not sh.active or fence is None or not sh.armed:
                continue
            d = distance_m(fix["lat"], fix["lon"], fence.lat, fence.lon)
            if d <= fence.radius_m:
                where = {**(self._fix.where(elapsed) or {}), "distance_m": round(d, 1), "geofence": fence.name}
                if sh.state != "delivered":
                    out.append(self._transition(sh, "delivered", elapsed, "geofence", where=where))
                out += self._stop(sh, elapsed, "geofence", where=where)
        return out

    def _stop(self, sh: _Shipment, at: float, reason: str, *, by: str | None = None, wall: float | None = None,
              why: str | None = None, where: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        if sh.budget is not None:
            sh.budget.advance(at)  # spent up to the stop (a run-out before it was raised by _due)
        details: dict[str, Any] = {
            "shipment": sh.id, "reason": reason, "by": by, "why": why, "state_before": sh.state,
            "duration_s": round(at - sh.started, 3), "legs": len(sh.legs), "handovers": len(sh.custody),
            "custodian": sh.holder, "where": dict(where) if where else self._fix.where(at),
            "stability": sh.budget.figures() if sh.budget else None,
            "freeze_thaw": sh.ft.figures() if sh.ft else None,
            "alarms_unacknowledged": [k for k, v in sh.alarms.items() if not v["acknowledged"]],
        }
        sh.stopped, sh.wall_stopped, sh.reason = at, wall, reason
        for sid in sh.spec.sensors:
            if self._sensors.get(sid) == sh.id:
                del self._sensors[sid]
        final = "cancelled" if reason == "cancelled" else "closed"
        # the state change first: shipment_stopped is the last record of the shipment's range
        return [self._transition(sh, final, at, reason), _event("shipment_stopped", at, details)]

    def _budget_alarm(self, sh: _Shipment, at: float) -> dict[str, Any]:
        b = sh.budget
        assert b is not None
        out_sensors = sorted(s for s, o in b.out.items() if o) or sorted(b.sensors)
        started = b.out_since if b.out_since is not None else at
        return self._alarm(sh, "stability_budget", out_sensors[0], at, started, {
            "budget_s": b.budget_s, "spent_upstream_s": round(b.upstream_s, 3),
            "spent_s": round(b.budget_s - b.upstream_s, 3) if b.budget_s > b.upstream_s else 0.0,
            "remaining_s": 0.0, "above": b.figures()["above"], "below": b.figures()["below"],
            "sensors_out": out_sensors, "duration_s": round(at - started, 3)})

    def _alarm(self, sh: _Shipment, rule: str, sensor_id: str, at: float, started: float,
               figures: dict[str, Any]) -> dict[str, Any]:
        n = 1 + sum(1 for k in sh.alarms if k.startswith(f"{sh.id}:{rule}:"))
        alarm_id = f"{sh.id}:{rule}:{n}"
        rec = {"type": "alarm", "alarm_id": alarm_id, "rule": rule, "sensor_id": sensor_id, "state": "raised",
               "severity": "alarm", "rule_type": rule, "shipment": sh.id, "latching": True, **figures}
        sh.alarms[alarm_id] = {"acknowledged": False, "record": {**rec, "_started_elapsed": started}}
        return {**rec, "_elapsed": at, "_started_elapsed": started}

    def _trim(self) -> None:
        done = sorted((s.started, k) for k, s in self._shipments.items() if not s.active)
        for _, k in done[: max(0, len(done) - KEEP_FINISHED)]:
            del self._shipments[k]

    # -- persistence -------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The complete state, JSON-able; built fresh on each call."""
        return {"version": STATE_VERSION, "elapsed": self._last, "fix": self._fix.state(),
                "shipments": {k: s.state_dict() for k, s in self._shipments.items()}}

    def rebase(self, elapsed_now: float, downtime_s: float = 0.0) -> None:
        """Move the book onto a new monotonic timeline (after a reboot, CLOCK_BOOTTIME restarts).

        The last moment the old timeline saw becomes ``elapsed_now - downtime_s``: time the
        agent was down counts as passed with every state held (a budget that was being
        spent goes on being spent), as the rule engine holds its last value across a gap.
        Within one boot the timeline is continuous: do not call this.

        Fed the agent timeline (:class:`agent.timeline.Timeline`, as the rules are), the
        book needs no rebase at all: that timeline already goes on across restarts and
        reboots, with the downtime the clock can vouch for, so the saved state is valid as
        it is. This is for a book fed raw CLOCK_BOOTTIME; the two agree
        (``tests/agent/test_timeline.py``).
        """
        delta = (elapsed_now - max(0.0, downtime_s)) - self._last
        for sh in self._shipments.values():
            sh.shift(delta)
        if self._fix.fix is not None:
            self._fix.fix["elapsed"] += delta
        self._last += delta

    def _load(self, state: Mapping[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"shipment state version {state.get('version')!r}, expected {STATE_VERSION}")
        self._last = float(state.get("elapsed", 0.0))
        self._fix.load(state.get("fix", {}))
        for k, s in state.get("shipments", {}).items():
            sh = _Shipment.from_state(s)
            self._shipments[k] = sh
            if sh.active:
                for sid in sh.spec.sensors:
                    self._sensors[sid] = k
