"""A real receiver on loopback, and valid hash-chained records to feed it."""

from __future__ import annotations

import copy
import gzip
import json
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from agent.protocol import ZERO_HASH, canonical, record_hash
from agent.receiver import Receiver
from tests.mosquitto import broker, broker_factory  # noqa: F401 - a real Mosquitto per test
from tests.receiver import pg

GATEWAY = "gw-1"
TS = "2026-11-23T08:15:02.125Z"


def rehash(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with its own ``hash`` recomputed (its ``prev_hash`` kept): what a forger who knows the scheme does."""
    out = {k: v for k, v in record.items() if k != "hash"}
    out["hash"] = record_hash(out["prev_hash"], canonical(out))
    return out


class Chain:
    """Builds one stream's records the way a gateway does: seq from 1, each hashed onto the last."""

    def __init__(self, stream: str | None = None) -> None:
        self.stream = stream or str(uuid.uuid4())
        self.seq = 0
        self.prev = ZERO_HASH

    def _add(self, fields: dict[str, Any], time_quality: str = "synced") -> dict[str, Any]:
        self.seq += 1
        rec = {
            "stream": self.stream,
            "seq": self.seq,
            "ts": TS,
            "time_quality": time_quality,
            **fields,
            "prev_hash": self.prev,
        }
        rec["hash"] = record_hash(self.prev, canonical(rec))
        self.prev = rec["hash"]
        return rec

    def reading(self, value: float = 4.5, time_quality: str = "synced", **extra: Any) -> dict[str, Any]:
        return self._add(
            {"type": "reading", "sensor_id": "p1", "quantity": "temperature", "value": value, "unit": "Cel", **extra},
            time_quality,
        )

    def event(self, event: str, details: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return self._add({"type": "event", "event": event, "details": details, **extra})

    def alarm(self, **extra: Any) -> dict[str, Any]:
        return self._add(
            {
                "type": "alarm",
                "alarm_id": "a-1",
                "rule": "fridge",
                "sensor_id": "p1",
                "state": "raised",
                "severity": "alarm",
                "started_at": TS,
                "value": 9.25,
                "limit": 8,
                "duration_s": 900,
                **extra,
            }
        )

    def readings(self, n: int) -> list[dict[str, Any]]:
        return [self.reading(4.0 + i / 8) for i in range(n)]


def body_of(records: list[dict[str, Any]], gateway_id: str = GATEWAY, **overrides: Any) -> dict[str, Any]:
    return {"protocol": 1, "gateway_id": gateway_id, "sent_at": TS, "records": copy.deepcopy(records), **overrides}


def key_of(records: list[dict[str, Any]], gateway_id: str = GATEWAY) -> str:
    return f"{gateway_id}:{records[0]['stream']}:{records[0]['seq']}-{records[-1]['seq']}"


class Client:
    """Posts batches the way docs/protocol.md says, with knobs to break each rule."""

    def __init__(self, url: str, token: str | None = None) -> None:
        self.url = url
        self.token = token
        self.session = requests.Session()

    def close(self) -> None:
        self.session.close()

    def post(
        self,
        records: list[dict[str, Any]],
        *,
        gateway_id: str = GATEWAY,
        compress: bool = False,
        token: str | None = "default",
        key: str | None = "default",
        raw: bytes | None = None,
        doc: Any = None,
        timeout: float = 10,
        headers: dict[str, str] | None = None,
    ) -> requests.Response:
        if raw is None:
            raw = json.dumps(doc if doc is not None else body_of(records, gateway_id)).encode()
            if compress:
                raw = gzip.compress(raw)
        h = {"Content-Type": "application/json", "User-Agent": "coldgate/test"}
        if compress:
            h["Content-Encoding"] = "gzip"
        if key == "default":
            key = key_of(records, gateway_id) if records else None
        if key is not None:
            h["Idempotency-Key"] = key
        token = self.token if token == "default" else token
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        h.update(headers or {})
        r = self.session.post(f"{self.url}/v1/batches", data=raw, headers=h, timeout=timeout)
        r.content  # noqa: B018 - read it all, so the connection goes back to the pool
        return r

    def get(self, path: str, token: str | None = "default", **params: Any) -> requests.Response:
        token = self.token if token == "default" else token
        h = {"Authorization": f"Bearer {token}"} if token else {}
        r = self.session.get(f"{self.url}{path}", headers=h, params=params, timeout=10)
        r.content  # noqa: B018
        return r

    def report(self, **params: Any) -> dict[str, Any]:
        r = self.get("/v1/report", **params)
        assert r.status_code == 200, r.text
        return dict(r.json())


class Running:
    """A receiver served on an ephemeral loopback port from a thread."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self.server = receiver.make_server("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()
        self.client = Client(self.url, receiver.token)

    def stream(self, stream: str, gateway_id: str = GATEWAY) -> dict[str, Any]:
        return dict(self.receiver.report(gateway_id)["gateways"][gateway_id]["streams"][stream])

    def stop(self) -> None:
        self.client.close()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    """``serve(**receiver_kwargs)`` starts a receiver on loopback; all are stopped and closed after the test."""
    started: list[Running] = []

    def start(db: str | Path | None = None, **kwargs: Any) -> Running:
        running = Running(Receiver(db or tmp_path / f"rx{len(started)}.db", **kwargs))
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()
        running.receiver.close()


@pytest.fixture
def rx(serve: Any) -> Running:
    """A receiver without token or faults."""
    return serve()  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def pg_template() -> Iterator[Path]:
    """One initdb per session, copied by each test's own server."""
    root = pg.make_template()
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres(pg_template: Path) -> Iterator[pg.PostgresServer]:
    """A PostgreSQL server of this test's own, on a free loopback port; stopped and removed after."""
    server = pg.PostgresServer(pg_template)
    try:
        yield server
    finally:
        server.stop()
        server.cleanup()


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A receiver database of each backend: a SQLite file, then a PostgreSQL URL."""
    if request.param == "sqlite":
        return str(tmp_path / "rx.db")
    return str(request.getfixturevalue("postgres").url)
