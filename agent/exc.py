"""The agent's errors. The whole tree is drawn in :mod:`drivers.exc`, where the root lives."""

from __future__ import annotations

from dataclasses import dataclass

from drivers.exc import ColdgateError, DecodeError, DriverError, DriverIOError, DriverUnavailable

__all__ = [
    "AgentNotAnswering",
    "AgentNotRunning",
    "AuthRefused",
    "ColdgateError",
    "ConfigError",
    "ConfigProblem",
    "ConfigRefused",
    "ControlError",
    "ControlRefused",
    "DecodeError",
    "DriverError",
    "DriverIOError",
    "DriverUnavailable",
    "IdentityError",
    "SensorBusy",
    "ShipmentError",
    "StoreError",
    "StoreFull",
    "SyncError",
    "SyncRejected",
    "SyncTooLarge",
    "SyncTransient",
]


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a config: where (a dotted path), what, and a hint."""

    path: str
    message: str
    hint: str | None = None

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


class SyncTooLarge(SyncError):
    """413: the batch is too large for the server; the uplink splits it (one record: refused)."""


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
