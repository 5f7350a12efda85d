"""The receiver's gateway registry: who may write which stream, and whose key signs it.

``coldgate receiver --gateways gateways.toml``::

    # One table per gateway id.
    [gateways."gw-0042"]
    token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"  # sha256sum of the token
    public_key = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"  # `coldgate identity`

    [gateways."gw-0043"]
    token_file = "tokens/gw-0043"        # the token itself, mode 0600 (relative to this file)
    public_key_file = "keys/gw-0043.pub" # PEM, hex or base64

    [gateways."gw-0044"]
    certificate_cn = "gw-0044"           # mutual TLS: its client certificate's common name

A token belongs to exactly one gateway: a batch whose ``gateway_id`` is not the token's
is refused with 403, so one gateway cannot write another's stream first and turn the
genuine records into conflicts. The registry holds no token in clear unless you give a
``token_file`` (prefer ``token_sha256``: a stolen registry then lets no one in). The
public key is what the report verifies ``chain_checkpoint`` signatures with; a gateway
without one has its checkpoints reported as unchecked.

Mutual TLS: with ``--tls-cert``/``--tls-key``/``--client-ca``, a client certificate
verified by the CA whose common name is an entry's ``certificate_cn`` identifies that
gateway, with or without a token (a token sent as well must be the same gateway's). Behind
a TLS proxy instead, keep a per-gateway token.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.protocol import ProtocolError, key_id, load_public_key
from agent.receiver.storage import ReceiverError

_GATEWAY_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    token_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    token_file: str | None = None
    public_key: str | None = None
    public_key_file: str | None = None
    certificate_cn: str | None = Field(default=None, min_length=1)


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    gateways: dict[str, _Entry]


@dataclass(frozen=True)
class Gateway:
    gateway_id: str
    token_sha256: str | None
    public_key: bytes | None
    certificate_cn: str | None = None

    @property
    def key_id(self) -> str | None:
        return key_id(self.public_key) if self.public_key else None


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Registry:
    """Gateways by id, and by the SHA-256 of their token."""

    def __init__(self, gateways: list[Gateway], source: str = "<registry>") -> None:
        self.source = source
        self.gateways = {g.gateway_id: g for g in gateways}
        self._by_token: dict[str, str] = {}
        self._by_cn: dict[str, str] = {}
        for g in gateways:
            if g.certificate_cn is not None:
                other_cn = self._by_cn.setdefault(g.certificate_cn, g.gateway_id)
                if other_cn != g.gateway_id:
                    raise ReceiverError(f"{source}: gateways {other_cn} and {g.gateway_id} have the same certificate_cn")
            if g.token_sha256 is None:
                continue
            other = self._by_token.setdefault(g.token_sha256, g.gateway_id)
            if other != g.gateway_id:
                raise ReceiverError(f"{source}: gateways {other} and {g.gateway_id} have the same token")

    @classmethod
    def load(cls, path: str | Path) -> Registry:
        """Read and check a registry file; every mistake is a :class:`ReceiverError` naming it (never a secret)."""
        path = Path(path)
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ReceiverError(f"{path}: cannot read the gateway registry: {exc.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise ReceiverError(f"{path}: not a TOML file: {str(exc)[:200]}") from None
        try:
            parsed = _File.model_validate(doc)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors(include_input=False)
            )
            raise ReceiverError(f"{path}: invalid gateway registry: {problems}") from None
        out = []
        for gw, entry in parsed.gateways.items():
            if not _GATEWAY_ID.match(gw):
                raise ReceiverError(f"{path}: gateway id {gw[:60]!r}: letters, digits, '.', '_' and '-' only")
            out.append(cls._entry(path, gw, entry))
        return cls(out, str(path))

    @staticmethod
    def _entry(path: Path, gw: str, e: _Entry) -> Gateway:
        where = f"{path}: gateways.{gw}"
        if e.token_sha256 is not None and e.token_file is not None:
            raise ReceiverError(f"{where}: give one of token_sha256 and token_file, not both")
        if e.token_sha256 is None and e.token_file is None and e.certificate_cn is None:
            raise ReceiverError(f"{where}: give a token (token_sha256 or token_file) or a certificate_cn")
        digest = e.token_sha256
        if e.token_file is not None:
            tf = path.parent / e.token_file
            try:
                if tf.stat().st_mode & 0o077:
                    raise ReceiverError(f"{where}: token file {tf} is readable by others: chmod 600 it")
                token = tf.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ReceiverError(f"{where}: cannot read token file {tf}: {exc.strerror}") from None
            if not token:
                raise ReceiverError(f"{where}: token file {tf} is empty")
            digest = token_sha256(token)
        if e.public_key is not None and e.public_key_file is not None:
            raise ReceiverError(f"{where}: give public_key or public_key_file, not both")
        key = None
        try:
            if e.public_key is not None:
                key = load_public_key(e.public_key)
            elif e.public_key_file is not None:
                key = load_public_key((path.parent / e.public_key_file).read_bytes())
        except OSError as exc:
            raise ReceiverError(f"{where}: cannot read public_key_file: {exc.strerror}") from None
        except ProtocolError as exc:
            raise ReceiverError(f"{where}: {exc}") from None
        return Gateway(gw, digest, key, e.certificate_cn)

    def gateway_for(self, token: str) -> str | None:
        """The gateway the token belongs to, or None."""
        return self._by_token.get(token_sha256(token))

    def gateway_for_cn(self, common_name: str) -> str | None:
        """The gateway whose ``certificate_cn`` this is, or None."""
        return self._by_cn.get(common_name)

    def public_key(self, gateway_id: str) -> bytes | None:
        g = self.gateways.get(gateway_id)
        return g.public_key if g else None
