"""Fault injection: each kind does what the drill needs, to one request each, in order."""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from agent.receiver import Receiver, ReceiverError
from tests.receiver.conftest import Chain


@pytest.mark.parametrize("status", [500, 400, 401, 503])
def test_status_fault_answers_that_status_and_stores_nothing(serve: Any, status: int) -> None:
    rx = serve(allow_faults=True, faults=[{"status": status}])
    recs = Chain().readings(3)
    r = rx.client.post(recs)
    assert r.status_code == status and "injected" in r.json()["error"]
    assert rx.receiver.records() == []
    assert rx.client.post(recs).json()["stored"] == 3  # the fault was for one request only


def test_429_carries_retry_after_in_seconds(serve: Any) -> None:
    rx = serve(allow_faults=True, faults=[{"status": 429, "retry_after": 2}])
    r = rx.client.post(Chain().readings(1))
    assert r.status_code == 429 and r.headers["Retry-After"] == "2"


def test_429_carries_retry_after_as_an_http_date(serve: Any) -> None:
    fixed = "Wed, 21 Oct 2026 07:28:00 GMT"
    rx = serve(
        allow_faults=True,
        faults=[{"status": 429, "retry_after": 30, "http_date": True}, {"status": 429, "retry_after": fixed}],
    )
    first = rx.client.post(Chain().readings(1))
    ahead = parsedate_to_datetime(first.headers["Retry-After"]).timestamp() - time.time()
    assert 25 < ahead <= 31
    assert rx.client.post(Chain().readings(1)).headers["Retry-After"] == fixed


def test_faults_apply_in_order_one_request_each_and_times_repeats(serve: Any) -> None:
    rx = serve(allow_faults=True, faults=[{"status": 503, "times": 2}, {"status": 500}])
    recs = Chain().readings(1)
    assert [rx.client.post(recs).status_code for _ in range(4)] == [503, 503, 500, 200]


def test_delay_holds_the_response_past_the_client_timeout_then_stores(serve: Any) -> None:
    rx = serve(allow_faults=True, faults=[{"delay_s": 0.8}])
    recs = Chain().readings(4)
    with pytest.raises(requests.Timeout):
        rx.client.post(recs, timeout=0.2)
    deadline = time.monotonic() + 5
    while len(rx.receiver.records()) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert rx.receiver.records() == recs
    assert rx.client.post(recs).json() == {"stored": 0, "duplicates": 4, "conflicts": 0}


def test_delay_within_the_client_timeout_is_just_slow(serve: Any) -> None:
    rx = serve(allow_faults=True, faults=[{"delay_s": 0.3}])
    started = time.monotonic()
    assert rx.client.post(Chain().readings(2)).json()["stored"] == 2
    assert time.monotonic() - started >= 0.3


def test_reset_closes_the_connection_without_response_and_stores_nothing(serve: Any) -> None:
    rx = serve(allow_faults=True, faults=[{"reset": True}])
    recs = Chain().readings(3)
    with pytest.raises(requests.ConnectionError):
        rx.client.post(recs)
    assert rx.receiver.records() == []
    assert rx.client.post(recs).json()["stored"] == 3


def test_drop_response_stores_durably_then_the_resend_is_a_duplicate(serve: Any) -> None:
    rx = serve(allow_faults=True, faults=[{"drop_response": True}])
    recs = Chain().readings(3)
    with pytest.raises(requests.ConnectionError):
        rx.client.post(recs)
    assert rx.receiver.records() == recs
    assert rx.client.post(recs).json() == {"stored": 0, "duplicates": 3, "conflicts": 0}


def test_fault_plan_is_set_over_http_and_only_batches_consume_it(serve: Any) -> None:
    rx = serve(allow_faults=True)
    r = rx.client.session.post(f"{rx.url}/v1/_faults", json=[{"status": 500}, {"reset": True}], timeout=5)
    assert r.status_code == 200 and r.json()["pending"] == [{"status": 500}, {"reset": True}]
    assert rx.client.get("/v1/health").status_code == 200
    assert rx.client.get("/v1/_faults").json()["pending"] == [{"status": 500}, {"reset": True}]
    assert rx.client.post(Chain().readings(1)).status_code == 500
    assert rx.client.get("/v1/_faults").json()["pending"] == [{"reset": True}]


def test_fault_endpoint_refuses_a_bad_plan_and_is_absent_unless_allowed(serve: Any) -> None:
    rx = serve(allow_faults=True)
    bad = rx.client.session.post(f"{rx.url}/v1/_faults", json=[{"status": 200}], timeout=5)
    assert bad.status_code == 400 and "400..599" in bad.json()["error"]
    typo = rx.client.session.post(f"{rx.url}/v1/_faults", json=[{"stauts": 500}], timeout=5)
    assert typo.status_code == 400 and "unknown fault key" in typo.json()["error"]
    plain = serve()
    off = plain.client.session.post(f"{plain.url}/v1/_faults", json=[{"status": 500}], timeout=5)
    assert off.status_code == 404
    assert plain.client.post(Chain().readings(1)).status_code == 200


def test_faults_need_allow_faults(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="allow_faults"):
        Receiver(tmp_path / "a.db", faults=[{"status": 500}])
    with Receiver(tmp_path / "b.db") as rx, pytest.raises(ReceiverError):
        rx.set_faults([{"status": 500}])


def test_set_faults_method_replaces_the_plan(serve: Any) -> None:
    rx = serve(allow_faults=True, faults=[{"status": 500}])
    rx.receiver.set_faults([{"status": 401}])
    assert rx.client.post(Chain().readings(1)).status_code == 401
    assert len(rx.receiver.faults) == 0
