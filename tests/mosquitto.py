"""A real Mosquitto broker per test, on a free loopback port, configured in ``tmp_path``.

No system service is used or needed: each :class:`Mosquitto` is its own process with its
own config, persistence directory and log, and the ``broker`` fixture kills it after the
test. A missing ``mosquitto`` binary fails the test with the command that installs it
(``.ci/run`` does): these tests are never skipped.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None)
    if found is None:
        pytest.fail("the MQTT tests need Mosquitto: apt-get install -y mosquitto (as root; .ci/run does it)",
                    pytrace=False)
    return found


class Mosquitto:
    """One broker process. ``restart()`` keeps the port; ``kill=True`` is a SIGKILL (no save)."""

    def __init__(self, root: Path, *, persistence: bool = False, users: dict[str, str] | None = None,
                 acl: str | None = None, tls: dict[str, Path] | None = None, extra: tuple[str, ...] = ()) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.persistence = persistence
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None
        lines = [
            f"listener {self.port} 127.0.0.1",
            "user root",  # started as root it would drop to 'mosquitto', who cannot write tmp_path
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {root}/",
            f"log_dest file {root}/mosquitto.log",
            "log_type error", "log_type warning", "log_type notice", "log_type information",
            "connection_messages true",
            "max_queued_messages 1000",
        ]
        if users is not None:
            pw = root / "passwd"
            pw.touch(mode=0o600)
            for user, password in users.items():
                subprocess.run([shutil.which("mosquitto_passwd") or "mosquitto_passwd", "-b", str(pw), user, password],
                               check=True, capture_output=True)
            lines += ["allow_anonymous false", f"password_file {pw}"]
        elif tls is not None and "require_certificate" in tls:
            lines += ["allow_anonymous false"]
        else:
            lines += ["allow_anonymous true"]
        if acl is not None:
            (root / "acl").write_text(acl)
            lines.append(f"acl_file {root}/acl")
        if tls is not None:
            lines += [f"cafile {tls['cafile']}", f"certfile {tls['certfile']}", f"keyfile {tls['keyfile']}"]
            if "require_certificate" in tls:
                lines += ["require_certificate true", "use_identity_as_username true"]
        lines += list(extra)
        self.conf = root / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def start(self) -> Mosquitto:
        self.proc = subprocess.Popen([mosquitto_binary(), "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise AssertionError(f"mosquitto exited at start ({self.proc.returncode}): {err} {self.log()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.02)
        raise AssertionError(f"mosquitto did not listen on {self.port} within 10 s: {self.log()[-2000:]}")

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def restart(self, *, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()

    def log(self) -> str:
        p = self.root / "mosquitto.log"
        return p.read_text(errors="replace") if p.exists() else ""


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[object]:
    """``broker_factory(**options)`` starts a broker; every one is stopped after the test."""
    started: list[Mosquitto] = []

    def make(**options: object) -> Mosquitto:
        b = Mosquitto(tmp_path / f"mosquitto{len(started)}", **options)  # type: ignore[arg-type]
        started.append(b)
        return b.start()

    yield make
    for b in started:
        b.stop(kill=True)


@pytest.fixture
def broker(broker_factory: object) -> Mosquitto:
    """A plain broker: anonymous, no persistence."""
    return broker_factory()  # type: ignore[operator, no-any-return]
