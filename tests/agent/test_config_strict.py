"""Hostile configs (issue 9 item 10): refused by the loader with a list of problems, never a
traceback, never a value that overflows, never fires or spins later."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from agent import config
from agent.cli import main
from agent.exc import ConfigError
from drivers import registry
from drivers.fields import StrictModel

SIM = '[[drivers]]\nname = "s"\ntype = "sim"\nsensors = [{ id = "p" }]\n'


def problems(text: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as err:
        config.loads(text)
    return {p.path: p.message for p in err.value.problems}


@pytest.mark.parametrize("value", ["1e308", "inf", "nan", "-5", "0"])
def test_a_quota_beyond_any_disk_or_not_a_number_is_refused(value):
    assert "store.quota_mb" in problems(f'gateway_id = "gw"\n[store]\nquota_mb = {value}\n')


def test_run_exits_78_on_a_quota_of_1e308_instead_of_an_overflow_traceback(tmp_path, capsys):
    f = tmp_path / "c.toml"
    f.write_text(f'gateway_id = "gw"\n[store]\npath = "{tmp_path}/s.db"\nquota_mb = 1e308\n')
    assert main(["run", "--config", str(f)]) == 78
    err = capsys.readouterr().err
    assert "store.quota_mb" in err and "Traceback" not in err


def test_calibration_and_rule_limits_must_be_finite():
    found = problems('gateway_id = "gw"\n[[sensors]]\nid = "p"\ncalibration = { slope = nan, offset = inf }\n'
                     '[rules.profiles.x.rules.hot]\ntype = "above"\nlimit = nan\n'
                     '[rules.profiles.y.rules.cold]\ntype = "below"\nlimit = -inf\n')
    assert {"sensors[0].calibration.slope", "sensors[0].calibration.offset"} <= set(found)
    assert any(path.startswith("rules.profiles.x") for path in found)
    assert any(path.startswith("rules.profiles.y") for path in found)
    assert all("finite" in m for p, m in found.items() if p.startswith(("sensors", "rules")))


def test_strings_and_bools_are_not_numbers_but_integers_are_floats():
    found = problems('gateway_id = "gw"\n[store]\ncommit_interval_s = "0.5"\nkeep_acked = 10.0\n'
                     '[recording]\nrecord_interval_s = true\n[uplink]\nverify_tls = 1\n')
    assert set(found) == {"store.commit_interval_s", "store.keep_acked", "recording.record_interval_s",
                          "uplink.verify_tls"}
    assert "(got '0.5')" in found["store.commit_interval_s"] and "(got True)" in found["recording.record_interval_s"]
    cfg = config.loads('gateway_id = "gw"\n[store]\nquota_mb = 64\n[recording]\nrecord_interval_s = 30\n'
                       '[rules.profiles.v.rules.high]\ntype = "above"\nlimit = 8\ndelay_s = 600\n')
    assert cfg.store.quota_mb == 64.0 and isinstance(cfg.store.quota_mb, float)
    assert cfg.rules.profile("v").rules["high"].delay_s == 600.0


@pytest.mark.parametrize("where", [
    "[store]\ncommit_interval_s = 1e-300\n",
    "[uplink]\ninterval_s = 1e-300\n",
    "[[drivers]]\nname = \"s\"\ntype = \"sim\"\nsensors = [{ id = \"p\", interval_s = 1e-300 }]\n",
    "[[drivers]]\nname = \"m\"\ntype = \"modbus\"\nport = \"loop://\"\ninterval_s = 1e-300\n"
    "slaves = [{ sensor_id = \"t\", profile = \"xy-md02\" }]\n",
    "[[sensors]]\nid = \"p\"\nmissing_after_s = 1e-300\n",
])
def test_an_interval_of_1e_300_that_would_pin_a_core_is_refused(where):
    assert problems(f'gateway_id = "gw"\n{where}')


def test_a_number_beyond_2_to_the_53_is_refused_anywhere():
    found = problems('gateway_id = "gw"\n[store]\nkeep_acked = 9007199254740993\n' + SIM.replace(
        '{ id = "p" }', '{ id = "p", setpoint = 1e300 }'))
    assert "store.keep_acked" in found and "drivers[0].sensors[0].setpoint" in found


def _models(root: type[BaseModel], seen: set[type[BaseModel]]) -> None:
    if root in seen:
        return
    seen.add(root)
    for field in root.model_fields.values():
        stack = [field.annotation]
        while stack:
            ann = stack.pop()
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                _models(ann, seen)
            stack.extend(typing.get_args(ann))


def test_every_config_model_of_the_agent_the_rules_and_every_driver_is_strict():
    seen: set[type[BaseModel]] = set()
    _models(config.Config, seen)
    for name in registry.names():
        try:
            _models(registry.get(name).Options, seen)
        except Exception:  # noqa: BLE001 - a driver whose library is missing is checked where it is
            continue
    loose = sorted(m.__qualname__ for m in seen if not issubclass(m, StrictModel))
    assert len(seen) > 20 and not loose


@pytest.mark.parametrize("nesting", ["a = " + "[" * 600 + "]" * 600, "a = " + "{b = " * 40 + "1" + "}" * 40])
def test_deeply_nested_toml_is_a_problem_not_a_recursion_error(nesting, tmp_path, capsys):
    f = tmp_path / "deep.toml"
    f.write_text(f'gateway_id = "gw"\n{nesting}\n')
    assert main(["config", "check", str(f)]) == 1
    out = capsys.readouterr().out
    assert "nested" in out and "the limit is 16" in out
    assert main(["run", "--config", str(f)]) == 78
    assert "RecursionError" not in capsys.readouterr().err


def test_a_file_over_1_mib_is_refused_unparsed(tmp_path):
    f = tmp_path / "big.toml"
    f.write_text('gateway_id = "gw"\n' + "# padding\n" * 110_000)
    with pytest.raises(ConfigError, match="1 problem") as err:
        config.load(f)
    assert "larger than 1024 KiB" in err.value.problems[0].message


def test_a_non_utf8_file_is_a_problem_in_check_run_and_apply(tmp_path, capsys):
    f = tmp_path / "latin1.toml"
    f.write_bytes('gateway_id = "gw"\n# Kühlkette\n'.encode("latin-1"))
    live = tmp_path / "live.toml"
    live.write_text('gateway_id = "gw"\n')
    assert main(["config", "check", "--json", str(f)]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["valid"] is False and "not UTF-8 text: byte 0xfc" in data["problems"][0]["message"]
    assert main(["run", "--config", str(f)]) == 78
    assert main(["config", "apply", str(f), "--config", str(live)]) == 1
    out = capsys.readouterr()
    assert "Traceback" not in out.err + out.out and "not UTF-8" in out.out
    assert live.read_text() == 'gateway_id = "gw"\n'


def test_the_example_configs_still_load_under_strict_validation():
    for path in sorted(Path(__file__).resolve().parents[2].joinpath("config").glob("*.toml")):
        config.load(path)
