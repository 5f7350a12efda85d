"""The local alarm action: a configured command gets the alarm as JSON on stdin.

A buzzer, a lamp, a modem sending an SMS: whatever ``[rules.action] command`` names runs
with one alarm record on stdin. The agent's job is to record and send, so an action can
never hold it up or bring it down: the command runs as a child process in its own
session, is killed (with everything it started) at ``timeout_s``, and any failure — not
found, non-zero exit, timeout — is logged and swallowed. :func:`run_action` never raises;
the daemon runs it as a task of its own so that nothing awaits it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

async def run_action(command: list[str] | str, alarm: Mapping[str, Any], timeout_s: float) -> None:
    """Run ``command`` with ``alarm`` as JSON on stdin; kill it after ``timeout_s``. Never raises."""
    what = command if isinstance(command, str) else " ".join(command)
    alarm_id = alarm.get("alarm_id")
    try:
        data = json.dumps(alarm, default=str).encode()
        if isinstance(command, str):
            proc = await asyncio.create_subprocess_shell(
                command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE, start_new_session=True)
        else:
            proc = await asyncio.create_subprocess_exec(
                *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE, start_new_session=True)
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
    """Kill the command's whole process group (``sh -c`` leaves its children otherwise)."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
