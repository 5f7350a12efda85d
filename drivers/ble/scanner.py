"""The BLE driver: bleak scanners (one per adapter) for every BLE sensor of a gateway.

bleak calls :meth:`BleDriver.on_advertisement` on the event loop for every advertisement
heard. It picks the configured sensor (by MAC, advertised name or bind key:
:mod:`drivers.ble.identity`), decodes the payload with the sensor's decoder (ours for
BTHome, Ruuvi, ATC/pvvx; Theengs Decoder for ``format = "theengs"``), drops what must
not be recorded twice (a repeated packet id / measurement sequence; the same frame heard
by two adapters) and what must not be recorded at all (an encrypted counter the replay
rule refuses: :mod:`drivers.ble.replay`), and puts the readings on a queue that
:meth:`_aread` drains for the base class's read loop. Nothing an advertisement holds can
raise out of the callback.

Replay memory outlives restarts: each read's state goes to the agent with the readings
it admitted (:meth:`batch_state`: one transaction, so a stored counter is never behind a
stored reading however the agent dies); a change without readings (an address, a model)
goes by ``sink.driver_state`` after them. The agent hands the last committed state back
to :meth:`load_state` before :meth:`run`.

Adapters (:mod:`drivers.ble.radios`): each configured adapter runs its own scanner, is
watched (silence for ``silence_timeout_s``; BlueZ asked every ``adapter_check_s`` whether
it is still powered and discovering) and, when it stalls or BlueZ errors, recovered (power
cycle, then controller reset, with backoff; ``ble_adapter_reset`` events). When no adapter
is scanning, :meth:`_aread` raises :class:`DriverIOError` and the base loop reports it and
reopens with backoff.

What each sensor looks like in ``status.details["sensors"][sensor_id]``::

    mac, match, format, model, brand, rssi, last_heard (epoch s), last_reading_at, missing,
    values {quantity: value}, duplicates, replayed, counter_resets, wrong_key, decode_errors

and each adapter in ``status.details["adapters"][name]``::

    state (scanning | recovering | down), scanning_mode, last_advertisement_at, resets,
    last_reset {at, step, reason, ok, error}, bluez {present, powered, discovering}, last_error
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from drivers.base import Driver, Reading, Sink
from drivers.ble import replay
from drivers.ble.common import NoKey, WrongKey
from drivers.ble.formats import decode_advertisement
from drivers.ble.identity import Matcher, signature
from drivers.ble.options import BleOptions, BleSensor
from drivers.ble.radios import Radios
from drivers.exc import DecodeError, DriverIOError, DriverUnavailable

__all__ = ["BleDriver", "BleOptions", "BleSensor"]

#: The same frame from another adapter within this long is one transmission heard twice.
_CROSS_ADAPTER_S = 2.0
#: At most one ``data_loss`` event for a full queue this often (the count covers them all).
_LOSS_REPORT_S = 10.0


@dataclass
class _Track:
    """What the driver remembers of one sensor between advertisements (not persisted)."""

    sequence: int | None = None
    last_frame: bytes | None = None
    last_frame_radio: int = -1
    last_frame_mono: float = 0.0
    last_decoded_mono: float | None = None
    missing: bool = False
    wrong_key_reported: bool = False
    kind: str | None = None
    #: Theengs Decoder costs 0.3-3 ms a call: a frame repeated as it was is decoded once.
    theengs_key: tuple[bytes, str | None] | None = None
    theengs_decoded: Any = None
    suspected: frozenset[str] = frozenset()
    name_conflict_reported: bool = False


class BleDriver(Driver):
    """BTHome v2, Ruuvi RAWv2, ATC1441/pvvx and Theengs Decoder's models over BLE scanners."""

    type_name = "ble"
    Options = BleOptions
    options: BleOptions

    def __init__(self, name: str, options: BleOptions, *, scanner_backend: Any = None,
                 adapter_control: Any = None) -> None:
        super().__init__(name, options)
        self._backend = scanner_backend
        self._sensors = {s.sensor_id: s for s in options.sensors}
        self._keys = {s.sensor_id: bytes.fromhex(s.bindkey.get_secret_value()) for s in options.sensors if s.bindkey}
        self._key_fps = {sid: replay.key_fingerprint(k) for sid, k in self._keys.items()}
        self._tracks = {s.sensor_id: _Track() for s in options.sensors}
        self._policy = replay.CounterPolicy(options.counter_restart_below, options.counter_max_rate_hz)
        self._memory: dict[str, replay.Memory] = {}
        self._matcher = Matcher(options.sensors, {})
        self._not_ours: dict[str, float] = {}
        self._queue: asyncio.Queue[list[Reading]] | None = None
        self._sink: Sink | None = None
        self._started_mono = time.monotonic()
        self._state_version = 0
        self._state_sent = 0
        self._pending_state: dict[str, Any] | None = None
        self._feed: Any = None  # the fake radio's feed socket (fake_feed), while running
        self._dropped: dict[str, int] = {}
        self._dropped_reported_mono = -_LOSS_REPORT_S
        self._sensor_details: dict[str, dict[str, Any]] = {
            s.sensor_id: {
                "mac": s.mac, "match": s.match, "format": s.format, "model": None, "brand": None,
                "rssi": None, "last_heard": None, "last_reading_at": None, "missing": False, "values": {},
                "duplicates": 0, "replayed": 0, "counter_resets": 0, "wrong_key": 0, "decode_errors": 0,
            }
            for s in options.sensors
        }
        self.radios = Radios(self, adapter_control)
        self.status.details.update({
            "adapter": options.adapter,
            "scanning_mode": None,
            "last_advertisement_at": None,
            "sensors": self._sensor_details,
            "adapters": self.radios.details,
        })

    # -- persisted state -------------------------------------------------------------
    def load_state(self, state: Mapping[str, Any]) -> None:
        """Take the replay memory last committed (called before :meth:`run`)."""
        memories = replay.load(state, now_mono=time.monotonic(), now_wall=time.time())
        for sid, mem in memories.items():
            fp = self._key_fps.get(sid)
            if mem.counter is not None and fp is not None and mem.key_fp not in (None, fp):
                self.log.info("%s: %s has a new bind key: its old counter no longer applies", self.name, sid)
                mem.counter = mem.digest = mem.before_reset = None
            if sid in self._sensor_details and mem.model:
                self._sensor_details[sid]["model"] = mem.model
        self._memory = memories
        self._matcher = Matcher(self.options.sensors, {sid: m.address for sid, m in memories.items() if m.address})

    def _mem(self, sid: str) -> replay.Memory:
        mem = self._memory.get(sid)
        if mem is None:
            mem = self._memory[sid] = replay.Memory(key_fp=self._key_fps.get(sid))
        return mem

    def _changed(self) -> None:
        self._state_version += 1

    def batch_state(self) -> dict[str, Any] | None:
        """The state as of the batch just read, to go with it (asked by the base read loop)."""
        pending, self._pending_state = self._pending_state, None
        return pending

    def _flush_state(self) -> None:
        """Give the agent the state of what it has been delivered (see _aread)."""
        pending, self._pending_state = self._pending_state, None
        if pending is None or self._sink is None:
            return
        deliver = getattr(self._sink, "driver_state", None)
        if callable(deliver):
            deliver(self.name, pending)

    # -- lifecycle -------------------------------------------------------------------
    async def run(self, sink: Sink) -> None:
        self._sink = sink  # for events raised from the advertisement callback
        try:
            await super().run(sink)
        finally:
            self._flush_state()  # the last batch was delivered before run() returned
            self._report_dropped(force=True)
            await self.radios.stop()
            if self._feed is not None:
                self._feed.close()
                self._feed = None

    def _resolve_backend(self) -> Any:
        if self._backend is not None:
            return self._backend
        if self.options.backend == "fake":
            from drivers.ble.fake import air

            return air(self.options.fake_air).backend
        return None  # bleak's platform default

    def scanning_mode(self) -> str:
        mode = self.options.scanning_mode
        return "active" if mode == "auto" and self.options.needs_active() else mode

    async def _aopen(self) -> None:
        if self._queue is None:
            self._queue = asyncio.Queue(maxsize=self.options.queue_size)
        if self.options.fake_feed is not None and self._feed is None:
            from drivers.ble.fake import air

            try:
                self._feed = await air(self.options.fake_air).listen(self.options.fake_feed)
            except OSError as exc:
                raise DriverUnavailable(f"fake radio feed {self.options.fake_feed}: {exc}",
                                        driver=self.name) from exc
        await self.radios.open()
        self.log.info("%s scanning (%s) for %d BLE sensors", self.name, self.status.details["scanning_mode"],
                      len(self._sensors))

    async def _aread(self, timeout: float) -> Iterable[Reading]:
        assert self._queue is not None
        # The batch returned last time has been delivered by now: its state may be committed.
        self._flush_state()
        out: list[Reading] = []
        wait = min(timeout, self.radios.silence_deadline() - time.monotonic())
        try:
            if wait > 0:
                async with asyncio.timeout(wait):  # not wait_for: see drivers.base.wait_event
                    out.extend(await self._queue.get())
            else:
                await asyncio.sleep(0)  # always yield: a read must never spin the loop
            while True:
                out.extend(self._queue.get_nowait())
        except (TimeoutError, asyncio.QueueEmpty):
            pass
        # No await from the last drain to here: the state below is exactly that of ``out``.
        if self._state_version != self._state_sent:
            self._state_sent = self._state_version
            self._pending_state = replay.dump(self._memory, set(self._sensors))
        self._check_missing()
        self._report_dropped()
        self.radios.watch(have_readings=bool(out))  # raises DriverIOError when no adapter is scanning
        return out

    def _read(self, timeout: float) -> Iterable[Reading]:
        # The base class's blocking seam; this driver overrides the asyncio twins instead.
        raise DriverIOError("the BLE driver reads on the event loop (_aread), never in a thread", driver=self.name)

    async def _aclose(self) -> None:
        await self.radios.close()

    # -- the advertisement path --------------------------------------------------------
    def on_advertisement(self, device: Any, adv: Any, radio: int = 0) -> None:
        """bleak's detection callback. Never raises: a bad advertisement is counted."""
        try:
            self._dispatch(device, adv, radio)
        except Exception as exc:  # noqa: BLE001 - nothing from the air may stop the scanner
            self.status.counters["dispatch_errors"] += 1
            self.noisy.warning(
                "dispatch", "%s: advertisement handling failed: %s: %s", self.name, type(exc).__name__, exc
            )

    def _dispatch(self, device: Any, adv: Any, radio: int) -> None:
        now = time.monotonic()
        self.radios.heard(radio, now)
        counters = self.status.counters
        counters["advertisements"] += 1
        mac = str(device.address).upper()
        sensor, how = self._matcher.lookup(mac, adv.local_name)
        decoded = None
        if sensor is None and self._matcher.by_key:
            sensor, decoded = self._try_keys(mac, adv, now)
            how = "key"
        if sensor is None:
            counters["ignored"] += 1
            self._stranger(mac, adv, now)
            return
        sid = sensor.sensor_id
        track = self._tracks[sid]
        if not self._bind(sensor, mac, how, track, now):
            return
        detail = self._sensor_details[sid]
        detail["rssi"] = adv.rssi
        detail["last_heard"] = time.time()
        # the frame's bytes, only where they are needed (dedupe across adapters, counters, Theengs)
        frame = _frame(adv) if self.radios.many or sensor.format == "theengs" or sensor.bindkey else b""
        if decoded is None and sensor.format == "theengs" and track.theengs_key == (frame, adv.local_name):
            decoded = track.theengs_decoded  # the decoder is pure: the same frame decodes the same
        if decoded is None:
            try:
                decoded = decode_advertisement(adv.service_data, adv.manufacturer_data, fmt=sensor.format, mac=mac,
                                               key=self._keys.get(sid), name=adv.local_name)
            except WrongKey as exc:
                self._wrong_key(sid, mac, track, detail, str(exc))
                return
            except NoKey as exc:
                counters["no_key"] += 1
                self.noisy.warning(f"nokey:{mac}", "%s: %s (%s): %s", self.name, sid, mac, exc)
                return
            except DecodeError as exc:
                counters["decode_errors"] += 1
                detail["decode_errors"] += 1
                self.noisy.warning(f"decode:{mac}", "%s: %s (%s): undecodable advertisement: %s", self.name, sid,
                                   mac, exc)
                return
        if decoded is None:
            counters["unrecognised"] += 1  # e.g. a scan response with only the name
            return
        if sensor.format == "theengs":
            track.theengs_key, track.theengs_decoded = (frame, adv.local_name), decoded
        if self.radios.many and frame == track.last_frame and radio != track.last_frame_radio \
                and now - track.last_frame_mono < _CROSS_ADAPTER_S:
            counters["duplicates"] += 1  # the same transmission, heard by another adapter
            detail["duplicates"] += 1
            return
        if decoded.counter is not None and not self._counter_ok(sensor, mac, decoded.counter, frame, track, detail,
                                                                 now):
            return
        if track.wrong_key_reported:
            track.wrong_key_reported = False  # decrypts again: the next wrong key is news
        if decoded.sequence is not None:
            if decoded.sequence == track.sequence:
                counters["duplicates"] += 1
                detail["duplicates"] += 1
                return
            track.sequence = decoded.sequence
        track.last_frame, track.last_frame_radio, track.last_frame_mono = frame, radio, now
        track.last_decoded_mono = now
        if track.kind is None:
            track.kind = signature(adv.service_data, adv.manufacturer_data)
        if decoded.model is not None:
            self._identified(sid, mac, decoded, detail)
        if not decoded.measurements:
            return
        extra: dict[str, Any] = {"format": decoded.format}
        if decoded.sequence is not None:
            extra["sequence"] = decoded.sequence
        if decoded.counter is not None:
            extra["counter"] = decoded.counter
        if decoded.extra.get("model_id"):
            extra["model_id"] = decoded.extra["model_id"]
        rssi = adv.rssi
        model, brand = decoded.model, decoded.brand
        readings = [Reading(sid, m.quantity, m.value, m.unit, rssi=rssi, extra=extra, model=model, brand=brand)
                    for m in decoded.measurements]
        detail["values"] = {m.quantity: m.value for m in decoded.measurements}
        detail["last_reading_at"] = detail["last_heard"]
        self.status.details["last_advertisement_at"] = detail["last_heard"]
        assert self._queue is not None
        try:
            self._queue.put_nowait(readings)
        except asyncio.QueueFull:
            counters["dropped"] += len(readings)
            self._dropped[sid] = self._dropped.get(sid, 0) + len(readings)
            self.noisy.warning(
                "queue", "%s: reading queue full (%d); readings dropped", self.name, self.options.queue_size
            )

    def _counter_ok(self, sensor: BleSensor, mac: str, counter: int, frame: bytes, track: _Track,
                    detail: dict[str, Any], now: float) -> bool:
        """The replay rule (drivers.ble.replay) for one verified frame; True to record it."""
        sid = sensor.sensor_id
        mem = self._mem(sid)
        fd = replay.digest(frame)
        verdict = replay.judge(mem, counter, fd, now, self._policy)
        if verdict.kind == "duplicate":  # the device repeats each encrypted frame: not an attack
            self.status.counters["duplicates"] += 1
            detail["duplicates"] += 1
            return False
        if verdict.kind == "refuse":
            self.status.counters["replayed"] += 1
            detail["replayed"] += 1
            self.noisy.warning(f"replay:{mac}", "%s: %s (%s): encrypted counter %d refused after %d (%s): "
                               "replayed or out of order", self.name, sid, mac, counter, mem.counter, verdict.reason)
            if not mem.refusing:
                mem.refusing = True
                self._event("ble_counter_refused", {"sensor_id": sid, "mac": mac, "last_counter": mem.counter,
                                                    "counter": counter, "reason": verdict.reason})
            return False
        if verdict.kind == "reset":
            self.status.counters["counter_resets"] += 1
            detail["counter_resets"] += 1
            self.log.warning("%s: %s (%s): encrypted counter restarted (%d after %d): device restart accepted",
                             self.name, sid, mac, counter, mem.counter)
            self._event("ble_counter_reset", {"sensor_id": sid, "mac": mac, "old_counter": mem.counter,
                                              "new_counter": counter})
        replay.admit(mem, counter, fd, verdict, now, time.time())
        mem.key_fp = self._key_fps.get(sid)
        self._changed()
        return True

    def _try_keys(self, mac: str, adv: Any, now: float) -> tuple[BleSensor | None, Any]:
        """An encrypted frame from an unknown address: does it verify under a key-matched sensor's key?"""
        seen = self._not_ours.get(mac)
        if seen is not None and now - seen < 60.0:
            return None, None
        for sensor in self._matcher.by_key:
            try:
                decoded = decode_advertisement(adv.service_data, adv.manufacturer_data, fmt=sensor.format, mac=mac,
                                               key=self._keys[sensor.sensor_id])
            except DecodeError:
                continue
            if decoded is not None and decoded.encrypted:
                return sensor, decoded
        if len(self._not_ours) >= 1024:
            self._not_ours.clear()
        self._not_ours[mac] = now
        return None, None

    def _bind(self, sensor: BleSensor, mac: str, how: str, track: _Track, now: float) -> bool:
        """Follow a name/key sensor to a new address (recorded); False to ignore this advertisement."""
        sid = sensor.sensor_id
        mem = self._mem(sid)
        old = mem.address
        if old == mac:
            return True
        if old is not None and sensor.match == "name" and track.last_decoded_mono is not None \
                and now - track.last_decoded_mono < self.options.missing_after_s:
            # Two devices advertise this name: keep the one we have until it goes missing.
            self.status.counters["name_conflicts"] += 1
            self.noisy.warning(f"name:{sid}", "%s: %s: name %r advertised by %s and %s: keeping %s", self.name, sid,
                               sensor.name, old, mac, old)
            if not track.name_conflict_reported:
                track.name_conflict_reported = True
                self._event("ble_name_conflict", {"sensor_id": sid, "name": sensor.name, "mac": old, "other_mac": mac})
            return False
        mem.address = mac
        self._sensor_details[sid]["mac"] = mac
        self._changed()
        if old is not None and sensor.match != "mac":
            self._matcher.rebind(sensor, old, mac)
            self.log.warning("%s: sensor %s now advertises from %s (was %s; matched by %s)", self.name, sid, mac,
                             old, how)
            self._event("ble_address_changed", {"sensor_id": sid, "old_mac": old, "new_mac": mac, "matched_by": how})
        elif sensor.match != "mac":
            self._matcher.rebind(sensor, None, mac)
        return True

    def _identified(self, sid: str, mac: str, decoded: Any, detail: dict[str, Any]) -> None:
        detail["model"], detail["brand"] = decoded.model, decoded.brand
        mem = self._mem(sid)
        model_id = str(decoded.extra.get("model_id") or decoded.model)
        if mem.model != model_id:
            old, mem.model = mem.model, model_id
            self._changed()
            self.log.info("%s: sensor %s (%s) is a %s %s", self.name, sid, mac, decoded.brand or "", decoded.model)
            self._event("ble_sensor_identified", {"sensor_id": sid, "mac": mac, "model": decoded.model,
                                                  "brand": decoded.brand, "model_id": model_id,
                                                  "previous_model_id": old})

    def _stranger(self, mac: str, adv: Any, now: float) -> None:
        """An unconfigured device: is it perhaps a missing sensor with a new address?"""
        kind = signature(adv.service_data, adv.manufacturer_data)
        if not self._matcher.note_unknown(mac, kind, now):
            return
        for sid, track in self._tracks.items():
            if track.missing and track.kind == kind:
                self._suspect(sid, track, [mac])

    def _suspect(self, sid: str, track: _Track, candidates: list[str]) -> None:
        new = [c for c in candidates if c not in track.suspected]
        if not new:
            return
        track.suspected = track.suspected | set(new)
        old = self._mem(sid).address or self._sensors[sid].mac
        self.log.warning("%s: sensor %s (%s) is missing and unconfigured %s of the same kind appeared: a new "
                         "address? Update the config, or match it by name or key", self.name, sid, old,
                         ", ".join(new))
        self._event("ble_sensor_replaced_suspected", {"sensor_id": sid, "mac": old, "candidates": new,
                                                      "kind": track.kind})

    def _wrong_key(self, sid: str, mac: str, track: _Track, detail: dict[str, Any], message: str) -> None:
        self.status.counters["wrong_key"] += 1
        detail["wrong_key"] += 1
        self.noisy.warning(f"key:{mac}", "%s: %s (%s): %s", self.name, sid, mac, message)
        if not track.wrong_key_reported:
            track.wrong_key_reported = True
            self._event("ble_wrong_key", {"sensor_id": sid, "mac": mac, "message": message})

    def _check_missing(self) -> None:
        now = time.monotonic()
        limit = self.options.missing_after_s
        for sid, track in self._tracks.items():
            since = track.last_decoded_mono if track.last_decoded_mono is not None else self._started_mono
            missing = now - since >= limit
            if missing == track.missing:
                continue
            track.missing = missing
            detail = self._sensor_details[sid]
            detail["missing"] = missing
            mac = detail["mac"]
            details = {"sensor_id": sid, "mac": mac, "last_heard": detail["last_reading_at"]}
            if missing:
                self.log.warning("%s: sensor %s (%s) not heard for %g s: missing", self.name, sid, mac, limit)
                self._event("sensor_missing", details)
                # a replacement switched on shortly before the old one went quiet counts too
                strangers = self._matcher.strangers_like(track.kind, since - limit, now, 2 * limit)
                if strangers:
                    self._suspect(sid, track, strangers)
            else:
                track.suspected = frozenset()
                self.log.info("%s: sensor %s (%s) heard again", self.name, sid, mac)
                self._event("sensor_back", details)

    def _report_dropped(self, *, force: bool = False) -> None:
        """Readings the full queue could not take: one ``data_loss`` event for them (never silent)."""
        if not self._dropped:
            return
        now = time.monotonic()
        if not force and now - self._dropped_reported_mono < _LOSS_REPORT_S:
            return
        lost, self._dropped = self._dropped, {}
        self._dropped_reported_mono = now
        self._event("data_loss", {"reason": "ble_queue_full", "what": "readings", "count": sum(lost.values()),
                                  "sensors": lost})

    def _event(self, event: str, details: Mapping[str, Any]) -> None:
        if self._sink is not None:
            self._sink.driver_event(self.name, event, {"driver": self.name, **details})


def _frame(adv: Any) -> bytes:
    """The advertisement's payload bytes: to tell a repeated frame from another one."""
    parts = [bytes(v) for _, v in sorted(adv.service_data.items())]
    parts += [cid.to_bytes(2, "little") + bytes(v) for cid, v in sorted(adv.manufacturer_data.items())]
    return b"\x00".join(parts)
