"""Benchmark: one gateway draining a backlog over MQTT to 1 and then 2 consumer processes.

Run: ``.venv/bin/python tests/bench/bench_mqtt.py [RECORDS] [BATCH]`` (default 20,000 and
500). A real Mosquitto on a free port, real ``coldgate receiver --mqtt`` processes on one
SQLite file, the real transport over a real store. Prints records/s acknowledged end to end
(store → broker → consumer commit → answer → ack), batch round-trip p50/p99, and the CPU
of each part. One gateway sends one batch at a time, so this measures latency-bound
throughput per gateway; a fleet's throughput comes from many gateways in parallel.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent.store import Store  # noqa: E402
from agent.uplink.base import Batch  # noqa: E402
from agent.uplink.mqtt import MqttTransport  # noqa: E402
from tests.bench._common import cpu_seconds  # noqa: E402
from tests.mosquitto import Mosquitto, reading, uplink_config  # noqa: E402
from tests.receiver.test_mqtt_processes import Consumer  # noqa: E402


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(root: Path, records: int, batch: int, consumers: int) -> None:
    broker = Mosquitto(root / "broker").start()
    procs = [Consumer(root / "rx.db", broker.url, "--share-group", "bench").start() for _ in range(consumers)]
    store = Store.open(root / "store.db", gateway_id="gw-1")
    for i in range(0, records, 5000):
        store.append([reading(i + j) for j in range(min(5000, records - i))])
    transport = MqttTransport(uplink_config(broker.url, answer_timeout_s=30), "gw-1")
    latencies: list[float] = []
    cpu0, t0 = cpu_seconds(), time.monotonic()
    broker_cpu0 = _proc_cpu(broker.proc.pid)  # type: ignore[union-attr]
    rx_cpu0 = [_proc_cpu(c.proc.pid) for c in procs]  # type: ignore[union-attr]
    acked = 0
    while recs := store.pending(batch):
        s = time.monotonic()
        transport.send(Batch("gw-1", store.stream_id, recs))
        latencies.append(time.monotonic() - s)
        store.ack(seq for seq, _, _ in recs)
        acked += len(recs)
    wall = time.monotonic() - t0
    gw_cpu = cpu_seconds() - cpu0
    broker_cpu = _proc_cpu(broker.proc.pid) - broker_cpu0  # type: ignore[union-attr]
    rx_cpu = [_proc_cpu(c.proc.pid) - c0 for c, c0 in zip(procs, rx_cpu0, strict=True)]  # type: ignore[union-attr]
    transport.close()
    for c in procs:
        c.stop()
    store.close()
    broker.stop()
    q = statistics.quantiles(latencies, n=100)
    print(f"{consumers} consumer(s), batch {batch}: {acked / wall:,.0f} records/s acknowledged end to end "
          f"({acked} in {wall:.2f} s); batch round trip p50 {q[49] * 1000:.1f} ms, p99 {q[98] * 1000:.1f} ms; "
          f"CPU s: gateway {gw_cpu:.2f}, broker {broker_cpu:.2f}, consumers {', '.join(f'{x:.2f}' for x in rx_cpu)}")


def main() -> None:
    records = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 500
    for consumers in (1, 2):
        with tempfile.TemporaryDirectory() as d:
            run(Path(d), records, batch, consumers)


if __name__ == "__main__":
    main()
