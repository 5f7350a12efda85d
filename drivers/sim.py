"""The simulated logger: seeded, deterministic sensors for demos, tests and benchmarks.

It ships in the package (after httpx's ``MockTransport``) so that ``coldgate run`` on a
bench, the README demo, the tests and the benchmarks all drive the agent the same way.
Three kinds of simulated device:

``probe``
    temperature following a setpoint with Gaussian noise and scheduled excursions
    (ramp to a target, hold, ramp back), humidity, and a draining battery;
``gps``
    a track at constant speed and heading: latitude, longitude, altitude, speed, fix,
    HDOP and satellites;
``motion``
    shock peaks and box-open light events at a seeded random rate, and tilt.

``speed = 1`` runs in real time and leaves timestamps to the agent; ``speed > 1`` runs
accelerated and ``speed = 0`` as fast as possible, both stamping each reading with its
simulated time from ``start``. The same seed gives the same readings.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Literal

from pydantic import Field

from drivers.base import Driver, Options, Reading
from drivers.exc import DriverIOError
from drivers.fields import MAX_SECONDS, MIN_PERIOD_S


class Excursion(Options):
    """A scheduled departure from the setpoint, in simulated seconds from start."""

    at_s: float = Field(ge=0, le=MAX_SECONDS, description="when the excursion begins")
    duration_s: float = Field(gt=0, le=MAX_SECONDS, description="how long the value holds at `to`")
    to: float = Field(description="the value held during the excursion")
    ramp_s: float = Field(default=60.0, ge=0, le=MAX_SECONDS, description="time to ramp to `to` and back")


class SimSensor(Options):
    id: str = Field(min_length=1, description="sensor id the readings carry")
    kind: Literal["probe", "gps", "motion"] = "probe"
    interval_s: float = Field(default=10.0, ge=MIN_PERIOD_S, le=MAX_SECONDS, description="seconds between samples")
    setpoint: float = Field(default=5.0, description="probe: temperature in Cel")
    noise: float = Field(default=0.05, ge=0, description="probe: std dev of the noise in Cel")
    humidity: float | None = Field(default=45.0, description="probe: %RH, or none for no humidity")
    battery_start: float = Field(default=100.0, ge=0, le=100)
    battery_drain_per_h: float = Field(default=0.2, ge=0)
    excursions: list[Excursion] = Field(default_factory=list)
    # gps
    lat: float = Field(default=50.1109, ge=-90, le=90)
    lon: float = Field(default=8.6821, ge=-180, le=180)
    heading_deg: float = 45.0
    speed_mps: float = Field(default=20.0, ge=0)
    # motion
    events_per_h: float = Field(default=2.0, ge=0, description="motion: shocks and openings per hour")


class SimOptions(Options):
    seed: int = 0
    speed: float = Field(default=1.0, ge=0, le=1e6, description="1 = real time, >1 accelerated, 0 = flat out")
    start: datetime | None = Field(default=None, description="simulated start (accelerated runs)")
    sensors: list[SimSensor] = Field(min_length=1)
    limit: int | None = Field(default=None, ge=1, description="stop producing after this many readings")
    fault_after_readings: int | None = Field(
        default=None, ge=1, description="raise an I/O error after this many readings (fault drills)"
    )
    chunk: int = Field(default=2000, ge=1, description="flat out: readings returned per read")


class _SensorSim:
    """The deterministic state of one simulated device."""

    def __init__(self, spec: SimSensor, rng: random.Random) -> None:
        self.spec = spec
        self.rng = rng
        self.next_t = 0.0

    def temperature(self, t: float) -> float:
        value = self.spec.setpoint
        for ex in self.spec.excursions:
            ramp = ex.ramp_s
            start, hold_end = ex.at_s, ex.at_s + ramp + ex.duration_s
            if start <= t < start + ramp:
                value = self.spec.setpoint + (ex.to - self.spec.setpoint) * (t - start) / ramp
            elif start + ramp <= t < hold_end:
                value = ex.to
            elif hold_end <= t < hold_end + ramp:
                value = ex.to + (self.spec.setpoint - ex.to) * (t - hold_end) / ramp
        return value + self.rng.gauss(0.0, self.spec.noise) if self.spec.noise else value

    def sample(self, t: float, ts: float | None) -> list[Reading]:
        s, sid = self.spec, self.spec.id
        if s.kind == "probe":
            out = [Reading(sid, "temperature", round(self.temperature(t), 3), "Cel", ts)]
            if s.humidity is not None:
                rh = min(100.0, max(0.0, s.humidity + self.rng.gauss(0.0, 0.5)))
                out.append(Reading(sid, "humidity", round(rh, 2), "%RH", ts))
            battery = max(0.0, s.battery_start - s.battery_drain_per_h * t / 3600.0)
            out.append(Reading(sid, "battery", round(battery, 1), "%EL", ts))
            return out
        if s.kind == "gps":
            dist = s.speed_mps * t
            heading = math.radians(s.heading_deg)
            lat = s.lat + math.degrees(dist * math.cos(heading) / 6_371_000.0)
            lon = s.lon + math.degrees(dist * math.sin(heading) / (6_371_000.0 * math.cos(math.radians(s.lat))))
            return [
                Reading(sid, "latitude", round(lat, 7), "lat", ts),
                Reading(sid, "longitude", round(lon, 7), "lon", ts),
                Reading(sid, "altitude", 112.0, "m", ts),
                Reading(sid, "speed", s.speed_mps, "m/s", ts),
                Reading(sid, "gnss_fix", 1, "count", ts),
                Reading(sid, "hdop", 0.9, "count", ts),
                Reading(sid, "satellites", 9, "count", ts),
            ]
        # motion: a Poisson process of events, decided per sample
        p_event = 1.0 - math.exp(-s.events_per_h * s.interval_s / 3600.0)
        tilt = round(abs(self.rng.gauss(0.0, 2.0)), 1)
        out = [Reading(sid, "tilt", tilt, "deg", ts)]
        if self.rng.random() < p_event:
            out.append(Reading(sid, "shock", round(self.rng.uniform(20.0, 80.0), 1), "m/s2", ts))
        light = round(self.rng.uniform(200.0, 600.0), 0) if self.rng.random() < p_event / 2 else 0.0
        out.append(Reading(sid, "illuminance", light, "lx", ts))
        return out


class SimDriver(Driver):
    """Simulated loggers (see the module docstring)."""

    type_name = "sim"
    Options = SimOptions
    options: SimOptions

    def __init__(self, name: str, options: SimOptions) -> None:
        super().__init__(name, options)
        rng = random.Random(options.seed)
        self._sims = [_SensorSim(spec, random.Random(rng.random())) for spec in options.sensors]
        #: (next sample time, index): the next sensor due is on top; ties go to config order
        self._due = [(0.0, i) for i in range(len(self._sims))]
        self._emitted = 0
        self._since_open = 0
        self._t0_mono = 0.0
        self._start_wall = 0.0
        self._sim_offset = 0.0  # simulated seconds already produced before a reopen
        self._fault_pending = False

    def _open(self) -> None:
        opts = self.options
        self._t0_mono = time.monotonic()
        if not self._start_wall:
            self._start_wall = opts.start.timestamp() if opts.start else time.time()
        self._since_open = 0

    def _sim_now(self) -> float:
        return self._sim_offset + (time.monotonic() - self._t0_mono) * self.options.speed

    def _next_due(self) -> _SensorSim:
        return self._sims[self._due[0][1]]

    def _read(self, timeout: float) -> Iterable[Reading]:
        opts = self.options
        if self._fault_pending:
            # the readings of the previous read were delivered; fail now, losing none
            self._fault_pending = False
            raise DriverIOError(f"simulated fault after {opts.fault_after_readings} readings", driver=self.name)
        if opts.limit is not None and self._emitted >= opts.limit:
            time.sleep(timeout)  # exhausted: behave like a silent device
            return []
        flat_out = opts.speed == 0
        if not flat_out:
            due = self._next_due().next_t
            wait = (due - self._sim_now()) / opts.speed
            if wait > 0:
                time.sleep(min(wait, timeout))
                if wait > timeout:
                    return []
        out: list[Reading] = []
        budget = opts.chunk if flat_out else 10_000
        now = math.inf if flat_out else self._sim_now()
        while len(out) < budget:
            sim = self._next_due()
            if sim.next_t > now:
                break
            ts = None if opts.speed == 1 else self._start_wall + sim.next_t
            out.extend(sim.sample(sim.next_t, ts))
            if flat_out:
                self._sim_offset = sim.next_t
            sim.next_t += sim.spec.interval_s
            heapq.heapreplace(self._due, (sim.next_t, self._due[0][1]))
        if opts.limit is not None:
            out = out[: max(0, opts.limit - self._emitted)]
        self._emitted += len(out)
        self._since_open += len(out)
        if opts.fault_after_readings is not None and self._since_open >= opts.fault_after_readings:
            self._fault_pending = True
        return out

    def _close(self) -> None:
        if self.options.speed:
            self._sim_offset = self._sim_now()


def simulated_start_utc() -> datetime:
    """A fixed start for reproducible accelerated runs (benchmarks)."""
    return datetime(2026, 1, 1, tzinfo=UTC)
