"""The report: gaps, chain breaks (altered, reordered, deleted records), late links, stream linkage."""

from __future__ import annotations

from typing import Any

from agent.receiver import render_text
from tests.receiver.conftest import GATEWAY, Chain, rehash


def _renumber(records: list[dict[str, Any]], start: int) -> list[dict[str, Any]]:
    """The records given new seqs from ``start``, each re-hashed on its old prev_hash (a forger's best effort)."""
    return [rehash({**r, "seq": start + i}) for i, r in enumerate(records)]


def _breaks(s: dict[str, Any]) -> list[tuple[int, str]]:
    return [(b["seq"], b["why"]) for b in s["chain_breaks"]]


def test_complete_chain_is_verified_with_counts_by_type_and_time_quality(rx: Any) -> None:
    chain = Chain()
    recs = [
        chain.event("stream_started", {"reason": "new"}),
        chain.reading(time_quality="unsynced"),
        chain.reading(time_quality="corrected"),
        chain.alarm(),
        *chain.readings(6),
    ]
    rx.client.post(recs)
    s = rx.stream(chain.stream)
    assert s["verdict"] == "complete-and-verified" and s["verdict_reasons"] == []
    assert (s["records"], s["first_seq"], s["last_seq"], s["gaps"], s["missing"]) == (10, 1, 10, [], 0)
    assert s["by_type"] == {"alarm": 1, "event": 1, "reading": 8}
    assert s["time_quality"] == {"corrected": 1, "synced": 8, "unsynced": 1}
    assert s["chain_breaks"] == [] and s["conflicts"] == [] and s["duplicates"] == 0
    assert s["stream_started"]["reason"] == "new" and s["stream_started"]["previous_stream"] is None


def test_missing_seq_ranges_are_reported_as_gaps(rx: Any) -> None:
    chain = Chain()
    recs = chain.readings(10)
    rx.client.post(recs[0:3])
    rx.client.post([recs[5], recs[6], recs[9]])  # not contiguous: allowed (alarms go ahead of a backlog)
    s = rx.stream(chain.stream)
    assert s["gaps"] == [[4, 5], [8, 9]] and s["missing"] == 4
    assert s["verdict"] == "not-verified" and s["verdict_reasons"] == ["2 gap(s), 4 record(s) missing"]
    assert s["chain_breaks"] == []  # a link into a gap cannot be judged, and is not called broken


def test_records_missing_before_the_first_received_are_a_gap(rx: Any) -> None:
    chain = Chain()
    rx.client.post(chain.readings(5)[2:])
    assert rx.stream(chain.stream)["gaps"] == [[1, 2]]


def test_altered_value_with_its_hash_kept_is_a_bad_hash_at_that_seq(rx: Any) -> None:
    chain = Chain()
    recs = chain.readings(6)
    recs[3]["value"] = 2.5  # an edit that leaves the hash as it was
    rx.client.post(recs)
    s = rx.stream(chain.stream)
    assert _breaks(s) == [(4, "bad hash")]
    assert s["verdict"] == "not-verified"


def test_altered_value_rehashed_breaks_the_link_from_the_next_record(rx: Any) -> None:
    chain = Chain()
    recs = chain.readings(6)
    recs[3] = rehash({**recs[3], "value": 2.5})  # a forger who recomputes the record's own hash
    rx.client.post(recs)
    assert _breaks(rx.stream(chain.stream)) == [(5, "prev_hash mismatch")]


def test_reordered_records_break_the_chain(rx: Any) -> None:
    chain = Chain()
    recs = chain.readings(8)
    swapped = recs[:4] + _renumber([recs[5]], 5) + _renumber([recs[4]], 6) + recs[6:]
    rx.client.post(swapped)
    s = rx.stream(chain.stream)
    assert _breaks(s) == [(5, "prev_hash mismatch"), (6, "prev_hash mismatch"), (7, "prev_hash mismatch")]
    assert s["gaps"] == []


def test_deleted_record_is_a_gap(rx: Any) -> None:
    chain = Chain()
    recs = chain.readings(8)
    rx.client.post(recs[:4] + recs[5:])
    s = rx.stream(chain.stream)
    assert s["gaps"] == [[5, 5]] and s["verdict"] == "not-verified"


def test_deleted_record_hidden_by_renumbering_is_a_link_break(rx: Any) -> None:
    chain = Chain()
    recs = chain.readings(8)
    rx.client.post(recs[:4] + _renumber(recs[5:], 5))
    s = rx.stream(chain.stream)
    assert s["gaps"] == []
    assert (5, "prev_hash mismatch") in _breaks(s)
    assert s["verdict"] == "not-verified"


def test_seq_1_must_start_from_zero_prev_hash(rx: Any) -> None:
    chain = Chain()
    recs = chain.readings(2)
    recs[0] = rehash({**recs[0], "prev_hash": "ab" * 32})
    rx.client.post(recs)
    assert _breaks(rx.stream(chain.stream)) == [(1, "prev_hash mismatch"), (2, "prev_hash mismatch")]


def test_link_is_checked_when_the_earlier_record_arrives_later(rx: Any) -> None:
    chain = Chain()
    recs = chain.readings(10)
    rx.client.post(recs[:4])
    rx.client.post(recs[5:])
    assert rx.stream(chain.stream)["chain_breaks"] == []  # seq 6's link cannot be judged yet
    rx.client.post([rehash({**recs[4], "value": 30.0})])  # a forged seq 5 arrives late
    s = rx.stream(chain.stream)
    assert _breaks(s) == [(6, "prev_hash mismatch")]
    assert s["gaps"] == []


def test_genuine_late_record_closes_the_gap_and_verifies(rx: Any) -> None:
    chain = Chain()
    recs = chain.readings(10)
    rx.client.post(recs[:4])
    rx.client.post(recs[5:])
    assert rx.stream(chain.stream)["verdict"] == "not-verified"
    rx.client.post([recs[4]])
    s = rx.stream(chain.stream)
    assert s["gaps"] == [] and s["chain_breaks"] == [] and s["verdict"] == "complete-and-verified"


def test_stream_started_links_streams_and_reveals_a_lost_tail(rx: Any) -> None:
    old, new = Chain(), Chain()
    rx.client.post(old.readings(5))
    rx.client.post(
        [
            new.event(
                "stream_started", {"reason": "store_corrupt", "previous_stream": old.stream, "previous_last_seq": 7}
            ),
            *new.readings(2),
        ]
    )
    gw = rx.receiver.report()["gateways"][GATEWAY]
    s_old, s_new = gw["streams"][old.stream], gw["streams"][new.stream]
    assert s_new["stream_started"]["previous_stream"] == old.stream
    assert s_new["stream_started"]["previous_last_seq"] == 7
    assert s_new["stream_started"]["reason"] == "store_corrupt"
    assert s_old["continued_by"] == new.stream
    assert s_old["gaps"] == [[6, 7]] and s_old["verdict"] == "not-verified"
    assert s_new["verdict"] == "complete-and-verified"
    assert gw["verdict"] == "not-verified"


def test_report_over_http_filters_by_gateway(rx: Any) -> None:
    a, b = Chain(), Chain()
    rx.client.post(a.readings(2), gateway_id="gw-a")
    rx.client.post(b.readings(2), gateway_id="gw-b")
    assert set(rx.client.report()["gateways"]) == {"gw-a", "gw-b"}
    only = rx.client.report(gateway_id="gw-b")
    assert list(only["gateways"]) == ["gw-b"]
    assert list(only["gateways"]["gw-b"]["streams"]) == [b.stream]


def test_text_report_has_one_block_per_stream_with_its_verdict(rx: Any) -> None:
    good, bad = Chain(), Chain()
    rx.client.post(good.readings(3))
    recs = bad.readings(4)
    rx.client.post([recs[0], recs[3]])
    text = render_text(rx.receiver.report())
    assert f"stream {good.stream}: COMPLETE-AND-VERIFIED" in text
    assert f"stream {bad.stream}: NOT-VERIFIED" in text
    assert "gap        2-3: unexplained" in text


def test_empty_receiver_reports_no_gateways(rx: Any) -> None:
    report = rx.receiver.report()
    assert report["gateways"] == {}
    assert "no records" in render_text(report)
