"""The configuration schema and its loader.

The pydantic models below *are* the schema: bounds, units and defaults live here and
nowhere else. ``coldgate config schema`` prints them as JSON Schema. Loading a file
reports every problem at once, each with its dotted path and, for an unknown key, a
"did you mean" (after mopidy's config schemas); a fleet engineer fixes a file in one go.

Driver options are validated by each driver's own ``Options`` model (drivers own their
schema; the agent only knows them through :mod:`drivers.registry`).
"""

from __future__ import annotations

import difflib
import os
import stat
import tomllib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, create_model, field_validator

from agent.exc import ConfigError, ConfigProblem
from agent.rules.config import RulesConfig
from drivers import registry
from drivers.exc import DriverUnavailable

GATEWAY_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StoreConfig(Model):
    path: Path = Field(default=Path("/var/lib/coldgate/store.db"), description="SQLite file of the record store")
    keep_acked: int = Field(
        default=100_000, ge=0,
        description="acknowledged records kept locally for diagnostics; older ones (lower seq) are deleted",
    )
    quota_mb: float = Field(default=512.0, gt=0, description="disk the store may use (database + WAL), MiB")
    reserve_pct: float = Field(
        default=5.0, ge=0, le=50,
        description="share of the quota kept for alarms and events once readings are refused",
    )
    commit_interval_s: float = Field(
        default=0.5, gt=0, le=1.0, description="group commit: a reading is durable within this time of arrival"
    )


class UplinkConfig(Model):
    url: str | None = Field(default=None, description="base URL of the central endpoint; none = buffer only")
    token: SecretStr | None = Field(default=None, description="bearer token (prefer token_file)")
    token_file: Path | None = Field(default=None, description="file holding the bearer token; mode 0600 or 0400")
    ca_bundle: Path | None = Field(default=None, description="CA bundle to verify the server (default: system CAs)")
    client_cert: Path | None = Field(default=None, description="client certificate (PEM) for mutual TLS")
    client_key: Path | None = Field(default=None, description="client key (PEM) for mutual TLS")
    verify_tls: bool = Field(default=True, description="verify the server's certificate; never turn off in the field")
    connect_timeout_s: float = Field(default=5.0, gt=0, le=120)
    read_timeout_s: float = Field(default=30.0, gt=0, le=600)
    batch_size: int = Field(default=500, ge=1, le=50_000, description="records per request")
    interval_s: float = Field(default=5.0, gt=0, le=3600, description="pause between syncs when nothing is pending")
    backoff_base_s: float = Field(default=1.0, gt=0)
    backoff_cap_s: float = Field(default=300.0, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http:// or https:// URL with a host")
        return v.rstrip("/")

    def masked_url(self) -> str | None:
        if self.url is None:
            return None
        parts = urlsplit(self.url)
        if parts.password or parts.username:
            host = parts.hostname or ""
            netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
            return urlunsplit(parts._replace(netloc=netloc))
        return self.url


class TimeConfig(Model):
    sync_source: Literal["adjtimex", "timesyncd", "assume_synced", "assume_unsynced"] = Field(
        default="adjtimex",
        description="how the agent learns that the system clock is synchronised (see README, Time)",
    )


class Calibration(Model):
    offset: float = Field(default=0.0, description="added after scaling: value = raw * slope + offset")
    slope: float = 1.0
    certificate: str | None = Field(default=None, description="calibration certificate id, sent with each reading")


class SensorConfig(Model):
    id: str = Field(min_length=1, description="the sensor id readings carry")
    label: str | None = None
    record_interval_s: float | None = Field(
        default=None, gt=0, description="one reading per quantity per interval is stored (default: [recording])"
    )
    profile: str | None = Field(default=None, description="rule profile (a preset or one of [rules.profiles])")
    calibration: Calibration | None = None
    shipment: str | None = None
    missing_after_s: float | None = Field(default=None, gt=0, description="status marks the sensor missing after")


class RecordingConfig(Model):
    record_interval_s: float = Field(
        default=60.0, ge=0, description="default interval between stored readings of a sensor quantity; 0 = every one"
    )


class DriverConfig(BaseModel):
    """One ``[[drivers]]`` table: ``name``, ``type`` and the driver's own options."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    type: str
    enabled: bool = True

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Config(Model):
    gateway_id: str = Field(pattern=GATEWAY_ID_PATTERN, description="this gateway's id, unique in the fleet")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    store: StoreConfig = StoreConfig()
    uplink: UplinkConfig = UplinkConfig()
    time: TimeConfig = TimeConfig()
    recording: RecordingConfig = RecordingConfig()
    drivers: list[DriverConfig] = Field(default_factory=list)
    sensors: list[SensorConfig] = Field(default_factory=list)
    rules: RulesConfig = RulesConfig()

    def sensor(self, sensor_id: str) -> SensorConfig | None:
        for s in self.sensors:
            if s.id == sensor_id:
                return s
        return None

    def masked(self) -> dict[str, Any]:
        """The config as a plain dict with every secret masked (for ``config show``)."""
        data = self.model_dump(mode="json")
        data["uplink"]["url"] = self.uplink.masked_url()
        if self.uplink.token is not None:
            data["uplink"]["token"] = "***"
        for d in data.get("drivers", []):
            for key in list(d):
                if any(word in key.lower() for word in ("key", "token", "password", "secret")):
                    d[key] = _mask_tree(d[key])
            for sensor in d.get("sensors", []) if isinstance(d.get("sensors"), list) else []:
                for key in list(sensor) if isinstance(sensor, dict) else []:
                    if any(word in key.lower() for word in ("key", "token", "password", "secret")):
                        sensor[key] = _mask_tree(sensor[key])
        return data


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
    return "***"


# -- loading ---------------------------------------------------------------------------


def load(path: str | os.PathLike[str]) -> Config:
    """Read, validate and resolve a config file. Raises :class:`ConfigError` with every problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(p), [ConfigProblem("", f"cannot read: {exc.strerror or exc}")]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(str(p), [ConfigProblem("", f"not UTF-8 text: {exc}")]) from exc
    return loads(text, source=str(p), base_dir=p.parent)


def loads(text: str, *, source: str = "<config>", base_dir: Path | None = None) -> Config:
    """Validate config text; relative paths in it are taken from ``base_dir``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [ConfigProblem("", f"not valid TOML: {exc}")]) from exc
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
    if problems:
        raise ConfigError(source, problems)
    assert config is not None
    return _resolve_paths(config, base_dir) if base_dir is not None else config


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
    up = config.uplink
    updates = {k: fix(getattr(up, k)) for k in ("token_file", "ca_bundle", "client_cert", "client_key") if getattr(up, k) is not None and not getattr(up, k).is_absolute()}
    uplink = up.model_copy(update=updates) if updates else up
    return config.model_copy(update={"store": store, "uplink": uplink})


def check_secret_file(path: Path, what: str) -> str:
    """Read a secret from ``path``; refuse it if group or others may read it."""
    try:
        st = path.stat()
    except OSError as exc:
        raise ConfigError(str(path), [ConfigProblem(what, f"cannot read {path}: {exc.strerror or exc}")]) from exc
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            str(path),
            [ConfigProblem(what, f"{path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o})",
                           f"run: chmod 600 {path}")],
        )
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(str(path), [ConfigProblem(what, f"cannot read {path}: {reason}")]) from exc


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
            got = err.get("input")
            if not isinstance(got, (dict, list)):
                message = f"{message} (got {got!r})"
        problems.append(ConfigProblem(path, message, hint))
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
