"""What the store writes to storage per reading, and what its high-water mark costs.

Bytes are ``/proc/self/io`` write_bytes (what reached the block layer: WAL frames at each
fsync, checkpoints, the side file), on the filesystem of ``--dir`` (default: a temporary
folder; use the SD card's to measure it). Three runs of the store, then the mark alone:

- idle: one reading per commit (100 sensors every 10 s, the commit interval shorter
  than the gap between readings), acknowledged in batches of 500 as the uplink does;
- bulk: 500 readings per commit (a backlog, a fast logger), acknowledged likewise;
- the high-water mark: 200 writes, bytes per write, and per day at one write every 2 s.

    .venv/bin/python tests/bench/bench_store_writes.py [--readings 3000] [--dir DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent.store import Store  # noqa: E402
from agent.timebase import Clock  # noqa: E402
from tests.bench._common import io_write_bytes  # noqa: E402

T0 = 1_790_000_000.0


def reading(i: int) -> dict[str, object]:
    return {"type": "reading", "ts": T0 + i * 0.1, "time_quality": "synced", "sensor_id": f"p{i % 100:03d}",
            "quantity": "temperature", "value": 4.0 + (i % 37) / 10, "unit": "Cel", "driver": "sim"}


def run(folder: Path, n: int, per_commit: int) -> tuple[float, float]:
    """Bytes per reading written by appending ``n`` readings, and by acknowledging them."""
    path = folder / f"s{per_commit}.db"
    s = Store.open(path, gateway_id="bench", clock=Clock("assume_synced"))
    io0 = io_write_bytes()
    for k in range(0, n, per_commit):
        s.append([reading(k + j) for j in range(per_commit)])
    s.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    io1 = io_write_bytes()
    while rows := s.pending(500):
        s.ack(seq for seq, _, _ in rows)
    s.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    io2 = io_write_bytes()
    s.close()
    return (io1 - io0) / n, (io2 - io1) / n


def mark_cost(folder: Path, writes: int = 200) -> float | None:
    try:
        from agent.seqguard import HighWater
    except ImportError:  # coldgate 0.1: the side file was written at close only
        return None
    hw = HighWater(folder / "m.stream", every_s=0)
    hw.set("6f0c2c1e-6c35-4f0e-9a35-1c0d8e5a2f11", 1)
    io0 = io_write_bytes()
    for i in range(writes):
        hw.set("6f0c2c1e-6c35-4f0e-9a35-1c0d8e5a2f11", 2 + i)
    cost = (io_write_bytes() - io0) / writes
    hw.close()
    return cost


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--readings", type=int, default=3000)
    p.add_argument("--dir", type=Path, default=None)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        folder = Path(d)
        idle = run(folder, args.readings, 1)
        bulk = run(folder, args.readings * 10, 500)
        mark = mark_cost(folder)
    print(f"store writes, {args.readings} readings one per commit, {args.readings * 10} in commits of 500")
    print(f"  idle: {idle[0]:,.0f} bytes/reading appended, {idle[1]:,.0f} bytes/reading acknowledged")
    print(f"  bulk: {bulk[0]:,.0f} bytes/reading appended, {bulk[1]:,.0f} bytes/reading acknowledged")
    if mark is None:
        print("  high-water mark: none (written at close only)")
    else:
        print(f"  high-water mark: {mark:,.0f} bytes per write; at most one per 2 s while the head moves: "
              f"{mark * 43_200 / 2**20:,.1f} MiB/day")


if __name__ == "__main__":
    main()
