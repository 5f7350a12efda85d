"""Trusted fleet keys and detached Ed25519 signatures of config files.

**Format: a detached signature beside the file**, ``coldgate.toml.sig``, one JSON line::

    {"algorithm": "ed25519", "key_id": "3f9a0c1d2e4b5a67", "signature": "<base64>"}

The TOML file stays exactly what the fleet wrote and what ``config check``, ``diff`` and
a reviewer read; a tool that knows nothing of coldgate copies the two files side by side
(Ansible ``copy``, Mender, a file drop). A bundle (config and signature in one archive)
would hide the config from all of them. The signature covers the file's exact bytes
behind a context string (:data:`CONTEXT`), so it can never be taken for a signature over
anything else a fleet key signs; the config names its ``gateway_id``, which a running
agent never changes, so a file signed for one gateway is refused by every other.

**The keyring** is a folder (``[fleet] trusted_keys``, default
``/etc/coldgate/trusted-keys/``) of public keys, one PEM file each (``*.pub``,
``*.pem``). Several keys may be trusted at once: a rotation adds the new key, re-signs,
then removes the old one. A key is named by its id, the first 16 hex characters of
SHA-256 of its raw 32 bytes (:func:`agent.identity.key_id`), which every event carries.
Like the alarm actions' allow-list (:mod:`agent.rules.actions`), the folder and each key
file must be owned by root and writable by nobody else: a key the service user could
write is no trust anchor. A file that fails this is skipped, and the reason is said.
"""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.exc import ColdgateError, ConfigProblem, ConfigRefused
from agent.identity import ALGORITHM, key_id, raw_public

#: Signed before the file's bytes: a config signature is for nothing else.
CONTEXT = b"coldgate-config-signature-v1\n"
#: The default keyring folder.
TRUSTED_KEYS = Path("/etc/coldgate/trusted-keys")
KEY_SUFFIXES = (".pub", ".pem")
MAX_SIG_BYTES = 4096


def signature_path(config_path: Path) -> Path:
    """``coldgate.toml.sig`` for ``coldgate.toml``."""
    return config_path.with_name(config_path.name + ".sig")


# -- the fleet side ------------------------------------------------------------------


def sign(data: bytes, private: Ed25519PrivateKey) -> dict[str, str]:
    """The signature document of ``data`` (what ``coldgate config sign`` writes)."""
    sig = private.sign(CONTEXT + data)
    return {"algorithm": ALGORITHM, "key_id": key_id(raw_public(private.public_key())),
            "signature": base64.b64encode(sig).decode("ascii")}


def write_signature(path: Path, doc: Mapping[str, str]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(dict(doc), sort_keys=True) + "\n")
    os.replace(tmp, path)


def generate(stem: Path) -> tuple[Path, Path, str]:
    """A new fleet key pair: ``STEM.key`` (private, PKCS#8 PEM, 0600) and ``STEM.pub``.

    Refuses to overwrite an existing key (a lost private key cannot be had back).
    """
    private = Ed25519PrivateKey.generate()
    key_file, pub_file = stem.with_name(stem.name + ".key"), stem.with_name(stem.name + ".pub")
    for p in (key_file, pub_file):
        if p.exists():
            raise ColdgateError(f"{p} exists; choose another name (a key is never overwritten)")
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    stem.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    public = private.public_key()
    pub_file.write_bytes(public.public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo))
    os.chmod(pub_file, 0o644)
    return key_file, pub_file, key_id(raw_public(public))


def load_private(path: Path) -> Ed25519PrivateKey:
    """A fleet signing key; refused if others may read it or it is not Ed25519."""
    try:
        st = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        raise ColdgateError(f"cannot read the signing key {path}: {exc.strerror or exc}") from None
    mode = stat.S_IMODE(st.st_mode)
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ColdgateError(f"the signing key {path} is readable by others (mode {mode:04o}); run: chmod 600 {path}")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ColdgateError(f"{path} holds no unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ColdgateError(f"{path} is not an Ed25519 key (make one with: coldgate keys generate)")
    return key


# -- the gateway side ----------------------------------------------------------------


@dataclass(frozen=True)
class TrustedKey:
    key_id: str
    public: Ed25519PublicKey
    file: Path


@dataclass(frozen=True)
class Keyring:
    """The trusted fleet keys found in a folder, and why any file there was skipped."""

    folder: Path
    keys: Mapping[str, TrustedKey] = field(default_factory=dict)
    #: files (or the folder) not trusted, with the reason
    skipped: tuple[str, ...] = ()

    @classmethod
    def load(cls, folder: Path, *, trusted_uid: int = 0) -> Keyring:
        """Read ``folder``; an unsafe folder trusts nothing, an unsafe file is skipped."""
        unsafe = _unsafe(folder, trusted_uid, directory=True)
        if unsafe is not None:
            return cls(folder, {}, (unsafe,))
        keys: dict[str, TrustedKey] = {}
        skipped: list[str] = []
        try:
            entries = sorted(folder.iterdir())
        except OSError as exc:
            return cls(folder, {}, (f"{folder} cannot be listed: {exc.strerror or exc}",))
        for p in entries:
            if p.suffix not in KEY_SUFFIXES or p.name.startswith("."):
                continue
            why = _unsafe(p, trusted_uid)
            if why is not None:
                skipped.append(why)
                continue
            try:
                data = p.read_bytes()
            except OSError as exc:
                skipped.append(f"{p} cannot be read: {exc.strerror or exc}")
                continue
            if b"PRIVATE KEY" in data:
                skipped.append(f"{p} holds a private key: it does not belong on a gateway (install the .pub)")
                continue
            try:
                public = serialization.load_pem_public_key(data)
            except ValueError:
                skipped.append(f"{p}: no PEM public key in it")
                continue
            if not isinstance(public, Ed25519PublicKey):
                skipped.append(f"{p}: not an Ed25519 key")
                continue
            kid = key_id(raw_public(public))
            keys[kid] = TrustedKey(kid, public, p)
        return cls(folder, keys, tuple(skipped))

    def describe(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "keys": {k: str(v.file) for k, v in self.keys.items()},
                "skipped": list(self.skipped)}

    def verify(self, data: bytes, sig_doc: bytes | None, *, source: str) -> str:
        """The key id that signed ``data``; :class:`ConfigRefused` otherwise."""
        if sig_doc is None:
            raise ConfigRefused(source, "unsigned", [ConfigProblem(
                "signature", "the file is not signed and this gateway requires a signature",
                f"sign it with `coldgate config sign FILE --key KEY` and deliver {Path(source).name}.sig with it")])
        try:
            doc = json.loads(sig_doc)
            if not isinstance(doc, dict):
                raise ValueError("not an object")
            algorithm, kid, sig_text = doc.get("algorithm"), doc.get("key_id"), doc.get("signature")
            if algorithm != ALGORITHM or not isinstance(kid, str) or not isinstance(sig_text, str):
                raise ValueError(f"needs algorithm {ALGORITHM!r}, key_id and signature")
            sig = base64.b64decode(sig_text, validate=True)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigRefused(source, "bad_signature", [ConfigProblem(
                "signature", f"the signature file is not a coldgate signature ({exc})"[:300])]) from None
        key = self.keys.get(kid)
        if key is None:
            trusted = ", ".join(sorted(self.keys)) or "none"
            extra = f"; skipped: {'; '.join(self.skipped)}" if self.skipped else ""
            raise ConfigRefused(source, "untrusted_key", [ConfigProblem(
                "signature", f"signed by key {kid[:16]}, which is not in the keyring {self.folder} "
                             f"(trusted: {trusted}){extra}"[:600])])
        try:
            key.public.verify(sig, CONTEXT + data)
        except InvalidSignature:
            raise ConfigRefused(source, "bad_signature", [ConfigProblem(
                "signature", f"the signature of key {kid} does not match the file: it was changed after "
                             "signing, or the signature belongs to another file")]) from None
        return kid


def read_signature(path: Path) -> bytes | None:
    """The signature file's bytes (bounded), None if there is none."""
    try:
        with path.open("rb") as f:
            return f.read(MAX_SIG_BYTES)
    except FileNotFoundError:
        return None


def _unsafe(path: Path, trusted_uid: int, *, directory: bool = False) -> str | None:
    """Why ``path`` is no trust anchor: missing, of the wrong kind, not root's, or writable
    by group or others (after :func:`agent.rules.actions._unsafe`)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return f"{path} does not exist"
    except OSError as exc:
        return f"{path} cannot be read: {exc.strerror or exc}"
    mode = stat.S_IMODE(st.st_mode)
    if directory and not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a directory"
    if not directory and not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file"
    if st.st_uid != trusted_uid:
        return f"{path} is not owned by root (a key the service could change is no trust anchor)"
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path} is writable by group or others (mode {mode:04o}; run: chmod go-w {path})"
    return None


__all__ = ["CONTEXT", "TRUSTED_KEYS", "Keyring", "TrustedKey", "generate", "load_private", "read_signature",
           "sign", "signature_path", "write_signature"]
