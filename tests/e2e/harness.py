"""Real processes for end-to-end tests: the agent and the reference receiver.

Both run as ``python -m agent …`` subprocesses, on loopback. Waiting is by polling the
observable outcome (the store, the receiver's database) with a deadline, never a fixed
sleep.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import requests

from agent.control import ControlClient
from agent.exc import ControlError
from agent.receiver import Receiver
from agent.store import Store

TOKEN = "e2e-token"

#: every process a test started, so that none outlives its test (see conftest.py)
LIVE: set[subprocess.Popen[Any]] = set()


def kill_leftovers() -> None:
    for proc in list(LIVE):
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        LIVE.discard(proc)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition",
               every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


class ReceiverProcess:
    """``coldgate receiver`` in a subprocess, with fault injection enabled."""

    def __init__(self, db: Path, port: int | None = None, token: str = TOKEN) -> None:
        self.db, self.port, self.token = db, port or free_port(), token
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ReceiverProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "receiver", "--port", str(self.port), "--db", str(self.db),
             "--token", self.token, "--allow-faults"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        LIVE.add(self.proc)
        assert self.proc.stderr is not None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if "listening" in line:
                return self
            if not line and self.proc.poll() is not None:
                break
        raise AssertionError(f"receiver did not start (exit {self.proc.poll()})")

    def faults(self, plan: list[dict[str, Any]]) -> None:
        r = requests.post(f"{self.url}/v1/_faults", json=plan, timeout=5,
                          headers={"Authorization": f"Bearer {self.token}"})
        r.raise_for_status()
        r.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=15)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    def records(self, stream: str | None = None) -> list[dict[str, Any]]:
        if not self.db.exists():
            return []
        with Receiver(self.db) as r:
            return r.records(stream=stream)

    def report(self) -> dict[str, Any]:
        with Receiver(self.db) as r:
            return r.report()

    def stream_report(self, stream: str) -> dict[str, Any]:
        for gateway in self.report()["gateways"].values():
            if stream in gateway["streams"]:
                return dict(gateway["streams"][stream])
        raise AssertionError(f"stream {stream} not in the receiver's report")


def cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """``coldgate ARGS`` as a separate process, as a technician types it; its output captured."""
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=timeout)


def write_config(tmp_path: Path, url: str | None, *, token: str = TOKEN, sim: str = "speed = 0\nlimit = 600",
                 extra: str = "", uplink_extra: str = "", gateway_id: str = "gw-e2e",
                 config_version: int | str = 0) -> Path:
    """A config for the simulated logger; ``url=None`` leaves ``uplink.url`` out (MQTT)."""
    cfg = tmp_path / "coldgate.toml"
    url_line = "" if url is None else f'url = "{url}"'
    version = json.dumps(config_version)  # 7 or "2026.11.2": TOML writes both as JSON does
    cfg.write_text(f"""
gateway_id = "{gateway_id}"
config_version = {version}
[store]
path = "store.db"
commit_interval_s = 0.2
[control]
socket = "control.sock"
[uplink]
{url_line}
token = "{token}"
interval_s = 0.2
batch_size = 100
read_timeout_s = 1
connect_timeout_s = 1
backoff_base_s = 0.05
backoff_cap_s = 0.5
{uplink_extra}
[time]
sync_source = "assume_synced"
[recording]
record_interval_s = 0
[[drivers]]
name = "sim"
type = "sim"
seed = 7
{sim}
sensors = [{{ id = "p1", interval_s = 1 }}, {{ id = "p2", interval_s = 1, setpoint = 4.0 }}]
{extra}
""")
    return cfg


class AgentProcess:
    """``coldgate run`` in a subprocess."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.store_path = config.parent / "store.db"
        self.socket = config.parent / "control.sock"
        self.log = config.parent / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start_unready(self) -> AgentProcess:
        """Start, and return once it answers on its socket (its store may not be usable)."""
        return self.start(wait_store=False)

    def start(self, *, wait_store: bool = True) -> AgentProcess:
        logf = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen([sys.executable, "-X", "faulthandler", "-m", "agent", "run",
                                          "--config", str(self.config)], stdout=logf, stderr=logf)
            LIVE.add(self.proc)
        finally:
            logf.close()
        proc = self.proc
        wait_until(lambda: self.pid() == proc.pid or proc.poll() is not None, 20, "the agent")
        assert proc.poll() is None, f"agent exited with {proc.returncode}: {self.log.read_text()[-2000:]}"
        if wait_store:
            wait_until(lambda: self.head() >= 1, 20, "the agent's store")
        return self

    def pid(self) -> int | None:
        """The pid of the agent answering on the control socket, or None."""
        try:
            return int(ControlClient(self.socket, timeout=2.0).request("ping")["pid"])
        except ControlError:
            return None

    def request(self, cmd: str, **args: Any) -> Any:
        return ControlClient(self.socket, timeout=30.0).request(cmd, **args)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        self.proc = None
        return code

    def store(self) -> Store:
        return Store.open(self.store_path, gateway_id="gw-e2e", create=False, check=False)

    def head(self) -> int:
        try:
            with self.store() as s:
                return s.head()[0]
        except Exception:  # noqa: BLE001 - not there yet
            return 0

    def pending(self) -> int:
        with self.store() as s:
            return int(s.stats()["pending"])

    def status(self) -> dict[str, Any]:
        out = subprocess.run([sys.executable, "-m", "agent", "status", "--config", str(self.config), "--json"],
                             capture_output=True, text=True, timeout=30, check=True)
        return dict(json.loads(out.stdout))

    def all_records(self) -> list[dict[str, Any]]:
        with self.store() as s:
            return s.records(with_state=True)


class Central(Protocol):
    """A receiver database as the assertions read it (:class:`ReceiverProcess`, ``central.CentralDB``)."""

    def records(self, stream: str | None = None) -> list[dict[str, Any]]: ...

    def stream_report(self, stream: str) -> dict[str, Any]: ...


def assert_receiver_holds_everything(agent: AgentProcess, receiver: Central,
                                     set_aside_ok: bool = False) -> list[dict[str, Any]]:
    """The receiver holds every record of the agent's stream exactly once, chained, gap-free."""
    local = agent.all_records()
    stream = local[0]["stream"]
    remote = receiver.records(stream=stream)
    expected = [(r["seq"], r["hash"]) for r in local if r["_state"] != "set_aside" or not set_aside_ok]
    got = [(r["seq"], r["hash"]) for r in remote]
    assert got == expected
    assert [r["seq"] for r in local] == list(range(1, len(local) + 1))
    mine = receiver.stream_report(stream)
    assert mine["chain_breaks"] == [] and mine["conflicts"] == []
    if not set_aside_ok:
        assert mine["gaps"] == [] and mine["verdict"] == "complete-and-verified"
    return remote


class Logger:
    """An ASCII logger on a pty: ``write_lines(a, b)`` sends ``SEQ,<n>`` for n in [a, b)."""

    def __init__(self) -> None:
        self.master, slave = os.openpty()
        self.path = os.ttyname(slave)
        os.close(slave)
        self.sent = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def write_lines(self, a: int, b: int) -> None:
        data = memoryview("".join(f"SEQ,{i}\r\n" for i in range(a, b)).encode())
        while data:
            n = os.write(self.master, data)
            data = data[n:]
        self.sent = max(self.sent, b)

    def paced(self, rate: float, total: int) -> None:
        """Send ``total`` lines at ``rate`` lines/s on a thread (a logger with flow control:
        while nobody reads, the tty's buffer fills and the logger waits)."""

        def run() -> None:
            start = time.monotonic()
            for i in range(total):
                if self._stop.is_set():
                    return
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # the logger's own pace
                self.write_lines(i, i + 1)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def flood(self, total: int) -> None:
        self._thread = threading.Thread(target=self.write_lines, args=(0, total), daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def close(self) -> None:
        self._stop.set()
        os.close(self.master)
