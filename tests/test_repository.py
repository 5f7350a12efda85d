"""The repository stands alone: nothing in it reaches outside the checkout.

A newcomer's clone has nothing beside it, so a test, a tool or a document that names a
sibling directory or a path of a development machine is broken there. The scan covers
every text file git knows (or, in CI's copy of the checkout, which has no ``.git``, every
file of the copy), and the CI script is checked to run the suite in such a copy.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Built from pieces so this file does not match itself.
_DOTDOT = re.escape("..") + "/" + "shared"
OUTSIDE = re.compile(
    "|".join(
        [
            _DOTDOT + r"\b",  # the sibling reference directory of the development setup
            "/" + "work/",  # the development machine's tree
            r"/home/[\w.-]+",  # someone's home directory
            r"/Users/[\w.-]+",
            "/" + r"root/",
            r"\." + "pyenv/",
            "site-" + "packages/",
        ]
    )
)
#: never part of what git tracks; skipped when walking CI's copy
_SKIP_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".hypothesis"}


def repository_files(root: Path = ROOT) -> list[Path]:
    """The files of the checkout: git's list where there is one, else every file."""
    if (root / ".git").exists() and shutil.which("git"):
        out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             check=True, capture_output=True).stdout
        return [root / p for p in out.decode().split("\0") if p and (root / p).is_file()]
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and not d.endswith(".egg-info")]
        files += [Path(dirpath) / f for f in filenames]
    return files


def outside_references(files: list[Path], root: Path = ROOT) -> list[str]:
    """``path:line: text`` of every line of a text file that names a path outside the checkout."""
    found = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary: not a reference anyone reads
        for n, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                found.append(f"{path.relative_to(root)}:{n}: {line.strip()[:120]}")
    return found


def test_no_file_refers_to_a_path_outside_the_repository() -> None:
    files = repository_files()
    assert any(p.name == "pyproject.toml" for p in files)
    assert outside_references(files) == []


@pytest.mark.parametrize(
    "line",
    [
        "DATA = Path(__file__).parents[2] / '" + ".." + "/shared/data'",
        "see (``/" + "work/shared/PROTOCOL.md``)",
        "open('/" + "home/alice/coldgate/x.log')",
        "/" + "root/.cache/thing",
    ],
)
def test_the_scan_catches_a_reference_outside(tmp_path: Path, line: str) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(f"x = '/etc/coldgate/coldgate.toml'\n{line}\n")
    (tmp_path / "blob.bin").write_bytes(b"\xff\xfe" + line.encode())
    assert outside_references([probe, tmp_path / "blob.bin"], tmp_path) == [f"probe.py:2: {line}"]


def test_the_data_the_tests_read_is_inside_the_repository() -> None:
    from tests.drivers import ble_helpers, serial_helpers

    for p in (serial_helpers.DATA, ble_helpers.VECTORS_PATH):
        assert p.resolve().is_relative_to(ROOT), p
        assert p.exists(), p
    listed = (ROOT / "tests" / "data" / "README.md").read_text()
    for p in (ROOT / "tests" / "data").rglob("*"):
        if p.is_file() and p.name != "README.md":
            assert p.name in listed, f"{p.relative_to(ROOT)} has no provenance note in tests/data/README.md"


def test_ci_runs_the_suite_in_a_copy_with_nothing_beside_it(tmp_path: Path) -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "mktemp -d" in ci and ".ci/copy-checkout" in ci and 'cd "$work/coldgate"' in ci
    if not (ROOT / ".git").exists():
        pytest.skip("this is CI's copy of the checkout: it has no .git to copy from")
    dest = tmp_path / "copy"
    subprocess.run([str(ROOT / ".ci" / "copy-checkout"), str(dest)], check=True)
    assert (dest / "tests" / "data" / "ble" / "vectors.json").is_file()
    assert (dest / "pyproject.toml").is_file()
    assert not (dest / ".venv").exists() and not (dest / ".git").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]
