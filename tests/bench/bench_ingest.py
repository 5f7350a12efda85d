"""Ingest benchmark: the simulated logger flat out, through the running agent, into the store.

Every reading goes through the whole pipeline of ``coldgate run`` (ingest, rules,
group commit, hash chain, SQLite with WAL and synchronous=FULL). Target: ≥ 100,000
readings/s on the 2-core reference machine.

    .venv/bin/python tests/bench/bench_ingest.py [--readings N]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent import config as configmod  # noqa: E402
from agent.daemon import Agent  # noqa: E402
from tests.bench._common import cpu_seconds  # noqa: E402

TARGET = 100_000


async def run(n: int, folder: Path) -> tuple[float, float]:
    cfg_path = folder / "bench.toml"
    cfg_path.write_text(f"""
gateway_id = "bench"
[store]
path = "store.db"
quota_mb = 4096
[control]
socket = "control.sock"
[time]
sync_source = "assume_synced"
[recording]
record_interval_s = 0
[[drivers]]
name = "sim"
type = "sim"
speed = 0
limit = {n}
chunk = 5000
sensors = [{", ".join(f'{{ id = "p{i}", interval_s = 10, humidity = 45.0 }}' for i in range(10))}]
""")
    agent = Agent(configmod.load(cfg_path), config_path=cfg_path)
    task = asyncio.create_task(agent.run())
    await agent.ready.wait()
    start, cpu0 = time.perf_counter(), cpu_seconds()
    base = agent.writer.committed
    while agent.writer.committed - base < n:  # the writer's own count of committed records
        await asyncio.sleep(0.01)
    elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu0
    head = agent.writer.store.head()[0] if agent.writer.store else 0
    agent.stop()
    await task
    assert head >= n, head
    return elapsed, cpu


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--readings", type=int, default=300_000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        elapsed, cpu = asyncio.run(run(args.readings, Path(d)))
    rate = args.readings / elapsed
    print(f"ingest: {args.readings} readings in {elapsed:.2f} s = {rate:,.0f} readings/s "
          f"(CPU {cpu / args.readings * 1e6:.1f} µs/reading); target ≥ {TARGET:,}/s: "
          f"{'PASS' if rate >= TARGET else 'FAIL'}")


if __name__ == "__main__":
    main()
