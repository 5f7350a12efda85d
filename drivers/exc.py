"""The coldgate exception tree: every error class, drawn here and defined here.

The tree lives in :mod:`drivers` because ``drivers`` is the lowest layer and must not
import ``agent``; :mod:`agent.exc` re-exports it for the agent's modules. Each class
carries the fields a caller needs (never only a message), and is named by the phase it
belongs to. Defining them all in this one module keeps the drawing and the code from
drifting apart (``tests/drivers/test_exc.py`` checks both ways)::

    ColdgateError                  root of everything coldgate raises on purpose
    ├── DriverError                a driver, by lifecycle phase (carries ``driver``)
    │   ├── DriverUnavailable      cannot open: device absent, permission denied, no adapter
    │   │   └── UnknownDriver      no driver of that ``type`` (carries ``type_name``, ``known``)
    │   └── DriverIOError          was open, then failed: unplugged, read error, silence
    ├── DecodeError                bytes that are not the format (counted, never fatal)
    │   ├── ChecksumError          a frame or line whose checksum does not match
    │   ├── WrongKey               an encrypted BLE payload whose MIC fails with the bind key
    │   └── NoKey                  an encrypted BLE payload with no bind key configured
    ├── ConfigError                a config file is invalid (carries ``source``, every ``problems``)
    │   └── ConfigRefused          valid, but refused by the fleet policy (carries ``reason``)
    ├── IdentityError              the gateway's own signing key (``identity.key``)
    ├── StoreError                 the local store
    │   └── StoreFull              the disk quota or the disk itself is full
    ├── ControlError               the control socket between the CLI and the running agent
    │   ├── AgentNotRunning        nothing answers (no agent, or a stale socket)
    │   ├── AgentNotAnswering      accepted, but no answer in time (frozen, overloaded)
    │   └── ControlRefused         the agent refused the request (carries ``kind``)
    ├── ShipmentError              a shipment command (carries ``shipment``)
    │   └── SensorBusy             a sensor already belongs to another active shipment (``sensor_id``, ``holder``)
    ├── ReportError                a trip report cannot be made (no such shipment in the records, …)
    ├── ProtocolError              not what docs/protocol.md says: a key, a public key, an export line
    │   ├── Uncanonical            a value with no RFC 8785 form (also a ``ValueError``)
    │   └── EnvelopeError          an MQTT message that is not a batch envelope (400; carries ``attempt``)
    ├── SyncError                  the uplink (carries ``status``, ``retry_after``)
    │   ├── SyncRejected           400/422: the batch is malformed for this server
    │   ├── AuthRefused            401/403: credentials refused
    │   ├── SyncTooLarge           413: split and retried
    │   └── SyncTransient          408/429/5xx, network errors, timeouts
    ├── ReplayError                ``rules replay``: an unusable CSV (carries ``line``)
    ├── UsageError                 a command line that is not valid, exit 2 (carries ``prog``, ``usage``)
    └── ReceiverError              the reference receiver cannot do what was asked
        ├── StorageUnavailable     its database cannot take a batch now: answered 503, retried
        └── BodyError              a batch request refused (carries ``status``, ``problems``)
            ├── Unparseable        400: not gzip, not JSON
            ├── SchemaViolation    422: JSON, but not a valid batch
            └── TooLarge           413: larger than the receiver takes

Not an error, and never seen outside its module: :class:`NeedsLibrary`, the canonical
JSON fast path's signal to hand a value to ``rfc8785`` (a ``ValueError``).

Library errors (``serial.SerialException``, ``OSError``, ``BleakError``, pymodbus
exceptions, ``sqlite3.Error``) are translated into these once, at the edge where they
enter. The CLI turns any of them into one line (or a JSON object) and an exit code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class ColdgateError(Exception):
    """Root of every error coldgate raises on purpose."""


# -- drivers -----------------------------------------------------------------------------


class DriverError(ColdgateError):
    """A driver failed. ``driver`` names the instance from the config."""

    def __init__(self, message: str, *, driver: str | None = None) -> None:
        super().__init__(message)
        self.driver = driver

    def __str__(self) -> str:
        base = super().__str__()
        return f"{self.driver}: {base}" if self.driver else base


class DriverUnavailable(DriverError):
    """The device cannot be opened now (absent, permission denied, adapter missing)."""


class UnknownDriver(DriverUnavailable):
    """No driver is registered under ``type_name``; ``known`` lists those that are."""

    def __init__(self, message: str, *, type_name: str, known: list[str], driver: str | None = None) -> None:
        super().__init__(message, driver=driver)
        self.type_name = type_name
        self.known = known


class DriverIOError(DriverError):
    """The device was open and then failed (unplugged, read error, gone silent)."""


class DecodeError(ColdgateError):
    """Bytes that are not valid for the format. Drivers count these; they are never fatal."""


class ChecksumError(DecodeError):
    """A frame or line whose checksum does not match (or is missing where required)."""


class WrongKey(DecodeError):
    """An encrypted payload whose MIC does not verify with the configured bind key."""


class NoKey(DecodeError):
    """An encrypted payload for which no bind key is configured."""


# -- the agent ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a config: where (a dotted path), what, and a hint."""

    path: str
    message: str
    hint: str | None = None
    #: a state of the machine that may pass by itself (a filesystem the kernel remounted
    #: read-only): ``coldgate run`` starts anyway, says so and holds what it reads,
    #: where a mistake in the config or the install would only make it fail again
    transient: bool = False

    def __str__(self) -> str:
        text = f"{self.path or '<root>'}: {self.message}"
        return f"{text} ({self.hint})" if self.hint else text


class ConfigError(ColdgateError):
    """A config file is invalid. ``problems`` lists every mistake found, not just the first."""

    def __init__(self, source: str, problems: list[ConfigProblem]) -> None:
        self.source = source
        self.problems = problems
        n = len(problems)
        super().__init__(f"{source}: {n} problem{'s' if n != 1 else ''}")

    def report(self) -> str:
        lines = [f"{self.source}: invalid, {len(self.problems)} problem(s):"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


class ConfigRefused(ConfigError):
    """A valid config the fleet policy refuses: unsigned, signed by a key not trusted, a
    bad signature, a version lower than the running one, a file that rolled back before.
    ``reason`` is one word for events and metrics (``unsigned``, ``bad_signature``,
    ``untrusted_key``, ``downgrade``, ``rolled_back_before``)."""

    def __init__(self, source: str, reason: str, problems: list[ConfigProblem]) -> None:
        super().__init__(source, problems)
        self.reason = reason


class IdentityError(ColdgateError):
    """The gateway's own key (``identity.key``) cannot be made, read or trusted."""


class StoreError(ColdgateError):
    """The local store failed."""


class StoreFull(StoreError):
    """The store's disk quota, or the disk itself, is full."""


class SyncError(ColdgateError):
    """The uplink failed. ``status`` is the HTTP status, if there was a response."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class SyncRejected(SyncError):
    """400/422: the server says this batch is malformed. It is set aside, never dropped."""


class AuthRefused(SyncError):
    """401/403: the server refused the credentials. The agent keeps buffering."""


class SyncTransient(SyncError):
    """408, 429, 5xx, network errors and timeouts: retried with backoff."""


class SyncTooLarge(SyncError):
    """413: the batch is too large for the server; the uplink splits it (one record: refused)."""


class ControlError(ColdgateError):
    """The control channel between the CLI and the running agent."""


class AgentNotRunning(ControlError):
    """Nothing answers on the control socket: no agent runs (or a stale socket)."""


class AgentNotAnswering(ControlError):
    """The agent's socket accepted the connection but no answer came (frozen, overloaded)."""


class ControlRefused(ControlError):
    """The agent answered and refused the request; ``kind`` names its own error class."""

    def __init__(self, message: str, *, kind: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind


class ShipmentError(ColdgateError):
    """A shipment command cannot be carried out (unknown id, wrong state, bad arguments).

    ``shipment`` names the shipment, where there is one.
    """

    def __init__(self, message: str, *, shipment: str | None = None) -> None:
        super().__init__(message)
        self.shipment = shipment


class SensorBusy(ShipmentError):
    """A sensor asked for by a new shipment already belongs to another active one."""

    def __init__(self, sensor_id: str, holder: str, *, shipment: str | None = None) -> None:
        super().__init__(f"sensor {sensor_id!r} already belongs to shipment {holder!r} (stop or cancel it first)",
                         shipment=shipment)
        self.sensor_id = sensor_id
        self.holder = holder


class ReportError(ColdgateError):
    """A report cannot be made (no such shipment in these records, ambiguous id, …)."""


class ProtocolError(ColdgateError):
    """Something is not what the protocol says: an Idempotency-Key, a public key, an export line."""


class Uncanonical(ProtocolError, ValueError):
    """A value with no RFC 8785 form (NaN, an integer beyond 2**53, a non-string key…)."""


class EnvelopeError(ProtocolError, ValueError):
    """An MQTT message that is not a coldgate batch envelope (answered as a 400).

    ``attempt`` is the sender's attempt id, where the envelope got that far.
    """

    def __init__(self, message: str, attempt: str | None = None) -> None:
        super().__init__(message)
        self.attempt = attempt



class ReplayError(ColdgateError):
    """A replay input is unusable. ``line`` is the CSV line, where known."""

    def __init__(self, message: str, *, line: int | None = None) -> None:
        super().__init__(f"line {line}: {message}" if line else message)
        self.line = line


class UsageError(ColdgateError):
    """A command line the CLI refuses (argparse's own error, raised instead of its exit so
    that ``--json`` answers it as JSON too). ``prog`` names the command, ``usage`` is its
    usage line."""

    def __init__(self, message: str, *, prog: str, usage: str = "") -> None:
        super().__init__(message)
        self.prog = prog
        self.usage = usage


# -- the reference receiver --------------------------------------------------------------


class ReceiverError(ColdgateError):
    """The reference receiver cannot do what was asked (no such database, newer schema, …)."""


class StorageUnavailable(ReceiverError):
    """The database cannot take the batch now (down, locked, full): answered 503, retried by the gateway."""


class BodyError(ReceiverError):
    """The request body is refused; ``status`` is the HTTP status to answer with."""

    status = 400

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": str(self)}
        if self.problems:
            out["problems"] = self.problems
        return out


class Unparseable(BodyError):
    """400: the body is not gzip or not JSON."""

    status = 400


class SchemaViolation(BodyError):
    """422: JSON, but not a batch the protocol allows."""

    status = 422


class TooLarge(BodyError):
    """413: the body (decompressed) is larger than the receiver takes."""

    status = 413


# -- signals, not errors -----------------------------------------------------------------


class NeedsLibrary(ValueError):
    """This value needs the library (nesting, big integers, exponent floats, odd keys)."""


__all__ = [
    "AuthRefused",
    "BodyError",
    "ChecksumError",
    "ColdgateError",
    "ConfigError",
    "ConfigProblem",
    "DecodeError",
    "DriverError",
    "DriverIOError",
    "DriverUnavailable",
    "NeedsLibrary",
    "NoKey",
    "ReceiverError",
    "ReplayError",
    "SchemaViolation",
    "StoreError",
    "StoreFull",
    "SyncError",
    "SyncRejected",
    "SyncTooLarge",
    "SyncTransient",
    "TooLarge",
    "UnknownDriver",
    "Unparseable",
    "UsageError",
    "WrongKey",
]
