"""The central side as real processes for end-to-end tests: receivers, consumers, a balancer.

Every process logs to a file in ``tmp_path`` (a pipe nobody reads would fill and block a
busy receiver) and is registered in :data:`tests.e2e.harness.LIVE`, so the e2e conftest
kills it whatever the test did. Waiting is on what the processes write (their log, the
database), never a fixed sleep.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

import requests

from agent.receiver import Receiver
from tests.e2e.harness import LIVE, TOKEN, free_port, wait_until


class CentralDB:
    """A receiver database (SQLite file or ``postgresql://`` URL), read as an auditor reads it."""

    def __init__(self, url: str) -> None:
        self.url = url

    def count(self) -> int:
        """How many distinct records it holds (cheap: for waiting on progress)."""
        import psycopg

        try:
            with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
                row = conn.execute("SELECT count(*) FROM records").fetchone()
        except psycopg.errors.UndefinedTable:
            return 0
        return int(row[0]) if row else 0

    def records(self, stream: str | None = None) -> list[dict[str, Any]]:
        with Receiver(self.url, create=False) as r:
            return r.records(stream=stream)

    def report(self) -> dict[str, Any]:
        with Receiver(self.url, create=False) as r:
            return r.report()

    def stream_report(self, stream: str) -> dict[str, Any]:
        for gateway in self.report()["gateways"].values():
            if stream in gateway["streams"]:
                return dict(gateway["streams"][stream])
        raise AssertionError(f"stream {stream} not in the receiver's report")


class LoggedProcess:
    """``python -m agent <args>`` with its output in ``log``; one process per :meth:`start`."""

    ready_line = ""

    def __init__(self, log: Path, args: Sequence[str]) -> None:
        self.log, self.args = log, list(args)
        self.proc: subprocess.Popen[bytes] | None = None
        self._offset = 0

    def start(self, *extra: str) -> Self:
        self._offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "agent", *self.args, *extra], stdout=out,
                                         stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        LIVE.add(self.proc)
        proc = self.proc
        wait_until(lambda: self.ready_line in self.output() or proc.poll() is not None, 30,
                   f"{self.log.stem} to be ready")
        assert proc.poll() is None, f"{self.log.stem} exited ({proc.returncode}): {self.output()[-2000:]}"
        return self

    def output(self) -> str:
        """What this run (since the last start) has logged."""
        if not self.log.exists():
            return ""
        with open(self.log, "rb") as f:
            f.seek(self._offset)
            return f.read().decode(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 30, count: int = 1) -> None:
        """Wait until this run has logged ``pattern`` (a regex) ``count`` times."""
        wait_until(lambda: len(re.findall(pattern, self.output())) >= count, timeout, f"{pattern!r} in {self.log.name}")

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, as a power cut or the OOM killer."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError(f"{self.log.stem} did not stop on SIGTERM within 20 s") from None


class Consumer(LoggedProcess):
    """``coldgate receiver --mqtt``: one member of the shared subscription group ``rx``."""

    ready_line = "receiver consuming"

    def __init__(self, log: Path, db: str, broker: str, *args: str) -> None:
        super().__init__(log, ["receiver", "--mqtt", broker, "--db", db, "--share-group", "rx", "--allow-faults",
                               *args])

    def stored(self) -> int:
        """Batch messages it stored, from the line it logs when it stops (0 if it was killed)."""
        m = re.search(r"(\d+) batch message\(s\) stored", self.output())
        return int(m.group(1)) if m else 0


class HttpReceiver(LoggedProcess):
    """``coldgate receiver --port P``: one HTTP receiver process, on a port it keeps across restarts."""

    ready_line = "receiver listening"

    def __init__(self, log: Path, db: str, *args: str) -> None:
        self.port = free_port()
        super().__init__(log, ["receiver", "--db", db, "--port", str(self.port), "--token", TOKEN,
                               "--allow-faults", *args])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def faults(self, plan: list[dict[str, Any]]) -> None:
        r = requests.post(f"{self.url}/v1/_faults", json=plan, timeout=5,
                          headers={"Authorization": f"Bearer {TOKEN}"})
        r.raise_for_status()
        r.close()


class RoundRobin:
    """A tiny HTTP load balancer: each request to the next upstream, as HAProxy's
    ``mode http`` / ``balance roundrobin`` does in front of a pool of receivers.

    Requests are forwarded on a fresh upstream connection; an upstream that refuses the
    connection is skipped for the next one (the request was not sent: safe to redispatch);
    one that fails after the request was sent (reset, closed without an answer) gets the
    client a 502, as a real balancer answers. ``log`` holds ``(upstream, key, start, end,
    status)`` per forwarded request, on the monotonic clock.
    """

    def __init__(self, upstreams: Sequence[int], timeout: float = 60.0) -> None:
        self.upstreams = list(upstreams)
        self.timeout = timeout
        self.log: list[tuple[int, str, float, float, int]] = []
        self._next = 0
        self._lock = threading.Lock()
        balancer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                balancer.forward(self, body)

            do_GET = do_POST  # noqa: N815

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                # the agent closing its connection after its read timeout is routine here
                if not isinstance(sys.exc_info()[1], OSError):
                    super().handle_error(request, client_address)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def _pick(self) -> int:
        with self._lock:
            port = self.upstreams[self._next % len(self.upstreams)]
            self._next += 1
            return port

    def forward(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("connection", "keep-alive")}
        key = handler.headers.get("Idempotency-Key", "")
        for _ in range(len(self.upstreams)):
            port = self._pick()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=self.timeout)
            start = time.monotonic()
            try:
                conn.connect()
            except OSError:
                conn.close()
                continue  # not sent: the next upstream may take it
            try:
                conn.request(handler.command, handler.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException):
                self.log.append((port, key, start, time.monotonic(), 502))
                self._answer(handler, 502, [("Content-Type", "application/json")], b'{"error":"bad gateway"}')
                return
            finally:
                conn.close()
            self.log.append((port, key, start, time.monotonic(), resp.status))
            self._answer(handler, resp.status, [(k, v) for k, v in resp.getheaders()
                                                if k.lower() not in ("connection", "content-length",
                                                                     "transfer-encoding")], data)
            return
        self._answer(handler, 503, [("Content-Type", "application/json")], b'{"error":"no upstream"}')

    @staticmethod
    def _answer(handler: BaseHTTPRequestHandler, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
        try:
            handler.send_response(status)
            for k, v in headers:
                handler.send_header(k, v)
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        except OSError:  # the agent gave up waiting (its read timeout): nothing to answer
            handler.close_connection = True

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False
