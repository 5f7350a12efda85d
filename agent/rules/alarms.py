"""The alarm lifecycle: raised → cleared → acknowledged, latching or auto-clearing.

Evaluators say when a rule's condition starts and ends; this book turns that into alarm
records (docs/protocol.md ``alarm`` fields, less the store's ``stream``/``seq``/hashes/``type``)
and remembers every alarm until it is both cleared and acknowledged:

- **auto-clear** (default): the end of the condition emits ``cleared`` at once; the alarm
  stays listed (``active``) until someone acknowledges it.
- **latching**: the end of the condition is noted (``ended_at``) but the alarm stays
  ``raised`` until acknowledged; a recurrence before that continues the same alarm.
  Acknowledging it then emits ``acknowledged`` and, on the next engine call, ``cleared``.

An ``alarm_id`` is ``sensor:rule:n`` with ``n`` counted per sensor and rule and kept in
the snapshot, so ids stay unique across restarts and an alarm is never raised twice.

Each alarm keeps two clocks: the wall times it shows (``started_at``, ``raised_at``,
``ended_at``, a record's ``ts``) and the elapsed times it measures with
(``started_elapsed``, ``ended_elapsed``, on the agent timeline): a ``duration_s`` is a
difference of elapsed times, so a step of the wall clock during an alarm does not change
it. Alarms are listed, and the oldest cleared ones trimmed, in the order they were
raised, never by wall time.
"""

from __future__ import annotations

import math
from typing import Any

#: Cleared alarms nobody acknowledged are listed until then, but not without end: past this
#: many the oldest are dropped from the list (the stream keeps their records).
MAX_UNACKED = 200
#: What an alarm instance keeps for itself (not shown by :meth:`AlarmBook.active`).
_INTERNAL = ("figures", "started_elapsed", "ended_elapsed")


def _clean(figures: dict[str, Any]) -> dict[str, Any]:
    """JSON-able figures: non-finite floats become None, floats are rounded to µ-units."""
    out: dict[str, Any] = {}
    for k, v in figures.items():
        if isinstance(v, float):
            v = round(v, 6) if math.isfinite(v) else None
        out[k] = v
    return out


class AlarmBook:
    """Alarm instances by id, the open one per (sensor, rule), and records still to emit."""

    def __init__(self) -> None:
        self.alarms: dict[str, dict[str, Any]] = {}  # not yet (cleared and acknowledged)
        self.open: dict[str, str] = {}  # "sensor\x00rule" -> alarm_id of the uncleared alarm
        self.counters: dict[str, int] = {}
        self.pending: list[dict[str, Any]] = []

    def raised(self, sensor_id: str, rule: str, meta: dict[str, Any], ts: float, started_at: float,
               figures: dict[str, Any], *, at: float | None = None, started: float | None = None
               ) -> dict[str, Any] | None:
        """The rule's condition held: a ``raised`` record, or None when its alarm is still
        open (latched). ``ts``/``started_at`` are wall times, ``at``/``started`` the same
        instants on the timeline (default: the wall times, as in replay)."""
        key = f"{sensor_id}\x00{rule}"
        current = self.open.get(key)
        if current is not None:  # latched and recurring: the same alarm goes on
            self.alarms[current]["ended_at"] = None
            self.alarms[current]["ended_elapsed"] = None
            return None
        n = self.counters.get(key, 0) + 1
        self.counters[key] = n
        alarm_id = f"{sensor_id}:{rule}:{n}"
        inst = {"alarm_id": alarm_id, "rule": rule, "sensor_id": sensor_id, "state": "raised",
                "severity": meta["severity"], "rule_type": meta["rule_type"], "profile": meta["profile"],
                "latching": meta["latching"], "started_at": started_at, "raised_at": ts, "ended_at": None,
                "acknowledged": False, "cleared": False, "figures": _clean(figures),
                "started_elapsed": started_at if started is None else started, "ended_elapsed": None}
        self.alarms[alarm_id] = inst
        self.open[key] = alarm_id
        return self._record(inst, "raised", ts)

    def cleared(self, sensor_id: str, rule: str, ts: float, figures: dict[str, Any], *,
                at: float | None = None) -> dict[str, Any] | None:
        """The rule's condition ended at ``ts`` (wall) / ``at`` (timeline; default ``ts``)."""
        key = f"{sensor_id}\x00{rule}"
        alarm_id = self.open.get(key)
        if alarm_id is None:
            return None
        inst = self.alarms[alarm_id]
        inst["figures"] = _clean(figures)
        at = ts if at is None else at
        if inst["latching"] and not inst["acknowledged"]:
            inst["ended_at"] = ts
            inst["ended_elapsed"] = at
            return None
        return self._clear(key, inst, ts, at)

    def _clear(self, key: str, inst: dict[str, Any], ts: float, at: float | None = None) -> dict[str, Any]:
        del self.open[key]
        inst["cleared"] = True
        if inst["ended_at"] is None:
            inst["ended_at"], inst["ended_elapsed"] = ts, ts if at is None else at
        inst["figures"]["duration_s"] = round(inst["ended_elapsed"] - inst["started_elapsed"], 6)
        if inst["acknowledged"]:
            del self.alarms[inst["alarm_id"]]
        else:
            self._bound()
        return self._record(inst, "cleared", ts)

    def _bound(self) -> None:
        """Keep at most MAX_UNACKED cleared, unacknowledged alarms: the first raised go
        (their records stay)."""
        if len(self.alarms) <= MAX_UNACKED:
            return
        done = [k for k, i in self.alarms.items() if i["cleared"]]  # in the order raised
        for k in done[: len(self.alarms) - MAX_UNACKED]:
            del self.alarms[k]

    def acknowledge(self, alarm_id: str, by: str, reason: str, now: float) -> dict[str, Any]:
        inst = self.alarms[alarm_id]  # KeyError: unknown, or already cleared and acknowledged
        inst["acknowledged"] = True
        inst.update(ack_by=by, ack_reason=reason, ack_at=now)
        rec = self._record(inst, "acknowledged", now)
        rec.update(by=by, reason=reason)
        key = f"{inst['sensor_id']}\x00{inst['rule']}"
        if inst["cleared"]:
            del self.alarms[alarm_id]
        elif inst["latching"] and inst["ended_at"] is not None:
            self.pending.append(self._clear(key, inst, now))  # the latch is released
        return rec

    def _record(self, inst: dict[str, Any], state: str, ts: float) -> dict[str, Any]:
        inst["state"] = state
        return {"alarm_id": inst["alarm_id"], "rule": inst["rule"], "sensor_id": inst["sensor_id"],
                "state": state, "severity": inst["severity"], "ts": ts, "started_at": inst["started_at"],
                "rule_type": inst["rule_type"], "profile": inst["profile"], **inst["figures"]}

    def take_pending(self) -> list[dict[str, Any]]:
        out, self.pending = self.pending, []
        return out

    def active(self) -> list[dict[str, Any]]:
        """Alarms not yet both cleared and acknowledged, in the order they were raised."""
        return [{**{k: v for k, v in inst.items() if k not in _INTERNAL}, **inst["figures"]}
                for inst in self.alarms.values()]

    def state(self) -> dict[str, Any]:
        return {"alarms": {k: {**v, "figures": dict(v["figures"])} for k, v in self.alarms.items()},
                "open": dict(self.open), "counters": dict(self.counters), "pending": [dict(r) for r in self.pending]}

    def load(self, s: dict[str, Any]) -> None:
        # a state of version 1 has wall times only: they were its elapsed times (see the engine)
        self.alarms = {k: {"started_elapsed": v["started_at"], "ended_elapsed": v["ended_at"],
                           **v, "figures": dict(v["figures"])} for k, v in s.get("alarms", {}).items()}
        self.open = dict(s.get("open", {}))
        self.counters = {k: int(v) for k, v in s.get("counters", {}).items()}
        self.pending = [dict(r) for r in s.get("pending", [])]
