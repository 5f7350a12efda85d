"""The receiver against slow, hostile and impersonating clients, and a database that goes away."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import socket
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent import protocol
from agent.receiver import ReceiverError, Registry
from tests.receiver.conftest import GATEWAY, Chain


def _wait(pred: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def _closed_by_server(sock: socket.socket, within: float) -> bytes:
    """What the server sent before closing; fails if it keeps the connection open past ``within``."""
    sock.settimeout(within)
    data = b""
    while True:
        chunk = sock.recv(4096)  # socket.timeout here: the server never closed it
        if not chunk:
            return data
        data += chunk


# -- slow clients ---------------------------------------------------------------------


def test_a_client_that_stops_sending_its_headers_is_cut_off_after_the_read_timeout(serve: Any) -> None:
    rx = serve(read_timeout=0.3)
    with socket.create_connection(("127.0.0.1", rx.server.server_address[1])) as s:
        s.sendall(b"POST /v1/batches HTTP/1.1\r\nHost: x\r\n")
        _closed_by_server(s, within=5)


def test_a_client_that_stops_sending_its_body_is_cut_off_and_nothing_is_stored(serve: Any) -> None:
    rx = serve(read_timeout=0.3)
    with socket.create_connection(("127.0.0.1", rx.server.server_address[1])) as s:
        s.sendall(b"POST /v1/batches HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"protocol\": 1")
        _closed_by_server(s, within=5)
    assert rx.receiver.records() == []


def test_connections_beyond_the_limit_get_503_at_once_and_the_backlog_is_not_5(serve: Any) -> None:
    rx = serve(max_connections=2, read_timeout=30)
    assert rx.server.request_queue_size >= 128
    port = rx.server.server_address[1]
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    try:
        _wait(lambda: len(rx.server._open) == 2)
        with socket.create_connection(("127.0.0.1", port)) as third:
            answer = _closed_by_server(third, within=5)
        assert answer.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in answer
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"].startswith("receiver busy")
    finally:
        for s in idle:
            s.close()
    _wait(lambda: len(rx.server._open) == 0)
    assert rx.client.post(Chain().readings(1)).status_code == 200  # served again once they left


# -- hostile bodies -------------------------------------------------------------------


def test_a_small_gzip_of_many_json_values_is_refused_without_parsing_it(rx: Any) -> None:
    n = (8 << 20) // 3 - 20
    bomb = gzip.compress(b'{"protocol":1,"records":[' + b"{}," * n + b"{}]}", compresslevel=9)
    assert len(bomb) < 64 << 10
    tracemalloc.start()
    try:
        r = rx.client.post([], raw=bomb, compress=True, key=None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.status_code == 413 and "than a batch may" in r.json()["error"]
    assert peak < 40 << 20, f"peak {peak / 2**20:.0f} MiB while refusing a bomb"  # parsing it took ~200 MiB


def test_a_record_nested_700_deep_is_a_422_with_its_path_and_the_connection_stays_up(rx: Any) -> None:
    chain = Chain()
    deep: Any = {"x": 1}
    for _ in range(700):
        deep = {"d": deep}
    recs = [chain.reading(), chain.event("driver_error", {"nested": deep})]
    doc = {"protocol": 1, "gateway_id": GATEWAY, "sent_at": "2026-11-23T08:15:02.125Z", "records": recs}
    r = rx.client.post(recs, raw=json.dumps(doc).encode())
    assert r.status_code == 422
    assert r.json()["problems"] == ["records[1].details: objects and arrays nest deeper than 32"]
    assert rx.client.post(recs[:1]).status_code == 200  # same keep-alive session: nothing was dropped


@pytest.mark.parametrize("field, value", [
    ("time_quality", ["synced"]), ("type", {"reading": 1}), ("ts", "2026-11-23T08:15:02.125Z\n"),
    ("hash", "0" * 64 + "\n"), ("prev_hash", ["0" * 64]),
])
def test_a_list_object_or_trailing_newline_where_a_word_belongs_is_a_422_naming_it(rx: Any, field: str,
                                                                                  value: Any) -> None:
    recs = [{**Chain().reading(), field: value}]
    r = rx.client.post(recs)
    assert r.status_code == 422, r.text
    assert any(p.startswith(f"records[0].{field}: must be") for p in r.json()["problems"]), r.json()
    assert rx.client.post(Chain().readings(1)).status_code == 200  # same keep-alive session: nothing was dropped


def test_an_unexpected_error_is_a_500_with_a_body_not_a_dropped_connection(rx: Any, monkeypatch: Any) -> None:
    def broken(batch: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(rx.receiver, "store_batch", broken)
    r = rx.client.post(Chain().readings(1))
    assert r.status_code == 500 and r.json() == {"error": "internal error: RuntimeError"}


def test_a_validator_bug_is_a_500_with_a_body_not_a_dropped_connection(rx: Any, monkeypatch: Any) -> None:
    from agent.receiver import validate

    def broken(*args: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(validate, "read_batch", broken)
    r = rx.client.post(Chain().readings(1))
    assert r.status_code == 500 and r.json() == {"error": "internal error: RuntimeError"}


def test_a_database_that_went_away_is_a_503_the_gateway_retries(serve: Any, postgres: Any) -> None:
    rx = serve(db=postgres.url)
    chain = Chain()
    recs = chain.readings(4)
    assert rx.client.post(recs[:2]).status_code == 200
    postgres.stop()
    r = rx.client.post(recs[2:])
    assert r.status_code == 503 and r.headers["Retry-After"] == "5"
    assert "storage unavailable" in r.json()["error"]


# -- tokens per gateway ---------------------------------------------------------------


def _registry(tmp_path: Path, entries: dict[str, dict[str, str]]) -> Path:
    path = tmp_path / "gateways.toml"
    path.write_text("".join(f'[gateways."{g}"]\n' + "".join(f'{k} = "{v}"\n' for k, v in e.items())
                            for g, e in entries.items()))
    return path


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def test_a_batch_for_another_gateway_is_refused_with_403_and_its_stream_untouched(serve: Any, tmp_path: Path) -> None:
    tf = tmp_path / "gw-2.token"
    tf.write_text("tok-2\n")
    tf.chmod(0o600)
    reg = _registry(tmp_path, {GATEWAY: {"token_sha256": _sha("tok-1")}, "gw-2": {"token_file": tf.name}})
    rx = serve(gateways=reg)
    victim = Chain()
    recs = victim.readings(2)
    r = rx.client.post(recs, gateway_id="gw-2", token="tok-1")  # gw-1's token, gw-2's stream
    assert r.status_code == 403 and "gw-2" in r.json()["error"]
    assert rx.client.post(recs, gateway_id="gw-2", token="tok-2").json() == {"stored": 2, "duplicates": 0,
                                                                            "conflicts": 0}
    assert rx.client.post(recs, gateway_id="gw-2", token="wrong").status_code == 403
    assert rx.client.post(recs, gateway_id="gw-2", token=None).status_code == 401
    # a gateway's token reads its own report only
    assert rx.client.get("/v1/report", token="tok-1", gateway_id="gw-2").status_code == 403
    assert list(rx.client.get("/v1/report", token="tok-2").json()["gateways"]) == ["gw-2"]
    assert rx.client.get("/v1/fleet", token="tok-2").status_code == 403


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({}, "give a token \\(token_sha256 or token_file\\) or a certificate_cn"),
        ({"token_sha256": "ABC"}, "token_sha256"),
        ({"token_sha256": "a" * 64, "colour": "red"}, "colour"),
        ({"token_file": "loose.token"}, "readable by others: chmod 600"),
        ({"token_sha256": "a" * 64, "public_key": "zz"}, "public key is PEM"),
    ],
)
def test_a_bad_registry_is_refused_in_one_line_naming_the_gateway(tmp_path: Path, entry: dict, message: str) -> None:
    loose = tmp_path / "loose.token"
    loose.write_text("secret-token-value")
    os.chmod(loose, 0o644)
    with pytest.raises(ReceiverError, match=message) as err:
        Registry.load(_registry(tmp_path, {GATEWAY: entry}))
    assert "secret-token-value" not in str(err.value)


# -- checkpoints and set-aside --------------------------------------------------------


def _checkpoint(chain: Chain, key: Ed25519PrivateKey) -> dict[str, Any]:
    head_seq, head_hash = chain.seq, chain.prev
    return chain.event("chain_checkpoint", protocol.sign_checkpoint(key, GATEWAY, chain.stream, head_seq, head_hash))


def _pub_hex(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def test_the_report_verifies_checkpoints_against_the_registered_key_and_says_what_they_cover(
    serve: Any, tmp_path: Path
) -> None:
    key = Ed25519PrivateKey.generate()
    rx = serve(gateways=_registry(tmp_path, {GATEWAY: {"token_sha256": _sha("t"), "public_key": _pub_hex(key)}}))
    chain = Chain()
    recs = [*chain.readings(5), _checkpoint(chain, key), *chain.readings(3), _checkpoint(chain, key)]
    assert rx.client.post(recs, token="t").status_code == 200
    s = rx.stream(chain.stream)
    cp = s["checkpoints"]
    assert (cp["count"], cp["verified"], cp["bad"], s["verdict"]) == (2, 2, [], "complete-and-verified")
    assert cp["last_verified"]["covers"] == [1, 9] and cp["last_verified"]["seq"] == 10
    assert cp["last_verified"]["key_id"] == protocol.key_id(bytes.fromhex(_pub_hex(key)))


def test_a_checkpoint_signed_by_another_key_makes_the_stream_not_verified(serve: Any, tmp_path: Path) -> None:
    key, forger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    rx = serve(gateways=_registry(tmp_path, {GATEWAY: {"token_sha256": _sha("t"), "public_key": _pub_hex(key)}}))
    chain = Chain()
    recs = [*chain.readings(3), _checkpoint(chain, forger)]
    rx.client.post(recs, token="t")
    s = rx.stream(chain.stream)
    assert s["verdict"] == "not-verified" and s["checkpoints"]["verified"] == 0
    assert s["verdict_reasons"] == [f"checkpoint at seq 4 does not verify: signed by key "
                                    f"'{protocol.key_id(bytes.fromhex(_pub_hex(forger)))}', not the registered key "
                                    f"{protocol.key_id(bytes.fromhex(_pub_hex(key)))}"]


def test_without_a_registered_key_checkpoints_are_reported_unchecked(rx: Any) -> None:
    chain = Chain()
    rx.client.post([*chain.readings(2), _checkpoint(chain, Ed25519PrivateKey.generate())])
    s = rx.stream(chain.stream)
    assert s["checkpoints"]["checked"] is False and s["verdict"] == "complete-and-verified"


def test_gaps_of_refused_batches_the_gateway_collapsed_into_one_event_are_explained_by_its_ranges(rx: Any) -> None:
    # The uplink reports the first refused batch in one batch_set_aside event, then the
    # next ones of the same refusal episode in one summary with their ranges
    # (agent/uplink/loop.py, _end_refusals): every one of those gaps is explained.
    chain = Chain()
    recs = chain.readings(15)
    reason = "server rejected batch 4-6: HTTP 422"
    first = chain.event("batch_set_aside", {"first_seq": 4, "last_seq": 6, "count": 3, "status": 422,
                                            "reason": reason, "kept_locally": True})
    summary = chain.event("batch_set_aside", {
        "repeated": True, "batches": 2, "count": 6, "ranges": [[7, 9], [10, 12]], "ranges_complete": True,
        "status": 422, "reason": reason, "still_refusing": False, "kept_locally": True})
    rx.client.post(recs[:3] + recs[12:] + [first, summary])
    s = rx.stream(chain.stream)
    assert s["gaps"] == [[4, 12]]
    assert [(g["first"], g["last"], g["explained"], g["set_aside_by"]) for g in s["gap_details"]] == [
        (4, 12, True, [16, 17, 17])]
    assert [(x["first_seq"], x["last_seq"], x["count"]) for x in s["set_aside"]] == [(4, 6, 3), (7, 9, 3), (10, 12, 3)]


def test_a_gap_beyond_the_ranges_a_summary_lists_stays_unexplained(rx: Any) -> None:
    chain = Chain()
    recs = chain.readings(12)
    summary = chain.event("batch_set_aside", {
        "repeated": True, "batches": 51, "count": 153, "ranges": [[4, 6]], "ranges_complete": False,
        "status": 422, "reason": "HTTP 422", "still_refusing": True, "kept_locally": True})
    rx.client.post(recs[:3] + recs[9:] + [summary])
    s = rx.stream(chain.stream)
    assert s["gaps"] == [[4, 9]]
    assert [(g["first"], g["last"], g["explained"]) for g in s["gap_details"]] == [(4, 9, False)]


def test_a_gap_the_gateway_set_aside_is_reported_explained_with_its_reason_and_still_a_gap(rx: Any) -> None:
    from agent.receiver import render_text

    chain = Chain()
    recs = chain.readings(8)
    aside = chain.event("batch_set_aside", {"first_seq": 4, "last_seq": 6, "count": 3, "status": 422,
                                            "reason": "server rejected batch 4-6: HTTP 422", "kept_locally": True})
    rx.client.post(recs[:3] + recs[6:] + [aside])
    extra = chain.readings(3)
    rx.client.post(extra[2:])  # 10-11 missing, not explained
    s = rx.stream(chain.stream)
    assert s["gaps"] == [[4, 6], [10, 11]]
    assert [(g["first"], g["last"], g["explained"]) for g in s["gap_details"]] == [(4, 6, True), (10, 11, False)]
    assert s["set_aside"] == [{"event_seq": 9, "first_seq": 4, "last_seq": 6, "count": 3, "status": 422,
                               "reason": "server rejected batch 4-6: HTTP 422"}]
    assert s["verdict"] == "not-verified"
    assert s["verdict_reasons"] == ["2 gap(s), 5 record(s) missing (1 gap(s), 3 record(s), explained: set aside "
                                    "by the gateway)"]
    text = render_text(rx.receiver.report())
    assert "gap        4-6: explained: set aside by the gateway (server rejected batch 4-6: HTTP 422)" in text
    assert "gap        10-11: unexplained" in text
