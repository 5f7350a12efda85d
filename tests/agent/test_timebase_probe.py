"""The clock-sync probe (issue 9 items 1 and 14): it survives a filtered adjtimex, falls
back to systemd-timesyncd's flag saying so once, and spawns no process."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import subprocess

import pytest

from agent import timebase
from agent.timebase import Clock, adjtimex_synced, probe_synced, timesyncd_synced


class _RefusingLibc:
    """A C library whose adjtimex fails like a seccomp filter answering ``err``."""

    def __init__(self, err: int) -> None:
        self.err = err

    def adjtimex(self, _tx: object) -> int:
        ctypes.set_errno(self.err)
        return -1


@pytest.fixture(autouse=True)
def fresh_notes(monkeypatch):
    monkeypatch.setattr(timebase, "_noted", set())


@pytest.fixture
def flag(tmp_path, monkeypatch):
    """A timesyncd runtime directory of our own."""
    d = tmp_path / "timesync"
    d.mkdir()
    monkeypatch.setattr(timebase, "TIMESYNCD_FLAG", d / "synchronized")
    return d / "synchronized"


@pytest.mark.parametrize("err", [errno.EPERM, errno.ENOSYS])
def test_auto_falls_back_to_the_timesyncd_flag_when_adjtimex_is_refused(monkeypatch, flag, caplog, err):
    monkeypatch.setattr(timebase, "_libc", lambda: _RefusingLibc(err))
    with caplog.at_level(logging.INFO, logger="agent.timebase"):
        assert adjtimex_synced() is None
        assert probe_synced("auto") is False
        flag.touch()
        assert probe_synced("auto") is True and probe_synced("adjtimex") is True
        assert Clock().synced() is True  # the default source is auto
    assert caplog.text.count("adjtimex refused") == 1 and caplog.text.count("using the systemd-timesyncd flag") == 1


def test_no_source_at_all_reads_unsynced_and_warns_once(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(timebase, "_libc", lambda: _RefusingLibc(errno.EPERM))
    monkeypatch.setattr(timebase, "TIMESYNCD_FLAG", tmp_path / "absent" / "synchronized")
    with caplog.at_level(logging.WARNING, logger="agent.timebase"):
        assert [probe_synced("auto") for _ in range(5)] == [False] * 5
    assert caplog.text.count("no source answers") == 1


def test_timesyncd_flag_answers_none_when_timesyncd_does_not_run(tmp_path):
    assert timesyncd_synced(tmp_path / "absent" / "synchronized") is None
    assert timesyncd_synced(tmp_path / "synchronized") is False
    (tmp_path / "synchronized").touch()
    assert timesyncd_synced(tmp_path / "synchronized") is True


def test_fixed_sources_ask_nothing(monkeypatch):
    monkeypatch.setattr(timebase, "_libc", lambda: pytest.fail("asked the kernel"))
    assert probe_synced("assume_synced") is True and probe_synced("assume_unsynced") is False


def test_the_probe_spawns_no_process(monkeypatch):
    """0.1.0 called ctypes.util.find_library at every probe, which runs /sbin/ldconfig -p."""
    def no_child(*_a: object, **_k: object) -> None:
        raise AssertionError("the probe started a process")

    monkeypatch.setattr(subprocess, "Popen", no_child)
    monkeypatch.setattr(ctypes.util, "find_library", no_child)
    for _ in range(3):
        assert adjtimex_synced() in (True, False)  # this machine lets us ask
        probe_synced("auto")
