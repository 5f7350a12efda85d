"""Config files: every example valid, every mistake reported at once, secrets masked."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from agent import config
from agent.cli import main
from agent.exc import ConfigError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "config").rglob("*.toml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[str(p.relative_to(ROOT)) for p in EXAMPLES])
def test_every_file_in_config_is_a_valid_config(path: Path) -> None:
    if path.parent.name == "presets":
        pytest.skip("presets are rule profiles, loaded by the rules tests")
    cfg = config.load(path)
    assert cfg.gateway_id


def test_config_folder_has_examples() -> None:
    assert (ROOT / "config" / "demo.toml") in EXAMPLES


BROKEN = """
gateway_id = "has space"
log_levl = "info"

[store]
quota_mb = -5
path = "x.db"

[uplink]
url = "ftp://nope"
batch_sise = 10

[[drivers]]
name = "sim"
type = "simm"

[[drivers]]
name = "sim2"
type = "sim"
sensors = [{ id = "p1", kind = "probe", intervall_s = 3 }]

[[sensors]]
id = "p1"
profile = "2-8c"
"""


def test_several_mistakes_are_reported_together_with_paths_and_did_you_mean(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        config.loads(BROKEN, source="broken.toml")
    problems = {p.path: p for p in err.value.problems}
    assert set(problems) >= {"gateway_id", "log_levl", "store.quota_mb", "uplink.url", "uplink.batch_sise",
                             "drivers[0].type", "drivers[1].sensors[0].intervall_s", "sensors[0].profile"}
    assert problems["log_levl"].hint == "did you mean 'log_level'?"
    assert problems["uplink.batch_sise"].hint == "did you mean 'batch_size'?"
    assert problems["drivers[1].sensors[0].intervall_s"].hint == "did you mean 'interval_s'?"
    assert "did you mean 'sim'" in problems["drivers[0].type"].message
    assert problems["sensors[0].profile"].hint == "did you mean '2-8C'?"
    report = err.value.report()
    assert report.startswith("broken.toml: invalid,") and all(path in report for path in problems)


def test_toml_syntax_error_names_the_line() -> None:
    with pytest.raises(ConfigError) as err:
        config.loads('gateway_id = "x"\n[store\n', source="bad.toml")
    assert "line 2" in str(err.value.problems[0])


def test_relative_paths_are_taken_from_the_config_files_folder(tmp_path: Path) -> None:
    f = tmp_path / "etc" / "c.toml"
    f.parent.mkdir()
    f.write_text('gateway_id = "gw"\n[store]\npath = "../data/s.db"\n')
    assert config.load(f).store.path == (tmp_path / "data" / "s.db")


def test_config_check_cli_exits_1_with_every_problem_and_0_when_valid(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(BROKEN)
    assert main(["config", "check", str(bad)]) == 1
    err = capsys.readouterr().out
    assert "log_levl" in err and "quota_mb" in err and "did you mean 'batch_size'?" in err
    assert main(["config", "check", str(ROOT / "config" / "demo.toml")]) == 0
    assert "valid" in capsys.readouterr().out
    assert main(["config", "check", "--json", str(bad)]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["valid"] is False and len(data["problems"]) >= 8


def test_config_show_masks_the_token_and_url_credentials(tmp_path: Path, capsys) -> None:
    f = tmp_path / "c.toml"
    f.write_text('gateway_id = "gw"\n[uplink]\nurl = "https://user:pw@ingest.example.com"\ntoken = "s3cret"\n'
                 '[[drivers]]\nname = "b"\ntype = "sim"\nsensors = [{ id = "p" }]\n')
    assert main(["config", "show", "--config", str(f)]) == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out and ":pw@" not in out
    data = json.loads(out)
    assert data["uplink"]["token"] == "***" and data["uplink"]["url"] == "https://***@ingest.example.com"


def test_config_schema_is_json_schema_with_descriptions(capsys) -> None:
    assert main(["config", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["properties"]["gateway_id"]["pattern"] == config.GATEWAY_ID_PATTERN
    assert "description" in schema["$defs"]["StoreConfig"]["properties"]["quota_mb"]


def test_token_file_readable_by_others_is_refused_with_the_fix(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("abc\n")
    os.chmod(token, 0o644)
    with pytest.raises(ConfigError) as err:
        config.check_secret_file(token, "uplink.token_file")
    assert "readable by others" in str(err.value.problems[0]) and "chmod 600" in str(err.value.problems[0])
    os.chmod(token, 0o600)
    assert config.check_secret_file(token, "uplink.token_file") == "abc"


def test_config_apply_refuses_an_invalid_file_and_leaves_the_live_one(tmp_path: Path, capsys) -> None:
    live = tmp_path / "live.toml"
    live.write_text('gateway_id = "gw"\n')
    new = tmp_path / "new.toml"
    new.write_text(BROKEN)
    assert main(["config", "apply", str(new), "--config", str(live)]) == 1
    assert live.read_text() == 'gateway_id = "gw"\n'
    good = tmp_path / "good.toml"
    good.write_text('gateway_id = "gw2"\n')
    assert main(["config", "apply", str(good), "--config", str(live)]) == 0
    assert live.read_text() == 'gateway_id = "gw2"\n'


def test_a_misspelt_key_inside_a_rule_profile_gets_a_did_you_mean() -> None:
    text = ('gateway_id = "gw"\n[rules.profiles.v]\nextends = "2-8C"\n'
            '[rules.profiles.v.rules.high]\ndelay_ss = 600.0\n')
    with pytest.raises(ConfigError) as err:
        config.loads(text)
    (problem,) = err.value.problems
    assert problem.path.endswith("rules.high.above.delay_ss") and problem.hint == "did you mean 'delay_s'?"
