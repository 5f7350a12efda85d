"""No process a test started outlives the test, whatever happened in it.

Also the central side's real services, each test its own: a Mosquitto broker
(``broker_factory``, from :mod:`tests.mosquitto`) and a PostgreSQL cluster (``postgres``,
from :mod:`tests.receiver.pg`), both on free loopback ports and gone after the test.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import ReceiverProcess, kill_leftovers
from tests.mosquitto import broker, broker_factory  # noqa: F401 - a real Mosquitto per test
from tests.receiver import pg


@pytest.fixture(autouse=True)
def _no_leftover_processes() -> Iterator[None]:
    yield
    kill_leftovers()


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[ReceiverProcess]:
    """The reference receiver in its own process, on a free port, stopped after the test."""
    r = ReceiverProcess(tmp_path / "receiver.db").start()
    yield r
    r.stop()


@pytest.fixture(scope="session")
def pg_template() -> Iterator[Path]:
    """One initdb per session, copied by each test's own server."""
    root = pg.make_template()
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres(pg_template: Path) -> Iterator[pg.PostgresServer]:
    """A PostgreSQL server of this test's own, on a free loopback port; stopped and removed after."""
    server = pg.PostgresServer(pg_template)
    try:
        yield server
    finally:
        server.stop()
        server.cleanup()
