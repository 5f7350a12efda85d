"""ASCII line loggers: instruments that stream one text line per measurement.

The line format is defined in the config, either

``format = "regex"``
    a regular expression with named groups (``pattern``), searched in each line, or
``format = "csv"``
    delimited columns, referred to by name (``columns``) or by 0-based index,

and each ``[[drivers.fields]]`` maps one group or column to a sensor, quantity and unit,
with an optional ``scale`` and ``offset`` and the texts that mean "not available"
(``invalid = ["----", "ERR"]``), which are left out rather than recorded.

An optional checksum at the end of the line is checked and removed before the line is
parsed: ``checksum = "nmea"`` is ``[$]…*HH`` (XOR of the bytes between ``$`` and ``*``),
``checksum = "crc16-xmodem"`` is ``…*HHHH`` (CRC-16/XMODEM of everything before ``*``).
A line that fails its checksum, does not match, or is not text is counted and logged at
a limited rate; a value that is not a number is counted and the rest of the line is kept.

:func:`compile_format` and :func:`parse_line` are pure, for tests and benchmarks.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, model_validator

from drivers.base import Options, Reading
from drivers.checksums import ChecksumError, crc16_xmodem, nmea_xor
from drivers.exc import DecodeError
from drivers.serialport import LineDriver, LineOptions


class AsciiField(Options):
    """One value in the line, and the reading it becomes."""

    source: str | int = Field(description="named group (regex), or column name or 0-based index (csv)")
    sensor_id: str = Field(min_length=1)
    quantity: str = Field(min_length=1, description="docs/protocol.md quantity, e.g. temperature")
    unit: str = Field(min_length=1, description="SenML unit, e.g. Cel")
    scale: float = Field(default=1.0, description="value = number * scale + offset")
    offset: float = 0.0
    invalid: list[str] = Field(default_factory=list, description="texts that mean 'not available'")


class AsciiOptions(LineOptions):
    """Options of an ``ascii`` driver."""

    format: Literal["regex", "csv"]
    pattern: str | None = Field(default=None, description="regex with named groups (format = regex)")
    delimiter: str = Field(default=",", min_length=1, max_length=1, description="column separator (format = csv)")
    columns: list[str] = Field(default_factory=list, description="column names (format = csv)")
    fields: list[AsciiField] = Field(min_length=1)
    checksum: Literal["none", "nmea", "crc16-xmodem"] = "none"
    skip_prefixes: list[str] = Field(default_factory=list, description="lines starting so are ignored (headers)")
    max_line: int = Field(default=1024, ge=16, le=65536, description="longer lines are counted and dropped")

    @model_validator(mode="after")
    def _check(self) -> AsciiOptions:
        compile_format(self)  # raises ValueError with the reason
        return self


@dataclass(frozen=True)
class _Target:
    key: str | int  # group name or column index
    sensor_id: str
    quantity: str
    unit: str
    scale: float
    offset: float
    invalid: frozenset[str]


@dataclass(frozen=True)
class LineFormat:
    """A compiled line format (see :func:`compile_format`)."""

    kind: str
    regex: re.Pattern[str] | None
    delimiter: str
    checksum: str
    skip_prefixes: tuple[str, ...]
    targets: tuple[_Target, ...]
    min_columns: int


def compile_format(opts: AsciiOptions) -> LineFormat:
    """Check and compile the format of ``opts``; raise ValueError saying what is wrong."""
    regex = None
    targets = []
    min_columns = 0
    if opts.format == "regex":
        if not opts.pattern:
            raise ValueError("format 'regex' needs a pattern")
        try:
            regex = re.compile(opts.pattern)
        except re.error as exc:
            raise ValueError(f"pattern does not compile: {exc}") from exc
        for f in opts.fields:
            if str(f.source) not in regex.groupindex:
                raise ValueError(f"field source {f.source!r} is not a named group of the pattern")
            targets.append(_target(f, str(f.source)))
    else:
        for f in opts.fields:
            if isinstance(f.source, int) or str(f.source).isdigit():
                idx = int(f.source)
            elif f.source in opts.columns:
                idx = opts.columns.index(str(f.source))
            else:
                raise ValueError(f"field source {f.source!r} is neither a column name nor an index")
            min_columns = max(min_columns, idx + 1)
            targets.append(_target(f, idx))
    return LineFormat(
        opts.format, regex, opts.delimiter, opts.checksum, tuple(opts.skip_prefixes), tuple(targets), min_columns
    )


def _target(f: AsciiField, key: str | int) -> _Target:
    return _Target(key, f.sensor_id, f.quantity, f.unit, f.scale, f.offset, frozenset(s.strip() for s in f.invalid))


def strip_checksum(line: str, kind: str) -> str:
    """Check the line's checksum and return the line without it (nor NMEA's ``$``)."""
    if kind == "none":
        return line
    star = line.rfind("*")
    if star < 0:
        raise ChecksumError("no checksum")
    body, given = line[:star], line[star + 1 :].strip()
    try:
        raw = body.encode("ascii")
        value = int(given, 16)
    except (UnicodeEncodeError, ValueError) as exc:
        raise ChecksumError(f"unreadable checksum {given[:8]!r}") from exc
    if kind == "nmea":
        if body[:1] in ("$", "!"):
            body, raw = body[1:], raw[1:]
        if len(given) != 2 or value != nmea_xor(raw):
            raise ChecksumError(f"checksum {given[:8]} != {nmea_xor(raw):02X}")
    else:
        if len(given) != 4 or value != crc16_xmodem(raw):
            raise ChecksumError(f"checksum {given[:8]} != {crc16_xmodem(raw):04X}")
    return body


def parse_line(line: str, fmt: LineFormat, bad_values: list[str] | None = None) -> list[Reading]:
    """The readings of one line. Raises DecodeError (ChecksumError) for a line that is unusable.

    A single value that is not a number is left out and described in ``bad_values``.
    """
    line = line.strip()
    if not line or (fmt.skip_prefixes and line.startswith(fmt.skip_prefixes)):
        return []
    payload = strip_checksum(line, fmt.checksum)
    values: Any
    if fmt.regex is not None:
        m = fmt.regex.search(payload)
        if m is None:
            raise DecodeError(f"line does not match the pattern: {payload[:60]!r}")
        values = m.groupdict()
    else:
        if '"' in payload:  # quoted columns: let csv handle them (the plain split is faster)
            try:
                values = next(csv.reader([payload], delimiter=fmt.delimiter))
            except (csv.Error, StopIteration) as exc:
                raise DecodeError(f"not CSV: {exc}") from exc
        else:
            values = payload.split(fmt.delimiter)
        if len(values) < fmt.min_columns:
            raise DecodeError(f"{len(values)} columns, at least {fmt.min_columns} expected: {payload[:60]!r}")
    out = []
    for t in fmt.targets:
        text = values[t.key]
        if text is None:  # an optional group that did not take part
            continue
        text = text.strip()
        if not text or text in t.invalid:
            continue
        try:
            number = float(text)
        except ValueError:
            if bad_values is not None:
                bad_values.append(f"{t.sensor_id}/{t.quantity}: {text[:20]!r}")
            continue
        value = number * t.scale + t.offset if (t.scale != 1.0 or t.offset) else number
        if not math.isfinite(value):
            if bad_values is not None:
                bad_values.append(f"{t.sensor_id}/{t.quantity}: {text[:20]!r}")
            continue
        out.append(Reading(t.sensor_id, t.quantity, round(value, 9), t.unit))
    return out


class AsciiDriver(LineDriver):
    """An instrument streaming text lines (see the module docstring)."""

    type_name = "ascii"
    Options = AsciiOptions
    options: AsciiOptions

    def __init__(self, name: str, options: AsciiOptions) -> None:
        super().__init__(name, options)
        self.format = compile_format(options)

    def _read(self, timeout: float) -> Iterable[Reading]:
        assert self._lines is not None
        out: list[Reading] = []
        counters = self.status.counters
        bad: list[str] = []
        for raw in self._lines.read_lines(timeout):
            counters["lines"] += 1
            out += self._decode(raw, lambda line: parse_line(line, self.format, bad)) or []
        if bad:
            counters["bad_values"] += len(bad)
            self.noisy.warning("bad_values", "%s: values that are not numbers: %s", self.name, "; ".join(bad[:3]))
        return out
