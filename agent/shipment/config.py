"""The schema of a shipment: ``[[shipments]]`` in config, and ``shipment start`` arguments.

One model for both, so a shipment started from the CLI and one that starts with the agent
are validated by the same rules and recorded the same way (``shipment_started`` carries
``ShipmentSpec.model_dump()``). Durations are seconds on the agent's monotonic timeline;
nothing here is a wall-clock time. See ``docs/shipments.md`` for the design.

Example (``config/shipment.toml``)::

    [[shipments]]
    id = "SHP-2026-0117"
    sensors = ["probe-1", "probe-2"]
    profile = "2-8C"                 # or per sensor: profiles = { probe-1 = "2-8C" }
    planned_duration_s = 172800      # 48 h: EN 12830 asks for a reading every 15 min at most
    ignore_s = 600                   # Controlant's default: 10 min for the probes to settle
    legs = [ { name = "packing", kind = "origin", mode = "road" },
             { name = "LHR-JFK", kind = "transit", mode = "air", mute = ["light"] },
             { name = "receiving", kind = "destination", mode = "road" } ]
    stop = { duration_s = 259200, geofence = { lat = 40.64, lon = -73.78, radius_m = 800 } }
    stability = { budget_s = 14400, spent_upstream_s = 3600, above = 8.0, below = 2.0 }
    freeze_thaw = { freeze_at = 0.0, thaw_at = 2.0, max_cycles = 0 }
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from drivers.fields import StrictModel

SHIPMENT_ID = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}$"
LegKind = Literal["origin", "transit", "destination", "named"]
Mode = Literal["road", "air", "sea", "rail", "courier", "storage", "other"]

#: Controlant's default ignore period after start (a probe settling after packing)
DEFAULT_IGNORE_S = 600.0


class _Model(StrictModel):
    """Strict like every config model (see :mod:`drivers.fields`)."""


class LegSpec(_Model):
    """One leg of the route, planned at start or begun on the way (``shipment leg``)."""

    name: str = Field(min_length=1, max_length=64, description="what the leg is called in the report")
    kind: LegKind = Field(default="named", description="origin, transit, destination, or a named leg")
    mode: Mode | None = Field(default=None, description="road, air, sea, rail, courier, storage, other")
    mute: list[str] = Field(
        default_factory=list,
        description="rule names whose alarms during this leg are recorded but marked muted: no action is run "
                    "and they do not fail the shipment (e.g. light while packing, tilt in the hold)")


class Geofence(_Model):
    """A circle around the destination: arriving inside it stops the shipment."""

    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    radius_m: float = Field(gt=0, le=100_000, description="radius, m")
    name: str | None = None


class StopWhen(_Model):
    """Stop conditions besides ``shipment stop``: a duration, arrival in a geofence."""

    duration_s: float | None = Field(default=None, gt=0, description="stop this long after the start, s")
    geofence: Geofence | None = None


class StabilitySpec(_Model):
    """The product's stability budget: time out of range allowed across the whole supply chain.

    ``spent_upstream_s`` is what earlier legs and gateways already used (ELPRO's remaining
    stability budget, Controlant's product stability profile). Time counts while any of the
    ``sensors`` (default: all of the shipment's) is at or beyond a bound.
    """

    budget_s: float = Field(gt=0, description="allowed time out of range for the product, s")
    spent_upstream_s: float = Field(default=0.0, ge=0, description="already spent before this shipment, s")
    quantity: str = "temperature"
    above: float | None = Field(default=None, description="out of range at or above this")
    below: float | None = Field(default=None, description="out of range at or below this")
    sensors: list[str] | None = Field(default=None, description="sensors that count; unset = all of the shipment's")

    @model_validator(mode="after")
    def _bounds(self) -> StabilitySpec:
        if self.above is None and self.below is None:
            raise ValueError("give above, below or both")
        if self.above is not None and self.below is not None and self.below >= self.above:
            raise ValueError("below must be lower than above")
        return self


class FreezeThawSpec(_Model):
    """Freeze–thaw cycles: frozen at or below ``freeze_at``, thawed again at or above ``thaw_at``.

    The band between the two is the hysteresis: a value dithering around 0 °C is one
    freeze, not many. A cycle is counted when a frozen sensor thaws.
    """

    freeze_at: float = Field(default=0.0, description="at or below: frozen")
    thaw_at: float = Field(default=2.0, description="at or above, once frozen: thawed, one cycle")
    max_cycles: int | None = Field(default=None, ge=0, description="more cycles than this raise an alarm")
    quantity: str = "temperature"
    sensors: list[str] | None = None

    @model_validator(mode="after")
    def _band(self) -> FreezeThawSpec:
        if self.thaw_at <= self.freeze_at:
            raise ValueError("thaw_at must be above freeze_at")
        return self


class ShipmentSpec(_Model):
    """A shipment as it is started: what it covers, how it is judged, when it stops."""

    id: str = Field(pattern=SHIPMENT_ID, description="the shipment id readings carry")
    sensors: list[str] = Field(min_length=1, description="sensor ids the shipment covers")
    profile: str | None = Field(default=None, description="one rule profile for every sensor")
    profiles: dict[str, str] = Field(default_factory=dict, description="rule profile per sensor (over profile)")
    planned_duration_s: float | None = Field(default=None, gt=0, description="planned trip length, s (EN 12830)")
    legs: list[LegSpec] = Field(default_factory=list, description="the planned legs; the first begins at start")
    ignore_s: float = Field(default=DEFAULT_IGNORE_S, ge=0, le=86400,
                            description="after start, readings are recorded and tagged but not judged, s")
    stop: StopWhen = StopWhen()
    stability: StabilitySpec | None = None
    freeze_thaw: FreezeThawSpec | None = None
    custodian: str | None = Field(default=None, description="who holds the goods at start (first in the chain)")
    product: str | None = None
    reference: str | None = Field(default=None, description="order, PO or waybill number")
    origin: str | None = None
    destination: str | None = None
    autostart: bool = Field(default=True, description="[[shipments]] only: start with the agent unless already run")

    @model_validator(mode="after")
    def _consistent(self) -> ShipmentSpec:
        problems = []
        if len(set(self.sensors)) != len(self.sensors):
            problems.append("sensors: a sensor is listed twice")
        unknown = sorted(set(self.profiles) - set(self.sensors))
        if unknown:
            problems.append(f"profiles: not sensors of this shipment: {', '.join(unknown)}")
        for part in (self.stability, self.freeze_thaw):
            extra = sorted(set(part.sensors or ()) - set(self.sensors)) if part is not None else []
            if extra:
                problems.append(f"{type(part).__name__}: not sensors of this shipment: {', '.join(extra)}")
        names = [leg.name for leg in self.legs]
        if len(set(names)) != len(names):
            problems.append("legs: two legs have the same name")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def profile_of(self, sensor_id: str, default: str | None = None) -> str | None:
        """The rule profile a sensor is judged by in this shipment."""
        return self.profiles.get(sensor_id) or self.profile or default


class ShipmentsConfig(_Model):
    """What the lead hooks into ``agent.config.Config`` as ``shipments: list[ShipmentSpec]``."""

    shipments: list[ShipmentSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> ShipmentsConfig:
        ids = [s.id for s in self.shipments]
        if len(set(ids)) != len(ids):
            raise ValueError("two [[shipments]] have the same id")
        owner: dict[str, str] = {}
        for s in self.shipments:
            for sid in s.sensors:
                if sid in owner and s.autostart and next(x for x in self.shipments if x.id == owner[sid]).autostart:
                    raise ValueError(f"sensor {sid!r} is in shipments {owner[sid]!r} and {s.id!r}, both autostart")
                owner.setdefault(sid, s.id)
        return self
