"""One verdict on a candidate config: read once, verified, validated, ordered.

Every way a config reaches a running agent (``coldgate config apply``, the inbox,
``SIGHUP`` of the live file) passes :func:`examine`, in this order:

1. the file is read **once** (bounded), and everything after works on those bytes: what
   was verified is what is parsed, applied, kept as last good and hashed in the events;
2. the signature (``FILE.sig``), when the running config requires one or the file comes
   with one (a present but wrong signature is always refused), is checked against the
   running config's keyring — a candidate cannot bring its own trust;
3. the file is validated (:func:`agent.config.loads`); a candidate that itself says
   ``require_signature = true`` must be signed too;
4. a file whose SHA-256 rolled back before is refused (it failed its health check; a
   fixed file has another hash);
5. a ``config_version`` lower than the running one is refused unless
   ``allow_downgrade`` (``coldgate config apply --allow-downgrade``).

The result is a :class:`Candidate` with its :class:`Provenance` (version, SHA-256,
signer), which status, the ``config_*`` events and every uplink batch report.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import config as configmod
from agent.config import MAX_CONFIG_BYTES, Config
from agent.exc import ConfigError, ConfigProblem, ConfigRefused
from agent.fleet.trust import Keyring, read_signature, signature_path
from agent.fleet.version import Version


@dataclass(frozen=True)
class Provenance:
    """What runs: its version, the SHA-256 of its bytes, the fleet key that signed it."""

    version: int | str
    sha256: str | None
    signer: str | None = None
    source: str | None = None

    def batch(self) -> dict[str, Any]:
        """The ``config`` member of every uplink batch (docs/protocol.md)."""
        return {"version": self.version, "sha256": self.sha256, "signer": self.signer}

    def as_dict(self) -> dict[str, Any]:
        return {**self.batch(), "source": self.source}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Provenance:
        return cls(d["version"], d.get("sha256"), d.get("signer"), d.get("source"))


@dataclass(frozen=True)
class Candidate:
    config: Config
    data: bytes
    signature: bytes | None
    provenance: Provenance


def read_bytes(path: Path) -> bytes:
    """The file's bytes, bounded like :func:`agent.config.read_text`; ConfigError otherwise."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(str(path), [ConfigProblem("", f"cannot read: {exc.strerror or exc}")]) from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(str(path), [ConfigProblem("", f"file larger than {MAX_CONFIG_BYTES // 1024} KiB")])
    return data


def examine(path: Path, *, base_dir: Path, running: Config | None = None, running_version: int | str | None = None,
            signature: Path | None = None, allow_downgrade: bool = False,
            rolled_back: Callable[[str], str | None] = lambda sha: None, trusted_uid: int = 0,
            source: str | None = None, kept: Provenance | None = None) -> Candidate:
    """The verdict on ``path`` (see the module docstring); raises ConfigError or ConfigRefused.

    ``kept``: the agent's own copy of a config verified when it came (the last good one a
    rollback returns to): its bytes must still have that SHA-256, and its signer is taken
    as recorded (the last good config may be the unsigned one root installed).
    """
    source = source or str(path)
    data = read_bytes(path)
    digest = hashlib.sha256(data).hexdigest()
    sig = read_signature(signature or signature_path(path))
    policy = running.fleet if running is not None else None
    signer = None
    if kept is not None:
        if kept.sha256 != digest:
            raise ConfigRefused(source, "bad_signature", [ConfigProblem(
                "", f"the kept copy changed since it was kept (sha256 {digest[:16]}…, kept {str(kept.sha256)[:16]}…)")])
        signer = kept.signer
    elif sig is not None or (policy is not None and policy.require_signature):
        signer = _verify(data, sig, policy.trusted_keys if policy is not None else None, source, trusted_uid)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(source, [ConfigProblem("", f"not UTF-8 text: byte at offset {exc.start}")]) from None
    cfg = configmod.loads(text, source=source, base_dir=base_dir)
    if signer is None and kept is None and cfg.fleet.require_signature:
        # a candidate that asks for signatures is itself signed, under the keyring it names
        # only if nothing runs yet (the first start); else the running keyring decides
        folder = policy.trusted_keys if policy is not None else cfg.fleet.trusted_keys
        signer = _verify(data, sig, folder, source, trusted_uid)
    why = rolled_back(digest)
    if why is not None:
        raise ConfigRefused(source, "rolled_back_before", [ConfigProblem(
            "", f"this exact file (sha256 {digest[:16]}…) was applied before and rolled back: {why}",
            "fix it and raise config_version")])
    if running_version is not None and not allow_downgrade:
        new, old = Version(cfg.config_version), Version(running_version)
        if new < old:
            raise ConfigRefused(source, "downgrade", [ConfigProblem(
                "config_version", f"{new} is lower than the running {old}",
                "raise config_version, or apply with --allow-downgrade to go back on purpose")])
    return Candidate(cfg, data, sig, Provenance(cfg.config_version, digest, signer, source))


def _verify(data: bytes, sig: bytes | None, folder: Path | None, source: str, trusted_uid: int) -> str:
    keyring = Keyring.load(folder if folder is not None else Path("/etc/coldgate/trusted-keys"),
                           trusted_uid=trusted_uid)
    return keyring.verify(data, sig, source=source)


def digest_of(path: Path) -> str | None:
    try:
        return hashlib.sha256(read_bytes(path)).hexdigest()
    except ConfigError:
        return None


__all__ = ["Candidate", "Provenance", "digest_of", "examine", "read_bytes"]
