"""Several receiver processes on one PostgreSQL: nothing lost, nothing counted twice, every link judged."""

from __future__ import annotations

import gzip
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from agent import protocol
from agent.cli import main
from agent.receiver import Receiver
from agent.receiver.validate import validate_batch
from tests.receiver.conftest import Chain, body_of, key_of


def _store_worker(url: str, batches: list[list[dict[str, Any]]], go: Any, out: Any) -> None:
    totals = {"stored": 0, "duplicates": 0, "conflicts": 0}
    with Receiver(url) as rx:
        go.wait(30)
        for recs in batches:
            result = rx.store_batch(validate_batch(body_of(recs, "gw-c"), key_of(recs, "gw-c")))
            for k in totals:
                totals[k] += result[k]
    out.put(totals)


def _overlapping(records: list[dict[str, Any]], size: int, step: int, *, reverse: bool) -> list[list[dict[str, Any]]]:
    out = [records[i : i + size] for i in range(0, len(records), step)]
    return out[::-1] if reverse else out


def test_two_processes_storing_overlapping_batches_of_one_stream_count_each_record_once(postgres: Any) -> None:
    chain = Chain()
    records = chain.readings(1200)
    ctx = multiprocessing.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    plans = [_overlapping(records, 60, 40, reverse=False), _overlapping(records, 50, 30, reverse=True)]
    with Receiver(postgres.url):
        pass  # the schema exists before the race starts (the workers would also agree on it)
    workers = [ctx.Process(target=_store_worker, args=(postgres.url, plan, go, out)) for plan in plans]
    for w in workers:
        w.start()
    go.set()
    totals = [out.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(30)
        assert w.exitcode == 0
    sent = sum(len(b) for plan in plans for b in plan)
    assert sum(t["stored"] for t in totals) == 1200  # each record stored exactly once, by one process
    assert sum(t["duplicates"] for t in totals) == sent - 1200
    assert sum(t["conflicts"] for t in totals) == 0
    with Receiver(postgres.url) as rx:
        s = rx.report()["gateways"]["gw-c"]["streams"][chain.stream]
        assert (s["records"], s["gaps"], s["chain_breaks"], s["duplicates"]) == (1200, [], [], sent - 1200)
        assert s["verdict"] == "complete-and-verified"
        # every link was judged on arrival, by whichever process brought its second end
        unjudged = rx.store._query("SELECT count(*) FROM records WHERE link_ok IS NOT TRUE")  # type: ignore[attr-defined]
        assert unjudged == [(0,)]


class ReceiverProcess:
    """``coldgate receiver`` as a real process on a free port; its URL read from its log line."""

    def __init__(self, db: str, tmp_path: Path, name: str, *extra: str) -> None:
        self.log = (tmp_path / f"{name}.log").open("w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "receiver", "--db", db, "--port", "0", *extra],
            stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            m = re.search(r"listening on (http://\S+)", Path(self.log.name).read_text())
            if m:
                self.url = m.group(1)
                return
            assert self.proc.poll() is None, Path(self.log.name).read_text()
            time.sleep(0.05)
        raise TimeoutError("receiver did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


class ProtocolClient:
    """A gateway reduced to the protocol: frames batches with agent.protocol and posts them."""

    def __init__(self, gateway_id: str, token: str) -> None:
        self.gateway_id, self.token = gateway_id, token
        self.chain = Chain()
        self.session = requests.Session()

    def post(self, url: str, records: list[dict[str, Any]]) -> requests.Response:
        stored = [(r["seq"], protocol.body_of(r).decode(), r["hash"]) for r in records]
        body = protocol.frame_batch(self.gateway_id, stored, sent_at="2026-11-23T08:15:02.125Z",
                                    config={"version": 3, "sha256": "c" * 64, "signer": None})
        key = protocol.idempotency_key(self.gateway_id, self.chain.stream, records[0]["seq"], records[-1]["seq"])
        return self.session.post(f"{url}/v1/batches", data=gzip.compress(body), timeout=30, headers={
            "Content-Type": "application/json", "Content-Encoding": "gzip", "Idempotency-Key": key,
            "Authorization": f"Bearer {self.token}"})


def test_http_uplink_end_to_end_through_two_receiver_processes_on_one_database(
    postgres: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import hashlib

    tokens = {f"gw-{i}": f"token-{i}-secret" for i in range(3)}
    reg = tmp_path / "gateways.toml"
    reg.write_text("".join(f'[gateways."{g}"]\ntoken_sha256 = "{hashlib.sha256(t.encode()).hexdigest()}"\n'
                           for g, t in tokens.items()))
    receivers = [ReceiverProcess(postgres.url, tmp_path, f"rx{i}", "--gateways", str(reg)) for i in range(2)]
    clients = [ProtocolClient(g, t) for g, t in tokens.items()]
    try:
        for c in clients:
            recs = c.chain.readings(300)
            for n, i in enumerate(range(0, 300, 50)):
                batch = recs[i : i + 50]
                assert c.post(receivers[n % 2].url, batch).status_code == 200
                if n % 3 == 0:  # an answer "lost": the same batch again, to the other receiver
                    r = c.post(receivers[(n + 1) % 2].url, batch)
                    assert r.status_code == 200 and r.json()["duplicates"] == 50
        # one gateway's token cannot write another gateway's stream
        intruder = ProtocolClient("gw-1", tokens["gw-0"])
        assert intruder.post(receivers[0].url, intruder.chain.readings(1)).status_code == 403
    finally:
        for r in receivers:
            r.stop()
        for c in clients:
            c.session.close()
        intruder.session.close()
    assert main(["receiver", "report", "--db", postgres.url, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert sorted(report["gateways"]) == ["gw-0", "gw-1", "gw-2"]
    for c in clients:
        s = report["gateways"][c.gateway_id]["streams"][c.chain.stream]
        assert (s["records"], s["gaps"], s["chain_breaks"], s["duplicates"]) == (300, [], [], 100)
    assert main(["receiver", "fleet", "--db", postgres.url, "--gateways", str(reg), "--json"]) == 0
    fleet = json.loads(capsys.readouterr().out)["gateways"]
    assert {g: f["batches"] for g, f in fleet.items()} == {"gw-0": 8, "gw-1": 8, "gw-2": 8}
    assert all(f["config"]["version"] == 3 for f in fleet.values())
