"""The configuration schema and its loader.

The pydantic models below *are* the schema: bounds, units and defaults live here and
nowhere else. ``coldgate config schema`` prints them as JSON Schema. Loading a file
reports every problem at once, each with its dotted path and, for an unknown key, a
"did you mean" (after mopidy's config schemas); a fleet engineer fixes a file in one go.

Driver options are validated by each driver's own ``Options`` model (drivers own their
schema; the agent only knows them through :mod:`drivers.registry`).

A config is a pushed, possibly hostile input. Every model is strict
(:class:`drivers.fields.StrictModel`: no coercion, finite and bounded numbers, floors on
loop periods); a file over :data:`MAX_CONFIG_BYTES` or nested deeper than
:data:`MAX_DEPTH` is refused before it is validated; every failure of the loader is a
:class:`ConfigError` with its problems, never a traceback; and no problem message
carries a secret (:func:`mask_value`): the problems go into ``config check`` output,
logs and ``config_rejected`` events sent upstream.

What only the machine can tell (the token file's mode, the certificate files, the store
path, the alarm action's allow-list) is checked by :func:`preflight`, which ``config
check`` and ``coldgate run`` call after loading.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
import types
import typing
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal, Union
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    Strict,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from agent.exc import ConfigError, ConfigProblem
from agent.rules.config import RulesConfig
from agent.secretfile import check_secret_file  # noqa: F401 - agent.config.check_secret_file, as before
from agent.shipment.config import ShipmentsConfig, ShipmentSpec
from drivers import registry
from drivers.exc import DriverUnavailable
from drivers.fields import MAX_SECONDS, MIN_PERIOD_S, STRICT, StrictModel

GATEWAY_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
#: A config version given as text: dotted decimal integers (see agent.fleet.version).
VERSION_PATTERN = r"^[0-9]{1,15}(\.[0-9]{1,15}){0,7}$"
#: A config file larger than this is refused unread (a real one is a few KiB).
MAX_CONFIG_BYTES = 1024 * 1024
#: Tables and arrays nested deeper than this are refused (a real config nests 7 deep).
MAX_DEPTH = 16
#: The largest quota: 1 TiB, in MiB.
MAX_QUOTA_MB = 1024.0 * 1024

#: A filesystem path: TOML has no path type, so a string is taken (strict mode would not).
ConfigPath = Annotated[Path, Strict(False)]


class Model(StrictModel):
    """Base of the agent's config models (see :mod:`drivers.fields`)."""


class StoreConfig(Model):
    path: ConfigPath = Field(default=Path("/var/lib/coldgate/store.db"), description="SQLite file of the record store")
    keep_acked: int = Field(
        default=100_000, ge=0, le=1_000_000_000,
        description="acknowledged records kept locally for diagnostics; older ones (lower seq) are deleted",
    )
    quota_mb: float = Field(
        default=512.0, gt=0, le=MAX_QUOTA_MB, description="disk the store may use (database + WAL), MiB")
    reserve_pct: float = Field(
        default=5.0, ge=0, le=50,
        description="share of the quota kept for alarms and events once readings are refused",
    )
    commit_interval_s: float = Field(
        default=0.1, ge=MIN_PERIOD_S, le=1.0,
        description="group commit: a reading is durable within this time of arrival (the crash window in seconds)",
    )
    commit_max: int = Field(
        default=2000, ge=1, le=100_000,
        description="group commit: commit at once when this many records are pending (the crash window in records)",
    )


class ThingsBoardConfig(Model):
    """``[uplink.mqtt.thingsboard]``: how records map onto a ThingsBoard gateway device (docs/mqtt.md)."""

    device_name: str = Field(
        default="{gateway_id}.{sensor_id}",
        description="ThingsBoard device name of a sensor; may use {gateway_id} and {sensor_id}",
    )
    device_type: str | None = Field(default=None, description="device profile for new devices (default profile: none)")
    max_payload_bytes: int = Field(
        default=65_536, ge=1024, description="largest message the server takes (ThingsBoard's default: 64 KiB)"
    )

    @field_validator("device_name")
    @classmethod
    def _device_name(cls, v: str) -> str:
        try:
            name = v.format(gateway_id="g", sensor_id="s")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"may use only {{gateway_id}} and {{sensor_id}} ({exc})") from None
        if "{sensor_id}" not in v or not name.strip():
            raise ValueError("must contain {sensor_id}: each sensor is its own ThingsBoard device")
        return v


class MqttConfig(Model):
    """``[uplink.mqtt]``: the MQTT transport (``uplink.transport = "mqtt"``); see docs/mqtt.md."""

    broker: str = Field(description="mqtt://host[:port] or mqtts://host[:port] (TLS: uplink.ca_bundle, client_cert)")
    prefix: str = Field(default="coldgate", description="topic prefix: <prefix>/<gateway_id>/batches and /acks")
    client_id: str | None = Field(default=None, description="MQTT client id (default: coldgate-<gateway_id>)")
    protocol: Literal["5", "3.1.1"] = Field(default="5", description="MQTT version; 3.1.1 for brokers without 5")
    qos: Literal[1] = Field(default=1, description="always 1: a batch is published at least once")
    keepalive_s: int = Field(default=60, ge=5, le=3600)
    session_expiry_s: int = Field(
        default=86_400, ge=0, le=4_294_967_295,
        description="how long the broker keeps this gateway's session (its answers) while it is offline",
    )
    message_expiry_s: int = Field(
        default=300, ge=10, le=4_294_967_295,
        description="how long the broker keeps a batch no consumer has taken (the gateway resends anyway)",
    )
    username: str | None = Field(default=None, description="MQTT username (default: the gateway id)")
    password: SecretStr | None = Field(default=None, description="MQTT password (prefer password_file)")
    password_file: ConfigPath | None = Field(default=None, description="file holding the MQTT password; mode 0600 or 0400")
    token_file: ConfigPath | None = Field(
        default=None, description="file holding an access token sent as the username (ThingsBoard); mode 0600"
    )
    answer_timeout_s: float = Field(
        default=30.0, gt=0, le=600, description="wait this long for the consumer's answer, then resend later"
    )
    format: Literal["coldgate", "thingsboard"] = Field(
        default="coldgate", description="coldgate: batches to coldgate consumers; thingsboard: a ThingsBoard gateway"
    )
    thingsboard: ThingsBoardConfig = ThingsBoardConfig()

    @model_validator(mode="before")
    @classmethod
    def _no_credentials_in_url(cls, data: Any) -> Any:
        # Refused here, on the whole table, because a field's error would quote the value.
        if isinstance(data, dict) and isinstance(data.get("broker"), str) and "@" in data["broker"]:
            raise ValueError("broker must not carry credentials; use username and password_file")
        return data

    @field_validator("broker")
    @classmethod
    def _broker(cls, v: str) -> str:
        from agent.mqtt.wire import parse_broker_url

        return str(parse_broker_url(v))

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        from agent.mqtt.wire import check_prefix

        return check_prefix(v)

    @model_validator(mode="after")
    def _credentials(self) -> MqttConfig:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        if self.token_file is not None and (self.username or self.password or self.password_file):
            raise ValueError("token_file is the username: give it alone, or username with a password")
        if self.message_expiry_s <= self.answer_timeout_s:
            raise ValueError("message_expiry_s must be longer than answer_timeout_s")
        return self


class UplinkConfig(Model):
    transport: Literal["http", "mqtt"] = Field(
        default="http", description="http: POST to uplink.url; mqtt: publish to [uplink.mqtt] broker"
    )
    mqtt: MqttConfig | None = Field(default=None, description="the MQTT transport's settings (docs/mqtt.md)")
    url: str | None = Field(default=None, description="base URL of the central endpoint; none = buffer only")
    token: SecretStr | None = Field(default=None, description="bearer token (prefer token_file)")
    token_file: ConfigPath | None = Field(default=None, description="file holding the bearer token; mode 0600 or 0400")
    ca_bundle: ConfigPath | None = Field(default=None, description="CA bundle to verify the server (default: system CAs)")
    client_cert: ConfigPath | None = Field(default=None, description="client certificate (PEM) for mutual TLS")
    client_key: ConfigPath | None = Field(default=None, description="client key (PEM) for mutual TLS")
    verify_tls: bool = Field(default=True, description="verify the server's certificate; never turn off in the field")
    connect_timeout_s: float = Field(default=5.0, ge=MIN_PERIOD_S, le=120)
    read_timeout_s: float = Field(default=30.0, ge=MIN_PERIOD_S, le=600)
    batch_size: int = Field(default=500, ge=1, le=50_000, description="records per request")
    interval_s: float = Field(
        default=5.0, ge=MIN_PERIOD_S, le=3600, description="pause between syncs when nothing is pending")
    backoff_base_s: float = Field(default=1.0, ge=0.001, le=3600)
    backoff_cap_s: float = Field(default=300.0, ge=MIN_PERIOD_S, le=86_400)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http:// or https:// URL with a host")
        if "@" in parts.path + parts.query + parts.fragment:
            # a password with an unencoded '/', '?' or '#': the URL would be read as another
            # host, and the password shown wherever the URL is (status, logs) as a path
            raise ValueError("holds an '@' after its host: percent-encode a password's '/', '?', '#' and '@' "
                             "(or give the token in token_file)")
        try:
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError:
            raise ValueError("has a port that is not a number 0-65535") from None
        return v.rstrip("/")

    @model_validator(mode="after")
    def _transport(self) -> UplinkConfig:
        if self.transport == "mqtt" and self.mqtt is None:
            raise ValueError("transport = 'mqtt' needs an [uplink.mqtt] table with a broker")
        return self

    def endpoint(self) -> str | None:
        """Where batches go, for status and logs: the broker for MQTT, else the masked URL."""
        if self.transport == "mqtt" and self.mqtt is not None:
            return self.mqtt.broker  # never carries credentials (refused at load)
        return self.masked_url()

    def masked_url(self) -> str | None:
        if self.url is None:
            return None
        return mask_url(self.url)


class ControlConfig(Model):
    socket: ConfigPath = Field(
        default=Path("/run/coldgate/control.sock"),
        description="Unix socket the CLI talks to the running agent on (systemd RuntimeDirectory=coldgate)",
    )


class TimeConfig(Model):
    sync_source: Literal["auto", "adjtimex", "timesyncd", "assume_synced", "assume_unsynced"] = Field(
        default="auto",
        description="how the agent learns that the system clock is synchronised (see README, Time)",
    )


class FleetConfig(Model):
    """Signed configs, versions, the drop directory and the health check (docs/fleet.md)."""

    require_signature: bool = Field(
        default=False,
        description="refuse a config that is not signed by a trusted fleet key (config/gateway.toml: true); the "
                    "running config's policy judges a candidate, and a candidate that requires it must be signed too")
    trusted_keys: ConfigPath = Field(
        default=Path("/etc/coldgate/trusted-keys"),
        description="folder of trusted fleet public keys (PEM, *.pub or *.pem), owned by root and writable by "
                    "nobody else; several at once for rotation")
    inbox: ConfigPath | None = Field(
        default=None, description="drop directory watched for new configs (e.g. /var/lib/coldgate/inbox); none = off")
    inbox_poll_s: float = Field(default=5.0, ge=0.05, le=3600, description="how often the inbox is looked at")
    state_dir: ConfigPath | None = Field(
        default=None, description="where the last good config, the one on trial and those rolled back are kept "
                                  "(default: the folder 'fleet' beside the store)")
    health_window_s: float = Field(
        default=120.0, ge=0, le=86_400,
        description="after an apply, every enabled driver must deliver, the store commit and the uplink answer "
                    "(if it answered before) within this time, else the last good config comes back; 0 = no check")


class MetricsConfig(Model):
    """Prometheus metrics (``coldgate[metrics]``): off unless ``listen`` or ``textfile`` is set."""

    listen: str | None = Field(
        default=None, description="loopback address and port of the /metrics endpoint, e.g. 127.0.0.1:9108; none = off")
    textfile: ConfigPath | None = Field(
        default=None, description="also write the metrics to this file for node_exporter's textfile collector "
                                  "(*.prom, written atomically)")
    textfile_interval_s: float = Field(default=60.0, ge=5, le=3600, description="how often the textfile is written")

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str | None) -> str | None:
        if v is None:
            return v
        host, sep, port = v.rpartition(":")
        host = host.strip("[]")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:9108")
        import ipaddress

        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError("the metrics endpoint has no authentication: listen on a loopback address "
                             "(127.0.0.1, ::1) and let node_exporter's textfile or a proxy carry them further")
        return v


class IdentityConfig(Model):
    """The gateway's Ed25519 identity and its signed chain checkpoints (agent/identity.py)."""

    key: ConfigPath | None = Field(
        default=None, description="the private key, made at first start (default: identity.key beside the store)")
    checkpoint_interval_s: float = Field(
        default=300.0, ge=0, le=86_400,
        description="a signed chain_checkpoint this often when records were added (and at every stop); 0 = only at stop")


class Calibration(Model):
    offset: float = Field(default=0.0, description="added after scaling: value = raw * slope + offset")
    slope: float = 1.0
    certificate: str | None = Field(default=None, description="calibration certificate id, sent with each reading")
    due: Annotated[date, Strict(False)] | None = Field(default=None, description="calibration due date (YYYY-MM-DD); the trip report flags "
                                                      "a sensor used past it")


class SensorConfig(Model):
    id: str = Field(min_length=1, description="the sensor id readings carry")
    label: str | None = None
    record_interval_s: float | None = Field(
        default=None, gt=0, le=MAX_SECONDS,
        description="one reading per quantity per interval is stored (default: [recording])",
    )
    profile: str | None = Field(default=None, description="rule profile (a preset or one of [rules.profiles])")
    calibration: Calibration | None = None
    shipment: str | None = None
    missing_after_s: float | None = Field(
        default=None, ge=MIN_PERIOD_S, le=MAX_SECONDS, description="status marks the sensor missing after")


class RecordingConfig(Model):
    record_interval_s: float = Field(
        default=60.0, ge=0, le=MAX_SECONDS,
        description="default interval between stored readings of a sensor quantity; 0 = every one",
    )


class DriverConfig(StrictModel):
    """One ``[[drivers]]`` table: ``name``, ``type`` and the driver's own options."""

    model_config = ConfigDict(**{**STRICT, "extra": "allow"})

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    type: str
    enabled: bool = True

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Config(Model):
    gateway_id: str = Field(pattern=GATEWAY_ID_PATTERN, description="this gateway's id, unique in the fleet")
    config_version: int | str = Field(
        default=0,
        description="this config's version, set by the fleet's tool: an integer or dotted integers ('2025.6.1'), "
                    "compared number by number; a lower one than the running is refused (docs/fleet.md)",
        json_schema_extra={"anyOf": [{"type": "integer", "minimum": 0, "maximum": 2**53},
                                     {"type": "string", "pattern": VERSION_PATTERN}]})
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    store: StoreConfig = StoreConfig()
    uplink: UplinkConfig = UplinkConfig()
    control: ControlConfig = ControlConfig()
    time: TimeConfig = TimeConfig()
    recording: RecordingConfig = RecordingConfig()
    drivers: list[DriverConfig] = Field(default_factory=list)
    sensors: list[SensorConfig] = Field(default_factory=list)
    rules: RulesConfig = RulesConfig()
    shipments: list[ShipmentSpec] = Field(
        default_factory=list, description="shipments that start with the agent (see docs/shipments.md)")
    fleet: FleetConfig = FleetConfig()
    metrics: MetricsConfig = MetricsConfig()
    identity: IdentityConfig = IdentityConfig()

    @field_validator("config_version", mode="plain")
    @classmethod
    def _version(cls, v: Any) -> int | str:
        if type(v) is int and 0 <= v <= 2**53:
            return v
        if isinstance(v, str) and re.fullmatch(VERSION_PATTERN, v):
            return v
        raise ValueError("must be an integer >= 0 or dotted integers like '2025.6.1'")

    @field_validator("shipments")
    @classmethod
    def _shipments(cls, v: list[ShipmentSpec]) -> list[ShipmentSpec]:
        ShipmentsConfig(shipments=v)  # unique ids; no sensor in two shipments that both start with the agent
        return v

    def sensor(self, sensor_id: str) -> SensorConfig | None:
        for s in self.sensors:
            if s.id == sensor_id:
                return s
        return None

    def masked(self) -> dict[str, Any]:
        """The config as a plain dict with every secret masked (for ``config show``)."""
        data = self.model_dump(mode="json")
        data["uplink"]["url"] = self.uplink.masked_url()
        masked: dict[str, Any] = mask_data(data)
        return masked


# -- secrets ---------------------------------------------------------------------------

#: Key names whose values are secret, at any depth (``token``, a driver's ``bindkey``,
#: ``password``, ``api_key`` …). Paths to secret files are not secrets themselves.
_SECRET_WORDS = ("key", "token", "password", "passwd", "passphrase", "secret", "credential")
_NOT_SECRET = frozenset({"client_key", "client_cert", "ca_bundle", "token_file"})
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#@\s'\"]*@")
MASK = "***"


def is_secret_key(name: object) -> bool:
    """Whether a config key holds a secret value (see :data:`_SECRET_WORDS`)."""
    if not isinstance(name, str):
        return False
    low = name.lower()
    if low in _NOT_SECRET or low.endswith(("_file", "_path")):
        return False
    return any(word in low for word in _SECRET_WORDS)


def mask_text(text: str) -> str:
    """``text`` with the credentials of any URL in it masked (``https://***@host``)."""
    return _URL_CREDENTIALS.sub(lambda m: f"{m.group(1)}{MASK}@", text)


def mask_url(value: str) -> str:
    """A value that may be a URL, with everything from its ``://`` to its last ``@`` masked:
    a password as people write them (``/``, ``#``, ``?``, ``@``, a space, unencoded) is
    masked whole, where :func:`mask_text` on a message stops at the first such character."""
    start = value.find("://")
    at = value.rfind("@")
    if 0 < start and start + 3 <= at:
        return mask_text(value[: start + 3]) + MASK + mask_text(value[at:])
    return mask_text(value)


def mask_value(path: tuple[Any, ...] | list[Any], value: Any) -> Any:
    """``value`` as it may be shown: masked if any key on ``path`` is secret, else with URL
    credentials masked. Used for every value a problem message echoes."""
    if any(is_secret_key(part) for part in path):
        return _mask_tree(value)
    return mask_data(value)


def mask_data(value: Any) -> Any:
    """A copy of a plain (JSON-like) tree with secret keys masked at any depth."""
    if isinstance(value, dict):
        return {k: (_mask_tree(v) if is_secret_key(k) else mask_data(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_data(v) for v in value]
    if isinstance(value, str):
        return mask_url(value)
    return value


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a config file (``coldgate config schema``), complete: each
    ``[[drivers]]`` table is one of the registered drivers' options, told apart by ``type``.

    :class:`DriverConfig` lets any keys through so that each driver validates its own
    (after loading it by name); the schema spells them out instead. The driver modules are
    imported here, when the schema is asked for, never when this module is; a driver that
    cannot be loaded is listed with its common keys only.
    """
    members: list[Any] = []
    for type_name in registry.names():
        try:
            options: type[BaseModel] = registry.get(type_name).Options
            doc = (options.__doc__ or "").strip().splitlines()[0] if options.__doc__ else ""
        except DriverUnavailable as exc:
            options, doc = _UnloadableOptions, f"(this build cannot load it: {exc})"
        tag: Any = Literal[type_name]
        members.append(create_model(
            f"{type_name.capitalize()}DriverConfig",
            __base__=options,
            __doc__=f"``[[drivers]]`` of type {type_name!r}: {doc}".rstrip(": "),
            name=(str, Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$", description="this driver's name")),
            type=(tag, Field(description="the driver type")),
            enabled=(bool, Field(default=True, description="false: configured but not started")),
        ))
    entry: Any = Annotated[Union[tuple(members)], Field(discriminator="type")]  # noqa: UP007 - built at run time
    full = create_model("Config", __base__=Config, __doc__=Config.__doc__,
                        drivers=(list[entry], Field(default_factory=list, description="the drivers to run")))
    schema = full.model_json_schema()
    _allow_rule_changes(schema)
    return schema


def _allow_rule_changes(schema: dict[str, Any]) -> None:
    """A profile that ``extends`` another may give only the keys of a rule that differ (they
    are merged before validation, :func:`agent.rules.config.resolve_profiles`): besides a
    whole rule, each entry of ``rules`` may be such a change, without ``type``, of known keys."""
    defs = schema.get("$defs", {})
    rules = defs.get("Profile", {}).get("properties", {}).get("rules", {})
    keys = sorted({k for name, d in defs.items() if name.endswith("Rule") for k in d.get("properties", {})} - {"type"})
    change = {"type": "object", "title": "RuleChange", "not": {"required": ["type"]},
              "properties": {k: {} for k in keys}, "additionalProperties": False,
              "description": "a change to a rule of the profile this one extends: only the keys that differ"}
    for pattern, whole in list(rules.get("patternProperties", {}).items()):
        rules["patternProperties"][pattern] = {"anyOf": [whole, change]}


class _UnloadableOptions(BaseModel):
    """Options of a driver this build cannot load: not checked here (``config check`` says why)."""

    model_config = ConfigDict(extra="allow", frozen=True)


def _mask_tree(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, dict):
        return {k: _mask_tree(x) for k, x in v.items()}
    return MASK


# -- loading ---------------------------------------------------------------------------


def read_text(path: str | os.PathLike[str]) -> str:
    """A config file's text; :class:`ConfigError` if it cannot be read, is larger than
    :data:`MAX_CONFIG_BYTES` or is not UTF-8."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(str(p), [ConfigProblem("", f"cannot read: {exc.strerror or exc}")]) from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(str(p), [_too_large()])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        problem = ConfigProblem("", f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at offset {exc.start}",
                                "save the file as UTF-8")
        raise ConfigError(str(p), [problem]) from None


def load(path: str | os.PathLike[str], *, base_dir: Path | None = None) -> Config:
    """Read, validate and resolve a config file. Raises :class:`ConfigError` with every problem.

    Relative paths in it are taken from its folder, or from ``base_dir`` (a candidate
    file checked before it replaces the live one resolves as the live one would).
    """
    p = Path(path)
    return loads(read_text(p), source=str(p), base_dir=base_dir or p.parent)


def loads(text: str, *, source: str = "<config>", base_dir: Path | None = None) -> Config:
    """Validate config text; relative paths in it are taken from ``base_dir``.

    Never raises anything but :class:`ConfigError`: whatever the text holds (a huge file,
    deep nesting, values no model expects), the caller gets a list of problems.
    """
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(source, [_too_large()])
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [ConfigProblem("", f"not valid TOML: {exc}")]) from None
    except RecursionError:
        raise ConfigError(source, [_too_deep(None)]) from None
    depth = _depth(data)
    if depth > MAX_DEPTH:
        raise ConfigError(source, [_too_deep(depth)])
    try:
        problems, config = _validate(data)
    except (RecursionError, ArithmeticError, ValueError, TypeError) as exc:
        # a validator met something no rule foresaw: still a report, never a traceback
        raise ConfigError(source, [ConfigProblem("", f"cannot be validated ({type(exc).__name__})")]) from None
    if problems:
        raise ConfigError(source, problems)
    assert config is not None
    return _resolve_paths(config, base_dir) if base_dir is not None else config


def _validate(data: dict[str, Any]) -> tuple[list[ConfigProblem], Config | None]:
    problems: list[ConfigProblem] = []
    config: Config | None = None
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        problems += _problems_from(exc, Config, prefix=())
    raw_drivers = data.get("drivers")
    if isinstance(raw_drivers, list):
        problems += _check_drivers(raw_drivers)
    problems += _cross_check(data)
    return problems, config


def _too_large() -> ConfigProblem:
    return ConfigProblem("", f"file larger than {MAX_CONFIG_BYTES // 1024} KiB; a config is a few KiB")


def _too_deep(depth: int | None) -> ConfigProblem:
    got = f"{depth} levels deep" if depth is not None else "too deeply to parse"
    return ConfigProblem("", f"tables and arrays nested {got}; the limit is {MAX_DEPTH}")


def _depth(data: Any) -> int:
    """How deep dicts and lists nest in ``data`` (iterative: no recursion on hostile input)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        if level > MAX_DEPTH:
            break
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, level + 1) for c in children if isinstance(c, (dict, list)))
    return deepest


def _check_drivers(raw: list[Any]) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    names: set[str] = set()
    for i, d in enumerate(raw):
        if not isinstance(d, dict) or not isinstance(d.get("type"), str):
            continue
        opts = {k: v for k, v in d.items() if k not in ("name", "type", "enabled")}
        name = d.get("name")
        if isinstance(name, str):
            if name in names:
                problems.append(ConfigProblem(f"drivers[{i}].name", f"duplicate driver name {name!r}"))
            names.add(name)
        try:
            cls = registry.get(d["type"])
        except DriverUnavailable as exc:  # UnknownDriver among them
            problems.append(ConfigProblem(f"drivers[{i}].type", str(exc)))
            continue
        try:
            cls.Options.model_validate(opts)
        except ValidationError as exc:
            problems += _problems_from(exc, cls.Options, prefix=("drivers", i))
    return problems


def _cross_check(data: dict[str, Any]) -> list[ConfigProblem]:
    """Checks across sections, on the raw data: they run even where other parts are invalid."""
    problems: list[ConfigProblem] = []
    try:
        rules = RulesConfig.model_validate(data.get("rules", {}))
    except ValidationError:
        rules = RulesConfig()  # its own problems are reported already; check against the presets
    seen: set[str] = set()
    sensors = data.get("sensors")
    for i, s in enumerate(sensors if isinstance(sensors, list) else []):
        if not isinstance(s, dict):
            continue
        sid, profile = s.get("id"), s.get("profile")
        if isinstance(sid, str):
            if sid in seen:
                problems.append(ConfigProblem(f"sensors[{i}].id", f"duplicate sensor id {sid!r}"))
            seen.add(sid)
        if isinstance(profile, str) and not rules.has_profile(profile):
            names = rules.profile_names()
            close = difflib.get_close_matches(profile, names, n=1) or [
                n for n in names if n.lower() == profile.lower()]
            problems.append(ConfigProblem(
                f"sensors[{i}].profile", f"unknown rule profile {profile!r}",
                f"did you mean {close[0]!r}?" if close else f"known: {', '.join(names)}"))
    up = data.get("uplink")
    if isinstance(up, dict):
        if up.get("token") is not None and up.get("token_file") is not None:
            problems.append(ConfigProblem("uplink.token", "give token or token_file, not both"))
        if (up.get("client_cert") is None) != (up.get("client_key") is None):
            problems.append(ConfigProblem("uplink.client_cert", "client_cert and client_key go together"))
    return problems


def _resolve_paths(config: Config, base: Path) -> Config:
    def fix(p: Path | None) -> Path | None:
        return None if p is None or p.is_absolute() else (base / p).resolve()

    store = config.store.model_copy(update={"path": fix(config.store.path)}) if not config.store.path.is_absolute() else config.store
    control = config.control
    if not control.socket.is_absolute():
        control = control.model_copy(update={"socket": fix(control.socket)})
    up = config.uplink
    updates = {k: fix(getattr(up, k)) for k in ("token_file", "ca_bundle", "client_cert", "client_key") if getattr(up, k) is not None and not getattr(up, k).is_absolute()}
    uplink = up.model_copy(update=updates) if updates else up
    if up.mqtt is not None:
        mq = {k: fix(getattr(up.mqtt, k)) for k in ("password_file", "token_file")
              if getattr(up.mqtt, k) is not None and not getattr(up.mqtt, k).is_absolute()}
        if mq:
            uplink = uplink.model_copy(update={"mqtt": up.mqtt.model_copy(update=mq)})
    sections: dict[str, Any] = {}
    for name, keys in (("fleet", ("trusted_keys", "inbox", "state_dir")), ("metrics", ("textfile",)),
                       ("identity", ("key",))):
        section = getattr(config, name)
        fixes = {k: fix(getattr(section, k)) for k in keys
                 if getattr(section, k) is not None and not getattr(section, k).is_absolute()}
        sections[name] = section.model_copy(update=fixes) if fixes else section
    return config.model_copy(update={"store": store, "uplink": uplink, "control": control, **sections})


def preflight(config: Config, **kwargs: Any) -> list[ConfigProblem]:
    """What ``config`` asks of this machine that it lacks (token file, certificates, store
    path, the alarm action's allow-list): see :mod:`agent.preflight`. Empty when all is well."""
    from agent.preflight import preflight as check

    return check(config, **kwargs)


# -- error reporting -------------------------------------------------------------------


def _problems_from(exc: ValidationError, model: type[BaseModel], prefix: tuple[Any, ...]) -> list[ConfigProblem]:
    problems = []
    for err in exc.errors(include_url=False):
        loc = tuple(prefix) + tuple(err["loc"])
        path = _dotted(loc)
        hint = None
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            key = str(err["loc"][-1])
            known = _fields_at(model, tuple(err["loc"][:-1]))
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            message = f"unknown key {key!r}"
            hint = f"did you mean {close[0]!r}?" if close else (f"known keys: {', '.join(sorted(known))}" if known else None)
        elif err["type"] == "missing":
            message = "required, missing"
        else:
            if err["type"] == "value_error":  # our validators' own words, without pydantic's "Value error, "
                message = message.removeprefix("Value error, ")
            got = err.get("input")
            if not isinstance(got, (dict, list)):
                message = f"{message} (got {mask_value(loc, got)!r})"
        problems.append(ConfigProblem(path, mask_text(message), hint))
    return problems


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed at ``loc``: the path is walked through models, lists, dicts and
    discriminated unions (whose tag, e.g. a rule's ``type``, stands in the path)."""
    current: Any = model
    for part in loc:
        current = _step(current, part)
        if current is None:
            return []
    model_cls = _model_in(current)
    return list(model_cls.model_fields) if model_cls is not None else []


def _step(annotation: Any, part: Any) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _step(args[0], part)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = annotation.model_fields.get(str(part))
        return None if field is None else field.annotation
    if origin in (list, tuple, set, frozenset):
        return args[0] if args else None
    if origin is dict:
        return args[1] if len(args) == 2 else None
    if origin is typing.Union or isinstance(annotation, types.UnionType):
        members = [a for a in args if a is not type(None)]
        for m in members:  # a discriminated union: the tag names the member
            if isinstance(m, type) and issubclass(m, BaseModel) and "type" in m.model_fields:
                if part in typing.get_args(m.model_fields["type"].annotation):
                    return m
        for m in members:  # an optional container or model: step into it
            nxt = _step(m, part)
            if nxt is not None:
                return nxt
    return None


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
