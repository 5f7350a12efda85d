"""Hostile NMEA input (issue 9 item 12): no line can stall the agent.

0.1.0 framed a sentence with a regex that backtracked quadratically on whitespace: a
32 KiB line took 6-10 s under the GIL, and ``max_line = 65536`` was allowed. The frame is
now cut in linear time and lines are capped at :data:`drivers.nmea.MAX_SENTENCE`. The
time bounds below are generous (two orders of magnitude above what the parser takes on a
loaded Pi) and far below what the old parser took; figures are in
``tests/bench/bench_nmea_hostile.py``.
"""

from __future__ import annotations

import time

import pytest
from pydantic import ValidationError

from drivers.exc import DecodeError
from drivers.nmea import MAX_SENTENCE, NmeaOptions, Sentence, parse_sentence


def hostile_lines(n: int) -> list[str]:
    """Lines of length about ``n`` made to make a backtracking frame regex work hardest."""
    ws = " " * n
    return [
        "$GP" + ws + "x",
        "$GPGGA," + ws + ",*",
        "$GPGGA," + ws + "*4",
        "$GPGGA," + ws + "\t" * 8 + "*ZZ",
        "$" + "A" * n + "*",
        "$GPRMC," + ", " * (n // 2) + "*",
    ]


@pytest.mark.parametrize("n", [32 * 1024, 64 * 1024])
def test_a_hostile_32_or_64_kib_line_is_refused_at_once(n):
    started = time.perf_counter()
    for line in hostile_lines(n):
        with pytest.raises(DecodeError, match="NMEA 0183 sentences have at most 82"):
            parse_sentence(line)
    assert time.perf_counter() - started < 1.0  # 0.1.0: 6-10 s for one such line


def test_hostile_lines_at_the_length_cap_parse_in_linear_time():
    lines = [line[:MAX_SENTENCE] for line in hostile_lines(MAX_SENTENCE)] * 50
    started = time.perf_counter()
    for line in lines:
        try:
            parse_sentence(line, require_checksum=False)
        except DecodeError:
            pass
    # 300 worst-case lines of 1 KiB: about 10 ms here; 0.1.0's regex took ~40 ms for each
    assert time.perf_counter() - started < 3.0


def test_a_sentence_padded_with_whitespace_up_to_the_cap_still_parses():
    good = "$GPGGA,092750.000,5321.6802,N,00630.3372,W,1,8,1.03,61.7,M,55.2,M,,*76"
    assert isinstance(parse_sentence(good + " " * (MAX_SENTENCE - len(good))), Sentence)


def test_the_frame_is_checked_like_before():
    with pytest.raises(DecodeError, match="not an NMEA sentence"):
        parse_sentence("GPGGA,1*00")  # no $
    with pytest.raises(DecodeError, match="not an NMEA sentence"):
        parse_sentence("$GPGGA,1*0G")  # checksum not hex
    with pytest.raises(DecodeError, match="not an NMEA sentence"):
        parse_sentence("$GPGGA,1*00*00")  # a second star
    with pytest.raises(DecodeError, match="not an NMEA sentence"):
        parse_sentence("$g,1")  # lower-case address


def test_max_line_cannot_be_configured_beyond_the_cap():
    assert NmeaOptions(port="loop://").max_line <= MAX_SENTENCE
    with pytest.raises(ValidationError):
        NmeaOptions(port="loop://", max_line=65536)
    with pytest.raises(ValidationError):
        NmeaOptions(port="loop://", max_line=MAX_SENTENCE + 1)
