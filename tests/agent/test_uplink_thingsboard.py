"""ThingsBoard as a destination: the mapping, and the messages on a real Mosquitto checked
against ThingsBoard's documented gateway MQTT API.

The API, as documented (https://thingsboard.io/docs/reference/gateway-mqtt-api/,
https://thingsboard.io/docs/reference/gateway-api/telemetry/): ``v1/gateway/connect``
carries ``{"device": name}`` (optionally ``"type"``, the device profile);
``v1/gateway/telemetry`` carries ``{"<device>": [{"ts": <Unix ms>, "values": {...}}]}``;
a gateway's own telemetry goes to ``v1/devices/me/telemetry`` as ``[{"ts", "values"}]``;
the access token is the MQTT username.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import ThingsBoardConfig
from agent.exc import AuthRefused, SyncTooLarge
from agent.store import Store
from agent.timebase import rfc3339
from agent.uplink.base import Batch
from agent.uplink.mqtt import MqttTransport
from agent.uplink.thingsboard import ThingsBoardTransport, to_thingsboard, ts_ms
from tests.mosquitto import Mosquitto, close_client, uplink_config, wait_until

TOKEN = "A1_TEST_TOKEN"
T0 = 1_795_000_000.125


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "store.db", gateway_id="gw-1")
    yield s
    s.close()


def _records(store: Store) -> Batch:
    """Two sensors, two quantities at one instant, an alarm and an event; all of it one batch."""
    common = {"time_quality": "synced", "unit": "Cel"}
    store.append([
        {"type": "reading", "ts": T0, "sensor_id": "p1", "quantity": "temperature", "value": 4.5, **common},
        {"type": "reading", "ts": T0, "sensor_id": "p1", "quantity": "humidity", "value": 61, **common,
         "unit": "%RH"},
        {"type": "reading", "ts": T0 + 60, "sensor_id": "p1", "quantity": "temperature", "value": 4.75, **common},
        {"type": "reading", "ts": T0, "sensor_id": "p2", "quantity": "temperature", "value": -18.0, **common},
        {"type": "alarm", "ts": T0 + 120, "time_quality": "synced", "alarm_id": "a-1", "rule": "fridge",
         "sensor_id": "p1", "state": "raised", "severity": "alarm", "started_at": T0 + 30, "value": 9.25,
         "limit": 8, "duration_s": 900},
        {"type": "event", "ts": T0 + 180, "time_quality": "synced", "event": "clock_step", "details": {"step_s": 2.5}},
    ])
    rows = store.conn.execute("SELECT seq, body, hash FROM records ORDER BY seq").fetchall()
    return Batch("gw-1", store.stream_id, rows)


def test_ts_is_the_records_own_time_in_unix_milliseconds() -> None:
    assert ts_ms("2026-11-23T08:15:02.125Z") == int(datetime(2026, 11, 23, 8, 15, 2, 125000, UTC).timestamp() * 1000)
    assert ts_ms("1970-01-01T00:00:00.001Z") == 1


def test_readings_alarms_and_events_map_onto_the_gateway_api(store: Store) -> None:
    msgs = to_thingsboard(_records(store), ThingsBoardConfig())
    t0 = round(T0 * 1000)
    assert msgs.devices == ["gw-1.p1", "gw-1.p2"]
    assert msgs.telemetry["gw-1.p1"] == [
        {"ts": t0, "values": {"temperature": 4.5, "humidity": 61}},  # one instant, one values object
        {"ts": t0 + 60_000, "values": {"temperature": 4.75}},
        {"ts": t0 + 120_000, "values": {"alarm_fridge": {
            "alarm_id": "a-1", "state": "raised", "severity": "alarm", "started_at": rfc3339(T0 + 30),
            "value": 9.25, "limit": 8, "duration_s": 900, "seq": 6}}},
    ]
    assert msgs.telemetry["gw-1.p2"] == [{"ts": t0, "values": {"temperature": -18}}]
    started, stepped = msgs.own  # the gateway's own events: its stream_started (seq 1), the clock step
    assert list(started["values"]) == ["event_stream_started"] and started["values"]["event_stream_started"]["seq"] == 1
    assert stepped == {"ts": t0 + 180_000, "values": {"event_clock_step": {"details": {"step_s": 2.5}, "seq": 7}}}


def test_a_repeated_key_at_one_instant_gets_its_own_entry(store: Store) -> None:
    common = {"type": "reading", "ts": T0, "time_quality": "synced", "sensor_id": "p1", "quantity": "temperature",
              "unit": "Cel"}
    store.append([{**common, "value": 1.0}, {**common, "value": 2.0}])
    rows = store.conn.execute("SELECT seq, body, hash FROM records WHERE type = 'reading'").fetchall()
    msgs = to_thingsboard(Batch("gw-1", store.stream_id, rows), ThingsBoardConfig(device_name="{sensor_id}"))
    assert [p["values"] for p in msgs.telemetry["p1"]] == [{"temperature": 1}, {"temperature": 2}]


class ThingsBoardStandIn:
    """Subscribes where ThingsBoard listens, as the gateway device would be served."""

    def __init__(self, url: str) -> None:
        from agent.mqtt.wire import parse_broker_url

        b = parse_broker_url(url)
        self.got: list[tuple[str, Any]] = []
        self._ready = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.username_pw_set(TOKEN)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(
            [("v1/gateway/connect", 1), ("v1/gateway/telemetry", 1), ("v1/devices/me/telemetry", 1)])
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._ready.set()
        self.client.on_message = lambda c, u, m: self.got.append((m.topic, json.loads(m.payload)))
        self.client.connect(b.host, b.port)
        self.client.loop_start()
        assert self._ready.wait(10)

    def close(self) -> None:
        close_client(self.client)


def _check_documented_shape(topic: str, doc: Any) -> None:
    """The payload as ThingsBoard's gateway API documents it for ``topic``."""
    def point(p: Any) -> None:
        assert set(p) == {"ts", "values"} and type(p["ts"]) is int and p["ts"] > 1_600_000_000_000
        assert isinstance(p["values"], dict) and p["values"]

    if topic == "v1/gateway/connect":
        assert set(doc) <= {"device", "type"} and isinstance(doc["device"], str)
    elif topic == "v1/gateway/telemetry":
        assert isinstance(doc, dict) and doc
        for device, points in doc.items():
            assert isinstance(device, str) and isinstance(points, list)
            for p in points:
                point(p)
    elif topic == "v1/devices/me/telemetry":
        assert isinstance(doc, list)
        for p in doc:
            point(p)
    else:
        raise AssertionError(f"not a gateway API topic: {topic}")


@pytest.fixture
def tb_broker(broker_factory: Any) -> Mosquitto:
    """Anonymous clients may do nothing; the gateway's access token (its username) may."""
    return broker_factory(acl=f"user {TOKEN}\ntopic readwrite v1/#\n")  # type: ignore[no-any-return]


def _token(tmp_path: Path) -> Path:
    p = tmp_path / "tb-token"
    p.write_text(TOKEN + "\n")
    p.chmod(0o600)
    return p


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_batch_reaches_thingsboards_topics_in_the_documented_shape(tb_broker: Mosquitto, store: Store,
                                                                     tmp_path: Path, protocol: str) -> None:
    tb = ThingsBoardStandIn(tb_broker.url)
    config = uplink_config(tb_broker.url, format="thingsboard", token_file=_token(tmp_path), protocol=protocol,
                           thingsboard={"device_type": "cold-chain probe"})
    t = MqttTransport.from_config(config, "gw-1")
    try:
        assert isinstance(t, ThingsBoardTransport)
        batch = _records(store)
        answer = t.send(batch)
        assert (answer.stored, answer.duplicates, answer.extra["acknowledged_by"]) == (len(batch), 0, "PUBACK")
        wait_until(lambda: len(tb.got) == 4, what="connect ×2, gateway telemetry, own telemetry")
        for topic, doc in tb.got:
            _check_documented_shape(topic, doc)
        assert [doc for topic, doc in tb.got if topic == "v1/gateway/connect"] == [
            {"device": "gw-1.p1", "type": "cold-chain probe"}, {"device": "gw-1.p2", "type": "cold-chain probe"}]
        assert [topic for topic, _ in tb.got][2:] == ["v1/gateway/telemetry", "v1/devices/me/telemetry"]
        (_, telemetry), = [x for x in tb.got if x[0] == "v1/gateway/telemetry"]
        assert telemetry == to_thingsboard(batch, config.mqtt.thingsboard).telemetry  # type: ignore[union-attr]
        store.append([{"type": "reading", "ts": T0 + 300, "time_quality": "synced", "sensor_id": "p1",
                       "quantity": "temperature", "value": 5, "unit": "Cel"}])
        last = store.conn.execute("SELECT seq, body, hash FROM records ORDER BY seq DESC LIMIT 1").fetchall()
        t.send(Batch("gw-1", store.stream_id, last))
        wait_until(lambda: len(tb.got) == 5, what="the second batch's telemetry")
        assert tb.got[4][0] == "v1/gateway/telemetry"  # the device was announced already on this connection
    finally:
        t.close()
        tb.close()


def test_without_the_token_the_platform_refuses_the_batch(tb_broker: Mosquitto, store: Store) -> None:
    t = MqttTransport.from_config(uplink_config(tb_broker.url, format="thingsboard"), "gw-1")
    try:
        with pytest.raises(AuthRefused):
            t.send(_records(store))
    finally:
        t.close()


def test_a_message_over_thingsboards_payload_limit_is_too_large(tb_broker: Mosquitto, store: Store,
                                                                tmp_path: Path) -> None:
    config = uplink_config(tb_broker.url, format="thingsboard", token_file=_token(tmp_path),
                           thingsboard={"max_payload_bytes": 1024})
    store.append([{"type": "reading", "ts": T0 + i, "time_quality": "synced", "sensor_id": "p1",
                   "quantity": "temperature", "value": i / 3, "unit": "Cel"} for i in range(100)])
    t = MqttTransport.from_config(config, "gw-1")
    try:
        with pytest.raises(SyncTooLarge):
            t.send(Batch("gw-1", store.stream_id, store.conn.execute(
                "SELECT seq, body, hash FROM records WHERE type = 'reading'").fetchall()))
    finally:
        t.close()
