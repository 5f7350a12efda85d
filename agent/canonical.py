"""The producer's fast canonical JSON (RFC 8785, JCS) for the record hash chain of ``docs/protocol.md``.

``hash = SHA-256(prev_hash (hex, UTF-8) || JCS(record without "hash"))``. The protocol
itself (hashing, verification, framing) is :mod:`agent.protocol`; this module is only the
store's hot path, and nothing verifies through it.

:func:`canonical` uses the ``rfc8785`` library, except on a fast path for the records the
agent writes at tens of thousands a second: flat objects of ASCII-keyed strings, ints,
bools and floats whose shortest round-trip form is the same in Python and ECMAScript.
There the members are written in sorted key order (planned once per key set) with each
value in its JCS form, byte-for-byte what the library writes (a property test checks it
against ``rfc8785`` on random records). Anything else takes the library.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import rfc8785

from agent.exc import NeedsLibrary
from agent.protocol import ZERO_HASH, record_hash

__all__ = ["ZERO_HASH", "NeedsLibrary", "canonical", "canonical_with", "record_hash", "scalar", "template", "verify"]

_dumps_str = json.JSONEncoder(ensure_ascii=False).encode
_BIG = 2**53

#: key order and '"key":' heads per key set (records of one type share a few key sets)
_PLANS: dict[tuple[str, ...], tuple[tuple[str, ...], tuple[str, ...]]] = {}
#: JSON forms of strings seen lately (sensor ids, units, the stream id repeat endlessly)
_STRINGS: dict[str, str] = {}



def _plan(keys: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    plan = _PLANS.get(keys)
    if plan is None:
        for k in keys:
            if not (type(k) is str and k.isascii() and _dumps_str(k) == f'"{k}"'):
                raise NeedsLibrary
        order = tuple(sorted(keys))  # code-point order = UTF-16 order for ASCII keys
        plan = (order, tuple(f'"{k}":' for k in order))
        if len(_PLANS) < 256:
            _PLANS[keys] = plan
    return plan


def _string(v: str) -> str:
    e = _STRINGS.get(v)
    if e is None:
        if v.isascii() and v.isprintable() and '"' not in v and "\\" not in v:
            e = f'"{v}"'
        else:
            e = _dumps_str(v)  # escapes exactly what JCS escapes, with the same short forms
        if len(_STRINGS) >= 4096:
            _STRINGS.clear()
        _STRINGS[v] = e
    return e


def _value(v: Any) -> str:
    t = type(v)
    if t is str:
        return _string(v)
    if t is float:
        if v.is_integer():
            if -_BIG < v < _BIG:
                return str(int(v))  # ECMAScript writes 25.0 as 25 (and -0.0 as 0)
            raise NeedsLibrary  # the library refuses integral floats beyond 2**53: so do we
        if 1e-4 <= abs(v) < 1e16:  # where Python's repr and ECMAScript's are both plain decimals
            return repr(v)
        raise NeedsLibrary  # exponent forms differ, and NaN/Infinity are not JSON
    if t is int:
        if -_BIG < v < _BIG:
            return str(v)
        raise NeedsLibrary
    if t is bool:
        return "true" if v else "false"
    if v is None:
        return "null"
    raise NeedsLibrary


def canonical(obj: Mapping[str, Any]) -> bytes:
    """RFC 8785 canonical JSON of ``obj``, as UTF-8 bytes."""
    try:
        order, heads = _plan(tuple(obj))
        body = ",".join([head + _value(obj[k]) for k, head in zip(order, heads, strict=True)])
    except NeedsLibrary:
        return rfc8785.dumps(_jsonable(obj))
    return ("{" + body + "}").encode("utf-8")


def scalar(v: Any) -> str:
    """The JCS text of one string, number, boolean or null; NeedsLibrary otherwise."""
    return _value(v)


def template(fixed: Mapping[str, Any], slots: Mapping[str, str]) -> str | None:
    """A ``%``-format string of the JCS form of ``{**fixed, **slots}``.

    ``fixed`` values are encoded now; each slot stands where its key sorts, holding the
    given conversion (``'"%s"'`` for a string known to need no escaping, ``"%d"``, or
    ``"%s"`` for JCS text). The arguments go in the slots' sorted key order. None when a
    fixed value needs the library.
    """
    try:
        members = {k: _value(v).replace("%", "%%") for k, v in fixed.items()}
        members.update(slots)
        order, heads = _plan(tuple(members))
    except NeedsLibrary:
        return None
    return "{" + ",".join(h.replace("%", "%%") + members[k] for k, h in zip(order, heads, strict=True)) + "}"


def canonical_with(encoded: Mapping[str, str], fields: Mapping[str, Any]) -> bytes:
    """RFC 8785 form of ``{**encoded, **fields}`` where ``encoded`` values are already JSON.

    For the store's own members (stream, seq, ts, prev_hash…), whose JSON form it knows,
    so that only the caller's fields need checking. ``encoded`` must hold JCS text.
    """
    try:
        members = {k: _value(v) for k, v in fields.items()}
        members.update(encoded)
        order, heads = _plan(tuple(members))
    except NeedsLibrary:
        return canonical({**{k: json.loads(v) for k, v in encoded.items()}, **fields})
    return ("{" + ",".join([h + members[k] for k, h in zip(order, heads, strict=True)]) + "}").encode("utf-8")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and math.isfinite(obj) and abs(obj) >= _BIG:
        # the library writes 2**53 as 9007199254740992, which it refuses to read back as an
        # integer: a record holding it could never be verified, so it is not written
        raise NeedsLibrary(f"{obj!r} is beyond the numbers JSON carries exactly (2**53)")
    if isinstance(obj, float) and obj.is_integer():
        return int(obj)
    return obj


def verify(record: Mapping[str, Any]) -> bool:
    """True when ``record["hash"]`` matches its content and its ``prev_hash``."""
    body = {k: v for k, v in record.items() if k != "hash"}
    prev = record.get("prev_hash")
    if not isinstance(prev, str):
        return False
    return record_hash(prev, canonical(body)) == record.get("hash")
