"""A real full filesystem for the tests: a small tmpfs mounted under ``tmp_path``.

The tests run as root in CI and on the development machine; where ``mount -t tmpfs``
is not allowed the test fails with the reason (a full disk emulated above SQLite would
not show what a real one does to the WAL, the checkpoint and the spill file).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def tmpfs(where: Path, size: int) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` bytes at ``where`` (made if missing); unmount afterwards."""
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.fail("the full-disk tests mount a tmpfs and need root (CI runs them as root)", pytrace=False)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs at {where}: {r.stderr.strip() or f'exit {r.returncode}'} "
                    "(the full-disk tests need mount(8) and CAP_SYS_ADMIN)", pytrace=False)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def fill(folder: Path, name: str = "ballast") -> Path:
    """Fill the filesystem of ``folder`` to the last byte with a ballast file."""
    path = folder / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for chunk in (1 << 20, 1 << 16, 1 << 12, 1 << 9, 1):
            block = b"\0" * chunk
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, block)
    finally:
        os.close(fd)
    return path


def free_bytes(folder: Path) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize
