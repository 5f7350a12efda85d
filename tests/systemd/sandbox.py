"""Run a command under the seccomp filters a systemd unit would give it (no systemd needed).

Usage (under the *system* python3, which has Debian's ``python3-seccomp``)::

    /usr/bin/python3 tests/systemd/sandbox.py --unit systemd/coldgate.service [--user nobody] -- CMD ...

The suite does not boot systemd (this machine's PID 1 is not systemd; a container boot
needs root, mounts and minutes: ``tests/systemd/boot_drill.sh`` does that by hand), so
the tests emulate the unit at the nearest boundary: the kernel's seccomp filters. systemd
builds one filter per feature and the kernel applies the most restrictive answer of all,
and this does the same, from the unit file itself:

- ``SystemCallFilter=`` (allow-list with ``@default`` implied, ``~`` lines removing,
  groups expanded from ``systemd-analyze syscall-filter``), refused calls answered by
  ``SystemCallErrorNumber=`` or, without it, by killing the process (SIGSYS: exit 159);
- ``ProtectClock=yes``: ``@clock`` fails with EPERM;
- ``MemoryDenyWriteExecute=yes``: writable+executable mappings fail with EPERM;
- ``RestrictAddressFamilies=``: other socket families fail with EAFNOSUPPORT;
- ``NoNewPrivileges`` (seccomp sets it), and ``--user`` drops to an unprivileged user
  first, as ``User=`` does. Mount namespaces, ``ProtectSystem=``, capabilities and device
  policy are not emulated.

Then it ``execv``s the command, which inherits every filter.
"""

from __future__ import annotations

import argparse
import errno
import mmap
import os
import pwd
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import seccomp  # noqa: E402 - Debian's python3-seccomp, for the system python3
from unitfile import expand, parse_unit, syscall_groups, value, values  # noqa: E402

SHM_EXEC = 0o100000


def syscall_filter(unit: dict[str, list[tuple[str, str]]], groups: dict[str, list[str]]) -> seccomp.SyscallFilter | None:
    """The ``SystemCallFilter=`` filter, or None if the unit sets none."""
    lines = values(unit, "SystemCallFilter")
    if not lines:
        return None
    allow_list = not lines[0].startswith("~")
    chosen: set[str] = expand(["@default"], groups) if allow_list else set()
    for line in lines:
        deny = line.startswith("~")
        names = [n.split(":", 1)[0] for n in line.lstrip("~").split()]
        calls = expand(names, groups)
        if deny == (not allow_list):  # same kind as the first line: add
            chosen |= calls
        else:
            chosen -= calls
    err = value(unit, "SystemCallErrorNumber")
    refuse = seccomp.KILL_PROCESS if err in (None, "kill") else seccomp.ERRNO(getattr(errno, err))
    f = seccomp.SyscallFilter(defaction=seccomp.ALLOW if not allow_list else refuse)
    for name in sorted(chosen):
        if seccomp.resolve_syscall(seccomp.Arch.NATIVE, name) < 0:
            continue  # not a system call of this architecture
        f.add_rule(seccomp.ALLOW if allow_list else refuse, name)
    return f


def protect_clock(groups: dict[str, list[str]]) -> seccomp.SyscallFilter:
    f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for name in sorted(expand(["@clock"], groups)):
        if seccomp.resolve_syscall(seccomp.Arch.NATIVE, name) >= 0:
            f.add_rule(seccomp.ERRNO(errno.EPERM), name)
    return f


def memory_deny_write_execute() -> seccomp.SyscallFilter:
    wx, x = mmap.PROT_WRITE | mmap.PROT_EXEC, mmap.PROT_EXEC
    f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    eperm = seccomp.ERRNO(errno.EPERM)
    f.add_rule(eperm, "mmap", seccomp.Arg(2, seccomp.MASKED_EQ, wx, wx))
    f.add_rule(eperm, "mprotect", seccomp.Arg(2, seccomp.MASKED_EQ, x, x))
    f.add_rule(eperm, "pkey_mprotect", seccomp.Arg(2, seccomp.MASKED_EQ, x, x))
    f.add_rule(eperm, "shmat", seccomp.Arg(2, seccomp.MASKED_EQ, SHM_EXEC, SHM_EXEC))
    return f


def restrict_address_families(spec: str) -> seccomp.SyscallFilter:
    allowed = {int(getattr(socket, name)) for name in spec.split()}
    f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    refuse = seccomp.ERRNO(errno.EAFNOSUPPORT)
    for family in range(0, 64):
        if family not in allowed:
            f.add_rule(refuse, "socket", seccomp.Arg(0, seccomp.EQ, family))
    f.add_rule(refuse, "socket", seccomp.Arg(0, seccomp.GE, 64))
    return f


def drop_to(user: str) -> None:
    pw = pwd.getpwnam(user)
    os.setgroups([])
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)
    os.environ["HOME"] = "/nonexistent"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--unit", required=True, type=Path)
    p.add_argument("--user", help="drop to this user first (when run as root), like User=")
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    unit = parse_unit(args.unit)
    groups = syscall_groups()
    filters: list[seccomp.SyscallFilter | None] = []
    if value(unit, "ProtectClock") == "yes":
        filters.append(protect_clock(groups))
    if value(unit, "MemoryDenyWriteExecute") == "yes":
        filters.append(memory_deny_write_execute())
    families = value(unit, "RestrictAddressFamilies")
    if families and not families.startswith("~"):
        filters.append(restrict_address_families(families))
    # last, as systemd does: the allow-list would refuse loading the others (seccomp(2))
    filters.append(syscall_filter(unit, groups))
    if args.user and os.geteuid() == 0:
        drop_to(args.user)
    for f in filters:
        if f is not None:
            f.load()
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
