"""The agent's errors: the one tree, drawn and defined in :mod:`drivers.exc`, re-exported.

The agent's modules import their errors from here; the classes are those of
:mod:`drivers.exc` (the lowest layer, which must not import ``agent``), so a driver's
``DriverUnavailable`` and the agent's are one class. Add a new error there, in the drawing.
"""

from __future__ import annotations

from drivers.exc import (
    AuthRefused,
    BodyError,
    ChecksumError,
    ColdgateError,
    ConfigError,
    ConfigProblem,
    DecodeError,
    DriverError,
    DriverIOError,
    DriverUnavailable,
    NeedsLibrary,
    NoKey,
    ReceiverError,
    ReplayError,
    SchemaViolation,
    StoreError,
    StoreFull,
    SyncError,
    SyncRejected,
    SyncTooLarge,
    SyncTransient,
    TooLarge,
    UnknownDriver,
    Unparseable,
    UsageError,
    WrongKey,
)

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
