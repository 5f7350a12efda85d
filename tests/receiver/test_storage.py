"""One storage interface, two backends: every test here runs on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import pytest

from agent.cli import main
from agent.receiver import Receiver, ReceiverError
from agent.receiver.validate import validate_batch
from tests.receiver.conftest import GATEWAY, Chain, body_of, key_of


def _batch(records: list[dict[str, Any]], gateway_id: str = GATEWAY, **extra: Any) -> Any:
    return validate_batch(body_of(records, gateway_id, **extra), key_of(records, gateway_id))


def _execute(db: str, sql: str) -> None:
    """Edit the receiver's database behind its back, as someone holding it could."""
    if db.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(sql)
    else:
        conn = sqlite3.connect(db)
        with conn:
            conn.execute(sql)
        conn.close()


def test_store_is_idempotent_and_a_different_resend_is_a_conflict_on_both_backends(db: str) -> None:
    chain = Chain()
    recs = chain.readings(5)
    with Receiver(db) as rx:
        assert rx.store_batch(_batch(recs[:3])) == {"stored": 3, "duplicates": 0, "conflicts": 0}
        forged = dict(recs[2], value=99.0, hash="e" * 64)
        assert rx.store_batch(_batch([recs[1], forged, recs[3], recs[4]])) == {
            "stored": 2, "duplicates": 1, "conflicts": 1}
        assert [r["seq"] for r in rx.records(GATEWAY)] == [1, 2, 3, 4, 5]
        assert rx.records(GATEWAY)[2]["hash"] == recs[2]["hash"]  # the first version stays
        s = rx.report()["gateways"][GATEWAY]["streams"][chain.stream]
        assert (s["records"], s["duplicates"], [c["seq"] for c in s["conflicts"]]) == (5, 1, [3])
        assert s["verdict"] == "not-verified" and s["verdict_reasons"] == ["1 conflicting re-send(s)"]


def test_a_link_whose_neighbour_comes_later_is_checked_when_it_comes(db: str) -> None:
    chain = Chain()
    recs = chain.readings(6)
    recs[3] = {**recs[3], "prev_hash": "a" * 64}  # breaks the link 3 -> 4 (and its own hash)
    with Receiver(db) as rx:
        rx.store_batch(_batch([recs[3], recs[5]]))  # 4 and 6 first: no neighbour yet
        rx.store_batch(_batch(recs[:3]))
        rx.store_batch(_batch([recs[4]]))
        links = dict(rx.store._query("SELECT seq, link_ok FROM records ORDER BY seq"))  # type: ignore[attr-defined]
        assert {s: (None if v is None else bool(v)) for s, v in links.items()} == {
            1: True, 2: True, 3: True, 4: False, 5: True, 6: True}
        s = rx.report()["gateways"][GATEWAY]["streams"][chain.stream]
        assert ("prev_hash mismatch", 4) in {(b["why"], b["seq"]) for b in s["chain_breaks"]}


def test_an_edited_value_in_the_database_reads_not_verified_and_the_report_command_exits_1(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    chain = Chain()
    with Receiver(db) as rx:
        rx.store_batch(_batch(chain.readings(4)))
        assert rx.report()["gateways"][GATEWAY]["verdict"] == "complete-and-verified"
    assert main(["receiver", "report", "--db", db]) == 0
    capsys.readouterr()
    # hash_ok stays 1: only re-verification from the stored bytes can tell
    _execute(db, "UPDATE records SET body = replace(body, '\"value\":4.25', '\"value\":2.25') WHERE seq = 3")
    with Receiver(db) as rx:
        s = rx.report()["gateways"][GATEWAY]["streams"][chain.stream]
        assert s["verdict"] == "not-verified"
        assert [(b["seq"], b["why"]) for b in s["chain_breaks"]] == [(3, "bad hash")]
    assert main(["receiver", "report", "--db", db, "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["gateways"][GATEWAY]["verdict"] == "not-verified"


def test_fleet_view_shows_each_gateways_config_last_batch_verdict_and_active_alarms(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = Chain(), Chain()
    cfg1 = {"version": 7, "sha256": "1" * 64, "signer": "9f2c4e1a0b3d5e6f"}
    cfg2 = {"version": "2026.11-2", "sha256": "2" * 64, "signer": None}
    with Receiver(db) as rx:
        rx.store_batch(_batch(a.readings(2), "gw-a", config={**cfg1, "version": 6}))
        raised = a.alarm(alarm_id="hi-1")
        rx.store_batch(_batch([raised, a.alarm(alarm_id="lo-1", severity="warning")], "gw-a", config=cfg1))
        rx.store_batch(_batch([a.alarm(alarm_id="lo-1", state="cleared")], "gw-a"))  # no config: keeps cfg1
        rx.store_batch(_batch(b.readings(3), "gw-b", config=cfg2))
        fleet = rx.fleet()["gateways"]
    assert fleet["gw-a"]["config"] == cfg1 and fleet["gw-b"]["config"] == cfg2
    assert fleet["gw-a"]["batches"] == 3 and fleet["gw-a"]["last_batch_at"]
    assert [x["alarm_id"] for x in fleet["gw-a"]["active_alarms"]] == ["hi-1"]  # lo-1 was cleared
    assert fleet["gw-b"]["active_alarms"] == []
    assert fleet["gw-a"]["verdict"] == fleet["gw-b"]["verdict"] == "complete-and-verified"
    assert main(["receiver", "fleet", "--db", db]) == 0
    text = capsys.readouterr().out
    assert "gw-a: complete-and-verified; config 7 (111111111111…, signed by 9f2c4e1a0b3d5e6f)" in text
    assert "active alarms: hi-1 alarm p1" in text
    assert "gw-b: complete-and-verified; config 2026.11-2" in text


def test_a_malformed_config_member_is_a_422_problem() -> None:
    from agent.receiver.validate import SchemaViolation

    recs = Chain().readings(1)
    with pytest.raises(SchemaViolation) as err:
        validate_batch(body_of(recs, config={"version": True, "sha256": "x", "signer": 5}), key_of(recs))
    assert err.value.problems == [
        "config.version: must be an integer or a non-empty printable string, not True",
        "config.sha256: must be 64 lowercase hex digits or null",
        "config.signer: must be a key id or null, not 5",
    ]


def test_a_database_of_a_newer_schema_is_refused_on_both_backends(db: str) -> None:
    with Receiver(db):
        pass
    if db.startswith("postgresql://"):
        _execute(db, "INSERT INTO coldgate_schema (version) VALUES (99)")
    else:
        _execute(db, "PRAGMA user_version=99")
    with pytest.raises(ReceiverError, match="newer"):
        Receiver(db)


def test_a_version_1_sqlite_database_migrates_and_keeps_its_records(tmp_path: Any) -> None:
    from agent.receiver.sqlite_backend import MIGRATIONS

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    import sqlite_utils

    MIGRATIONS[0](sqlite_utils.Database(conn))
    conn.execute("PRAGMA user_version=1")
    chain = Chain()
    alarm = chain.alarm()
    body = json.dumps({k: v for k, v in alarm.items() if k != "hash"}, sort_keys=True, separators=(",", ":"))
    conn.execute("INSERT INTO records VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                 (GATEWAY, chain.stream, 1, "alarm", None, alarm["ts"], "synced", alarm["prev_hash"], alarm["hash"],
                  1, alarm["ts"], body))
    conn.close()
    with Receiver(path) as rx:
        assert rx.store._query("PRAGMA user_version")[0][0] == 2  # type: ignore[attr-defined]
        assert [a["alarm_id"] for a in rx.fleet()["gateways"][GATEWAY]["active_alarms"]] == ["a-1"]


def test_links_of_a_batch_sent_ahead_of_a_backlog_are_judged_when_the_backlog_arrives(db: str) -> None:
    chain = Chain()
    recs = chain.readings(60)
    recs[40] = {**recs[40], "prev_hash": "b" * 64}  # breaks 40 -> 41
    with Receiver(db) as rx:
        rx.store_batch(_batch([recs[1], recs[40], recs[59]]))  # seqs 2, 41, 60: far apart
        rx.store_batch(_batch(recs[:1] + recs[2:40]))
        rx.store_batch(_batch(recs[41:59]))
        unjudged = rx.store._query("SELECT count(*) FROM records WHERE link_ok IS NULL")  # type: ignore[attr-defined]
        broken = rx.store._query("SELECT seq FROM records WHERE link_ok = ?", (False,))  # type: ignore[attr-defined]
        assert unjudged == [(0,)] and broken == [(41,)]


def test_an_id_no_database_column_can_hold_is_a_422_and_content_with_no_canonical_form_is_stored_as_a_bad_hash(
    db: str,
) -> None:
    from agent.receiver.validate import SchemaViolation

    chain = Chain()
    nul = chain.event("driver\x00error", {"x": 1})
    with pytest.raises(SchemaViolation) as err:
        validate_batch(body_of([nul]), key_of([nul]))
    assert err.value.problems == ["records[0].event: must be a non-empty printable string, not 'driver\\x00error'"]
    chain = Chain()
    odd = {**chain.reading(), "label": "probe \ud800"}  # a lone surrogate: valid JSON, no UTF-8, no RFC 8785 form
    with Receiver(db) as rx:
        assert rx.store_batch(_batch([odd, chain.reading()]))["stored"] == 2  # kept as evidence, never refused
        s = rx.report()["gateways"][GATEWAY]["streams"][chain.stream]
        assert [(b["seq"], b["why"]) for b in s["chain_breaks"]] == [(1, "bad hash")]


def test_a_batch_whose_last_write_fails_stores_nothing_and_the_next_batch_goes_in(
        db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # PostgreSQL sends a batch's writes and COMMIT in one query: a statement failing among
    # them must take the whole transaction with it, not leave the records without the rest.
    chain = Chain()
    recs = chain.readings(6)
    with Receiver(db) as rx:
        storage = rx.store
        real = storage._note_gateway  # noqa: SLF001

        def fails_after_the_records(cur: Any, *args: Any) -> None:
            real(cur, *args)
            cur.execute("INSERT INTO no_such_table VALUES (1)")

        monkeypatch.setattr(storage, "_note_gateway", fails_after_the_records)
        with pytest.raises(ReceiverError):
            rx.store_batch(_batch(recs[:3]))
        monkeypatch.undo()
        assert rx.records(GATEWAY) == []
        assert rx.store_batch(_batch(recs[:3])) == {"stored": 3, "duplicates": 0, "conflicts": 0}
        assert rx.store_batch(_batch(recs[2:])) == {"stored": 3, "duplicates": 1, "conflicts": 0}
        s = rx.report()["gateways"][GATEWAY]["streams"][chain.stream]
        assert (s["records"], s["verdict"]) == (6, "complete-and-verified")


def test_backslashes_tabs_and_newlines_in_values_are_stored_byte_for_byte_and_verify_on_both_backends(db: str) -> None:
    # PostgreSQL takes a batch's rows by COPY in its text format, where these are escapes
    chain = Chain()
    recs = [
        chain.event("operator\\note", {"text": "line 1\nline 2\tcol \\N \\\\ C:\\temp\r", "path": "a\\b"}),
        chain.alarm(alarm_id="a\\1"),
        chain.reading(sensor_id="probe\\N"),
    ]
    with Receiver(db) as rx:
        assert rx.store_batch(_batch(recs)) == {"stored": 3, "duplicates": 0, "conflicts": 0}
        stored = rx.records(GATEWAY)
        assert stored == [json.loads(json.dumps(r)) for r in recs]
        assert rx.store.events(GATEWAY, chain.stream, "operator\\note")[0][1] == stored[0]  # the event column too
        s = rx.report()["gateways"][GATEWAY]["streams"][chain.stream]
        assert s["verdict"] == "complete-and-verified", s


def test_a_row_postgresql_refuses_inside_the_copy_fails_the_batch_as_storage_unavailable_and_stores_nothing(
        postgres: Any) -> None:
    from agent.receiver import StorageUnavailable
    from agent.receiver.pg_backend import PgStorage

    store = PgStorage(postgres.url)
    row = (GATEWAY, "s-1", 1, "reading", None, None, None, "2026-11-23T08:15:02.125Z", "synced", "0" * 64,
           "1" * 64, True, True, "2026-11-23T08:15:03.000Z", '{"a":"tab\\there"}')
    try:
        with pytest.raises(StorageUnavailable, match="duplicate key"):
            with store._transaction() as cur:
                store._insert_records(cur, [row, row])  # the same key twice: the COPY is refused
        with store._transaction() as cur:
            store._insert_records(cur, [row])
        assert store._query("SELECT seq, body FROM records") == [(1, '{"a":"tab\\there"}')]
    finally:
        store.close()
