"""Steady-state benchmark: 100 simulated sensors at one reading per 10 s, in real time.

Reports the agent's peak RSS, its CPU use as a share of one core, and the bytes it wrote
to storage per reading (``/proc/self/io`` write_bytes). Targets: peak RSS ≤ 60 MB,
CPU ≤ 1 % of a core.

    .venv/bin/python tests/bench/bench_idle.py [--seconds 60]
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
from tests.bench._common import cpu_seconds, io_write_bytes, peak_rss_mb  # noqa: E402


async def run(seconds: float, folder: Path) -> dict[str, float]:
    cfg_path = folder / "bench.toml"
    sensors = ", ".join(f'{{ id = "p{i:03d}", interval_s = 10, humidity = {{}}, noise = 0.05 }}' for i in range(100))
    sensors = sensors.replace("humidity = {}, ", "")
    # every sensor judged by the 2-8C preset, as on a real shipper
    profiles = "\n".join(f'[[sensors]]\nid = "p{i:03d}"\nprofile = "2-8C"' for i in range(100))
    cfg_path.write_text(f"""
gateway_id = "bench"
[store]
path = "store.db"
[time]
sync_source = "assume_synced"
[recording]
record_interval_s = 0
[[drivers]]
name = "sim"
type = "sim"
speed = 1
sensors = [{sensors}]
{profiles}
""")
    agent = Agent(configmod.load(cfg_path), config_path=cfg_path)
    task = asyncio.create_task(agent.run())
    await asyncio.sleep(5)  # start-up (imports, first status) is not steady state
    cpu0, io0, t0 = cpu_seconds(), io_write_bytes(), time.monotonic()
    n0 = agent.drivers["sim"].status.counters["readings"]
    await asyncio.sleep(seconds)
    cpu, io, wall = cpu_seconds() - cpu0, io_write_bytes() - io0, time.monotonic() - t0
    n = agent.drivers["sim"].status.counters["readings"] - n0
    agent.stop()
    await task
    return {"cpu_pct": 100 * cpu / wall, "readings": n, "bytes_per_reading": io / max(n, 1),
            "readings_per_s": n / wall, "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=60.0)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        r = asyncio.run(run(args.seconds, Path(d)))
    print(f"idle: 100 sensors, {r['readings']} readings in {args.seconds:.0f} s ({r['readings_per_s']:.1f}/s)")
    print(f"  peak RSS {r['peak_rss_mb']:.1f} MiB (target ≤ 60): {'PASS' if r['peak_rss_mb'] <= 60 else 'FAIL'}")
    print(f"  CPU {r['cpu_pct']:.2f} % of one core (target ≤ 1 %): {'PASS' if r['cpu_pct'] <= 1 else 'FAIL'}")
    print(f"  disk writes {r['bytes_per_reading']:.0f} bytes/reading")


if __name__ == "__main__":
    main()
