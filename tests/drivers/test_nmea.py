"""The NMEA driver: real receiver captures through a real pty, fix rules, interval, fuzzing."""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.cli import main as cli_main
from drivers.checksums import ChecksumError
from drivers.exc import DecodeError
from drivers.nmea import KNOT_MPS, NmeaDriver, NmeaOptions, NmeaTracker, decode_nmea, parse_sentence
from tests.drivers.serial_helpers import (
    CollectingSink,
    PtyDevice,
    Running,
    capture_lines,
    expected_fixes,
    fast,
    wait_until,
)

CAPTURES = ["bu353s4.log", "mtk-3301.log", "st-teseo-liv3f.log", "ublox-neo-m9n-nmea.log"]
FastNmea = fast(NmeaDriver)

GGA = "$GPGGA,030719.000,3747.0873,S,17518.8938,E,1,08,1.1,59.9,M,23.7,M,,0000*7D"
RMC = "$GPRMC,030719.000,A,3747.0873,S,17518.8938,E,0.69,181.39,311214,,,A*7D"


def with_checksum(body: str) -> str:
    cs = 0
    for b in body.encode():
        cs ^= b
    return f"${body}*{cs:02X}"


def nmea_driver(port: str, **opts: object) -> NmeaDriver:
    return FastNmea("gps", NmeaOptions.model_validate({"port": port, "interval_s": 0, **opts}))


# -- real captures through a pty ----------------------------------------------------


@pytest.mark.parametrize("capture", CAPTURES)
def test_capture_replayed_through_pty_gives_the_independently_computed_positions(tmp_path, capture):
    lines = capture_lines(capture)
    expected = expected_fixes(lines)
    assert expected, "every capture holds some fixes"

    async def scenario() -> tuple[CollectingSink, NmeaDriver]:
        dev = PtyDevice(tmp_path / "gps")
        drv = nmea_driver(str(dev.link))
        sink = CollectingSink()
        try:
            async with Running(sink, drv):
                await dev.send("".join(lines).encode("ascii"))
                await sink.wait_for(lambda: len(sink.of("gps", "latitude")) >= len(expected), timeout=30)
                # the satellites reading closes each epoch: wait for the last one too
                await sink.wait_for(lambda: drv.status.counters["lines"] == len(lines), timeout=10)
        finally:
            dev.close()
        return sink, drv

    sink, drv = asyncio.run(scenario())
    lats, lons, alts = sink.of("gps", "latitude"), sink.of("gps", "longitude"), sink.of("gps", "altitude")
    assert lats == pytest.approx([e[1] for e in expected], abs=1e-7)
    assert lons == pytest.approx([e[2] for e in expected], abs=1e-7)
    assert alts == pytest.approx([e[3] for e in expected])
    assert all(r.unit == {"latitude": "lat", "longitude": "lon"}.get(r.quantity, r.unit) for r in sink.readings)
    assert drv.status.counters["checksum_errors"] == 0
    assert drv.status.counters["garbage"] == 0


def test_cold_start_capture_records_fix_quality_but_no_position_until_the_fix():
    """MTK-3301 powering up: GGA quality 0 and RMC 'V' at 89°60'N must not become a position."""
    tracker = NmeaTracker("gps", interval_s=0)
    out = []
    for line in capture_lines("mtk-3301.log"):
        s = parse_sentence(line)
        if s is not None:
            out += tracker.feed(s)
    out += tracker.flush()
    first_lat = next(i for i, r in enumerate(out) if r.quantity == "latitude")
    before = out[:first_lat]
    assert {r.quantity for r in before} == {"gnss_fix", "satellites"}
    assert all(r.value == 0 for r in before if r.quantity == "gnss_fix")
    assert out[first_lat].value == pytest.approx(52 + 12.982135 / 60)


# -- fix rules ---------------------------------------------------------------------------


def epoch(*lines: str) -> list:
    tracker = NmeaTracker("gps", interval_s=0)
    for line in lines:
        s = parse_sentence(line)
        assert s is not None
        tracker.feed(s)
    return tracker.flush()


def quantities(readings: list) -> set[str]:
    return {r.quantity for r in readings}


def test_gga_and_rmc_agreeing_on_a_fix_give_every_quantity_in_protocol_units():
    out = {r.quantity: r for r in epoch(GGA, RMC)}
    assert set(out) == {"latitude", "longitude", "altitude", "speed", "gnss_fix", "hdop", "satellites"}
    assert out["latitude"].value == pytest.approx(-(37 + 47.0873 / 60), abs=1e-8)
    assert out["longitude"].value == pytest.approx(175 + 18.8938 / 60, abs=1e-8)
    assert out["speed"].value == pytest.approx(0.69 * 0.514444, abs=1e-4) and out["speed"].unit == "m/s"
    assert (out["gnss_fix"].value, out["satellites"].value, out["hdop"].value) == (1, 8, 1.1)
    assert out["latitude"].extra == {"gps_time": "2014-12-31T03:07:19.000Z"}


@pytest.mark.parametrize(
    "rmc_status, rmc_mode",
    [("V", "A"), ("A", "N"), ("A", "E"), ("A", "S"), ("A", "M")],
    ids=["void", "no-fix-mode", "estimated", "simulated", "manual"],
)
def test_no_position_when_rmc_says_void_estimated_or_simulated(rmc_status, rmc_mode):
    rmc = with_checksum(f"GPRMC,030719.000,{rmc_status},3747.0873,S,17518.8938,E,0.69,181.39,311214,,,{rmc_mode}")
    out = epoch(GGA, rmc)
    assert not quantities(out) & {"latitude", "longitude", "altitude", "speed", "hdop"}
    assert quantities(out) == {"gnss_fix", "satellites"}


@pytest.mark.parametrize("quality", [0, 6, 7, 8])
def test_no_position_when_gga_quality_is_none_estimated_manual_or_simulated(quality):
    gga = with_checksum(f"GNGGA,030719.000,3747.0873,S,17518.8938,E,{quality},08,1.1,59.9,M,23.7,M,,0000")
    out = epoch(gga)
    assert not quantities(out) & {"latitude", "longitude"}
    assert [r.value for r in out if r.quantity == "gnss_fix"] == [quality]


def test_no_position_when_every_gsa_says_no_fix():
    gsa = with_checksum("GNGSA,A,1,,,,,,,,,,,,,,,")
    assert "latitude" not in quantities(epoch(GGA, gsa))
    gsa3 = with_checksum("GNGSA,A,3,17,28,06,01,,,,,,,,,1.8,1.1,1.5")
    assert "latitude" in quantities(epoch(GGA, gsa, gsa3))


def test_vtg_gives_speed_when_there_is_no_rmc():
    vtg = with_checksum("GNVTG,,T,,M,10.0,N,18.52,K,A")
    out = {r.quantity: r.value for r in epoch(GGA, vtg)}
    assert out["speed"] == pytest.approx(10.0 * KNOT_MPS, abs=1e-4)


@pytest.mark.parametrize("talker", ["GP", "GN", "GL", "GA", "GB"])
def test_every_gnss_talker_is_used(talker):
    s = parse_sentence(with_checksum(f"{talker}GGA,030719.000,3747.0873,S,17518.8938,E,1,08,1.1,59.9,M,,M,,"))
    assert s is not None and s.talker == talker


def test_other_talkers_gsv_and_proprietary_sentences_are_ignored_not_errors():
    assert parse_sentence(with_checksum("BDGGA,030719.000,3747.0873,S,17518.8938,E,1,08,1.1,59.9,M,,M,,")) is None
    assert parse_sentence("$GPGSV,3,3,12,11,12,132,04,08,38,008,,02,35,348,,03,14,091,*73") is None
    assert parse_sentence("$POLYN,TIME,RESTART_OCCURRED") is None


def test_bad_checksum_is_a_checksum_error_and_a_missing_one_is_refused_on_used_sentences():
    with pytest.raises(ChecksumError):
        parse_sentence(GGA[:-2] + "7E")
    with pytest.raises(ChecksumError):
        parse_sentence(GGA.split("*")[0])
    assert parse_sentence(GGA.split("*")[0], require_checksum=False) is not None


def test_malformed_fields_are_decode_errors_not_crashes():
    for body in [
        "GPGGA,030719.000,37x7.0873,S,17518.8938,E,1,08,1.1,59.9,M,,M,,",
        "GPGGA,030719.000,3747.0873,Q,17518.8938,E,1,08,1.1,59.9,M,,M,,",
        "GPRMC,250719.000,A,3747.0873,S,17518.8938,E,0.69,181.39,311214,,,A",
    ]:
        with pytest.raises(DecodeError):
            parse_sentence(with_checksum(body))


# -- interval ---------------------------------------------------------------------------


def test_position_is_recorded_once_per_interval_not_per_epoch():
    now = [0.0]
    tracker = NmeaTracker("gps", interval_s=10.0, clock=lambda: now[0])
    recorded_at = []
    for second in range(35):
        now[0] = float(second)
        t = f"0307{second:02d}.000"
        gga = with_checksum(f"GPGGA,{t},3747.0873,S,17518.8938,E,1,08,1.1,59.9,M,23.7,M,,0000")
        s = parse_sentence(gga)
        assert s is not None
        if any(r.quantity == "latitude" for r in tracker.feed(s)):
            recorded_at.append(second)
    # an epoch completes when the next begins: the one of second 0 is recorded at second 1
    assert recorded_at == [1, 11, 21, 31]


# -- hotplug -------------------------------------------------------------------------------


def test_receiver_unplugged_and_replugged_is_reported_and_resumed_while_another_driver_loses_nothing(tmp_path):
    from drivers.ascii import AsciiDriver, AsciiOptions

    lines = capture_lines("bu353s4.log")
    # split between two epochs (this receiver starts each with GGA)
    half = next(i for i in range(len(lines) // 2, len(lines)) if lines[i].startswith("$GPGGA"))
    before, after = expected_fixes(lines[:half]), expected_fixes(lines[half:])

    async def scenario():
        gps_dev = PtyDevice(tmp_path / "gps")
        log_dev = PtyDevice(tmp_path / "logger")
        gps = nmea_driver(str(gps_dev.link))
        logger = fast(AsciiDriver)(
            "logger",
            AsciiOptions.model_validate(
                {
                    "port": str(log_dev.link),
                    "format": "csv",
                    "fields": [{"source": 1, "sensor_id": "L1", "quantity": "movement_count", "unit": "count"}],
                }
            ),
        )
        sink = CollectingSink()
        seq = sink.of

        def logger_lines(a: int, b: int) -> bytes:
            return "".join(f"SEQ,{i}\r\n" for i in range(a, b)).encode()

        try:
            async with Running(sink, gps, logger):
                await gps_dev.send("".join(lines[:half]).encode())
                await log_dev.send(logger_lines(0, 100))
                await sink.wait_for(lambda: len(seq("L1", "movement_count")) == 100)
                await sink.wait_for(lambda: len(sink.of("gps", "latitude")) == len(before))

                gps_dev.unplug()  # the receiver's USB cable is pulled
                await log_dev.send(logger_lines(100, 200))
                await sink.wait_for(lambda: "driver_error" in sink.event_names("gps"))
                await sink.wait_for(lambda: len(seq("L1", "movement_count")) == 200)
                # while it is gone, reopening fails with "no such device", and keeps trying:
                # counted in status, not one event per retry
                await wait_until(lambda: gps.status.retries >= 2, what="reopen retried")
                assert "no such device" in (gps.status.last_error or "") and gps.status.failing_since
                assert sink.event_names("gps") == ["driver_error"]

                gps_dev.plug()  # ... and plugged in again: reopened, and recovered once it talks
                await wait_until(lambda: gps.status.state == "running", what="reopened")
                await gps_dev.send("".join(lines[half:]).encode())
                await sink.wait_for(lambda: "driver_recovered" in sink.event_names("gps"))
                await log_dev.send(logger_lines(200, 300))
                await sink.wait_for(lambda: len(sink.of("gps", "latitude")) >= len(before) + len(after), 20)
                await sink.wait_for(lambda: len(seq("L1", "movement_count")) == 300)
        finally:
            gps_dev.close()
            log_dev.close()
        return sink, gps, logger

    sink, gps, logger = asyncio.run(scenario())
    assert sink.of("L1", "movement_count") == list(range(300))  # every line, in order
    assert "driver_error" not in sink.event_names("logger")
    gps_events = [(e, d) for drv, e, d in sink.events if drv == "gps"]
    assert [e for e, _ in gps_events] == ["driver_error", "driver_recovered"]
    assert gps_events[0][1]["error"] == "DriverIOError"
    recovered = gps_events[1][1]
    assert recovered["retries"] >= 3 and recovered["last_error"].startswith("DriverUnavailable")
    assert gps.status.failing_since is None and gps.status.recovered_at is not None
    assert gps.status.restarts >= 2 and gps.status.state == "stopped"
    assert sink.of("gps", "latitude") == pytest.approx([e[1] for e in before + after], abs=1e-7)


# -- garbage -----------------------------------------------------------------------------


def test_garbage_bad_checksums_and_overlong_lines_are_counted_and_never_stop_the_driver(tmp_path):
    noise = bytes(range(128, 256)) + b"\n"  # a wrong baud rate
    overlong = b"$GPGGA," + b"9" * 5000 + b"\r\n"
    bad_cs = (GGA[:-2] + "00\r\n").encode()
    good = (GGA + "\r\n" + RMC + "\r\n").encode()

    async def scenario():
        dev = PtyDevice(tmp_path / "gps")
        drv = nmea_driver(str(dev.link), max_line=256)
        sink = CollectingSink()
        try:
            async with Running(sink, drv):
                await dev.send(noise + overlong + bad_cs + good + b"$GPGGA,half a line")
                await sink.wait_for(lambda: len(sink.of("gps", "latitude")) == 1)
                assert drv._lines is not None and drv._lines.pending <= 256
        finally:
            dev.close()
        return drv, sink

    drv, sink = asyncio.run(scenario())
    c = drv.status.counters
    assert (c["garbage"], c["overlong"], c["checksum_errors"]) == (1, 1, 1)
    assert "driver_error" not in sink.event_names()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_out_of_the_read_path(data):
    """The driver's read path over loop:// (pyserial's own loopback) with fuzzed bytes."""
    drv = NmeaDriver("gps", NmeaOptions(port="loop://", interval_s=0, max_line=128))
    drv._open()
    try:
        drv._port.write(data + b"\n" + GGA.encode() + b"\n")
        for _ in range(3):
            list(drv._read(0.001))
    finally:
        drv._close()


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from("$GPNLABRMCSVTE*0123456789.,ANSEW-"), max_size=120))
def test_parse_sentence_only_ever_raises_decode_error(text):
    try:
        parse_sentence(text)
        parse_sentence(with_checksum(text.lstrip("$").replace("*", "")))
    except DecodeError:
        pass


# -- CLI ---------------------------------------------------------------------------------


def test_decode_nmea_cli_prints_the_readings_the_driver_would_record(capsys):
    assert cli_main(["decode", "nmea", GGA, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    got = {r["quantity"]: r["value"] for r in data["readings"]}
    assert got == {r.quantity: r.value for r in decode_nmea(GGA)}
    assert got["satellites"] == 8 and data["sentence"] == {"talker": "GP", "type": "GGA"}


def test_decode_nmea_cli_says_bad_checksum_in_one_line(capsys):
    assert cli_main(["decode", "nmea", GGA[:-2] + "00"]) == 1
    err = capsys.readouterr().err
    assert "checksum" in err and "Traceback" not in err
