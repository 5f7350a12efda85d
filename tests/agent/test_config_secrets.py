"""No secret of a rejected config reaches a problem (issue 9 item 11).

Problems go into ``config check`` output (text and JSON), logs, and ``config_rejected``
events that are stored and sent upstream (the daemon records ``str(problem)``)."""

from __future__ import annotations

import json

import pytest

from agent import config
from agent.cli import main
from agent.exc import ConfigError

SECRETS = ("hunter2", "987654321", "0123456789abcdef0123456789abcdeX", "pa55word", "tok-zz-99")
REJECTED = """
gateway_id = "gw"
[uplink]
url = "ftp://fleet:hunter2@ingest.example.com"
token = 987654321

[[drivers]]
name = "air"
type = "ble"
sensors = [{ mac = "A4:C1:38:00:00:01", sensor_id = "b1", bindkey = "0123456789abcdef0123456789abcdeX" }]

[[drivers]]
name = "s"
type = "sim"
sensors = [{ id = "p", password = 12, nested = { secret = "pa55word" } }]
"""


def rejected() -> list[config.ConfigProblem]:
    with pytest.raises(ConfigError) as err:
        config.loads(REJECTED, source="pushed.toml")
    return err.value.problems


def test_problems_name_the_secret_fields_but_never_their_values():
    found = rejected()
    paths = {p.path for p in found}
    assert {"uplink.url", "uplink.token", "drivers[0].sensors[0].bindkey"} <= paths
    text = "\n".join(str(p) for p in found) + repr(found)
    for secret in SECRETS:
        assert secret not in text
    by_path = {p.path: str(p) for p in found}
    assert "ftp://***@ingest.example.com" in by_path["uplink.url"]
    assert "'***'" in by_path["uplink.token"]


def test_config_check_text_and_json_output_carry_no_secret(tmp_path, capsys):
    f = tmp_path / "pushed.toml"
    f.write_text(REJECTED)
    assert main(["config", "check", str(f)]) == 1
    assert main(["config", "check", "--json", str(f)]) == 1
    out = capsys.readouterr()
    for secret in SECRETS:
        assert secret not in out.out + out.err
    assert main(["config", "check", "--json", str(f)]) == 1
    assert json.loads(capsys.readouterr().out)["valid"] is False


def test_a_url_password_is_masked_in_any_message():
    assert config.mask_text("got 'https://u:p%40ss@h.example/x' and http://tok@h2") == (
        "got 'https://***@h.example/x' and http://***@h2")


def test_config_show_masks_secret_keys_at_any_depth(tmp_path, capsys):
    f = tmp_path / "c.toml"
    f.write_text('gateway_id = "gw"\n[uplink]\nurl = "https://u:hunter2@h.example"\ntoken = "tok-zz-99"\n'
                 '[[drivers]]\nname = "air"\ntype = "ble"\n'
                 'sensors = [{ mac = "A4:C1:38:00:00:01", sensor_id = "b1", '
                 'bindkey = "0123456789abcdef0123456789abcdef" }]\n')
    assert main(["config", "show", "--config", str(f), "--json"]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and "tok-zz-99" not in out and "0123456789abcdef0123456789abcdef" not in out
    data = json.loads(out)
    assert data["drivers"][0]["sensors"][0]["bindkey"] == "***"
    assert data["uplink"]["token"] == "***"


@pytest.mark.parametrize(("name", "secret"), [("token", True), ("bindkey", True), ("api_key", True),
                                              ("password", True), ("client_key", False), ("token_file", False),
                                              ("keep_acked", False), ("sensor_id", False)])
def test_which_keys_are_secret(name, secret):
    assert config.is_secret_key(name) is secret


@pytest.mark.parametrize("sep", ["/", "#", "?", "@", " ", "'", "+/="])
def test_a_url_password_with_characters_that_end_a_url_is_masked_whole(sep):
    """A password as a generator makes it (base64 '/', '+', '='), unencoded: the mask
    stopped at the first '/', '#', '?' or '@' and the rest of the password was shown."""
    with pytest.raises(ConfigError) as err:
        config.loads(f'gateway_id = "gw"\n[uplink]\nurl = "ftp://fleet:s3cr{sep}Xq9Z@ingest.example.com"\n')
    text = err.value.report() + repr(err.value.problems)
    assert "ftp://***@ingest.example.com" in text
    assert "s3cr" not in text and "Xq9Z" not in text  # not even a piece of it


def test_an_https_url_whose_password_holds_an_unencoded_slash_is_refused_not_shown_as_a_path():
    """urlsplit takes 'fleet:pa' for the host and the rest for the path: the URL was
    accepted, masked_url() found no credentials and status and logs showed it whole."""
    with pytest.raises(ConfigError) as err:
        config.loads('gateway_id = "gw"\n[uplink]\nurl = "https://fleet:s3cr3t/pw@ingest.example.com"\n')
    (problem,) = err.value.problems
    assert problem.path == "uplink.url" and "percent-encode" in problem.message
    assert "s3cr3t" not in str(problem) and "https://***@ingest.example.com" in str(problem)
    ok = config.loads('gateway_id = "gw"\n[uplink]\nurl = "https://fleet:s3cr3t%2Fpw@ingest.example.com:8443/in"\n')
    assert ok.uplink.masked_url() == "https://***@ingest.example.com:8443/in"
