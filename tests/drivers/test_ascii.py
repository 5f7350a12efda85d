"""ASCII line loggers: regex and CSV formats, checksums, bad lines, a pty end to end, fuzzing."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from drivers.ascii import AsciiDriver, AsciiOptions, compile_format, parse_line
from drivers.checksums import ChecksumError, crc16_xmodem, nmea_xor
from drivers.exc import DecodeError
from tests.drivers.serial_helpers import CollectingSink, PtyDevice, Running, fast

REGEX = {
    "port": "loop://",
    "format": "regex",
    "pattern": r"^T=(?P<t>-?[\d.]+|-+)\s+RH=(?P<rh>[\d.]+)%",
    "fields": [
        {"source": "t", "sensor_id": "room", "quantity": "temperature", "unit": "Cel", "invalid": ["----"]},
        {"source": "rh", "sensor_id": "room", "quantity": "humidity", "unit": "%RH"},
    ],
}
CSV = {
    "port": "loop://",
    "format": "csv",
    "columns": ["id", "t_c", "p_hpa"],
    "fields": [
        {"source": "t_c", "sensor_id": "tank", "quantity": "temperature", "unit": "Cel"},
        {"source": 2, "sensor_id": "tank", "quantity": "pressure", "unit": "Pa", "scale": 100},
    ],
    "skip_prefixes": ["id,"],
}


def fmt(base: dict, **over: object):
    return compile_format(AsciiOptions.model_validate({**base, **over}))


def values(readings) -> list[tuple[str, str, float, str]]:
    return [(r.sensor_id, r.quantity, r.value, r.unit) for r in readings]


def test_regex_named_groups_become_readings():
    assert values(parse_line("T=-18.25 RH=41.0%", fmt(REGEX))) == [
        ("room", "temperature", -18.25, "Cel"),
        ("room", "humidity", 41.0, "%RH"),
    ]


def test_a_value_marked_not_available_is_left_out_not_sent_as_zero():
    assert values(parse_line("T=---- RH=41.0%", fmt(REGEX))) == [("room", "humidity", 41.0, "%RH")]


def test_csv_columns_by_name_and_index_with_scale_and_header_skipped():
    f = fmt(CSV)
    assert parse_line("id,t_c,p_hpa", f) == []
    assert values(parse_line("7,4.5,1013.2", f)) == [
        ("tank", "temperature", 4.5, "Cel"),
        ("tank", "pressure", pytest.approx(101320.0), "Pa"),
    ]
    assert values(parse_line('7,"4.5",1013.2', f))[0][2] == 4.5


def test_a_non_numeric_value_is_reported_and_the_rest_of_the_line_kept():
    bad: list[str] = []
    assert values(parse_line("7,ERR,1000", fmt(CSV), bad)) == [("tank", "pressure", 100000.0, "Pa")]
    assert bad == ["tank/temperature: 'ERR'"]


def test_lines_that_do_not_match_or_lack_columns_are_decode_errors():
    with pytest.raises(DecodeError):
        parse_line("hello", fmt(REGEX))
    with pytest.raises(DecodeError):
        parse_line("7,4.5", fmt(CSV))


def test_nmea_style_checksum_is_checked_and_stripped():
    f = fmt(CSV, checksum="nmea")
    body = "7,4.5,1013.2"
    line = f"${body}*{nmea_xor(body.encode()):02X}"
    assert values(parse_line(line, f))[0][2] == 4.5
    with pytest.raises(ChecksumError):
        parse_line(line[:-1] + ("0" if line[-1] != "0" else "1"), f)
    with pytest.raises(ChecksumError):
        parse_line(body, f)


def test_crc16_xmodem_checksum_is_checked_and_stripped():
    assert crc16_xmodem(b"123456789") == 0x31C3  # the catalogue's check value
    assert crc16_xmodem(b"") == 0x0000 and crc16_xmodem(b"A") == 0x58E5
    assert crc16_xmodem(b"6789", crc16_xmodem(b"12345")) == 0x31C3  # a running CRC over chunks
    f = fmt(REGEX, checksum="crc16-xmodem")
    body = "T=5.0 RH=50.0%"
    line = f"{body}*{crc16_xmodem(body.encode()):04X}"
    assert values(parse_line(line, f))[0][2] == 5.0
    with pytest.raises(ChecksumError):
        parse_line(body + "*0000", f)


def test_config_errors_name_the_problem():
    with pytest.raises(ValidationError, match="named group"):
        AsciiOptions.model_validate({**REGEX, "fields": [{**REGEX["fields"][0], "source": "nope"}]})
    with pytest.raises(ValidationError, match="does not compile"):
        AsciiOptions.model_validate({**REGEX, "pattern": "(?P<t>"})
    with pytest.raises(ValidationError, match="column"):
        AsciiOptions.model_validate({**CSV, "fields": [{**CSV["fields"][0], "source": "missing"}]})


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=200), st.sampled_from(["none", "nmea", "crc16-xmodem"]))
def test_parse_line_only_ever_raises_decode_error(text, checksum):
    for f in (fmt(REGEX, checksum=checksum), fmt(CSV, checksum=checksum)):
        with contextlib.suppress(DecodeError):
            parse_line(text, f)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_raise_out_of_the_read_path(data):
    drv = AsciiDriver("logger", AsciiOptions.model_validate({**CSV, "checksum": "nmea", "max_line": 64}))
    drv._open()
    try:
        drv._port.write(data + b"\n")
        for _ in range(2):
            list(drv._read(0.001))
        assert drv._lines is not None and drv._lines.pending <= 64
    finally:
        drv._close()


def test_logger_streaming_through_a_pty_delivers_every_good_line_and_counts_the_bad(tmp_path):
    good = [f"{i},{i / 10:.1f},1000" for i in range(500)]
    bad = ["7,4.5", "\xff\xfe garbage", "x" * 2000]

    async def scenario():
        dev = PtyDevice(tmp_path / "logger")
        drv = fast(AsciiDriver)("logger", AsciiOptions.model_validate({**CSV, "port": str(dev.link)}))
        sink = CollectingSink()
        try:
            async with Running(sink, drv):
                stream = "\r\n".join(good[:250] + bad + good[250:]) + "\r\n"
                await dev.send(stream.encode("latin-1"))
                await sink.wait_for(lambda: len(sink.of("tank", "temperature")) == 500)
        finally:
            dev.close()
        return sink, drv

    sink, drv = asyncio.run(scenario())
    assert sink.of("tank", "temperature") == [pytest.approx(i / 10) for i in range(500)]
    c = drv.status.counters
    assert (c["lines"], c["garbage"], c["overlong"]) == (502, 2, 1)


def test_the_example_config_logger_line_format_parses_its_documented_line():
    from pathlib import Path

    from agent.config import load

    config = load(Path(__file__).resolve().parents[2] / "config/serial-gps-modbus.toml")
    (logger,) = [d for d in config.drivers if d.name == "datalogger"]
    f = compile_format(AsciiDriver.Options.model_validate(logger.options))
    body = "LOG,3,T=-18.40,RH=41.20"
    assert values(parse_line(f"${body}*{nmea_xor(body.encode()):02X}", f)) == [
        ("pallet-3", "temperature", -18.4, "Cel"),
        ("pallet-3", "humidity", 41.2, "%RH"),
    ]
    assert values(parse_line("$LOG,3,T=----,RH=41.20*" + f"{nmea_xor(b'LOG,3,T=----,RH=41.20'):02X}", f)) == [
        ("pallet-3", "humidity", 41.2, "%RH")
    ]
