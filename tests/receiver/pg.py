"""A real PostgreSQL for a test: its own cluster, on a free loopback port, gone afterwards.

``initdb`` runs once per session into a template; each test copies it and starts its own
server (``pg_ctl``), so tests never share a database and leave nothing running. The
server cannot run as root: as root it runs as the ``postgres`` user (``runuser``), with a
data directory that user owns under the system temp directory (pytest's ``tmp_path`` is
private to root). Binaries missing is a test failure that says what to install, not a skip.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

_BIN_GLOBS = ("/usr/lib/postgresql/*/bin", "/usr/local/pgsql/bin")


def bindir() -> Path:
    """Where initdb and pg_ctl are, or a test failure saying how to get them."""
    for pattern in _BIN_GLOBS:
        for d in sorted(glob.glob(pattern), reverse=True):
            if Path(d, "initdb").exists() and Path(d, "pg_ctl").exists():
                return Path(d)
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).parent
    pytest.fail(
        "PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin or on PATH: "
        "install them (Debian: apt-get install -y postgresql); .ci/run does",
        pytrace=False,
    )


def _as_server_user() -> tuple[list[str], int | None, int | None]:
    if os.geteuid() != 0:
        return [], None, None
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail("running as root, and there is no 'postgres' user to run PostgreSQL as", pytrace=False)
    return ["runuser", "-u", "postgres", "--"], pw.pw_uid, pw.pw_gid


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_template() -> Path:
    """An initdb'd data directory to copy: one initdb per session (it takes a few seconds)."""
    prefix, uid, gid = _as_server_user()
    root = Path(tempfile.mkdtemp(prefix="coldgate-pgtemplate-"))
    data = root / "data"
    if uid is not None:
        os.chown(root, uid, gid)  # type: ignore[arg-type]
    subprocess.run(
        [*prefix, str(bindir() / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
         "--locale=C", "--no-sync"],
        check=True, capture_output=True, timeout=120,
    )
    return root


class PostgresServer:
    """One running cluster: ``url`` to connect, :meth:`stop` (or :meth:`kill`) to end it."""

    def __init__(self, template: Path, *, fsync: bool = False) -> None:
        self.prefix, uid, gid = _as_server_user()
        self.root = Path(tempfile.mkdtemp(prefix="coldgate-pg-"))
        self.data = self.root / "data"
        shutil.copytree(template / "data", self.data, symlinks=True)
        if uid is not None:
            for dirpath, _, files in os.walk(self.root):
                os.chown(dirpath, uid, gid)  # type: ignore[arg-type]
                for f in files:
                    os.chown(os.path.join(dirpath, f), uid, gid)  # type: ignore[arg-type]
        os.chmod(self.data, 0o700)
        self.port = free_port()
        opts = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200"
                f" -c fsync={'on' if fsync else 'off'} -c full_page_writes={'on' if fsync else 'off'}"
                " -c shared_buffers=128MB")
        self.log = self.root / "server.log"
        out = subprocess.run(
            [*self.prefix, str(bindir() / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", opts,
             "-w", "-t", "60", "start"],
            capture_output=True, text=True, timeout=90,
        )
        if out.returncode != 0:
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            self.cleanup()
            pytest.fail(f"PostgreSQL did not start: {out.stderr.strip()} {log[-800:]}", pytrace=False)
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, mode: str) -> None:
        subprocess.run(
            [*self.prefix, str(bindir() / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop"],
            capture_output=True, timeout=60,
        )

    def stop(self) -> None:
        if self.data.exists():
            self._ctl("fast")

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def wait_ready(self, deadline_s: float = 30) -> None:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError("PostgreSQL is not accepting connections")
