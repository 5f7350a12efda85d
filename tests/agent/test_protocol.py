"""agent.protocol: one definition of canonical JSON, hashing, framing and keys for both sides."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import canonical as fast
from agent import protocol
from agent.protocol import ZERO_HASH, ProtocolError

# Records the way the store writes them: the store's own members, then the caller's.
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e15, max_value=1e15),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(max_size=16),
)
_details = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=10,
)
_records = st.fixed_dictionaries(
    {
        "stream": st.uuids().map(str),
        "seq": st.integers(min_value=1, max_value=2**40),
        "type": st.sampled_from(["reading", "alarm", "event"]),
        "ts": st.just("2026-11-23T08:15:02.125Z"),
        "time_quality": st.sampled_from(["synced", "unsynced", "corrected"]),
        "prev_hash": st.text("0123456789abcdef", min_size=64, max_size=64),
    },
    optional={
        "value": _scalars,
        "sensor_id": st.text(min_size=1, max_size=12),
        "unit": st.sampled_from(["Cel", "%RH", "m/s2", "°C"]),
        "raw": _scalars,
        "details": st.dictionaries(st.text(max_size=8), _details, max_size=4),
        "extra ünï": _scalars,
    },
)


def _big_float(obj: object) -> bool:
    if isinstance(obj, dict):
        return any(_big_float(v) for v in obj.values())
    if isinstance(obj, list):
        return any(_big_float(v) for v in obj)
    return isinstance(obj, float) and abs(obj) >= 2**53


@settings(max_examples=300, deadline=None)
@given(_records)
def test_producer_fast_path_and_protocol_canonical_agree_on_generated_records(record: dict) -> None:
    try:
        produced = fast.canonical(record)
    except ValueError:
        # the producer refuses integral floats beyond 2**53 (never verifiable); nothing else
        assert _big_float(record)
        return
    assert produced == protocol.canonical(record)
    h = protocol.record_hash(record["prev_hash"], produced)
    # what the store writes verifies by the protocol, and the record as parsed from the wire too
    assert protocol.verify_record({**record, "hash": h})
    assert protocol.verify_record(json.loads(json.dumps({**record, "hash": h})))


_any_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**60), max_value=2**60),
              st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=16,
)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.text(max_size=8), _any_json, max_size=8))
def test_the_stdlib_encoder_path_writes_rfc8785_bytes_or_declines(record: dict) -> None:
    got = protocol.canonical_stdlib(record)
    if got is None:
        return
    assert got == rfc8785.dumps(record)


@settings(max_examples=300, deadline=None)
@given(_records)
def test_the_stdlib_encoder_path_takes_every_ordinary_record(record: dict) -> None:
    record = {k: v for k, v in record.items() if k.isascii()}  # what the agent writes: ASCII keys
    record.update({"value": 4.25, "raw": "x", "details": {"n": 3, "s": "ok"}})
    assert protocol.canonical_stdlib(record) == protocol.canonical(record)


@pytest.mark.parametrize("value", [25.0, -0.0, 1e-7, 1e16, 2**53, 2**60, float("nan"), "\udc00", {"ü": 1}, (1, 2)])
def test_the_stdlib_encoder_path_declines_what_it_would_write_otherwise_than_rfc8785(value: object) -> None:
    assert protocol.canonical_stdlib({"value": value}) is None


def _old_splice(gateway_id: str, sent_at: str, batch: list[tuple[int, str, str]]) -> bytes:
    """The framing agent/sync.py wrote by hand before frame_batch existed (kept to hold it to the same bytes)."""
    records = ",".join(f'{body[:-1]},"hash":"{h}"}}' for _, body, h in batch)
    head = json.dumps({"protocol": 1, "gateway_id": gateway_id, "sent_at": sent_at})
    return f'{head[:-1]},"records":[{records}]}}'.encode()


def _stored(n: int) -> list[tuple[int, str, str]]:
    out, prev = [], ZERO_HASH
    for seq in range(1, n + 1):
        body = protocol.canonical({"stream": "s", "seq": seq, "type": "reading", "value": seq / 4, "prev_hash": prev})
        prev = protocol.record_hash(prev, body)
        out.append((seq, body.decode(), prev))
    return out


def test_frame_batch_writes_the_bytes_the_uplink_sent_before_and_adds_config_only_when_given() -> None:
    batch = _stored(5)
    sent_at = "2026-11-23T08:15:02.125Z"
    assert protocol.frame_batch("gw-ü", batch, sent_at=sent_at) == _old_splice("gw-ü", sent_at, batch)
    cfg = {"version": "2026.11-3", "sha256": "a" * 64, "signer": None}
    doc = json.loads(protocol.frame_batch("gw-1", batch, sent_at=sent_at, config=cfg))
    assert doc["config"] == cfg
    assert [protocol.verify_record(r) for r in doc["records"]] == [True] * 5


def test_the_uplink_frames_its_batches_with_frame_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.timebase import rfc3339
    from agent.uplink import http
    from agent.uplink.base import Batch

    records = [(1, '{"a":1,"seq":1}', "h" * 64), (2, '{"a":2,"seq":2}', "k" * 64)]
    batch = Batch("gw-1", "s-1", records, {"version": 3, "sha256": "a" * 64, "signer": None})
    assert http.frame(batch, 1_790_000_000.0) == protocol.frame_batch(
        "gw-1", records, sent_at=rfc3339(1_790_000_000.0), config=batch.config)
    assert batch.key == protocol.idempotency_key("gw-1", "s-1", 1, 2)


def test_idempotency_key_round_trips_and_a_malformed_key_is_a_protocol_error() -> None:
    key = protocol.idempotency_key("gw.1-a", "0b1f6d1e-8a6c-4e0e-9a57-4c1e1d6b2f10", 7, 42)
    assert key == "gw.1-a:0b1f6d1e-8a6c-4e0e-9a57-4c1e1d6b2f10:7-42"
    assert protocol.parse_idempotency_key(key) == ("gw.1-a", "0b1f6d1e-8a6c-4e0e-9a57-4c1e1d6b2f10", 7, 42)
    for bad in ("gw:s:5-4", "gw:s:0-3", "gw:s:1", "s:1-2", "gw:s:a-b"):
        with pytest.raises(ProtocolError):
            protocol.parse_idempotency_key(bad)


def test_verify_record_catches_an_edited_value_and_content_with_no_canonical_form() -> None:
    (seq, body, h), = _stored(1)
    record = {**json.loads(body), "hash": h}
    assert protocol.verify_record(record)
    assert not protocol.verify_record({**record, "value": 0.3})
    assert not protocol.verify_record({**record, "value": 2**60})  # rfc8785 refuses: cannot verify
    assert not protocol.verify_record({**record, "prev_hash": "x"})


def test_depth_is_measured_without_recursion_and_stops_early() -> None:
    deep: object = 1
    for _ in range(100_000):
        deep = [deep]
    assert protocol.depth({"a": {"b": [1]}}) == 3
    assert protocol.depth(deep) > protocol.MAX_DEPTH


def test_the_receiver_imports_nothing_of_the_agents_runtime() -> None:
    code = (
        "import sys, agent.receiver, agent.receiver.server, agent.receiver.validate, agent.receiver.report\n"
        "import agent.receiver.mqtt, agent.receiver.pg_backend\n"
        "import agent.cli.receiver_cmd, agent.cli.verify_cmd\n"
        "bad = sorted(m for m in sys.modules if m in {'agent.store', 'agent.daemon', 'agent.ingest', 'agent.config',"
        " 'agent.timebase', 'agent.sync', 'agent.status', 'agent.canonical', 'agent.rules', 'agent.uplink'}"
        " or m.startswith(('agent.rules.', 'agent.uplink.', 'drivers.ble', 'bleak', 'serial', 'pymodbus')))\n"
        "print(' '.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == ""
