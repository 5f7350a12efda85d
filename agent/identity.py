"""The gateway's Ed25519 identity and the signed chain checkpoints it appends.

The hash chain proves that records were not changed *after* they were chained, but
whoever holds the store (or a copy of the central database) can rewrite the whole chain
and recompute every hash. A checkpoint signed by a key that never leaves the gateway
closes that gap: records ``1..N`` of a stream, whose head hash the checkpoint names,
can no longer be rewritten without the gateway's private key.

The identity is made on the agent's first start: ``identity.key`` beside the store
(PKCS#8 PEM, mode 0600, written to a temporary file and linked into place so that two
starts never make two keys) and ``identity.pub`` (the public key, PEM, 0644) for
``coldgate identity`` and the fleet's registration. The private key is never logged,
never put in an event or an error message; only its key id is.

A checkpoint is an event record (the format is fixed by the protocol, docs/protocol.md)::

    {"type": "event", "event": "chain_checkpoint",
     "details": {"head_seq": N, "head_hash": H, "key_id": KID,
                 "algorithm": "ed25519", "signature": SIG}}

It covers records ``1..N`` of its stream, where ``N`` is the store's head just before the
checkpoint is appended (the checkpoint itself gets seq ``N+1``); ``KID`` is
:func:`key_id`; ``SIG`` is the standard, padded base64 of the Ed25519 signature over
:func:`checkpoint_message`. The store reads the head and appends the checkpoint in one
transaction (:meth:`agent.store.Store.append_checkpoint`), so nothing slips in between.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent import protocol
from agent.exc import IdentityError

log = logging.getLogger("coldgate.identity")

#: What a checkpoint signature is for (domain separation: a signature over this message
#: can never be taken for a signature over anything else coldgate signs).
CHECKPOINT_PURPOSE = "coldgate-chain-checkpoint-v1"
ALGORITHM = "ed25519"


def key_id(raw_public: bytes) -> str:
    """A public key's id: the first 16 hex characters of SHA-256 of its raw 32 bytes
    (:func:`agent.protocol.key_id`, the one definition)."""
    return protocol.key_id(raw_public)


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_pem(key: Ed25519PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


#: The bytes a checkpoint signs (docs/protocol.md): one definition, in the protocol module.
checkpoint_message = protocol.checkpoint_message


def verify_checkpoint(public: Ed25519PublicKey, gateway_id: str, stream: str, details: Mapping[str, Any]) -> bool:
    """Whether ``details`` (a ``chain_checkpoint`` event's) is signed by ``public``."""
    record = {"type": "event", "event": "chain_checkpoint", "stream": stream, "details": dict(details)}
    return protocol.verify_checkpoint(record, gateway_id, raw_public(public))


@dataclass(frozen=True)
class Identity:
    """The gateway's key pair (the private key stays in this object and its 0600 file)."""

    private: Ed25519PrivateKey
    path: Path

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @property
    def key_id(self) -> str:
        return key_id(raw_public(self.public))

    def describe(self) -> dict[str, Any]:
        """What ``coldgate identity`` prints: never the private key."""
        return describe_public(self.public, self.path)

    def checkpoint(self, gateway_id: str, stream: str, head_seq: int, head_hash: str) -> dict[str, Any]:
        """The ``details`` of a ``chain_checkpoint`` event over records ``1..head_seq``."""
        return protocol.sign_checkpoint(self.private, gateway_id, stream, head_seq, head_hash)

    def __repr__(self) -> str:  # never the key, even in a traceback's locals
        return f"Identity(key_id={self.key_id!r}, path={str(self.path)!r})"


def describe_public(public: Ed25519PublicKey, path: Path | None = None) -> dict[str, Any]:
    raw = raw_public(public)
    return {"key_id": key_id(raw), "algorithm": ALGORITHM, "public_key_hex": raw.hex(),
            "public_key_pem": public_pem(public), "key_file": str(path) if path else None}


def default_path(store_path: Path) -> Path:
    """``identity.key`` in the store's folder (the state directory)."""
    return store_path.parent / "identity.key"


def pub_path(key_path: Path) -> Path:
    return key_path.with_suffix(".pub")


def load_or_create(path: Path) -> tuple[Identity, bool]:
    """The identity in ``path``, made there first if there is none; ``(identity, created)``.

    Raises :class:`IdentityError` for a key file others may read (it may have leaked: a
    technician replaces it knowingly) or one that is not an Ed25519 private key.
    """
    try:
        return load(path), False
    except FileNotFoundError:
        pass
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # fails if another start made one meanwhile: that one is kept
        except FileExistsError:
            return load(path), False
    except OSError as exc:
        raise IdentityError(f"cannot create the gateway identity {path}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    identity = Identity(key, path)
    write_public(identity)
    log.info("gateway identity created: %s (key id %s)", path, identity.key_id)
    return identity, True


def write_public(identity: Identity) -> None:
    """``identity.pub`` beside the key, for ``coldgate identity`` run by anyone."""
    pub = pub_path(identity.path)
    tmp = pub.with_name(f".{pub.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(public_pem(identity.public))
        os.chmod(tmp, 0o644)
        os.replace(tmp, pub)
    except OSError as exc:
        log.warning("cannot write %s (%s); `coldgate identity` needs the private key's file then", pub, exc)


def load(path: Path) -> Identity:
    """The identity in ``path`` (FileNotFoundError if there is none)."""
    st = path.stat()
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISREG(st.st_mode):
        raise IdentityError(f"{path} is not a regular file")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise IdentityError(f"the gateway's private key {path} is readable by others (mode {mode:04o}): it may "
                            f"have leaked; make a new identity (move the file away) and register its public key")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError):
        raise IdentityError(f"{path} holds no usable unencrypted private key") from None
    except OSError as exc:
        raise IdentityError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError(f"{path} holds a key that is not Ed25519")
    return Identity(key, path)


def load_public(key_path: Path) -> Ed25519PublicKey:
    """The public key of the identity at ``key_path``: from ``identity.pub``, else the key."""
    pub = pub_path(key_path)
    try:
        loaded = serialization.load_pem_public_key(pub.read_bytes())
    except FileNotFoundError:
        return load(key_path).public
    except (ValueError, OSError) as exc:
        raise IdentityError(f"{pub} holds no usable public key: {exc}") from None
    if not isinstance(loaded, Ed25519PublicKey):
        raise IdentityError(f"{pub} holds a key that is not Ed25519")
    return loaded


__all__ = ["ALGORITHM", "CHECKPOINT_PURPOSE", "Identity", "checkpoint_message", "default_path", "describe_public",
           "key_id", "load", "load_or_create", "load_public", "verify_checkpoint"]
