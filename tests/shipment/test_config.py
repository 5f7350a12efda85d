"""The shipment schema: [[shipments]] in the agent's config, and what it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from agent import config
from agent.exc import ConfigError
from agent.shipment import ShipmentsConfig, ShipmentSpec, describe

ROOT = Path(__file__).resolve().parents[2]


def test_the_example_config_starts_a_shipment_with_its_legs_budget_and_geofence() -> None:
    cfg = config.load(ROOT / "config" / "shipment.toml")
    (spec,) = cfg.shipments
    assert spec.id == "SHP-2026-0117" and [x.name for x in spec.legs] == ["packing", "BSL-JFK", "receiving"]
    assert spec.stability is not None and spec.stability.spent_upstream_s == 1800
    assert spec.stop.geofence is not None and spec.ignore_s == 600
    sensors, profiles = describe(cfg, spec)
    assert sensors[0]["calibration"]["due"] == "2027-03-31" and sensors[0]["record_interval_s"] == 300
    assert "high" in profiles["2-8C"]["rules"]


def test_a_sensor_in_two_autostart_shipments_is_refused_with_its_path() -> None:
    text = (ROOT / "config" / "shipment.toml").read_text() + '''
[[shipments]]
id = "SHP-2"
sensors = ["probe-2"]
'''
    with pytest.raises(ConfigError) as exc:
        config.loads(text)
    assert "probe-2" in exc.value.report() and "shipments" in exc.value.report()


@pytest.mark.parametrize("bad, words", [
    ({"sensors": []}, "sensors"),
    ({"sensors": ["a", "a"]}, "listed twice"),
    ({"profiles": {"zz": "2-8C"}}, "not sensors of this shipment"),
    ({"stability": {"budget_s": 60}}, "above, below or both"),
    ({"freeze_thaw": {"freeze_at": 2, "thaw_at": 1}}, "thaw_at must be above"),
    ({"legs": [{"name": "x"}, {"name": "x"}]}, "same name"),
    ({"legs": [{"name": "x", "mode": "teleport"}]}, "mode"),
    ({"id": "has space"}, "id"),
])
def test_bad_shipments_are_refused_clearly(bad: dict, words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        ShipmentSpec.model_validate({"id": "S", "sensors": ["a"], **bad})


def test_two_shipments_with_one_id_are_refused() -> None:
    with pytest.raises(ValidationError, match="same id"):
        ShipmentsConfig(shipments=[ShipmentSpec(id="S", sensors=["a"]), ShipmentSpec(id="S", sensors=["b"])])
