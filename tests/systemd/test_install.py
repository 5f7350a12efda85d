"""The README's install and the unit agree (issue 9 item 2).

0.1.0's install made ``/etc/coldgate`` 0750 root:root (the service user could not read
its config), named a ``bluetooth`` group that may not exist, and left ``coldgate`` off
PATH. The commands of README "Running as a service" are replayed here against a model of
the file system (who owns what, which mode), and every question the unit asks of the
machine is answered from that model: can its user read the config, write the store,
run the program named by ``ExecStart=``?
"""

from __future__ import annotations

import re
import shlex
import stat
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.config import StoreConfig
from agent.rules.actions import ALLOW_LIST
from tests.systemd.unitfile import parse_unit, value, values

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
UNIT = parse_unit(ROOT / "systemd" / "coldgate.service")


@dataclass
class Node:
    kind: str  # dir | file | link
    mode: int = 0o755
    owner: str = "root"
    group: str = "root"
    target: str | None = None
    source: str | None = None


@dataclass
class Machine:
    """What the install commands leave behind (only what they touch)."""

    files: dict[str, Node] = field(default_factory=lambda: {
        d: Node("dir") for d in ("/", "/etc", "/opt", "/usr", "/usr/local", "/usr/local/bin", "/var", "/var/lib",
                                 "/etc/systemd", "/etc/systemd/system", "/etc/dbus-1", "/etc/dbus-1/system.d")})
    users: dict[str, set[str]] = field(default_factory=lambda: {"root": {"root"}})
    groups: set[str] = field(default_factory=lambda: {"root", "dialout"})  # dialout: Debian's base-passwd

    def run(self, argv: list[str]) -> None:
        while argv and argv[0] == "sudo":
            argv = argv[1:]
        if not argv:
            return
        cmd, args = argv[0], argv[1:]
        if cmd == "useradd":
            name = args[-1]
            assert "--system" in args and "--user-group" in args, "a system user with its own group"
            self.users[name] = {name}
            self.groups.add(name)
        elif cmd in ("python3", "/usr/bin/python3") and args[:2] == ["-m", "venv"]:
            prefix = args[2]
            self._mkdirs(f"{prefix}/bin")
        elif cmd.endswith("/bin/pip") and args[:1] == ["install"]:
            self.files[str(Path(cmd).parent / "coldgate")] = Node("file", 0o755)
        elif cmd == "ln":
            assert args[0] in ("-s", "-sf")
            self.files[args[2]] = Node("link", target=args[1])
        elif cmd == "install":
            self._install(args)

    def _mkdirs(self, path: str) -> None:
        for p in [*reversed(Path(path).parents), Path(path)]:
            self.files.setdefault(str(p), Node("dir"))

    def _install(self, args: list[str]) -> None:
        opts = {"-m": "0755", "-o": "root", "-g": "root"}
        directory = parents = False
        rest: list[str] = []
        it = iter(args)
        for a in it:
            if a in opts:
                opts[a] = next(it)
            elif a == "-d":
                directory = True
            elif a == "-D":
                parents = True
            else:
                rest.append(a)
        node = dict(mode=int(opts["-m"], 8), owner=opts["-o"], group=opts["-g"])
        if directory:
            for d in rest:
                self._mkdirs(str(Path(d).parent))
                self.files[d] = Node("dir", **node)
            return
        *sources, dest = rest
        if parents:
            self._mkdirs(str(Path(dest).parent))
        assert str(Path(dest).parent) in self.files, f"install into a folder that does not exist: {dest}"
        for src in sources:
            assert src == "/dev/stdin" or (ROOT / src).exists(), f"the README installs a missing file: {src}"
            self.files[dest] = Node("file", **node, source=src)

    def may(self, user: str, path: str, want: int) -> bool:
        """Whether ``user`` (with the unit's groups) may do ``want`` (``os.R_OK``-style bits) to ``path``."""
        groups = self.users[user] | (set(values(UNIT, "SupplementaryGroups")) if user == value(UNIT, "User") else set())
        p = Path(path)
        for d in reversed(p.parents):
            if not self._allows(self.files[str(d)], user, groups, 1):
                return False
        node = self.files.get(path)
        if node is None:
            return False
        if node.kind == "link":
            return self.may(user, node.target or "", want)
        return self._allows(node, user, groups, want)

    @staticmethod
    def _allows(node: Node, user: str, groups: set[str], want: int) -> bool:
        if user == "root":
            return True
        if node.owner == user:
            bits = (node.mode >> 6) & 7
        elif node.group in groups:
            bits = (node.mode >> 3) & 7
        else:
            bits = node.mode & 7
        return bits & want == want


def install_commands() -> list[list[str]]:
    section = README.split("## Running as a service", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None, "the README's install is a ```sh block"
    commands = []
    for line in block.group(1).splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        line = line.split("<<<", 1)[0]
        commands.append(shlex.split(line))
    return commands


@pytest.fixture(scope="module")
def machine() -> Machine:
    m = Machine()
    for argv in install_commands():
        m.run(argv)
    return m


R, W, X = 4, 2, 1
USER = value(UNIT, "User") or ""
CONFIG = (value(UNIT, "ExecStart") or "").split("--config", 1)[1].strip()


def test_the_unit_user_and_its_groups_exist_after_the_install(machine):
    assert USER in machine.users and value(UNIT, "Group") in machine.groups
    for group in values(UNIT, "SupplementaryGroups"):
        assert group in machine.groups, f"SupplementaryGroups={group}: a missing group fails the unit"


def test_the_service_user_reads_its_config_and_secrets_but_cannot_change_them(machine):
    assert machine.may(USER, CONFIG, R)
    assert not machine.may(USER, CONFIG, W) and not machine.may(USER, str(Path(CONFIG).parent), W)
    token = machine.files["/etc/coldgate/token"]
    assert machine.may(USER, "/etc/coldgate/token", R)
    assert token.mode & (stat.S_IRWXG | stat.S_IRWXO) == 0  # what the agent requires (check_secret_file)
    assert 'token_file = "/etc/coldgate/token"' in (ROOT / "config" / "gateway.toml").read_text()
    assert machine.files[CONFIG].source == "config/gateway.toml"


def test_the_program_the_unit_starts_exists_and_is_on_path(machine):
    program = (value(UNIT, "ExecStart") or "").split()[0]
    assert machine.files[program].kind == "file" and machine.may(USER, program, X)
    link = machine.files["/usr/local/bin/coldgate"]
    assert link.kind == "link" and link.target == program


def test_the_store_folder_is_the_units_state_directory_and_the_service_user_writes_it(machine):
    state = f"/var/lib/{value(UNIT, 'StateDirectory')}"
    node = machine.files[state]
    assert node.owner == USER and f"{node.mode:04o}" == value(UNIT, "StateDirectoryMode")
    assert machine.may(USER, state, W | X)
    assert str(StoreConfig().path.parent) == state  # the default store path lies in it


def test_the_documentation_the_unit_names_is_installed(machine):
    doc = value(UNIT, "Documentation", "Unit") or ""
    assert doc.startswith("file:")
    assert machine.files[doc.removeprefix("file:")].source == "README.md"


def test_the_dbus_policy_lets_the_unit_user_call_bluez(machine):
    node = machine.files["/etc/dbus-1/system.d/coldgate.conf"]
    assert node.owner == "root" and not node.mode & 0o022
    policy = (ROOT / node.source).read_text() if node.source else ""
    assert f'<policy user="{USER}">' in policy and '<allow send_destination="org.bluez"/>' in policy


def test_the_action_allow_list_is_roots_and_readable_by_the_service(machine):
    node = machine.files[str(ALLOW_LIST)]
    assert node.owner == "root" and not node.mode & 0o022
    assert machine.may(USER, str(ALLOW_LIST), R) and not machine.may(USER, str(ALLOW_LIST), W)


def test_the_shipped_unit_is_what_gets_installed(machine):
    assert machine.files["/etc/systemd/system/coldgate.service"].source == "systemd/coldgate.service"


def test_the_old_root_only_config_folder_would_be_caught(machine):
    old = Machine(files=dict(machine.files), users=machine.users, groups=machine.groups)
    old.files["/etc/coldgate"] = Node("dir", 0o750, "root", "root")
    assert not old.may(USER, CONFIG, R)
