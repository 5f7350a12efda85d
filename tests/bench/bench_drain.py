"""Drain benchmark: a 1,000,000-reading backlog sent to the reference receiver on loopback.

The backlog is built in the store first (not timed), then the agent's uplink loop
sends it to ``coldgate receiver`` running as its own process, which verifies every hash
and stores every record durably before answering. Target: ≥ 20,000 readings/s.

    .venv/bin/python tests/bench/bench_drain.py [--readings N] [--batch-size B]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent.config import UplinkConfig  # noqa: E402
from agent.store import Store  # noqa: E402
from tests.agent.uplink_helpers import drain  # noqa: E402
from tests.bench._common import cpu_seconds  # noqa: E402
from tests.e2e.harness import ReceiverProcess  # noqa: E402

TARGET = 20_000


def build_backlog(store: Store, n: int) -> None:
    t0 = 1_790_000_000.0
    chunk = 20_000
    for start in range(0, n, chunk):
        store.append([{"type": "reading", "ts": t0 + i, "time_quality": "synced", "sensor_id": f"p{i % 100}",
                       "quantity": "temperature", "value": round(4.0 + (i % 400) / 100, 2), "unit": "Cel"}
                      for i in range(start, min(n, start + chunk))])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--readings", type=int, default=1_000_000)
    p.add_argument("--batch-size", type=int, default=5000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        store = Store.open(folder / "store.db", gateway_id="bench", quota_bytes=8 << 30)
        t = time.perf_counter()
        build_backlog(store, args.readings)
        print(f"backlog of {args.readings} readings built in {time.perf_counter() - t:.1f} s (not timed)")
        receiver = ReceiverProcess(folder / "rx.db").start()
        try:
            cfg = UplinkConfig(url=receiver.url, token=receiver.token, batch_size=args.batch_size,
                               read_timeout_s=120)
            start, cpu0 = time.perf_counter(), cpu_seconds()
            state = drain(store, cfg, "bench")
            elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu0
            assert state.result == "ok", state
            assert store.stats()["pending"] == 0
            receiver.stop()  # its report re-verifies every record from the database, which takes a while
            with __import__("agent.receiver").receiver.Receiver(folder / "rx.db") as rx:
                held = next(st for g in rx.report()["gateways"].values() for sid, st in g["streams"].items()
                            if sid == store.stream_id)
        finally:
            receiver.stop()
        store.close()
    n = args.readings + 1
    rate = n / elapsed
    print(f"drain: {n} records in {elapsed:.1f} s = {rate:,.0f} records/s, batches of {args.batch_size} "
          f"(agent CPU {cpu / n * 1e6:.1f} µs/record); receiver verdict: {held['verdict']}, "
          f"{held['records']} records; target ≥ {TARGET:,}/s: {'PASS' if rate >= TARGET else 'FAIL'}")


if __name__ == "__main__":
    main()
