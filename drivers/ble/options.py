"""The ``[[drivers]]`` keys of a ``type = "ble"`` driver: the schema, bounds and defaults.

Checked when the config loads (``coldgate config check``), so a gateway never starts a
BLE driver that cannot work as configured: a ``theengs`` sensor without Theengs Decoder
installed, a sensor that cannot be matched, passive scanning for models it cannot hear.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from drivers.base import MISSING_AFTER_S, Options
from drivers.ble.common import normalize_mac
from drivers.fields import MAX_SECONDS, MIN_PERIOD_S

_ADAPTER = re.compile(r"^hci\d{1,2}$")


class BleSensor(Options):
    """One BLE sensor, picked out of the air by its MAC, its advertised name or its key."""

    sensor_id: str = Field(min_length=1, description="sensor id its readings carry")
    mac: str | None = Field(default=None, description="advertiser address, AA:BB:CC:DD:EE:FF")
    name: str | None = Field(default=None, min_length=1, max_length=64,
                             description="advertised local name (BTHome device name, the name Theengs reads)")
    match: Literal["mac", "name", "key"] | None = Field(
        default=None,
        description="how the sensor is recognised: mac, name (survives an address change) or key "
        "(an encrypted frame that verifies under its bindkey); default: mac if given, else name, else key",
    )
    format: Literal["auto", "bthome", "ruuvi", "atc", "theengs"] = Field(
        default="auto",
        description="payload format; auto = BTHome, Ruuvi or ATC/pvvx, whichever the advertisement holds; "
        "theengs = Theengs Decoder (any model it knows; needs coldgate[theengs])",
    )
    bindkey: SecretStr | None = Field(
        default=None, description="encryption key (BTHome, pvvx/ATC encrypted), 32 hex digits (secret)"
    )

    @field_validator("mac")
    @classmethod
    def _mac(cls, v: str | None) -> str | None:
        return None if v is None else normalize_mac(v)

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

    @model_validator(mode="after")
    def _identity(self) -> BleSensor:
        match = self.match or ("mac" if self.mac else "name" if self.name else "key" if self.bindkey else None)
        if match is None:
            raise ValueError("a BLE sensor needs a mac, a name or a bindkey to be recognised by")
        needs = {"mac": self.mac, "name": self.name, "key": self.bindkey}[match]
        if needs is None:
            raise ValueError(f"match = {match!r} needs the sensor's {'bindkey' if match == 'key' else match}")
        if match == "key" and self.format in ("ruuvi", "theengs"):
            raise ValueError(f"match = 'key' needs an encrypted format (bthome, atc), not {self.format!r}")
        object.__setattr__(self, "match", match)
        return self


class BleOptions(Options):
    """The ``[[drivers]]`` keys of a ``type = "ble"`` driver."""

    adapter: str | None = Field(default=None, description="BlueZ adapter, e.g. hci0; default: the system's default")
    adapters: list[str] = Field(
        default_factory=list,
        description="scan on several adapters at once (e.g. [\"hci0\", \"hci1\"]); each is watched and recovered on its own",
    )
    scanning_mode: Literal["auto", "passive", "active"] = Field(
        default="auto", description="auto = passive where BlueZ allows it (and no sensor needs active), else active"
    )
    sensors: list[BleSensor] = Field(min_length=1)
    silence_timeout_s: float = Field(
        default=120.0, ge=0.1, le=MAX_SECONDS, description="watchdog: an adapter silent this long is stalled: restart (and recover) it"
    )
    missing_after_s: float = Field(default=MISSING_AFTER_S, ge=MIN_PERIOD_S, le=MAX_SECONDS, description="mark a sensor missing after this long unheard")
    queue_size: int = Field(default=10_000, ge=1, le=10_000_000, description="decoded advertisements held for the agent")
    recovery: bool = Field(
        default=True, description="recover a stalled or failing adapter: BlueZ power cycle, then controller reset"
    )
    reset_backoff_s: float = Field(default=30.0, ge=MIN_PERIOD_S, le=MAX_SECONDS, description="wait after a reset before the next, doubling")
    reset_backoff_cap_s: float = Field(default=1800.0, ge=MIN_PERIOD_S, le=MAX_SECONDS, description="longest wait between two resets")
    adapter_check_s: float = Field(
        default=30.0, ge=MIN_PERIOD_S, le=MAX_SECONDS, description="ask BlueZ this often whether each adapter is still powered and discovering"
    )
    counter_restart_below: int = Field(
        default=100, ge=1, le=2**31,
        description="an encrypted counter that falls to below this is a device restart (bthome-ble's rule)",
    )
    counter_max_rate_hz: float = Field(
        default=1.0, ge=0, le=1000,
        description="the fastest a device's counter can rise: widens the restart window by the time it was unheard",
    )
    backend: Literal["bleak", "fake"] = Field(
        default="bleak", description="bleak = the system radio; fake = the in-process fake radio (benches, tests)"
    )
    fake_air: str = Field(default="default", description="backend = fake: the name of the fake radio to listen on")
    fake_feed: str | None = Field(
        default=None, min_length=1, max_length=107,
        description="backend = fake: a Unix datagram socket the fake radio also takes advertisements and faults "
        "from, sent by another process (drivers.ble.fake.feed); for benches and process tests",
    )

    @field_validator("adapter")
    @classmethod
    def _adapter(cls, v: str | None) -> str | None:
        if v is not None and not _ADAPTER.match(v):
            raise ValueError(f"adapter {v!r}: expected a BlueZ adapter name such as hci0")
        return v

    @field_validator("adapters")
    @classmethod
    def _adapters(cls, v: list[str]) -> list[str]:
        for name in v:
            if not _ADAPTER.match(name):
                raise ValueError(f"adapter {name!r}: expected a BlueZ adapter name such as hci0")
        if len(set(v)) != len(v):
            raise ValueError("an adapter is listed twice")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> BleOptions:
        if self.adapter and self.adapters:
            raise ValueError("give adapter or adapters, not both")
        if self.fake_feed is not None and self.backend != "fake":
            raise ValueError("fake_feed feeds the fake radio: it needs backend = 'fake'")
        for attr in ("mac", "name", "sensor_id"):
            seen: set[str] = set()
            for s in self.sensors:
                value = getattr(s, attr)
                if value is None:
                    continue
                if value in seen:
                    raise ValueError(f"two BLE sensors with {attr} {value!r}")
                seen.add(value)
        if any(s.format == "theengs" for s in self.sensors):
            from drivers.ble import theengs

            if not theengs.available():
                raise ValueError(theengs.INSTALL_HINT)
            if self.scanning_mode == "passive":
                raise ValueError(
                    "scanning_mode = 'passive' hears only BTHome, ATC/pvvx and Ruuvi payloads: "
                    "a theengs sensor needs 'auto' or 'active'"
                )
        return self

    def adapter_names(self) -> list[str | None]:
        """The adapters to scan on (None: the system's default)."""
        return list(self.adapters) if self.adapters else [self.adapter]

    def needs_active(self) -> bool:
        """Passive (or-pattern) scanning would miss a sensor: Theengs models, names in scan responses."""
        return any(s.format == "theengs" or s.match == "name" for s in self.sensors)
