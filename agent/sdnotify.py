"""The systemd notify protocol: ``READY=1``, ``WATCHDOG=1``, ``STOPPING=1``, ``STATUS=…``.

The unit is ``Type=notify`` with ``WatchdogSec=`` and ``NotifyAccess=main``: the main
process says when it is ready (store open, drivers started) and keeps the watchdog fed
from its main loop, at half of :func:`watchdog_interval_s` or more often. Outside systemd
(no ``$NOTIFY_SOCKET``) every call is a no-op, so the daemon calls these unconditionally.
One datagram on an ``AF_UNIX`` socket (sd_notify(3)); no library needed.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


def notify(*states: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``states`` (``"READY=1"``, ``"STATUS=…"``) to systemd. False when not under
    systemd or when the socket refuses: a lost notification must not stop the agent."""
    addr = (env if env is not None else os.environ).get("NOTIFY_SOCKET")
    if not addr or not states:
        return False
    if addr.startswith("@"):  # an abstract socket
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall("\n".join(states).encode())
    except OSError:
        return False
    return True


def watchdog_interval_s(env: Mapping[str, str] | None = None) -> float | None:
    """The unit's ``WatchdogSec=`` in seconds when it applies to this process, else None."""
    env = env if env is not None else os.environ
    usec, pid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 if value > 0 else None
