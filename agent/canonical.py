"""Canonical JSON (RFC 8785, JCS) and the record hash chain of PROTOCOL.md.

``hash = SHA-256(prev_hash (hex, UTF-8) || JCS(record without "hash"))``.

:func:`canonical` uses the ``rfc8785`` library, except on a fast path for the records the
agent writes at tens of thousands a second: flat objects of ASCII-keyed strings, ints,
bools and floats whose shortest round-trip form is the same in Python and ECMAScript.
There, ``json.dumps`` with sorted keys and no spaces is byte-for-byte the JCS form (a
property test checks it against ``rfc8785`` on random records). Anything else takes the
library.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

import rfc8785

ZERO_HASH = "0" * 64

_encode = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False).encode


def _fast_value(v: Any) -> Any:
    """The value ready for json.dumps, or raise ValueError where only rfc8785 will do."""
    t = type(v)
    if t is str or t is bool or v is None:
        return v
    if t is int:
        if -(2**53) < v < 2**53:
            return v
        raise ValueError
    if t is float:
        if not math.isfinite(v):
            raise ValueError
        if v.is_integer() and abs(v) < 2**53:
            return int(v)  # ECMAScript writes 25.0 as 25
        a = abs(v)
        if 1e-4 <= a < 1e16:  # where Python's repr and ECMAScript's are both plain decimals
            return v
    raise ValueError


def canonical(obj: Mapping[str, Any]) -> bytes:
    """RFC 8785 canonical JSON of ``obj``, as UTF-8 bytes."""
    try:
        flat: dict[str, Any] = {}
        for k, v in obj.items():
            if not k.isascii():
                raise ValueError
            flat[k] = _fast_value(v)
    except ValueError:
        return rfc8785.dumps(_jsonable(obj))
    return _encode(flat).encode("utf-8")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and obj.is_integer() and abs(obj) < 2**53:
        return int(obj)
    return obj


def record_hash(prev_hash: str, body: bytes) -> str:
    """The ``hash`` of a record whose canonical form without ``hash`` is ``body``."""
    h = hashlib.sha256(prev_hash.encode("ascii"))
    h.update(body)
    return h.hexdigest()


def verify(record: Mapping[str, Any]) -> bool:
    """True when ``record["hash"]`` matches its content and its ``prev_hash``."""
    body = {k: v for k, v in record.items() if k != "hash"}
    prev = record.get("prev_hash")
    if not isinstance(prev, str):
        return False
    return record_hash(prev, canonical(body)) == record.get("hash")
