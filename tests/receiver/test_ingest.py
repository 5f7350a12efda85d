"""POST /v1/batches: idempotent storage, encodings, auth, and every refusal status."""

from __future__ import annotations

import gzip
import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent.receiver import Receiver, ReceiverError
from tests.receiver.conftest import GATEWAY, TS, Chain, Client, body_of, key_of, rehash


def test_batch_is_stored_and_counted(rx: Any) -> None:
    recs = Chain().readings(5)
    r = rx.client.post(recs)
    assert r.status_code == 200
    assert r.json() == {"stored": 5, "duplicates": 0, "conflicts": 0}
    assert rx.receiver.records() == recs


def test_resent_batch_is_counted_as_duplicates_and_stored_once(rx: Any) -> None:
    chain = Chain()
    recs = chain.readings(5)
    assert rx.client.post(recs).json()["stored"] == 5
    again = rx.client.post(recs)
    assert again.status_code == 200
    assert again.json() == {"stored": 0, "duplicates": 5, "conflicts": 0}
    assert rx.receiver.records() == recs
    s = rx.stream(chain.stream)
    assert s["records"] == 5 and s["duplicates"] == 5 and s["verdict"] == "complete-and-verified"


def test_overlapping_batch_stores_only_the_new_records(rx: Any) -> None:
    recs = Chain().readings(8)
    rx.client.post(recs[:5])
    r = rx.client.post(recs[2:])
    assert r.json() == {"stored": 3, "duplicates": 3, "conflicts": 0}
    assert [x["seq"] for x in rx.receiver.records()] == list(range(1, 9))


def test_concurrent_resends_of_one_batch_store_each_record_once(rx: Any) -> None:
    recs = Chain().readings(50)
    results: list[dict[str, int]] = []

    def send() -> None:
        c = Client(rx.url)
        try:
            results.append(c.post(recs).json())
        finally:
            c.close()

    threads = [threading.Thread(target=send) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sum(r["stored"] for r in results) == 50
    assert sum(r["duplicates"] for r in results) == 250
    assert rx.receiver.records() == recs


def test_gzip_and_plain_bodies_are_both_accepted_and_stored_as_sent(rx: Any) -> None:
    chain = Chain()
    plain = [
        chain.reading(3.75, raw=3.8, calibration="CAL-1", rssi=-71),
        chain.alarm(),
        chain.event("config_applied", {"version": 3, "changed": ["rules"], "note": "Kühlschrank ok"}),
    ]
    zipped = chain.readings(40)
    assert rx.client.post(plain).json()["stored"] == 3
    assert rx.client.post(zipped, compress=True).json()["stored"] == 40
    assert rx.receiver.records(GATEWAY, chain.stream) == plain + zipped
    assert rx.stream(chain.stream)["chain_breaks"] == []


def test_records_are_filtered_by_gateway_and_stream(rx: Any) -> None:
    a, b = Chain(), Chain()
    rx.client.post(a.readings(2), gateway_id="gw-a")
    rx.client.post(b.readings(3), gateway_id="gw-b")
    assert len(rx.receiver.records()) == 5
    assert [r["stream"] for r in rx.receiver.records("gw-b")] == [b.stream] * 3
    assert rx.receiver.records(stream=a.stream)[0]["stream"] == a.stream
    assert rx.receiver.records("gw-a", b.stream) == []


def test_conflicting_resend_is_kept_aside_reported_and_never_overwrites(rx: Any) -> None:
    chain = Chain()
    recs = chain.readings(3)
    rx.client.post(recs)
    forged = [recs[0], rehash({**recs[1], "value": 2.0}), recs[2]]
    r = rx.client.post(forged)
    assert r.status_code == 200
    assert r.json() == {"stored": 0, "duplicates": 2, "conflicts": 1}
    rx.client.post(forged)  # the same conflict again is counted, not listed twice
    assert rx.receiver.records() == recs
    s = rx.stream(chain.stream)
    assert len(s["conflicts"]) == 1
    c = s["conflicts"][0]
    assert (c["seq"], c["stored_hash"], c["received_hash"], c["times"]) == (2, recs[1]["hash"], forged[1]["hash"], 2)
    assert s["verdict"] == "not-verified" and any("conflict" in why for why in s["verdict_reasons"])


def test_record_with_bad_hash_is_stored_as_evidence_not_refused(rx: Any) -> None:
    recs = Chain().readings(3)
    recs[1]["value"] = 99.0
    assert rx.client.post(recs).json()["stored"] == 3
    assert rx.receiver.records()[1]["value"] == 99.0


# -- auth ------------------------------------------------------------------------------


def test_missing_token_is_401_wrong_token_403_right_token_stored(serve: Any) -> None:
    rx = serve(token="s3cret")
    recs = Chain().readings(2)
    missing = rx.client.post(recs, token=None)
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert rx.client.post(recs, token="guess").status_code == 403
    assert rx.receiver.records() == []
    assert rx.client.post(recs, token="s3cret").json()["stored"] == 2


def test_report_needs_the_token_but_health_does_not(serve: Any) -> None:
    rx = serve(token="s3cret")
    assert rx.client.get("/v1/report", token=None).status_code == 401
    assert rx.client.get("/v1/report", token="nope").status_code == 403
    assert rx.client.get("/v1/report").status_code == 200
    health = rx.client.get("/v1/health", token=None)
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_unknown_path_is_404(rx: Any) -> None:
    assert rx.client.get("/v1/nothing").status_code == 404
    assert rx.client.get("/v1/_faults").status_code == 404  # faults not allowed


# -- 400: unparseable ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "headers", "why"),
    [
        (b"{not json", {}, "not JSON"),
        (b'{"protocol": NaN}', {}, "not JSON"),
        (b"\xff\xfe{}", {}, "not UTF-8"),
        (b'{"protocol": 1}', {"Content-Encoding": "gzip"}, "not valid gzip"),
        (gzip.compress(b"{}" * 100)[:-6], {"Content-Encoding": "gzip"}, "truncated"),
        (b"{}", {"Content-Encoding": "br"}, "not supported"),
    ],
    ids=["bad-json", "nan", "not-utf8", "not-gzip", "truncated-gzip", "unknown-encoding"],
)
def test_unparseable_body_is_400_and_nothing_is_stored(rx: Any, raw: bytes, headers: dict[str, str], why: str) -> None:
    recs = Chain().readings(1)
    r = rx.client.post(recs, raw=raw, headers=headers)
    assert r.status_code == 400
    assert why in r.json()["error"]
    assert rx.receiver.records() == []


# -- 422: schema violations ------------------------------------------------------------


def _problems(r: Any) -> str:
    assert r.status_code == 422, r.text
    return "\n".join(r.json()["problems"])


def test_wrong_protocol_version_is_422(rx: Any) -> None:
    recs = Chain().readings(1)
    assert "protocol: must be 1" in _problems(rx.client.post(recs, doc=body_of(recs, protocol=2)))


def test_every_missing_field_is_listed_in_one_422(rx: Any) -> None:
    recs = Chain().readings(2)
    doc = body_of(recs)
    del doc["records"][0]["ts"]
    del doc["records"][1]["value"]
    del doc["sent_at"]
    problems = _problems(rx.client.post(recs, doc=doc))
    assert "records[0].ts: missing" in problems
    assert "records[1].value: missing" in problems
    assert "sent_at" in problems
    assert rx.receiver.records() == []


def test_field_of_the_wrong_kind_is_422(rx: Any) -> None:
    recs = Chain().readings(1)
    doc = body_of(recs)
    doc["records"][0].update(seq="1", time_quality="roughly", ts="2026-11-23 08:15")
    problems = _problems(rx.client.post(recs, doc=doc, key=key_of(recs)))
    assert "records[0].seq" in problems and "records[0].time_quality" in problems and "records[0].ts" in problems


@pytest.mark.parametrize("order", [[1, 3, 2], [1, 2, 2]], ids=["reordered", "repeated"])
def test_records_not_strictly_ascending_by_seq_is_422(rx: Any, order: list[int]) -> None:
    recs = Chain().readings(3)
    sent = [recs[i - 1] for i in order]
    assert "strictly ascending" in _problems(rx.client.post(sent, key=f"{GATEWAY}:{recs[0]['stream']}:1-3"))
    assert rx.receiver.records() == []


def test_idempotency_key_not_matching_the_records_is_422(rx: Any) -> None:
    recs = Chain().readings(3)
    assert "does not match" in _problems(rx.client.post(recs, key=f"{GATEWAY}:{recs[0]['stream']}:1-4"))
    assert "does not match" in _problems(rx.client.post(recs, key=f"other:{recs[0]['stream']}:1-3"))
    assert "missing" in _problems(rx.client.post(recs, key=None))


def test_batch_with_two_streams_is_422(rx: Any) -> None:
    recs = Chain().readings(1) + Chain().readings(2)[1:]
    assert "one stream" in _problems(rx.client.post(recs))


@pytest.mark.parametrize(
    "doc", [[], {"protocol": 1, "gateway_id": "g", "sent_at": TS, "records": []}], ids=["not-an-object", "no-records"]
)
def test_body_that_is_not_a_batch_is_422(rx: Any, doc: Any) -> None:
    r = rx.client.post([], doc=doc)
    assert r.status_code == 422


# -- 413: too large --------------------------------------------------------------------


def test_gzip_bomb_is_413_without_being_expanded(rx: Any) -> None:
    recs = Chain().readings(1)
    bomb = gzip.compress(b'{"protocol": 1, "pad": "' + b" " * (64 << 20) + b'"}', compresslevel=9)
    assert len(bomb) < 200_000  # small on the wire, 64 MiB expanded
    r = rx.client.post(recs, raw=bomb, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 413
    assert rx.receiver.records() == []


def test_plain_body_over_the_configured_limit_is_413_and_just_under_is_stored(serve: Any) -> None:
    rx = serve(max_body=4096)
    recs = Chain().readings(40)
    raw = json.dumps(body_of(recs)).encode()
    assert len(raw) > 4096
    assert rx.client.post(recs).status_code == 413
    assert rx.client.post(recs, compress=True).status_code == 413  # the limit is on the decompressed size
    small = recs[:5]
    assert rx.client.post(small).json()["stored"] == 5


# -- durability and lifecycle ----------------------------------------------------------


def test_batch_is_committed_before_the_200_and_the_db_is_wal_with_full_sync(rx: Any) -> None:
    recs = Chain().readings(3)
    assert rx.client.post(recs).status_code == 200
    other = sqlite3.connect(rx.receiver.store.path)  # another connection sees only what is committed
    try:
        assert other.execute("SELECT count(*) FROM records").fetchone()[0] == 3
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        other.close()
    sync = rx.receiver.store._query("PRAGMA synchronous")[0][0]
    assert sync == 2  # FULL


def test_stored_body_alone_proves_the_hash(rx: Any) -> None:
    recs = Chain().readings(2)
    rx.client.post(recs)
    for body, prev, h in rx.receiver.store._query("SELECT body, prev_hash, hash FROM records"):
        assert hashlib.sha256(prev.encode() + body.encode()).hexdigest() == h


def test_server_close_does_not_wait_for_idle_keep_alive_clients(serve: Any) -> None:
    rx = serve()
    idle = Client(rx.url)
    try:
        assert idle.post(Chain().readings(1)).status_code == 200  # its connection stays open, idle
        started = time.monotonic()
        rx.server.shutdown()
        rx.server.server_close()
        assert time.monotonic() - started < 2
    finally:
        idle.close()


def test_database_from_a_newer_receiver_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "new.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version=99")
    conn.close()
    with pytest.raises(ReceiverError, match="newer"):
        Receiver(db)


def test_file_that_is_not_a_database_is_refused_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ReceiverError, match="cannot open"):
        Receiver(bad)
