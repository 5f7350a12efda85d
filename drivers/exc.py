"""The coldgate exception tree.

The root lives here, in :mod:`drivers`, because ``drivers`` is the lowest layer and must
not import ``agent``; :mod:`agent.exc` re-exports it and adds the agent's own phases::

    ColdgateError                  root of everything coldgate raises on purpose
    ├── DriverError                a driver, by lifecycle phase (carries ``driver``)
    │   ├── DriverUnavailable      cannot open: device absent, permission denied, no adapter
    │   ├── DriverIOError          was open, then failed: unplugged, read error, silence
    │   └── DecodeError            bytes that are not the format (counted, never fatal)
    ├── ConfigError                agent.exc: a config file is invalid (carries every problem)
    │   └── ConfigRefused          valid, but refused by the fleet policy (carries ``reason``)
    ├── IdentityError              agent.exc: the gateway's own signing key
    ├── StoreError                 agent.exc: the local store
    │   └── StoreFull              the disk quota or the disk itself is full
    ├── ControlError               agent.exc: the control socket between CLI and agent
    │   ├── AgentNotRunning        nothing answers (no agent, or a stale socket)
    │   ├── AgentNotAnswering      accepted, but no answer in time (frozen, overloaded)
    │   └── ControlRefused         the agent refused the request (carries ``kind``)
    ├── ShipmentError              agent.exc: a shipment command (carries ``shipment``)
    │   └── SensorBusy             a sensor already belongs to another active shipment
    └── SyncError                  agent.exc: the uplink (carries ``status``, ``retry_after``)
        ├── SyncRejected           400/422: the batch is malformed for this server
        ├── AuthRefused            401/403: credentials refused
        ├── SyncTooLarge           413: split and retried
        └── SyncTransient          408/429/5xx, network errors, timeouts

Library errors (``serial.SerialException``, ``OSError``, ``BleakError``, pymodbus
exceptions) are translated into these once, at the edge where they enter.
"""

from __future__ import annotations


class ColdgateError(Exception):
    """Root of every error coldgate raises on purpose."""


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


class DriverIOError(DriverError):
    """The device was open and then failed (unplugged, read error, gone silent)."""


class DecodeError(ColdgateError):
    """Bytes that are not valid for the format. Drivers count these; they are never fatal."""
