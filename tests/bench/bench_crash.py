"""What a SIGKILL costs, and what a flood costs in memory: real processes, a real pty.

1. An ASCII logger at 100 lines/s (a logger with flow control: while nobody reads, it
   waits); the agent is SIGKILLed ``--kills`` times and restarted at once. A line lost is
   one read and not yet committed when the kill came (the lines written meanwhile wait in
   the tty and are read after the restart). Target (issue 8): ≤ 10 lines a kill.
2. A flood of ``--flood`` lines written as fast as the pty takes them; the agent is
   SIGKILLed 2.5 s into it and restarted. Reported: the agent's peak RSS during the flood
   (target ≤ 80 MB) and the lines lost at the kill, in lines and in seconds of input at
   the rate measured (target ≤ 0.5 s).

    .venv/bin/python tests/bench/bench_crash.py [--kills 5] [--flood 200000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.bench_latency import rss_mb  # noqa: E402
from tests.e2e.harness import AgentProcess, Logger, kill_leftovers, wait_until  # noqa: E402

CONFIG = """
gateway_id = "bench-crash"
[store]
path = "store.db"
quota_mb = 2048
commit_interval_s = {commit_interval_s}
[control]
socket = "control.sock"
[time]
sync_source = "assume_synced"
[recording]
record_interval_s = 0
[[drivers]]
name = "logger"
type = "ascii"
port = "{port}"
format = "csv"
max_line = 64
fields = [{{ source = 1, sensor_id = "L1", quantity = "movement_count", unit = "count" }}]
"""


def seqs(agent: AgentProcess) -> list[int]:
    with agent.store() as s:
        return [int(r["value"]) for r in s.records(type="reading")]


def crash_window(kills: int, folder: Path, commit_interval_s: float = 0.1) -> dict[str, float]:
    logger = Logger()
    cfg = folder / "coldgate.toml"
    cfg.write_text(CONFIG.format(port=logger.path, commit_interval_s=commit_interval_s))
    agent = AgentProcess(cfg).start()
    total = 400 * (kills + 1)
    try:
        logger.paced(100.0, total)
        for k in range(kills):
            wait_until(lambda k=k: logger.sent >= (k + 1) * total // (kills + 1), 120, "the logger's lines")
            time.sleep(0.37 * (k % 3))  # kills at varied points of the commit cadence (a pace, not a wait)
            agent.kill()
            agent.start()
        logger.join(120)
        wait_until(lambda: (s := seqs(agent)) and s[-1] == total - 1, 120, "the last line")
        agent.stop()
        lost = total - len(set(seqs(agent)))
        return {"lines": total, "kills": kills, "lost": lost, "per_kill": lost / kills}
    finally:
        agent.stop()
        logger.close()
        kill_leftovers()


def flood(lines: int, folder: Path, commit_interval_s: float = 0.1) -> dict[str, float]:
    logger = Logger()
    cfg = folder / "coldgate.toml"
    cfg.write_text(CONFIG.format(port=logger.path, commit_interval_s=commit_interval_s))
    agent = AgentProcess(cfg).start()
    try:
        pid = agent.proc.pid  # type: ignore[union-attr]
        head0 = agent.head()
        t0 = time.monotonic()
        logger.flood(lines)
        peak = 0.0
        while time.monotonic() - t0 < 2.5:
            peak = max(peak, rss_mb(pid, "VmHWM"))
            time.sleep(0.05)  # sampling the agent's memory while it floods
        committed = agent.head() - head0
        rate = committed / (time.monotonic() - t0)
        agent.kill()
        agent.start()
        logger.join(300)
        wait_until(lambda: (s := seqs(agent)) and s[-1] == lines - 1, 300, "the last line")
        agent.stop()
        lost = lines - len(set(seqs(agent)))
        return {"lines": lines, "peak_rss_mb": peak, "rate": rate, "lost": lost,
                "lost_s": lost / rate if rate else float("nan")}
    finally:
        agent.stop()
        logger.close()
        kill_leftovers()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=5)
    p.add_argument("--flood", type=int, default=200_000)
    p.add_argument("--commit-interval", type=float, default=0.1,
                   help="store.commit_interval_s of the agent (the default config's is 0.1)")
    args = p.parse_args()
    print(f"store.commit_interval_s = {args.commit_interval}")
    with tempfile.TemporaryDirectory() as d:
        r = crash_window(args.kills, Path(d), args.commit_interval)
    print(f"SIGKILL at 100 lines/s: {r['lost']} of {r['lines']} lines lost in {r['kills']} kills = "
          f"{r['per_kill']:.1f} a kill (target ≤ 10): {'PASS' if r['per_kill'] <= 10 else 'FAIL'}")
    with tempfile.TemporaryDirectory() as d:
        f = flood(args.flood, Path(d), args.commit_interval)
    print(f"flood of {f['lines']} lines: peak RSS {f['peak_rss_mb']:.1f} MiB (target ≤ 80): "
          f"{'PASS' if f['peak_rss_mb'] <= 80 else 'FAIL'}; {f['rate']:,.0f} lines/s committed")
    print(f"  a SIGKILL 2.5 s in lost {f['lost']} lines = {f['lost_s']:.3f} s of input (target ≤ 0.5 s): "
          f"{'PASS' if f['lost_s'] <= 0.5 else 'FAIL'}")


if __name__ == "__main__":
    main()
