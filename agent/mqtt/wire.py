"""The coldgate MQTT wire format: topics, the batch envelope, the consumer's answer.

Pure functions with no paho import, shared by the agent's transport
(:mod:`agent.uplink.mqtt`) and the central consumer (:mod:`agent.receiver.mqtt`), so the
two ends cannot drift apart. ``docs/mqtt.md`` is the page a third-party consumer author
reads; this module is what it describes.

Topics (``prefix`` defaults to ``coldgate``)::

    <prefix>/<gateway_id>/batches   gateway -> consumers   one batch per message, QoS 1
    <prefix>/<gateway_id>/acks      consumer -> gateway     one answer per batch, QoS 1

A batch message is an *envelope*: one line of JSON, a newline, then the HTTP body of the
batch byte for byte (gzip above 1 KiB, as over HTTP)::

    {"envelope":1,"idempotency_key":"gw:stream:1-500","attempt":"9f..","content_encoding":"gzip"}\\n<body>

The envelope, not MQTT 5 properties, is authoritative: it survives MQTT 3.1.1 brokers and
bridges that drop properties. An answer is one JSON object: the HTTP status the protocol
would have answered with, and the HTTP answer's fields (``stored``, ``duplicates``,
``conflicts``; or ``error``, ``problems``, ``retry_after``).
"""

from __future__ import annotations

import gzip
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from agent.exc import (
    AuthRefused,
    EnvelopeError,  # noqa: F401 - wire.EnvelopeError, as the consumer catches it
    SyncRejected,
    SyncTooLarge,
    SyncTransient,
)

if TYPE_CHECKING:  # the gateway's side only (batch_body, interpret): the consumer loads none of the uplink
    from agent.uplink.base import Answer, Batch

ENVELOPE_VERSION = 1
ANSWER_VERSION = 1
#: bodies above this are gzipped, as over HTTP (docs/protocol.md: "larger than 1 KiB")
GZIP_OVER = 1024
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
_LEVEL = re.compile(r"^[A-Za-z0-9._-]+$")


# -- topics ------------------------------------------------------------------------------


def check_prefix(prefix: str) -> str:
    """``prefix`` if it is one or more plain topic levels (no wildcard, no ``$``, no empty level)."""
    levels = prefix.split("/")
    if not prefix or not all(_LEVEL.match(level) for level in levels):
        raise ValueError("must be topic levels of letters, digits, '.', '_' or '-', separated by '/' "
                         "(no wildcards, no leading '$' or '/', no empty level)")
    return prefix


def batches_topic(prefix: str, gateway_id: str) -> str:
    return f"{prefix}/{gateway_id}/batches"


def acks_topic(prefix: str, gateway_id: str) -> str:
    return f"{prefix}/{gateway_id}/acks"


def shared_batches_filter(prefix: str, group: str) -> str:
    """The MQTT 5 shared subscription that splits every gateway's batches among consumers."""
    return f"$share/{group}/{prefix}/+/batches"


def gateway_of(prefix: str, topic: str) -> str | None:
    """The gateway id in ``<prefix>/<gateway_id>/batches``, or None for any other topic."""
    head, sep, rest = topic.partition(prefix + "/")
    if head or not sep:
        return None
    gateway_id, sep, tail = rest.partition("/")
    return gateway_id if sep and tail == "batches" and gateway_id else None


@dataclass(frozen=True)
class BrokerURL:
    """``mqtt://host[:port]`` (plain) or ``mqtts://host[:port]`` (TLS)."""

    tls: bool
    host: str
    port: int

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_broker_url(url: str) -> BrokerURL:
    """Parse a broker URL; ValueError says what is wrong. Credentials in it are refused:
    they belong in a file (``password_file``), never in a config value that gets shown."""
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise ValueError("must be mqtt://host[:port] or mqtts://host[:port]")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry credentials; use username and password_file")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("must be mqtt[s]://host[:port] with no path, query or fragment")
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError:
        raise ValueError("has an invalid port") from None
    return BrokerURL(parts.scheme == "mqtts", parts.hostname, port)


# -- the batch body and its envelope -----------------------------------------------------


def batch_body(batch: Batch, *, sent_at: float | None = None) -> bytes:
    """The protocol's request body for ``batch``, exactly as the HTTP uplink sends it
    (one framing for every transport: :func:`agent.protocol.frame_batch`)."""
    from agent.protocol import frame_batch
    from agent.timebase import rfc3339

    return frame_batch(batch.gateway_id, batch.records, sent_at=rfc3339(time.time() if sent_at is None else sent_at),
                       config=batch.config)


@dataclass(frozen=True)
class Envelope:
    """A batch message taken apart: its key, its attempt id and the body as sent."""

    idempotency_key: str | None
    attempt: str | None
    content_encoding: str
    body: bytes


def encode_envelope(key: str, body: bytes, attempt: str) -> bytes:
    """The MQTT payload for one batch: the envelope line, then the body (gzipped above 1 KiB)."""
    encoding = "identity"
    if len(body) > GZIP_OVER:
        body = gzip.compress(body, compresslevel=5)
        encoding = "gzip"
    head = {"envelope": ENVELOPE_VERSION, "idempotency_key": key, "attempt": attempt, "content_encoding": encoding}
    return json.dumps(head, separators=(",", ":")).encode() + b"\n" + body


def decode_envelope(payload: bytes) -> Envelope:
    """Take a batch message apart, or :class:`EnvelopeError` saying why it is not one."""
    line, sep, body = payload.partition(b"\n")
    if not sep:
        raise EnvelopeError("not a coldgate envelope: no header line")
    try:
        head = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise EnvelopeError("not a coldgate envelope: the header line is not JSON") from None
    if not isinstance(head, dict):
        raise EnvelopeError("not a coldgate envelope: the header line is not a JSON object")
    attempt = head.get("attempt") if isinstance(head.get("attempt"), str) else None
    if head.get("envelope") != ENVELOPE_VERSION:
        raise EnvelopeError(f"envelope version {head.get('envelope')!r} is not supported (1)", attempt)
    key = head.get("idempotency_key")
    encoding = head.get("content_encoding", "identity")
    if key is not None and not isinstance(key, str):
        raise EnvelopeError("idempotency_key must be a string", attempt)
    if not isinstance(encoding, str):
        raise EnvelopeError("content_encoding must be a string", attempt)
    return Envelope(key, attempt, encoding, body)


# -- answers -----------------------------------------------------------------------------


def encode_answer(key: str | None, attempt: str | None, status: int, fields: Mapping[str, Any]) -> bytes:
    """The consumer's answer to one batch: the protocol's status and its body's fields."""
    doc = {"answer": ANSWER_VERSION, "idempotency_key": key, "attempt": attempt, "status": status, **fields}
    return json.dumps(doc, separators=(",", ":")).encode()


def decode_answer(payload: bytes) -> dict[str, Any] | None:
    """An answer message as a dict, or None for anything that is not one (ignored)."""
    try:
        doc = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("answer") != ANSWER_VERSION or type(doc.get("status")) is not int:
        return None
    return doc


def answer_matches(doc: Mapping[str, Any], key: str, attempt: str) -> bool:
    """Is ``doc`` the answer to the batch in flight?

    A *stored* answer counts whichever attempt it answers: the key names the same records
    every time, and they are durably stored. A refusal counts only for this very attempt:
    a late 503 to an earlier attempt says nothing about this one.
    """
    if doc.get("status") == 200:
        return doc.get("idempotency_key") == key
    return doc.get("attempt") == attempt


def interpret(doc: Mapping[str, Any], batch: Batch) -> Answer:
    """The answer as an :class:`Answer`, or the protocol's refusal as the same exception as HTTP."""
    from agent.uplink.base import Answer

    status = int(doc["status"])
    where = f"batch {batch.first}-{batch.last}"
    error = str(doc.get("error", ""))[:300]
    problems = doc.get("problems")
    detail = error + (f" {problems[:3]}" if isinstance(problems, list) and problems else "")
    if status == 200:
        stored, dups, conflicts = doc.get("stored"), doc.get("duplicates"), doc.get("conflicts", 0)
        if type(stored) is not int or type(dups) is not int or type(conflicts) is not int:
            # acknowledging deletes data in the end: only the protocol's own answer is believed
            raise SyncTransient(f"answer to {where} without the protocol's counts: not acknowledged", status=200)
        extra = {k: v for k, v in doc.items()
                 if k not in ("answer", "status", "stored", "duplicates", "conflicts", "idempotency_key", "attempt")}
        return Answer(stored=stored, duplicates=dups, conflicts=conflicts, extra=extra)
    if status in (400, 422):
        raise SyncRejected(f"consumer rejected {where}: {status}: {detail}", status=status)
    if status == 413:
        raise SyncTooLarge(f"{where} too large for the consumer: 413", status=413)
    if status in (401, 403):
        raise AuthRefused(f"consumer refused {where}: {status}: {error}", status=status)
    retry_after = doc.get("retry_after")
    retry = float(retry_after) if isinstance(retry_after, int | float) and retry_after >= 0 else None
    raise SyncTransient(f"consumer answered {status} to {where}: {error}", status=status, retry_after=retry)
