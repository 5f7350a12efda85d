"""Secrets kept in files (a bearer token, an MQTT password): read only when no one else can.

One check for every secret file the agent reads, so the rule is the same everywhere and
its message says how to fix it.
"""

from __future__ import annotations

import stat
from pathlib import Path

from agent.exc import ConfigError, ConfigProblem


def check_secret_file(path: Path, what: str) -> str:
    """Read a secret from ``path``; refuse it if group or others may read it."""
    try:
        st = path.stat()
    except OSError as exc:
        raise ConfigError(str(path), [ConfigProblem(what, f"cannot read {path}: {exc.strerror or exc}")]) from exc
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            str(path),
            [ConfigProblem(what, f"{path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o})",
                           f"run: chmod 600 {path}")],
        )
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(str(path), [ConfigProblem(what, f"cannot read {path}: {reason}")]) from exc
