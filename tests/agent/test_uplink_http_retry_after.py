"""The HTTP transport hands the server's Retry-After to the loop (as seconds and as a date),
against the reference receiver on loopback with its fault plan."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import UplinkConfig
from agent.exc import SyncTransient
from agent.receiver import Receiver
from agent.store import Store
from agent.uplink.base import Batch
from agent.uplink.http import HttpTransport

TOKEN = "retry-after-token"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Receiver, str]]:
    rx = Receiver(tmp_path / "rx.db", token=TOKEN, allow_faults=True)
    srv = rx.make_server("127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield rx, f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)
        rx.close()


def _batch(tmp_path: Path) -> Batch:
    store = Store.open(tmp_path / "store.db", gateway_id="gw-ra")
    store.append([{"type": "reading", "ts": 1.79e9 + i, "time_quality": "synced", "sensor_id": "p1",
                   "quantity": "temperature", "value": 4.25, "unit": "Cel"} for i in range(3)])
    batch = Batch("gw-ra", store.stream_id, store.pending(10))
    store.close()
    return batch


def _refused(server: tuple[Receiver, str], tmp_path: Path, fault: dict[str, object]) -> SyncTransient:
    """What the transport raises for one batch the receiver answers with ``fault``."""
    rx, url = server
    rx.set_faults([fault])
    up = HttpTransport(UplinkConfig(url=url, token=TOKEN))
    try:
        with pytest.raises(SyncTransient) as caught:
            up.send(_batch(tmp_path))
    finally:
        up.close()
    return caught.value


def test_a_503_with_retry_after_in_seconds_reaches_the_loop_as_its_delay(server: tuple[Receiver, str],
                                                                         tmp_path: Path) -> None:
    exc = _refused(server, tmp_path, {"status": 503, "retry_after": 7})
    assert exc.status == 503 and exc.retry_after == 7.0


def test_a_429_with_retry_after_as_an_http_date_reaches_the_loop_as_seconds_from_now(server: tuple[Receiver, str],
                                                                                   tmp_path: Path) -> None:
    exc = _refused(server, tmp_path, {"status": 429, "retry_after": 30, "http_date": True})
    assert exc.status == 429
    assert exc.retry_after is not None and 25.0 <= exc.retry_after <= 31.0
