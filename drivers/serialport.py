"""Serial ports for the drivers: open by URL, translate errors once, read bounded lines.

Every serial driver opens its device through :func:`open_port`, which calls
``serial.serial_for_url``: a device path, a ``/dev/serial/by-id/...`` link, a pty, and
pyserial's ``loop://`` and ``socket://host:port`` URLs all work the same way.

pyserial's and the OS's errors enter coldgate here and nowhere else::

    open:  missing device, permission denied, busy, refused, bad URL  -> DriverUnavailable
    read:  unplugged (EIO, "readiness to read but returned no data")  -> DriverIOError

:class:`LineReader` turns a byte stream into lines without ever holding more than
``max_line`` bytes of an unfinished line: an over-long line is counted and dropped up to
its newline, so noise from a wrong baud rate cannot grow memory.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import serial
from pydantic import Field
from serial.urlhandler import protocol_socket

from drivers.base import Driver, Options
from drivers.checksums import ChecksumError
from drivers.exc import DecodeError, DriverIOError, DriverUnavailable

#: Largest chunk read from the port at once (bounds memory together with ``max_line``).
READ_CHUNK = 4096

if TYPE_CHECKING:
    StopBits = float  # a Literal cannot hold the float 1.5 (PEP 586)
else:
    StopBits = Literal[1, 1.5, 2]  # what pydantic validates


class SerialOptions(Options):
    """The options every serial driver shares (keys of its ``[[drivers]]`` table)."""

    port: str = Field(
        min_length=1,
        description="device path, /dev/serial/by-id/... link, or pyserial URL (socket://host:port, loop://)",
    )
    baudrate: int = Field(default=9600, gt=0, le=4_000_000)
    bytesize: Literal[5, 6, 7, 8] = 8
    parity: Literal["N", "E", "O", "M", "S"] = "N"
    stopbits: StopBits = 1


#: A read of at least this many bytes is followed by the next one at once, not after
#: ``gather_s``: input that fast (a flood, a high baud rate) is read flat out, and a
#: tty's 4 KiB line buffer is never left to fill while the driver waits.
GATHER_BELOW = 1024


class LineOptions(SerialOptions):
    """The options of a driver that reads text lines (ASCII loggers, NMEA)."""

    gather_s: float = Field(
        default=0.05, ge=0, le=0.5,
        description="after a read, let the port's buffer gather input this long before the next read: "
                    "one wake-up for several lines (CPU) against at most this much latency; 0 reads each "
                    "line as it comes",
    )


class _SocketPort(protocol_socket.Serial):
    """pyserial's ``socket://`` port, closed for certain.

    pyserial's own ``close`` calls ``shutdown()`` before ``close()`` and swallows what it
    raises: when the device server has already gone (the very case a reopen follows),
    ``shutdown`` fails with ENOTCONN, the socket is never closed, and every reconnect
    leaks a descriptor.
    """

    def close(self) -> None:
        sock = self._socket
        try:
            super().close()
        finally:
            if sock is not None:
                sock.close()


def open_port(opts: SerialOptions, *, timeout: float | None = 1.0, driver: str | None = None) -> serial.SerialBase:
    """Open ``opts.port``; raise :class:`DriverUnavailable` with the reason when it cannot be had.

    What waits in the tty's input buffer is kept: pyserial flushes it on open, which threw
    away every line a logger sent while the agent restarted or the port was reopened
    (255 lines at one reopen during a flood). A partial first line is the line reader's
    business, like any other bad line.
    """
    settings: dict[str, Any] = {"baudrate": opts.baudrate, "bytesize": opts.bytesize, "parity": opts.parity,
                                "stopbits": opts.stopbits, "timeout": timeout, "exclusive": True}
    try:
        if opts.port.lower().startswith("socket://"):
            port = _SocketPort(None, **settings)  # as serial_for_url builds it, with our close
            port.port = opts.port
            port.open()
            return port
        port = serial.serial_for_url(opts.port, do_not_open=True, **settings)
        _open_keeping_input(port)
        return port
    except serial.SerialException as exc:
        raise DriverUnavailable(_open_reason(opts.port, exc), driver=driver) from exc
    except (OSError, ValueError) as exc:  # termios errors, bad URL or settings
        raise DriverUnavailable(f"cannot open {opts.port}: {exc}", driver=driver) from exc


def _open_keeping_input(port: serial.SerialBase) -> None:
    """``port.open()`` without the flush of pending input that pyserial does on open."""
    names = [n for n in ("_reset_input_buffer", "reset_input_buffer") if hasattr(port, n)]
    for name in names:
        setattr(port, name, _keep)  # shadows the method on this instance only
    try:
        port.open()
    finally:
        for name in names:
            with contextlib.suppress(AttributeError):
                delattr(port, name)


def _keep() -> None:
    """Stands in for pyserial's input flush while a port opens."""


def _open_reason(port: str, exc: serial.SerialException) -> str:
    code = getattr(exc, "errno", None)
    if code == errno.ENOENT or (code is None and port.startswith("/") and not os.path.exists(port)):
        return f"{port}: no such device (unplugged, or not yet enumerated)"
    if code in (errno.EACCES, errno.EPERM):
        return f"{port}: permission denied (is the service user in the 'dialout' group?)"
    if code in (errno.EBUSY, errno.EWOULDBLOCK):
        return f"{port}: busy (another process holds the port)"
    return f"cannot open {port}: {exc}"


def io_error(exc: BaseException, port: str, driver: str | None = None) -> DriverIOError:
    """The :class:`DriverIOError` for a failure of an open port."""
    return DriverIOError(f"{port}: {exc}", driver=driver)


@dataclass
class LineReader:
    """Bounded line splitter over an open port.

    ``counters`` receives ``bytes``, ``overlong`` (lines longer than ``max_line``, dropped
    whole) and is shared with the driver's status. Lines are returned without their
    terminator; ``\\r\\n``, ``\\n`` and a lone ``\\r`` between lines all end a line.
    """

    port: Any  # serial.SerialBase, or anything with read(n), in_waiting
    max_line: int = 1024
    counters: Counter[str] = field(default_factory=Counter)
    name: str = ""
    #: after a read smaller than GATHER_BELOW, the next one waits this long (``pause``)
    gather_s: float = 0.0
    #: waits ``gather_s``; returns True when the driver is stopping (a stop never waits it out)
    pause: Callable[[float], Any] = time.sleep
    _buf: bytearray = field(default_factory=bytearray)
    _gather_until: float = 0.0
    _discarding: bool = False

    def read_lines(self, timeout: float) -> list[bytes]:
        """Wait up to ``timeout`` s for bytes; return the complete lines they finish.

        After a small read, the port is left ``gather_s`` to collect what follows before
        it is read again, so a steady trickle of lines costs one wake-up per ``gather_s``,
        not one per line. What waits meanwhile stays in the tty's buffer, not in the agent.
        """
        if self._gather_until:
            left = self._gather_until - time.monotonic()
            self._gather_until = 0.0
            if left > 0 and self.pause(min(left, timeout)):
                return []
        try:
            fd = _posix_fd(self.port)
            if fd is not None:
                data = _read_fd(fd, timeout)
            else:
                if self.port.timeout != timeout:  # the setter reconfigures the tty: only on change
                    self.port.timeout = timeout
                data = self.port.read(1)
                if data:
                    waiting = self.port.in_waiting
                    if waiting:
                        data += self.port.read(min(waiting, READ_CHUNK))
        except (serial.SerialException, OSError) as exc:
            raise io_error(exc, self.name or str(getattr(self.port, "port", "?"))) from exc
        if not data:
            return []
        if self.gather_s and len(data) < GATHER_BELOW:
            self._gather_until = time.monotonic() + self.gather_s
        self.counters["bytes"] += len(data)
        return list(self.feed(data))

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Split ``data`` (appended to what is pending) into lines. Pure; used by tests."""
        if b"\r" in data:  # CRLF, LF and a lone CR (some loggers) all end a line
            data = data.replace(b"\r", b"\n")
        buf = self._buf
        start = 0
        n = len(data)
        while start < n:
            nl = data.find(b"\n", start)
            if nl < 0:
                chunk = data[start:]
                if not self._discarding:
                    if len(buf) + len(chunk) > self.max_line:
                        self.counters["overlong"] += 1
                        buf.clear()
                        self._discarding = True
                    else:
                        buf += chunk
                break
            chunk = data[start:nl]
            start = nl + 1
            if self._discarding:
                self._discarding = False  # this newline ends the over-long line
                continue
            if len(buf) + len(chunk) > self.max_line:
                self.counters["overlong"] += 1
                buf.clear()
                continue
            if buf:
                buf += chunk
                line = bytes(buf)
                buf.clear()
            else:
                line = chunk
            if line:
                yield line

    @property
    def pending(self) -> int:
        """Bytes held of an unfinished line (never more than ``max_line``)."""
        return len(self._buf)


def _posix_fd(port: Any) -> int | None:
    """The file descriptor of an open POSIX serial port (a tty, a pty), else None."""
    from serial import serialposix

    fd = getattr(port, "fd", None)
    return fd if isinstance(port, serialposix.Serial) and isinstance(fd, int) and fd >= 0 else None


def _read_fd(fd: int, timeout: float) -> bytes:
    """One wait and one read of what the tty holds: the syscalls of a line at 100 lines/s
    are most of a gateway's CPU, and pyserial's read makes five (select, read, ioctl,
    select, read). pyserial opens the port non-blocking; an fd that is readable but gives
    nothing is a device that went away, as pyserial says too."""
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        return b""
    try:
        data = os.read(fd, READ_CHUNK)
    except BlockingIOError:
        return b""
    if not data:
        raise serial.SerialException("device reports readiness to read but returned no data "
                                     "(device disconnected or multiple access on port?)")
    return data


# -- discovery (``coldgate ports``) -----------------------------------------------------

#: USB VID:PID -> what is usually behind it, for ``coldgate ports``' best guess.
KNOWN_USB: dict[tuple[int, int], str] = {
    (0x1546, 0x01A7): "u-blox 7 GNSS receiver",
    (0x1546, 0x01A8): "u-blox 8 GNSS receiver",
    (0x1546, 0x01A9): "u-blox GNSS receiver",
    (0x067B, 0x2303): "Prolific PL2303 USB-serial (e.g. GlobalSat BU-353 GPS)",
    (0x0403, 0x6001): "FTDI FT232 USB-serial (RS-232/RS-485 adapters)",
    (0x0403, 0x6015): "FTDI FT231X USB-serial (RS-485 adapters)",
    (0x1A86, 0x7523): "WCH CH340 USB-serial (cheap RS-485 dongles)",
    (0x1A86, 0x55D4): "WCH CH9102 USB-serial",
    (0x10C4, 0xEA60): "Silicon Labs CP210x USB-serial",
    (0x2C7C, 0x0125): "Quectel EC25 modem (NMEA on its GPS port)",
    (0x0E8D, 0x3329): "MediaTek GPS receiver",
}


T = TypeVar("T")


class LineDriver(Driver):
    """A driver that reads text lines from a serial port (NMEA, ASCII loggers).

    It owns the port and the bounded line reader, and :meth:`_decode` counts the bad
    lines every such driver meets: bytes that are not ASCII (a wrong baud rate), a
    failed checksum, text that is not the format. None of them is ever fatal.
    """

    options: Any  # a SerialOptions with ``max_line``

    def __init__(self, name: str, options: Any) -> None:
        super().__init__(name, options)
        self._port: Any = None
        self._lines: LineReader | None = None
        self.status.details["port"] = options.port

    def _open(self) -> None:
        self._port = open_port(self.options, timeout=self.read_timeout_s, driver=self.name)
        self._lines = LineReader(self._port, self.options.max_line, self.status.counters, self.options.port,
                                 gather_s=getattr(self.options, "gather_s", 0.0), pause=self._stop_flag.wait)

    def _decode(self, raw: bytes, parse: Callable[[str], T]) -> T | None:
        """``parse(line)``, or None with the failure counted and logged at a limited rate."""
        counters = self.status.counters
        try:
            return parse(raw.decode("ascii"))
        except UnicodeDecodeError:
            counters["garbage"] += 1
            self.noisy.warning("garbage", "%s: non-ASCII bytes on the line (wrong baud rate?): %r", self.name,
                               raw[:40])
        except ChecksumError as exc:
            counters["checksum_errors"] += 1
            self.noisy.warning("checksum", "%s: %s: %r", self.name, exc, raw[:60])
        except DecodeError as exc:
            counters["garbage"] += 1
            self.noisy.warning("garbage", "%s: %s", self.name, exc)
        return None

    def _close(self) -> None:
        port, self._port, self._lines = self._port, None, None
        if port is not None:
            try:
                port.close()
            except Exception as exc:  # noqa: BLE001 - a vanished device may fail to close
                self.log.debug("%s: close failed: %s", self.name, exc)


@dataclass
class PortInfo:
    device: str
    by_id: list[str]
    description: str | None
    hwid: str | None
    vid: int | None
    pid: int | None
    serial_number: str | None
    manufacturer: str | None
    product: str | None
    guess: str | None

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["vid"] = f"{self.vid:04x}" if self.vid is not None else None
        d["pid"] = f"{self.pid:04x}" if self.pid is not None else None
        return d


def by_id_links(directory: str = "/dev/serial/by-id") -> dict[str, list[str]]:
    """Map resolved device path -> the stable ``by-id`` links udev made for it."""
    out: dict[str, list[str]] = {}
    d = Path(directory)
    if not d.is_dir():
        return out
    for link in sorted(d.iterdir()):
        try:
            target = str(link.resolve(strict=True))
        except OSError:
            continue
        out.setdefault(target, []).append(str(link))
    return out


def list_ports(by_id_dir: str = "/dev/serial/by-id") -> list[PortInfo]:
    """Serial ports the OS knows, with by-id names and a guess at what is attached."""
    from serial.tools import list_ports as lp

    links = by_id_links(by_id_dir)
    out = []
    for p in sorted(lp.comports(), key=lambda p: p.device):
        real = os.path.realpath(p.device)
        guess = KNOWN_USB.get((p.vid, p.pid)) if p.vid is not None and p.pid is not None else None
        out.append(
            PortInfo(
                device=p.device,
                by_id=links.get(real, []),
                description=None if p.description in (None, "n/a") else p.description,
                hwid=None if p.hwid in (None, "n/a") else p.hwid,
                vid=p.vid,
                pid=p.pid,
                serial_number=p.serial_number,
                manufacturer=p.manufacturer,
                product=p.product,
                guess=guess,
            )
        )
    return out
