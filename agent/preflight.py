"""Preflight: what a valid config asks of this machine, checked before the agent starts.

:func:`agent.config.load` validates a file on its own; a config can still name a token
file that is missing or readable by others, a client certificate that is not there (0.1.0
logged a traceback at every retry), a store path that is a directory, under a regular
file or mode 000 (a crash loop with a misleading "File exists"), or an alarm program the
gateway's administrator never allowed. :func:`preflight` finds each of these with a
message that says what to do; ``coldgate config check`` prints them, and ``coldgate
run`` refuses to start on any (exit 78, which the unit does not restart).

It only looks: nothing is created, changed or opened for writing. The checks run as the
user who calls them, so run ``config check`` as the service user (``sudo -u coldgate``)
to see what the service will see.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from agent.exc import ConfigError, ConfigProblem

if TYPE_CHECKING:
    from agent.config import Config


def preflight(config: Config, *, allow_list: Path | None = None, trusted_uid: int = 0) -> list[ConfigProblem]:
    """Every problem the agent would meet at run time with ``config`` on this machine.

    ``allow_list`` and ``trusted_uid`` are for tests; the agent uses the defaults
    (``/etc/coldgate/actions.allow``, owned by root).
    """
    problems: list[ConfigProblem] = []
    problems += _store(config.store.path)
    up = config.uplink
    if up.token_file is not None:
        problems += _token_file(up.token_file)
    if up.ca_bundle is not None:
        problems += _pem(up.ca_bundle, "uplink.ca_bundle", "CERTIFICATE")
    if up.client_cert is not None:
        problems += _pem(up.client_cert, "uplink.client_cert", "CERTIFICATE")
    if up.client_key is not None:
        problems += _client_key(up.client_key)
    if not problems and up.client_cert is not None and up.client_key is not None:
        problems += _key_matches(up.client_cert, up.client_key)
    command = config.rules.action.command
    if command is not None:
        from agent.rules.actions import ALLOW_LIST, ActionPolicy

        policy = ActionPolicy.load(allow_list or ALLOW_LIST, trusted_uid=trusted_uid)
        refused = policy.refusal(command)
        if refused is not None:
            problems.append(ConfigProblem("rules.action.command", refused,
                                          "see README, Alarm actions: the allow-list"))
    return problems


# -- the store -------------------------------------------------------------------------


def _store(path: Path) -> list[ConfigProblem]:
    where = "store.path"
    st = _stat(path)
    if isinstance(st, OSError) and not isinstance(st, _ABSENT):
        return [ConfigProblem(where, f"{path} cannot be examined: {st.strerror or st}", _own_hint(path.parent))]
    if isinstance(st, os.stat_result) and stat.S_ISDIR(st.st_mode):
        return [ConfigProblem(where, f"{path} is a directory", "give the path of a file in it, e.g. "
                                                              f"{path / 'store.db'}")]
    ancestor = path.parent
    while isinstance(_stat(ancestor), _ABSENT) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    found = _stat(ancestor)
    if isinstance(found, OSError):
        return [ConfigProblem(where, f"{ancestor} cannot be examined: {found.strerror or found}")]
    if not stat.S_ISDIR(found.st_mode):
        return [ConfigProblem(where, f"{path} is under {ancestor}, which is a file, not a directory")]
    if ancestor != path.parent and not os.access(ancestor, os.W_OK | os.X_OK):
        return [ConfigProblem(where, f"{path.parent} does not exist and cannot be created: "
                                     f"{ancestor} is not writable by this user, or read-only")]
    if ancestor == path.parent and _read_only_fs(path.parent):
        # an SD card the kernel remounted read-only after errors: the agent still runs,
        # holds what it reads in memory and commits it when the store takes writes again
        return [ConfigProblem(where, f"{path.parent} is on a read-only filesystem: readings are held in memory "
                                     "until it is writable again", "check the SD card (dmesg); remount it rw",
                              transient=True)]
    if ancestor == path.parent and not os.access(path.parent, os.W_OK | os.X_OK):
        return [ConfigProblem(where, f"{path.parent} is not writable by this user, or read-only (SQLite creates its "
                                     "journal files beside the store)", _own_hint(path.parent))]
    problems: list[ConfigProblem] = []
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}.stream")):
        try:
            st = p.stat()
        except FileNotFoundError:
            continue
        except OSError as exc:
            problems.append(ConfigProblem(where, f"{p} cannot be examined: {exc.strerror or exc}"))
            continue
        if not stat.S_ISREG(st.st_mode):
            problems.append(ConfigProblem(where, f"{p} is not a regular file"))
            continue
        mode = stat.S_IMODE(st.st_mode)
        if mode & (stat.S_IRUSR | stat.S_IWUSR) != stat.S_IRUSR | stat.S_IWUSR or not os.access(
                p, os.R_OK | os.W_OK):
            problems.append(ConfigProblem(where, f"{p} cannot be read and written by this user "
                                                 f"(mode {mode:04o})", f"run: chmod 600 {p}; {_own_hint(p)}"))
    return problems


def _read_only_fs(p: Path) -> bool:
    try:
        return bool(os.statvfs(p).f_flag & os.ST_RDONLY)
    except OSError:
        return False


#: stat errors that mean "nothing there" (ENOTDIR: a path under a regular file)
_ABSENT = (FileNotFoundError, NotADirectoryError)


def _stat(p: Path) -> os.stat_result | OSError:
    """``os.stat`` that returns the error instead of raising it (EACCES included)."""
    try:
        return os.stat(p)
    except OSError as exc:
        return exc


def _own_hint(p: Path) -> str:
    return f"the service user must own it: chown coldgate:coldgate {p}"


# -- uplink files ----------------------------------------------------------------------


def _readable(path: Path, where: str) -> tuple[bytes | None, list[ConfigProblem]]:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None, [ConfigProblem(where, f"{path} does not exist")]
    except OSError as exc:
        return None, [ConfigProblem(where, f"{path} cannot be examined: {exc.strerror or exc}")]
    if not stat.S_ISREG(st.st_mode):
        return None, [ConfigProblem(where, f"{path} is not a regular file")]
    try:
        with path.open("rb") as f:
            return f.read(1024 * 1024), []
    except OSError as exc:
        return None, [ConfigProblem(where, f"{path} cannot be read by this user: {exc.strerror or exc}",
                                    "the service user reads it: chgrp coldgate and chmod 640, or "
                                    "chown coldgate and chmod 600")]


def _token_file(path: Path) -> list[ConfigProblem]:
    from agent.secretfile import check_secret_file

    if isinstance(_stat(path), FileNotFoundError):
        return [ConfigProblem("uplink.token_file", f"{path} does not exist")]
    try:
        token = check_secret_file(path, "uplink.token_file")
    except ConfigError as exc:
        return list(exc.problems)
    if not token:
        return [ConfigProblem("uplink.token_file", f"{path} is empty")]
    return []


def _pem(path: Path, where: str, kind: str) -> list[ConfigProblem]:
    data, problems = _readable(path, where)
    if data is None:
        return problems
    if f"-----BEGIN {kind}-----".encode() not in data:
        return [ConfigProblem(where, f"{path} holds no PEM {kind.lower()} (-----BEGIN {kind}-----)")]
    if kind == "CERTIFICATE":
        from cryptography import x509

        try:
            x509.load_pem_x509_certificates(data)
        except ValueError:
            return [ConfigProblem(where, f"{path}: a PEM certificate in it cannot be parsed")]
    return []


def _client_key(path: Path) -> list[ConfigProblem]:
    where = "uplink.client_key"
    data, problems = _readable(path, where)
    if data is None:
        return problems
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & stat.S_IRWXO:
        return [ConfigProblem(where, f"{path} is readable by others (mode {mode:04o})", f"run: chmod 640 {path}")]
    if b"PRIVATE KEY-----" not in data:
        return [ConfigProblem(where, f"{path} holds no PEM private key (-----BEGIN PRIVATE KEY-----)")]
    from cryptography.hazmat.primitives import serialization

    try:
        serialization.load_pem_private_key(data, password=None)
    except TypeError:
        return [ConfigProblem(where, f"{path} is encrypted; the agent cannot enter a passphrase",
                              f"decrypt it: openssl pkey -in {path} -out NEW.key")]
    except Exception:  # noqa: BLE001 - cryptography raises several kinds for a bad key
        return [ConfigProblem(where, f"{path}: the private key in it cannot be parsed")]
    return []


def _key_matches(cert: Path, key: Path) -> list[ConfigProblem]:
    """The client key belongs to the client certificate (a mismatch fails every handshake)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        certificate = x509.load_pem_x509_certificates(cert.read_bytes())[0]
        private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    except Exception:  # noqa: BLE001 - reported by the checks above
        return []
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if certificate.public_key().public_bytes(*fmt) != private.public_key().public_bytes(*fmt):
        return [ConfigProblem("uplink.client_key", f"{key} is not the key of the certificate {cert}")]
    return []
