"""The MQTT consumer in-process: a real Mosquitto, a real SQLite receiver, the real transport.

What is proven: a batch is committed before its answer goes out; the answer goes to the
sender's acks topic and says what HTTP would; the topic's gateway must be the batch's;
refusals (400/413/422/403/503) as answers; the fault plan; and a batch message is
PUBACKed only after it was dealt with, so the broker redelivers what a consumer dropped.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.exc import AuthRefused, SyncRejected, SyncTooLarge, SyncTransient
from agent.mqtt import wire
from agent.receiver import Receiver
from agent.receiver.mqtt import MqttConsumer
from agent.store import Store
from agent.uplink.base import Batch
from agent.uplink.mqtt import MqttTransport
from tests.mosquitto import Mosquitto, close_client, reading, uplink_config, wait_until


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "store.db", gateway_id="gw-1")
    s.append([reading(i) for i in range(30)])
    yield s
    s.close()


@pytest.fixture
def closing() -> Iterator[list[Any]]:
    things: list[Any] = []
    yield things
    for t in reversed(things):
        (t.stop if isinstance(t, MqttConsumer) else t.close)()


def _consumer(closing: list[Any], rx: Receiver, url: str, **kw: Any) -> MqttConsumer:
    c = MqttConsumer(rx, url, **kw)
    closing.append(c)
    c.start()
    return c


def _receiver(closing: list[Any], tmp_path: Path, **kw: Any) -> Receiver:
    rx = Receiver(tmp_path / "rx.db", **kw)
    closing.append(rx)
    return rx


def _transport(closing: list[Any], url: str, **mqtt: Any) -> MqttTransport:
    t = MqttTransport(uplink_config(url, **{"answer_timeout_s": 5.0, **mqtt}), "gw-1")
    closing.append(t)
    return t


def _batch(store: Store, first: int = 2, n: int = 10) -> Batch:
    rows = store.conn.execute("SELECT seq, body, hash FROM records WHERE seq >= ? ORDER BY seq LIMIT ?",
                              (first, n)).fetchall()
    return Batch("gw-1", store.stream_id, rows)


class Listener:
    """A raw client on ``<prefix>/+/acks``: each answer, and what the db held when it came."""

    def __init__(self, url: str, db: Path | None = None) -> None:
        self.answers: list[tuple[str, dict[str, Any], int | None]] = []
        self.db = db
        self._ready = threading.Event()
        b = wire.parse_broker_url(url)
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("coldgate/+/acks", qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._ready.set()
        self.client.on_message = self._on_message
        self.client.connect(b.host, b.port)
        self.client.loop_start()
        assert self._ready.wait(10)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        held = None
        if self.db is not None:
            with Receiver(self.db, create=False) as rx:  # another connection: sees committed rows only
                held = len(rx.records())
        self.answers.append((message.topic, json.loads(message.payload), held))

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        close_client(self.client)


def test_a_batch_is_committed_before_its_answer_is_published(broker: Mosquitto, store: Store, tmp_path: Path,
                                                             closing: list[Any]) -> None:
    rx = _receiver(closing, tmp_path)
    listener = Listener(broker.url, tmp_path / "rx.db")
    closing.append(listener)
    _consumer(closing, rx, broker.url)
    answer = _transport(closing, broker.url).send(_batch(store))
    assert (answer.stored, answer.duplicates, answer.conflicts) == (10, 0, 0)
    wait_until(lambda: listener.answers, what="the answer seen by the listener")
    topic, doc, held = listener.answers[0]
    assert topic == "coldgate/gw-1/acks" and doc["status"] == 200 and held == 10


def test_a_resend_is_answered_as_duplicates_and_stored_once(broker: Mosquitto, store: Store, tmp_path: Path,
                                                            closing: list[Any]) -> None:
    rx = _receiver(closing, tmp_path)
    _consumer(closing, rx, broker.url)
    t = _transport(closing, broker.url)
    batch = _batch(store)
    t.send(batch)
    again = t.send(batch)
    assert (again.stored, again.duplicates) == (0, 10)
    assert len(rx.records()) == 10


def test_a_batch_on_another_gateways_topic_is_refused_403_and_not_stored(broker: Mosquitto, store: Store,
                                                                         tmp_path: Path, closing: list[Any]) -> None:
    rx = _receiver(closing, tmp_path)
    listener = Listener(broker.url)
    closing.append(listener)
    _consumer(closing, rx, broker.url)
    batch = _batch(store)
    listener.publish("coldgate/gw-2/batches", wire.encode_envelope(batch.key, wire.batch_body(batch), "a1"))
    wait_until(lambda: listener.answers, what="the 403 answer")
    topic, doc, _ = listener.answers[0]
    assert (topic, doc["status"], doc["attempt"]) == ("coldgate/gw-2/acks", 403, "a1")
    assert "gw-2" in doc["error"] and rx.records() == []


@pytest.mark.parametrize("payload, status", [
    (b"not an envelope", 400),
    (wire.encode_envelope("gw-1:s:1-1", b'{"protocol": 1}', "a1"), 422),
    (wire.encode_envelope("gw-1:s:1-1", b"\x1f\x8b garbage", "a1").replace(b'"identity"', b'"gzip"'), 400),
    # a small gzip of millions of values: counted and refused before it is parsed, as over HTTP
    (wire.encode_envelope("gw-1:s:1-1", b'{"protocol":1,"records":[' + b"{}," * ((8 << 20) // 3 - 20) + b"{}]}", "a1"),
     413),
])
def test_a_malformed_batch_is_answered_with_the_protocols_status(broker: Mosquitto, tmp_path: Path,
                                                                 closing: list[Any], payload: bytes,
                                                                 status: int) -> None:
    rx = _receiver(closing, tmp_path)
    listener = Listener(broker.url)
    closing.append(listener)
    _consumer(closing, rx, broker.url)
    listener.publish("coldgate/gw-1/batches", payload)
    wait_until(lambda: listener.answers, what="the refusal")
    assert listener.answers[0][1]["status"] == status and rx.records() == []


def test_refusals_reach_the_transport_as_the_http_exceptions(broker: Mosquitto, store: Store, tmp_path: Path,
                                                             closing: list[Any]) -> None:
    rx = _receiver(closing, tmp_path, max_body=2000)
    _consumer(closing, rx, broker.url)
    t = _transport(closing, broker.url)
    batch = _batch(store, n=25)
    with pytest.raises(SyncTooLarge):
        t.send(batch)
    gapped = Batch("gw-1", store.stream_id, list(batch.records[:2]) + list(batch.records[3:4]))
    forged = Batch("gw-1", store.stream_id, [(s, b.replace('"value":', '"valeur":'), h)
                                              for s, b, h in _batch(store, n=2).records])
    with pytest.raises(SyncRejected) as info:
        t.send(forged)
    assert info.value.status == 422 and "value" in str(info.value)
    assert t.send(gapped).stored == 3  # non-contiguous is fine: the key names first and last
    assert len(rx.records()) == 3


def test_a_storage_failure_is_a_503_the_gateway_retries(broker: Mosquitto, store: Store, tmp_path: Path,
                                                        closing: list[Any]) -> None:
    rx = Receiver(tmp_path / "rx.db")
    _consumer(closing, rx, broker.url)
    rx.close()  # the database goes away under the consumer
    with pytest.raises(SyncTransient) as info:
        _transport(closing, broker.url).send(_batch(store))
    assert info.value.status == 503


def test_faults_answer_a_status_drop_the_answer_or_lose_the_batch(broker: Mosquitto, store: Store, tmp_path: Path,
                                                                  closing: list[Any]) -> None:
    rx = _receiver(closing, tmp_path, allow_faults=True,
                   faults=[{"status": 403}, {"drop_response": True}, {"reset": True}])
    _consumer(closing, rx, broker.url)
    t = _transport(closing, broker.url, answer_timeout_s=0.5, message_expiry_s=60)
    batch = _batch(store)
    with pytest.raises(AuthRefused):
        t.send(batch)
    assert rx.records() == []
    with pytest.raises(SyncTransient, match="no answer"):
        t.send(batch)  # stored, answer dropped
    assert len(rx.records()) == 10
    other = _batch(store, first=12)
    with pytest.raises(SyncTransient, match="no answer"):
        t.send(other)  # lost in transit
    assert len(rx.records()) == 10
    assert t.send(batch).duplicates == 10 and t.send(other).stored == 10


def test_a_batch_the_consumer_did_not_finish_is_redelivered_to_its_session(broker: Mosquitto, store: Store,
                                                                           tmp_path: Path, closing: list[Any]) -> None:
    """PUBACK only after the answer: a consumer that stops mid-batch leaves it with the broker."""
    rx = _receiver(closing, tmp_path, allow_faults=True, faults=[{"delay_s": 60}])
    first = MqttConsumer(rx, broker.url, client_id="rx-a", session_expiry_s=600)
    closing.append(first)
    first.start()
    t = _transport(closing, broker.url, answer_timeout_s=0.5, message_expiry_s=60)
    with pytest.raises(SyncTransient):
        t.send(_batch(store))  # the consumer holds it, in its fault's delay
    first.stop()  # before it stored or answered: no PUBACK went out
    assert rx.records() == []
    _consumer(closing, rx, broker.url, client_id="rx-a", session_expiry_s=600)
    wait_until(lambda: len(rx.records()) == 10, what="the broker to redeliver the batch to the session")


def _documented_acl() -> str:
    """The Mosquitto ACL example of docs/mqtt.md, as printed there."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "mqtt.md").read_text()
    block = doc.split("# /etc/mosquitto/acl\n", 1)[1].split("```", 1)[0]
    return block


def test_the_documented_acl_lets_each_gateway_use_only_its_own_topics(broker_factory: Any, store: Store,
                                                                     tmp_path: Path, closing: list[Any]) -> None:
    b = broker_factory(users={"rx": "rx-pw", "gw-1": "gw1-pw", "gw-2": "gw2-pw"}, acl=_documented_acl())
    rx = _receiver(closing, tmp_path)
    _consumer(closing, rx, b.url, share_group="rx", username="rx", password="rx-pw")
    (tmp_path / "pw1").write_text("gw1-pw\n")
    (tmp_path / "pw1").chmod(0o600)
    (tmp_path / "pw2").write_text("gw2-pw\n")
    (tmp_path / "pw2").chmod(0o600)
    assert _transport(closing, b.url, password_file=tmp_path / "pw1").send(_batch(store)).stored == 10
    # gw-2's credentials, gw-1's topics: the broker says no
    impostor = _transport(closing, b.url, username="gw-2", password_file=tmp_path / "pw2", client_id="gw-2")
    with pytest.raises(AuthRefused, match="Not authorized"):
        impostor.send(_batch(store, first=12))
    assert len(rx.records()) == 10
