"""Profiles in config: presets, ``extends`` with field-by-field changes, errors reported at their path."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from agent import config
from agent.exc import ConfigError
from agent.rules.config import PRESET_NAMES, PRESETS, RulesConfig

ROOT = Path(__file__).resolve().parents[2]


def test_every_preset_is_listed_and_valid():
    rules = RulesConfig()
    assert set(PRESETS) == set(PRESET_NAMES) == set(rules.profile_names())
    assert PRESETS["2-8C"].rules["high"].limit == 8.0
    assert PRESETS["crt"].rules["mkt"].limit == 25.0 and PRESETS["crt"].rules["high"].limit == 30.0
    assert PRESETS["frozen"].rules["high"].limit == -15.0 and PRESETS["frozen"].rules["low"].limit == -25.0
    assert PRESETS["ultra-low"].rules["high"].limit == -60.0
    assert PRESETS["dry-ice"].rules["high"].limit == -70.0
    assert PRESETS["ln2"].rules["high"].limit == -150.0


def test_a_profile_extending_a_preset_changes_only_what_it_names():
    rules = RulesConfig(profiles={"v": {"extends": "2-8C", "rules": {
        "high": {"delay_s": 60.0}, "trend": {"enabled": False}, "door": {"type": "light", "limit": 50.0}}}})
    v = rules.profile("v")
    assert v.rules["high"].delay_s == 60.0 and v.rules["high"].limit == 8.0
    assert "trend" not in v.active_rules() and "door" in v.active_rules()
    assert rules.has_profile("v") and rules.has_profile("2-8C") and not rules.has_profile("2-8")
    assert PRESETS["2-8C"].rules["high"].delay_s == 900.0  # the preset itself is untouched


def test_profiles_can_extend_profiles_and_replace_a_rule_by_changing_its_type():
    rules = RulesConfig(profiles={
        "a": {"extends": "crt", "rules": {"high": {"type": "budget", "above": 30.0, "budget_s": 60.0}}},
        "b": {"extends": "a", "rules": {"low": {"limit": 10.0}}},
    })
    b = rules.profile("b")
    assert b.rules["high"].type == "budget" and b.rules["low"].limit == 10.0


def test_a_config_profile_may_change_the_preset_of_its_own_name():
    rules = RulesConfig(profiles={"2-8C": {"extends": "2-8C", "rules": {"high": {"limit": 8.5}}}})
    assert rules.profile("2-8C").rules["high"].limit == 8.5
    assert rules.profile("2-8C").rules["low"].limit == 2.0


def test_config_errors_are_reported_together_with_their_paths():
    text = """
gateway_id = "g"
[rules.profiles.v]
extends = "2-8C"
[rules.profiles.v.rules.high]
delay_s = -5
[rules.profiles.v.rules.new]
type = "above"
[rules.profiles.v.rules.rh]
type = "humidity"
low = 80
high = 20
"""
    with pytest.raises(ConfigError) as info:
        config.loads(text)
    paths = [p.path for p in info.value.problems]
    assert "rules.profiles.v.rules.high.above.delay_s" in paths
    assert "rules.profiles.v.rules.new.above.limit" in paths
    assert any(p.startswith("rules.profiles.v.rules.rh") for p in paths)


@pytest.mark.parametrize(("profiles", "message"), [
    ({"w": {"extends": "nope"}}, "extends unknown profile 'nope'"),
    ({"a": {"extends": "b"}, "b": {"extends": "a"}}, "extends cycle"),
])
def test_bad_extends_chains_are_refused(profiles, message):
    with pytest.raises(ValidationError, match=message):
        RulesConfig(profiles=profiles)


def test_unknown_keys_and_bounds_are_refused():
    with pytest.raises(ValidationError):
        RulesConfig(profiles={"x": {"rules": {"r": {"type": "above", "limit": 1, "colour": "red"}}}})
    with pytest.raises(ValidationError):
        RulesConfig(profiles={"x": {"rules": {"r": {"type": "budget", "above": 8, "budget_s": 600,
                                                    "window_s": 60}}}})
    with pytest.raises(ValidationError):
        RulesConfig(action={"command": ["/bin/true"], "timeout_s": 0})


def test_sensor_with_an_unknown_profile_gets_a_did_you_mean():
    with pytest.raises(ConfigError) as info:
        config.loads('gateway_id = "g"\n[[sensors]]\nid = "a"\nprofile = "2-8c"\n')
    assert "did you mean '2-8C'" in str(info.value.problems[0])


def test_the_documented_example_config_loads_and_uses_its_profiles():
    cfg = config.load(ROOT / "config" / "rules-example.toml")
    assert cfg.rules.profile("vaccines").extends == "2-8C"
    assert cfg.rules.profile("vaccines").rules["time_out_of_range"].window_s == 86400.0
    assert {s.profile for s in cfg.sensors} == {"vaccines", "handling"}
    assert cfg.rules.action.command == ["/usr/bin/logger", "-t", "coldgate-alarm"]


def test_one_missing_default_for_the_ble_driver_the_presets_and_the_missing_rule():
    from agent.rules.config import MissingRule
    from drivers.base import MISSING_AFTER_S
    from drivers.ble.scanner import BleOptions

    one = {"sensors": [{"mac": "A4:C1:38:00:00:01", "sensor_id": "s"}]}
    assert BleOptions.model_validate(one).missing_after_s == MISSING_AFTER_S
    assert {p.rules["missing"].timeout_s for p in PRESETS.values()} == {MISSING_AFTER_S}
    assert MissingRule.model_validate({"type": "missing"}).timeout_s == MISSING_AFTER_S
