"""No process a test started outlives the test, whatever happened in it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.harness import kill_leftovers


@pytest.fixture(autouse=True)
def _no_leftover_processes() -> Iterator[None]:
    yield
    kill_leftovers()
