"""The MQTT transport against a real Mosquitto, with a stand-in consumer on a real client.

What is proven: only the consumer's answer acknowledges a batch (a PUBACK does not); each
refusal maps to the HTTP uplink's exception; answers are matched to the batch in flight;
the batch never lingers in paho (nothing published while disconnected, nothing replayed
after a timeout); broker down, restarted, session lost; credentials, ACLs, TLS; MQTT 3.1.1.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.exc import AuthRefused, ConfigError, SyncRejected, SyncTooLarge, SyncTransient
from agent.receiver import validate
from agent.store import Store
from agent.uplink.base import Batch
from agent.uplink.mqtt import MqttTransport
from tests.mosquitto import Mosquitto, Responder, make_pki, reading, uplink_config, wait_until

STORED = (200, {"stored": 3, "duplicates": 0, "conflicts": 0})


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "store.db", gateway_id="gw-1")
    s.append([reading(i) for i in range(30)])
    yield s
    s.close()


@pytest.fixture
def closing() -> Iterator[list[Any]]:
    """Things with a close() method, closed after the test whatever happened."""
    things: list[Any] = []
    yield things
    for t in reversed(things):
        t.close()


def _batches(store: Store, n: int = 10) -> list[Batch]:
    """Three batches of the store's records, taken without acknowledging them."""
    recs = store.pending(100)
    first = [Batch("gw-1", store.stream_id, recs)]
    readings = store.conn.execute("SELECT seq, body, hash FROM records WHERE type = 'reading' ORDER BY seq").fetchall()
    return first + [Batch("gw-1", store.stream_id, readings[i:i + n]) for i in range(0, len(readings), n)]


def _transport(closing: list[Any], broker_url: str, **mqtt: Any) -> MqttTransport:
    gateway = mqtt.pop("gateway_id", "gw-1")
    t = MqttTransport(uplink_config(broker_url, gateway_id=gateway, **mqtt), gateway)
    closing.append(t)
    return t


def _responder(closing: list[Any], url: str, answer: Any = None) -> Responder:
    r = Responder(url, answer)
    closing.append(r)
    return r.wait_ready()


def test_only_the_consumers_answer_acknowledges_a_batch(broker: Mosquitto, store: Store, closing: list[Any]) -> None:
    r = _responder(closing, broker.url, lambda env: (200, {"stored": 7, "duplicates": 2, "conflicts": 1, "x": 1}))
    batch = _batches(store)[1]
    answer = _transport(closing, broker.url).send(batch)
    assert (answer.stored, answer.duplicates, answer.conflicts, dict(answer.extra)) == (7, 2, 1, {"x": 1})
    [(topic, env)] = r.messages
    assert topic == "coldgate/gw-1/batches" and env.idempotency_key == batch.key
    doc = validate.parse_json(validate.decode_body(env.body, env.content_encoding, 1 << 20))
    assert validate.validate_batch(doc, env.idempotency_key).records[0]["hash"] == batch.records[0][2]


def test_a_puback_without_an_answer_is_not_an_acknowledgement(broker: Mosquitto, store: Store,
                                                             closing: list[Any]) -> None:
    r = _responder(closing, broker.url, lambda env: None)  # subscribed (the broker PUBACKs), never answers
    t = _transport(closing, broker.url, answer_timeout_s=0.5, message_expiry_s=60)
    with pytest.raises(SyncTransient, match=r"no answer from the consumer within 0.5 s \(the broker took it\)"):
        t.send(_batches(store)[1])
    assert len(r.messages) == 1
    assert t.session.client.drop_out_messages() == []  # paho holds nothing of it: no replay later


def test_with_no_consumer_subscribed_a_batch_fails_at_once(broker: Mosquitto, store: Store,
                                                          closing: list[Any]) -> None:
    """MQTT 5's "no matching subscribers" PUBACK: consumers down while the broker is up."""
    t = _transport(closing, broker.url, answer_timeout_s=60, message_expiry_s=120)
    with pytest.raises(SyncTransient, match="no consumer is subscribed to coldgate/gw-1/batches"):
        t.send(_batches(store)[1])


@pytest.mark.parametrize("status, exc", [(400, SyncRejected), (422, SyncRejected), (413, SyncTooLarge),
                                         (401, AuthRefused), (403, AuthRefused), (503, SyncTransient)])
def test_the_consumers_refusal_raises_what_the_http_status_would(broker: Mosquitto, store: Store,
                                                                 closing: list[Any], status: int, exc: type) -> None:
    _responder(closing, broker.url, lambda env: (status, {"error": "no", "retry_after": 4}))
    with pytest.raises(exc) as info:
        _transport(closing, broker.url).send(_batches(store)[1])
    assert type(info.value) is exc and info.value.status == status
    if status == 503:
        assert info.value.retry_after == 4


def test_a_late_answer_to_an_earlier_batch_does_not_acknowledge_the_next(broker: Mosquitto, store: Store,
                                                                        closing: list[Any]) -> None:
    a, b = _batches(store)[1:3]
    seen: list[Any] = []

    def answer(env: Any) -> Any:
        seen.append(env)
        if env.idempotency_key == a.key:
            return None  # A's answer is late...
        late = (a.key, seen[0].attempt, 200, {"stored": 99, "duplicates": 0})
        return [late, (b.key, env.attempt, 200, {"stored": 10, "duplicates": 0})]  # ...and comes first

    _responder(closing, broker.url, answer)
    t = _transport(closing, broker.url, answer_timeout_s=0.5, message_expiry_s=60)
    with pytest.raises(SyncTransient):
        t.send(a)
    assert t.send(b).stored == 10


def test_a_stored_answer_to_an_earlier_attempt_acknowledges_the_resend_a_stale_refusal_does_not(
        broker: Mosquitto, store: Store, closing: list[Any]) -> None:
    a = _batches(store)[1]
    attempts: list[str | None] = []

    def answer(env: Any) -> Any:
        attempts.append(env.attempt)
        if len(attempts) == 1:
            return None
        first = attempts[0]
        return [(a.key, first, 503, {"error": "stale"}), (a.key, first, 200, {"stored": 0, "duplicates": 10})]

    _responder(closing, broker.url, answer)
    t = _transport(closing, broker.url, answer_timeout_s=0.5, message_expiry_s=60)
    with pytest.raises(SyncTransient):
        t.send(a)
    got = t.send(a)
    assert (got.stored, got.duplicates) == (0, 10)
    assert attempts[0] != attempts[1]


def test_a_broker_down_at_the_first_send_is_said_plainly_and_the_next_send_gets_through(
        broker_factory: Any, store: Store, closing: list[Any]) -> None:
    b = broker_factory()
    b.stop()
    t = _transport(closing, b.url)
    with pytest.raises(SyncTransient, match=rf"cannot connect to mqtt://127.0.0.1:{b.port}: Connection refused"):
        t.send(_batches(store)[1])
    b.start()
    _responder(closing, b.url, lambda env: STORED)
    assert t.send(_batches(store)[1]).stored == 3


def test_a_batch_refused_while_disconnected_is_never_published_later(broker: Mosquitto, store: Store,
                                                                     closing: list[Any]) -> None:
    r = _responder(closing, broker.url, lambda env: STORED)
    t = _transport(closing, broker.url, connect_timeout_s=0.5)
    first, second, third = _batches(store)[1:4]
    t.send(first)
    broker.stop(kill=True)
    wait_until(lambda: not t.session.connected, what="the transport to see the broker gone")
    with pytest.raises(SyncTransient, match="not connected|disconnected"):
        t.send(second)
    assert t.session.client.drop_out_messages() == []
    broker.start()
    r.wait_ready()
    t.send(third)  # reconnects, resubscribes (the session was lost with the broker)
    assert [env.idempotency_key for _, env in r.messages] == [first.key, third.key]


def test_a_broker_restarted_with_persistence_resumes_the_gateways_session(broker_factory: Any, store: Store,
                                                                          closing: list[Any]) -> None:
    b = broker_factory(persistence=True)
    r = _responder(closing, b.url, lambda env: STORED)
    t = _transport(closing, b.url)
    t.send(_batches(store)[1])
    b.restart()  # graceful: Mosquitto saves its sessions
    r.wait_ready()
    assert t.send(_batches(store)[2]).stored == 3
    assert t.session.session_present is True and t.session.connects == 2


def test_an_answer_queued_while_the_gateway_was_away_is_delivered_by_its_session(
        broker: Mosquitto, store: Store, closing: list[Any]) -> None:
    """The gateway's session outlives its connection: the broker keeps its answers."""
    a = _batches(store)[1]
    attempts: list[str | None] = []
    r = _responder(closing, broker.url, lambda env: attempts.append(env.attempt))
    t = _transport(closing, broker.url, answer_timeout_s=0.5, message_expiry_s=60)
    with pytest.raises(SyncTransient):
        t.send(a)
    t.close()  # the agent stops; its session stays on the broker
    r.client.publish("coldgate/gw-1/acks", r.wire.encode_answer(a.key, attempts[0], 200,
                                                                 {"stored": 10, "duplicates": 0}), qos=1)
    r.answer = lambda env: None  # the resend is not answered: only the queued answer can acknowledge it
    t2 = _transport(closing, broker.url, answer_timeout_s=5)
    assert t2.send(a).stored == 10
    assert t2.session.session_present is True


def test_wrong_credentials_are_auth_refused(broker_factory: Any, store: Store, closing: list[Any],
                                            tmp_path: Path) -> None:
    b = broker_factory(users={"gw-1": "right"})
    pw = tmp_path / "pw"
    pw.write_text("wrong\n")
    pw.chmod(0o600)
    with pytest.raises(AuthRefused) as info:
        _transport(closing, b.url, password_file=pw).send(_batches(store)[1])
    assert info.value.status in (401, 403) and "wrong" not in str(info.value)  # Mosquitto: "Not authorized"


def test_a_password_file_others_can_read_is_refused(broker: Mosquitto, tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    pw.chmod(0o644)
    with pytest.raises(ConfigError) as info:
        MqttTransport(uplink_config(broker.url, password_file=pw), "gw-1")
    assert "chmod 600" in info.value.report()


ACL = """\
user rx
topic readwrite coldgate/#

pattern readwrite coldgate/%u/#
"""


def test_with_a_password_and_the_acl_a_gateway_publishes_under_its_own_id_only(
        broker_factory: Any, store: Store, closing: list[Any], tmp_path: Path) -> None:
    b = broker_factory(users={"gw-1": "pw1", "rx": "pwrx"}, acl=ACL)
    pw = tmp_path / "pw"
    pw.write_text("pw1\n")
    pw.chmod(0o600)
    r = Responder(b.url, lambda env: STORED)
    r.client.username_pw_set("rx", "pwrx")
    closing.append(r)
    r.wait_ready()
    assert _transport(closing, b.url, password_file=pw).send(_batches(store)[1]).stored == 3
    impostor = _transport(closing, b.url, gateway_id="gw-2", username="gw-1", password_file=pw, client_id="x")
    with pytest.raises(AuthRefused, match="Not authorized"):  # Mosquitto: PUBACK 135
        impostor.send(Batch("gw-2", store.stream_id, _batches(store)[1].records))


def test_mqtt_3_1_1_works_end_to_end(broker: Mosquitto, store: Store, closing: list[Any]) -> None:
    _responder(closing, broker.url, lambda env: STORED)
    t = _transport(closing, broker.url, protocol="3.1.1")
    assert t.send(_batches(store)[1]).stored == 3


def test_mutual_tls_with_a_private_ca(broker_factory: Any, store: Store, closing: list[Any],
                                      tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    b = broker_factory(tls={"cafile": pki["ca.pem"], "certfile": pki["server.pem"], "keyfile": pki["server.key"],
                            "require_certificate": True}, acl=ACL.replace("user rx", "user 127.0.0.1"))
    # the stand-in consumer presents the server's certificate: CN 127.0.0.1, its ACL user
    r = Responder(b.url, lambda env: STORED)
    r.client.tls_set(ca_certs=str(pki["ca.pem"]), certfile=str(pki["server.pem"]), keyfile=str(pki["server.key"]))
    closing.append(r)
    r.wait_ready()
    tls = {"ca_bundle": pki["ca.pem"], "client_cert": pki["client.pem"], "client_key": pki["client.key"]}
    assert _transport(closing, b.url, **tls).send(_batches(store)[1]).stored == 3
    wrong_ca = {**tls, "ca_bundle": pki["other-ca.pem"], "client_id": "other"}
    with pytest.raises(SyncTransient, match="certificate verify failed"):
        _transport(closing, b.url, **wrong_ca).send(_batches(store)[1])


def test_a_batch_over_the_brokers_maximum_packet_size_is_too_large(broker_factory: Any, store: Store,
                                                                   closing: list[Any]) -> None:
    b = broker_factory(extra=("max_packet_size 1500",))
    _responder(closing, b.url, lambda env: STORED)
    t = _transport(closing, b.url)
    with pytest.raises(SyncTooLarge):
        t.send(Batch("gw-1", store.stream_id, [(i, os.urandom(1500).hex()[:-1] + "}", "0" * 64)
                                                for i in range(1, 4)]))
    assert t.send(_batches(store, 2)[1]).stored == 3


def test_without_paho_the_transport_says_which_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import agent.mqtt.session as module

    monkeypatch.setattr(module, "paho", None)
    with pytest.raises(ConfigError) as info:
        MqttTransport.from_config(uplink_config("mqtt://127.0.0.1:1"), "gw-1")
    assert "pip install 'coldgate[mqtt]'" in info.value.report()


def test_a_missing_mosquitto_fails_the_mqtt_tests_saying_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a skip: CI without the broker must go red, with the fix in the message."""
    import tests.mosquitto as helpers

    monkeypatch.setattr(helpers.shutil, "which", lambda name: None)
    monkeypatch.setattr(helpers.Path, "exists", lambda self: False)
    with pytest.raises(pytest.fail.Exception, match=r"apt-get install -y mosquitto"):
        helpers.mosquitto_binary()


def test_the_broker_connection_sends_without_nagle_delay(broker: Mosquitto, store: Store,
                                                        closing: list[Any]) -> None:
    # With Nagle's algorithm on (paho's default), each small packet of a batch's exchange
    # could wait ~40 ms for the broker's delayed ACK: most of a batch's round trip.
    import socket

    _responder(closing, broker.url, lambda env: STORED)
    t = _transport(closing, broker.url)
    t.send(_batches(store)[1])
    sock = t.session.client.socket()
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
