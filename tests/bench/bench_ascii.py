"""Benchmark: an ASCII line logger streaming at full speed through a pty into the store.

    .venv/bin/python tests/bench/bench_ascii.py [--lines N] [--no-store]

A writer thread pushes CSV lines (``seq,temperature,humidity``: two readings a line)
into the master side of a real pty as fast as the kernel takes them; the real
:class:`~drivers.ascii.AsciiDriver` reads the slave side through its public ``run``
loop; the sink group-commits the readings into :class:`agent.store.Store` (hash-chained
SQLite, ``synchronous=FULL``) every 0.25 s, as the daemon does. Reported:

* readings/s end to end: from the first byte written to the last reading committed;
* CPU ms per reading: process CPU time (driver thread, event loop, store commits and the
  writer thread, which is a small part) divided by the readings committed.

With ``--no-store`` the sink only counts, which isolates the driver's own cost.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from drivers.ascii import AsciiDriver, AsciiOptions  # noqa: E402
from drivers.base import Reading  # noqa: E402


class StoreSink:
    """Collects readings and group-commits them into the store from a worker thread."""

    def __init__(self, store: Any | None) -> None:
        self.store = store
        self.pending: list[dict[str, Any]] = []
        self.committed = 0
        self.done = asyncio.Event()
        self.target = 0

    def reading(self, r: Reading) -> None:
        self.pending.append(
            {
                "type": "reading",
                "ts": time.time(),
                "time_quality": "synced",
                "sensor_id": r.sensor_id,
                "quantity": r.quantity,
                "value": r.value,
                "unit": r.unit,
                "driver": "bench",
            }
        )
        if self.store is None:
            self.committed += 1
            if self.committed >= self.target:
                self.done.set()

    def driver_event(self, driver: str, event: str, details: Any) -> None:
        print(f"event: {event} {dict(details)}", file=sys.stderr)

    async def committer(self, interval: float = 0.25) -> None:
        while not self.done.is_set():
            await asyncio.sleep(interval)  # the group-commit cadence, not a wait for an outcome
            batch, self.pending = self.pending, []
            if batch and self.store is not None:
                await asyncio.to_thread(self.store.append, batch)
                self.committed += len(batch)
                if self.committed >= self.target:
                    self.done.set()


class BenchAscii(AsciiDriver):
    read_timeout_s = 0.1


async def run(lines: int, use_store: bool) -> None:
    master, slave = os.openpty()
    slave_path = os.ttyname(slave)
    os.close(slave)
    opts = AsciiOptions.model_validate(
        {
            "port": slave_path,
            "format": "csv",
            "max_line": 128,
            "fields": [
                {"source": 1, "sensor_id": "bench", "quantity": "temperature", "unit": "Cel"},
                {"source": 2, "sensor_id": "bench", "quantity": "humidity", "unit": "%RH"},
            ],
        }
    )
    drv = BenchAscii("bench", opts)
    tmp = tempfile.TemporaryDirectory()
    store = None
    if use_store:
        from agent.store import Store

        store = Store.open(Path(tmp.name) / "store.db", gateway_id="bench", quota_bytes=4 << 30)
    sink = StoreSink(store)
    sink.target = 2 * lines
    task = asyncio.create_task(drv.run(sink))
    while drv.status.state != "running":  # poll with a bound, not a fixed sleep
        await asyncio.sleep(0.005)
    payload = "".join(f"{i},{4 + (i % 100) / 100:.2f},{40 + (i % 50) / 10:.1f}\r\n" for i in range(lines)).encode()

    def writer() -> None:
        view = memoryview(payload)
        while view:
            n = os.write(master, view[:65536])
            view = view[n:]

    committer = asyncio.create_task(sink.committer())
    cpu0, t0 = time.process_time(), time.perf_counter()
    w = threading.Thread(target=writer)
    w.start()
    await asyncio.wait_for(sink.done.wait(), timeout=600)
    t1, cpu1 = time.perf_counter(), time.process_time()
    w.join()
    drv.stop()
    await task
    await committer
    os.close(master)
    readings = sink.committed
    where = "into agent.store.Store (hash-chained SQLite, group commit 0.25 s)" if store else "into a counting sink"
    print(f"ASCII logger through a pty {where}")
    print(f"  lines {lines}, readings {readings}, bytes {len(payload)}")
    print(f"  wall {t1 - t0:.2f} s -> {readings / (t1 - t0):,.0f} readings/s end to end")
    print(f"  CPU {cpu1 - cpu0:.2f} s -> {1000 * (cpu1 - cpu0) / readings:.4f} ms per reading")
    print(f"  counters {dict(drv.status.counters)}")
    if store is not None:
        store.close()
    tmp.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=100_000)
    ap.add_argument("--no-store", action="store_true", help="measure the driver into a counting sink only")
    args = ap.parse_args()
    asyncio.run(run(args.lines, not args.no_store))


if __name__ == "__main__":
    main()
