"""NMEA 0183 GPS receivers (u-blox, SiRF, MediaTek, Quectel, ST Teseo) on a serial port.

Three layers, the first two pure:

:func:`parse_sentence`
    one line -> a :class:`Sentence` (GGA, RMC, GSA or VTG from talkers GP/GN/GL/GA/GB),
    ``None`` for a valid sentence we do not use (GSV, proprietary ``$P…``), or
    :class:`DecodeError` (:class:`~drivers.checksums.ChecksumError` for a bad or missing
    checksum). pynmea2 splits the sentence and names its fields; the values are checked
    here, because a receiver in a cold start sends syntactically valid nonsense.
:class:`NmeaTracker`
    groups the sentences of one receiver epoch (same UTC time of day) and, when an epoch
    is complete, turns it into readings, at most once per ``interval_s``. A position is
    recorded only when every sentence of the epoch agrees there is a real fix: GGA quality
    1–5, RMC status ``A`` with a mode other than N (none), E (estimated / dead reckoning),
    M (manual) or S (simulated), and not every GSA saying "no fix".
:class:`NmeaDriver`
    the serial port, the bounded line reader and the counters.

Readings (docs/protocol.md): latitude ``lat``, longitude ``lon``, altitude ``m`` (above mean
sea level), speed ``m/s``, gnss_fix ``count`` (the GGA quality), hdop ``count``,
satellites ``count``. Fix quality and satellites in use are recorded even without a fix
(they say *why* there is no position); position, altitude, speed and HDOP only with one.
Readings carry no ``ts``: the agent stamps them on arrival (a cold-starting receiver
reports 1980). The receiver's own UTC time rides in ``extra["gps_time"]`` for the driver's
and the decode command's use; it is not recorded.
"""

from __future__ import annotations

import builtins
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

import pynmea2
from pydantic import Field

from drivers.base import Reading
from drivers.checksums import ChecksumError, nmea_xor
from drivers.exc import DecodeError
from drivers.fields import MAX_SECONDS
from drivers.serialport import LineDriver, LineOptions

KNOT_MPS = 0.514444
DEFAULT_TALKERS = ("GP", "GN", "GL", "GA", "GB")
USED_TYPES = frozenset({"GGA", "RMC", "GSA", "VTG"})
#: GGA quality values that are a real fix (6 estimated, 7 manual, 8 simulation are not).
FIX_QUALITIES = frozenset({1, 2, 3, 4, 5})
#: RMC/VTG mode indicators that mean "not a real fix".
BAD_MODES = frozenset({"N", "E", "M", "S"})

#: Longest line the parser looks at. NMEA 0183 allows 82 characters; some receivers send
#: longer proprietary sentences. The serial reader drops longer lines before they get here
#: (``max_line``, at most this); :func:`parse_sentence` refuses them too.
MAX_SENTENCE = 1024
_HEX = frozenset("0123456789ABCDEFabcdef")
_ADDRESS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_DM = re.compile(r"^(\d{1,3})(\d{2}(?:\.\d+)?)$")


@dataclass(frozen=True, slots=True)
class Sentence:
    """What one sentence says, with values checked. ``None`` = field empty."""

    talker: str
    type: str  # GGA | RMC | GSA | VTG
    time: str | None = None  # hhmmss[.ss], as sent (GGA, RMC)
    date: str | None = None  # ddmmyy (RMC)
    lat: float | None = None
    lon: float | None = None
    quality: int | None = None  # GGA fix quality
    satellites: int | None = None  # GGA satellites in use
    hdop: float | None = None  # GGA or GSA
    altitude: float | None = None  # GGA, metres above MSL
    status: str | None = None  # RMC A | V
    mode: str | None = None  # RMC / VTG FAA mode indicator
    speed_kn: float | None = None  # RMC / VTG
    fix_type: int | None = None  # GSA 1 none, 2 2D, 3 3D
    #: fields that were well-formed but impossible (a cold-start 89°60'N), left out as None
    invalid: tuple[str, ...] = ()


def parse_sentence(
    line: str, *, talkers: Iterable[str] = DEFAULT_TALKERS, require_checksum: bool = True
) -> Sentence | None:
    """Parse one NMEA line (see the module docstring). Never raises anything but DecodeError.

    Linear in the line's length: the frame is cut with ``str`` methods, not a regex (the
    regex of 0.1.0 backtracked quadratically on whitespace: 6-10 s for a 32 KiB line, under
    the GIL), and pynmea2 only ever sees a frame already checked, whose own regex then
    matches without backtracking.
    """
    body, cs = _frame(line)
    head = body.split(",", 1)[0]
    if head.startswith("P"):  # proprietary ($PMTK…, $PSTM…, $POLYN… - the last has no checksum)
        return None
    if len(head) != 5:
        raise DecodeError(f"bad sentence address {head[:8]!r}")
    talker, kind = head[:2], head[2:]
    used = kind in USED_TYPES and talker in talkers
    if cs is not None:
        # checked on every sentence that carries one: the count is the line's health
        computed = nmea_xor(body.encode("ascii", "replace"))
        if int(cs, 16) != computed:
            raise ChecksumError(f"{head} checksum {cs.upper()} != {computed:02X}")
    elif used and require_checksum:
        raise ChecksumError(f"{head} without a checksum")
    if not used:
        return None  # a valid sentence we do not use (GSV, GLL, ZDA, …)
    try:
        msg = pynmea2.parse("$" + body, check=False)
    except (pynmea2.ParseError, ValueError, TypeError, IndexError, AttributeError) as exc:
        raise DecodeError(f"{head}: {exc}") from exc
    f = _Fields(msg)
    try:
        if kind == "GGA":
            return Sentence(
                talker,
                kind,
                time=f.time("timestamp"),
                lat=f.coord("lat", "lat_dir", 90),
                lon=f.coord("lon", "lon_dir", 180),
                quality=f.int("gps_qual", 0, 9),
                satellites=f.int("num_sats", 0, 99),
                hdop=f.float("horizontal_dil", 0, 100),
                altitude=f.float("altitude", -1000, 100_000),
                invalid=tuple(f.invalid),
            )
        if kind == "RMC":
            return Sentence(
                talker,
                kind,
                time=f.time("timestamp"),
                date=f.date("datestamp"),
                lat=f.coord("lat", "lat_dir", 90),
                lon=f.coord("lon", "lon_dir", 180),
                status=f.flag("status", "AV"),
                mode=f.flag("mode_indicator", "ADEFMNPRSV"),
                speed_kn=f.float("spd_over_grnd", 0, 10_000),
                invalid=tuple(f.invalid),
            )
        if kind == "GSA":
            return Sentence(talker, kind, fix_type=f.int("mode_fix_type", 1, 3), hdop=f.float("hdop", 0, 100))
        # VTG
        return Sentence(
            talker,
            kind,
            speed_kn=f.float("spd_over_grnd_kts", 0, 10_000),
            mode=f.flag("faa_mode", "ADEFMNPRSV"),
        )
    except (ValueError, TypeError) as exc:
        raise DecodeError(f"{head}: {exc}") from exc


def _frame(line: str) -> tuple[str, str | None]:
    """``$BODY[*HH]`` -> (BODY, HH or None); DecodeError for anything else. Linear."""
    if len(line) > MAX_SENTENCE:
        raise DecodeError(f"line of {len(line)} characters; NMEA 0183 sentences have at most 82")
    s = line.strip()
    body, star, cs = s[1:].partition("*")
    if not s.startswith("$") or len(body) < 2 or body[0] not in _ADDRESS or body[1] not in _ADDRESS or (
            star and (len(cs) != 2 or cs[0] not in _HEX or cs[1] not in _HEX)):
        raise DecodeError(f"not an NMEA sentence: {line[:40]!r}")
    return body, (cs if star else None)


class _Fields:
    """Raw field strings of a pynmea2 sentence by name, parsed and range-checked here."""

    def __init__(self, msg: Any) -> None:
        self._msg = msg
        self.invalid: list[str] = []

    def raw(self, name: str) -> str:
        i = type(self._msg).name_to_idx[name]
        data = self._msg.data
        return data[i].strip() if i < len(data) else ""

    def float(self, name: str, lo: float, hi: float) -> float | None:
        s = self.raw(name)
        if not s:
            return None
        v = float(s)
        if not (lo <= v <= hi) or not math.isfinite(v):
            raise ValueError(f"{name} {s!r} out of range")
        return v

    def int(self, name: str, lo: int, hi: int) -> int | None:
        s = self.raw(name)
        if not s:
            return None
        v = int(s, 10)
        if not lo <= v <= hi:
            raise ValueError(f"{name} {s!r} out of range")
        return v

    def flag(self, name: str, allowed: str) -> str | None:
        s = self.raw(name).upper()
        if not s:
            return None
        if len(s) != 1 or s not in allowed:
            raise ValueError(f"{name} {s!r} unknown")
        return s

    def time(self, name: str) -> str | None:
        s = self.raw(name)
        if not s:
            return None
        if not re.fullmatch(r"\d{6}(\.\d+)?", s) or int(s[0:2]) > 23 or int(s[2:4]) > 59 or int(s[4:6]) > 60:
            raise ValueError(f"time {s!r}")
        return s

    def date(self, name: str) -> str | None:
        s = self.raw(name)
        if not s:
            return None
        if not re.fullmatch(r"\d{6}", s):
            raise ValueError(f"date {s!r}")
        return s

    def coord(self, name: str, hemi_name: str, max_deg: builtins.int) -> builtins.float | None:
        """ddmm.mmmm / dddmm.mmmm plus N/S/E/W -> signed decimal degrees."""
        s, hemi = self.raw(name), self.raw(hemi_name).upper()
        if not s:
            return None
        m = _DM.match(s)
        if m is None:
            raise ValueError(f"{name} {s!r} is not ddmm.mmmm")
        deg, minutes = int(m.group(1)), float(m.group(2))
        value = deg + minutes / 60.0
        if minutes >= 60.0 or value > max_deg:
            # well-formed but impossible: receivers in a cold start send 8960.0000 (89°60'),
            # in a sentence that is otherwise worth having (it says "no fix")
            self.invalid.append(name)
            return None
        if hemi in ("S", "W"):
            return -value
        if hemi in ("N", "E"):
            return value
        raise ValueError(f"{hemi_name} {hemi!r}")


@dataclass
class Epoch:
    """The sentences of one receiver epoch (one UTC time of day)."""

    time: str | None = None
    gga: Sentence | None = None
    rmc: Sentence | None = None
    vtg: Sentence | None = None
    gsa: list[Sentence] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.gga is None and self.rmc is None

    def add(self, s: Sentence) -> None:
        if s.type == "GGA":
            self.gga = s
        elif s.type == "RMC":
            self.rmc = s
        elif s.type == "VTG":
            self.vtg = s
        elif len(self.gsa) < 8:  # one per constellation; bounded all the same
            self.gsa.append(s)
        if s.time is not None:
            self.time = s.time

    def has_fix(self) -> bool:
        """Whether every sentence of the epoch agrees there is a real position fix."""
        gga, rmc = self.gga, self.rmc
        if gga is None and rmc is None:
            return False
        if gga is not None and gga.quality not in FIX_QUALITIES:
            return False
        if rmc is not None and (rmc.status != "A" or (rmc.mode is not None and rmc.mode in BAD_MODES)):
            return False
        types = [g.fix_type for g in self.gsa if g.fix_type is not None]
        if types and all(t == 1 for t in types):
            return False
        if self.vtg is not None and self.vtg.mode in BAD_MODES:
            return False
        src = gga if gga is not None and gga.lat is not None else rmc
        return src is not None and src.lat is not None and src.lon is not None

    def readings(self, sensor_id: str) -> list[Reading]:
        """The readings this epoch supports (see the module docstring)."""
        if self.empty:
            return []
        extra = self._extra()
        out: list[Reading] = []
        gga, rmc = self.gga, self.rmc
        if self.has_fix():
            src = gga if gga is not None and gga.lat is not None else rmc
            assert src is not None and src.lat is not None and src.lon is not None
            out.append(Reading(sensor_id, "latitude", round(src.lat, 8), "lat", extra=extra))
            out.append(Reading(sensor_id, "longitude", round(src.lon, 8), "lon", extra=extra))
            if gga is not None and gga.altitude is not None:
                out.append(Reading(sensor_id, "altitude", gga.altitude, "m", extra=extra))
            knots = rmc.speed_kn if rmc is not None and rmc.speed_kn is not None else None
            if knots is None and self.vtg is not None:
                knots = self.vtg.speed_kn
            if knots is not None:
                out.append(Reading(sensor_id, "speed", round(knots * KNOT_MPS, 4), "m/s", extra=extra))
            hdop = gga.hdop if gga is not None and gga.hdop is not None else None
            if hdop is None:
                hdop = next((g.hdop for g in self.gsa if g.hdop is not None), None)
            if hdop is not None:
                out.append(Reading(sensor_id, "hdop", hdop, "count", extra=extra))
        if gga is not None and gga.quality is not None:
            out.append(Reading(sensor_id, "gnss_fix", gga.quality, "count", extra=extra))
        if gga is not None and gga.satellites is not None:
            out.append(Reading(sensor_id, "satellites", gga.satellites, "count", extra=extra))
        return out

    def _extra(self) -> dict[str, Any]:
        t = self.time
        d = self.rmc.date if self.rmc is not None else None
        if t is None:
            return {}
        if d is None:
            return {"gps_time_of_day": t}
        try:
            dt = datetime.strptime(d + t[:6], "%d%m%y%H%M%S").replace(tzinfo=UTC)
        except ValueError:
            return {"gps_time_of_day": t}
        frac = t[6:]
        return {"gps_time": dt.strftime("%Y-%m-%dT%H:%M:%S") + (frac[:4] if frac else "") + "Z"}


class NmeaTracker:
    """Sentences in, readings out: one epoch at a time, at most once per ``interval_s``."""

    def __init__(self, sensor_id: str, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.sensor_id = sensor_id
        self.interval_s = interval_s
        self.clock = clock
        self.epoch = Epoch()
        self.last_recorded: float | None = None
        self.last_fix: bool | None = None

    def feed(self, s: Sentence) -> list[Reading]:
        """Add a sentence; return the readings of the epoch it completes, if due."""
        out: list[Reading] = []
        if s.time is not None and self.epoch.time is not None and s.time != self.epoch.time:
            out = self.flush()
        self.epoch.add(s)
        return out

    def flush(self) -> list[Reading]:
        """Complete the current epoch (a new one began, or the line went quiet)."""
        epoch, self.epoch = self.epoch, Epoch()
        if epoch.empty:
            return []
        self.last_fix = epoch.has_fix()
        now = self.clock()
        if self.last_recorded is not None and now - self.last_recorded < self.interval_s:
            return []
        readings = epoch.readings(self.sensor_id)
        if readings:
            self.last_recorded = now
        return readings

    def reset(self) -> None:
        """Forget a half-received epoch (after a reconnect)."""
        self.epoch = Epoch()


def decode_nmea(line: str, *, sensor_id: str = "gps") -> list[Reading]:
    """The readings the driver would record for one sentence on its own (``coldgate decode nmea``)."""
    s = parse_sentence(line, require_checksum=False)
    if s is None:
        return []
    tracker = NmeaTracker(sensor_id, interval_s=0.0)
    tracker.feed(s)
    return tracker.flush()


class NmeaOptions(LineOptions):
    """Options of an ``nmea`` driver."""

    sensor_id: str = Field(default="gps", min_length=1, description="sensor id the readings carry")
    interval_s: float = Field(
        default=60.0, ge=0, le=MAX_SECONDS, description="seconds between recorded positions; 0 = every epoch")
    talkers: list[Annotated[str, Field(pattern=r"^[A-Z]{2}$")]] = Field(
        default=list(DEFAULT_TALKERS), min_length=1, description="talker ids whose sentences are used"
    )
    require_checksum: bool = Field(default=True, description="refuse GGA/RMC/GSA/VTG that carry no checksum")
    max_line: int = Field(
        default=512, ge=82, le=MAX_SENTENCE,
        description="longer lines are counted and dropped (NMEA 0183: 82; slack for proprietary sentences)")


class NmeaDriver(LineDriver):
    """An NMEA 0183 receiver on a serial port (see the module docstring)."""

    type_name = "nmea"
    Options = NmeaOptions
    options: NmeaOptions

    def __init__(self, name: str, options: NmeaOptions) -> None:
        super().__init__(name, options)
        self.tracker = NmeaTracker(options.sensor_id, options.interval_s)
        self._talkers = frozenset(options.talkers)

    def _open(self) -> None:
        super()._open()
        self.tracker.reset()

    def _read(self, timeout: float) -> Iterable[Reading]:
        assert self._lines is not None
        lines = self._lines.read_lines(timeout)
        if not lines:
            return self._recorded(self.tracker.flush())  # quiet line: the last epoch is complete
        out: list[Reading] = []
        counters = self.status.counters
        for raw in lines:
            counters["lines"] += 1
            s = self._decode(raw, self._parse)
            if s is None:
                continue
            counters["sentences"] += 1
            if s.invalid:
                counters["invalid_fields"] += len(s.invalid)
            out += self.tracker.feed(s)
        return self._recorded(out)

    def _parse(self, line: str) -> Any:
        s = parse_sentence(line, talkers=self._talkers, require_checksum=self.options.require_checksum)
        if s is None:
            self.status.counters["ignored"] += 1
        return s

    def _recorded(self, readings: list[Reading]) -> list[Reading]:
        if self.tracker.last_fix is not None:
            self.status.details["fix"] = self.tracker.last_fix
        if any(r.quantity == "latitude" for r in readings):
            self.status.details["last_position_at"] = time.time()
        return readings

