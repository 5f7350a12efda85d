"""The shared serial layer: opening by URL, error translation, the bounded line reader."""

from __future__ import annotations

import errno
import json
import os

import pytest
import serial
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.cli import main as cli_main
from drivers.exc import DriverIOError, DriverUnavailable
from drivers.serialport import LineReader, SerialOptions, _open_reason, by_id_links, open_port
from tests.drivers.serial_helpers import PtyDevice


def test_a_missing_device_is_unavailable_with_the_reason(tmp_path):
    with pytest.raises(DriverUnavailable, match="no such device") as exc:
        open_port(SerialOptions(port=str(tmp_path / "ttyUSB9")), driver="gps")
    assert exc.value.driver == "gps"


def test_permission_denied_says_which_group_is_missing():
    # the service runs as root in CI, so the errno is handed over as the OS would
    reason = _open_reason("/dev/ttyUSB0", serial.SerialException(errno.EACCES, "Permission denied"))
    assert "permission denied" in reason and "dialout" in reason


def test_a_port_held_by_another_process_is_unavailable_as_busy(tmp_path):
    dev = PtyDevice(tmp_path / "gps")
    first = open_port(SerialOptions(port=str(dev.link)))
    try:
        with pytest.raises(DriverUnavailable, match="busy|lock"):
            open_port(SerialOptions(port=str(dev.link)))
    finally:
        first.close()
        dev.close()


def test_a_refused_socket_url_is_unavailable():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: refused
        with pytest.raises(DriverUnavailable):
            open_port(SerialOptions(port=f"socket://127.0.0.1:{port}"), timeout=0.2)


def test_a_socket_port_whose_server_reset_the_connection_is_closed_for_certain():
    """pyserial's close() gives up when shutdown() fails on a reset connection, leaking the
    socket on every reconnect to a device server that went away."""
    import socket
    import struct
    import time

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = open_port(SerialOptions(port=f"socket://127.0.0.1:{server.getsockname()[1]}"), timeout=0.2)
        sock = port._socket  # the handler's own socket, to check it is closed
        try:
            conn, _ = server.accept()
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()  # the device server resets the connection
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    sock.getpeername()
                except OSError:
                    break  # the reset has arrived: shutdown() now fails with ENOTCONN
            port.close()
            assert sock.fileno() == -1
        finally:
            sock.close()


def test_a_bad_url_is_unavailable_not_a_crash():
    with pytest.raises(DriverUnavailable):
        open_port(SerialOptions(port="nosuchscheme://x"))


def test_an_unplugged_pty_fails_the_read_as_driver_io_error(tmp_path):
    dev = PtyDevice(tmp_path / "gps")
    port = open_port(SerialOptions(port=str(dev.link)))
    reader = LineReader(port, 128, name="gps")
    try:
        dev.write(b"$GPGGA,1\r\n")
        assert reader.read_lines(1.0) == [b"$GPGGA,1"]
        dev.unplug()
        with pytest.raises(DriverIOError):
            reader.read_lines(1.0)
    finally:
        port.close()
        dev.close()


def test_lines_waiting_in_the_tty_before_the_port_opens_are_read_not_flushed(tmp_path):
    """A logger that wrote while the agent restarted (or the port was reopened) loses nothing:
    pyserial's flush of pending input on open is not done."""
    dev = PtyDevice(tmp_path / "logger")
    try:
        sent = b"".join(b"T,%d\r\n" % i for i in range(200))
        dev.write(sent)  # before anyone has the port open
        port = open_port(SerialOptions(port=str(dev.link)), timeout=0.2)
        try:
            reader = LineReader(port, max_line=64)
            lines: list[bytes] = []
            while len(lines) < 200:
                got = reader.read_lines(0.2)
                if not got:
                    break
                lines += got
        finally:
            port.close()
        assert lines == [b"T,%d" % i for i in range(200)]
    finally:
        dev.close()


def test_loop_url_round_trips_lines_and_times_out_empty():
    port = open_port(SerialOptions(port="loop://"))
    reader = LineReader(port, 64)
    port.write(b"a\r\nb\nc\rpartial")
    assert reader.read_lines(0.05) == [b"a", b"b", b"c"]
    assert reader.pending == len(b"partial")
    assert reader.read_lines(0.01) == []
    port.close()


def test_an_over_long_line_is_dropped_whole_and_the_next_line_survives():
    reader = LineReader(None, max_line=8)
    assert list(reader.feed(b"0123456789abcdef")) == []
    assert reader.pending == 0 and reader.counters["overlong"] == 1
    assert list(reader.feed(b"still the same line\nok\n")) == [b"ok"]
    assert list(reader.feed(b"123456789\nfine\n")) == [b"fine"]
    assert reader.counters["overlong"] == 2


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=20), st.integers(1, 64))
def test_line_reader_never_holds_more_than_max_line_and_never_returns_longer_lines(chunks, max_line):
    reader = LineReader(None, max_line=max_line)
    for chunk in chunks:
        for line in reader.feed(chunk):
            assert 0 < len(line) <= max_line and b"\n" not in line and b"\r" not in line
        assert reader.pending <= max_line


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.binary(min_size=1, max_size=20).filter(lambda b: b"\n" not in b and b"\r" not in b), max_size=10),
    st.data(),
)
def test_line_reader_gives_the_same_lines_however_the_bytes_are_split(lines, data):
    stream = b"".join(line + b"\r\n" for line in lines)
    cut = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=5)))
    pieces = [stream[a:b] for a, b in zip([0, *cut], [*cut, len(stream)], strict=True)]
    reader = LineReader(None, max_line=64)
    got = [line for piece in pieces for line in reader.feed(piece)]
    assert got == lines


def test_by_id_links_map_devices_to_their_stable_names(tmp_path):
    dev = PtyDevice(tmp_path / "raw")
    by_id = tmp_path / "by-id"
    by_id.mkdir()
    (by_id / "usb-u-blox_GNSS_receiver-if00").symlink_to(os.path.realpath(dev.link))
    try:
        assert by_id_links(str(by_id)) == {os.path.realpath(dev.link): [str(by_id / "usb-u-blox_GNSS_receiver-if00")]}
        assert by_id_links(str(tmp_path / "absent")) == {}
    finally:
        dev.close()


def test_ports_cli_lists_ports_as_json(capsys, tmp_path):
    assert cli_main(["ports", "--json", "--by-id-dir", str(tmp_path)]) == 0
    ports = json.loads(capsys.readouterr().out)
    assert isinstance(ports, list)
    for p in ports:
        assert {"device", "by_id", "description", "vid", "pid", "guess"} <= set(p)



@pytest.fixture
def logger_port(tmp_path):
    """A pty logger and the agent's end of it, opened as a driver opens it."""
    dev = PtyDevice(tmp_path / "logger")
    port = open_port(SerialOptions(port=str(dev.link)), timeout=0.2)
    yield dev, port
    port.close()
    dev.close()


def test_after_a_small_read_the_next_read_lets_the_tty_gather_lines_first(logger_port):
    """At a trickle of lines, one wake-up collects several: the read after a small one
    waits ``gather_s`` (the lines wait in the tty, not in the agent), then takes them all."""
    dev, port = logger_port
    pauses: list[float] = []

    def pause(seconds: float) -> bool:
        pauses.append(seconds)
        dev.write(b"T,2\r\nT,3\r\nT,4\r\n")  # what the logger sends while the reader waits
        return False

    reader = LineReader(port, 64, gather_s=0.05, pause=pause)
    dev.write(b"T,1\r\n")
    assert reader.read_lines(1.0) == [b"T,1"]
    assert pauses == []
    got: list[bytes] = []
    while len(got) < 3:
        got += reader.read_lines(1.0)
    assert got == [b"T,2", b"T,3", b"T,4"]
    assert len(pauses) == 1 and 0 < pauses[0] <= 0.05


def test_a_large_read_is_followed_at_once_so_a_flood_is_read_flat_out(logger_port):
    dev, port = logger_port
    pauses: list[float] = []
    reader = LineReader(port, 64, gather_s=0.05, pause=lambda s: pauses.append(s))
    dev.write(b"".join(b"T,%04d\r\n" % i for i in range(400)))  # 3,600 bytes: a full read
    got: list[bytes] = []
    sizes: list[int] = []  # bytes each read took
    while len(got) < 400:
        before = reader.counters["bytes"]
        got += reader.read_lines(1.0)
        sizes.append(reader.counters["bytes"] - before)
    assert got == [b"T,%04d" % i for i in range(400)]
    assert sizes[0] >= 1024
    dev.write(b"T,end\r\n")
    assert reader.read_lines(1.0) == [b"T,end"]
    # a read waited only after a small one: never after the large reads of the flood
    assert len(pauses) == sum(1 for n in sizes if n < 1024)


def test_a_stop_during_the_gather_returns_at_once_without_reading(logger_port):
    dev, port = logger_port
    reader = LineReader(port, 64, gather_s=0.5, pause=lambda s: True)  # the driver's stop flag is set
    dev.write(b"T,1\r\n")
    assert reader.read_lines(1.0) == [b"T,1"]
    dev.write(b"T,2\r\n")
    assert reader.read_lines(1.0) == []  # stopping: nothing read, T,2 stays in the tty
    assert reader.read_lines(1.0) == [b"T,2"]


def test_line_drivers_gather_for_50_ms_by_default_and_zero_reads_each_line_as_it_comes():
    from drivers.ascii import AsciiOptions
    from drivers.nmea import NmeaOptions

    fields = [{"source": 1, "sensor_id": "L1", "quantity": "temperature", "unit": "Cel"}]
    assert AsciiOptions(port="loop://", format="csv", fields=fields).gather_s == 0.05
    assert NmeaOptions(port="loop://").gather_s == 0.05
    assert AsciiOptions(port="loop://", format="csv", fields=fields, gather_s=0).gather_s == 0
    with pytest.raises(ValueError):
        NmeaOptions(port="loop://", gather_s=2)
