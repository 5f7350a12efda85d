"""The rules engine: every sample judged as it arrives, incrementally, with state to resume.

The daemon feeds it every sample (not only the recorded ones) with :meth:`RuleEngine.observe`
and calls :meth:`RuleEngine.tick` about once a second so that time-driven rules (data
missing, a delay running out with no new sample) fire without waiting for data. Time
comes only from the samples and the ``now`` arguments, never from the system clock: the
same samples give the same alarms, at the same ``ts``, in replay, in tests and after a
restart. :meth:`RuleEngine.snapshot` is the complete state (timers, budgets, MKT sums,
trend fits, alarm lifecycle, id counters); the store saves it atomically with the records
it produced, and ``RuleEngine(..., state=snapshot)`` resumes exactly there.

**Two times.** Every duration — delays, budgets, rates, trends, MKT weights, data-missing
timeouts — is measured on ``Sample.elapsed``, seconds on the agent timeline
(:mod:`agent.timeline`: the boot-time clock, continued across restarts), which never
steps; so is ``tick(now)``. The wall time ``Sample.ts`` is only displayed and recorded:
an alarm's ``ts`` and ``started_at`` are the wall times of the elapsed instants at which
the condition became true and began, read through each sensor's :class:`WallMap` — the
clock that stamped that sensor's samples (the gateway's, or the device's own), as it
read at its last sample before the instant. A sample without ``elapsed`` (replay of a
CSV, which has only wall times) uses its ``ts`` as its elapsed time: replay judges on the
wall clock, live on the timeline, and without clock steps they agree. A wall-clock step
therefore neither freezes a delay (a backward step used to clamp every later sample to
the last time before it) nor fires one (a forward step used to make every sensor
``missing`` at once).

Evaluation is O(rules of the sample's quantity) per sample: a dict lookup, then each
rule's own constant-time update (:mod:`agent.rules.evaluators`, :mod:`agent.rules.trend`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.rules import config as c
from agent.rules.alarms import AlarmBook
from agent.rules.evaluators import Above, Below, Budget, Evaluator, Missing, Out, Range, Shock, Tilt
from agent.rules.mkt import MktAccumulator
from agent.rules.trend import Mkt, Rate, TimeToBreach
from agent.timeline import STEP_S, WallMap

log = logging.getLogger("coldgate.rules")

#: 2: times in the state are elapsed times (agent timeline), sensors keep a wall map.
#: 1 (wall-clock times) is migrated on load: its times become elapsed times on a timeline
#: that starts at the wall time, as :meth:`agent.timeline.Timeline.start` makes it.
STATE_VERSION = 2
SEVERITY_RANK = {"warning": 0, "alarm": 1}


@dataclass(frozen=True, slots=True)
class Sample:
    """One value as the rules see it.

    ``ts`` is its wall time (UTC epoch seconds, displayed and recorded); ``elapsed`` its
    time on the agent timeline, on which every duration is measured (None: ``ts``, as in
    replay).
    """

    sensor_id: str
    quantity: str
    value: float
    unit: str
    ts: float
    elapsed: float | None = None


def build_evaluator(name: str, rule: Any) -> Evaluator:
    """The state machine for one configured rule."""
    t = rule.type
    if t == "above":
        return Above(name, rule, rule.quantity)
    if t == "below":
        return Below(name, rule, rule.quantity)
    if t == "humidity":
        return Range(name, rule, "humidity")
    if t == "light":
        ev: Evaluator = Above(name, rule, "illuminance")
        ev.limit_kind = False  # an opened box or a weak battery is no reason to record every sample
        return ev
    if t == "battery":
        ev = Below(name, rule, "battery")
        ev.limit_kind = False
        return ev
    if t == "tilt":
        return Tilt(name, rule)
    if t == "shock":
        return Shock(name, rule)
    if t == "budget":
        return Budget(name, rule)
    if t == "mkt":
        return Mkt(name, rule)
    if t == "rate":
        return Rate(name, rule)
    if t == "time_to_breach":
        return TimeToBreach(name, rule)
    if t == "missing":
        return Missing(name, rule)
    raise ValueError(f"unknown rule type {t!r}")  # pragma: no cover - the schema forbids it


class _Sensor:
    """One sensor's evaluators, indexed by the quantity they watch."""

    __slots__ = ("id", "profile_name", "profile", "rules", "by_quantity", "any", "timed", "limits", "mkt",
                 "last_elapsed", "walls")

    def __init__(self, sensor_id: str, profile_name: str, profile: c.Profile) -> None:
        self.id = sensor_id
        self.profile_name = profile_name
        self.profile = profile
        self.rules: dict[str, Evaluator] = {n: build_evaluator(n, r) for n, r in profile.active_rules().items()}
        self.by_quantity: dict[str, list[Evaluator]] = {}
        self.any: list[Evaluator] = []
        for ev in self.rules.values():
            if ev.any_quantity:
                self.any.append(ev)
            for q in ev.quantities:
                self.by_quantity.setdefault(q, []).append(ev)
        self.timed = [ev for ev in self.rules.values() if ev.timed]
        self.limits = [ev for ev in self.rules.values() if ev.limit_kind]
        self.mkt = MktAccumulator(max_gap_s=profile.mkt_max_gap_s)  # the reported trip MKT
        self.last_elapsed = -math.inf
        #: elapsed → wall as this sensor's samples were stamped (for alarm times)
        self.walls = WallMap()


class RuleEngine:
    """Judges samples against each sensor's profile; see the module docstring."""

    def __init__(self, rules: c.RulesConfig, assignments: Mapping[str, str], *,
                 state: Mapping[str, Any] | None = None) -> None:
        self.config = rules
        self._sensors: dict[str, _Sensor] = {}
        for sensor_id, profile_name in assignments.items():
            try:
                profile = rules.profile(profile_name)
            except KeyError:
                raise KeyError(f"sensor {sensor_id!r}: unknown rule profile {profile_name!r}") from None
            self._sensors[sensor_id] = _Sensor(sensor_id, profile_name, profile)
        self._book = AlarmBook()
        if state:
            self._load(state)

    # -- feeding ---------------------------------------------------------------------

    def observe(self, sample: Sample) -> list[dict[str, Any]]:
        """Judge one sample; returns the alarm changes it caused, oldest first."""
        s = self._sensors.get(sample.sensor_id)
        value = sample.value
        if s is None or not math.isfinite(value):
            return self._book.take_pending() if self._book.pending else []
        t = sample.elapsed
        if t is None:
            t = sample.ts
        exact: tuple[float, float] | None = None
        if t < s.last_elapsed:
            t = s.last_elapsed  # a late sample counts from the sensor's present, time never runs back
        else:
            s.last_elapsed = t
            offsets = s.walls.offsets
            offset = sample.ts - t
            if offsets and -STEP_S <= offset - offsets[-1] <= STEP_S:
                offsets[-1] = offset  # the hot path of WallMap.note: no step (t is the newest time)
            else:
                s.walls.note(t, sample.ts)
            exact = (t, sample.ts)
        q = sample.quantity
        out: Out = []
        evs = s.by_quantity.get(q)
        if evs:
            for ev in evs:
                ev.observe(q, value, t, out)
        for ev in s.any:
            ev.observe(q, value, t, out)
        if q == "temperature":
            s.mkt.add(t, value)
        if out or self._book.pending:
            return self._records(s, out, exact)
        return []

    def tick(self, now: float, wall: float | None = None) -> list[dict[str, Any]]:
        """Let elapsed time pass to ``now``: delays run out, budgets spend, silent sensors go
        missing. ``wall`` (the wall time now; default ``now``, as in replay) stamps the
        alarms of sensors that never sent a sample, which have no clock of their own."""
        out: Out = []
        changes: list[dict[str, Any]] = []
        here = (now, now if wall is None else wall)
        for s in self._sensors.values():
            for ev in s.timed:
                if isinstance(ev, Missing) and ev.last_seen is None:
                    ev.start(now)  # never heard from: timed from the first tick
                ev.advance(now, out)
            if out:
                changes += self._records(s, out, None if s.walls else here)
                out = []
        return self._book.take_pending() + changes

    @staticmethod
    def _wall(s: _Sensor, t: float, exact: tuple[float, float] | None) -> float:
        """The wall time of elapsed instant ``t`` of sensor ``s``; ``exact`` is a pair known to
        belong together (the sample being judged, or the tick of a sensor never heard from)."""
        if exact is not None and (t == exact[0] or not s.walls):
            return exact[1] - (exact[0] - t)
        return s.walls.ts_of(t)

    def _records(self, s: _Sensor, out: Out, exact: tuple[float, float] | None) -> list[dict[str, Any]]:
        records = self._book.take_pending()
        out.sort(key=lambda tr: tr[2])  # transitions of several rules, in (elapsed) time order
        for ev, kind, at, started, figures in out:
            ts = self._wall(s, at, exact)
            if kind == "raise":
                meta = {"severity": ev.rule.severity, "rule_type": ev.rule.type, "profile": s.profile_name,
                        "latching": ev.rule.latching}
                rec = self._book.raised(s.id, ev.name, meta, ts, self._wall(s, started, exact), figures,
                                        at=at, started=started)
            else:
                rec = self._book.cleared(s.id, ev.name, ts, figures, at=at)
            if rec is not None:
                records.append(rec)
        return records

    def acknowledge(self, alarm_id: str, by: str, reason: str, now: float) -> dict[str, Any]:
        """Acknowledge an active alarm; returns the ``acknowledged`` record. KeyError if unknown."""
        if alarm_id not in self._book.alarms:
            raise KeyError(alarm_id)
        return self._book.acknowledge(alarm_id, by, reason, now)

    # -- questions -------------------------------------------------------------------

    def out_of_range(self, sensor_id: str) -> bool:
        """True while any limit rule of the sensor is in an excursion (record every sample)."""
        s = self._sensors.get(sensor_id)
        return s is not None and any(ev.in_excursion for ev in s.limits)

    def active(self) -> list[dict[str, Any]]:
        """Alarms not yet both cleared and acknowledged, oldest first."""
        return self._book.active()

    def mkt(self, sensor_id: str) -> float | None:
        """The sensor's trip MKT so far (Cel), or None."""
        s = self._sensors.get(sensor_id)
        return None if s is None else s.mkt.mkt()

    def mkt_info(self, sensor_id: str, end: float | None = None) -> dict[str, Any] | None:
        """Trip MKT with its span and gaps; ``end`` (elapsed) closes the last reading (replay)."""
        s = self._sensors.get(sensor_id)
        if s is None:
            return None
        acc = s.mkt
        if end is not None:
            acc = MktAccumulator(max_gap_s=acc.max_gap_s)
            acc.load(s.mkt.state())
            acc.close(end)
        m = acc.mkt()
        return {"mkt": None if m is None else round(m, 4), "span_s": acc.span_s, "gaps": acc.gaps,
                "gap_s": acc.gap_s}

    def sensors(self) -> dict[str, str]:
        return {sid: s.profile_name for sid, s in self._sensors.items()}

    def wants_action(self, record: Mapping[str, Any]) -> bool:
        """Whether ``[rules.action]`` should run for this alarm record."""
        act = self.config.action
        if act.command is None or record.get("state") not in act.on:
            return False
        if SEVERITY_RANK[record["severity"]] < SEVERITY_RANK[act.min_severity]:
            return False
        s = self._sensors.get(record["sensor_id"])
        ev = s.rules.get(record["rule"]) if s else None
        return ev is None or bool(ev.rule.action)

    # -- persistence -----------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The complete state, JSON-able (finite floats, str, int, bool, None, lists, dicts)."""
        sensors = {}
        for sid, s in self._sensors.items():
            sensors[sid] = {
                "profile": s.profile_name,
                "last_elapsed": None if s.last_elapsed == -math.inf else s.last_elapsed,
                "walls": s.walls.state(),
                "mkt": s.mkt.state(),
                "rules": {n: {"type": ev.rule.type, **ev.state()} for n, ev in s.rules.items()},
            }
        # built fresh on each call (the book copies its own): the caller may keep it while we go on
        return {"version": STATE_VERSION, "sensors": sensors, "book": self._book.state()}

    def _load(self, state: Mapping[str, Any]) -> None:
        """Resume from a snapshot; ValueError (with what) when it cannot be used.

        Version 1 (0.1: wall-clock times) is migrated: its times are kept as they are, as
        elapsed times on a timeline that starts at the wall time (what a store without a
        saved timeline gets, :meth:`agent.timeline.Timeline.resume`), so an excursion under
        way at the upgrade goes on being timed.
        """
        version = state.get("version")
        if version not in (1, STATE_VERSION):
            raise ValueError(f"rules state version {version!r}, expected {STATE_VERSION} (or 1, migrated)")
        try:
            self._load_sensors(state, version)
            self._book.load(state.get("book", {}))
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise ValueError(f"rules state unreadable: {type(exc).__name__}: {exc}") from None
        if version == 1:
            log.warning("rules state of version 1 (wall-clock times) migrated to version %d: its times go on as "
                        "elapsed times from the wall time of this start", STATE_VERSION)

    def _load_sensors(self, state: Mapping[str, Any], version: int) -> None:
        for sid, saved in state.get("sensors", {}).items():
            s = self._sensors.get(sid)
            if s is None:
                continue  # sensor no longer assigned
            last = saved.get("last_elapsed" if version > 1 else "last_ts")
            if last is not None:
                s.last_elapsed = float(last)
            # version 1: elapsed was the wall time, so the map is the identity
            s.walls = WallMap(saved.get("walls") if version > 1 else ([[last, 0.0]] if last is not None else []))
            s.mkt.load(saved["mkt"])
            for name, rs in saved.get("rules", {}).items():
                ev = s.rules.get(name)
                # a rule keeps its state while its type is unchanged (new limits apply from now)
                if ev is not None and rs.get("type") == ev.rule.type:
                    ev.load(rs)
