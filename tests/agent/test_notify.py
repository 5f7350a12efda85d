"""The notify protocol the unit's Type=notify and WatchdogSec= need, over a real socket."""

from __future__ import annotations

import os
import socket

from agent.notify import Notifier


def test_states_reach_the_notify_socket_as_one_datagram(tmp_path):
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        n = Notifier({"NOTIFY_SOCKET": str(path)})
        assert n.ready("running  with\nnewlines")
        assert server.recv(4096) == b"READY=1\nSTATUS=running with newlines"
        n.close()


def _quiet(n: Notifier, call: str) -> bool:
    try:
        return bool(getattr(n, call)() if call != "ready" else n.ready("x"))
    finally:
        n.close()


def test_outside_systemd_or_with_a_dead_socket_it_is_a_quiet_no_op(tmp_path):
    assert _quiet(Notifier({}), "ready") is False
    assert _quiet(Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}), "watchdog") is False


def test_an_abstract_notify_socket_is_reached_by_its_at_name():
    name = f"coldgate-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        assert _quiet(Notifier({"NOTIFY_SOCKET": "@" + name}), "watchdog")
        assert server.recv(64) == b"WATCHDOG=1"


def test_the_watchdog_interval_applies_only_to_the_process_it_names():
    mine = str(os.getpid())
    assert Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": mine}).watchdog_s == 30.0
    assert Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}).watchdog_s is None
    assert Notifier({}).watchdog_s is None and Notifier({"WATCHDOG_USEC": "x"}).watchdog_s is None
