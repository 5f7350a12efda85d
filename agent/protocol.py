"""The uplink protocol in code: one module both sides use (the contract is ``docs/protocol.md``).

What lives here, and only here:

* canonical JSON (RFC 8785: the ``rfc8785`` library, and :func:`canonical_stdlib`, the
  standard library's C encoder on the values where it writes the same bytes) and the
  record hash ``SHA-256(prev_hash || JCS(record without "hash"))``;
* record and chain verification (:func:`verify_record`, :class:`ChainVerifier`);
* batch framing (:func:`frame_batch`) and the Idempotency-Key (:func:`idempotency_key`,
  :func:`parse_idempotency_key`);
* signed chain checkpoints (:func:`checkpoint_message`, :func:`sign_checkpoint`,
  :func:`verify_checkpoint`, :func:`key_id`, :func:`load_public_key`).

Verification deliberately does not use the producer's fast path in :mod:`agent.canonical`:
a bug there would otherwise be hidden by the very code meant to catch it. A property test
holds the two against each other. Nothing here imports the agent's runtime (store, daemon,
config), so the receiver, ``coldgate verify`` and an auditor's script stand on this alone.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import json.encoder
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import rfc8785

from agent.exc import ProtocolError, Uncanonical

PROTOCOL_VERSION = 1
ZERO_HASH = "0" * 64
#: the deepest nesting of objects and arrays a record may carry (``details`` of an event)
MAX_DEPTH = 32
CHECKPOINT_EVENT = "chain_checkpoint"
CHECKPOINT_ALGORITHM = "ed25519"
CHECKPOINT_PURPOSE = "coldgate-chain-checkpoint-v1"
SET_ASIDE_EVENT = "batch_set_aside"

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_KEY = re.compile(r"^(?P<gateway>.+):(?P<stream>[^:]+):(?P<first>[1-9][0-9]*)-(?P<last>[1-9][0-9]*)$")




# -- canonical JSON and the record hash ---------------------------------------------------


def canonical(obj: Any) -> bytes:
    """RFC 8785 (JCS) canonical JSON of ``obj`` as UTF-8 bytes, by the ``rfc8785`` library."""
    try:
        return rfc8785.dumps(obj)
    except (rfc8785.CanonicalizationError, TypeError, ValueError, RecursionError) as exc:
        raise Uncanonical(f"no canonical JSON form: {exc}") from None


def _refuse(o: Any) -> Any:
    raise TypeError(f"{type(o).__name__} is not JSON")


def _stdlib_encoder() -> Any:
    """The standard library's JSON encoder with RFC 8785's separators and sorted keys: its C
    encoder called directly when there is one (``JSONEncoder.encode`` builds one per call)."""
    c_make, c_string = json.encoder.c_make_encoder, json.encoder.c_encode_basestring  # type: ignore[attr-defined]
    if c_make is None or c_string is None:  # pragma: no cover - CPython without _json
        return json.JSONEncoder(ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":")).encode
    encoder = c_make(None, _refuse, c_string, None, ":", ",", True, False, False)
    return lambda obj: "".join(encoder(obj, 0))


_STDLIB = _stdlib_encoder()
_BIG = 2**53
_PLAIN = frozenset({str, bool, type(None)})  # written alike by both, whatever the value


def _stdlib_domain(v: Any, depth: int = 0) -> bool:
    """True where Python's JSON encoder writes ``v`` as RFC 8785 does.

    Strings (the encoder escapes ``"``, ``\\`` and U+0000–U+001F with the short forms and
    lowercase ``\\u00xx``, as ECMAScript does; a lone surrogate fails the UTF-8 encoding
    later), booleans, null, integers within ±2**53, floats that are not integral and lie in
    [1e-4, 1e16) (there both languages write the shortest round-trip decimal without an
    exponent; ``25.0`` is ``25`` in ECMAScript, and exponents are written differently), and
    objects with ASCII keys (sorted by code point = by UTF-16 unit) and arrays of these.
    """
    t = type(v)
    if t is dict:
        if depth > MAX_DEPTH:
            return False
        try:
            if not "".join(v).isascii():  # the keys (a key that is no string is a TypeError)
                return False
        except TypeError:
            return False
        for x in v.values():  # scalars inline: a flat record costs no call per member
            tx = type(x)
            if tx in _PLAIN:
                continue
            if tx is float:
                if x.is_integer() or not 1e-4 <= abs(x) < 1e16:  # NaN and infinities fail the range
                    return False
            elif tx is int:
                if not -_BIG < x < _BIG:
                    return False
            elif not _stdlib_domain(x, depth + 1):
                return False
        return True
    if t is list:
        return depth <= MAX_DEPTH and all(_stdlib_domain({"": x}, depth + 1) for x in v)
    return False


def canonical_stdlib(obj: Mapping[str, Any]) -> bytes | None:
    """RFC 8785 canonical JSON of ``obj`` by the standard library's C encoder, or None outside
    the values where that is exact (see :func:`_stdlib_domain`); then use :func:`canonical`.

    About six times faster than the library, which is what lets a receiver verify every
    record of a fleet as it arrives. It is a second implementation, independent of the
    producer's fast path, and a property test holds it byte for byte to ``rfc8785``; a
    receiver that finds a hash mismatch on it confirms with :func:`canonical` before it
    calls the record broken.
    """
    if not _stdlib_domain(obj):
        return None
    try:
        return _STDLIB(obj).encode("utf-8")
    except (UnicodeEncodeError, ValueError, TypeError, RecursionError):
        return None


def record_hash(prev_hash: str, body: bytes) -> str:
    """The ``hash`` of a record whose canonical form without ``hash`` is ``body``."""
    h = hashlib.sha256(prev_hash.encode("ascii"))
    h.update(body)
    return h.hexdigest()


def body_of(record: Mapping[str, Any]) -> bytes:
    """The bytes a record's hash covers: JCS of the record without its ``hash`` member."""
    return canonical({k: v for k, v in record.items() if k != "hash"})


def hash_of(record: Mapping[str, Any]) -> str:
    """The hash the record should carry, from its content and its ``prev_hash``."""
    prev = record.get("prev_hash")
    if not isinstance(prev, str) or not _HEX64.match(prev):
        raise Uncanonical("prev_hash is not 64 lowercase hex digits")
    return record_hash(prev, body_of(record))


def verify_record(record: Mapping[str, Any]) -> bool:
    """True when ``record["hash"]`` is the hash of its own content and ``prev_hash``."""
    try:
        return hash_of(record) == record.get("hash")
    except Uncanonical:
        return False


def depth(value: Any) -> int:
    """How deeply objects and arrays nest in ``value`` (a scalar is 0), without recursion."""
    deepest = 0
    todo: list[tuple[Any, int]] = [(value, 0)]
    while todo:
        v, d = todo.pop()
        if isinstance(v, dict):
            todo.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            todo.extend((x, d + 1) for x in v)
        else:
            continue
        deepest = max(deepest, d + 1)
        if deepest > MAX_DEPTH:
            return deepest  # enough to refuse it; a hostile value is not walked whole
    return deepest


# -- batches ------------------------------------------------------------------------------


def idempotency_key(gateway_id: str, stream: str, first: int, last: int) -> str:
    """``<gateway_id>:<stream>:<first seq>-<last seq>``: names the records of one batch."""
    return f"{gateway_id}:{stream}:{first}-{last}"


def parse_idempotency_key(key: str) -> tuple[str, str, int, int]:
    """``(gateway_id, stream, first, last)`` of a key, or :class:`ProtocolError`."""
    m = _KEY.match(key)
    if m is None or int(m["first"]) > int(m["last"]):
        raise ProtocolError(f"Idempotency-Key {key[:200]!r} is not <gateway_id>:<stream>:<first seq>-<last seq>")
    return m["gateway"], m["stream"], int(m["first"]), int(m["last"])


def frame_batch(
    gateway_id: str,
    records: Sequence[tuple[int, str, str]],
    *,
    sent_at: str,
    config: Mapping[str, Any] | None = None,
) -> bytes:
    """The request body of one batch, from records as a store holds them.

    ``records`` are ``(seq, body, hash)`` where ``body`` is the record's canonical JSON
    without ``hash`` (the exact bytes the hash covers). Each goes out as those bytes with
    ``,"hash":"…"`` spliced before its closing brace, never re-serialised, so the bytes
    hashed are the bytes sent. ``config`` (``{"version", "sha256", "signer"}``) is the
    configuration the gateway runs, for the central side's fleet view.
    """
    head: dict[str, Any] = {"protocol": PROTOCOL_VERSION, "gateway_id": gateway_id, "sent_at": sent_at}
    if config is not None:
        head["config"] = dict(config)
    parts = ",".join(f'{body[:-1]},"hash":"{h}"}}' for _, body, h in records)
    return f'{json.dumps(head)[:-1]},"records":[{parts}]}}'.encode()


# -- signed checkpoints -------------------------------------------------------------------


def key_id(public_key: bytes) -> str:
    """A key's id: the first 16 hex digits of SHA-256 of the raw 32-byte Ed25519 public key."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def checkpoint_message(gateway_id: str, stream: str, head_seq: int, head_hash: str) -> bytes:
    """The bytes a checkpoint's signature covers (JCS of the five members, ``purpose`` included)."""
    return canonical(
        {
            "gateway_id": gateway_id,
            "stream": stream,
            "head_seq": head_seq,
            "head_hash": head_hash,
            "purpose": CHECKPOINT_PURPOSE,
        }
    )


def load_public_key(text: str | bytes) -> bytes:
    """The raw 32-byte Ed25519 public key from PEM (SubjectPublicKeyInfo), 64 hex digits or base64."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    data = text.encode() if isinstance(text, str) else bytes(text)
    stripped = data.strip()
    if stripped.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(stripped)
        except ValueError as exc:
            raise ProtocolError(f"not a PEM public key: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ProtocolError("the PEM key is not an Ed25519 public key")
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    raw: bytes | None = None
    if re.fullmatch(rb"[0-9a-fA-F]{64}", stripped):
        raw = bytes.fromhex(stripped.decode())
    else:
        try:
            raw = base64.b64decode(stripped, validate=True)
        except (binascii.Error, ValueError):
            raw = None
    if raw is None or len(raw) != 32:
        raise ProtocolError("a public key is PEM, 64 hex digits, or the base64 of 32 raw bytes")
    return raw


def sign_checkpoint(private_key: Any, gateway_id: str, stream: str, head_seq: int, head_hash: str) -> dict[str, Any]:
    """The ``details`` of a ``chain_checkpoint`` event, signed by an Ed25519 private key."""
    from cryptography.hazmat.primitives import serialization

    raw = private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    signature = private_key.sign(checkpoint_message(gateway_id, stream, head_seq, head_hash))
    return {
        "head_seq": head_seq,
        "head_hash": head_hash,
        "key_id": key_id(raw),
        "algorithm": CHECKPOINT_ALGORITHM,
        "signature": base64.b64encode(signature).decode("ascii"),
    }


def checkpoint_problem(record: Mapping[str, Any], gateway_id: str, public_key: bytes) -> str | None:
    """Why the checkpoint record's signature does not verify under ``public_key``, or None when it does.

    Checks the form of ``details``, the algorithm, that ``key_id`` names this key and the
    Ed25519 signature over :func:`checkpoint_message`. Whether ``head_hash`` is the hash
    of record ``head_seq`` is the chain's question: the caller holds the records.
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    d = record.get("details")
    if not isinstance(d, Mapping):
        return "details is not an object"
    head_seq, head_hash, sig = d.get("head_seq"), d.get("head_hash"), d.get("signature")
    if type(head_seq) is not int or head_seq < 1:
        return "head_seq is not an integer >= 1"
    if not isinstance(head_hash, str) or not _HEX64.match(head_hash):
        return "head_hash is not 64 lowercase hex digits"
    seq = record.get("seq")
    if type(seq) is int and head_seq >= seq:
        return f"head_seq {head_seq} is not before the checkpoint's own seq {seq}"
    if d.get("algorithm") != CHECKPOINT_ALGORITHM:
        return f"algorithm {d.get('algorithm')!r} is not {CHECKPOINT_ALGORITHM!r}"
    if d.get("key_id") != key_id(public_key):
        return f"signed by key {d.get('key_id')!r}, not the registered key {key_id(public_key)}"
    try:
        signature = base64.b64decode(str(sig), validate=True)
    except (binascii.Error, ValueError):
        return "signature is not base64"
    stream = record.get("stream")
    if not isinstance(stream, str):
        return "the record has no stream"
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            signature, checkpoint_message(gateway_id, stream, head_seq, head_hash)
        )
    except InvalidSignature:
        return "bad signature"
    except ValueError as exc:
        return f"bad public key: {exc}"
    return None


def verify_checkpoint(record: Mapping[str, Any], gateway_id: str, public_key_bytes: bytes) -> bool:
    """True when the ``chain_checkpoint`` record is signed by ``public_key_bytes`` for this gateway and stream."""
    return checkpoint_problem(record, gateway_id, public_key_bytes) is None


def is_checkpoint(record: Mapping[str, Any]) -> bool:
    return record.get("type") == "event" and record.get("event") == CHECKPOINT_EVENT


# -- verifying an exported chain ----------------------------------------------------------


@dataclass
class StreamCheck:
    """What :class:`ChainVerifier` found in one stream."""

    stream: str
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    gaps: list[list[int]] = field(default_factory=list)
    problems: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: int = 0
    verified_checkpoints: int = 0
    signed_through: int = 0  # the highest head_seq of a verified checkpoint
    set_aside: list[dict[str, Any]] = field(default_factory=list)
    #: a segment (``from_seq`` > 1): the prev_hash its first record links to, unverifiable here
    anchor_prev_hash: str | None = None

    @property
    def ok(self) -> bool:
        return self.records > 0 and not self.gaps and not self.problems and self.verified_checkpoints > 0

    def as_json(self) -> dict[str, Any]:
        out = {k: v for k, v in vars(self).items()}
        out["unsigned_after"] = self.signed_through if self.last_seq and self.signed_through < self.last_seq else None
        out["verdict"] = "complete-and-verified" if self.ok else "not-verified"
        return out


class ChainVerifier:
    """Walks records in the order they were chained and says what is wrong with them.

    Feed records with :meth:`add` in file order (an export is the chain, line by line):
    each record's hash is recomputed by RFC 8785, its ``prev_hash`` must be the hash of
    the record before it in its stream and its ``seq`` that one's plus one (a jump is a
    gap, a step back is a record out of order), and each ``chain_checkpoint`` must carry a
    valid signature over a ``head_hash`` equal to the hash of record ``head_seq``.

    ``from_seq`` > 1 checks a segment of a stream (a shipment's range): each stream must
    start at that seq, its first ``prev_hash`` is taken as the anchor (the hash of the
    record before, which the file does not hold), and the records before are not a gap.
    A checkpoint in the segment whose head is in the segment signs it all the same: the
    links run from the segment's start to that head. Only the caller knows that a file
    is meant to start there, so a segment is asked for, never inferred.
    """

    def __init__(self, gateway_id: str | None, public_key: bytes | None, *, from_seq: int = 1) -> None:
        self.gateway_id = gateway_id
        self.public_key = public_key
        self.from_seq = from_seq
        self.streams: dict[str, StreamCheck] = {}
        self._head: dict[str, tuple[int, str]] = {}
        self._hashes: dict[tuple[str, int], str] = {}

    def _problem(self, s: StreamCheck, where: str, seq: Any, why: str, detail: str) -> None:
        s.problems.append({"at": where, "seq": seq, "why": why, "detail": detail})

    def add(self, record: Mapping[str, Any], where: str = "") -> None:
        stream, seq = record.get("stream"), record.get("seq")
        if not isinstance(stream, str) or type(seq) is not int:
            s = self.streams.setdefault("?", StreamCheck("?"))
            self._problem(s, where, seq, "malformed", "a record needs a string stream and an integer seq")
            return
        s = self.streams.setdefault(stream, StreamCheck(stream))
        s.records += 1
        s.first_seq = seq if s.first_seq is None else min(s.first_seq, seq)
        s.last_seq = seq if s.last_seq is None else max(s.last_seq, seq)
        if not verify_record(record):
            self._problem(s, where, seq, "bad hash", "the hash does not match the record's content")
        if stream not in self._head and self.from_seq > 1:
            if seq == self.from_seq:
                s.anchor_prev_hash = str(record.get("prev_hash"))
                self._head[stream] = (seq - 1, s.anchor_prev_hash)
            else:
                self._problem(s, where, seq, "segment start",
                              f"the stream starts at seq {seq} here, not at the seq {self.from_seq} asked for")
                self._head[stream] = (self.from_seq - 1, "")
        prev_seq, prev_hash = self._head.get(stream, (0, ZERO_HASH))
        if seq <= prev_seq:
            self._problem(s, where, seq, "out of order", f"seq {seq} comes after seq {prev_seq}")
        else:
            if seq > prev_seq + 1:
                s.gaps.append([prev_seq + 1, seq - 1])
            elif record.get("prev_hash") != prev_hash:
                self._problem(s, where, seq, "prev_hash mismatch", f"prev_hash is not the hash of seq {prev_seq}")
            self._head[stream] = (seq, str(record.get("hash")))
        self._hashes[(stream, seq)] = str(record.get("hash"))
        if is_checkpoint(record):
            self._checkpoint(s, record, where, seq)
        elif record.get("type") == "event" and record.get("event") == SET_ASIDE_EVENT:
            d = record.get("details")
            if isinstance(d, Mapping):
                s.set_aside.append({k: d.get(k) for k in ("first_seq", "last_seq", "count", "status", "reason")})

    def _checkpoint(self, s: StreamCheck, record: Mapping[str, Any], where: str, seq: int) -> None:
        s.checkpoints += 1
        if self.public_key is None or self.gateway_id is None:
            self._problem(s, where, seq, "checkpoint unchecked", "no public key or gateway id to check it with")
            return
        why = checkpoint_problem(record, self.gateway_id, self.public_key)
        if why is None:
            d = record["details"]
            held = self._hashes.get((s.stream, d["head_seq"]))
            if held is None:
                why = f"covers seq {d['head_seq']}, which is not in the export"
            elif held != d["head_hash"]:
                why = f"head_hash is not the hash of seq {d['head_seq']}: the chain was rewritten"
        if why is not None:
            self._problem(s, where, seq, "bad checkpoint", why)
            return
        s.verified_checkpoints += 1
        s.signed_through = max(s.signed_through, record["details"]["head_seq"])

    def add_all(self, records: Iterable[Mapping[str, Any]]) -> ChainVerifier:
        for i, r in enumerate(records, 1):
            self.add(r, f"record {i}")
        return self

    @property
    def ok(self) -> bool:
        return bool(self.streams) and all(s.ok for s in self.streams.values())
