#!/usr/bin/env python3
"""Fleet-scale benchmark: 1,000 simulated gateways against 1, then 2, receiver processes on one PostgreSQL.

    .venv/bin/python tests/bench/bench_fleet.py [--gateways 1000] [--records 200] [--threads 32]

A load generator speaks the protocol (agent.protocol's framing, gzip, Idempotency-Key, a
token per gateway from a registry) for each simulated gateway: a valid chain per gateway,
batches of realistic sizes (mostly a few dozen records, as a gateway online sends every
few seconds; some of 500, as one draining a backlog), and a share sent twice (an answer
lost). Each gateway sends its batches in order, one at a time, as the agent does.
PostgreSQL runs with fsync on: every batch is durable before its 200.

Printed per run: records/s stored (each verified on arrival: RFC 8785 + SHA-256 per
record, links checked in SQL), p50/p99 batch latency, CPU seconds of the receivers, of
PostgreSQL and of the generator, and the time the full report takes to re-verify every
stored record from its bytes. Then how throughput grows from 1 to 2 processes.

Target (issue 13): >= 20,000 records/s verified on the 2-core machine. Figures taken on a
shared, loaded machine are indicative only.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from agent.canonical import ZERO_HASH, canonical, record_hash  # noqa: E402 - the producer's path, as a gateway
from agent.protocol import frame_batch, idempotency_key  # noqa: E402
from tests.receiver import pg  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


class Gateway:
    def __init__(self, i: int, rng: random.Random) -> None:
        self.id = f"gw-{i:05d}"
        self.token = f"bench-token-{i}-{uuid.uuid4().hex}"
        self.stream = str(uuid.UUID(int=rng.getrandbits(128)))
        self.requests: list[tuple[bytes, str, int]] = []  # (gzip body, key, records)

    def request_head(self, key: str, length: int, port: int) -> bytes:
        return (f"POST /v1/batches HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                f"Content-Encoding: gzip\r\nIdempotency-Key: {key}\r\nAuthorization: Bearer {self.token}\r\n"
                f"Content-Length: {length}\r\n\r\n").encode()

    def build(self, n: int, rng: random.Random, resend_share: float) -> int:
        prev, seq, stored = ZERO_HASH, 0, []
        for _ in range(n):
            seq += 1
            rec = {"stream": self.stream, "seq": seq, "type": "reading", "ts": "2026-11-23T08:15:02.125Z",
                   "time_quality": "synced", "sensor_id": f"probe-{seq % 4}", "quantity": "temperature",
                   "value": round(4 + rng.random() * 3, 2), "unit": "Cel", "driver": "sim", "prev_hash": prev}
            body = canonical(rec).decode()
            prev = record_hash(prev, body.encode())
            stored.append((seq, body, prev))
        i, sent = 0, 0
        cfg = {"version": 12, "sha256": hashlib.sha256(self.id.encode()).hexdigest(), "signer": None}
        while i < len(stored):
            size = 500 if rng.random() < 0.1 else rng.randint(10, 60)
            batch = stored[i : i + size]
            i += size
            raw = frame_batch(self.id, batch, sent_at="2026-11-23T08:15:03.000Z", config=cfg)
            req = (gzip.compress(raw, 5), idempotency_key(self.id, self.stream, batch[0][0], batch[-1][0]), len(batch))
            self.requests.append(req)
            sent += len(batch)
            if rng.random() < resend_share:
                self.requests.append(req)
                sent += len(batch)
        return sent


class RawHttp:
    """A keep-alive HTTP/1.1 client on a bare socket: one ``sendall`` per request, the answer's
    status and body by ``Content-Length``. The generator shares the 2 cores with what it
    measures; ``http.client`` spent ~300 µs of CPU per request (its header parsing is the
    email package's), this about a tenth of that."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def post(self, request: bytes) -> tuple[int, bytes]:
        self.sock.sendall(request)
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = next(int(v) for k, _, v in (line.partition(b":") for line in lines[1:])
                      if k.strip().lower() == b"content-length")
        while len(self.buf) < length:
            self._more()
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, body

    def _more(self) -> None:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("the receiver closed the connection")
        self.buf += chunk

    def close(self) -> None:
        self.sock.close()


def cpu_s(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICK


def postgres_pids(server: pg.PostgresServer) -> list[int]:
    master = int((server.data / "postmaster.pid").read_text().split()[0])
    out = [master]
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == master:
                out.append(int(d.name))
    return out


def start_receiver(url: str, registry: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    f = log.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "agent", "receiver", "--db", url, "--port", "0", "--gateways",
                             str(registry), "--max-connections", "256"], stdout=f, stderr=subprocess.STDOUT,
                            cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", log.read_text())
        if m:
            return proc, int(m.group(1))
        if proc.poll() is not None:
            raise SystemExit(f"receiver died: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    raise SystemExit("receiver did not start")


def run(n_receivers: int, fleet: list[Gateway], template: Path, threads: int, tmp: Path) -> dict[str, Any]:
    server = pg.PostgresServer(template, fsync=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        registry = tmp / "gateways.toml"
        registry.write_text("".join(f'[gateways."{g.id}"]\ntoken_sha256 = "{hashlib.sha256(g.token.encode()).hexdigest()}"\n'
                                    for g in fleet))
        ports = []
        for i in range(n_receivers):
            proc, port = start_receiver(server.url, registry, tmp / f"rx{n_receivers}-{i}.log")
            procs.append(proc)
            ports.append(port)
        latencies: list[float] = []
        stored = [0]
        errors: list[str] = []
        lock = threading.Lock()

        def sender(k: int) -> None:
            mine = [g for j, g in enumerate(fleet) if j % threads == k]
            port = ports[k % len(ports)]
            conn = RawHttp("127.0.0.1", port)
            cursors = [0] * len(mine)
            lat: list[float] = []
            n = 0
            while True:
                progressed = False
                for gi, g in enumerate(mine):  # round robin over my gateways, each in order
                    if cursors[gi] >= len(g.requests):
                        continue
                    body, key, _ = g.requests[cursors[gi]]
                    cursors[gi] += 1
                    progressed = True
                    t0 = time.perf_counter()
                    status, data = conn.post(g.request_head(key, len(body), port) + body)
                    lat.append(time.perf_counter() - t0)
                    if status != 200:
                        with lock:
                            errors.append(f"{status} {data[:200]!r}")
                        continue
                    n += json.loads(data)["stored"]
                if not progressed:
                    break
            conn.close()
            with lock:
                latencies.extend(lat)
                stored[0] += n

        pg_pids = postgres_pids(server)
        rx_pids = [p.pid for p in procs]
        cpu0 = (cpu_s(rx_pids), cpu_s(pg_pids), time.process_time())
        t0 = time.perf_counter()
        workers = [threading.Thread(target=sender, args=(k,)) for k in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        wall = time.perf_counter() - t0
        pg_pids = postgres_pids(server)  # backends come and go with connections
        cpu1 = (cpu_s(rx_pids), cpu_s(pg_pids), time.process_time())
        r0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "agent", "receiver", "report", "--db", server.url, "--json"],
                             capture_output=True, text=True, cwd=ROOT, timeout=1800)
        report_s = time.perf_counter() - r0
        report = json.loads(out.stdout)
        verified = sum(s["records"] for g in report["gateways"].values() for s in g["streams"].values()
                       if s["verdict"] == "complete-and-verified")
        latencies.sort()
        return {
            "receivers": n_receivers, "wall_s": wall, "stored": stored[0], "verified_in_report": verified,
            "errors": errors[:5], "error_count": len(errors), "report_exit": out.returncode,
            "records_per_s": stored[0] / wall, "batches": len(latencies),
            "p50_ms": 1000 * statistics.median(latencies), "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
            "cpu_receivers_s": cpu1[0] - cpu0[0], "cpu_postgres_s": cpu1[1] - cpu0[1],
            "cpu_generator_s": cpu1[2] - cpu0[2], "report_s": report_s,
        }
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        server.stop()
        server.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateways", type=int, default=1000)
    ap.add_argument("--records", type=int, default=200, help="records per gateway (default 200)")
    ap.add_argument("--threads", type=int, default=32, help="concurrent connections of the generator")
    ap.add_argument("--resend", type=float, default=0.05, help="share of batches sent twice")
    ap.add_argument("--processes", default="1,2", help="receiver process counts to run (default 1,2)")
    args = ap.parse_args()
    rng = random.Random(1)
    t0 = time.perf_counter()
    fleet = [Gateway(i, rng) for i in range(args.gateways)]
    sent = sum(g.build(args.records, rng, args.resend) for g in fleet)
    print(f"fleet: {args.gateways} gateways x {args.records} records = {args.gateways * args.records} records, "
          f"{sum(len(g.requests) for g in fleet)} requests ({sent} records sent, re-sends included); "
          f"built in {time.perf_counter() - t0:.1f} s")
    template = pg.make_template()
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="coldgate-bench-") as tmp:
            for n in (int(x) for x in args.processes.split(",")):
                r = run(n, fleet, template, args.threads, Path(tmp))
                results.append(r)
                expected = args.gateways * args.records
                ok = r["stored"] == expected and r["verified_in_report"] == expected and r["error_count"] == 0
                print(f"\n{n} receiver process(es): {'OK' if ok else 'PROBLEM'}")
                print(f"  stored      {r['stored']} records in {r['wall_s']:.1f} s = {r['records_per_s']:,.0f} records/s "
                      f"stored and verified on arrival ({r['batches']} batches)")
                print(f"  latency     p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms per batch")
                print(f"  cpu         receivers {r['cpu_receivers_s']:.1f} s, PostgreSQL {r['cpu_postgres_s']:.1f} s, "
                      f"generator {r['cpu_generator_s']:.1f} s (of {2 * r['wall_s']:.1f} core-s available)")
                per = 1e6 / max(r["stored"], 1)
                print(f"  per record  receivers {r['cpu_receivers_s'] * per:.0f} µs, PostgreSQL "
                      f"{r['cpu_postgres_s'] * per:.0f} µs CPU")
                print(f"  report      re-verified {r['verified_in_report']} records from the stored bytes in "
                      f"{r['report_s']:.1f} s (exit {r['report_exit']})")
                if r["errors"]:
                    print(f"  errors      {r['error_count']}: {r['errors']}")
    finally:
        import shutil

        shutil.rmtree(template, ignore_errors=True)
    if len(results) >= 2:
        print(f"\nscaling 1 -> {results[1]['receivers']} processes: x{results[1]['records_per_s'] / results[0]['records_per_s']:.2f}"
              f" ({results[0]['records_per_s']:,.0f} -> {results[1]['records_per_s']:,.0f} records/s); target 20,000")


if __name__ == "__main__":
    main()
