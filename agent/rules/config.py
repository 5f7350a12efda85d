"""Rule profiles: the schema of ``[rules]`` and the resolution of ``extends``.

A *profile* is a named set of rules assigned to sensors (``[[sensors]] profile = …``).
The built-in presets (:mod:`agent.rules.presets`) cover the standard storage classes; a
profile in config may ``extends = "2-8C"`` and then change only what differs::

    [rules.profiles.vaccines]
    extends = "2-8C"
    [rules.profiles.vaccines.rules.high]
    delay_s = 600               # merged field by field into the preset's rule "high"
    [rules.profiles.vaccines.rules.trend]
    enabled = false             # switch a preset rule off
    [rules.profiles.vaccines.rules.door]
    type = "light"              # add a rule
    limit = 50

Rules are keyed by name: the name is the alarm's ``rule`` field. ``extends`` is resolved
*before* validation, so an error in a merged rule is reported at its own path
(``rules.profiles.vaccines.rules.high.delay_s``) with every other problem of the file.

Thresholds are inclusive: ``above`` means value ≥ limit, ``below`` value ≤ limit, so the
limit is the first out-of-range value (``limit = 8.0`` is "≥ 8 °C").
"""

from __future__ import annotations

import copy
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from agent.rules.presets import PRESETS_RAW
from drivers.base import MISSING_AFTER_S
from drivers.fields import MAX_SECONDS, MIN_PERIOD_S, StrictModel

Severity = Literal["warning", "alarm"]
AlarmState = Literal["raised", "cleared", "acknowledged"]
RULE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class _Model(StrictModel):
    """Strict like every config model (:mod:`drivers.fields`): a ``limit = nan`` could never
    fire, a ``delay_s = "600"`` was silently a number."""


class _Rule(_Model):
    """Fields every rule has: what it is called in an alarm, how bad, how it ends."""

    severity: Severity = Field(default="alarm", description="warning (a pre-alarm) or alarm")
    enabled: bool = Field(default=True, description="false switches off a rule inherited from a preset")
    latching: bool = Field(
        default=False,
        description="true: the alarm stays raised after the condition ends, until acknowledged; "
        "false: it clears by itself (auto-clear)",
    )
    action: bool = Field(default=True, description="run [rules.action] for this rule's alarms")


class _Timed(_Rule):
    delay_s: float = Field(default=0.0, ge=0, le=MAX_SECONDS, description="the condition must hold this long before raising, s")
    hysteresis: float = Field(
        default=0.0, ge=0, description="clears only once the value is this far back inside the limit (no flapping)"
    )


class AboveRule(_Timed):
    """Single event: value ≥ limit continuously for at least ``delay_s``."""

    type: Literal["above"]
    quantity: str = Field(default="temperature", description="docs/protocol.md quantity the rule watches")
    limit: float = Field(description="first out-of-range value, in the quantity's unit")


class BelowRule(_Timed):
    """Single event: value ≤ limit continuously for at least ``delay_s``."""

    type: Literal["below"]
    quantity: str = "temperature"
    limit: float


class HumidityRule(_Timed):
    """Relative humidity outside [low, high] (each bound inclusive: ≤ low or ≥ high)."""

    type: Literal["humidity"]
    low: float | None = Field(default=None, ge=0, le=100, description="%RH at or below which is out of range")
    high: float | None = Field(default=None, ge=0, le=100, description="%RH at or above which is out of range")

    @model_validator(mode="after")
    def _bounds(self) -> HumidityRule:
        if self.low is None and self.high is None:
            raise ValueError("give low, high or both")
        if self.low is not None and self.high is not None and self.low >= self.high:
            raise ValueError("low must be below high")
        return self


class ShockRule(_Rule):
    """A peak acceleration (quantity ``shock``, m/s²) at or above ``limit``."""

    type: Literal["shock"]
    limit: float = Field(gt=0, description="peak acceleration, m/s2")
    hold_s: float = Field(default=60.0, ge=0, le=MAX_SECONDS, description="the alarm clears this long after the last peak")


class LightRule(_Timed):
    """Box opened: illuminance (lx) at or above ``limit``."""

    type: Literal["light"]
    limit: float = Field(gt=0, description="illuminance, lx")


class BatteryRule(_Timed):
    """Low battery: quantity ``battery`` (%EL) at or below ``limit``."""

    type: Literal["battery"]
    limit: float = Field(default=10.0, ge=0, le=100, description="%EL")


class TiltRule(_Timed):
    """Angle from the upright ≥ ``limit_deg``.

    The angle comes from a ``tilt`` reading, or is computed from the acceleration vector
    (``acceleration_x/_y/_z``, evaluated once all three have arrived) against ``up_axis``.
    """

    type: Literal["tilt"]
    limit_deg: float = Field(gt=0, le=180, description="degrees from upright")
    up_axis: Literal["x", "y", "z", "-x", "-y", "-z"] = Field(default="z", description="axis pointing up when upright")


class BudgetRule(_Rule):
    """Cumulative time out of range (≥ above or ≤ below) against a budget.

    ``window_s`` unset: the budget is for the whole trip and, once spent, stays spent;
    set: a rolling window, and the alarm clears when old time leaves the window.
    Time between two samples counts with the earlier sample's state (sample and hold).
    """

    type: Literal["budget"]
    quantity: str = "temperature"
    above: float | None = Field(default=None, description="out of range at or above this")
    below: float | None = Field(default=None, description="out of range at or below this")
    budget_s: float = Field(gt=0, le=MAX_SECONDS, description="allowed time out of range, s")
    window_s: float | None = Field(
        default=None, gt=0, le=MAX_SECONDS, description="rolling window, s; unset = the whole trip")

    @model_validator(mode="after")
    def _bounds(self) -> BudgetRule:
        if self.above is None and self.below is None:
            raise ValueError("give above, below or both")
        if self.window_s is not None and self.window_s < self.budget_s:
            raise ValueError("window_s shorter than budget_s can never be exceeded")
        return self


class MktRule(_Rule):
    """Mean kinetic temperature (USP <1079>, ΔH/R = 10000 K) ≥ ``limit``.

    Each reading is weighted by the time to the next one, at most ``max_gap_s``; the rest
    of a longer gap is reported (``gaps``, ``gap_s``), not bridged. ``window_s`` unset =
    the trip; set = a rolling window kept in ``window_s / 48`` buckets.
    """

    type: Literal["mkt"]
    quantity: str = "temperature"
    limit: float = Field(description="Cel; MKT at or above this raises")
    window_s: float | None = Field(
        default=None, gt=0, le=MAX_SECONDS, description="rolling window, s; unset = the whole trip")
    max_gap_s: float = Field(default=3600.0, gt=0, le=MAX_SECONDS, description="longest interval a reading is weighted for, s")
    min_span_s: float = Field(default=0.0, ge=0, le=MAX_SECONDS, description="weighted time needed before the rule judges, s")
    hysteresis: float = Field(default=0.0, ge=0, description="Cel below the limit at which it clears")


class _Trend(_Rule):
    quantity: str = "temperature"
    tau_s: float = Field(
        default=300.0, ge=1.0, le=MAX_SECONDS, description="time constant of the exponentially weighted trend fit, s"
    )
    min_samples: int = Field(default=3, ge=2, description="samples needed before a trend is trusted")
    min_span_s: float | None = Field(
        default=None, ge=0, le=MAX_SECONDS,
        description="seconds of data needed before a trend is trusted (default: tau_s); a slope fitted over a "
                    "few seconds of noise is not a trend")


class RateRule(_Trend):
    """Rate of change, per minute, at or beyond ``limit_per_min`` (from the trend fit)."""

    type: Literal["rate"]
    limit_per_min: float = Field(gt=0, description="unit per minute, e.g. Cel/min")
    direction: Literal["rising", "falling", "either"] = "either"


class TimeToBreachRule(_Trend):
    """Warning when the current trend would reach ``limit`` within ``horizon_s``."""

    type: Literal["time_to_breach"]
    severity: Severity = "warning"
    op: Literal["above", "below"] = Field(description="the limit is an upper (above) or lower (below) one")
    limit: float
    horizon_s: float = Field(gt=0, le=MAX_SECONDS, description="how far ahead the trend is projected, s")
    hysteresis: float = Field(default=0.0, ge=0, description="clears only this far inside the limit")


#: One "data missing" default for the whole agent (drivers.base's, which the BLE driver
#: uses too): the preset rule's timeout, and what status calls a sensor missing when no
#: ``missing_after_s`` is configured for it.
DEFAULT_MISSING_AFTER_S = MISSING_AFTER_S


class MissingRule(_Rule):
    """Data missing: no sample (of ``quantity``, or of any) for ``timeout_s``."""

    type: Literal["missing"]
    timeout_s: float = Field(default=MISSING_AFTER_S, ge=MIN_PERIOD_S, le=MAX_SECONDS,
                             description="silence longer than this raises, s")
    quantity: str | None = Field(default=None, description="watch this quantity only; unset = any")


Rule = Annotated[
    AboveRule | BelowRule | HumidityRule | ShockRule | LightRule | BatteryRule | TiltRule | BudgetRule
    | MktRule | RateRule | TimeToBreachRule | MissingRule,
    Field(discriminator="type"),
]


class Profile(_Model):
    """A named rule set. ``extends`` names the preset or profile it was copied from."""

    description: str = ""
    extends: str | None = Field(default=None, description="preset or profile this one changes")
    mkt_max_gap_s: float = Field(default=3600.0, gt=0, le=MAX_SECONDS, description="gap cap of the reported trip MKT, s")
    rules: dict[Annotated[str, Field(pattern=RULE_NAME)], Rule] = Field(default_factory=dict)

    def active_rules(self) -> dict[str, Any]:
        return {name: r for name, r in self.rules.items() if r.enabled}


def _on_raised() -> list[AlarmState]:
    return ["raised"]


class ActionConfig(_Model):
    """``[rules.action]``: a local program run with each alarm change as JSON on stdin.

    The command is an argv list, run without a shell; its program (the first item) must
    be an absolute path that the gateway's administrator listed in the root-owned
    allow-list ``/etc/coldgate/actions.allow`` (:mod:`agent.rules.actions`). A pushed
    config can choose among those programs and their arguments, never add one.
    """

    command: list[str] | None = Field(
        default=None, min_length=1, max_length=64,
        description="argv list; the first item an absolute path listed in /etc/coldgate/actions.allow; "
                    "unset = no action",
    )
    timeout_s: float = Field(default=10.0, ge=0.1, le=600, description="the command is killed after this, s")
    on: list[AlarmState] = Field(
        default_factory=_on_raised, description="alarm states that run the command"
    )
    min_severity: Severity = Field(default="warning", description="alarm = run for alarms only")

    @field_validator("command", mode="before")
    @classmethod
    def _argv(cls, v: Any) -> Any:
        if isinstance(v, str):
            raise ValueError(
                "a command line is not run through a shell: give an argv list whose first item is an "
                'absolute path listed in /etc/coldgate/actions.allow, e.g. ["/usr/bin/logger", "-t", "coldgate"]')
        if isinstance(v, list) and v and isinstance(v[0], str) and not v[0].startswith("/"):
            raise ValueError(f"the program must be an absolute path (got {v[0][:80]!r}), "
                             "as listed in /etc/coldgate/actions.allow")
        if isinstance(v, list) and any(isinstance(a, str) and ("\0" in a or len(a) > 4096) for a in v):
            raise ValueError("an argument holds a NUL byte or is longer than 4096 characters")
        return v


def _merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """Child profile over base: rules merge field by field unless the child changes ``type``."""
    out = copy.deepcopy(base)
    for key, value in child.items():
        if key == "rules" and isinstance(value, dict):
            rules = out.setdefault("rules", {})
            for name, rule in value.items():
                old = rules.get(name)
                same = isinstance(old, dict) and isinstance(rule, dict) and rule.get("type", old.get("type")) == old.get("type")
                rules[name] = {**old, **rule} if same else copy.deepcopy(rule)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _raw(value: Any) -> Any:
    return value.model_dump(exclude_unset=True) if isinstance(value, BaseModel) else value


def resolve_profiles(raw_profiles: dict[str, Any], presets: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Resolve every ``extends`` chain into a flat raw profile.

    A chain that cannot be resolved (unknown parent, cycle) is left as written, for
    :meth:`RulesConfig._check_extends` to report alongside every other problem.
    """
    done: dict[str, Any] = {}

    def resolve(name: str, trail: tuple[str, ...]) -> Any:
        if name in done:
            return done[name]
        raw = _raw(raw_profiles[name])
        parent = raw.get("extends") if isinstance(raw, dict) else None
        result = raw
        if not isinstance(parent, str):
            pass  # no parent, or a type error pydantic reports
        elif parent == name and parent in presets:
            result = _merge(presets[parent], raw)  # a config profile changing the preset of its name
        elif parent in raw_profiles and parent not in trail:
            base = resolve(parent, (*trail, parent))
            result = _merge(base, raw) if isinstance(base, dict) else raw
        elif parent in presets and parent not in trail:
            result = _merge(presets[parent], raw)
        done[name] = result
        return result

    return {name: resolve(name, (name,)) for name in raw_profiles}


class RulesConfig(_Model):
    """``[rules]``: profiles in addition to the presets, and the local alarm action."""

    profiles: dict[str, Profile] = Field(default_factory=dict, description="named rule profiles")
    action: ActionConfig = ActionConfig()

    @model_validator(mode="before")
    @classmethod
    def _resolve_extends(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("profiles"), dict):
            return data
        return {**data, "profiles": resolve_profiles(data["profiles"], PRESETS_RAW)}

    @model_validator(mode="after")
    def _check_extends(self) -> RulesConfig:
        problems = []
        for name, prof in self.profiles.items():
            seen, parent = [name], prof.extends
            while parent is not None:
                if parent == seen[-1] and parent in PRESET_NAMES:
                    break  # a profile changing the preset of its own name
                if parent in seen:
                    problems.append(f"profile {name!r}: extends cycle {' -> '.join((*seen, parent))}")
                    break
                if parent in self.profiles:
                    seen.append(parent)
                    parent = self.profiles[parent].extends
                    continue
                if parent not in PRESET_NAMES:
                    known = ", ".join(self.profile_names())
                    problems.append(f"profile {name!r}: extends unknown profile {parent!r} (known: {known})")
                break
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def profile_names(self) -> list[str]:
        return sorted(set(PRESET_NAMES) | set(self.profiles))

    def has_profile(self, name: str) -> bool:
        return name in PRESET_NAMES or name in self.profiles

    def profile(self, name: str) -> Profile:
        """The resolved profile ``name``: one from config first, else a preset. KeyError if neither."""
        if name in self.profiles:
            return self.profiles[name]
        return PRESETS[name]


#: Built-in preset names (their rule sets are in :mod:`agent.rules.presets`).
PRESET_NAMES: tuple[str, ...] = tuple(PRESETS_RAW)

#: The validated presets.
PRESETS: dict[str, Profile] = {name: Profile.model_validate(raw) for name, raw in PRESETS_RAW.items()}
