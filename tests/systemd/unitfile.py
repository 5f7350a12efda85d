"""A small reader of systemd unit files and of ``systemd-analyze syscall-filter`` output.

Stdlib only: :mod:`tests.systemd.sandbox` imports it under the system ``python3`` (which
has Debian's ``python3-seccomp``) as well as the tests under the project's venv.
"""

from __future__ import annotations

import subprocess
from pathlib import Path


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """``{section: [(key, value), ...]}`` in file order (keys may repeat, as systemd allows).

    Comments (``#``, ``;``) and blank lines are skipped; a trailing backslash continues a line.
    """
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line.startswith(("#", ";")):
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, sep, value = line.partition("=")
        if not sep or current is None:
            raise ValueError(f"{path}: cannot read line {raw!r}")
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: dict[str, list[tuple[str, str]]], key: str, section: str = "Service") -> list[str]:
    """Every value of ``key`` in ``section``, in order (an empty assignment resets, as in systemd)."""
    out: list[str] = []
    for k, v in unit.get(section, []):
        if k == key:
            if v == "":
                out.clear()
            else:
                out.append(v)
    return out


def value(unit: dict[str, list[tuple[str, str]]], key: str, section: str = "Service") -> str | None:
    """The effective (last) value of ``key``, or None."""
    found = values(unit, key, section)
    return found[-1] if found else None


def syscall_groups(systemd_analyze: str = "systemd-analyze") -> dict[str, list[str]]:
    """``{"@group": [members, ...]}`` from ``systemd-analyze syscall-filter`` (members may be
    groups themselves). Works without a running systemd."""
    out = subprocess.run([systemd_analyze, "syscall-filter", "--no-pager"], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif line.startswith("    ") and current is not None and not line.strip().startswith("#"):
            current.append(line.strip())
        elif not line.strip():
            current = None
    return groups


def expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    """System call names of ``names``, groups expanded recursively."""
    out: set[str] = set()
    stack = list(names)
    seen: set[str] = set()
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if name.startswith("@"):
            if name not in groups:
                raise KeyError(f"unknown system call group {name}")
            stack.extend(groups[name])
        else:
            out.add(name)
    return out
