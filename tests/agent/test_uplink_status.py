"""What ``coldgate status`` says of an MQTT uplink: the broker, whether it is reachable,
and the consumer's answer the transport is waiting for.

Before, status showed ``uplink: none`` for an MQTT uplink (it printed ``uplink.url``,
which MQTT does not use) and, with the broker down, only the last send's error.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import MqttConfig, UplinkConfig
from agent.exc import SyncTransient
from agent.stamp import Stamper
from agent.status import render
from agent.store import Store
from agent.timebase import Clock
from agent.uplink.base import Batch
from agent.uplink.fake import FakeTransport
from agent.uplink.loop import UplinkLoop
from agent.uplink.mqtt import MqttTransport
from tests.mosquitto import Mosquitto, Responder, reading, uplink_config, wait_until


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "store.db", gateway_id="gw-1", stamper=Stamper(Clock("assume_synced")))
    s.append([reading(i) for i in range(30)])
    yield s
    s.close()


def _line(sync: dict[str, Any], url: str = "mqtt://broker:1883") -> str:
    [line] = [x for x in render({"uplink_url": url, "sync": sync}).splitlines() if x.startswith("uplink:")]
    return line


def test_the_endpoint_of_an_mqtt_uplink_is_its_broker_and_of_an_http_uplink_its_masked_url() -> None:
    mqtt = UplinkConfig(transport="mqtt", mqtt=MqttConfig(broker="mqtts://broker.example:8883"))
    assert mqtt.endpoint() == "mqtts://broker.example:8883" and mqtt.masked_url() is None
    http = UplinkConfig(url="https://user:pw@central.example/x")
    assert http.endpoint() == "https://***@central.example/x"


def test_status_says_the_broker_is_unreachable_with_why_and_for_how_long() -> None:
    sync = {"result": "transient", "last_error": "broker mqtt://broker:1883: not connected after 5 s",
            "link": {"transport": "mqtt", "connected": False, "down_for_s": 190.0,
                     "error": "cannot connect to mqtt://broker:1883: Connection refused"}}
    assert _line(sync) == ("uplink: mqtt://broker:1883: transient — broker unreachable for 3 min: "
                           "cannot connect to mqtt://broker:1883: Connection refused")


def test_a_broker_that_refuses_the_credentials_is_not_called_unreachable() -> None:
    sync = {"result": "auth_refused", "last_error": "broker mqtt://broker:1883 refused the connection: Not authorized",
            "link": {"transport": "mqtt", "connected": False, "down_for_s": 5.0, "error": "cannot connect to x"}}
    assert _line(sync) == ("uplink: mqtt://broker:1883: auth_refused — broker mqtt://broker:1883 refused the "
                           "connection: Not authorized")


def test_status_says_which_answer_the_gateway_is_waiting_for_and_the_last_failure() -> None:
    sync = {"result": "transient", "last_error": "no answer from the consumer within 30 s",
            "link": {"transport": "mqtt", "connected": True, "waiting_for_answer": "101-600", "waiting_s": 12.4,
                     "answer_timeout_s": 30.0}}
    assert _line(sync) == ("uplink: mqtt://broker:1883: transient — waiting for the consumer's answer to batch "
                           "101-600 (12 s of 30 s); last failure: no answer from the consumer within 30 s")


def test_the_loop_reports_the_transports_link_and_survives_one_that_fails(store: Store) -> None:
    fake = FakeTransport()
    loop = UplinkLoop(lambda: store, lambda: fake, UplinkConfig(url="http://central.invalid"), "gw-1",
                      store.stamper, lambda item: None)
    assert "link" not in loop.status()  # no transport yet, and the fake has no link
    loop.transport = fake
    fake.link = lambda: {"transport": "x", "connected": True}  # type: ignore[attr-defined]
    assert loop.status()["link"] == {"transport": "x", "connected": True}
    fake.link = lambda: 1 / 0  # type: ignore[attr-defined]
    assert loop.status()["link"] == {"error": "ZeroDivisionError: division by zero"}
    assert loop.status()["result"] == "never"


def test_the_mqtt_transport_shows_the_answer_in_flight_then_the_broker_down(
        broker: Mosquitto, store: Store) -> None:
    responder = Responder(broker.url, lambda env: None).wait_ready()  # takes batches, never answers
    t = MqttTransport(uplink_config(broker.url, answer_timeout_s=3.0, connect_timeout_s=1.0), "gw-1")
    try:
        batch = Batch("gw-1", store.stream_id, store.pending(10))
        failed: list[Exception] = []

        def send() -> None:
            try:
                t.send(batch)
            except SyncTransient as exc:
                failed.append(exc)

        sender = threading.Thread(target=send)
        sender.start()
        link = wait_until(lambda: (x := t.link())["waiting_for_answer"] and x, what="the batch in flight")
        assert link["connected"] is True and link["error"] is None and link["down_for_s"] is None
        assert link["waiting_for_answer"] == f"{batch.first}-{batch.last}" and link["answer_timeout_s"] == 3.0
        sender.join(10)
        assert failed and t.link()["waiting_for_answer"] is None
        responder.close()
        broker.stop(kill=True)
        # paho reconnects in the background; each failed attempt says why
        link = wait_until(lambda: "Connection refused" in ((x := t.link())["error"] or "") and x,
                          what="a failed reconnect")
        assert link["connected"] is False and link["down_for_s"] >= 0
        assert link["error"] == f"cannot connect to {t.session.url}: Connection refused"
    finally:
        t.close()


def test_a_thingsboard_uplink_says_its_broker_is_unreachable_too(broker: Mosquitto, store: Store) -> None:
    url = broker.url
    broker.stop(kill=True)
    t = MqttTransport.from_config(uplink_config(url, format="thingsboard", connect_timeout_s=0.5), "gw-1")
    try:
        with pytest.raises(SyncTransient):
            t.send(Batch("gw-1", store.stream_id, store.pending(10)))
        link = t.link()
        assert (link["connected"], link["error"]) == (False, f"cannot connect to {url}: Connection refused")
        assert "waiting_for_answer" not in link  # ThingsBoard answers nothing but PUBACKs
        assert "broker unreachable" in _line({"result": "transient", "link": link})
    finally:
        t.close()
