"""The BLE driver: one bleak scanner for every BLE sensor of a gateway.

bleak calls :meth:`BleDriver.on_advertisement` on the event loop for every advertisement
heard. It picks the configured sensor by MAC (others are counted and ignored), decodes
the payload with the sensor's pure decoder, drops what must not be recorded twice
(a repeated packet id / measurement sequence; an encrypted counter that did not
increase), and puts the readings on a queue that :meth:`_aread` drains for the base
class's read loop. Nothing an advertisement holds can raise out of the callback.

A watchdog in :meth:`_aread` raises :class:`DriverIOError` when no advertisement at all
has been heard for ``silence_timeout_s`` (BlueZ silently loses a discovery session when
the adapter is reset or powered off); the base loop reports it and restarts the scan with
backoff. A configured sensor not decoded for ``missing_after_s`` is marked missing in
``status.details`` and reported once as a ``sensor_missing`` driver event.

What each sensor looks like in ``status.details["sensors"][sensor_id]``::

    mac, format, rssi, last_heard (epoch s), last_reading_at, missing, values {quantity: value},
    duplicates, replayed, wrong_key, decode_errors
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from drivers.base import MISSING_AFTER_S, Driver, Options, Reading, Sink
from drivers.ble.common import NoKey, WrongKey, normalize_mac
from drivers.ble.formats import decode_advertisement
from drivers.exc import DecodeError, DriverIOError


class BleSensor(Options):
    """One BLE sensor, picked out of the air by its MAC address."""

    mac: str = Field(description="advertiser address, AA:BB:CC:DD:EE:FF")
    sensor_id: str = Field(min_length=1, description="sensor id its readings carry")
    format: Literal["auto", "bthome", "ruuvi", "atc"] = Field(
        default="auto", description="payload format; auto = whichever the advertisement holds"
    )
    bindkey: SecretStr | None = Field(default=None, description="BTHome encryption key, 32 hex digits (secret)")

    @field_validator("mac")
    @classmethod
    def _mac(cls, v: str) -> str:
        return normalize_mac(v)

    @field_validator("bindkey")
    @classmethod
    def _key(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None:
            return v
        text = v.get_secret_value().strip()
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise ValueError("bindkey must be hexadecimal") from None
        if len(raw) != 16:
            raise ValueError(f"bindkey must be 32 hex digits (16 bytes), got {len(raw)} bytes")
        return SecretStr(text)


class BleOptions(Options):
    """The ``[[drivers]]`` keys of a ``type = "ble"`` driver."""

    adapter: str | None = Field(default=None, description="BlueZ adapter, e.g. hci0; default: the system's default")
    scanning_mode: Literal["auto", "passive", "active"] = Field(
        default="auto", description="auto = passive where BlueZ allows it, else active"
    )
    sensors: list[BleSensor] = Field(min_length=1)
    silence_timeout_s: float = Field(
        default=120.0, gt=0, description="watchdog: restart the scan after this long without any advertisement"
    )
    missing_after_s: float = Field(
        default=MISSING_AFTER_S, gt=0, description="mark a sensor missing after this long unheard (seconds)"
    )
    queue_size: int = Field(default=10_000, ge=1, description="decoded advertisements held for the agent")
    backend: Literal["bleak", "fake"] = Field(
        default="bleak", description="bleak = the system radio; fake = the in-process fake radio (benches, tests)"
    )
    fake_air: str = Field(default="default", description="backend = fake: the name of the fake radio to listen on")

    @model_validator(mode="after")
    def _unique(self) -> BleOptions:
        for attr in ("mac", "sensor_id"):
            seen: set[str] = set()
            for s in self.sensors:
                value = getattr(s, attr)
                if value in seen:
                    raise ValueError(f"two BLE sensors with {attr} {value!r}")
                seen.add(value)
        return self


@dataclass
class _Track:
    """What the driver remembers of one sensor between advertisements."""

    sequence: int | None = None
    counter: int | None = None
    last_payload: bytes | None = None
    last_decoded_mono: float | None = None
    missing: bool = False
    wrong_key_reported: bool = False


class BleDriver(Driver):
    """BTHome v2, Ruuvi RAWv2 and ATC1441/pvvx sensors over one BLE scanner."""

    type_name = "ble"
    Options = BleOptions
    options: BleOptions

    def __init__(self, name: str, options: BleOptions, *, scanner_backend: Any = None) -> None:
        super().__init__(name, options)
        self._backend = scanner_backend
        self._sensors = {s.mac: s for s in options.sensors}
        self._keys = {s.mac: bytes.fromhex(s.bindkey.get_secret_value()) for s in options.sensors if s.bindkey}
        self._tracks = {s.mac: _Track() for s in options.sensors}
        self._queue: asyncio.Queue[list[Reading]] | None = None
        self._scanner: Any = None
        self._sink: Sink | None = None
        self._started_mono = time.monotonic()
        self._last_adv_mono = self._started_mono
        self._sensor_details: dict[str, dict[str, Any]] = {
            s.sensor_id: {
                "mac": s.mac,
                "format": s.format,
                "rssi": None,
                "last_heard": None,
                "last_reading_at": None,
                "missing": False,
                "values": {},
                "duplicates": 0,
                "replayed": 0,
                "wrong_key": 0,
                "decode_errors": 0,
            }
            for s in options.sensors
        }
        self.status.details.update(
            {
                "adapter": options.adapter,
                "scanning_mode": None,
                "last_advertisement_at": None,
                "sensors": self._sensor_details,
            }
        )

    # -- lifecycle -------------------------------------------------------------------
    async def run(self, sink: Sink) -> None:
        self._sink = sink  # for events raised from the advertisement callback
        await super().run(sink)

    def _resolve_backend(self) -> Any:
        if self._backend is not None:
            return self._backend
        if self.options.backend == "fake":
            from drivers.ble.fake import air

            return air(self.options.fake_air).backend
        return None  # bleak's platform default

    async def _aopen(self) -> None:
        from drivers.ble.radio import start_scanner

        if self._queue is None:
            self._queue = asyncio.Queue(maxsize=self.options.queue_size)
        self._scanner, mode = await start_scanner(
            self.on_advertisement,
            mode=self.options.scanning_mode,
            adapter=self.options.adapter,
            backend=self._resolve_backend(),
            driver=self.name,
        )
        # The silence window starts now, not at the last advertisement before a failure.
        self._last_adv_mono = time.monotonic()
        self.status.details["scanning_mode"] = mode
        self.log.info("%s scanning (%s) for %d BLE sensors", self.name, mode, len(self._sensors))

    async def _aread(self, timeout: float) -> Iterable[Reading]:
        assert self._queue is not None
        silence = self.options.silence_timeout_s
        out: list[Reading] = []
        wait = min(timeout, self._last_adv_mono + silence - time.monotonic())
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
        self._check_missing()
        if not out and time.monotonic() - self._last_adv_mono >= silence:
            raise DriverIOError(
                f"no BLE advertisement heard for {silence:g} s: scanner silent (adapter reset or powered off?)",
                driver=self.name,
            )
        return out

    def _read(self, timeout: float) -> Iterable[Reading]:
        # The base class's blocking seam; this driver overrides the asyncio twins instead.
        raise DriverIOError("the BLE driver reads on the event loop (_aread), never in a thread", driver=self.name)

    async def _aclose(self) -> None:
        scanner, self._scanner = self._scanner, None
        if scanner is None:
            return
        try:
            await scanner.stop()
        except Exception as exc:  # noqa: BLE001 - closing must not raise; the adapter may be gone
            self.log.debug("%s: stopping the scanner failed: %s", self.name, exc)

    # -- the advertisement path --------------------------------------------------------
    def on_advertisement(self, device: Any, adv: Any) -> None:
        """bleak's detection callback. Never raises: a bad advertisement is counted."""
        try:
            self._dispatch(device, adv)
        except Exception as exc:  # noqa: BLE001 - nothing from the air may stop the scanner
            self.status.counters["dispatch_errors"] += 1
            self.noisy.warning(
                "dispatch", "%s: advertisement handling failed: %s: %s", self.name, type(exc).__name__, exc
            )

    def _dispatch(self, device: Any, adv: Any) -> None:
        now = time.monotonic()
        self._last_adv_mono = now
        counters = self.status.counters
        counters["advertisements"] += 1
        mac = str(device.address).upper()
        sensor = self._sensors.get(mac)
        if sensor is None:
            counters["ignored"] += 1
            return
        track = self._tracks[mac]
        detail = self._sensor_details[sensor.sensor_id]
        detail["rssi"] = adv.rssi
        detail["last_heard"] = time.time()
        try:
            decoded = decode_advertisement(
                adv.service_data, adv.manufacturer_data, fmt=sensor.format, mac=mac, key=self._keys.get(mac)
            )
        except WrongKey as exc:
            self._wrong_key(sensor.sensor_id, mac, track, detail, str(exc))
            return
        except NoKey as exc:
            counters["no_key"] += 1
            self.noisy.warning(f"nokey:{mac}", "%s: %s (%s): %s", self.name, sensor.sensor_id, mac, exc)
            return
        except DecodeError as exc:
            counters["decode_errors"] += 1
            detail["decode_errors"] += 1
            self.noisy.warning(
                f"decode:{mac}", "%s: %s (%s): undecodable advertisement: %s", self.name, sensor.sensor_id, mac, exc
            )
            return
        if decoded is None:
            counters["unrecognised"] += 1  # e.g. a scan response with only the name
            return
        if decoded.counter is not None:
            payload = _payload_key(adv)
            if track.counter is not None and decoded.counter <= track.counter:
                if decoded.counter == track.counter and payload == track.last_payload:
                    # the device repeats each encrypted frame: a duplicate, not an attack
                    counters["duplicates"] += 1
                    detail["duplicates"] += 1
                else:
                    counters["replayed"] += 1
                    detail["replayed"] += 1
                    self.noisy.warning(
                        f"replay:{mac}",
                        "%s: %s (%s): encrypted counter %d not above %d: replayed or out of order, rejected",
                        self.name,
                        sensor.sensor_id,
                        mac,
                        decoded.counter,
                        track.counter,
                    )
                return
            track.counter = decoded.counter
            track.last_payload = payload
        if track.wrong_key_reported:
            track.wrong_key_reported = False  # decrypts again: the next wrong key is news
        if decoded.sequence is not None:
            if decoded.sequence == track.sequence:
                counters["duplicates"] += 1
                detail["duplicates"] += 1
                return
            track.sequence = decoded.sequence
        track.last_decoded_mono = now
        if not decoded.measurements:
            return
        extra: dict[str, Any] = {"format": decoded.format}
        if decoded.sequence is not None:
            extra["sequence"] = decoded.sequence
        if decoded.counter is not None:
            extra["counter"] = decoded.counter
        rssi = adv.rssi
        sid = sensor.sensor_id
        readings = [Reading(sid, m.quantity, m.value, m.unit, rssi=rssi, extra=extra) for m in decoded.measurements]
        detail["values"] = {m.quantity: m.value for m in decoded.measurements}
        detail["last_reading_at"] = detail["last_heard"]
        self.status.details["last_advertisement_at"] = detail["last_heard"]
        assert self._queue is not None
        try:
            self._queue.put_nowait(readings)
        except asyncio.QueueFull:
            counters["dropped"] += len(readings)
            self.noisy.warning(
                "queue", "%s: reading queue full (%d); readings dropped", self.name, self.options.queue_size
            )

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
        for mac, track in self._tracks.items():
            sensor = self._sensors[mac]
            since = track.last_decoded_mono if track.last_decoded_mono is not None else self._started_mono
            missing = now - since >= limit
            if missing == track.missing:
                continue
            track.missing = missing
            detail = self._sensor_details[sensor.sensor_id]
            detail["missing"] = missing
            details = {"sensor_id": sensor.sensor_id, "mac": mac, "last_heard": detail["last_reading_at"]}
            if missing:
                self.log.warning(
                    "%s: sensor %s (%s) not heard for %g s: missing", self.name, sensor.sensor_id, mac, limit
                )
                self._event("sensor_missing", details)
            else:
                self.log.info("%s: sensor %s (%s) heard again", self.name, sensor.sensor_id, mac)
                self._event("sensor_back", details)

    def _event(self, event: str, details: Mapping[str, Any]) -> None:
        if self._sink is not None:
            self._sink.driver_event(self.name, event, {"driver": self.name, **details})


def _payload_key(adv: Any) -> bytes:
    """The BTHome payload bytes, to tell a repeated encrypted frame from a replayed one."""
    from drivers.ble.common import BTHOME_UUID

    return bytes(adv.service_data.get(BTHOME_UUID, b""))
