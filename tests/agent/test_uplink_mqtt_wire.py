"""The MQTT wire format (agent.mqtt.wire): envelope, topics, answers and their meaning."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from agent.config import UplinkConfig
from agent.exc import AuthRefused, SyncRejected, SyncTooLarge, SyncTransient
from agent.mqtt import wire
from agent.receiver import validate
from agent.store import Store
from agent.uplink.base import Batch


def _reading(i: int) -> dict[str, Any]:
    return {"type": "reading", "ts": 1_795_000_000.0 + i, "time_quality": "synced", "sensor_id": "p1",
            "quantity": "temperature", "value": 4.0 + i / 8, "unit": "Cel"}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "store.db", gateway_id="gw-1")
    s.ack(seq for seq, _, _ in s.pending(10))  # the stream_started event: the readings follow
    s.append([_reading(i) for i in range(40)])
    yield s
    s.close()


def _batch(store: Store, n: int = 500) -> Batch:
    return Batch("gw-1", store.stream_id, store.pending(n))


def test_the_body_is_byte_for_byte_what_the_http_uplink_posts(store: Store) -> None:
    """Same body, same records, same hashes: captured from the HTTP transport's own POST."""
    from agent.uplink.http import HttpTransport

    got: list[bytes] = []

    class Capture(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers["Content-Length"]))
            got.append(gzip.decompress(raw) if self.headers.get("Content-Encoding") == "gzip" else raw)
            body = b'{"stored": 0, "duplicates": 0}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Capture)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        batch = _batch(store)
        up = HttpTransport(UplinkConfig(url=f"http://127.0.0.1:{server.server_address[1]}"))
        up.send(batch)
        up.close()
    finally:
        server.shutdown()
        server.server_close()
    assert _without_sent_at(wire.batch_body(batch)) == _without_sent_at(got[0])


def _without_sent_at(body: bytes) -> bytes:
    """The body with its ``sent_at`` (the moment it was built) replaced by a placeholder."""
    return body.replace(json.loads(body)["sent_at"].encode(), b"SENT_AT", 1)


def test_an_envelope_carries_the_key_and_the_body_and_validates_like_http(store: Store) -> None:
    batch = _batch(store)
    body = wire.batch_body(batch)
    payload = wire.encode_envelope(batch.key, body, "a1")
    env = wire.decode_envelope(payload)
    assert (env.idempotency_key, env.attempt, env.content_encoding) == (batch.key, "a1", "gzip")  # > 1 KiB
    raw = validate.decode_body(env.body, env.content_encoding, 1 << 20)
    assert raw == body
    parsed = validate.validate_batch(validate.parse_json(raw), env.idempotency_key)
    assert [r["hash"] for r in parsed.records] == [h for _, _, h in batch.records]


def test_a_small_body_goes_uncompressed(store: Store) -> None:
    batch = _batch(store, 1)
    env = wire.decode_envelope(wire.encode_envelope(batch.key, wire.batch_body(batch), "a"))
    assert env.content_encoding == "identity"
    assert json.loads(env.body)["records"][0]["seq"] == batch.first


@pytest.mark.parametrize("payload, why", [
    (b'{"protocol": 1}', "no header line"),
    (b"garbage\n{}", "not JSON"),
    (b"[1]\n{}", "not a JSON object"),
    (b'{"envelope": 2, "attempt": "x"}\n{}', "version 2"),
    (b'{"envelope": 1, "idempotency_key": 5}\n{}', "must be a string"),
])
def test_a_message_that_is_not_an_envelope_says_why(payload: bytes, why: str) -> None:
    with pytest.raises(wire.EnvelopeError, match=why):
        wire.decode_envelope(payload)


def test_an_envelope_error_keeps_the_attempt_so_the_refusal_reaches_the_sender() -> None:
    with pytest.raises(wire.EnvelopeError) as info:
        wire.decode_envelope(b'{"envelope": 9, "attempt": "abc"}\n')
    assert info.value.attempt == "abc"


def test_topics_and_the_gateway_they_name() -> None:
    assert wire.batches_topic("coldgate", "gw-1") == "coldgate/gw-1/batches"
    assert wire.acks_topic("fleet/eu", "gw-1") == "fleet/eu/gw-1/acks"
    assert wire.shared_batches_filter("coldgate", "rx") == "$share/rx/coldgate/+/batches"
    assert wire.gateway_of("fleet/eu", "fleet/eu/gw-7/batches") == "gw-7"
    for other in ("fleet/eu/gw-7/acks", "fleet/gw-7/batches", "xfleet/eu/gw-7/batches", "fleet/eu//batches",
                  "fleet/eu/a/b/batches"):
        assert wire.gateway_of("fleet/eu", other) is None, other


@pytest.mark.parametrize("prefix", ["", "/a", "a/", "a//b", "a/+", "#", "$SYS", "a b"])
def test_a_prefix_with_wildcards_or_empty_levels_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError):
        wire.check_prefix(prefix)


def test_broker_urls() -> None:
    assert str(wire.parse_broker_url("mqtt://broker")) == "mqtt://broker:1883"
    assert wire.parse_broker_url("mqtts://b.example:8884") == wire.BrokerURL(True, "b.example", 8884)
    for bad in ("http://b", "mqtt://", "mqtt://u:p@b", "mqtt://b/path", "mqtt://b:99999"):
        with pytest.raises(ValueError):
            wire.parse_broker_url(bad)


def _answer(status: int, **fields: Any) -> dict[str, Any]:
    doc = wire.decode_answer(wire.encode_answer("k", "a", status, fields))
    assert doc is not None
    return doc


def test_a_stored_answer_becomes_an_answer(store: Store) -> None:
    a = wire.interpret(_answer(200, stored=7, duplicates=3, conflicts=1, note="x"), _batch(store))
    assert (a.stored, a.duplicates, a.conflicts, dict(a.extra)) == (7, 3, 1, {"note": "x"})


@pytest.mark.parametrize("status, exc", [
    (400, SyncRejected), (422, SyncRejected), (413, SyncTooLarge), (401, AuthRefused), (403, AuthRefused),
    (408, SyncTransient), (429, SyncTransient), (500, SyncTransient), (503, SyncTransient), (302, SyncTransient),
])
def test_a_refusal_maps_to_the_same_exception_as_its_http_status(store: Store, status: int, exc: type) -> None:
    with pytest.raises(exc) as info:
        wire.interpret(_answer(status, error="nope", problems=["records[0].seq: missing"]), _batch(store))
    assert info.value.status == status
    assert type(info.value) is exc


def test_a_retry_after_in_a_refusal_is_kept(store: Store) -> None:
    with pytest.raises(SyncTransient) as info:
        wire.interpret(_answer(429, retry_after=7), _batch(store))
    assert info.value.retry_after == 7


@pytest.mark.parametrize("fields", [{}, {"stored": "3", "duplicates": 0}, {"stored": 1, "duplicates": None},
                                    {"stored": 1, "duplicates": 0, "conflicts": 1.5}])
def test_a_200_without_the_protocols_counts_acknowledges_nothing(store: Store, fields: dict[str, Any]) -> None:
    with pytest.raises(SyncTransient, match="not acknowledged"):
        wire.interpret(_answer(200, **fields), _batch(store))


def test_a_stored_answer_counts_for_any_attempt_of_the_key_a_refusal_only_for_its_own() -> None:
    stored = _answer(200, stored=1, duplicates=0)
    assert wire.answer_matches(stored, "k", "another-attempt")
    assert not wire.answer_matches(stored, "other-key", "a")
    refused = _answer(503)
    assert wire.answer_matches(refused, "k", "a")
    assert not wire.answer_matches(refused, "k", "another-attempt")


@pytest.mark.parametrize("payload", [b"", b"\xff", b"[]", b'{"answer": 1}', b'{"answer": 2, "status": 200}',
                                     b'{"answer": 1, "status": "200"}'])
def test_what_is_not_an_answer_is_ignored(payload: bytes) -> None:
    assert wire.decode_answer(payload) is None
