"""Replay protection for encrypted BLE frames, and what of it outlives a restart.

An encrypted BTHome frame carries a 32-bit counter under its MIC: only the key holder
can make a frame with a given counter, but anyone can record one and send it again
later. The counter must therefore go up. It does not always: a device whose battery is
swapped starts again from 0, and a gateway that refused every lower counter would lose
that sensor until it counted past its old value (the field report: 5000, then 1, 2, 3 …
all refused for hours). The rule, after bthome-ble (Home Assistant's BTHome parser, which
accepts a lower counter below 100 as a restart), with the restart window widened by the
time the device was unheard::

    plausible(unheard_s) = restart_below + max_rate_hz × unheard_s

    counter >  last      accept (frames may be missed; the MIC proves the key holder made it)
                         except just after a restart: a jump into the counters the device
                         used before it (≤ the counter before the restart) further than
                         plausible() is refused: that is a recorded pre-restart frame
    counter == last      the device repeating its frame (same bytes): a duplicate;
                         other bytes: refused
    counter <  last      a restart when counter ≤ plausible(): the device cannot have
                         sent more frames than that since it was last heard; accepted and
                         recorded as ``ble_counter_reset`` with the old and new counter.
                         Otherwise refused and recorded (``ble_counter_refused``).

``unheard_s`` is measured on the monotonic clock since the frame last accepted; after a
gateway restart the driver cannot know it exactly and takes the larger of the time since
it started and the wall-clock time since the committed state's last acceptance (a wrong
wall clock can only widen or narrow the window, never reorder anything). The rule is
only checked on frames whose MIC verified: a forged frame never moves the counter.

A frame the driver accepted recently is refused whatever its counter (``replayed``): the
last :data:`RECENT` accepted frames are remembered by counter and digest. This closes the
likeliest attack on the widened window — record a device's frames, silence it (jam it,
take it out of range) until the window has grown past their counters, then send them
again as a "restart". A genuine restart cannot collide with them: the device's new frame
at a reused counter carries other bytes (new readings, a new MIC), unless it measures the
very same values at the very same counter, when one reading is refused and recorded.

The weakness that no counter rule removes: frames recorded longer ago than the last
:data:`RECENT` carry counters a restarted device will use again, and once the window has
grown past them (the device unheard for long enough) they pass as a restart. The jump rule
stops the obvious replay into the old counters right after a restart; every accepted
restart is a ``ble_counter_reset`` event, so the record shows where to look.

What is kept per sensor (JSON, a few dozen bytes; the agent commits it with the readings
it admitted and hands it back to :meth:`drivers.base.Driver.load_state`)::

    {"c": last counter, "p": digest of that frame, "t": wall time of its acceptance (s),
     "b": counter before the last restart (until passed), "r": restarts accepted,
     "k": key fingerprint, "a": last address, "m": model last identified,
     "h": the last RECENT accepted frames as "counter:digest-prefix"}
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

log = logging.getLogger(__name__)

#: Sensors no longer configured are remembered (they may come back) up to this many.
MAX_UNCONFIGURED = 64
#: Accepted frames remembered per sensor (counter and an 8-hex-digit digest prefix, ~20
#: bytes each in the committed state), refused if they come again.
RECENT = 8


@dataclass(frozen=True)
class CounterPolicy:
    """The two numbers of the restart rule (see the module docstring)."""

    restart_below: int = 100
    max_rate_hz: float = 1.0

    def plausible(self, unheard_s: float) -> float:
        return self.restart_below + self.max_rate_hz * max(0.0, unheard_s)


class Verdict(NamedTuple):
    """What to do with one verified frame: ``accept``, ``reset``, ``duplicate`` or ``refuse``."""

    kind: str
    reason: str = ""


@dataclass
class Memory:
    """What the driver remembers of one sensor, in memory and (``to_json``) in the store."""

    counter: int | None = None
    digest: str | None = None
    accepted_mono: float = 0.0
    accepted_wall: int | None = None
    before_reset: int | None = None
    resets: int = 0
    key_fp: str | None = None
    address: str | None = None
    model: str | None = None
    #: the last RECENT accepted frames, oldest first, as "counter:digest-prefix"
    recent: list[str] = field(default_factory=list)
    refusing: bool = field(default=False, compare=False)  # a run of refusals is under way

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in (("c", self.counter), ("p", self.digest), ("t", self.accepted_wall),
                            ("b", self.before_reset), ("k", self.key_fp), ("a", self.address),
                            ("m", self.model)):
            if value is not None:
                out[name] = value
        if self.resets:
            out["r"] = self.resets
        if self.recent:
            out["h"] = list(self.recent)
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any], *, now_mono: float, now_wall: float) -> Memory:
        """Rebuild from the store; ValueError/TypeError if it is not what ``to_json`` wrote."""
        def opt(name: str, kind: type) -> Any:
            value = raw.get(name)
            if value is None:
                return None
            if not isinstance(value, kind) or isinstance(value, bool):
                raise TypeError(f"{name}: {value!r} is not {kind.__name__}")
            return value

        counter = opt("c", int)
        if counter is not None and not 0 <= counter < 2**32:
            raise ValueError(f"counter {counter} out of range")
        recent = raw.get("h") or []
        if not isinstance(recent, list) or not all(isinstance(x, str) for x in recent):
            raise TypeError(f"h: {recent!r} is not a list of frames")
        wall = opt("t", int)
        # The monotonic reference the restart window needs: as long ago as the wall clock says.
        offline = max(0.0, now_wall - wall) if wall is not None else 0.0
        return cls(
            counter=counter,
            digest=opt("p", str),
            accepted_mono=now_mono - offline,
            accepted_wall=wall,
            before_reset=opt("b", int),
            resets=opt("r", int) or 0,
            key_fp=opt("k", str),
            address=opt("a", str),
            model=opt("m", str),
            recent=recent[-RECENT:],
        )


def _recent_key(counter: int, frame_digest: str) -> str:
    return f"{counter}:{frame_digest[:8]}"


def digest(payload: bytes) -> str:
    """A short digest of a frame, to tell the device's repeat of it from another frame."""
    return hashlib.sha256(payload).hexdigest()[:16]


def key_fingerprint(key: bytes) -> str:
    """Which key a counter belongs to (a new key is a new device), revealing nothing of it."""
    return hashlib.sha256(b"coldgate ble counter key\x00" + key).hexdigest()[:12]


def judge(mem: Memory, counter: int, frame_digest: str, now_mono: float, policy: CounterPolicy) -> Verdict:
    """The rule of the module docstring for one frame whose MIC verified."""
    last = mem.counter
    if last is None:
        return Verdict("accept", "first")
    if counter == last:
        return Verdict("duplicate") if frame_digest == mem.digest else Verdict("refuse", "same_counter")
    if _recent_key(counter, frame_digest) in mem.recent:
        return Verdict("refuse", "replayed")
    bound = policy.plausible(now_mono - mem.accepted_mono)
    if counter > last:
        if mem.before_reset is not None and counter <= mem.before_reset and counter - last > bound:
            return Verdict("refuse", "jump_into_counters_before_restart")
        return Verdict("accept")
    if counter <= bound:
        return Verdict("reset")
    return Verdict("refuse", "went_back")


def admit(mem: Memory, counter: int, frame_digest: str, verdict: Verdict, now_mono: float, now_wall: float) -> None:
    """Record an accepted (``accept``/``reset``) frame in the memory."""
    if verdict.kind == "reset":
        mem.before_reset = mem.counter
        mem.resets += 1
    elif mem.before_reset is not None and counter > mem.before_reset:
        mem.before_reset = None  # past the old counters: nothing recorded can be mistaken any more
    mem.counter = counter
    mem.digest = frame_digest
    mem.recent = [*mem.recent, _recent_key(counter, frame_digest)][-RECENT:]
    mem.accepted_mono = now_mono
    mem.accepted_wall = int(now_wall)
    mem.refusing = False


def load(state: Mapping[str, Any], *, now_mono: float, now_wall: float) -> dict[str, Memory]:
    """The per-sensor memories of a stored driver state; what does not parse is skipped, and said."""
    raw = state.get("sensors") if isinstance(state, Mapping) else None
    if not isinstance(raw, Mapping):
        if state:
            log.warning("BLE driver state not understood (no 'sensors' map): starting without it")
        return {}
    out: dict[str, Memory] = {}
    for sid, entry in raw.items():
        try:
            if not isinstance(entry, Mapping):
                raise TypeError("not a map")
            out[str(sid)] = Memory.from_json(entry, now_mono=now_mono, now_wall=now_wall)
        except (TypeError, ValueError) as exc:
            log.warning("BLE driver state for sensor %r not understood (%s): starting it afresh", sid, exc)
    return out


def dump(memories: Mapping[str, Memory], configured: set[str]) -> dict[str, Any]:
    """The driver state to commit: every configured sensor, and the most recent others."""
    sensors = {sid: m.to_json() for sid, m in memories.items() if sid in configured}
    others = [sid for sid in memories if sid not in configured]
    for sid in others[-MAX_UNCONFIGURED:]:
        sensors[sid] = memories[sid].to_json()
    return {"v": 1, "sensors": {sid: j for sid, j in sensors.items() if j}}
