"""The agent at rest and at a gateway's steady pace, as a real process.

``--mode port`` (issue 8 "idle"): an ASCII logger's port open and silent, the uplink to a
reference receiver: RSS, CPU and bytes written to storage per second (``/proc/<pid>/io``
``write_bytes``). Targets: RSS ≤ 45 MB, CPU ≤ 0.15 %, 0 bytes/s.

``--mode sensors``: 100 simulated sensors at one sample per 10 s (three quantities each:
30 readings/s), every one judged by the 2-8C preset: bytes written per reading and CPU.

    .venv/bin/python tests/bench/bench_idle.py [--mode port|sensors|both] [--seconds 60]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.bench_latency import cpu_ticks, rss_mb  # noqa: E402
from tests.e2e.harness import TOKEN, AgentProcess, Logger, ReceiverProcess, kill_leftovers, wait_until  # noqa: E402

PORT = """
gateway_id = "bench-idle"
[store]
path = "store.db"
[control]
socket = "control.sock"
[uplink]
url = "{url}"
token = "{token}"
[time]
sync_source = "assume_synced"
[[drivers]]
name = "logger"
type = "ascii"
port = "{port}"
format = "csv"
fields = [{{ source = 1, sensor_id = "L1", quantity = "movement_count", unit = "count" }}]
"""

SENSORS = """
gateway_id = "bench-steady"
[store]
path = "store.db"
[control]
socket = "control.sock"
[uplink]
url = "{url}"
token = "{token}"
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
"""


def write_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def measure(mode: str, seconds: float, folder: Path) -> dict[str, float]:
    receiver = ReceiverProcess(folder / "rx.db").start()
    logger = Logger()
    cfg = folder / "coldgate.toml"
    if mode == "port":
        cfg.write_text(PORT.format(url=receiver.url, token=TOKEN, port=logger.path))
    else:
        sensors = ", ".join(f'{{ id = "p{i:03d}", interval_s = 10, noise = 0.05 }}' for i in range(100))
        profiles = "\n".join(f'[[sensors]]\nid = "p{i:03d}"\nprofile = "2-8C"' for i in range(100))
        cfg.write_text(SENSORS.format(url=receiver.url, token=TOKEN, sensors=sensors, profiles=profiles))
    agent = AgentProcess(cfg).start()
    try:
        pid = agent.proc.pid  # type: ignore[union-attr]
        wait_until(lambda: agent.pending() == 0, 60, "the start-up records sent")
        time.sleep(5)  # start-up is not steady state (a settling time, not a wait for an outcome)
        head0, io0, cpu0, t0 = agent.head(), write_bytes(pid), cpu_ticks(pid), time.monotonic()
        time.sleep(seconds)  # the measurement window
        wall = time.monotonic() - t0
        records = agent.head() - head0
        cpu = (cpu_ticks(pid) - cpu0) / os.sysconf("SC_CLK_TCK")
        written = write_bytes(pid) - io0
        return {"cpu_pct": 100 * cpu / wall, "rss_mb": rss_mb(pid), "peak_rss_mb": rss_mb(pid, "VmHWM"),
                "bytes_per_s": written / wall, "records": records, "bytes_per_record": written / max(records, 1),
                "records_per_s": records / wall}
    finally:
        agent.stop()
        receiver.stop()
        logger.close()
        kill_leftovers()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=["port", "sensors", "both"], default="both")
    p.add_argument("--seconds", type=float, default=60.0)
    args = p.parse_args()
    if args.mode in ("port", "both"):
        with tempfile.TemporaryDirectory() as d:
            r = measure("port", args.seconds, Path(d))
        print(f"idle (port open, no data, {args.seconds:.0f} s): RSS {r['rss_mb']:.1f} MiB (target ≤ 45), "
              f"CPU {r['cpu_pct']:.3f} % (target ≤ 0.15), {r['bytes_per_s']:.0f} bytes/s written (target 0)")
    if args.mode in ("sensors", "both"):
        with tempfile.TemporaryDirectory() as d:
            r = measure("sensors", args.seconds, Path(d))
        print(f"100 sensors / 10 s ({r['records_per_s']:.1f} records/s): {r['bytes_per_record']:.0f} bytes "
              f"written per record, CPU {r['cpu_pct']:.2f} %, RSS {r['rss_mb']:.1f} MiB "
              f"(peak {r['peak_rss_mb']:.1f})")


if __name__ == "__main__":
    main()
