"""The notify protocol the unit's Type=notify and WatchdogSec= need, over a real socket."""

from __future__ import annotations

import os
import socket

from agent.sdnotify import notify, watchdog_interval_s


def test_states_reach_the_notify_socket_as_one_datagram(tmp_path):
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        assert notify("READY=1", "STATUS=running", env={"NOTIFY_SOCKET": str(path)})
        assert server.recv(4096) == b"READY=1\nSTATUS=running"


def test_outside_systemd_or_with_a_dead_socket_it_is_a_quiet_no_op(tmp_path):
    assert notify("READY=1", env={}) is False
    assert notify("WATCHDOG=1", env={"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}) is False


def test_the_watchdog_interval_applies_only_to_the_process_it_names():
    mine = str(os.getpid())
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": mine}) == 30.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval_s({}) is None and watchdog_interval_s({"WATCHDOG_USEC": "x"}) is None
