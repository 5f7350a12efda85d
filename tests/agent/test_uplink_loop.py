"""The uplink loop against the shipped fake transport: the answer table, backoff, refusals.

A real store in ``tmp_path``; the central side is :class:`agent.uplink.fake.FakeTransport`
with a handler that answers as each test needs.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import pytest

from agent.config import UplinkConfig
from agent.exc import SyncRejected, SyncTooLarge, SyncTransient
from agent.stamp import Stamper
from agent.store import Store
from agent.timebase import Clock
from agent.uplink.base import Answer, Batch
from agent.uplink.fake import FakeTransport
from agent.uplink.http import parse_retry_after
from agent.uplink.loop import UplinkLoop

T0 = 1_790_000_000.0


def make_store(tmp_path: Path, n: int) -> Store:
    store = Store.open(tmp_path / "s.db", gateway_id="gw", stamper=Stamper(Clock("assume_synced")))
    store.append([{"type": "reading", "ts": T0 + i, "time_quality": "synced", "sensor_id": "p",
                   "quantity": "temperature", "value": 5.0 + i / 1000, "unit": "Cel"} for i in range(n)])
    return store


def make_loop(store: Store, fake: FakeTransport, **up: Any) -> UplinkLoop:
    cfg = UplinkConfig(url="http://central.invalid", **{"batch_size": 10, **up})
    return UplinkLoop(lambda: store, lambda: fake, cfg, "gw", store.stamper, lambda item: store.append([item]),
                      rng=random.Random(1))


def events(store: Store, name: str) -> list[dict[str, Any]]:
    return [r for r in store.records(type="event") if r["event"] == name]


def test_backoff_deadlines_run_on_the_monotonic_clock_so_a_backward_step_delays_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding 8: deadlines were ``time.time() + delay``; a clock set back 3 h held every sync."""
    store = make_store(tmp_path, 5)
    down = {"on": True}

    def handler(fake: FakeTransport, batch: Batch) -> Answer:
        if down["on"]:
            raise SyncTransient("connection refused")
        return fake.store(batch)

    loop = make_loop(store, FakeTransport(handler), backoff_base_s=0.05, backoff_cap_s=0.05)
    assert loop.drain().result == "transient"
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 3 * 3600)  # fake-hwclock restored an old time
    deadline = time.monotonic() + 5
    while not loop.due():
        assert time.monotonic() < deadline, "the retry waited on the wall clock"
    down["on"] = False
    assert loop.drain().result == "ok" and store.stats()["pending"] == 0


def test_retry_after_is_honoured_but_never_beyond_the_backoff_cap(tmp_path: Path) -> None:
    store = make_store(tmp_path, 1)

    def busy(fake: FakeTransport, batch: Batch) -> Answer:
        raise SyncTransient("HTTP 429", status=429, retry_after=86_400.0)

    loop = make_loop(store, FakeTransport(busy), backoff_base_s=0.01, backoff_cap_s=2.0)
    loop.drain()
    assert loop.state.next_retry_mono is not None
    wait = loop.state.next_retry_mono - time.monotonic()
    assert 1.0 < wait <= 2.0  # the server's day is capped at backoff_cap_s, and it was honoured up to it


def test_retry_after_as_seconds_and_as_an_http_date_are_both_understood() -> None:
    now = 1_790_000_000.0
    assert parse_retry_after("120", now) == 120.0
    # RFC 9110's own example date: 784111777 seconds after the epoch
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 784_111_777.0 - 90) == pytest.approx(90.0)
    assert parse_retry_after("Thu, 01 Jan 1970 00:00:00 GMT", now) == 0.0  # a date past: at once
    assert parse_retry_after("soon", now) is None and parse_retry_after(None, now) is None


def test_the_backoff_starts_again_after_every_success_under_partial_failure(tmp_path: Path) -> None:
    """Finding 11: the failure count reset only when a pass drained everything, so with 5 %
    of requests failing the delays grew to minutes while hundreds of batches succeeded."""
    store = make_store(tmp_path, 200)
    sent = {"n": 0}

    def one_in_three(fake: FakeTransport, batch: Batch) -> Answer:
        sent["n"] += 1
        if sent["n"] % 3 == 0:
            raise SyncTransient("HTTP 503", status=503)
        return fake.store(batch)

    fake = FakeTransport(one_in_three)
    loop = make_loop(store, fake, backoff_base_s=1.0, backoff_cap_s=300.0)
    worst = 0.0
    for _ in range(100):
        state = loop.drain()
        if state.result == "ok":
            break
        worst = max(worst, state.next_retry_mono - time.monotonic())  # type: ignore[operator]
        assert state.failures == 1  # each failure follows a success: the count never grows
    assert store.stats()["pending"] == 0 and len(fake.stored) == 201  # stream_started + 200 readings
    assert worst <= 1.0  # base * 2**0: never the minutes of a growing backoff


def test_a_413_splits_the_batch_until_the_halves_fit_and_stores_every_record(tmp_path: Path) -> None:
    store = make_store(tmp_path, 10)

    accepted: list[int] = []

    def small_only(fake: FakeTransport, batch: Batch) -> Answer:
        if len(batch) > 3:
            raise SyncTooLarge("HTTP 413", status=413)
        accepted.append(len(batch))
        return fake.store(batch)

    fake = FakeTransport(small_only)
    loop = make_loop(store, fake)
    assert loop.drain().result == "ok"
    assert store.stats()["pending"] == 0 and store.stats()["set_aside"] == 0  # split, not set aside
    assert sorted(seq for _, seq in fake.stored) == list(range(1, 12))
    assert max(accepted) <= 3 and sum(accepted) == 11 and len(fake.batches) > len(accepted)


def test_a_413_of_a_single_record_is_a_refusal_and_the_rest_goes_on(tmp_path: Path) -> None:
    store = make_store(tmp_path, 4)
    giant = 3  # the third record is too large for this server

    def refuse(fake: FakeTransport, batch: Batch) -> Answer:
        if any(seq == giant for seq, _, _ in batch.records):
            raise SyncTooLarge("HTTP 413", status=413)
        return fake.store(batch)

    fake = FakeTransport(refuse)
    loop = make_loop(store, fake)
    loop.drain()
    loop.drain()  # the batch_set_aside event goes next
    assert [r["seq"] for r in store.records(with_state=True) if r["_state"] == "set_aside"] == [giant]
    aside = events(store, "batch_set_aside")
    assert len(aside) == 1 and aside[0]["details"]["status"] == 413 and aside[0]["details"]["first_seq"] == giant


def test_a_server_that_refuses_everything_makes_one_event_not_a_storm(tmp_path: Path) -> None:
    """Finding 9.15: each batch_set_aside event was itself refused and made another."""
    store = make_store(tmp_path, 50)

    def always_422(fake: FakeTransport, batch: Batch) -> Answer:
        raise SyncRejected("HTTP 422", status=422)

    loop = make_loop(store, FakeTransport(always_422))
    for _ in range(20):
        loop.drain()
    assert len(events(store, "batch_set_aside")) == 1  # the first refusal; the rest are counted
    assert store.stats()["pending"] == 0
    assert store.stats()["set_aside"] == store.head()[0]  # every record kept, locally

    # the server is fixed; the episode ends with one summary of what else was refused
    fixed = FakeTransport()
    loop.transport = fixed
    store.release_set_aside()
    loop.drain()
    loop.drain()
    summary = [e for e in events(store, "batch_set_aside") if e["details"].get("repeated")]
    assert len(summary) == 1 and summary[0]["details"]["batches"] >= 5
    assert store.stats()["pending"] == 0 and store.stats()["set_aside"] == 0


def test_set_aside_records_can_be_released_and_sent_again(tmp_path: Path) -> None:
    store = make_store(tmp_path, 5)
    state = {"refuse": True}

    def handler(fake: FakeTransport, batch: Batch) -> Answer:
        if state["refuse"]:
            raise SyncRejected("HTTP 400 bad field", status=400)
        return fake.store(batch)

    fake = FakeTransport(handler)
    loop = make_loop(store, fake)
    loop.drain()
    assert store.stats()["set_aside"] >= 5
    assert store.set_aside_list()[0]["reason"].startswith("HTTP 400")
    state["refuse"] = False
    released = store.release_set_aside()
    assert released["count"] >= 5 and released["ranges"][0][0] == 1
    loop.drain()
    assert store.stats()["pending"] == 0 and store.stats()["set_aside"] == 0
    assert {seq for _, seq in fake.stored} >= set(range(1, 7))


def test_records_released_on_another_connection_are_sent_by_the_uplink_reading_on_its_own(tmp_path: Path) -> None:
    """The daemon releases on the writer's connection; the uplink reads on its own, whose
    floor had gone past the set-aside readings: they stayed pending until a restart."""
    writer = make_store(tmp_path, 30)
    uplink = Store.open(tmp_path / "s.db", gateway_id="gw", create=False, stamper=writer.stamper)
    # stream_started (seq 1: events go first), the batch_set_aside event (32), readings 2-11
    refuse = {"batches": 3}

    def handler(fake: FakeTransport, batch: Batch) -> Answer:
        if refuse["batches"]:
            refuse["batches"] -= 1
            raise SyncRejected("HTTP 422", status=422)
        return fake.store(batch)

    fake = FakeTransport(handler)
    loop = UplinkLoop(lambda: uplink, lambda: fake, UplinkConfig(url="http://central.invalid", batch_size=10), "gw",
                      writer.stamper, lambda item: writer.append([item]), rng=random.Random(1))
    loop.drain()
    loop.drain()
    head = writer.head()[0]
    assert uplink.stats()["pending"] == 0 and uplink.stats()["set_aside"] == 12
    released = writer.release_set_aside()  # as _cmd_retry_set_aside does
    assert released == {"count": 12, "ranges": [[1, 11], [32, 32]]}
    loop.drain()
    assert uplink.stats()["pending"] == 0 and uplink.stats()["set_aside"] == 0
    assert {s for _, s in fake.stored} == set(range(1, head + 1))
    uplink.close()
    writer.close()


def test_the_fake_transport_stores_idempotently_and_counts_conflicts() -> None:
    fake = FakeTransport()
    b = Batch("gw", "s1", [(1, '{"a":1}', "h1"), (2, '{"a":2}', "h2")])
    assert fake.send(b) == Answer(2, 0, 0)
    assert fake.send(b) == Answer(0, 2, 0)
    assert fake.send(Batch("gw", "s1", [(2, '{"a":3}', "hX")])) == Answer(0, 0, 1)
    assert b.key == "gw:s1:1-2" and [x.key for x in b.split()] == ["gw:s1:1-1", "gw:s1:2-2"]
