"""The rebuilt runtime with real processes: a logger on a pty, the agent, the reference receiver.

A writer thread plays an ASCII logger on the master side of a real pty (one line per
record, carrying its own number), the agent reads the slave side, the receiver stores and
verifies. What is measured here is what the README promises: the crash window, bounded
memory, nothing lost when the store fails, a frozen agent that says so, no writes at
idle. (Speed targets are in ``tests/bench/``.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import (
    TOKEN,
    AgentProcess,
    Logger,
    ReceiverProcess,
    assert_receiver_holds_everything,
    wait_until,
)

pytestmark = pytest.mark.slow


def config(tmp: Path, url: str | None, port: str, *, extra: str = "", store: str = "store.db",
           run_dir: Path | None = None) -> Path:
    cfg = tmp / "coldgate.toml"
    uplink = f'[uplink]\nurl = "{url}"\ntoken = "{TOKEN}"\nbackoff_base_s = 0.05\nbackoff_cap_s = 0.5\n' if url else ""
    sock = (run_dir or tmp) / "control.sock"
    cfg.write_text(f"""
gateway_id = "gw-e2e"
[store]
path = "{store}"
{extra}
[control]
socket = "{sock}"
{uplink}
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
""")
    return cfg


def stored_seqs(agent: AgentProcess) -> list[int]:
    return [int(r["value"]) for r in agent.all_records() if r["type"] == "reading"]


def proc_status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def write_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise KeyError("write_bytes")


def test_sigkills_at_100_lines_per_second_lose_at_most_the_crash_window_and_the_rest_arrives(tmp_path: Path) -> None:
    """Findings 8.2 and 8.3: each SIGKILL lost ~0.42 s of lines, and each reopen flushed what
    waited in the tty. Now a kill loses only what was read and not yet committed (the
    default 0.1 s group commit), and what waited in the tty while the agent was down is read."""
    receiver = ReceiverProcess(tmp_path / "rx.db").start()
    logger = Logger()
    agent = AgentProcess(config(tmp_path, receiver.url, logger.path)).start()
    total, kills = 1500, 3
    try:
        logger.paced(100.0, total)
        for k in range(kills):
            wait_until(lambda k=k: logger.sent >= (k + 1) * total // (kills + 1), 60, "the logger's lines")
            agent.kill()
            agent.start()
        logger.join(60)
        wait_until(lambda: (s := stored_seqs(agent)) and s[-1] == total - 1, 60, "the last line stored")
        wait_until(lambda: agent.pending() == 0, 60, "everything sent")
        assert agent.stop() == 0
        seqs = stored_seqs(agent)
        lost = sorted(set(range(total)) - set(seqs))
        per_kill = len(lost) / kills
        print(f"lost per SIGKILL at 100 lines/s: {per_kill:.1f} lines ({lost[:20]})")
        assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))  # in order, none twice
        assert per_kill <= 20, f"{len(lost)} lines lost in {kills} kills"
        assert_receiver_holds_everything(agent, receiver)
        starts = [r for r in agent.all_records() if r.get("event") == "agent_started"]
        assert len(starts) == kills + 1  # every run of the agent shows in the stream
    finally:
        agent.stop()
        receiver.stop()
        logger.close()


def test_a_flood_keeps_the_agent_small_and_a_kill_during_it_loses_a_bounded_part(tmp_path: Path) -> None:
    """Finding 8.1: a 200,000-line flood grew the agent to 364 MB and a SIGKILL 2.5 s into it
    lost 100,859 lines read but not committed."""
    logger = Logger()
    agent = AgentProcess(config(tmp_path, None, logger.path, extra="quota_mb = 2048")).start()
    total = 200_000
    try:
        logger.flood(total)
        pid = agent.proc.pid  # type: ignore[union-attr]
        wait_until(lambda: agent.head() > 20_000, 60, "the flood under way")
        peak_kb = proc_status(pid, "VmHWM")
        agent.kill()
        agent.start()
        logger.join(120)
        wait_until(lambda: (s := stored_seqs(agent)) and s[-1] == total - 1, 120, "the last line stored")
        assert agent.stop() == 0
        seqs = stored_seqs(agent)
        lost = total - len(set(seqs))
        print(f"flood: peak RSS {peak_kb / 1024:.1f} MiB; lost at the kill {lost} lines")
        assert peak_kb / 1024 <= 120  # bounded (the benchmark shows the figure against 80 MB)
        assert lost <= 12_000  # at most the intake, one pending batch and one transaction
    finally:
        agent.stop()
        logger.close()


def _mount_tmpfs(where: Path) -> None:
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(where)], capture_output=True,
                          text=True)
    assert done.returncode == 0, f"this test needs to mount a tmpfs (run as root): {done.stderr}"


def _remount(where: Path, mode: str) -> None:
    done = subprocess.run(["mount", "-o", f"remount,{mode}", str(where)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_store_on_a_read_only_filesystem_holds_readings_and_loses_nothing_when_it_is_writable_again(
        tmp_path: Path) -> None:
    """Finding 8.5: an unwritable store lost every reading it held, silently, at SIGTERM, and
    was never retried. The store's filesystem is really remounted read-only here (as the
    kernel does to a failing SD card) and writable again."""
    data = tmp_path / "data"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _mount_tmpfs(data)
    receiver = ReceiverProcess(tmp_path / "rx.db").start()
    logger = Logger()
    cfg = config(tmp_path, receiver.url, logger.path, store=str(data / "store.db"), run_dir=run_dir)
    agent = AgentProcess(cfg)
    agent.store_path = data / "store.db"
    agent.socket = run_dir / "control.sock"
    try:
        agent.start()
        logger.write_lines(0, 100)
        wait_until(lambda: len(stored_seqs(agent)) == 100, 30, "the first lines")
        assert agent.stop() == 0
        _remount(data, "ro")
        agent.start_unready()
        wait_until(lambda: agent.pid() is not None, 30, "the agent answering")
        logger.write_lines(100, 300)
        st = wait_until(lambda: (s := agent.request("status"))["writer"]["held"] >= 200 and s, 30, "held records")
        assert st["writer"]["error"] and "read-only" in json.dumps(st["writer"]).lower()
        text = subprocess.run([sys.executable, "-m", "agent", "status", "--config", str(cfg)],
                              capture_output=True, text=True, timeout=30).stdout
        assert "store writes FAILING" in text and "held while the store fails" in text
        # stopped while the store cannot be written: what is held is kept in the runtime folder
        assert agent.stop() == 0
        assert list(run_dir.glob("*.held"))
        _remount(data, "rw")
        agent.start()
        logger.write_lines(300, 400)
        wait_until(lambda: len(stored_seqs(agent)) == 400, 30, "every line")
        # and the store going read-only under a running agent, then writable again
        wait_until(lambda: agent.pending() == 0, 30, "everything sent")
        assert agent.stop() == 0
        seqs = stored_seqs(agent)
        assert seqs == list(range(400))
        events = [r["event"] for r in agent.all_records() if r["type"] == "event"]
        assert "data_loss" not in events
        assert events.count("agent_started") == 3 and events.count("agent_stopped") == 3
        assert_receiver_holds_everything(agent, receiver)
    finally:
        agent.stop()
        receiver.stop()
        logger.close()
        subprocess.run(["umount", "-l", str(data)], check=False)


def test_a_frozen_agent_is_reported_as_not_answering_not_as_healthy(tmp_path: Path) -> None:
    """Finding 8.6: after ``kill -STOP`` status still said running, sensors 0 s ago, uplink ok."""
    logger = Logger()
    cfg = config(tmp_path, None, logger.path)
    agent = AgentProcess(cfg).start()
    try:
        pid = agent.proc.pid  # type: ignore[union-attr]
        os.kill(pid, signal.SIGSTOP)
        try:
            out = subprocess.run([sys.executable, "-m", "agent", "status", "--config", str(cfg), "--timeout", "2"],
                                 capture_output=True, text=True, timeout=60)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert out.returncode == 1, out.stdout + out.stderr
        assert "NOT ANSWERING" in out.stdout and "running (pid" not in out.stdout
        ok = subprocess.run([sys.executable, "-m", "agent", "status", "--config", str(cfg)],
                            capture_output=True, text=True, timeout=60)
        assert ok.returncode == 0 and "running (pid" in ok.stdout
    finally:
        agent.stop()
        logger.close()


def test_an_idle_agent_writes_nothing_to_storage(tmp_path: Path) -> None:
    """Finding 8.7: a status file rewritten every 2 s: 3.7–4.6 kB/s, 350 MB a day at idle."""
    receiver = ReceiverProcess(tmp_path / "rx.db").start()
    logger = Logger()
    agent = AgentProcess(config(tmp_path, receiver.url, logger.path)).start()
    try:
        pid = agent.proc.pid  # type: ignore[union-attr]
        wait_until(lambda: agent.pending() == 0, 30, "the start-up records sent")
        agent.request("status")  # a technician looks: that is no write either
        before = write_bytes(pid)
        time.sleep(6)  # the measurement window: idle means nothing happens in it
        agent.request("status")
        assert write_bytes(pid) - before == 0
    finally:
        agent.stop()
        receiver.stop()
        logger.close()


def test_config_apply_waits_for_the_agents_verdict_and_keeps_the_live_file_and_its_mode(tmp_path: Path) -> None:
    """Finding 8.9: apply said success for a file the agent then rejected, left the live file
    holding it, and reset the live file's owner and mode."""
    logger = Logger()
    cfg = config(tmp_path, None, logger.path)
    os.chmod(cfg, 0o640)
    os.chown(cfg, 0, 65534)  # root:nogroup, as /etc/coldgate is root:coldgate
    agent = AgentProcess(cfg).start()
    try:
        live = cfg.read_text()
        bad = tmp_path / "new.toml"
        bad.write_text(live.replace('gateway_id = "gw-e2e"', 'gateway_id = "gw-other"'))
        out = subprocess.run([sys.executable, "-m", "agent", "config", "apply", str(bad), "--config", str(cfg)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 1 and "gateway_id" in out.stdout + out.stderr
        assert cfg.read_text() == live  # the live file still holds what runs
        good = tmp_path / "good.toml"
        good.write_text(live.replace("max_line = 64", "max_line = 128"))
        out = subprocess.run([sys.executable, "-m", "agent", "config", "apply", str(good), "--config", str(cfg),
                              "--json"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        verdict = json.loads(out.stdout)
        assert verdict["applied"] and verdict["drivers"]["restarted"] == ["logger"]
        st = cfg.stat()
        assert cfg.read_text() == good.read_text()
        assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o640, 0, 65534)
        names = [r["event"] for r in agent.all_records() if r["type"] == "event"]
        assert names.count("config_rejected") == 1 and names.count("config_applied") == 2
    finally:
        agent.stop()
        logger.close()


def test_the_cli_never_signals_whatever_pid_a_file_names(tmp_path: Path) -> None:
    """Finding 8.12: anyone who could write ``<store>.pid`` made root's CLI signal any process."""
    import fcntl

    decoy = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    logger = Logger()
    cfg = config(tmp_path, None, logger.path)
    fd = os.open(tmp_path / "store.db.pid", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, str(decoy.pid).encode())
        agent = AgentProcess(cfg).start()
        agent.stop()
        for args in (["sync", "--now"], ["config", "apply", str(cfg)], ["status"]):
            subprocess.run([sys.executable, "-m", "agent", *args, "--config", str(cfg)], capture_output=True,
                           timeout=60)
        assert decoy.poll() is None  # SIGUSR1 or SIGHUP would have ended it
    finally:
        os.close(fd)
        decoy.kill()
        decoy.wait()
        logger.close()


def _unused(*_: Any) -> None:  # keep imports honest for type checkers
    return None
