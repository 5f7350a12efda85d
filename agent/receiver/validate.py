"""Turning a request body into a batch, or into the precise reason it is refused.

Two kinds of refusal, as the answers table of ``docs/protocol.md`` has them:

* :class:`Unparseable` (400): not gzip when it says so, not UTF-8, not JSON.
* :class:`SchemaViolation` (422): JSON, but not a version-1 batch. It carries *every*
  problem found (up to a limit), each with its path, so a client author fixes them all
  at once.
* :class:`TooLarge` (413): the body, once decompressed, is over the limit, or holds more
  JSON values than a batch can (:data:`MAX_RECORDS` records of :data:`VALUES_PER_RECORD`
  values on average). Decompression streams and stops at the limit, and the values are
  counted on the bytes before anything is parsed, so a small gzip bomb costs no more
  memory than a legitimate large batch (parsing 8 MiB of ``[{},{},…]`` would take 200 MB).

Nesting deeper than :data:`agent.protocol.MAX_DEPTH` in a record is a 422 with its path,
measured without recursion (700-deep ``details`` once dropped the connection with a
traceback).

A record whose ``hash`` does not match its content is *not* refused here: it is stored
and reported as a chain break, because refusing it would hide the evidence.
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass
from typing import Any

from agent import protocol
from agent.exc import BodyError, SchemaViolation, TooLarge, Unparseable  # noqa: F401 - BodyError: validate.BodyError
from agent.protocol import MAX_DEPTH, PROTOCOL_VERSION, depth

MAX_PROBLEMS = 20
#: records in one batch (the agent sends ``uplink.batch_size``, 500 by default)
MAX_RECORDS = 5000
#: JSON values per record, on average over a batch, counted as commas (conservatively)
VALUES_PER_RECORD = 64
#: objects and arrays per record, on average over a batch
CONTAINERS_PER_RECORD = 16
_TS = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z"
_HEX = r"[0-9a-f]{64}"
# \Z, not $: "$" also matches before a trailing newline
TIMESTAMP = re.compile(_TS + r"\Z", re.ASCII)
HEX64 = re.compile(_HEX + r"\Z")
#: a reading's ts, prev_hash and hash joined by spaces, checked in one match
_TS_PREV_HASH = re.compile(f"{_TS} {_HEX} {_HEX}", re.ASCII)
TYPES = {"reading", "alarm", "event"}
TIME_QUALITIES = {"synced", "unsynced", "corrected"}
ALARM_STATES = {"raised", "cleared", "acknowledged"}
SEVERITIES = {"warning", "alarm"}




@dataclass(frozen=True)
class Batch:
    """A valid batch: one gateway, one stream, records strictly ascending by ``seq``."""

    gateway_id: str
    stream: str
    records: list[dict[str, Any]]
    #: the gateway's running config (``{"version", "sha256", "signer"}``), when it said
    config: dict[str, Any] | None = None
    sent_at: str | None = None

    @property
    def first_seq(self) -> int:
        return int(self.records[0]["seq"])

    @property
    def last_seq(self) -> int:
        return int(self.records[-1]["seq"])


def decode_body(raw: bytes, encoding: str | None, max_bytes: int) -> bytes:
    """The body decompressed (``gzip`` or none), never more than ``max_bytes`` of it."""
    enc = (encoding or "identity").strip().lower()
    if enc in ("", "identity"):
        if len(raw) > max_bytes:
            raise TooLarge(f"body is {len(raw)} bytes, over the limit of {max_bytes}")
        return raw
    if enc != "gzip":
        raise Unparseable(f"Content-Encoding {encoding!r} is not supported (gzip or none)")
    out = bytearray()
    data = raw
    try:
        while data:
            d = zlib.decompressobj(wbits=31)  # gzip framing only
            # max_length bounds the output: a bomb stops at the limit, it is never expanded whole.
            out += d.decompress(data, max_bytes + 1 - len(out))
            if len(out) > max_bytes:
                raise TooLarge(f"decompressed body is over the limit of {max_bytes} bytes")
            if not d.eof:
                if d.unconsumed_tail:
                    raise TooLarge(f"decompressed body is over the limit of {max_bytes} bytes")
                raise Unparseable("gzip body is truncated")
            data = d.unused_data  # gzip allows several members, one after another
    except zlib.error as exc:
        raise Unparseable(f"body is not valid gzip: {exc}") from None
    return bytes(out)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def check_size(body: bytes) -> int:
    """Refuse (413) a body with more values than a batch can hold, before parsing allocates them;
    the count of ``{`` and ``[`` in it (an upper bound of its objects and arrays)."""
    if body.count(b",") > VALUES_PER_RECORD * MAX_RECORDS:
        raise TooLarge(f"body holds more JSON values than a batch may ({VALUES_PER_RECORD * MAX_RECORDS})")
    containers = body.count(b"{") + body.count(b"[")
    if containers > CONTAINERS_PER_RECORD * MAX_RECORDS:
        raise TooLarge(f"body holds more objects and arrays than a batch may ({CONTAINERS_PER_RECORD * MAX_RECORDS})")
    return containers


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_no_constants)
    except UnicodeDecodeError as exc:
        raise Unparseable(f"body is not UTF-8: {exc}") from None
    except (ValueError, RecursionError) as exc:
        raise Unparseable(f"body is not JSON: {exc}") from None


def _one_of(v: Any, choices: frozenset[str] | set[str]) -> bool:
    """``v`` is one of these strings (a list or an object is not, and is no TypeError either)."""
    return type(v) is str and v in choices


def _is_int(v: Any) -> bool:
    return type(v) is int


def _is_number(v: Any) -> bool:
    return type(v) in (int, float)


def _nonempty_str(v: Any) -> bool:
    """A non-empty string of printable characters: no NUL (which PostgreSQL text cannot hold), no
    control characters, no lone surrogates (which no UTF-8 column can hold) in an id."""
    return isinstance(v, str) and bool(v) and v.isprintable()


_NUMBER = (int, float)


def _quick_ok(r: Any) -> bool:
    """True for a well-formed reading, checked fast; anything else gets :func:`_check_record`."""
    if type(r) is not dict or r.get("type") != "reading":
        return False
    try:
        seq, stream, ts, prev, h = r["seq"], r["stream"], r["ts"], r["prev_hash"], r["hash"]
        sensor, quantity, unit, value, tq = r["sensor_id"], r["quantity"], r["unit"], r["value"], r["time_quality"]
    except KeyError:
        return False
    return bool(  # this runs for every record a fleet sends: one regex, one isprintable
        type(seq) is int
        and seq >= 1
        and type(value) in _NUMBER
        and type(tq) is str
        and tq in TIME_QUALITIES
        and type(ts) is str
        and type(prev) is str
        and type(h) is str
        and _TS_PREV_HASH.fullmatch(f"{ts} {prev} {h}")
        and type(stream) is str
        and type(sensor) is str
        and type(quantity) is str
        and type(unit) is str
        and stream
        and sensor
        and quantity
        and unit
        and (stream + sensor + quantity + unit).isprintable()
    )


def _check_record(i: int, r: Any, problems: list[str]) -> None:
    at = f"records[{i}]"
    if not isinstance(r, dict):
        problems.append(f"{at}: must be an object")
        return

    def need(key: str, ok: bool, what: str) -> None:
        if key not in r:
            problems.append(f"{at}.{key}: missing")
        elif not ok:
            problems.append(f"{at}.{key}: must be {what}, not {r[key]!r}"[:200])

    need("stream", _nonempty_str(r.get("stream")), "a non-empty printable string")
    need("seq", _is_int(r.get("seq")) and r.get("seq", 0) >= 1, "an integer >= 1")
    need("type", _one_of(r.get("type"), TYPES), "one of " + ", ".join(sorted(TYPES)))
    need(
        "ts",
        isinstance(r.get("ts"), str) and bool(TIMESTAMP.match(r["ts"])),
        "an RFC 3339 UTC timestamp with milliseconds and Z",
    )
    need("time_quality", _one_of(r.get("time_quality"), TIME_QUALITIES), "one of " + ", ".join(sorted(TIME_QUALITIES)))
    need(
        "prev_hash",
        isinstance(r.get("prev_hash"), str) and bool(HEX64.match(r["prev_hash"])),
        "64 lowercase hex digits",
    )
    need("hash", isinstance(r.get("hash"), str) and bool(HEX64.match(r["hash"])), "64 lowercase hex digits")
    kind = r.get("type")
    if kind == "reading":
        need("sensor_id", _nonempty_str(r.get("sensor_id")), "a non-empty printable string")
        need("quantity", _nonempty_str(r.get("quantity")), "a non-empty printable string")
        need("value", _is_number(r.get("value")), "a number")
        need("unit", _nonempty_str(r.get("unit")), "a non-empty printable string")
    elif kind == "alarm":
        for key in ("alarm_id", "rule", "sensor_id"):
            need(key, _nonempty_str(r.get(key)), "a non-empty printable string")
        need("state", _one_of(r.get("state"), ALARM_STATES), "one of " + ", ".join(sorted(ALARM_STATES)))
        need("severity", _one_of(r.get("severity"), SEVERITIES), "one of " + ", ".join(sorted(SEVERITIES)))
        need(
            "started_at",
            isinstance(r.get("started_at"), str) and bool(TIMESTAMP.match(r["started_at"])),
            "an RFC 3339 UTC timestamp with milliseconds and Z",
        )
    elif kind == "event":
        need("event", _nonempty_str(r.get("event")), "a non-empty printable string")
        need("details", isinstance(r.get("details"), dict), "an object")


def _check_depth(i: int, r: dict[str, Any], problems: list[str]) -> None:
    for key, v in r.items():
        if type(v) in (dict, list) and depth(v) >= MAX_DEPTH:  # the record itself is one level
            problems.append(f"records[{i}].{key}: objects and arrays nest deeper than {MAX_DEPTH}"[:200])


def _check_config(cfg: Any, problems: list[str]) -> dict[str, Any] | None:
    if cfg is None:
        return None
    if not isinstance(cfg, dict):
        problems.append("config: must be an object {version, sha256, signer}")
        return None
    version = cfg.get("version")
    if not (type(version) is int or _nonempty_str(version)):
        problems.append(f"config.version: must be an integer or a non-empty printable string, not {version!r}"[:200])
    sha = cfg.get("sha256")
    if sha is not None and not (isinstance(sha, str) and HEX64.match(sha)):
        problems.append("config.sha256: must be 64 lowercase hex digits or null")
    signer = cfg.get("signer")
    if signer is not None and not _nonempty_str(signer):
        problems.append(f"config.signer: must be a key id or null, not {signer!r}"[:200])
    if depth(cfg) > 2:
        problems.append("config: nests too deep")
    return cfg


def validate_batch(doc: Any, idempotency_key: str | None, *, containers: int | None = None) -> Batch:
    """The batch in ``doc``, or :class:`SchemaViolation` listing every problem found.

    ``containers``: how many ``{`` and ``[`` the body's bytes hold, when known; when that
    is no more than the batch's own objects and arrays (root, ``records``, ``config``, one
    object per record), no record nests anything and the depth check is skipped (a
    bracket inside a string only makes the count larger, never smaller).
    """
    problems: list[str] = []
    if not isinstance(doc, dict):
        raise SchemaViolation("body must be a JSON object", ["<root>: must be an object"])
    if doc.get("protocol") != PROTOCOL_VERSION or type(doc.get("protocol")) is not int:
        problems.append(f"protocol: must be {PROTOCOL_VERSION}, not {doc.get('protocol')!r}"[:200])
    gateway_id = doc.get("gateway_id")
    if not _nonempty_str(gateway_id):
        problems.append(f"gateway_id: must be a non-empty printable string, not {gateway_id!r}"[:200])
    sent_at = doc.get("sent_at")
    if not (isinstance(sent_at, str) and TIMESTAMP.match(sent_at)):
        problems.append(f"sent_at: must be an RFC 3339 UTC timestamp with milliseconds and Z, not {sent_at!r}")
    config = _check_config(doc.get("config"), problems)
    records = doc.get("records")
    if not isinstance(records, list) or not records:
        problems.append("records: must be a non-empty array")
        records = []
    elif len(records) > MAX_RECORDS:
        problems.append(f"records: {len(records)} in one batch, more than {MAX_RECORDS}")
        records = []
    flat = containers is not None and containers <= 2 + len(records) + (type(doc.get("config")) is dict)
    for i, r in enumerate(records):
        if not _quick_ok(r):
            _check_record(i, r, problems)
        if not flat and isinstance(r, dict) and any(type(v) in (dict, list) for v in r.values()):
            _check_depth(i, r, problems)
        if len(problems) >= MAX_PROBLEMS:
            break
    if not problems:
        streams = {r["stream"] for r in records}
        if len(streams) > 1:
            problems.append(f"records: one batch carries one stream, this one has {len(streams)}")
        for i in range(1, len(records)):
            if records[i]["seq"] <= records[i - 1]["seq"]:
                problems.append(
                    f"records[{i}].seq: {records[i]['seq']} after {records[i - 1]['seq']}; records must be strictly ascending by seq"
                )
                break
    if not problems:
        expected = protocol.idempotency_key(str(gateway_id), records[0]["stream"], records[0]["seq"], records[-1]["seq"])
        if idempotency_key is None:
            problems.append(f"Idempotency-Key header: missing (expected {expected!r})")
        elif idempotency_key != expected:
            problems.append(f"Idempotency-Key header: {idempotency_key!r} does not match the records ({expected!r})")
    if problems:
        raise SchemaViolation(f"not a valid protocol 1 batch: {len(problems)} problem(s)", problems[:MAX_PROBLEMS])
    return Batch(
        gateway_id=str(gateway_id), stream=records[0]["stream"], records=records, config=config, sent_at=sent_at
    )


def read_batch(raw: bytes, encoding: str | None, max_bytes: int, idempotency_key: str | None) -> Batch:
    """Everything a front end does with a request body, in order: inflate under the limit, count
    the values, parse, validate. Raises a :class:`BodyError` (400, 413 or 422) saying why not.

    For every front end (HTTP, an MQTT consumer): the bounds then hold whichever way a batch came.
    """
    body = decode_body(raw, encoding, max_bytes)
    containers = check_size(body)
    return validate_batch(parse_json(body), idempotency_key, containers=containers)
