"""``[uplink] transport`` and ``[uplink.mqtt]``: validated strictly, secrets never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load, loads
from agent.exc import ConfigError

HEAD = 'gateway_id = "gw-1"\n'


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        loads(HEAD + text)
    return [str(p) for p in info.value.problems]


def test_http_stays_the_default_transport() -> None:
    c = loads(HEAD)
    assert c.uplink.transport == "http" and c.uplink.mqtt is None


def test_an_mqtt_uplink_with_its_defaults() -> None:
    c = loads(HEAD + '[uplink]\ntransport = "mqtt"\n[uplink.mqtt]\nbroker = "mqtts://broker.example"\n')
    mq = c.uplink.mqtt
    assert mq is not None
    assert (mq.broker, mq.prefix, mq.qos, mq.protocol, mq.format) == (
        "mqtts://broker.example:8883", "coldgate", 1, "5", "coldgate")
    assert mq.session_expiry_s > 0 and mq.answer_timeout_s < mq.message_expiry_s


def test_transport_mqtt_without_a_broker_is_refused() -> None:
    assert any("needs an [uplink.mqtt] table" in p for p in _problems('[uplink]\ntransport = "mqtt"\n'))


def test_every_mqtt_mistake_is_reported_at_once_with_its_path() -> None:
    problems = _problems('[uplink]\ntransport = "mqqt"\n[uplink.mqtt]\nbroker = "tcp://b"\nprefix = "a/#"\n'
                         'qos = 0\nformat = "tb"\nanswer_timeout_s = 0\nkeepalive = 5\n')
    paths = {p.split(":")[0] for p in problems}
    assert {"uplink.transport", "uplink.mqtt.broker", "uplink.mqtt.prefix", "uplink.mqtt.qos",
            "uplink.mqtt.format", "uplink.mqtt.answer_timeout_s", "uplink.mqtt.keepalive"} <= paths
    assert any("did you mean 'keepalive_s'" in p for p in problems)


def test_a_password_in_the_broker_url_is_refused_without_being_repeated() -> None:
    problems = _problems('[uplink.mqtt]\nbroker = "mqtt://gw:hunter2@broker"\n')
    assert any("must not carry credentials" in p for p in problems)
    assert not any("hunter2" in p for p in problems)


@pytest.mark.parametrize("creds, why", [
    ('password = "a"\npassword_file = "f"', "password or password_file"),
    ('token_file = "t"\nusername = "u"', "token_file is the username"),
    ('answer_timeout_s = 300\nmessage_expiry_s = 60', "longer than answer_timeout_s"),
])
def test_conflicting_mqtt_settings_are_refused(creds: str, why: str) -> None:
    assert any(why in p for p in _problems(f'[uplink.mqtt]\nbroker = "mqtt://b"\n{creds}\n'))


def test_the_mqtt_password_is_masked_in_config_show() -> None:
    c = loads(HEAD + '[uplink.mqtt]\nbroker = "mqtt://b"\npassword = "hunter2"\n')
    shown = c.masked()
    assert shown["uplink"]["mqtt"]["password"] == "***"
    assert "hunter2" not in repr(shown) and "hunter2" not in repr(c)


def test_relative_secret_files_are_taken_from_the_config_directory(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text(HEAD + '[uplink.mqtt]\nbroker = "mqtt://b"\npassword_file = "secrets/pw"\n')
    mq = load(p).uplink.mqtt
    assert mq is not None and mq.password_file == (tmp_path / "secrets" / "pw").resolve()


@pytest.mark.parametrize("template", ["{gateway_id}", "{sensor}", "{sensor_id", "{0}"])
def test_a_thingsboard_device_name_must_name_the_sensor_and_nothing_else(template: str) -> None:
    problems = _problems(f'[uplink.mqtt]\nbroker = "mqtt://b"\n[uplink.mqtt.thingsboard]\ndevice_name = "{template}"\n')
    assert any(p.startswith("uplink.mqtt.thingsboard.device_name") for p in problems)
