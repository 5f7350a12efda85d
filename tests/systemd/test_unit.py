"""The shipped unit starts the agent (issue 9 items 1-3).

0.1.0's unit filtered ``adjtimex`` (``~@privileged``) with no ``SystemCallErrorNumber=``,
so the agent's clock-sync probe killed it with SIGSYS (exit 159) before its first log
line, and ``coldgate status`` too. The suite does not boot systemd (``boot_drill.sh``
does, by hand, in systemd-nspawn: see its log beside it), so the unit's
seccomp filters are applied for real by :mod:`tests.systemd.sandbox` (libseccomp, read
from the unit file, groups from ``systemd-analyze syscall-filter``), as an unprivileged
user, and the agent runs under them. ``systemd-analyze verify`` and ``security
--offline`` run on the unit itself.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.systemd.unitfile import parse_unit, value, values

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "coldgate.service"
SANDBOX = Path(__file__).resolve().parent / "sandbox.py"
SYSTEM_PYTHON = "/usr/bin/python3"
SITE = next(p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir())


def _has_seccomp() -> bool:
    """The system python3 has libseccomp's binding and can load this venv's packages."""
    if not Path(SYSTEM_PYTHON).exists():
        return False
    probe = "import seccomp, sys; print('%d.%d' % sys.version_info[:2])"
    done = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True)
    return done.returncode == 0 and done.stdout.strip() == f"{sys.version_info[0]}.{sys.version_info[1]}"


needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze missing (.ci/run installs systemd)")
needs_seccomp = pytest.mark.skipif(not (_has_seccomp() and shutil.which("systemd-analyze")),
                                   reason="python3-seccomp or systemd missing (.ci/run installs them)")


@pytest.fixture
def world() -> Iterator[Path]:
    """A folder the unprivileged sandbox user may write (pytest's tmp_path is root-only)."""
    d = Path(tempfile.mkdtemp(prefix="coldgate-unit-"))
    d.chmod(0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def sandboxed(unit: Path, *args: str) -> list[str]:
    """The command line running ``python -m agent ARGS`` under ``unit``'s filters."""
    return [SYSTEM_PYTHON, str(SANDBOX), "--unit", str(unit), "--user", "nobody", "--",
            SYSTEM_PYTHON, "-m", "agent", *args]


def sandbox_env() -> dict[str, str]:
    # the system python3 runs the agent from this checkout with the venv's packages
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{SITE}", "PYTHONDONTWRITEBYTECODE": "1"}


def write_config(world: Path, extra: str = "") -> Path:
    f = world / "coldgate.toml"  # no [time]: the default sync source, as shipped
    f.write_text(f'gateway_id = "gw-unit"\n[store]\npath = "{world}/store.db"\ncommit_interval_s = 0.1\n'
                 f'[control]\nsocket = "{world}/control.sock"\n'  # RuntimeDirectory= stands in the real unit
                 '[recording]\nrecord_interval_s = 0\n'
                 '[[drivers]]\nname = "sim"\ntype = "sim"\nspeed = 0\nlimit = 2000\nchunk = 50\n'
                 'sensors = [{ id = "p1" }]\n' + extra)
    f.chmod(0o644)
    return f


def unit_without(world: Path, key: str) -> Path:
    """A copy of the shipped unit with ``key`` removed (the 0.1.0 mistake, for a control)."""
    text = "".join(line for line in UNIT.read_text().splitlines(keepends=True) if not line.startswith(f"{key}="))
    copy = world / "coldgate.service"
    copy.write_text(text)
    return copy


@needs_seccomp
def test_status_runs_under_the_units_seccomp_filters(world):
    cfg = write_config(world)
    done = subprocess.run(sandboxed(UNIT, "status", "--config", str(cfg)), env=sandbox_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr  # it ran to the end: 3 says "the agent is not running"
    assert "gw-unit" in done.stdout and "clock:" in done.stdout


@needs_seccomp
def test_the_agent_starts_records_and_stops_cleanly_under_the_units_seccomp_filters(world):
    cfg = write_config(world)
    proc = subprocess.Popen(sandboxed(UNIT, "run", "--config", str(cfg)), env=sandbox_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        head = 0
        while time.monotonic() < deadline and proc.poll() is None:
            head = _head_seq(world / "store.db")
            if head >= 10:
                break
            time.sleep(0.2)
        assert proc.poll() is None, f"agent died: {proc.returncode}\n{proc.stderr.read() if proc.stderr else ''}"
        assert head >= 10
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "adjtimex refused: EPERM" in err  # the probe met the filter, said so once, and went on
    assert err.count("adjtimex refused") == 1


def _head_seq(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            return int(conn.execute("SELECT coalesce(max(seq), 0) FROM records").fetchone()[0])
    except sqlite3.Error:
        return 0


@needs_seccomp
def test_without_a_syscall_error_number_the_same_filter_kills_the_agent_with_sigsys(world):
    """The control: 0.1.0's unit had no SystemCallErrorNumber=; the emulation reproduces
    its crash (exit 159 in a shell), so the tests above would catch it coming back."""
    cfg = write_config(world)
    done = subprocess.run(sandboxed(unit_without(world, "SystemCallErrorNumber"), "status", "--config", str(cfg)),
                          env=sandbox_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGSYS


@needs_seccomp
@pytest.mark.parametrize("errno_name", ["EPERM", "ENOSYS"])
def test_the_clock_probe_survives_a_filter_refusing_adjtimex(world, errno_name):
    unit = world / "probe.service"
    unit.write_text("[Service]\nSystemCallFilter=~adjtimex clock_adjtime\n"
                    f"SystemCallErrorNumber={errno_name}\n")
    code = ("import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stdout)\n"
            "from agent.timebase import probe_synced, adjtimex_synced\n"
            "print('answer', adjtimex_synced(), probe_synced('auto'), probe_synced('adjtimex'))")
    cmd = [SYSTEM_PYTHON, str(SANDBOX), "--unit", str(unit), "--", SYSTEM_PYTHON, "-c", code]
    done = subprocess.run(cmd, env=sandbox_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "answer None" in done.stdout
    assert f"adjtimex refused: {errno_name}" in done.stdout and "using the systemd-timesyncd flag" in done.stdout


# -- systemd-analyze ---------------------------------------------------------------------


def _verifiable_copy(world: Path, unit: Path) -> Path:
    """The unit with its ExecStart= binary replaced by a stub (verify wants it executable)."""
    stub = world / "coldgate"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    copy = world / "verify" / "coldgate.service"
    copy.parent.mkdir()
    copy.write_text(unit.read_text().replace("/opt/coldgate/bin/coldgate", str(stub)))
    return copy


@needs_analyze
def test_systemd_analyze_verify_passes(world):
    done = subprocess.run(["systemd-analyze", "verify", str(_verifiable_copy(world, UNIT))],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


@needs_analyze
def test_systemd_analyze_verify_would_catch_a_man_page_that_does_not_exist(world):
    bad = world / "bad.service"
    bad.write_text(UNIT.read_text().replace(value(parse_unit(UNIT), "Documentation", "Unit") or "",
                                            "man:coldgate(1)"))
    done = subprocess.run(["systemd-analyze", "verify", str(_verifiable_copy(world, bad))],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "man coldgate(1)" in done.stderr


def exposure(unit: Path) -> float:
    done = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
                          capture_output=True, text=True, timeout=120)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert m is not None, done.stdout + done.stderr
    return float(m.group(1))


@needs_analyze
def test_exposure_is_at_most_1_5(world):
    figure = exposure(UNIT)
    print(f"systemd-analyze security --offline=true: exposure {figure}")
    assert figure <= 1.5
    assert exposure(unit_without(world, "ProtectClock")) > figure  # the figure is read, not assumed


# -- what the unit must keep -----------------------------------------------------------


def test_the_unit_keeps_what_the_runtime_needs():
    unit = parse_unit(UNIT)
    expected = {"Type": "notify", "NotifyAccess": "main", "RuntimeDirectory": "coldgate",
                "RuntimeDirectoryMode": "0750", "StateDirectory": "coldgate", "StateDirectoryMode": "0750",
                "ExecReload": "/bin/kill -HUP $MAINPID", "User": "coldgate", "Group": "coldgate",
                "SystemCallErrorNumber": "EPERM", "RestartPreventExitStatus": "78", "UMask": "0077",
                "ProtectClock": "yes", "PrivateMounts": "yes"}
    assert {k: value(unit, k) for k in expected} == expected
    assert value(unit, "WatchdogSec")
    assert value(unit, "ExecStart") == "/opt/coldgate/bin/coldgate run --config /etc/coldgate/coldgate.toml"
    assert values(unit, "ExecStartPre") == []  # its exit status would not stop a restart loop
    assert values(unit, "SupplementaryGroups") == ["dialout"]  # bluetooth may not exist
    families = (value(unit, "RestrictAddressFamilies") or "").split()
    assert set(families) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert not (value(unit, "Documentation", "Unit") or "").startswith("man:")


@needs_seccomp
def test_the_readmes_drop_in_for_chrony_lets_the_agent_read_the_kernel_flag(world):
    """README "Running as a service": with chrony or ntpd, a drop-in re-allows adjtimex."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"With \*\*chrony or ntpd\*\*.*?```ini\n(.*?)```", readme, re.S)
    assert block is not None
    drop_in = [line for line in block.group(1).splitlines() if "=" in line]
    unit = world / "with-drop-in.service"
    unit.write_text(UNIT.read_text().replace("[Install]", "\n".join(drop_in) + "\n[Install]"))
    code = "from agent.timebase import adjtimex_synced; print('answer', adjtimex_synced())"
    cmd = [SYSTEM_PYTHON, str(SANDBOX), "--unit", str(unit), "--user", "nobody", "--", SYSTEM_PYTHON, "-c", code]
    done = subprocess.run(cmd, env=sandbox_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() in ("answer True", "answer False")  # the kernel answered
