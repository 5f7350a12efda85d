"""The local alarm action: an allow-listed program gets the alarm as JSON on stdin.

A buzzer, a lamp, a modem sending an SMS: ``[rules.action] command`` names a program and
its arguments, run with one alarm record on stdin. The agent's job is to record and send,
so an action can never hold it up or bring it down: the program runs as a child process
in its own session, is killed (with everything it started) at ``timeout_s``, and any
failure — refused, not found, non-zero exit, timeout — is logged and swallowed.

The policy (issue 9 item 13: a pushed config could run any shell command as the service
user):

- **An allow-list that root owns.** The program (argv[0]) must be an absolute path listed,
  exactly, in ``/etc/coldgate/actions.allow`` (one path a line, ``#`` comments). The file
  must be owned by root and writable by nobody else, and so must each program it lists;
  otherwise nothing is allowed. No file means no action runs. A listed shell or
  interpreter (``sh``, ``python3`` …) is refused too: it would run anything again.
- **No shell.** The argv list is executed as given; a string command is refused by the
  config schema.
- **A minimal environment.** ``PATH``, ``LANG`` and the alarm's ``COLDGATE_*`` fields; not
  the agent's own environment (which may hold credentials). The working directory is
  ``/``; stdout is discarded, the tail of stderr is logged.
- **A timeout**, ``timeout_s`` (at most 600 s).

``config check`` (through :func:`agent.config.preflight`) refuses a config whose program
is not allowed, with the reason; :func:`run_action` checks again at run time, so a config
applied without a check still cannot run anything unlisted.

Signed configs: a signature proves who wrote a config, the allow-list bounds what any
config may run on this gateway. The allow-list stays a local decision of the gateway's
root, outside the config; a signed config can pick among the programs it lists and their
arguments, never add one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: The administrator's allow-list of action programs.
ALLOW_LIST = Path("/etc/coldgate/actions.allow")
#: Programs that would run anything they are given: never allowed, even if listed.
INTERPRETERS = frozenset({
    "sh", "bash", "dash", "zsh", "ksh", "csh", "tcsh", "fish", "busybox", "env", "sudo", "su", "doas",
    "python", "python3", "perl", "ruby", "node", "lua", "php", "tclsh", "awk", "gawk", "mawk", "xargs",
    "find", "nohup", "setsid", "nice", "timeout", "script", "expect",
})
#: The environment of an action, besides the alarm's fields.
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
_ENV_FIELDS = ("alarm_id", "rule", "sensor_id", "state", "severity", "gateway_id")

_tasks: set[asyncio.Task[None]] = set()  # strong references: a running task is not collected


@dataclass(frozen=True)
class ActionPolicy:
    """The programs an action may run, read from the allow-list file."""

    allowed: frozenset[str] = frozenset()
    source: str = str(ALLOW_LIST)
    #: why the file gave nothing (missing, unsafe), for the refusal message
    problem: str | None = None
    trusted_uid: int = 0

    @classmethod
    def load(cls, path: Path = ALLOW_LIST, *, trusted_uid: int = 0) -> ActionPolicy:
        """Read ``path``; an unsafe or unreadable file allows nothing (and says why)."""
        src = str(path)
        unsafe = _unsafe(path, trusted_uid)
        if unsafe is not None:
            return cls(frozenset(), src, unsafe, trusted_uid)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            return cls(frozenset(), src, f"{src} cannot be read: {reason}", trusted_uid)
        entries = {line.split("#", 1)[0].strip() for line in text.splitlines()}
        return cls(frozenset(e for e in entries if e), src, None, trusted_uid)

    def refusal(self, command: Sequence[str]) -> str | None:
        """Why ``command`` may not run, or None if it may."""
        if not command or not isinstance(command, (list, tuple)):
            return "the command must be a non-empty argv list (no shell)"
        program = command[0]
        if self.problem is not None:
            return f"{program} is not allowed: {self.problem}"
        if not program.startswith("/") or os.path.normpath(program) != program:
            return f"{program!r} is not a normalised absolute path"
        if program not in self.allowed:
            return f"{program} is not listed in {self.source} (an administrator adds it there, as root)"
        if os.path.basename(program) in INTERPRETERS or os.path.basename(program).startswith("python"):
            return f"{program} is a shell or an interpreter, which would run anything: never allowed"
        return _unsafe(Path(program), self.trusted_uid, executable=True)


def _unsafe(path: Path, trusted_uid: int, *, executable: bool = False) -> str | None:
    """Why ``path`` cannot be trusted: missing, not a regular file, not owned by root, or
    writable by group or others (a file the service user could change is no decision of
    root's). ``executable``: it must also be executable."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return f"{path} does not exist"
    except OSError as exc:
        return f"{path} cannot be read: {exc.strerror or exc}"
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file"
    if st.st_uid != trusted_uid:
        return f"{path} is not owned by root"
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path} is writable by group or others (mode {mode:04o}; run: chmod go-w {path})"
    if executable and not mode & stat.S_IXUSR:
        return f"{path} is not executable"
    return None


def action_env(alarm: Mapping[str, Any]) -> dict[str, str]:
    """The environment an action runs with: :data:`BASE_ENV` and the alarm's fields."""
    env = dict(BASE_ENV)
    for key in _ENV_FIELDS:
        value = alarm.get(key)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            env[f"COLDGATE_{key.upper()}"] = str(value)
    return env


async def run_action(command: Sequence[str], alarm: Mapping[str, Any], timeout_s: float,
                     *, policy: ActionPolicy | None = None) -> None:
    """Run ``command`` with ``alarm`` as JSON on stdin; kill it after ``timeout_s``. Never raises.

    ``policy`` defaults to the allow-list file, read now (an administrator's change takes
    effect at the next alarm).
    """
    what = " ".join(command) if isinstance(command, (list, tuple)) else repr(command)
    alarm_id = alarm.get("alarm_id")
    policy = policy if policy is not None else ActionPolicy.load()
    refused = policy.refusal(command)
    if refused is not None:
        log.warning("alarm action for %s refused: %s", alarm_id, refused)
        return
    try:
        data = json.dumps(alarm, default=str).encode()
        proc = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, start_new_session=True, env=action_env(alarm), cwd="/")
    except (OSError, ValueError, TypeError) as exc:
        log.warning("alarm action %r for %s could not start: %s", what, alarm_id, exc)
        return
    try:
        _, err = await asyncio.wait_for(proc.communicate(data), timeout_s)
    except TimeoutError:
        _kill(proc)
        await proc.wait()
        log.warning("alarm action %r for %s timed out after %.1f s and was killed", what, alarm_id, timeout_s)
        return
    except asyncio.CancelledError:
        _kill(proc)
        raise
    except Exception as exc:  # noqa: BLE001 - an action must never take the agent down
        _kill(proc)
        log.warning("alarm action %r for %s failed: %s", what, alarm_id, exc)
        return
    if proc.returncode != 0:
        detail = err.decode(errors="replace").strip()[-500:] if err else ""
        log.warning("alarm action %r for %s exited with %s%s", what, alarm_id, proc.returncode,
                    f": {detail}" if detail else "")
    else:
        log.debug("alarm action %r for %s done", what, alarm_id)


def _kill(proc: asyncio.subprocess.Process) -> None:
    """Kill the command's whole process group (a script leaves its children otherwise)."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
