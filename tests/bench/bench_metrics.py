"""What metrics cost on the idle benchmark: 100 simulated sensors at one reading per 10 s.

Runs the agent twice, each in a process of its own (peak RSS is per process): without
metrics, then with the ``/metrics`` endpoint scraped every ``--scrape`` seconds (15 s, a
common Prometheus interval) and the node_exporter textfile written every 60 s. Prints CPU
(share of one core), peak RSS, the cost of one scrape and its size.

    .venv/bin/python tests/bench/bench_metrics.py [--seconds 60] [--scrape 15]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent import config as configmod  # noqa: E402
from agent.daemon import Agent  # noqa: E402
from tests.bench._common import cpu_seconds, peak_rss_mb  # noqa: E402


def _config(folder: Path, metrics: bool) -> Path:
    sensors = ", ".join(f'{{ id = "p{i:03d}", interval_s = 10, noise = 0.05 }}' for i in range(100))
    profiles = "\n".join(f'[[sensors]]\nid = "p{i:03d}"\nprofile = "2-8C"' for i in range(100))
    section = ""
    if metrics:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        section = f'[metrics]\nlisten = "127.0.0.1:{port}"\ntextfile = "{folder / "coldgate.prom"}"\n'
    path = folder / "bench.toml"
    path.write_text(f"""
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
{section}""")
    return path


async def _run(seconds: float, scrape_every: float, metrics: bool, folder: Path) -> dict[str, float]:
    import requests

    cfg_path = _config(folder, metrics)
    cfg = configmod.load(cfg_path)
    agent = Agent(cfg, config_path=cfg_path)
    task = asyncio.create_task(agent.run())
    await asyncio.sleep(5)  # start-up is not steady state
    url = f"http://{cfg.metrics.listen}/metrics" if metrics else None
    scrapes: list[float] = []
    size = 0
    cpu0, t0 = cpu_seconds(), time.monotonic()
    next_scrape = t0
    while time.monotonic() - t0 < seconds:
        if url is not None and time.monotonic() >= next_scrape:
            c = cpu_seconds()
            resp = await asyncio.to_thread(requests.get, url, timeout=10)
            scrapes.append(cpu_seconds() - c)
            size = len(resp.content)
            next_scrape += scrape_every
        await asyncio.sleep(0.5)
    cpu, wall = cpu_seconds() - cpu0, time.monotonic() - t0
    agent.stop()
    await task
    return {"cpu_pct": 100 * cpu / wall, "peak_rss_mb": peak_rss_mb(), "scrapes": len(scrapes),
            "scrape_cpu_ms": 1000 * sum(scrapes) / max(1, len(scrapes)), "scrape_bytes": size}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--scrape", type=float, default=15.0)
    p.add_argument("--variant", choices=["off", "on"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:
        with tempfile.TemporaryDirectory() as d:
            r = asyncio.run(_run(args.seconds, args.scrape, args.variant == "on", Path(d)))
        print(json.dumps(r))
        return
    out = {}
    for variant in ("off", "on"):
        proc = subprocess.run([sys.executable, __file__, "--variant", variant, "--seconds", str(args.seconds),
                               "--scrape", str(args.scrape)], capture_output=True, text=True, check=True)
        out[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
    off, on = out["off"], out["on"]
    print(f"metrics on the idle bench (100 sensors / 10 s, {args.seconds:.0f} s, scrape every {args.scrape:g} s):")
    print(f"  without metrics: CPU {off['cpu_pct']:.2f} % of a core, peak RSS {off['peak_rss_mb']:.1f} MiB")
    print(f"  with metrics:    CPU {on['cpu_pct']:.2f} % of a core, peak RSS {on['peak_rss_mb']:.1f} MiB")
    print(f"  cost: CPU {on['cpu_pct'] - off['cpu_pct']:+.2f} points, RSS {on['peak_rss_mb'] - off['peak_rss_mb']:+.1f}"
          f" MiB; one scrape {on['scrape_cpu_ms']:.1f} ms of CPU, {on['scrape_bytes'] / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
